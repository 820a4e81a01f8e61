"""Train vidiff's built-in demo cascade end to end on the synthetic shapes data, with one command:

    python tools/train_demo.py                      # every step, resuming where an earlier run stopped
    python tools/train_demo.py --steps base --resume none
    python tools/train_demo.py --steps-scale 0.05   # a quick, rough run on a CPU

Steps (each skipped when its output exists; `--resume auto` continues an interrupted one from its checkpoint):
    text           the tokenizer (one token per word of the shapes vocabulary) and a seeded CLIP text model,
                   pretrained to say each caption's colour, shape and motion (`text.pretrain_steps`), then frozen
    t2i            a pixel-space text-to-image U-Net trained on single frames (a diffusers SD folder without VAE)
    base           `vidiff inflate` of it (temporal conv + attention), trained on 8-frame clips: the base model
    interpolation  `vidiff inflate --stage interpolation` of the text-to-image model, trained x2 (8 -> 15 frames)
    ssr            `vidiff inflate --stage ssr` of it, trained x2 (32 -> 64 pixels)
    publish        the models in fp16 + logs, loss curves, commands and checksums into vidiff/assets/demo/
    gallery        docs/demo.gif: the published cascade's clips for six prompts, each with its prompt
    ablation       (not in the default run) the inflation ablation's runs: the base recipe (both phases) at each
                   `ablation.budgets` fraction of its steps, from the inflated start and from a random one
                   (<work>/ablation/{inflated,scratch}-STEPS; the inflated run at budget 1 is `base`);
                   --budgets / --starts pick some of them (two processes can share the work)
Work goes to --work (default runs/demo): data is made in memory from vidiff.data.synthetic, so nothing but torch
and the repo is needed (it runs as it is on a GPU machine). Configuration: configs/demo/demo.yaml.
"""
from __future__ import annotations

import argparse
import csv
import json
import math
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from vidiff import demo  # noqa: E402
from vidiff.data.synthetic import COLORS, MOTIONS, SHAPES, make_clip, sample_specs  # noqa: E402
from vidiff.utils import atomic_dir, atomic_path, save_safetensors_atomic  # noqa: E402

BASE_ARCHITECTURE = ("temporal_position", "frame_embedding", "coordinate_embedding")  # base.* keys for VideoUNet
STEPS = ("text", "t2i", "base", "interpolation", "ssr", "publish", "gallery", "ablation")


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
# Data: shapes clips in memory
# ---------------------------------------------------------------------------------------------------------------
def make_data(cfg: dict, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """uint8 clips `(n, 3, f, size, size)` and their caption index into `captions()` `(n,)`."""
    d = cfg["data"]
    specs = sample_specs(d["count"], seed)
    names = {(c, s, m): i for i, (c, s, m) in enumerate((c, s, m) for c in COLORS for s in SHAPES for m in MOTIONS)}
    clips = np.empty((d["count"], d["num_frames"], d["size"], d["size"], 3), np.uint8)
    start = time.perf_counter()
    for i, spec in enumerate(specs):
        clips[i] = make_clip(*spec, num_frames=d["num_frames"], size=d["size"],
                             seed=int(np.random.default_rng([seed, i]).integers(2**31)))
    print(f"data: {len(specs)} clips of {d['num_frames']} x {d['size']}^2 in {time.perf_counter() - start:.1f} s",
          flush=True)
    index = torch.tensor([names[s] for s in specs])
    return torch.from_numpy(clips).permute(0, 4, 1, 2, 3).contiguous(), index


def to_pixels(clips: torch.Tensor, *, frames: slice, size: int) -> torch.Tensor:
    """uint8 `(b, 3, f, H, W)` -> float `(b, 3, f', size, size)` in [-1, 1] (area downsampling)."""
    x = clips[:, :, frames].float() / 127.5 - 1.0
    b, c, f, h, w = x.shape
    if size != h:
        x = F.interpolate(x.reshape(b, c * f, h, w), size=(size, size), mode="area").reshape(b, c, f, size, size)
    return x


# ---------------------------------------------------------------------------------------------------------------
# Training loop (shared by every step): AdamW, warm-up, EMA, CSV log, resumable safetensors checkpoints
# ---------------------------------------------------------------------------------------------------------------
def save_checkpoint(folder: Path, step: int, model, ema, optimizer) -> None:
    tensors = {f"model.{k}": v for k, v in model.state_dict().items()}
    tensors.update({f"ema.{k}": v for k, v in ema.shadow.items()})
    names = [n for n, p in model.named_parameters() if p.requires_grad]
    for i, name in enumerate(names):
        state = optimizer.state.get(optimizer.param_groups[0]["params"][i], {})
        for key in ("exp_avg", "exp_avg_sq"):
            if key in state:
                tensors[f"adam.{key}.{name}"] = state[key]
    with atomic_dir(folder / f"checkpoint-{step:06d}") as tmp:
        save_safetensors_atomic(tensors, tmp / "state.safetensors")
        (tmp / "state.json").write_text(json.dumps({"step": step, "ema_updates": ema.num_updates}) + "\n")
    for old in sorted(folder.glob("checkpoint-*"))[:-2]:  # keep the last two
        shutil.rmtree(old)


def load_checkpoint(folder: Path, model, ema, optimizer, device) -> int:
    from safetensors.torch import load_file

    checkpoints = sorted(folder.glob("checkpoint-*"))
    if not checkpoints:
        return 0
    last = checkpoints[-1]
    tensors = load_file(str(last / "state.safetensors"), device=str(device))
    info = json.loads((last / "state.json").read_text())
    model.load_state_dict({k[6:]: v for k, v in tensors.items() if k.startswith("model.")})
    ema.shadow = {k[4:]: v.float() for k, v in tensors.items() if k.startswith("ema.")}
    ema.num_updates = info["ema_updates"]
    names = [n for n, p in model.named_parameters() if p.requires_grad]
    params = optimizer.param_groups[0]["params"]
    for i, name in enumerate(names):
        if f"adam.exp_avg.{name}" in tensors:
            optimizer.state[params[i]] = {"step": torch.tensor(float(info["step"])),
                                          "exp_avg": tensors[f"adam.exp_avg.{name}"],
                                          "exp_avg_sq": tensors[f"adam.exp_avg_sq.{name}"]}
    print(f"resumed from {last} (step {info['step']})", flush=True)
    return int(info["step"])


def train_loop(model, stage, batch_fn, run: dict, work: Path, scheduler_cfg: dict, device, resume: str,
               label: str, snapshot=None) -> None:
    """Train `model` (`{"unet": ..., "text_encoder": ...}`, the text encoder only if it trains) with `stage.loss`
    on batches `batch_fn(generator, batch_size) -> (pixels, embeddings)`; EMA weights are copied into the model
    at the end. Checkpoints and train_log.csv go to `work`; every `run["snapshot_every"]` steps `snapshot(step)`
    is called with the EMA weights swapped in."""
    from diffusers import DDPMScheduler

    from vidiff.training.ema import EMA

    scheduler = DDPMScheduler.from_config(scheduler_cfg)
    unet = model["unet"]
    params = {n: p for n, p in model.named_parameters() if p.requires_grad}
    optimizer = torch.optim.AdamW(list(params.values()), lr=run["learning_rate"], weight_decay=0.0)
    ema = EMA(params, run["ema_decay"]).to(device)
    start = load_checkpoint(work, model, ema, optimizer, device) if resume == "auto" else 0
    if resume != "auto" and work.exists():
        shutil.rmtree(work)
    work.mkdir(parents=True, exist_ok=True)
    log_path = work / "train_log.csv"
    rows = list(csv.DictReader(open(log_path))) if log_path.exists() and start else []
    rows = [r for r in rows if int(r["step"]) <= start]
    autocast = torch.autocast("cuda", torch.bfloat16) if device.type == "cuda" else torch.autocast("cpu",
                                                                                                   enabled=False)
    began, seconds0 = time.perf_counter(), float(rows[-1]["seconds"]) if rows else 0.0
    running = []
    if snapshot is not None and start == 0:
        snapshot(0)  # the starting point of the accuracy-vs-steps curve
    model.train()
    last = run["steps"]
    for step in range(start + 1, last + 1):
        generator = torch.Generator(device).manual_seed(run["seed"] * 1_000_003 + step)  # same batch on resume
        lr = run["learning_rate"] * min(1.0, step / max(1, run["warmup"]))
        lr *= 0.5 * (1 + math.cos(math.pi * step / run["steps"])) * 0.9 + 0.1  # cosine decay to 10%
        for group in optimizer.param_groups:
            group["lr"] = lr
        pixels, embeddings = batch_fn(generator, run["batch_size"])
        with autocast:
            loss = stage.loss(unet, scheduler, pixels, embeddings, generator=generator)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(list(params.values()), 1.0)
        optimizer.step()
        ema.update(params)
        running.append(loss.detach())
        if step % 50 == 0 or step == last:
            mean = torch.stack(running).mean().item()
            running = []
            seconds = seconds0 + time.perf_counter() - began
            rows.append({"step": step, "loss": f"{mean:.5f}", "lr": f"{lr:.3g}", "grad_norm": f"{grad_norm:.3f}",
                         "seconds": f"{seconds:.1f}"})
            if step % 100 == 0 or step == last:
                print(f"{label}: step {step}/{last} loss {mean:.4f} lr {lr:.2e} "
                      f"({(step - start) / (time.perf_counter() - began):.1f} it/s)", flush=True)
        if step % run["checkpoint_every"] == 0 or step == last:
            write_log(rows, log_path)
            save_checkpoint(work, step, model, ema, optimizer)
        if snapshot is not None and run.get("snapshot_every") and step % run["snapshot_every"] == 0:
            with ema.swapped_in(params):
                snapshot(step)
    ema.copy_to(params)
    model.eval()


def write_log(rows: list[dict], path: Path) -> None:
    with atomic_path(path) as tmp:
        with open(tmp, "w", newline="") as file:
            writer = csv.DictWriter(file, fieldnames=["step", "loss", "lr", "grad_norm", "seconds"])
            writer.writeheader()
            writer.writerows(rows)
    plot_loss(path, path.with_name("loss.png"))


def plot_loss(csv_path: Path, png_path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = list(csv.DictReader(open(csv_path)))
    fig, ax = plt.subplots(figsize=(5, 3), dpi=100)
    ax.plot([int(r["step"]) for r in rows], [float(r["loss"]) for r in rows], lw=1)
    ax.set(xlabel="step", ylabel="loss (mean of 50 steps)", title=csv_path.parent.name, yscale="log")
    fig.tight_layout()
    with atomic_path(png_path) as tmp:
        fig.savefig(tmp)
    plt.close(fig)


# ---------------------------------------------------------------------------------------------------------------
# Steps
# ---------------------------------------------------------------------------------------------------------------
class Context:
    """What every step needs: config, folders, device, the data and the frozen text embeddings."""

    def __init__(self, cfg: dict, work: Path, device: torch.device, resume: str, steps_scale: float):
        self.cfg, self.work, self.device, self.resume, self.steps_scale = cfg, work, device, resume, steps_scale
        self._data = None
        self.text_encoder = self.tokenizer = self.caption_ids = None
        self.text_trainable = False

    def run_config(self, name: str) -> dict:
        run = dict(self.cfg[name], seed=self.cfg["seed"])
        run["steps"] = max(1, round(run["steps"] * self.steps_scale))
        run["checkpoint_every"] = max(1, min(run["checkpoint_every"], run["steps"]))
        return run

    @property
    def data(self):
        if self._data is None:
            clips, index = make_data(self.cfg, self.cfg["seed"])
            self._data = clips.to(self.device), index.to(self.device)
        return self._data

    def load_text(self, folder: Path, trainable: bool, motion: bool = True):
        """The tokenizer and CLIP text model of `folder` (a pipeline folder, or the `text` step's output) for this
        step: trained along with the U-Net (then part of the step's model) or frozen; `motion`: captions with the
        motion words. Returns the text model."""
        from transformers import CLIPTextModel, CLIPTokenizer

        self.tokenizer = CLIPTokenizer.from_pretrained(str(folder / "tokenizer"))
        self.caption_ids = self.tokenizer(captions(motion) + [""], padding="max_length", truncation=True,
                                          max_length=self.tokenizer.model_max_length,
                                          return_tensors="pt")["input_ids"].to(self.device)
        self.text_encoder = CLIPTextModel.from_pretrained(str(folder / "text_encoder")).to(self.device)
        self.text_encoder.requires_grad_(trainable)
        self.text_trainable = trainable
        return self.text_encoder

    def model(self, unet) -> torch.nn.ModuleDict:
        """What a step trains: the U-Net, and the text model if it trains too."""
        parts = {"unet": unet}
        if self.text_trainable:
            parts["text_encoder"] = self.text_encoder
        return torch.nn.ModuleDict(parts)

    def text_for(self, index: torch.Tensor, generator) -> torch.Tensor:
        """Caption embeddings `(b, L, D)` of clips `index` (captions() order), replaced by "" with probability
        data.caption_dropout (for classifier-free guidance)."""
        drop = torch.rand(index.shape, generator=generator, device=self.device) < self.cfg["data"]["caption_dropout"]
        ids = self.caption_ids[torch.where(drop, len(self.caption_ids) - 1, index)]
        with torch.set_grad_enabled(self.text_trainable):
            return self.text_encoder(ids)[0]


def step_t2i(ctx: Context) -> None:
    """Text-to-image: a VideoUNet with no temporal layers (exactly diffusers' 2D U-Net) on single frames,
    written as a diffusers SD pipeline folder without VAE (pixel space)."""
    from diffusers import UNet2DConditionModel

    from vidiff.models.unet import VideoUNet
    from vidiff.training.stages import make_stage

    cfg, out = ctx.cfg, ctx.work / "t2i" / "sd"
    torch.manual_seed(cfg["seed"])
    unet = VideoUNet(dict(cfg["unet"]), temporal_conv=False, temporal_attention=False).to(ctx.device)
    print(f"t2i: U-Net with {sum(p.numel() for p in unet.parameters()) / 1e6:.2f} M parameters", flush=True)
    clips, index = ctx.data
    size = cfg["unet"]["sample_size"]
    ctx.load_text(ctx.work / "text", trainable=cfg["t2i"].get("train_text", False),
                  motion=cfg["t2i"].get("motion_words", True))

    def batch(generator, batch_size):
        pick = torch.randint(0, len(clips), (batch_size,), generator=generator, device=ctx.device)
        frame = torch.randint(0, clips.shape[2], (batch_size,), generator=generator, device=ctx.device)
        one = clips[pick, :, frame][:, :, None]                                     # (b, 3, 1, H, W)
        return to_pixels(one, frames=slice(None), size=size), ctx.text_for(index[pick], generator)

    run = ctx.run_config("t2i")
    stage = make_stage("base", prediction_type=cfg["scheduler"]["prediction_type"], snr_gamma=run.get("snr_gamma"))
    train_loop(ctx.model(unet), stage, batch, run, ctx.work / "t2i" / "train", scheduler_config(cfg),
               ctx.device, ctx.resume, "t2i")
    image_unet = UNet2DConditionModel(**cfg["unet"])
    image_unet.load_state_dict(unet.state_dict())  # same names: VideoUNet adopts diffusers' modules
    with atomic_dir(out) as tmp:
        image_unet.save_pretrained(str(tmp / "unet"))
        ctx.text_encoder.cpu().save_pretrained(str(tmp / "text_encoder"))
        shutil.copytree(ctx.work / "text" / "tokenizer", tmp / "tokenizer")
        (tmp / "scheduler").mkdir()
        (tmp / "scheduler" / "scheduler_config.json").write_text(json.dumps(scheduler_config(cfg), indent=2))
        (tmp / "model_index.json").write_text(json.dumps({
            "_class_name": "StableDiffusionPipeline", "unet": ["diffusers", "UNet2DConditionModel"],
            "text_encoder": ["transformers", "CLIPTextModel"], "tokenizer": ["transformers", "CLIPTokenizer"],
            "scheduler": ["diffusers", "DDPMScheduler"]}, indent=2))


def scheduler_config(cfg: dict, noise_shift: float | None = None) -> dict:
    """The diffusers DDPMScheduler config of a step; with `noise_shift` s, the same schedule at s times the noise
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


def step_base(ctx: Context, folder: Path | None = None, *, scratch: bool = False, budget: float = 1.0) -> None:
    """Inflate the text-to-image model (`vidiff inflate`'s code) and train all weights on 8-frame clips, in
    `folder` (default <work>/base, which also saves EMA snapshots every base.snapshot_every steps).
    The inflation ablation's runs: `scratch`, the same video U-Net from a random start (same text model, data and
    recipe); `budget`, the whole recipe (both phases, their learning-rate schedules) with its steps scaled."""
    from vidiff.models.unet import VideoUNet
    from vidiff.pipelines.folder import inflate_pipeline, read_info, write_pipeline_folder
    from vidiff.training.stages import make_stage

    cfg, init = ctx.cfg, ctx.work / "base" / "inflated"
    folder = folder or ctx.work / "base"
    name = folder.name
    architecture = {k: cfg["base"][k] for k in BASE_ARCHITECTURE if k in cfg["base"]}  # VideoUNet options
    if not (init / "vidiff.json").is_file():
        inflate_pipeline(ctx.work / "t2i" / "sd", init, defaults=cfg["defaults"], seed=cfg["seed"], **architecture)
    if scratch:
        torch.manual_seed(cfg["seed"])
        unet = VideoUNet(dict(cfg["unet"]), **architecture).to(ctx.device)
    else:
        unet = VideoUNet.from_pretrained(init / "unet").to(ctx.device)
    print(f"{name}: U-Net with {sum(p.numel() for p in unet.parameters()) / 1e6:.2f} M parameters", flush=True)
    clips, index = ctx.data
    size, frames = cfg["unet"]["sample_size"], slice(None, None, 2)
    info = read_info(init)
    info["source"] = "tools/train_demo.py (configs/demo/demo.yaml)"
    text_encoder = ctx.load_text(init, trainable=cfg["base"].get("train_text", False))
    schedule = scheduler_config(cfg, cfg["base"].get("noise_shift"))
    parts = dict(text_encoder=text_encoder, tokenizer=ctx.tokenizer, info=info,
                 scheduler_config=dict(json.loads((init / "scheduler" / "scheduler_config.json").read_text()),
                                       **schedule))

    def batch(generator, batch_size):
        pick = torch.randint(0, len(clips), (batch_size,), generator=generator, device=ctx.device)
        return to_pixels(clips[pick], frames=frames, size=size), ctx.text_for(index[pick], generator)

    snapshot = None
    if folder == ctx.work / "base":
        def snapshot(step: int) -> None:  # the EMA model so far, as a pipeline folder (accuracy vs steps)
            write_pipeline_folder(folder / "snapshots" / f"step-{step:06d}", unet=unet, **parts)

    def stage_for(run):
        return make_stage("base", prediction_type=cfg["scheduler"]["prediction_type"], snr_gamma=run.get("snr_gamma"),
                          noisy_fraction=run.get("noisy_fraction", 0.0), noisy_from=run.get("noisy_from", 0.75))

    run, finish = base_runs(ctx, budget)
    train_loop(ctx.model(unet), stage_for(run), batch, run, folder / "train", schedule, ctx.device, ctx.resume,
               name, snapshot=snapshot)
    if finish:
        # The finishing phase: the trained (EMA) weights on, with its own settings, checkpoints and EMA
        # (<folder>/finish/); snapshots go on counting from the first phase's last step.
        train_loop(ctx.model(unet), stage_for(finish), batch, finish, folder / "finish", schedule, ctx.device,
                   ctx.resume, f"{name} finish",
                   snapshot=snapshot and (lambda step: step and snapshot(run["steps"] + step)))
    write_pipeline_folder(folder / "final", unet=unet.cpu(), **dict(parts, text_encoder=text_encoder.cpu()))


def base_runs(ctx: Context, budget: float = 1.0) -> tuple[dict, dict | None]:
    """The base recipe's two phases (the finishing phase None if the config has none), steps x `budget`."""
    run, finish = ctx.run_config("base"), None
    if ctx.cfg["base"].get("finish"):
        finish = dict(run, **ctx.cfg["base"]["finish"])
        finish["steps"] = max(1, round(finish["steps"] * ctx.steps_scale))
    for phase in filter(None, (run, finish)):
        phase["steps"] = max(1, round(phase["steps"] * budget))
        phase["checkpoint_every"] = max(1, min(phase["checkpoint_every"], phase["steps"]))
    return run, finish


def ablation_runs(ctx: Context, budgets=None, starts=("inflated", "scratch")) -> list[tuple[str, float, int, Path]]:
    """The inflation ablation's runs `(start, budget, steps, folder)`: the base recipe at every `ablation.budgets`
    fraction of its steps (both phases: `steps` in all) from the inflated start and from scratch. The inflated
    run at budget 1 is the base."""
    runs = []
    for budget in budgets or ctx.cfg["ablation"]["budgets"]:
        run, finish = base_runs(ctx, budget)
        total = run["steps"] + (finish["steps"] if finish else 0)
        for start in starts:
            folder = (ctx.work / "base" if start == "inflated" and budget == 1
                      else ctx.work / "ablation" / f"{start}-{total}")
            runs.append((start, budget, total, folder))
    return runs


def step_ablation(ctx: Context, budgets=None, starts=("inflated", "scratch")) -> None:
    """Train the inflation ablation's runs that are not there yet (the base is its own step)."""
    for start, budget, _, folder in ablation_runs(ctx, budgets, starts):
        if folder == ctx.work / "base":
            continue
        if ctx.resume == "auto" and (folder / "final" / "vidiff.json").is_file():
            print(f"{folder.name}: done, skipped", flush=True)
            continue
        step_base(ctx, folder, scratch=start == "scratch", budget=budget)


def step_stage(ctx: Context, name: str) -> None:
    """A cascade stage (`vidiff inflate --stage NAME`'s code on the text-to-image model), trained on crops:
    interpolation on `window` consecutive 32x32 frames (x2 keyframe masks, plus the future / past prediction
    masks that let it extend clips); ssr on `window` consecutive frames, `crop` x `crop` patches of the 64x64
    clips (the U-Net is convolutional: patches teach it the same upsampling at a quarter of the cost). The text
    model stays the text-to-image model's."""
    from vidiff.models.unet import VideoUNet
    from vidiff.pipelines.folder import read_info, write_pipeline_folder
    from vidiff.pipelines.stage_folder import inflate_stage
    from vidiff.training.stages import make_stage, stage_options

    cfg, s = ctx.cfg, ctx.cfg[name]
    init = ctx.work / name / "inflated"
    if not (init / "vidiff.json").is_file():
        inflate_stage(ctx.work / "t2i" / "sd", init, name, factor=s["factor"], defaults=s["defaults"],
                      seed=cfg["seed"])
    info = read_info(init)
    # the demo's own choices on top of the stage's defaults (its mask mix, its noise levels), checked by make_stage
    info["stage_options"] = dict(info["stage_options"], **s.get("stage_options", {}))
    unet = VideoUNet.from_pretrained(init / "unet").to(ctx.device)
    print(f"{name}: U-Net with {sum(p.numel() for p in unet.parameters()) / 1e6:.2f} M parameters", flush=True)
    run = ctx.run_config(name)
    stage = make_stage(name, latent_channels=3, prediction_type=cfg["scheduler"]["prediction_type"],
                       snr_gamma=run.get("snr_gamma"), **stage_options(name, info["stage_options"], {}))
    text_encoder = ctx.load_text(init, trainable=False)
    clips, index = ctx.data
    window, size, crop = s["window"], s["size"], s.get("crop") or s["size"]

    def batch(generator, batch_size):
        pick = torch.randint(0, len(clips), (batch_size,), generator=generator, device=ctx.device)
        start = torch.randint(0, clips.shape[2] - window + 1, (batch_size,), generator=generator, device=ctx.device)
        corner = torch.randint(0, size - crop + 1, (batch_size, 2), generator=generator, device=ctx.device)
        video = to_pixels(clips[pick], frames=slice(None), size=size)
        video = torch.stack([v[:, t:t + window, y:y + crop, x:x + crop]
                             for v, t, (y, x) in zip(video, start.tolist(), corner.tolist())])
        return video, ctx.text_for(index[pick], generator)

    train_loop(ctx.model(unet), stage, batch, run, ctx.work / name / "train", scheduler_config(cfg),
               ctx.device, ctx.resume, name)
    info["source"] = "tools/train_demo.py (configs/demo/demo.yaml)"
    write_pipeline_folder(ctx.work / name / "final", unet=unet.cpu(), text_encoder=text_encoder.cpu(),
                          tokenizer=ctx.tokenizer,
                          scheduler_config=json.loads((init / "scheduler" / "scheduler_config.json").read_text()),
                          info=info)


def step_publish(ctx: Context, out: Path, command: str) -> None:
    """Copy the trained models (U-Nets in fp16) with their logs into `out`, and record commands and checksums."""
    from safetensors.torch import load_file

    published = []
    for stage in demo.STAGES:
        final = ctx.work / stage / "final"
        if not (final / "vidiff.json").is_file():
            continue
        target = out / stage
        if target.exists():
            shutil.rmtree(target)
        shutil.copytree(final, target)
        weights = target / "unet" / "diffusion_pytorch_model.safetensors"
        save_safetensors_atomic({k: v.half() for k, v in load_file(str(weights)).items()}, weights,
                                metadata={"format": "pt"})
        for name in ("train_log.csv", "loss.png"):
            shutil.copy2(ctx.work / stage / "train" / name, target / name)
            if (ctx.work / stage / "finish" / name).is_file():  # the base's finishing phase (base.finish)
                shutil.copy2(ctx.work / stage / "finish" / name, target / f"finish_{name}")
        published.append(stage)
    for name in ("train_log.csv", "loss.png"):  # the text-to-image step the base was inflated from
        (out / "t2i").mkdir(parents=True, exist_ok=True)
        shutil.copy2(ctx.work / "t2i" / "train" / name, out / "t2i" / name)
    (out / "COMMANDS.md").write_text(
        "# How these demo models were made\n\n"
        f"    {command}\n\nConfiguration: configs/demo/demo.yaml (seed {ctx.cfg['seed']}, "
        f"steps x {ctx.steps_scale}), device: {ctx.device.type}. Each stage folder holds its train_log.csv and "
        "loss.png (the base also finish_train_log.csv and finish_loss.png, of its finishing phase); t2i/ holds "
        "those of the text-to-image model the base was inflated from.\n")
    demo.write_cascade(out)
    demo.write_checksums(out)
    total = sum(p.stat().st_size for p in demo.weight_files(out))
    print(f"publish: {', '.join(published)} -> {out} ({total / 1e6:.1f} MB of weights)", flush=True)


GALLERY_PROMPTS = ("a red circle moving right", "a green square moving up", "a blue triangle moving left",
                   "a yellow circle moving down", "a red triangle moving up", "a blue square moving right")


def step_gallery(out_gif: Path, model: Path = demo.DEMO_DIR, seed: int = 0, scale: int = 2) -> Path:
    """A GIF of the demo cascade's clips for GALLERY_PROMPTS side by side, each with its prompt under it
    (the README's picture), and a PNG of its middle frame next to it."""
    from PIL import Image, ImageDraw

    from vidiff.data.video_io import write_video
    from vidiff.pipelines.cascade import CascadePipeline
    from vidiff.pipelines.folder import read_info

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
    fps = read_info(model / "base")["defaults"]["fps"] * (f - 1) // 7 if f > 8 else 4
    out_gif.parent.mkdir(parents=True, exist_ok=True)
    write_video(out_gif, np.stack(frames), fps=max(4, fps))
    with atomic_path(out_gif.with_suffix(".png")) as tmp:
        Image.fromarray(frames[f // 2]).save(tmp)
    print(f"gallery: {out_gif} ({len(clips)} prompts, {f} frames of {w}x{h})", flush=True)
    return out_gif


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default=str(ROOT / "configs" / "demo" / "demo.yaml"))
    parser.add_argument("--work", default=str(ROOT / "runs" / "demo"), help="working folder (checkpoints, logs)")
    parser.add_argument("--out", default=str(demo.DEMO_DIR), help="where `publish` puts the models")
    parser.add_argument("--steps", default=",".join(STEPS[:-1]), help=f"comma-separated subset of {','.join(STEPS)}")
    parser.add_argument("--resume", default="auto", choices=("auto", "none"),
                        help="auto: skip finished steps, continue an interrupted one; none: redo the named steps")
    parser.add_argument("--steps-scale", type=float, default=1.0, help="multiply every step count (e.g. 0.05)")
    parser.add_argument("--device", default=None, help="cuda | cpu (default: cuda when available)")
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
    cfg = yaml.safe_load(Path(args.config).read_text())
    torch.set_num_threads(args.threads)
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    work = Path(args.work)
    ctx = Context(cfg, work, device, args.resume, args.steps_scale)
    done = {"text": work / "text" / "text_encoder", "t2i": work / "t2i" / "sd" / "model_index.json",
            "base": work / "base" / "final" / "vidiff.json",
            "interpolation": work / "interpolation" / "final" / "vidiff.json",
            "ssr": work / "ssr" / "final" / "vidiff.json"}
    command = "python tools/train_demo.py " + " ".join(argv if argv is not None else sys.argv[1:])
    for name in args.steps:
        if args.resume == "auto" and name in done and done[name].exists():
            print(f"{name}: done ({done[name]} exists), skipped", flush=True)
            continue
        began = time.perf_counter()
        if name == "text":
            build_text(cfg, work / "text", cfg["seed"])
        elif name == "publish":
            step_publish(ctx, Path(args.out), command.strip())
        elif name == "gallery":
            step_gallery(ROOT / "docs" / "demo.gif", Path(args.out))
        elif name in ("interpolation", "ssr"):
            step_stage(ctx, name)
        elif name == "ablation":
            step_ablation(ctx, args.budgets, args.starts)
        else:
            {"t2i": step_t2i, "base": step_base}[name](ctx)
        print(f"{name}: finished in {time.perf_counter() - began:.0f} s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
