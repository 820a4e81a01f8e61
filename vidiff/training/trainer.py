"""One linear accelerate training loop for every stage: prepare, loop, step, log, save.

    vidiff train configs/train/finetune.yaml data.manifest=clips/ output_dir=runs/ft
    accelerate launch --num_processes 8 -m vidiff train configs/train/finetune.yaml --resume auto
    ACCELERATE_USE_CPU=true torchrun --nproc_per_node 2 -m vidiff train ...   # several CPU processes (gloo)

(`accelerate launch --cpu` starts a single process; multi-process CPU runs go through torchrun as above.)

Layout of `output_dir`:
    inflated/                the SD pipeline inflated once (when model.pretrained is not a vidiff folder)
    checkpoints/checkpoint-00000500/   accelerate `save_state` + trainer_state.json (last K kept)
    logs/                    TensorBoard events;  train_log.csv;  loss.png
    validation/step-00000500/  00-<prompt>.mp4 + .png contact sheets
    pipeline/                the final vidiff pipeline folder (EMA weights when train.ema)
    temporal.safetensors     the temporal layers alone (a motion module)

Determinism and resumption. The data order is a seeded permutation per epoch, walked by a sampler that can
start at any sample; each item's random augmentation is seeded by (seed, position in the stream); the noise,
timesteps, caption dropout and VAE sampling of step n on rank r come from a generator seeded by (seed, n, r).
So a run stopped after step n and resumed with `--resume auto` sees exactly the batches and noise of the
straight run, whatever the number of DataLoader workers.

Under DDP only trainable parameters reach the optimiser, and a probe forward/backward before `prepare`
freezes any trainable parameter that does not take part in the forward (with a warning naming it), so every
trainable parameter gets a gradient on every step and DDP runs with `find_unused_parameters=False` (no
per-step graph walk, and no "Expected to have finished reduction" error of the kind Tune-A-Video hits).
"""
from __future__ import annotations

import contextlib
import csv
import json
import math
import os
import random
import re
import shutil
import signal
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from vidiff.config import Config
from vidiff.training.ema import EMA
from vidiff.training.stages import Stage, make_stage
from vidiff.utils import atomic_path, write_json_atomic

CSV_COLUMNS = ("step", "epoch", "loss", "lr", "grad_norm", "samples_per_s", "data_wait_share", "skipped_files",
               "nonfinite_steps")
CHECKPOINT_RE = re.compile(r"^checkpoint-(\d+)$")


class TrainingError(RuntimeError):
    """The run cannot continue (too many non-finite losses, a failed checkpoint save)."""


@dataclass
class TrainResult:
    step: int                      # optimiser steps done (including skipped non-finite ones)
    status: str                    # "finished" | "interrupted"
    output_dir: Path
    checkpoint: Path | None        # the last checkpoint written
    pipeline: Path | None          # output_dir/pipeline when finished
    nonfinite_steps: int
    skipped_files: int
    is_main_process: bool = True   # False on the other ranks of a distributed run


# ---------------------------------------------------------------------------------------------------------------
# data: an endless seeded sampler and per-position seeded items
# ---------------------------------------------------------------------------------------------------------------
class EndlessSampler(Sampler):
    """Yields `(index, position)` forever: epoch e is a permutation of range(num_items) seeded by (seed, e),
    epochs back to back, starting at global sample `start`. Under accelerate each rank takes every
    num_processes-th batch of this stream, so `start` = samples consumed by all ranks together."""

    def __init__(self, num_items: int, seed: int, start: int = 0):
        if num_items < 1:
            raise ValueError("the training dataset is empty")
        self.num_items, self.seed, self.start = num_items, seed, start

    def permutation(self, epoch: int) -> list[int]:
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
        return torch.randperm(self.num_items, generator=g).tolist()

    def __iter__(self):
        epoch, offset = divmod(self.start, self.num_items)
        position = self.start
        while True:
            for index in self.permutation(epoch)[offset:]:
                yield index, position
                position += 1
            epoch, offset = epoch + 1, 0

    def __len__(self) -> int:  # endless; a large finite number keeps DataLoader / accelerate arithmetic working
        return 2 ** 40


class SeededItems(Dataset):
    """Wraps a dataset so item `(index, position)` is drawn with the python / numpy / torch RNGs seeded by
    (seed, position): random clip starts, crops and flips do not depend on workers, ranks or resumption."""

    def __init__(self, dataset, seed: int):
        self.dataset, self.seed = dataset, seed

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key):
        index, position = key
        if hasattr(self.dataset, "set_epoch"):  # datasets that seed augmentation by (seed, epoch, index)
            self.dataset.set_epoch(position // len(self.dataset))
        item_seed = (self.seed * 1_000_003 + position) % 2 ** 32
        py_state, np_state = random.getstate(), np.random.get_state()
        with torch.random.fork_rng(devices=[]):
            random.seed(item_seed)
            np.random.seed(item_seed)
            torch.manual_seed(item_seed)
            try:
                return self.dataset[index]
            finally:
                random.setstate(py_state)
                np.random.set_state(np_state)


def _ignore_stop_signals(worker_id: int) -> None:
    """DataLoader workers leave Ctrl-C (sent to the whole process group) to the main process, which saves a
    checkpoint at the step boundary and then shuts them down. (SIGTERM keeps its default: the main process
    uses it to stop workers that do not exit when asked.)"""
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def collate(items: list[dict]) -> dict:
    out = {}
    for key in items[0]:
        values = [item[key] for item in items]
        if torch.is_tensor(values[0]):
            out[key] = torch.stack(values)
        elif isinstance(values[0], (int, float)) and not isinstance(values[0], bool):
            out[key] = torch.tensor(values)
        else:
            out[key] = values
    return out


def make_dataset(config: Config, *, images: bool = False):
    """The training dataset for `config.data`: videos (a latent cache when `data.cache` is set), or with
    `images=True` the one-frame image dataset of joint image + video training."""
    d = config.data
    from vidiff.data import VideoDataset

    if images:
        return VideoDataset(d.image_manifest, 1, d.height, d.width, train=True, flip=d.flip,
                            seed=config.train.seed + 1, image_ok=True)
    if d.cache:
        from vidiff.data import CachedLatentDataset

        return CachedLatentDataset(d.cache)
    # Images in a video manifest would make one-frame samples that cannot share a batch with clips: they are
    # skipped (and counted) as bad samples; joint training takes them from data.image_manifest instead.
    return VideoDataset(d.manifest, d.num_frames, d.height, d.width, stride=d.stride, fps=d.fps, train=True,
                        flip=d.flip, seed=config.train.seed, prompt=d.prompt or None, image_ok=False)


# ---------------------------------------------------------------------------------------------------------------
# model: loading, trainable selection, the unused-parameter probe
# ---------------------------------------------------------------------------------------------------------------
def is_vidiff_pipeline(path) -> bool:
    return (Path(path) / "vidiff.json").is_file()


def load_pipeline(config: Config, accelerator):
    """A VideoPipeline from `model.pretrained`: a vidiff folder as is, or an SD pipeline inflated once into
    output_dir/inflated (by the main process; the others wait and load the same folder)."""
    from vidiff.pipelines import VideoPipeline

    m = config.model
    source = Path(m.pretrained)
    if not is_vidiff_pipeline(source):
        if not source.exists() and not re.fullmatch(r"[\w.-]+/[\w.-]+", m.pretrained):
            raise FileNotFoundError(f"model.pretrained={m.pretrained!r} does not exist; give an SD pipeline folder "
                                    "(or hub id) to inflate, or a vidiff pipeline folder (with vidiff.json)")
        inflated = Path(config.output_dir) / "inflated"
        if accelerator.is_main_process and not is_vidiff_pipeline(inflated):
            from vidiff.pipelines.folder import inflate_pipeline

            inflate_pipeline(m.pretrained, inflated, cross_frame=m.cross_frame or "none",
                             temporal_conv=m.temporal_conv, temporal_attention=m.temporal_attention)
        accelerator.wait_for_everyone()
        source = inflated
    pipe = VideoPipeline.from_pretrained(source, device="cpu", dtype="fp32")  # fp32 master weights
    if m.cross_frame is not None:
        pipe.unet.set_cross_frame(m.cross_frame)
    pipe.unet.set_attention_backend(m.attention_backend)
    return pipe, source


def select_trainable(unet, mode: str, stage: Stage) -> dict[str, torch.nn.Parameter]:
    """Set requires_grad by `train.trainable` and return the trainable parameters by name.

    temporal         the temporal conv / attention layers (AnimateDiff-style motion module)
    temporal+attn-q  + the spatial attention query projections `attn1.to_q`, `attn2.to_q` (Tune-A-Video)
    all              every U-Net weight
    """
    def wanted(name: str) -> bool:
        if mode == "all" or stage.is_trainable_extra(name):
            return True
        temporal = ".temporal_" in name
        if mode == "temporal":
            return temporal
        if mode == "temporal+attn-q":
            return temporal or ".to_q." in name
        raise ValueError(f"unknown train.trainable {mode!r}; choose temporal, temporal+attn-q or all")

    trainable = {}
    for name, p in unet.named_parameters():
        p.requires_grad_(wanted(name))
        if p.requires_grad:
            trainable[name] = p
    if not trainable:
        raise ValueError(f"train.trainable={mode!r} selects no parameters: this U-Net has no temporal layers "
                         "(inflated with temporal_conv and temporal_attention off); use train.trainable=all")
    return trainable


def drop_unused_parameters(unet, trainable: dict, stage: Stage, text_dim: int, num_frames: int, device) -> list[str]:
    """Run one tiny forward/backward and freeze trainable parameters that get no gradient (they would make
    DDP fail with find_unused_parameters=False). Returns their names."""
    channels = unet.in_channels + unet.conditioning_channels
    size = unet.spatial_factor
    sample = torch.zeros(1, channels, num_frames, size, size, device=device)
    context = torch.zeros(1, 1, text_dim, device=device)
    latents = torch.zeros(1, unet.in_channels, num_frames, size, size, device=device)
    out = unet(sample, torch.zeros(1, dtype=torch.long, device=device), context, **stage.unet_kwargs(latents))
    out.float().sum().backward()
    unused = [name for name, p in trainable.items() if p.grad is None]
    for p in trainable.values():
        p.grad = None
    if len(unused) == len(trainable):
        raise TrainingError("no trainable parameter receives a gradient; is gradient flow blocked?")
    for name in unused:
        trainable.pop(name).requires_grad_(False)
    return unused


@torch.no_grad()
def encode_batch(batch: dict, vae, text_encoder, tokenizer, *, caption_dropout: float, generator, device,
                 vae_chunk: int = 16) -> tuple[torch.Tensor, torch.Tensor]:
    """Batch -> (latents `(b, c, f, h, w)` scaled by the VAE factor, text embeddings `(b, L, D)`)."""
    if "latents" in batch:  # a latent cache: both already computed
        return batch["latents"].to(device), batch["encoder_hidden_states"].to(device)
    pixels = batch["pixel_values"].to(device)                        # (b, 3, f, h, w) in [-1, 1]
    b, f = pixels.shape[0], pixels.shape[2]
    if vae is None:  # pixel-space model
        latents = pixels
    else:
        frames = pixels.permute(0, 2, 1, 3, 4).reshape(b * f, *pixels.shape[1:2], *pixels.shape[3:])  # (b f) c h w
        parts = [vae.encode(chunk.to(vae.dtype)).latent_dist.sample(generator=generator)
                 for chunk in frames.split(vae_chunk)]
        latents = torch.cat(parts) * vae.config.scaling_factor
        latents = latents.reshape(b, f, *latents.shape[1:]).permute(0, 2, 1, 3, 4)  # b c f h w
    prompts = list(batch["prompt"])
    if caption_dropout > 0:
        drop = torch.rand(len(prompts), generator=generator, device=generator.device) < caption_dropout
        prompts = ["" if d else p for p, d in zip(prompts, drop.tolist())]
    ids = tokenizer(prompts, padding="max_length", max_length=tokenizer.model_max_length, truncation=True,
                    return_tensors="pt").input_ids.to(device)
    text = text_encoder(ids)[0]
    return latents.float(), text.float()


# ---------------------------------------------------------------------------------------------------------------
# checkpoints
# ---------------------------------------------------------------------------------------------------------------
def list_checkpoints(root) -> list[Path]:
    """Complete checkpoints (with trainer_state.json) under `root`, oldest first."""
    root = Path(root)
    if not root.is_dir():
        return []
    found = []
    for child in root.iterdir():
        match = CHECKPOINT_RE.match(child.name)
        if match and (child / "trainer_state.json").is_file():
            found.append((int(match.group(1)), child))
    return [path for _, path in sorted(found)]


def find_resume_checkpoint(output_dir, resume: str | None) -> Path | None:
    """`--resume auto` -> the latest complete checkpoint (None when there is none); a path -> that one."""
    if not resume:
        return None
    if resume == "auto":
        found = list_checkpoints(Path(output_dir) / "checkpoints")
        return found[-1] if found else None
    path = Path(resume)
    if not (path / "trainer_state.json").is_file():
        raise FileNotFoundError(f"--resume {resume}: not a complete checkpoint folder (no trainer_state.json); "
                                f"use --resume auto or a folder under {Path(output_dir) / 'checkpoints'}")
    return path


def save_checkpoint(accelerator, output_dir: Path, step: int, state: dict, keep: int) -> Path:
    """`accelerator.save_state` into a temporary folder renamed into place, then prune to the last `keep`.

    A failure (disk full) removes the temporary folder and leaves every earlier checkpoint as it was.
    """
    root = output_dir / "checkpoints"
    final = root / f"checkpoint-{step:08d}"
    tmp = root / f".checkpoint-{step:08d}.tmp"
    if (final / "trainer_state.json").is_file():
        return final  # this step is already saved (e.g. the end of a run right after a periodic save)
    main = accelerator.is_main_process
    if main:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    accelerator.wait_for_everyone()
    try:
        accelerator.save_state(str(tmp))
        if main:
            write_json_atomic(tmp / "trainer_state.json", state)  # written last: marks the folder complete
        accelerator.wait_for_everyone()
        if main:
            shutil.rmtree(final, ignore_errors=True)
            os.replace(tmp, final)
            for old in list_checkpoints(root)[:-keep]:
                shutil.rmtree(old, ignore_errors=True)
    except Exception as e:
        if main:
            shutil.rmtree(tmp, ignore_errors=True)
        previous = list_checkpoints(root)
        kept = f"the previous checkpoint {previous[-1]} is intact" if previous else "no earlier checkpoint exists"
        raise TrainingError(f"saving the checkpoint for step {step} failed ({type(e).__name__}: {e}); {kept}") from e
    accelerator.wait_for_everyone()
    return final


# ---------------------------------------------------------------------------------------------------------------
# logs: CSV, loss curve, validation clips
# ---------------------------------------------------------------------------------------------------------------
def open_csv(path: Path, resume_step: int):
    """Open the CSV log for appending; on resume, drop rows logged after the checkpoint's step."""
    rows = []
    if resume_step and path.is_file():
        with open(path, newline="") as f:
            rows = [r for r in csv.DictReader(f) if r.get("step", "").isdigit() and int(r["step"]) <= resume_step]
    with atomic_path(path) as tmp, open(tmp, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=CSV_COLUMNS)
        writer.writeheader()
        writer.writerows({k: r.get(k, "") for k in CSV_COLUMNS} for r in rows)
    f = open(path, "a", newline="")
    return f, csv.DictWriter(f, fieldnames=CSV_COLUMNS)


def plot_loss_curve(csv_path: Path, png_path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    steps, losses = [], []
    with open(csv_path, newline="") as f:
        for row in csv.DictReader(f):
            try:
                loss = float(row["loss"])
            except (TypeError, ValueError):
                continue
            if math.isfinite(loss):
                steps.append(int(row["step"]))
                losses.append(loss)
    fig, ax = plt.subplots(figsize=(7, 4), dpi=100)
    ax.plot(steps, losses, lw=0.8, alpha=0.5, label="loss")
    if len(losses) >= 10:  # a moving average makes the trend readable through the timestep noise
        window = max(5, len(losses) // 20)
        smooth = np.convolve(losses, np.ones(window) / window, mode="valid")
        ax.plot(steps[window - 1:], smooth, lw=1.6, label=f"mean of {window}")
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    # a log axis only when the loss spans orders of magnitude (early fine-tuning); else plain numbers read better
    ax.set_yscale("log" if losses and min(losses) > 0 and max(losses) / min(losses) > 20 else "linear")
    ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    with atomic_path(png_path) as tmp:
        fig.savefig(tmp)
    plt.close(fig)


def _slug(text: str, limit: int = 40) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")[:limit] or "prompt"


def render_validation(pipe, config: Config, out_dir: Path, device) -> list[Path]:
    """One clip per validation prompt (mp4 + contact sheet); leaves the training RNG untouched."""
    from vidiff.data import write_contact_sheet, write_video

    v, d = config.validation, config.data
    written = []
    devices = [device] if torch.device(device).type == "cuda" else []
    was_training = pipe.unet.training
    pipe.unet.eval()
    try:
        with torch.random.fork_rng(devices=devices):
            for i, prompt in enumerate(v.prompts):
                generator = torch.Generator(device=device).manual_seed(v.seed + i)
                frames = pipe(prompt, num_frames=v.num_frames or d.num_frames, height=v.height or d.height,
                              width=v.width or d.width, num_inference_steps=v.steps,
                              guidance_scale=v.guidance_scale, generator=generator, progress=False)
                stem = out_dir / f"{i:02d}-{_slug(prompt)}"
                write_video(stem.with_suffix(".mp4"), frames, fps=v.fps)
                write_contact_sheet(stem.with_suffix(".png"), frames)
                written.append(stem.with_suffix(".mp4"))
    finally:
        pipe.unet.train(was_training)
    return written


def _flat_config(config: Config) -> dict:
    flat = {}
    for section, values in config.to_dict().items():
        if isinstance(values, dict):
            for key, value in values.items():
                flat[f"{section}.{key}"] = value if isinstance(value, (int, float, str, bool)) else str(value)
        else:
            flat[section] = values
    return flat


@contextlib.contextmanager
def stop_requests():
    """SIGINT / SIGTERM set a flag (checked at the step boundary: save, then exit); a second one aborts."""
    requested = {"signal": None}

    def handler(signum, frame):
        if requested["signal"] is not None:
            raise KeyboardInterrupt
        requested["signal"] = signal.Signals(signum).name

    previous = {}
    try:
        for sig in (signal.SIGINT, signal.SIGTERM):
            previous[sig] = signal.signal(sig, handler)
    except ValueError:  # not the main thread: leave signals alone
        pass
    try:
        yield requested
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


def row_values(step: int, loss: float, lr: float, grad_norm: float) -> dict:
    return {"step": step, "loss": loss, "lr": lr, "grad_norm": grad_norm}


@torch.no_grad()
def check_ranks_agree(accelerator, trainable: dict) -> None:
    """Under data parallelism every rank must hold the same weights: compare a float64 checksum of the
    trainable parameters across ranks and stop loudly if they diverged."""
    if accelerator.num_processes == 1:
        return
    weights = torch.arange(1, len(trainable) + 1, dtype=torch.float64, device=accelerator.device)
    sums = torch.stack([p.detach().double().sum() for p in trainable.values()])
    checksum = (weights * sums).sum().reshape(1)
    gathered = accelerator.gather(checksum)
    if not torch.all(gathered == gathered[0]):
        raise TrainingError(f"the ranks' weights diverged (checksums {gathered.tolist()}); this is a bug, "
                            "please report it with your accelerate config")
    if accelerator.is_main_process:
        print(f"ranks agree: {accelerator.num_processes} processes hold identical trainable weights "
              f"(checksum {float(checksum):.10g})")


# ---------------------------------------------------------------------------------------------------------------
# the loop
# ---------------------------------------------------------------------------------------------------------------
def train(config: Config, *, resume: str | None = None, on_step=None, log=print) -> TrainResult:
    """Train `config.train.stage` on `config.data`; see the module docstring for what lands in output_dir.

    resume: None (start at step 0), "auto" (the latest checkpoint in output_dir, if any) or a checkpoint folder.
    on_step: optional `on_step(step, row) -> bool`, called on every rank after each optimiser step with the
        logged values; returning True stops the run as SIGTERM does (checkpoint, then return "interrupted").
    """
    from accelerate import Accelerator, DistributedDataParallelKwargs
    from accelerate.utils import ProjectConfiguration, set_seed
    from diffusers import DDPMScheduler
    from diffusers.optimization import get_scheduler
    from tqdm.auto import tqdm

    t, d, v = config.train, config.data, config.validation
    output_dir = Path(config.output_dir)

    # --- prepare -------------------------------------------------------------------------------------------
    accelerator = Accelerator(
        gradient_accumulation_steps=t.gradient_accumulation_steps,
        mixed_precision=t.mixed_precision,
        log_with="tensorboard",
        project_config=ProjectConfiguration(project_dir=str(output_dir), logging_dir=str(output_dir / "logs")),
        # Every trainable parameter gets a gradient every step (see drop_unused_parameters): no graph walk.
        kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=False)],
    )
    main = accelerator.is_main_process
    say = log if main else (lambda *a, **k: None)
    device = accelerator.device
    checkpoint = find_resume_checkpoint(output_dir, resume)
    if resume == "auto" and checkpoint is None:
        say(f"--resume auto: no checkpoint under {output_dir / 'checkpoints'}; starting from step 0")
    if main:
        output_dir.mkdir(parents=True, exist_ok=True)
        write_json_atomic(output_dir / "config.json", config.to_dict())

    set_seed(t.seed)  # the same on every rank: identical initial weights wherever they are random
    pipe, source = load_pipeline(config, accelerator)
    unet, vae, text_encoder, tokenizer = pipe.unet, pipe.vae, pipe.text_encoder, pipe.tokenizer
    noise_scheduler = DDPMScheduler.from_config(pipe.scheduler_config)
    prediction_type = t.prediction_type or noise_scheduler.config.prediction_type
    stage = make_stage(t.stage, prediction_type=prediction_type, snr_gamma=t.snr_gamma, noise_offset=t.noise_offset)
    if stage.conditioning_channels != unet.conditioning_channels:
        raise ValueError(f"stage {stage.name!r} feeds {stage.conditioning_channels} conditioning channels but the "
                         f"U-Net in {source} takes {unet.conditioning_channels}")

    for frozen in (vae, text_encoder):
        if frozen is not None:
            frozen.requires_grad_(False).eval().to(device)
    unet.to(device).train()
    if t.gradient_checkpointing:
        unet.enable_gradient_checkpointing()
    trainable = select_trainable(unet, t.trainable, stage)
    text_dim = text_encoder.config.hidden_size
    unused = drop_unused_parameters(unet, trainable, stage, text_dim, d.num_frames, device)
    if unused:
        say(f"warning: {len(unused)} trainable parameter(s) take no part in the forward and stay frozen: "
            f"{', '.join(unused[:5])}{' ...' if len(unused) > 5 else ''}")
    num_trainable = sum(p.numel() for p in trainable.values())
    say(f"training {num_trainable / 1e6:.2f}M of {sum(p.numel() for p in unet.parameters()) / 1e6:.2f}M U-Net "
        f"parameters ({t.trainable}), stage {stage.name}, {prediction_type} objective, "
        f"{accelerator.num_processes} process(es) on {device}")

    optimizer = torch.optim.AdamW(list(trainable.values()), lr=t.learning_rate, betas=(t.adam_beta1, t.adam_beta2),
                                  eps=t.adam_epsilon, weight_decay=t.weight_decay)
    # accelerate steps a prepared scheduler once per process per optimiser step: scale its horizon to match.
    lr_scheduler = get_scheduler(t.lr_scheduler, optimizer, num_warmup_steps=t.lr_warmup_steps * accelerator.num_processes,
                                 num_training_steps=t.max_steps * accelerator.num_processes)
    ema = EMA(trainable, t.ema_decay) if t.ema else None

    dataset = make_dataset(config)
    if d.cache:  # the cache fixes the clip geometry: it must be the one the config asks for
        factor = pipe.vae_scale_factor
        expected = (unet.in_channels, d.num_frames, d.height // factor, d.width // factor)
        found = tuple(dataset[0]["latents"].shape)
        if found != expected:
            raise ValueError(f"data.cache {d.cache} holds latents of shape {found} but data.num_frames / height / "
                             f"width ask for {expected}; rebuild the cache or set them to match")
    samples_per_step = t.batch_size * t.gradient_accumulation_steps * accelerator.num_processes
    # samples_seen counts clips drawn by all ranks together: the data position, whatever the process count.
    state = {"step": 0, "samples_seen": 0, "image_samples_seen": 0, "nonfinite_steps": 0, "skipped_files": 0}
    if checkpoint is not None:
        state.update(json.loads((checkpoint / "trainer_state.json").read_text()))
        saved = state.pop("config", {})
        for section, key in (("train", "stage"), ("train", "trainable"), ("train", "ema")):
            before, now = saved.get(section, {}).get(key), getattr(getattr(config, section), key)
            if before is not None and before != now:
                raise ValueError(f"{section}.{key}={now!r} but {checkpoint} was trained with {before!r}: the optimiser "
                                 f"and EMA state cannot carry over; set {section}.{key}={before!r} to resume, or use "
                                 "a new output_dir")
    sampler = EndlessSampler(len(dataset), t.seed, start=state["samples_seen"])
    worker_options = dict(num_workers=d.num_workers, worker_init_fn=_ignore_stop_signals)
    loader = DataLoader(SeededItems(dataset, t.seed), batch_size=t.batch_size, sampler=sampler, collate_fn=collate,
                        drop_last=True, pin_memory=device.type == "cuda", **worker_options)
    image_loader = None
    if d.image_batch_size:  # joint image + video training: one-frame samples in their own batches
        images = make_dataset(config, images=True)
        image_loader = DataLoader(SeededItems(images, t.seed + 1), batch_size=d.image_batch_size,
                                  sampler=EndlessSampler(len(images), t.seed + 1, start=state["image_samples_seen"]),
                                  collate_fn=collate, drop_last=True, **worker_options)

    unet, optimizer, loader, lr_scheduler = accelerator.prepare(unet, optimizer, loader, lr_scheduler)
    image_batches = iter(accelerator.prepare(image_loader)) if image_loader is not None else None
    if ema is not None:
        ema.to(device)
        accelerator.register_for_checkpointing(ema)
    if checkpoint is not None:
        accelerator.load_state(str(checkpoint))
        say(f"resumed from {checkpoint} at step {state['step']}")
    global_step = state["step"]

    csv_file = csv_writer = None
    if main:
        accelerator.init_trackers("tensorboard", config=_flat_config(config))
        csv_file, csv_writer = open_csv(output_dir / "train_log.csv", global_step if checkpoint else 0)

    def trainer_state() -> dict:
        return {**state, "step": global_step, "num_processes": accelerator.num_processes, "config": config.to_dict()}

    def checkpoint_now() -> Path:
        return save_checkpoint(accelerator, output_dir, global_step, trainer_state(), t.keep_checkpoints)

    # --- loop ----------------------------------------------------------------------------------------------
    generator = torch.Generator(device=device)
    nonfinite_in_row = 0
    last_checkpoint = checkpoint
    status = "finished"
    micro_losses, micro_skipped, data_wait = [], 0, 0.0
    progress = tqdm(total=t.max_steps, initial=global_step, disable=not main, desc="train", dynamic_ncols=True)
    step_start = batch_wait_start = time.perf_counter()
    with stop_requests() as stop:
        if global_step >= t.max_steps:
            loader_iter = iter(())
        else:
            loader_iter = iter(loader)
        for batch in loader_iter:
            data_wait += time.perf_counter() - batch_wait_start
            if not micro_losses:
                # Noise, timesteps, dropout and VAE samples of step n on this rank: a function of (seed, n, rank).
                generator.manual_seed((t.seed * 1_000_003 + global_step) * 1_009 + accelerator.process_index)
            with accelerator.accumulate(unet):
                with accelerator.autocast():
                    latents, text = encode_batch(batch, vae, text_encoder, tokenizer, generator=generator,
                                                 caption_dropout=t.caption_dropout, device=device)
                loss = stage.loss(unet, noise_scheduler, latents, text, generator=generator)
                if image_batches is not None:
                    # Joint image + video training: images are one-frame videos; one backward for both keeps
                    # every trainable parameter in the graph on every step (DDP needs that).
                    wait_start = time.perf_counter()
                    image_batch = next(image_batches)
                    data_wait += time.perf_counter() - wait_start
                    micro_skipped += int(torch.as_tensor(image_batch.get("num_skipped", 0)).sum())
                    with accelerator.autocast():
                        image_latents, image_text = encode_batch(image_batch, vae, text_encoder, tokenizer,
                                                                 generator=generator, device=device,
                                                                 caption_dropout=t.caption_dropout)
                    image_loss = stage.loss(unet, noise_scheduler, image_latents, image_text, generator=generator)
                    loss = loss + t.image_loss_weight * image_loss
                if global_step in t.debug_nan_steps:
                    loss = loss * float("nan")  # test hook: a non-finite loss at this step
                accelerator.backward(loss)
                micro_losses.append(loss.detach().float())
                micro_skipped += int(torch.as_tensor(batch.get("num_skipped", 0)).sum())
                grad_norm = None
                if accelerator.sync_gradients:
                    grad_norm = accelerator.clip_grad_norm_(list(trainable.values()), t.max_grad_norm or float("inf"))
                    # One all-reduce: mean loss over micro-batches and ranks, skipped files, stop requests.
                    stats = accelerator.reduce(torch.stack([
                        torch.stack(micro_losses).mean(),
                        torch.tensor(float(micro_skipped), device=device),
                        torch.tensor(float(stop["signal"] is not None), device=device),
                    ]), reduction="sum")
                    mean_loss = float(stats[0]) / accelerator.num_processes
                    # (DeepSpeed clips inside its engine and returns no norm; fp16 overflows with a finite loss go
                    # to the grad scaler, which skips the step itself and lowers its scale.)
                    grad_ok = grad_norm is None or t.mixed_precision == "fp16" or math.isfinite(float(grad_norm))
                    grad_norm = float(grad_norm) if grad_norm is not None else float("nan")
                    finite = math.isfinite(mean_loss) and grad_ok
                    if finite:
                        optimizer.step()
                        lr_scheduler.step()
                    optimizer.zero_grad(set_to_none=True)
            if not accelerator.sync_gradients:
                batch_wait_start = time.perf_counter()
                continue

            # --- one optimiser step done --------------------------------------------------------------------
            global_step += 1
            state["samples_seen"] += samples_per_step
            state["image_samples_seen"] += d.image_batch_size * t.gradient_accumulation_steps * accelerator.num_processes
            if finite:
                nonfinite_in_row = 0
                if ema is not None:
                    ema.update(trainable)
            else:
                nonfinite_in_row += 1
                state["nonfinite_steps"] += 1
                say(f"step {global_step}: non-finite loss ({mean_loss}) or gradient norm ({grad_norm}); step skipped "
                    f"({nonfinite_in_row} in a row, stop at {t.max_nonfinite})")
            state["skipped_files"] += int(stats[1])
            now = time.perf_counter()
            step_time = now - step_start
            wait_share = data_wait / step_time if step_time > 0 else 0.0
            lr = lr_scheduler.get_last_lr()[0]

            # --- log ------------------------------------------------------------------------------------------
            progress.update(1)
            progress.set_postfix(loss=f"{mean_loss:.4f}", lr=f"{lr:.2e}")
            if main and (global_step % t.log_every == 0 or global_step == t.max_steps or not finite):
                row = {"step": global_step, "epoch": f"{state['samples_seen'] / len(dataset):.3f}",
                       "loss": f"{mean_loss:.6g}", "lr": f"{lr:.6g}", "grad_norm": f"{grad_norm:.6g}",
                       "samples_per_s": f"{samples_per_step / step_time:.4g}", "data_wait_share": f"{wait_share:.4f}",
                       "skipped_files": state["skipped_files"], "nonfinite_steps": state["nonfinite_steps"]}
                csv_writer.writerow(row)
                csv_file.flush()
                scalars = {"train/lr": lr, "train/samples_per_s": samples_per_step / step_time,
                           "train/data_wait_share": wait_share, "train/skipped_files": state["skipped_files"],
                           "train/nonfinite_steps": state["nonfinite_steps"]}
                if math.isfinite(mean_loss):
                    scalars["train/loss"] = mean_loss
                if math.isfinite(grad_norm):
                    scalars["train/grad_norm"] = grad_norm
                accelerator.log(scalars, step=global_step)

            # --- save, validate, stop -------------------------------------------------------------------------
            stop_signal = float(stats[2]) > 0
            if on_step is not None and on_step(global_step, row_values(global_step, mean_loss, lr, grad_norm)):
                stop_signal = True
                stop["signal"] = stop["signal"] or "on_step"
            if nonfinite_in_row >= t.max_nonfinite:
                last_checkpoint = checkpoint_now()
                progress.close()
                if csv_file is not None:
                    csv_file.close()
                accelerator.end_training()
                raise TrainingError(
                    f"{nonfinite_in_row} non-finite losses in a row at step {global_step}: stopping. The weights "
                    f"before them are saved in {last_checkpoint}. Lower train.learning_rate, set train.max_grad_norm, "
                    "or use train.mixed_precision=bf16 instead of fp16.")
            if t.checkpoint_every and global_step % t.checkpoint_every == 0 or stop_signal:
                last_checkpoint = checkpoint_now()
            if v.prompts and v.every and global_step % v.every == 0:
                if main:  # with the averaged weights when there are any: they are what gets exported
                    with ema.swapped_in(trainable) if ema is not None else contextlib.nullcontext():
                        render_validation(pipe, config, output_dir / "validation" / f"step-{global_step:08d}", device)
                accelerator.wait_for_everyone()
            if stop_signal:
                status = "interrupted"
                say(f"\n{stop['signal'] or 'stop request'}: saved {last_checkpoint} at step {global_step}; "
                    f"continue with --resume auto")
                break
            if global_step >= t.max_steps:
                break
            micro_losses, micro_skipped, data_wait = [], 0, 0.0
            step_start = batch_wait_start = time.perf_counter()
    progress.close()
    for batches in (loader_iter, image_batches):  # stop the DataLoader workers now, not at interpreter exit
        getattr(batches, "close", lambda: None)()

    # --- export --------------------------------------------------------------------------------------------
    pipeline_dir = None
    check_ranks_agree(accelerator, trainable)
    if status == "finished":
        last_checkpoint = checkpoint_now()
        accelerator.wait_for_everyone()
        if main:
            model = accelerator.unwrap_model(unet)
            named = {k: p for k, p in model.named_parameters() if k in trainable}
            with ema.swapped_in(named) if ema is not None else contextlib.nullcontext():
                pipe.unet = model
                pipeline_dir = output_dir / "pipeline"
                pipe.save_pretrained(pipeline_dir)
                if any(".temporal_" in k for k in model.state_dict()):
                    model.save_temporal(output_dir / "temporal.safetensors")
                if v.prompts and not (v.every and global_step % v.every == 0):  # (else just rendered)
                    render_validation(pipe, config, output_dir / "validation" / "final", device)
            say(f"wrote {pipeline_dir} (vidiff generate --model {pipeline_dir}) and {output_dir / 'temporal.safetensors'}")
        accelerator.wait_for_everyone()
    if main:
        csv_file.close()
        plot_loss_curve(output_dir / "train_log.csv", output_dir / "loss.png")
    accelerator.end_training()
    return TrainResult(step=global_step, status=status, output_dir=output_dir, checkpoint=last_checkpoint,
                       pipeline=pipeline_dir, nonfinite_steps=state["nonfinite_steps"],
                       skipped_files=state["skipped_files"], is_main_process=main)
