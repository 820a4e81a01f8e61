"""Train vidiff's built-in demo cascade end to end on the synthetic shapes data, with one command:

    python tools/train_demo.py                      # every step, resuming where an earlier run stopped
    python tools/train_demo.py --steps base --resume none
    python tools/train_demo.py --steps-scale 0.05   # a quick, rough run on a CPU

Every model is trained by `vidiff train` (the trainer users get: accelerate, its checkpoints, exact resumption,
EMA, train_log.csv, loss.png) with a config under configs/demo/; this tool makes what those configs start from.
Steps (each skipped when its output exists; an interrupted training step continues from its checkpoint):
    text           the tokenizer (one token per word of the shapes vocabulary) and a seeded CLIP text model,
                   pretrained to say each caption's colour, shape and motion (`text.pretrain_steps`), then frozen
    data           the shapes clips as lossless FFV1 videos + manifest.csv (<work>/data/shapes)
    t2i            `vidiff train configs/demo/t2i.yaml`: a pixel-space text-to-image U-Net (from the random SD folder
                   built from demo.yaml's `unet:`) on single frames, exported as an SD folder (train.export_sd)
    base           `vidiff inflate` of it (temporal conv + attention), then `vidiff train` base.yaml and
                   base-finish.yaml (the finishing phase, from the first phase's pipeline): the base model
    interpolation  `vidiff inflate --stage interpolation` of the text-to-image model, `vidiff train` x2 (8 -> 15)
    ssr            `vidiff inflate --stage ssr` of it, `vidiff train` x2 (32 -> 64 pixels)
    publish        the models in fp16 + logs, loss curves, commands and checksums into vidiff/assets/demo/
    gallery        docs/demo.gif: the published cascade's clips for six prompts, each with its prompt
    ablation       (not in the default run) the inflation ablation's runs: the base recipe (both phases) at each
                   `ablation.budgets` fraction of its steps, from the inflated start and from a random one
                   (<work>/ablation/{inflated,scratch}-STEPS; the inflated run at budget 1 is `base`);
                   --budgets / --starts pick some of them (two processes can share the work)
Work goes to --work (default runs/demo): <work>/<stage>/train (and base/finish) are `vidiff train` output folders.
Configuration: configs/demo/demo.yaml and the stage configs next to it (--config names demo.yaml).
"""
from __future__ import annotations

import argparse
import csv
import dataclasses
import io
import json
import math
import os
import shutil
import sys
import time
from pathlib import Path

import av
import numpy as np
import torch
import torch.nn.functional as F
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from vidiff import demo  # noqa: E402
from vidiff.cli import main as vidiff_main  # noqa: E402
from vidiff.config import load_config  # noqa: E402
from vidiff.data.synthetic import COLORS, MOTIONS, SHAPES, caption, make_clip, sample_specs  # noqa: E402
from vidiff.models.folder import inflate_pipeline  # noqa: E402
from vidiff.spec import read_info  # noqa: E402
from vidiff.stages.folder import inflate_stage  # noqa: E402
from vidiff.utils import atomic_dir, atomic_path, save_safetensors_atomic, write_json_atomic  # noqa: E402

BASE_ARCHITECTURE = ("temporal_position", "frame_embedding", "coordinate_embedding")  # base.* keys for VideoUNet
STEPS = ("text", "data", "t2i", "base", "interpolation", "ssr", "publish", "gallery", "ablation")
SOURCE = "tools/train_demo.py (configs/demo/)"  # vidiff.json `source` of the demo's models


# ---------------------------------------------------------------------------------------------------------------
# Text: tokenizer with whole-word tokens, seeded random CLIP text model
# ---------------------------------------------------------------------------------------------------------------
def learn_merges(words: list[str]) -> list[tuple[str, str]]:
    """BPE merges (Sennrich et al. 2016) learned on `words` until each is one token. Applying merges in the
    learned order reproduces the learned segmentation, so every vocabulary word tokenizes to itself."""
    pieces = {w: [*w[:-1], w[-1] + "</w>"] for w in words}
    merges: list[tuple[str, str]] = []
    while any(len(p) > 1 for p in pieces.values()):
        counts: dict[tuple[str, str], int] = {}
        for p in pieces.values():
            for pair in zip(p, p[1:]):
                counts[pair] = counts.get(pair, 0) + 1
        best = max(sorted(counts), key=lambda pair: counts[pair])  # most frequent; ties in sorted order
        merges.append(best)
        for w, p in pieces.items():
            out, i = [], 0
            while i < len(p):
                if i + 1 < len(p) and (p[i], p[i + 1]) == best:
                    out.append(p[i] + p[i + 1])
                    i += 2
                else:
                    out.append(p[i])
                    i += 1
            pieces[w] = out
    return merges


def write_tokenizer(folder: Path, max_length: int):
    """A CLIPTokenizer whose vocabulary is the shapes words (one token each), their BPE pieces and single
    letters/digits, so an unknown word becomes harmless letter pieces instead of failing."""
    from transformers import CLIPTokenizer

    words = demo.vocabulary()
    merges = learn_merges(words)
    tokens = ["<|startoftext|>", "<|endoftext|>"]
    chars = "abcdefghijklmnopqrstuvwxyz0123456789'"
    tokens += [c for c in chars] + [c + "</w>" for c in chars]
    tokens += [a + b for a, b in merges if a + b not in tokens]
    vocab = {t: i for i, t in enumerate(dict.fromkeys(tokens))}
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.json").write_text(json.dumps(vocab, indent=1) + "\n")
    (folder / "merges.txt").write_text("#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in merges))
    tokenizer = CLIPTokenizer(str(folder / "vocab.json"), str(folder / "merges.txt"), model_max_length=max_length,
                              pad_token="<|endoftext|>")
    for word in words:  # the property the demo relies on
        ids = tokenizer(word, add_special_tokens=False)["input_ids"]
        assert tokenizer.convert_ids_to_tokens(ids) == [word + "</w>"], (word, ids)
    return tokenizer


def build_text(cfg: dict, out: Path, seed: int) -> None:
    """Step `text`: tokenizer/ + text_encoder/ (seeded, pretrained when `text.pretrain_steps`; the later steps
    train it along only if their `train_text` says so)."""
    from transformers import CLIPTextConfig, CLIPTextModel

    t = cfg["text"]
    with atomic_dir(out) as tmp:
        tokenizer = write_tokenizer(tmp / "tokenizer", t["max_position_embeddings"])
        tokenizer.save_pretrained(str(tmp / "tokenizer"))
        config = CLIPTextConfig(vocab_size=len(tokenizer), hidden_size=t["hidden_size"],
                                intermediate_size=t["intermediate_size"], num_hidden_layers=t["num_hidden_layers"],
                                num_attention_heads=t["num_attention_heads"],
                                max_position_embeddings=t["max_position_embeddings"],
                                bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                                pad_token_id=tokenizer.pad_token_id)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            encoder = CLIPTextModel(config).eval()
            if t.get("pretrain_steps"):
                pretrain_text(encoder, tokenizer, t["pretrain_steps"])
        encoder.save_pretrained(str(tmp / "text_encoder"))
        emb = encode(encoder, tokenizer, captions() + [""], "cpu")
        flat = F.normalize(emb.flatten(1), dim=1)
        cosine = flat @ flat.T - 2 * torch.eye(len(flat))
        print(f"text: vocab {len(tokenizer)} tokens, {sum(p.numel() for p in encoder.parameters())} parameters; "
              f"largest cosine similarity between two caption embeddings {cosine.max():.4f}", flush=True)
        assert cosine.max() < 0.999, "captions must give distinct embeddings"


def pretrain_text(encoder, tokenizer, steps: int, learning_rate: float = 3e-3) -> None:
    """Teach the text model what each caption says, as CLIP's pretraining taught SD's: colour, shape and motion
    each read back by a linear head from the mean of its hidden states and from its end-of-text output (the
    heads are dropped). A random model says the motion words weakly, and a U-Net that hears them weakly never
    learns them: the text model then forgets them while it trains with the U-Net (the first demo bases)."""
    import itertools

    combos = list(itertools.product(range(len(COLORS)), range(len(SHAPES)), range(len(MOTIONS))))
    labels = torch.tensor(combos)                                                   # (48, 3), captions() order
    ids = tokenizer(captions(), padding="max_length", max_length=tokenizer.model_max_length,
                    return_tensors="pt")["input_ids"]
    width = encoder.config.hidden_size
    heads = torch.nn.ModuleList(torch.nn.Linear(width, n) for n in (len(COLORS), len(SHAPES), len(MOTIONS)))
    optimizer = torch.optim.Adam([*encoder.parameters(), *heads.parameters()], lr=learning_rate)
    encoder.train()
    for _ in range(steps):
        out = encoder(ids)
        loss = sum(F.cross_entropy(head(features), labels[:, k])
                   for features in (out.last_hidden_state.mean(1), out.pooler_output)
                   for k, head in enumerate(heads))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    encoder.eval().requires_grad_(True)
    print(f"text: pretrained {steps} steps on the captions' colour / shape / motion, loss {loss.item():.4f}",
          flush=True)


def captions(motion: bool = True) -> list[str]:
    """The 48 captions, in (colour, shape, motion) product order; motion=False: without the motion words (what a
    single frame shows, "a red circle")."""
    return [f"a {c} {s} {m}" if motion else f"a {c} {s}" for c in COLORS for s in SHAPES for m in MOTIONS]


@torch.no_grad()
def encode(encoder, tokenizer, prompts: list[str], device) -> torch.Tensor:
    ids = tokenizer(prompts, padding="max_length", max_length=tokenizer.model_max_length, truncation=True,
                    return_tensors="pt")["input_ids"]
    return encoder.to(device)(ids.to(device))[0].float()


# ---------------------------------------------------------------------------------------------------------------
# Data: the shapes clips on disk, losslessly
# ---------------------------------------------------------------------------------------------------------------
def make_clips(cfg: dict, seed: int) -> tuple[np.ndarray, list[str]]:
    """uint8 clips `(n, f, size, size, 3)` and their captions, by vidiff.data.synthetic's recipe (the specs and
    per-clip seeds `write_shapes_dataset` uses)."""
    d = cfg["data"]
    specs = sample_specs(d["count"], seed)
    clips = np.empty((len(specs), d["num_frames"], d["size"], d["size"], 3), np.uint8)
    for i, spec in enumerate(specs):
        clips[i] = make_clip(*spec, num_frames=d["num_frames"], size=d["size"],
                             seed=int(np.random.default_rng([seed, i]).integers(2**31)))
    return clips, [caption(*spec) for spec in specs]


def write_lossless_video(path: Path, frames: np.ndarray, fps: int = 8) -> None:
    """uint8 `(f, h, w, 3)` as FFV1 in Matroska with RGB (bgr0) pixels: both of vidiff's readers (PyAV, decord)
    give back exactly these bytes, where mp4's H.264 in YUV 4:2:0 would not."""
    with av.open(str(path), "w") as container:
        stream = container.add_stream("ffv1", rate=fps)
        stream.width, stream.height, stream.pix_fmt = frames.shape[2], frames.shape[1], "bgr0"
        for frame in frames:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
        container.mux(stream.encode())


def write_data(cfg: dict, out: Path, seed: int) -> Path:
    """Step `data`: the clips as 00000.mkv, ... and manifest.csv (path, caption); returns the manifest."""
    start = time.perf_counter()
    clips, texts = make_clips(cfg, seed)
    rows = io.StringIO()
    writer = csv.writer(rows, lineterminator="\n")
    writer.writerow(["path", "caption"])
    with atomic_dir(out) as tmp:
        for i, (clip, text) in enumerate(zip(clips, texts)):
            write_lossless_video(tmp / f"{i:05d}.mkv", clip)
            writer.writerow([f"{i:05d}.mkv", text])
        (tmp / "manifest.csv").write_text(rows.getvalue())
    print(f"data: {len(clips)} clips of {clips.shape[1]} x {clips.shape[2]}^2 (lossless FFV1) in {out} "
          f"({time.perf_counter() - start:.1f} s)", flush=True)
    return out / "manifest.csv"


# ---------------------------------------------------------------------------------------------------------------
# Starting points: the text-to-image model's random SD folder, the inflated base and stages
# ---------------------------------------------------------------------------------------------------------------
def scheduler_config(cfg: dict, noise_shift: float | None = None) -> dict:
    """The diffusers DDPMScheduler config of the demo; with `noise_shift` s, the same schedule at s times the noise
    (every signal-to-noise ratio divided by s**2, Hoogeboom et al. 2023's shifted schedule), as `trained_betas`."""
    config = dict(cfg["scheduler"], _class_name="DDPMScheduler")
    if noise_shift is None or noise_shift == 1:
        return config
    from diffusers import DDPMScheduler

    alphas_cumprod = DDPMScheduler.from_config(config).alphas_cumprod.double()
    log_snr = torch.log(alphas_cumprod) - torch.log1p(-alphas_cumprod) - 2 * math.log(noise_shift)
    shifted = torch.sigmoid(log_snr)
    betas = 1 - shifted / torch.cat([shifted.new_ones(1), shifted[:-1]])
    config["trained_betas"] = betas.clamp(max=0.999).tolist()
    return config


def write_init_sd(cfg: dict, text: Path, out: Path) -> Path:
    """The text-to-image model's start: a seeded random pixel-space UNet2DConditionModel (demo.yaml `unet:`, no
    VAE) with the text step's tokenizer and text model, as the diffusers SD folder t2i.yaml inflates."""
    from diffusers import UNet2DConditionModel

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg["seed"])
        unet = UNet2DConditionModel(**cfg["unet"])
    with atomic_dir(out) as tmp:
        unet.save_pretrained(str(tmp / "unet"))
        shutil.copytree(text / "text_encoder", tmp / "text_encoder")
        shutil.copytree(text / "tokenizer", tmp / "tokenizer")
        (tmp / "scheduler").mkdir()
        (tmp / "scheduler" / "scheduler_config.json").write_text(json.dumps(scheduler_config(cfg), indent=2))
        (tmp / "model_index.json").write_text(json.dumps({
            "_class_name": "StableDiffusionPipeline", "unet": ["diffusers", "UNet2DConditionModel"],
            "text_encoder": ["transformers", "CLIPTextModel"], "tokenizer": ["transformers", "CLIPTokenizer"],
            "scheduler": ["diffusers", "DDPMScheduler"]}, indent=2))
    return out


def inflate(cfg: dict, name: str, sd: Path, out: Path) -> Path:
    """`vidiff inflate`'s code on the SD folder `sd` into `out` (once): the base with demo.yaml's architecture
    options and sampling defaults, a cascade stage (`name`) with its factor and defaults; `source` and the
    stage options of demo.yaml (the ssr's sampling noise level) go into its vidiff.json."""
    if (out / "vidiff.json").is_file():
        return out
    s, partial = cfg[name], out.with_name(out.name + ".partial")
    if name == "base":
        architecture = {k: s[k] for k in BASE_ARCHITECTURE if k in s}
        inflate_pipeline(sd, partial, defaults=cfg["defaults"], seed=cfg["seed"], **architecture)
        if s.get("noise_shift"):
            schedule = partial / "scheduler" / "scheduler_config.json"
            schedule.write_text(json.dumps(dict(json.loads(schedule.read_text()),
                                                **scheduler_config(cfg, s["noise_shift"])), indent=2))
    else:
        inflate_stage(sd, partial, name, factor=s["factor"], defaults=s["defaults"], seed=cfg["seed"])
    info = read_info(partial)
    options = {} if name == "base" else dict(info.stage_options, **s.get("stage_options", {}))
    write_json_atomic(partial / "vidiff.json", dataclasses.replace(info, source=SOURCE, stage_options=options).to_json())
    os.replace(partial, out)
    return out


# ---------------------------------------------------------------------------------------------------------------
# Training: `vidiff train` with a config of configs/demo
# ---------------------------------------------------------------------------------------------------------------
def vidiff_train(config: Path, overrides: list[str], resume: str) -> None:
    """`vidiff train CONFIG OVERRIDES --resume auto` (`--overwrite` for --resume none), in this process."""
    argv = ["train", str(config), *overrides, *(["--resume", "auto"] if resume == "auto" else ["--overwrite"])]
    print("$ vidiff " + " ".join(argv), flush=True)
    code = vidiff_main(argv)
    if code != 0:
        raise SystemExit(f"train_demo: `vidiff {' '.join(argv)}` failed (exit code {code})")


class DemoRun:
    """What every step needs: demo.yaml, the folder of the stage configs, the work folder and the run's flags."""

    def __init__(self, cfg: dict, configs: Path, work: Path, resume: str, steps_scale: float, device: str):
        self.cfg, self.configs, self.work, self.resume = cfg, configs, work, resume
        self.steps_scale, self.device = steps_scale, device

    @property
    def manifest(self) -> Path:
        return self.work / "data" / "shapes" / "manifest.csv"

    def steps(self, name: str, budget: float = 1.0) -> int:
        """train.max_steps of configs/demo/NAME.yaml x --steps-scale, x `budget` (each rounded, at least 1)."""
        max_steps = load_config(self.configs / f"{name}.yaml", check=False).train.max_steps
        return max(1, round(max(1, round(max_steps * self.steps_scale)) * budget))

    def train(self, name: str, out: Path, pretrained: Path, budget: float = 1.0) -> Path:
        """`vidiff train configs/demo/NAME.yaml` into `out` from `pretrained` (skipped when it has finished
        there and --resume is auto); returns its exported pipeline folder."""
        if self.resume == "auto" and (out / "pipeline" / "vidiff.json").is_file():
            print(f"{out}: done, skipped", flush=True)
            return out / "pipeline"
        config = self.configs / f"{name}.yaml"
        steps, every = self.steps(name, budget), load_config(config, check=False).train.checkpoint_every
        overrides = [f"output_dir={out}", f"model.pretrained={pretrained}", f"data.manifest={self.manifest}",
                     f"train.seed={self.cfg['seed']}", f"train.max_steps={steps}",
                     f"train.checkpoint_every={max(1, min(every, steps))}"]
        if self.device == "cuda":  # (bf16 autocast, as the demo has always trained on a GPU)
            overrides.append("train.mixed_precision=bf16")
        vidiff_train(config, overrides, self.resume)
        return out / "pipeline"


def stage_runs(work: Path, stage: str) -> list[Path]:
    """The `vidiff train` output folders of a stage, in training order (the base: both phases)."""
    return [work / stage / "train", work / stage / "finish"] if stage == "base" else [work / stage / "train"]


def final_model(folder: Path) -> Path:
    """The base recipe's final model in a base or ablation run folder: the finishing phase's pipeline."""
    return folder / "finish" / "pipeline"


def step_t2i(run: DemoRun) -> Path:
    """The random SD folder (once), then `vidiff train configs/demo/t2i.yaml`; returns the exported SD folder."""
    init = run.work / "t2i" / "init"
    if not (init / "model_index.json").is_file():
        write_init_sd(run.cfg, run.work / "text", init)
    run.train("t2i", run.work / "t2i" / "train", init)
    return run.work / "t2i" / "train" / "sd"


def step_base(run: DemoRun, folder: Path | None = None, *, scratch: bool = False, budget: float = 1.0) -> Path:
    """Inflate the text-to-image model and train the base recipe in `folder` (default <work>/base): base.yaml,
    then base-finish.yaml from its pipeline. The inflation ablation's runs: `scratch`, the same video U-Net
    inflated from the text-to-image model's random start (same text model, data and recipe); `budget`, the
    whole recipe (both phases, their learning-rate schedules) with its steps scaled. Returns the final model."""
    folder = folder or run.work / "base"
    if scratch:
        start = inflate(run.cfg, "base", run.work / "t2i" / "init", run.work / "ablation" / "scratch-start")
    else:
        start = inflate(run.cfg, "base", run.work / "t2i" / "train" / "sd", run.work / "base" / "inflated")
    first = run.train("base", folder / "train", start, budget)
    return run.train("base-finish", folder / "finish", first, budget)


def ablation_runs(run: DemoRun, budgets=None, starts=("inflated", "scratch")) -> list[tuple[str, float, int, Path]]:
    """The inflation ablation's runs `(start, budget, steps, folder)`: the base recipe at every `ablation.budgets`
    fraction of its steps (both phases: `steps` in all) from the inflated start and from scratch. The inflated
    run at budget 1 is the base."""
    runs = []
    for budget in budgets or run.cfg["ablation"]["budgets"]:
        total = run.steps("base", budget) + run.steps("base-finish", budget)
        for start in starts:
            folder = (run.work / "base" if start == "inflated" and budget == 1
                      else run.work / "ablation" / f"{start}-{total}")
            runs.append((start, budget, total, folder))
    return runs


def step_ablation(run: DemoRun, budgets=None, starts=("inflated", "scratch")) -> None:
    """Train the inflation ablation's runs that are not there yet (the base is its own step)."""
    for start, budget, _, folder in ablation_runs(run, budgets, starts):
        if folder != run.work / "base":
            step_base(run, folder, scratch=start == "scratch", budget=budget)


def step_stage(run: DemoRun, name: str) -> Path:
    """A cascade stage: `vidiff inflate --stage NAME`'s code on the text-to-image model, then `vidiff train
    configs/demo/NAME.yaml` (interpolation: 9-frame windows at 32x32; ssr: 32x32 patches of 8-frame windows at
    64x64). The text model stays the text-to-image model's."""
    start = inflate(run.cfg, name, run.work / "t2i" / "train" / "sd", run.work / name / "inflated")
    return run.train(name, run.work / name / "train", start)


def step_publish(run: DemoRun, out: Path, command: str) -> None:
    """Copy the trained models (U-Nets in fp16) with their logs into `out`, and record commands and checksums."""
    from safetensors.torch import load_file

    published = []
    for stage in demo.STAGES:
        runs = stage_runs(run.work, stage)
        final = runs[-1] / "pipeline"
        if not (final / "vidiff.json").is_file():
            continue
        target = out / stage
        if target.exists():
            shutil.rmtree(target)
        shutil.copytree(final, target)
        weights = target / "unet" / "diffusion_pytorch_model.safetensors"
        save_safetensors_atomic({k: v.half() for k, v in load_file(str(weights)).items()}, weights,
                                metadata={"format": "pt"})
        for prefix, folder in zip(("", "finish_"), runs):  # the base's finishing phase: finish_*
            for name in ("train_log.csv", "loss.png"):
                shutil.copy2(folder / name, target / f"{prefix}{name}")
        published.append(stage)
    for name in ("train_log.csv", "loss.png"):  # the text-to-image step the base was inflated from
        (out / "t2i").mkdir(parents=True, exist_ok=True)
        shutil.copy2(run.work / "t2i" / "train" / name, out / "t2i" / name)
    write_commands(out / "COMMANDS.md", command, run)
    demo.write_cascade(out)
    demo.write_checksums(out)
    total = sum(p.stat().st_size for p in demo.weight_files(out))
    print(f"publish: {', '.join(published)} -> {out} ({total / 1e6:.1f} MB of weights)", flush=True)


def write_commands(path: Path, command: str, run: DemoRun) -> None:
    """COMMANDS.md: how these models were made, above the record of every earlier publication (kept, its
    headings one level down), so the run history survives a republish."""
    earlier = path.read_text() if path.is_file() else ""
    earlier = "\n".join(("#" + line if line.startswith("#") else line) for line in earlier.splitlines()).strip()
    text = ("# How these demo models were made\n\n"
            f"    {command}\n\nConfiguration: configs/demo/ (demo.yaml and each stage's `vidiff train` config; seed "
            f"{run.cfg['seed']}, steps x {run.steps_scale}), device: {run.device}. Each stage folder holds its "
            "train_log.csv and loss.png (the base also finish_train_log.csv and finish_loss.png, of its finishing "
            "phase); t2i/ holds those of the text-to-image model the base was inflated from.\n")
    if earlier:
        text += "\n# Earlier publications (newest first)\n\n" + earlier.replace(
            "## How these demo models were made", "## Before this one", 1) + "\n"
    with atomic_path(path) as tmp:
        Path(tmp).write_text(text)


GALLERY_PROMPTS = ("a red circle moving right", "a green square moving up", "a blue triangle moving left",
                   "a yellow circle moving down", "a red triangle moving up", "a blue square moving right")


def step_gallery(out_gif: Path, model: Path = demo.DEMO_DIR, seed: int = 0, scale: int = 2) -> Path:
    """A GIF of the demo cascade's clips for GALLERY_PROMPTS side by side, each with its prompt under it
    (the README's picture), and a PNG of its middle frame next to it."""
    from PIL import Image, ImageDraw

    from vidiff.data.video_io import write_video
    from vidiff.pipelines.cascade import CascadePipeline

    pipe = CascadePipeline.from_pretrained(model, device="cpu") if (model / "cascade.yaml").is_file() else None
    if pipe is None:
        from vidiff.pipelines.text_to_video import VideoPipeline

        pipe = VideoPipeline.from_pretrained(model / "base", device="cpu")
    clips = [pipe(p, seed=seed, progress=False) for p in GALLERY_PROMPTS]
    f, h, w, _ = clips[0].shape
    cell_w, cell_h, label = w * scale, h * scale, 28
    cols = 3
    rows = math.ceil(len(clips) / cols)
    frames = []
    for i in range(f):
        sheet = Image.new("RGB", (cols * (cell_w + 8) + 8, rows * (cell_h + label + 8) + 8), (255, 255, 255))
        draw = ImageDraw.Draw(sheet)
        for k, (prompt, clip) in enumerate(zip(GALLERY_PROMPTS, clips)):
            x, y = 8 + (k % cols) * (cell_w + 8), 8 + (k // cols) * (cell_h + label + 8)
            sheet.paste(Image.fromarray(clip[i]).resize((cell_w, cell_h), Image.NEAREST), (x, y))
            words = prompt.split(" moving ")
            draw.text((x, y + cell_h + 2), words[0], fill=(0, 0, 0))
            draw.text((x, y + cell_h + 14), "moving " + words[1], fill=(0, 0, 0))
        frames.append(np.asarray(sheet))
    fps = read_info(model / "base").defaults.fps * (f - 1) // 7 if f > 8 else 4
    out_gif.parent.mkdir(parents=True, exist_ok=True)
    write_video(out_gif, np.stack(frames), fps=max(4, fps))
    with atomic_path(out_gif.with_suffix(".png")) as tmp:
        Image.fromarray(frames[f // 2]).save(tmp)
    print(f"gallery: {out_gif} ({len(clips)} prompts, {f} frames of {w}x{h})", flush=True)
    return out_gif



def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default=str(ROOT / "configs" / "demo" / "demo.yaml"),
                        help="demo.yaml; the stage configs (t2i.yaml, base.yaml, ...) are read from its folder")
    parser.add_argument("--work", default=str(ROOT / "runs" / "demo"), help="working folder (checkpoints, logs)")
    parser.add_argument("--out", default=str(demo.DEMO_DIR), help="where `publish` puts the models")
    parser.add_argument("--steps", default=",".join(STEPS[:-1]), help=f"comma-separated subset of {','.join(STEPS)}")
    parser.add_argument("--resume", default="auto", choices=("auto", "none"),
                        help="auto: skip finished steps, continue an interrupted one; none: redo the named steps")
    parser.add_argument("--steps-scale", type=float, default=1.0, help="multiply every step count (e.g. 0.05)")
    parser.add_argument("--device", default=None, choices=("cuda", "cpu"), help="default: cuda when available")
    parser.add_argument("--budgets", default=None,
                        help="`ablation`: comma-separated fractions of the base's steps (default: ablation.budgets)")
    parser.add_argument("--starts", default="inflated,scratch", help="`ablation`: inflated, scratch or both")
    parser.add_argument("--threads", type=int, default=1,
                        help="CPU threads (default 1: on a shared 2-core machine more threads wait on each other)")
    args = parser.parse_args(argv)
    args.steps = [s.strip() for s in args.steps.split(",") if s.strip()]
    unknown = [s for s in args.steps if s not in STEPS]
    if unknown:
        parser.error(f"unknown step(s) {unknown}; choose from {', '.join(STEPS)}")
    if not args.steps_scale > 0:
        parser.error(f"--steps-scale must be > 0, got {args.steps_scale}")
    try:
        args.budgets = None if args.budgets is None else [float(b) for b in args.budgets.split(",") if b.strip()]
    except ValueError:
        parser.error(f"--budgets must be comma-separated numbers, got {args.budgets!r}")
    if args.budgets is not None and not (args.budgets and all(0 < b <= 1 for b in args.budgets)):
        parser.error(f"--budgets must be fractions in (0, 1], got {args.budgets}")
    args.starts = tuple(s.strip() for s in args.starts.split(",") if s.strip())
    if not args.starts or set(args.starts) - {"inflated", "scratch"}:
        parser.error(f"--starts must be inflated, scratch or both, got {args.starts}")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    config = Path(args.config)
    cfg = yaml.safe_load(config.read_text())
    torch.set_num_threads(args.threads)
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cpu":
        os.environ["ACCELERATE_USE_CPU"] = "true"  # (accelerate would take a GPU when there is one)
    work = Path(args.work)
    run = DemoRun(cfg, config.parent, work, args.resume, args.steps_scale, device)
    done = {"text": work / "text" / "text_encoder", "data": run.manifest,
            "t2i": work / "t2i" / "train" / "sd" / "model_index.json",
            "base": final_model(work / "base") / "vidiff.json",
            "interpolation": work / "interpolation" / "train" / "pipeline" / "vidiff.json",
            "ssr": work / "ssr" / "train" / "pipeline" / "vidiff.json"}
    command = "python tools/train_demo.py " + " ".join(argv if argv is not None else sys.argv[1:])
    for name in args.steps:
        if args.resume == "auto" and name in done and done[name].exists():
            print(f"{name}: done ({done[name]} exists), skipped", flush=True)
            continue
        began = time.perf_counter()
        if name == "text":
            build_text(cfg, work / "text", cfg["seed"])
        elif name == "data":
            write_data(cfg, work / "data" / "shapes", cfg["seed"])
        elif name == "publish":
            step_publish(run, Path(args.out), command.strip())
        elif name == "gallery":
            step_gallery(ROOT / "docs" / "demo.gif", Path(args.out))
        elif name in ("interpolation", "ssr"):
            step_stage(run, name)
        elif name == "ablation":
            step_ablation(run, args.budgets, args.starts)
        else:
            {"t2i": step_t2i, "base": step_base}[name](run)
        print(f"{name}: finished in {time.perf_counter() - began:.0f} s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
