"""One linear accelerate training loop for every stage: prepare, loop, step, log, save.

    vidiff train configs/train/finetune.yaml data.manifest=clips/ output_dir=runs/ft
    accelerate launch --num_processes 8 -m vidiff train configs/train/finetune.yaml --resume auto
    ACCELERATE_USE_CPU=true torchrun --nproc_per_node 2 -m vidiff train ...   # several CPU processes (gloo)

(`accelerate launch --cpu` starts a single process; multi-process CPU runs go through torchrun as above.)

Layout of `output_dir` (a new or empty folder, or one an earlier run marked as its own; see run_folder.py):
    vidiff-run.json          marks the folder as a vidiff run;  config.json  the resolved config
    inflated/                the SD pipeline inflated once (when model.pretrained is not a vidiff folder)
    checkpoints/checkpoint-00000500/   the resumable state (see checkpoints.py; last K kept)
    logs/                    TensorBoard events;  train_log.csv;  loss.png   (see logs.py)
    validation/step-00000500/  00-<prompt>.mp4 + .png contact sheets
    pipeline/                the final vidiff pipeline folder (EMA weights when train.ema)
    temporal.safetensors     the temporal layers alone (a motion module)

Determinism and resumption. The data stream is seeded by position (data.py); the noise, timesteps, caption
dropout and stage conditions (masks, noise augmentation) of step n on rank r come from a generator seeded by
(seed, n, r), and the VAE latents are the posterior mean (no random numbers). So a run stopped
after step n and resumed with `--resume auto` sees exactly the batches and noise of the straight run, whatever
the number of DataLoader workers.

Under DDP only trainable parameters reach the optimiser, and a probe forward/backward before `prepare`
freezes any trainable parameter that does not take part in the forward (with a warning naming it), so every
trainable parameter gets a gradient on every step and DDP runs with `find_unused_parameters=False` (no
per-step graph walk, and no "Expected to have finished reduction" error of the kind Tune-A-Video hits).

`training_step` is the one optimiser step; `train` runs it from a config, and `fit` runs it on any stream of
batches (editing's one-clip tuning) without a config file or output folder.
"""
from __future__ import annotations

import contextlib
import dataclasses
import inspect
import itertools
import json
import math
import shutil
import signal
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

import torch
from accelerate import Accelerator, DistributedDataParallelKwargs
from accelerate.utils import ProjectConfiguration, set_seed
from diffusers import DDPMScheduler, UNet2DConditionModel
from diffusers.optimization import get_scheduler

from vidiff.adapters.embeddings import add_new_tokens, merged_tokens, new_token_rows, save_embedding
from vidiff.adapters.lora import LoraSettings, adapter_parameters, add_lora, fuse_lora, has_lora, merged
from vidiff.control import Control, batch_control_images, control_images
from vidiff.config import TRAINABLE_MODES, Config, ConfigError, TrainConfig
from vidiff.data.video_io import read_video
from vidiff.models.compile import compile_unet
from vidiff.pipelines.text_to_video import VideoPipeline
from vidiff.progress import ProgressBar
from vidiff.spec import PipelineInfo
from vidiff.stages import Stage, make_stage, stage_options
from vidiff.stages.folder import inflate_stage
from vidiff.training import TrainingError
from vidiff.training.checkpoints import (clean_stale, find_resume_checkpoint, list_checkpoints, load_checkpoint,
                                         read_trainer_state, save_checkpoint)
from vidiff.training.data import check_cache_geometry, encode_batch, make_loader, skipped_file_ids
from vidiff.training.control import attach_controlnet, controlnet_parameters, save_controlnet
from vidiff.training.distill import attach_target, prepare_distillation
from vidiff.training.ema import EMA
from vidiff.training.logs import TrainLog, log_validation_metrics, render_validation
from vidiff.training.preflight import check_run, check_stage_matches, teacher_steps
from vidiff.training.run_folder import check_output_dir, is_run_folder, mark_run_folder
from vidiff.training.parallel import (check_sharding, empty_copy, fsdp_plugin, is_sharded, route_cpu_fsdp,
                                     shard_like, sharded_parameters, unsharded_copy, wants_cpu, wrap_layers)
from vidiff.training.state import check_supported
from vidiff.utils import atomic_dir, write_json_atomic


@dataclass
class TrainResult:
    step: int                      # optimiser steps done (including skipped non-finite ones)
    status: str                    # "finished" | "interrupted"
    output_dir: Path
    checkpoint: Path | None        # the last checkpoint written
    pipeline: Path | None          # output_dir/pipeline when finished
    nonfinite_steps: int
    skipped_files: int             # distinct bad files passed over (all ranks)
    is_main_process: bool = True   # False on the other ranks of a distributed run
    stop_signal: str | None = None  # "SIGINT" | "SIGTERM" | "on_step" when interrupted by one
    skipped_encounters: int = 0    # how often bad files came up (one file can be met many times)


# ---------------------------------------------------------------------------------------------------------------
# model: loading, trainable selection, the unused-parameter probe
# ---------------------------------------------------------------------------------------------------------------
def is_vidiff_pipeline(path) -> bool:
    return (Path(path) / "vidiff.json").is_file()


def load_pipeline(config: Config, accelerator):
    """A VideoPipeline from `model.pretrained`: a vidiff folder as is, or an SD pipeline inflated once into
    output_dir/inflated (by the main process; the others wait and load the same folder)."""
    m = config.model
    source = Path(m.pretrained).expanduser()
    if is_vidiff_pipeline(source) and m.motion_module is not None:
        raise ConfigError(f"model.motion_module applies when inflating a Stable Diffusion model, but "
                          f"model.pretrained={m.pretrained} is a vidiff pipeline folder already; leave it null")
    if not is_vidiff_pipeline(source):
        inflated = Path(config.output_dir) / "inflated"
        if accelerator.is_main_process and not is_vidiff_pipeline(inflated):
            options = dict(cross_frame=m.cross_frame or "none", temporal_layout=m.temporal_layout,
                           temporal_conv=m.temporal_conv, temporal_attention=m.temporal_attention,
                           motion_module=m.motion_module)
            try:  # a cascade stage gets zero-initialised condition channels (vidiff.stages.folder)
                inflate_stage(m.pretrained, inflated, config.train.stage, **options)
            except (FileNotFoundError, ValueError) as e:
                # The loaders speak of `vidiff inflate --base`; here the user set model.pretrained.
                message = str(e)
                if not message.startswith("--base "):
                    raise
                raise ConfigError(f"model.pretrained={message[len('--base '):]}") from e
        accelerator.wait_for_everyone()
        source = inflated
    pipe = VideoPipeline.from_pretrained(source, device="cpu", dtype="fp32")  # fp32 master weights
    if has_lora(pipe.unet):  # a LoRA run's folder: training continues from its effective weights
        fuse_lora(pipe.unet)
    pipe.unet.set_cross_frame(m.cross_frame or pipe.defaults.cross_frame)  # null: the folder's suggestion
    pipe.unet.set_attention_backend(m.attention_backend)
    return pipe, source


def select_trainable(unet, mode: str, stage: Stage, lora: LoraSettings | None = None
                     ) -> dict[str, torch.nn.Parameter]:
    """Set requires_grad by `mode` (train.trainable) and return the trainable parameters by name.

    temporal         the temporal conv / attention layers (AnimateDiff-style motion module)
    temporal+attn-q  + the spatial attention query projections `attn1.to_q`, `attn2.to_q` (Tune-A-Video)
    all              every U-Net weight
    lora             a peft LoRA adapter's lora_A / lora_B only, injected here with `lora` (train.lora) unless
                     the U-Net has one already (a resumed run rebuilds it the same way)
    controlnet       the ControlNet of a ControlledUNet (vidiff.training.control); the U-Net stays frozen
    plus whatever the stage must train (`stage.is_trainable_extra`, e.g. a widened conv_in).
    """
    if mode not in TRAINABLE_MODES:
        raise ValueError(f"unknown train.trainable {mode!r}; choose {', '.join(TRAINABLE_MODES)}")
    if mode == "controlnet":
        return controlnet_parameters(unet)
    if mode == "lora":
        if not has_lora(unet):
            add_lora(unet, lora or LoraSettings())
        unet.requires_grad_(False)
        for p in adapter_parameters(unet).values():
            p.requires_grad_(True)
    elif mode == "all":
        unet.requires_grad_(True)
    else:
        unet.freeze_spatial()  # the temporal layers by the U-Net's own definition
    for name, p in unet.named_parameters():
        if stage.is_trainable_extra(name) or (mode == "temporal+attn-q" and ".to_q." in name):
            p.requires_grad_(True)
    trainable = {name: p for name, p in unet.named_parameters() if p.requires_grad}
    if not trainable:
        raise ValueError(f"train.trainable={mode!r} selects no parameters: this U-Net has no temporal layers "
                         "(inflated with temporal_conv and temporal_attention off); use train.trainable=all")
    return trainable


def drop_unused_parameters(unet, trainable: dict, stage: Stage, text_dim: int, num_frames: int, device) -> list[str]:
    """Run one tiny forward/backward and freeze trainable parameters that get no gradient (they would make
    DDP fail with find_unused_parameters=False). Returns their names."""
    channels = unet.in_channels + unet.conditioning_channels
    size = math.lcm(unet.spatial_factor, getattr(stage, "factor", 1))  # (an SSR condition divides the size)
    sample = torch.zeros(1, channels, num_frames, size, size, device=device)
    context = torch.zeros(1, 1, text_dim, device=device)
    latents = torch.zeros(1, unet.in_channels, num_frames, size, size, device=device)
    _, kwargs = stage.condition(latents, torch.Generator(device=device).manual_seed(0))
    out = unet(sample, torch.zeros(1, dtype=torch.long, device=device), context, **kwargs)
    out.float().sum().backward()
    unused = [name for name, p in trainable.items() if p.grad is None]
    for p in trainable.values():
        p.grad = None
    if len(unused) == len(trainable):
        raise TrainingError("no trainable parameter receives a gradient; is gradient flow blocked?")
    for name in unused:
        trainable.pop(name).requires_grad_(False)
    return unused


def cosine_floor_schedule(optimizer, *, warmup_steps: int, total_steps: int, floor: float, per_step: int = 1):
    """LambdaLR for train.lr_scheduler=cosine_floor: the LR of optimiser step s (1-based) is learning_rate x
    min(1, s / warmup_steps) x (cosine from 1 at s = 0 to `floor` at s = total_steps): the warm-up overlaps
    a cosine that spans the whole run (diffusers' cosine starts after the warm-up and ends at 0). `per_step`:
    scheduler steps per optimiser step (accelerate steps a prepared scheduler once per process)."""
    def factor(count: int) -> float:
        step = count // per_step + 1  # the optimiser step this LR is used for
        warmup = min(1.0, step / max(1, warmup_steps))
        return warmup * (0.5 * (1 + math.cos(math.pi * step / total_steps)) * (1 - floor) + floor)

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def make_optimizer(params: Iterable[torch.nn.Parameter], t: TrainConfig, num_processes: int = 1):
    """AdamW and the LR schedule of `t` (train.*)."""
    optimizer = torch.optim.AdamW(list(params), lr=t.learning_rate, betas=(t.adam_beta1, t.adam_beta2),
                                  eps=t.adam_epsilon, weight_decay=t.weight_decay)
    if t.lr_scheduler == "cosine_floor":
        return optimizer, cosine_floor_schedule(optimizer, warmup_steps=t.lr_warmup_steps, total_steps=t.max_steps,
                                                floor=t.lr_floor, per_step=num_processes)
    # accelerate steps a prepared scheduler once per process per optimiser step: scale its horizon to match.
    lr_scheduler = get_scheduler(t.lr_scheduler, optimizer, num_warmup_steps=t.lr_warmup_steps * num_processes,
                                 num_training_steps=t.max_steps * num_processes)
    return optimizer, lr_scheduler


# ---------------------------------------------------------------------------------------------------------------
# one optimiser step: shared by `train` and `fit`
# ---------------------------------------------------------------------------------------------------------------
@dataclass
class StepOutput:
    loss: float            # mean over micro-batches and ranks
    grad_norm: float       # before clipping (nan where the backend returns none)
    applied: bool          # False: non-finite loss or gradient, the update was skipped on every rank
    totals: list[float]    # the `extras` of every rank, summed


def micro_batch_loss(unet, stage: Stage, noise_scheduler, parts: list[dict], generator, device) -> torch.Tensor:
    """The diffusion loss of one micro-batch: the sum over its parts (a video batch; the image batch of joint
    image + video training), each {"latents" (b, c, f, h, w), "encoder_hidden_states" (b, L, D), "weight"?,
    "extra"?: U-Net keyword arguments of the batch}.
    One backward for all parts keeps every trainable parameter in the graph on every step (DDP needs that)."""
    total = None
    for part in parts:
        extra = {"extra": part["extra"]} if "extra" in part else {}  # (a ControlNet run's control images)
        loss = stage.loss(unet, noise_scheduler, part["latents"].to(device),
                          part["encoder_hidden_states"].to(device), generator=generator, **extra)
        if part.get("weight", 1.0) != 1.0:
            loss = loss * part["weight"]
        total = loss if total is None else total + loss
    return total


def training_step(accelerator, unet, stage: Stage, noise_scheduler, optimizer, micro_batches: Iterable[list[dict]],
                  *, params: list, generator=None, max_grad_norm: float = 0.0, lr_scheduler=None,
                  extras: Callable[[], list[float]] | None = None) -> StepOutput:
    """One optimiser step over `accelerator.gradient_accumulation_steps` micro-batches (lists of loss parts,
    see `micro_batch_loss`): backward each, clip the gradient of `params`, and update unless the mean loss or
    the gradient norm is non-finite. `extras()` (numbers, read at the gradient sync) are summed over ranks in
    the same all-reduce as the loss."""
    losses = []
    for parts in micro_batches:
        with accelerator.accumulate(unet):
            loss = micro_batch_loss(unet, stage, noise_scheduler, parts, generator, accelerator.device)
            accelerator.backward(loss)
            losses.append(loss.detach().float())
            if not accelerator.sync_gradients:
                continue
            grad_norm = accelerator.clip_grad_norm_(params, max_grad_norm or float("inf"))
            local = [torch.stack(losses).mean()]
            local += [torch.tensor(float(x), device=accelerator.device) for x in (extras() if extras else [])]
            stats = accelerator.reduce(torch.stack(local), reduction="sum")
            mean_loss = float(stats[0]) / accelerator.num_processes
            # (DeepSpeed clips inside its engine and returns no norm; fp16 overflows with a finite loss go to the
            # grad scaler, which skips the step itself and lowers its scale.)
            grad_ok = (grad_norm is None or accelerator.mixed_precision == "fp16"
                       or math.isfinite(float(grad_norm)))
            applied = math.isfinite(mean_loss) and grad_ok
            if applied:
                optimizer.step()
                if lr_scheduler is not None:
                    lr_scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            return StepOutput(loss=mean_loss, grad_norm=float(grad_norm) if grad_norm is not None else float("nan"),
                              applied=applied, totals=[float(x) for x in stats[1:]])
    raise ValueError(f"the micro-batches ended before a gradient step ({len(losses)} given, "
                     f"{accelerator.gradient_accumulation_steps} per step)")


def fit(unet, stage: Stage, batches, *, steps: int, learning_rate: float, noise_scheduler,
        trainable: str = "temporal+attn-q", accelerator=None, generator=None, progress: bool = True) -> list[float]:
    """Tune `unet` in place for `steps` optimiser steps on `batches`; returns the loss of every step.

    The step is `training_step`, the one `train` runs, without a config file, an output folder, checkpoints
    or logs: what editing's one-clip tuning needs (Tune-A-Video, Wu et al. 2023, trains the temporal layers
    and the attention queries: `trainable="temporal+attn-q"`).

    batches: an iterable of dicts {"latents" (b, c, f, h, w), "encoder_hidden_states" (b, L, D)} (one dict is
        repeated), at least `steps` x gradient-accumulation of them.
    noise_scheduler: a diffusers DDPM-family scheduler (the training noise schedule).
    accelerator: an `accelerate.Accelerator` (default: a new one, single process). The optimiser is AdamW at
        `learning_rate` with train's defaults (betas, weight decay, gradient clipping at 1.0).
    generator: noise and timesteps (None: the global RNG).
    Afterwards `requires_grad` and train/eval mode are as they were.
    """
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    accelerator = accelerator or Accelerator()
    batches = itertools.repeat(batches) if isinstance(batches, dict) else iter(batches)
    was_training, requires_grad = unet.training, {name: p.requires_grad for name, p in unet.named_parameters()}
    params = list(select_trainable(unet, trainable, stage).values())
    defaults = TrainConfig()
    optimizer, _ = make_optimizer(params, TrainConfig(learning_rate=learning_rate, max_steps=steps))
    model, optimizer = accelerator.prepare(unet.train(), optimizer)
    accumulation = accelerator.gradient_accumulation_steps

    def micro_batches():
        for _ in range(accumulation):
            batch = next(batches, None)
            if batch is None:
                raise ValueError(f"batches ran out after {len(losses)} steps of {steps}; pass an endless iterator "
                                 "(itertools.repeat / itertools.cycle) or one dict")
            yield [batch]

    losses = []
    try:
        with torch.enable_grad():  # (callers often sample, and so call this, under torch.no_grad)
            for _ in ProgressBar(range(steps), desc="tune", disable=not progress, dynamic_ncols=True):
                out = training_step(accelerator, model, stage, noise_scheduler, optimizer, micro_batches(),
                                    params=params, generator=generator, max_grad_norm=defaults.max_grad_norm)
                losses.append(out.loss)
    finally:
        unet.train(was_training)
        for name, p in unet.named_parameters():
            p.requires_grad_(requires_grad.get(name, p.requires_grad))  # (an adapter fit injected keeps its own)
    return losses


# ---------------------------------------------------------------------------------------------------------------
# train: preparing a run from a config
# ---------------------------------------------------------------------------------------------------------------
def _quiet(*args, **kwargs) -> None:
    pass


@dataclass
class Run:
    """Everything `train` prepared: the accelerator, the model and its optimiser, the data, the counters."""
    config: Config
    accelerator: Any
    say: Callable                   # print on the main process
    pipe: Any                       # the VideoPipeline (VAE, text encoder, tokenizer; pipe.unet is trained)
    unet: Any                       # pipe.unet as prepared by accelerate (DDP-wrapped in distributed runs)
    stage: Stage
    noise_scheduler: Any
    trainable: dict                 # name -> parameter
    optimizer: Any
    lr_scheduler: Any
    ema: EMA | None
    loader: Any                     # endless, prepared
    image_loader: Any               # joint image + video training, else None
    dataset_size: int
    state: dict                     # counters saved with each checkpoint (step, samples_seen, ...)
    checkpoint: Path | None         # the checkpoint resumed from
    discard: tuple = ()             # an earlier run's checkpoints, removed by the first save (--overwrite)
    generator: torch.Generator = None
    batches: Iterator | None = None
    image_batches: Iterator | None = None
    text_encoder: Any = None        # pipe.text_encoder, as prepared by accelerate when it trains
    last_checkpoint: Path | None = None  # the last checkpoint written (or resumed from)
    saved_step: int | None = None   # the step this run's state is saved at
    nonfinite_in_row: int = 0       # non-finite steps in a row, up to now
    template: Any = None            # FSDP: the U-Net's structure without weights (main process), for full copies

    @property
    def output_dir(self) -> Path:
        return Path(self.config.output_dir)


def make_accelerator(config: Config):
    """accelerate's Accelerator for the run: DDP, or FSDP2 when the launch's accelerate config asks for it
    (training/parallel.py; a CPU launch of it runs over gloo)."""
    output_dir = Path(config.output_dir)
    plugin = fsdp_plugin(config.train.mixed_precision)
    accelerator = Accelerator(
        gradient_accumulation_steps=config.train.gradient_accumulation_steps,
        mixed_precision=config.train.mixed_precision,
        log_with="tensorboard",
        project_config=ProjectConfiguration(project_dir=str(output_dir), logging_dir=str(output_dir / "logs")),
        # Every trainable parameter gets a gradient every step (see drop_unused_parameters): no graph walk.
        kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=False)],
        fsdp_plugin=plugin, cpu=wants_cpu(plugin),
    )
    route_cpu_fsdp(accelerator, plugin)
    return accelerator


def prepare_model(config: Config, accelerator, say):
    """The pipeline (inflated if needed), its stage and noise schedule, and the trainable parameters."""
    t, device = config.train, accelerator.device
    pipe, source = load_pipeline(config, accelerator)
    unet = pipe.unet
    noise_scheduler = DDPMScheduler.from_config(pipe.scheduler_config)
    prediction_type = t.prediction_type or noise_scheduler.config.prediction_type
    check_stage_matches(pipe.info, t.stage, source)  # (an inflated folder left by an earlier run)
    stage = make_stage(t.stage, latent_channels=unet.in_channels, prediction_type=prediction_type,
                       snr_gamma=t.snr_gamma, noise_offset=t.noise_offset, noisy_fraction=t.noisy_fraction,
                       noisy_from=t.noisy_from,
                       **stage_options(t.stage, pipe.info.stage_options, dataclasses.asdict(config.stage)))
    # the exported folder records the options it was trained with
    pipe.info = dataclasses.replace(pipe.info, stage_options={**pipe.info.stage_options, **stage.options()})
    if stage.conditioning_channels != unet.conditioning_channels:
        raise ValueError(f"stage {stage.name!r} feeds {stage.conditioning_channels} conditioning channels but the "
                         f"U-Net in {source} takes {unet.conditioning_channels}")
    if config.distill.method is not None:  # the loaded U-Net becomes the frozen teacher, a copy of it trains
        stage = prepare_distillation(config, pipe, stage, teacher_steps(config, pipe.info), device)
        unet = pipe.unet
        say(f"distilling {source} ({config.distill.method}, {config.distill.steps} steps"
            f"{', guidance as an input' if config.distill.guidance else ''})")
    if t.trainable == "controlnet":  # the U-Net frozen, a ControlNet beside it trains
        unet = pipe.unet = attach_controlnet(config, pipe, device)
        say(f"training a ControlNet ({config.control.controlnet or 'a copy of the U-Net encoder'}) on "
            f"{config.control.extractor} control images")
    for frozen in (pipe.vae, pipe.text_encoder):
        if frozen is not None:
            frozen.requires_grad_(False).eval().to(device)
    if t.export_sd and any(True for _ in unet.temporal_parameters()):
        raise ConfigError(f"train.export_sd writes a text-to-image SD folder, but the U-Net of {source} has temporal "
                          "layers; start from an SD folder with model.temporal_conv=false, model.temporal_attention=false")
    unet.to(device).train()
    if t.gradient_checkpointing:
        unet.enable_gradient_checkpointing()
    trainable = select_trainable(unet, t.trainable, stage, lora=LoraSettings(**dataclasses.asdict(t.lora)))
    text_dim = pipe.text_encoder.config.hidden_size
    unused = drop_unused_parameters(unet, trainable, stage, text_dim, config.data.num_frames, device)
    if unused:
        say(f"warning: {len(unused)} trainable parameter(s) take no part in the forward and stay frozen: "
            f"{', '.join(unused[:5])}{' ...' if len(unused) > 5 else ''}")
    num_trainable = sum(p.numel() for p in trainable.values())
    if t.compile:  # in place, after the eager probe: state-dict keys (checkpoints, exports) keep their names
        compile_unet(unet)
    if t.new_tokens:  # textual inversion: the new rows of a frozen text encoder (after the probe, as below)
        tokens = add_new_tokens(pipe.tokenizer, pipe.text_encoder, t.new_tokens)
        trainable[NEW_TOKENS] = tokens.new.requires_grad_(True)
        say(f"training new token(s) {', '.join(t.new_tokens)} (textual inversion, {tokens.new.numel()} "
            "numbers)")
    if t.train_text_encoder:  # (after the probe, which runs the U-Net alone)
        trainable.update(text_encoder_parameters(pipe.text_encoder.train().requires_grad_(True)))
        say(f"training the text encoder too ({sum(p.numel() for p in pipe.text_encoder.parameters()) / 1e6:.2f}M "
            "parameters)")
    say(f"training {num_trainable / 1e6:.2f}M of {sum(p.numel() for p in unet.parameters()) / 1e6:.2f}M "
        f"{'U-Net + ControlNet' if t.trainable == 'controlnet' else 'U-Net'} parameters ({t.trainable}), stage {stage.name}, {prediction_type} objective, "
        f"{accelerator.num_processes} process(es) on {device}{', U-Net compiled' if t.compile else ''}")
    return pipe, stage, noise_scheduler, trainable


NEW_TOKENS = "text_encoder.new_tokens"  # the trainable name of train.new_tokens' embedding rows


def text_encoder_parameters(text_encoder) -> dict[str, torch.nn.Parameter]:
    """The text encoder's parameters as train.train_text_encoder trains them: named `text_encoder.<name>` next to
    the U-Net's in the optimiser, the EMA and the gradient clipping."""
    return {f"text_encoder.{name}": p for name, p in text_encoder.named_parameters()}


class TrainableWeights(torch.nn.Module):
    """The trainable tensors alone as a checkpoint's model (a LoRA run: the adapter, and what the stage trains;
    the frozen base weights are the model folder's, so resuming restores exactly the same model)."""

    def __init__(self, trainable: dict[str, torch.nn.Parameter], owner: torch.nn.Module | None = None):
        super().__init__()
        self.__dict__["trainable"] = trainable  # (not registered: the parameters belong to the U-Net)
        self.__dict__["owner"] = owner          # the U-Net (training/parallel.owner: the optimiser's module)

    def state_dict(self, *args, **kwargs) -> dict[str, torch.Tensor]:
        return {name: p.detach() for name, p in self.trainable.items()}

    @torch.no_grad()
    def load_state_dict(self, state_dict, strict: bool = True, assign: bool = False):
        missing, unexpected = set(self.trainable) - set(state_dict), set(state_dict) - set(self.trainable)
        if missing or unexpected:
            raise RuntimeError(f"{len(missing)} trainable tensors missing (e.g. {sorted(missing)[:2]}), "
                               f"{len(unexpected)} unexpected (e.g. {sorted(unexpected)[:2]})")
        for name, p in self.trainable.items():
            p.copy_(shard_like(state_dict[name], p))  # (under FSDP: this rank's shard of it)


def checkpoint_model(run: "Run") -> torch.nn.Module:
    """What a checkpoint's model.safetensors holds: the U-Net, or with a trained text encoder both (as
    `unet.*` and `text_encoder.*`); a LoRA or ControlNet run, its trainable tensors only."""
    if run.config.train.trainable in ("lora", "controlnet"):
        return TrainableWeights(run.trainable, run.unet)
    if run.config.train.new_tokens:  # the U-Net and the new rows (not the frozen encoder)
        rows = torch.nn.Module()
        rows.register_parameter("rows", run.trainable[NEW_TOKENS])
        return torch.nn.ModuleDict({"unet": run.accelerator.unwrap_model(run.unet), "new_tokens": rows})
    if not run.config.train.train_text_encoder:
        return run.unet
    unet = run.accelerator.unwrap_model(run.unet)
    return torch.nn.ModuleDict({"unet": unet, "text_encoder": run.pipe.text_encoder})


def prepare_folder(config: Config, accelerator, resume: str | None, overwrite: bool, say):
    """Check output_dir, find the checkpoint to resume and mark the folder as this run's; returns
    (checkpoint or None, the counters to start from, an earlier run's checkpoints to discard)."""
    output_dir = Path(config.output_dir)
    if resume and overwrite:
        raise ValueError("--resume and --overwrite contradict each other: continue the run, or start it over")
    old_checkpoints = list_checkpoints(output_dir / "checkpoints")
    check_output_dir(output_dir, resume=resume, overwrite=overwrite, checkpoints=old_checkpoints)
    checkpoint = find_resume_checkpoint(output_dir, resume, say)
    # samples_seen counts clips drawn by all ranks together: the data position, whatever the process count.
    # skipped_files counts distinct bad files (their ids kept to tell new ones), skipped_encounters every meeting.
    state = {"step": 0, "samples_seen": 0, "image_samples_seen": 0, "nonfinite_steps": 0, "skipped_files": 0,
             "skipped_encounters": 0, "skipped_file_ids": []}
    if checkpoint is not None:
        state.update(read_trainer_state(checkpoint, config))
    elif resume == "auto":
        say(f"--resume auto: no checkpoint under {output_dir / 'checkpoints'}; starting from step 0")
    # Every rank has checked the folder before the main process writes to it: else a slower rank could meet it
    # holding only the marker's temporary file (write_json_atomic), not yet a run folder, and refuse it.
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        try:
            mark_run_folder(output_dir)
            clean_stale(output_dir / "checkpoints")
            write_json_atomic(output_dir / "config.json", config.to_dict())
        except OSError as e:
            raise TrainingError(f"cannot write to output_dir {output_dir} ({e.strerror or e}); free space or "
                                "choose another output_dir") from e
    return checkpoint, state, old_checkpoints


@contextlib.contextmanager
def unclaimed_on_failure(output_dir: Path, fresh: bool, keep_folder: bool):
    """A run refused while its model loads (a pickle in vae/, a mismatched stage, ...) leaves nothing behind:
    what it wrote into an output folder it created or found empty (its marker, config.json, an inflated/ folder)
    is removed again, and the folder too unless it was there before. A folder that held anything before the run
    is left as it is."""
    try:
        yield
    except BaseException:
        if fresh and is_run_folder(output_dir):
            for entry in list(output_dir.iterdir()) if keep_folder else [output_dir]:
                if entry.is_dir() and not entry.is_symlink():
                    shutil.rmtree(entry, ignore_errors=True)
                else:
                    entry.unlink(missing_ok=True)
        raise


def make_loaders(config: Config, checked, pipe, state: dict, accelerator):
    """The endless video loader (not yet prepared) and, in joint training, the prepared image loader."""
    t, d = config.train, config.data
    dataset = checked.dataset
    if d.cache:  # (checked before loading too, where the model's JSON files tell the geometry)
        check_cache_geometry(dataset, config, pipe.unet.in_channels, pipe.vae_scale_factor)
    loader = make_loader(dataset, seed=t.seed, batch_size=t.batch_size, start=state["samples_seen"],
                         num_workers=d.num_workers, pin_memory=accelerator.device.type == "cuda")
    image_loader = None
    if d.image_batch_size:  # joint image + video training: one-frame samples in their own batches
        images = checked.image_dataset
        image_loader = accelerator.prepare(make_loader(images, seed=t.seed + 1, batch_size=d.image_batch_size,
                                                       start=state["image_samples_seen"], num_workers=d.num_workers))
    return loader, image_loader


def prepare_unet(accelerator, t: TrainConfig, pipe, trainable: dict, loader):
    """accelerate.prepare of the U-Net with its optimiser, LR schedule and loader: DDP-wrapped, or sharded in
    place by FSDP2 (one unit per layer; the trainable parameters are then their shards). The EMA is made after,
    from the parameters as prepared, so under FSDP each rank averages its shard. Returns the prepared objects,
    the trainable parameters, the EMA and, under FSDP, the main process's empty copy of the U-Net (export)."""
    optimizer, lr_scheduler = make_optimizer(trainable.values(), t, accelerator.num_processes)
    template = None
    if is_sharded(accelerator):
        wrap_layers(accelerator, pipe.unet)
        template = empty_copy(pipe.unet) if accelerator.is_main_process else None
    unet, optimizer, loader, lr_scheduler = accelerator.prepare(pipe.unet, optimizer, loader, lr_scheduler)
    if is_sharded(accelerator):
        trainable = sharded_parameters(unet, trainable)
    ema = EMA(trainable, t.ema_decay).to(accelerator.device) if t.ema else None
    return unet, optimizer, loader, lr_scheduler, trainable, ema, template


def prepare_run(config: Config, resume: str | None, log, overwrite: bool = False) -> Run:
    """Accelerator, checkpoint to resume, model, optimiser, EMA and data, all prepared and restored."""
    t = config.train
    checked = check_run(config)  # options, model source, data, output location: before anything is loaded
    accelerator = make_accelerator(config)
    say = log if accelerator.is_main_process else _quiet
    check_supported(accelerator)
    check_sharding(accelerator, t, config.distill.method)
    output_dir = Path(config.output_dir)
    existed = output_dir.exists()
    fresh = not existed or (output_dir.is_dir() and not any(output_dir.iterdir()))
    checkpoint, state, old_checkpoints = prepare_folder(config, accelerator, resume, overwrite, say)

    set_seed(t.seed)  # the same on every rank: identical initial weights wherever they are random
    with unclaimed_on_failure(output_dir, fresh and accelerator.is_main_process, keep_folder=existed):
        pipe, stage, noise_scheduler, trainable = prepare_model(config, accelerator, say)
    loader, image_loader = make_loaders(config, checked, pipe, state, accelerator)
    unet, optimizer, loader, lr_scheduler, trainable, ema, template = prepare_unet(accelerator, t, pipe, trainable,
                                                                                   loader)
    attach_target(config, stage, ema)  # (consistency distillation: the EMA is the target network)
    # a text encoder that trains is DDP-wrapped too, so its gradients are averaged over ranks
    text_encoder = accelerator.prepare(pipe.text_encoder) if t.trains_text else pipe.text_encoder
    run = Run(config=config, accelerator=accelerator, say=say, pipe=pipe, unet=unet, stage=stage,
              noise_scheduler=noise_scheduler, trainable=trainable, optimizer=optimizer, lr_scheduler=lr_scheduler,
              ema=ema, loader=loader, image_loader=image_loader, dataset_size=len(checked.dataset), state=state,
              checkpoint=checkpoint, discard=tuple(old_checkpoints) if overwrite else (),
              generator=torch.Generator(device=accelerator.device), text_encoder=text_encoder,
              last_checkpoint=checkpoint, saved_step=state["step"] if checkpoint is not None else None,
              template=template)
    if checkpoint is not None:
        load_checkpoint(accelerator, checkpoint, model=checkpoint_model(run), optimizer=optimizer,
                        lr_scheduler=lr_scheduler, ema=ema)
        say(f"resumed from {checkpoint} at step {state['step']}")
    return run


# ---------------------------------------------------------------------------------------------------------------
# train: the loop's parts
# ---------------------------------------------------------------------------------------------------------------
def _num_skipped(batch: dict | None) -> int:
    return int(torch.as_tensor(batch.get("num_skipped", 0)).sum()) if batch is not None else 0


def new_counts() -> dict:
    """What one optimiser step measures besides the loss: data wait (s), bad-file encounters and their ids."""
    return {"data_wait": 0.0, "skipped": 0, "skipped_ids": set()}


def step_extras(run: Run, counts: dict, stop: dict) -> list[float]:
    """Summed over ranks with the step's loss: bad-file encounters, bad files not seen before, stop requests."""
    return [counts["skipped"], len(counts["skipped_ids"] - set(run.state["skipped_file_ids"])),
            stop["signal"] is not None]


def union_across_ranks(accelerator, ids: set[int]) -> set[int]:
    """The union of every rank's `ids` (63-bit file ids; padded to the longest with -1 for one all-gather)."""
    if accelerator.num_processes == 1:
        return ids
    device = accelerator.device
    longest = int(accelerator.gather(torch.tensor([len(ids)], device=device)).max())
    local = torch.full((longest,), -1, dtype=torch.long, device=device)
    local[:len(ids)] = torch.tensor(sorted(ids), dtype=torch.long)
    return {int(i) for i in accelerator.gather(local).tolist() if i >= 0}


def micro_batches(run: Run, counts: dict) -> Iterator[list[dict]]:
    """The encoded micro-batches of one optimiser step: [video part] (+ image part in joint training).
    Adds the time spent waiting for data and the bad files skipped to `counts`."""
    t = run.config.train
    if run.batches is None:  # DataLoader workers start on first use
        run.batches = iter(run.loader)
        run.image_batches = iter(run.image_loader) if run.image_loader is not None else None
    encoders = (run.pipe.vae, run.text_encoder, run.pipe.tokenizer)
    for _ in range(t.gradient_accumulation_steps):
        wait_start = time.perf_counter()
        batch = next(run.batches)
        image_batch = next(run.image_batches) if run.image_batches is not None else None
        counts["data_wait"] += time.perf_counter() - wait_start
        counts["skipped"] += _num_skipped(batch) + _num_skipped(image_batch)
        counts["skipped_ids"] |= skipped_file_ids(batch) | skipped_file_ids(image_batch)
        parts = []
        for b, weight in ((batch, 1.0), (image_batch, t.image_loss_weight)):
            if b is not None:
                with run.accelerator.autocast():
                    latents, text = encode_batch(b, *encoders, generator=run.generator, device=run.accelerator.device,
                                                 caption_dropout=t.caption_dropout, train_text=t.trains_text)
                part = {"latents": latents, "encoder_hidden_states": text, "weight": weight}
                if t.trainable == "controlnet":  # the clip's own control images
                    pixels = b["pixel_values"].to(run.accelerator.device)
                    part["extra"] = {"control_images": batch_control_images(pixels, run.config.control.extractor)}
                parts.append(part)
        if run.state["step"] in t.debug_nan_steps:
            parts[0]["weight"] = float("nan")  # test hook: a non-finite loss at this step
        yield parts


def checkpoint_now(run: Run) -> Path:
    state = {**run.state, "num_processes": run.accelerator.num_processes, "config": run.config.to_dict()}
    path = save_checkpoint(run.accelerator, run.output_dir, run.state["step"], state,
                           run.config.train.keep_checkpoints, model=checkpoint_model(run), optimizer=run.optimizer,
                           lr_scheduler=run.lr_scheduler, ema=run.ema, discard=run.discard)
    run.discard = ()
    return path


def full_view(run: Run):
    """The trained U-Net as one full module and the EMA for it: the unwrapped model and the run's EMA, or under
    FSDP a full copy gathered to the main process (None on the other ranks) and the gathered EMA. Every rank
    calls it."""
    if not is_sharded(run.accelerator):
        return run.accelerator.unwrap_model(run.unet), run.ema
    model = unsharded_copy(run.accelerator, run.unet, run.template)
    return model, run.ema.unsharded() if run.ema is not None else None


def validate(run: Run, name: str) -> None:
    """Validation clips into output_dir/validation/<name>, with the averaged weights when there are any
    (they are what gets exported); under FSDP from a full copy of the U-Net on the main process."""
    sharded = is_sharded(run.accelerator)
    model, ema = full_view(run) if sharded else (run.pipe.unet, run.ema)
    if run.accelerator.is_main_process:
        named = {k: p for k, p in model.named_parameters() if k in run.trainable} if sharded else run.trainable
        unet, run.pipe.unet = run.pipe.unet, getattr(model, "unet", model)  # (a ControlNet run: its U-Net)
        try:
            with ema.swapped_in(named) if ema is not None else contextlib.nullcontext():
                paths = render_validation(run.pipe, run.config, run.output_dir / "validation" / name,
                                          run.accelerator.device, control=validation_control(run, model))
        finally:
            run.pipe.unet = unet
        log_validation_metrics(run.accelerator, run.config, run.output_dir, run.state["step"], name, paths)
    run.accelerator.wait_for_everyone()


def validation_control(run: Run, model) -> Control | None:
    """A ControlNet run's validation control: its ControlNet on control.validation_video's first frames (None
    for other runs)."""
    c, v, d = run.config.control, run.config.validation, run.config.data
    if run.config.train.trainable != "controlnet":
        return None
    frames = read_video(c.validation_video, num_frames=v.num_frames or d.num_frames).frames
    images = control_images(frames, c.extractor, v.height or d.height, v.width or d.width)
    return Control(model.controlnet, images.to(run.accelerator.device))


def export_controlnet(run: Run) -> Path:
    """A ControlNet run's output (main process): output_dir/controlnet (EMA weights when train.ema), a diffusers
    ControlNetModel folder with its vidiff-controlnet.json."""
    model, ema, d = run.accelerator.unwrap_model(run.unet), run.ema, run.config.data
    out = run.output_dir / "controlnet"
    record = {"extractor": run.config.control.extractor, "cross_frame": run.config.control.cross_frame,
              "model": str(Path(run.config.model.pretrained).expanduser().resolve()),
              "trained_on": {"num_frames": d.num_frames, "height": d.height, "width": d.width},
              "steps": run.state["step"], "ema": ema is not None}
    with ema.swapped_in(run.trainable) if ema is not None else contextlib.nullcontext():
        try:
            save_controlnet(model, out, record)
        except OSError as e:
            raise TrainingError(f"writing {out} failed ({e.strerror or e}); the trained weights are in the last "
                                "checkpoint: free space and run again with --resume auto") from e
    run.say(f"wrote {out} (vidiff generate --model {run.config.model.pretrained} --controlnet {out} "
            f"--control {run.config.control.extractor} --control-video CLIP)")
    return out


def record_training_settings(info: PipelineInfo, config: Config) -> PipelineInfo:
    """vidiff.json records the clip the model was trained on (`trained_on`: frames, height, width), and its
    sampling defaults become that clip (fps too when data.fps is set), so `vidiff generate --model` without
    options makes what the model learned; with train.export_defaults=pretrained they stay model.pretrained's (a
    smoke run's 2-frame 16x16 clip, configs/train/tiny.yaml, is no size to generate at)."""
    d = config.data
    info = dataclasses.replace(info, extra={**info.extra, "trained_on": {"num_frames": d.num_frames,
                                                                         "height": d.height, "width": d.width}})
    if config.train.export_defaults == "pretrained":
        return info
    size = {"height": d.height, "width": d.width} if d.resize != "crop" else {}  # (patches: the folder keeps its own)
    fps = {"fps": d.fps} if d.fps is not None else {}
    return info.with_defaults(num_frames=d.num_frames, **size, **fps)


def export(run: Run) -> Path | None:
    """output_dir/pipeline (EMA weights when train.ema) and temporal.safetensors; final validation clips."""
    accelerator, v, step = run.accelerator, run.config.validation, run.state["step"]
    pipeline_dir = None
    accelerator.wait_for_everyone()
    if run.config.train.trainable == "controlnet":  # (DDP only: every rank holds the whole ControlNet)
        out = export_controlnet(run) if accelerator.is_main_process else None
        if v.prompts and not (v.every and step % v.every == 0):  # (else just rendered)
            validate(run, "final")
        accelerator.wait_for_everyone()
        return out
    model, ema = full_view(run)  # (every rank: under FSDP the shards are gathered)
    if accelerator.is_main_process:
        named = {k: p for k, p in model.named_parameters() if k in run.trainable}
        if run.config.train.train_text_encoder:
            named.update(text_encoder_parameters(run.pipe.text_encoder))
        if NEW_TOKENS in run.trainable:
            named[NEW_TOKENS] = run.trainable[NEW_TOKENS]
        with ema.swapped_in(named) if ema is not None else contextlib.nullcontext():
            run.pipe.unet = model
            run.pipe.info = record_training_settings(run.pipe.info, run.config)
            pipeline_dir = run.output_dir / "pipeline"
            try:
                with merged_tokens(run.pipe.text_encoder):  # (new tokens: a plain, enlarged embedding)
                    run.pipe.save_pretrained(pipeline_dir)  # (a LoRA run: base weights + unet/lora.safetensors)
                save_new_tokens(run)
                with merged(model):  # the motion module and the SD folder hold a LoRA run's merged weights
                    if any(True for _ in model.temporal_parameters()):
                        model.save_temporal(run.output_dir / "temporal.safetensors")
                    if run.config.train.export_sd:
                        write_sd_folder(run.pipe, run.output_dir / "sd")
            except OSError as e:
                raise TrainingError(f"writing {pipeline_dir} failed ({e.strerror or e}); the trained weights are in "
                                    f"the last checkpoint: free space and run again with --resume auto") from e
            if v.prompts and not (v.every and step % v.every == 0):  # (else just rendered)
                paths = render_validation(run.pipe, run.config, run.output_dir / "validation" / "final",
                                          accelerator.device)
                log_validation_metrics(accelerator, run.config, run.output_dir, step, "final", paths)
        run.say(f"wrote {pipeline_dir} (vidiff generate --model {pipeline_dir}) and "
                f"{run.output_dir / 'temporal.safetensors'}")
    accelerator.wait_for_everyone()
    return pipeline_dir


def save_new_tokens(run: Run) -> None:
    """train.new_tokens' words as output_dir/embeddings/<word>.safetensors (A1111's form: A1111, ComfyUI and
    diffusers' load_textual_inversion read it; `vidiff generate --embedding` too)."""
    for word, rows in new_token_rows(run.pipe.tokenizer, run.pipe.text_encoder).items():
        save_embedding(run.output_dir / "embeddings" / f"{word}.safetensors", rows[None], word)


def write_sd_folder(pipe, out: Path) -> Path:
    """`pipe` (a U-Net without temporal layers: a text-to-image model) as a diffusers SD pipeline folder at `out`
    (no VAE/ for a pixel-space model): UNet2DConditionModel, CLIP text encoder and tokenizer, noise schedule,
    model_index.json. `vidiff inflate` (and `vidiff train` with model.pretrained) inflate it into video models."""
    names = inspect.signature(UNet2DConditionModel.__init__).parameters
    image_unet = UNet2DConditionModel(**{k: v for k, v in pipe.unet.config.items() if k in names})
    image_unet.load_state_dict(pipe.unet.state_dict(), strict=True)  # VideoUNet keeps diffusers' module names
    scheduler = dict(pipe.scheduler_config)
    index = {"_class_name": "StableDiffusionPipeline", "unet": ["diffusers", "UNet2DConditionModel"],
             "text_encoder": ["transformers", type(pipe.text_encoder).__name__],
             "tokenizer": ["transformers", type(pipe.tokenizer).__name__],
             "scheduler": ["diffusers", scheduler.get("_class_name", "DDPMScheduler")]}
    with atomic_dir(out) as tmp:
        image_unet.save_pretrained(str(tmp / "unet"))
        pipe.text_encoder.save_pretrained(str(tmp / "text_encoder"))
        pipe.tokenizer.save_pretrained(str(tmp / "tokenizer"))
        if pipe.vae is not None:
            pipe.vae.save_pretrained(str(tmp / "vae"))
            index["vae"] = ["diffusers", type(pipe.vae).__name__]
        (tmp / "scheduler").mkdir()
        (tmp / "scheduler" / "scheduler_config.json").write_text(json.dumps(scheduler, indent=2) + "\n")
        (tmp / "model_index.json").write_text(json.dumps(index, indent=2) + "\n")
    return out


def step_values(run: Run, out: StepOutput, counts: dict, step_time: float) -> dict:
    """The numbers logged for the step just done (CSV columns, TensorBoard scalars, `on_step`)."""
    t, state = run.config.train, run.state
    samples_per_step = t.batch_size * t.gradient_accumulation_steps * run.accelerator.num_processes
    return {"step": state["step"], "epoch": state["samples_seen"] / run.dataset_size, "loss": out.loss,
            "lr": run.lr_scheduler.get_last_lr()[0], "grad_norm": out.grad_norm,
            "samples_per_s": samples_per_step / step_time,
            "data_wait_share": counts["data_wait"] / step_time if step_time > 0 else 0.0,
            "skipped_files": state["skipped_files"], "skipped_encounters": state["skipped_encounters"],
            "nonfinite_steps": state["nonfinite_steps"]}


def count_step(run: Run, out: StepOutput, counts: dict) -> None:
    """Advance the saved counters by one optimiser step; update the EMA when the step was applied."""
    t, d, state = run.config.train, run.config.data, run.state
    per_step = t.gradient_accumulation_steps * run.accelerator.num_processes
    state["step"] += 1
    state["samples_seen"] += t.batch_size * per_step
    state["image_samples_seen"] += d.image_batch_size * per_step
    state["skipped_encounters"] += int(out.totals[0])
    if out.totals[1] > 0:  # a rank met a bad file it had not met before: every rank joins the gather
        seen = set(state["skipped_file_ids"])
        state["skipped_file_ids"] = sorted(seen | union_across_ranks(run.accelerator, counts["skipped_ids"] - seen))
    state["skipped_files"] = len(state["skipped_file_ids"])
    if out.applied and run.ema is not None:
        run.ema.update(run.trainable)
    if not out.applied:
        state["nonfinite_steps"] += 1


# ---------------------------------------------------------------------------------------------------------------
# train
# ---------------------------------------------------------------------------------------------------------------
def print_line(message: str) -> None:
    """One line on stdout, above the training bar when one is drawn (tqdm.write), never glued to it."""
    ProgressBar.write(message)


def train(config: Config, *, resume: str | None = None, overwrite: bool = False, on_step=None,
          log=print_line) -> TrainResult:
    """Train `config.train.stage` on `config.data`; see the module docstring for what lands in output_dir.

    resume: None (start at step 0), "auto" (the latest checkpoint in output_dir, if any) or a checkpoint folder.
    overwrite: start over in an output_dir that holds an earlier run's checkpoints (removed by the first save);
        without it (and without resume) such a folder is refused.
    on_step: optional `on_step(step, values) -> bool`, called on every rank after each optimiser step with the
        logged values (step, loss, lr, grad_norm, ...); returning True stops the run as SIGTERM does
        (checkpoint, then return "interrupted").
    """
    run = prepare_run(config, resume, log, overwrite)                           # prepare
    train_log = TrainLog(run.accelerator, config, run.output_dir, start_step=run.state["step"],
                         resumed=run.checkpoint is not None)
    with stop_requests() as stop:
        status = loop(run, train_log, stop, on_step)                            # loop: step, log, save
    return finish(run, train_log, status, stop["signal"])                       # export


def loop(run: Run, train_log: TrainLog, stop: dict, on_step) -> str:
    """Optimiser steps until train.max_steps or a stop request; after each: log, checkpoint, validate.
    Returns "finished" or "interrupted"."""
    t, v = run.config.train, run.config.validation
    while run.state["step"] < t.max_steps:
        out, values = step_and_log(run, train_log, stop)
        step = run.state["step"]
        stop_now = out.totals[2] > 0
        if on_step is not None and on_step(step, values):
            stop_now, stop["signal"] = True, stop["signal"] or "on_step"
        check_nonfinite(run, train_log)
        if t.checkpoint_every and step % t.checkpoint_every == 0 or stop_now:
            run.last_checkpoint, run.saved_step = checkpoint_now(run), step
        if v.prompts and v.every and step % v.every == 0:
            validate(run, f"step-{step:08d}")
        if stop_now:
            run.say(f"{stop['signal'] or 'stop request'}: saved {run.last_checkpoint} at step {step}; "
                    "continue with --resume auto")
            return "interrupted"
    return "finished"


def step_and_log(run: Run, train_log: TrainLog, stop: dict) -> tuple[StepOutput, dict]:
    """One optimiser step of the run, counted and logged; returns its output and logged values."""
    t, accelerator, state = run.config.train, run.accelerator, run.state
    # noise, timesteps, dropout and conditions of step n on this rank: from (seed, n, rank)
    run.generator.manual_seed((t.seed * 1_000_003 + state["step"]) * 1_009 + accelerator.process_index)
    counts, step_start = new_counts(), time.perf_counter()
    if hasattr(run.stage, "before_step"):  # (a distillation objective: progressive rounds change teachers)
        run.stage.before_step(state["step"], accelerator.unwrap_model(run.unet), run.output_dir)
    out = training_step(accelerator, run.unet, run.stage, run.noise_scheduler, run.optimizer,
                        micro_batches(run, counts), params=list(run.trainable.values()),
                        generator=run.generator, max_grad_norm=t.max_grad_norm, lr_scheduler=run.lr_scheduler,
                        extras=lambda: step_extras(run, counts, stop))
    count_step(run, out, counts)
    step = state["step"]
    run.nonfinite_in_row = 0 if out.applied else run.nonfinite_in_row + 1
    if not out.applied:
        run.say(f"step {step}: non-finite loss ({out.loss}) or gradient norm ({out.grad_norm}); step skipped "
                f"({run.nonfinite_in_row} in a row, stop at {t.max_nonfinite})")
    values = step_values(run, out, counts, time.perf_counter() - step_start)
    train_log.step(values, write=step % t.log_every == 0 or step == t.max_steps or not out.applied)
    return out, values


def check_nonfinite(run: Run, train_log: TrainLog) -> None:
    """Stop (after saving the weights before them) when train.max_nonfinite steps in a row were non-finite."""
    if run.nonfinite_in_row < run.config.train.max_nonfinite:
        return
    run.last_checkpoint = checkpoint_now(run)
    train_log.close(plot=False)
    run.accelerator.end_training()
    raise TrainingError(
        f"{run.nonfinite_in_row} non-finite losses in a row at step {run.state['step']}: stopping. The weights "
        f"before them are saved in {run.last_checkpoint}. Lower train.learning_rate, set train.max_grad_norm, "
        "or use train.mixed_precision=bf16 instead of fp16.")


def finish(run: Run, train_log: TrainLog, status: str, stop_signal: str | None) -> TrainResult:
    """Stop the data workers; when finished, save the last step's checkpoint and export the pipeline."""
    accelerator, state = run.accelerator, run.state
    for batches in (run.batches, run.image_batches):  # stop the DataLoader workers now, not at interpreter exit
        getattr(batches, "close", lambda: None)()
    check_ranks_agree(accelerator, run.trainable)
    pipeline_dir = None
    if status == "finished":
        if run.saved_step != state["step"]:
            run.last_checkpoint = checkpoint_now(run)
        pipeline_dir = export(run)
    train_log.close()
    accelerator.end_training()
    return TrainResult(step=state["step"], status=status, output_dir=run.output_dir, checkpoint=run.last_checkpoint,
                       pipeline=pipeline_dir, nonfinite_steps=state["nonfinite_steps"],
                       skipped_files=state["skipped_files"], skipped_encounters=state["skipped_encounters"],
                       is_main_process=accelerator.is_main_process,
                       stop_signal=stop_signal if status == "interrupted" else None)


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


@torch.no_grad()
def check_ranks_agree(accelerator, trainable: dict) -> None:
    """Under data parallelism every rank must hold the same weights: compare a float64 checksum of the
    trainable parameters across ranks and stop loudly if they diverged."""
    if accelerator.num_processes == 1 or is_sharded(accelerator):  # (FSDP: one copy, each rank its shard)
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
