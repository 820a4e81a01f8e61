"""Training configuration: typed dataclasses filled from YAML, with dotted `key=value` overrides.

    cfg = load_config("configs/train/finetune.yaml", ["train.max_steps=500", "data.num_frames=8"])

Every field has a declared type and a default. Unknown keys and values of the wrong type are errors that
name the key and the file (or the override), so a typo never silently falls back to a default.
Override values are parsed as YAML (`train.debug_nan_steps=[2,3]`, `validation.prompts=["a cat"]`,
`train.ema=false`, `data.fps=null`).
"""
from __future__ import annotations

import dataclasses
import os
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Union

import yaml

from vidiff.spec import (ATTENTION_BACKENDS, CONTROL_EXTRACTORS, CROSS_FRAME_MODES, DISTILL_METHODS, LORA_TARGETS,
                         TEMPORAL_LAYOUTS)
from vidiff.stages import STAGES, check_stage_fields, make_stage
from vidiff.utils import yaml_error_line

TRAINABLE_MODES = ("temporal", "temporal+attn-q", "all", "lora", "controlnet")
MIXED_PRECISION = ("no", "fp16", "bf16")
PREDICTION_TYPES = ("epsilon", "v_prediction")
RESIZE_MODES = ("cover", "area", "crop")
EXPORT_DEFAULTS = ("data", "pretrained")  # train.export_defaults: whose sampling defaults vidiff.json gets
FLOOR_SCHEDULES = ("cosine_floor",)  # the vidiff schedules with a floor (train.lr_floor); the rest are diffusers'


@dataclass
class ModelConfig:
    pretrained: str = ""                   # diffusers SD pipeline folder / hub id to inflate, or a vidiff pipeline folder (has vidiff.json) to continue
    cross_frame: Union[str, None] = None   # spatial self-attention across frames: none | first | sparse-causal; null keeps the model's ("none" when inflating)
    temporal_layout: str = "vidiff"        # when inflating: vidiff (temporal conv + attention) | animatediff (motion modules)
    temporal_conv: Union[bool, None] = None      # add temporal convolutions when inflating (null: yes in the vidiff layout)
    temporal_attention: Union[bool, None] = None  # add temporal attention layers when inflating (null: yes in the vidiff layout)
    motion_module: Union[str, None] = None  # when inflating: AnimateDiff motion modules to start from (MotionAdapter folder / hub id / mm_*.ckpt); implies the animatediff layout
    attention_backend: str = "auto"        # auto | sdpa | xformers | math


@dataclass
class DataConfig:
    manifest: str = ""                     # folder of videos + .txt captions, CSV/JSONL manifest, or a single video
    prompt: str = ""                       # caption for a single-video manifest (one-shot tuning)
    num_frames: int = 8                    # frames per training clip
    height: int = 256                      # clip height in pixels
    width: int = 256                       # clip width in pixels
    stride: int = 1                        # take every `stride`-th source frame (ignored when `fps` is set)
    fps: Union[float, None] = None         # resample clips to this frame rate instead of a fixed stride
    flip: bool = False                     # random horizontal flips
    num_workers: int = 2                   # DataLoader worker processes per rank
    cache: Union[str, None] = None         # folder of cached VAE latents + text embeddings (`vidiff data cache`); replaces `manifest`
    image_manifest: Union[str, None] = None  # images for joint image + video training (each image is a one-frame video)
    image_batch_size: int = 0              # images per step (per rank) in joint training; 0 = off
    shards: Union[str, None] = None        # webdataset tar shards (`vidiff data shard`): a folder with index.json, or a brace pattern /data/shard-{000000..000099}.tar; replaces `manifest`
    buckets: Union[list[list[int]], None] = None  # [[frames, height, width], ...]: each clip trains at the bucket nearest its aspect ratio that fits in it (no upscaling; clips smaller than every bucket are skipped), each batch one bucket; replaces num_frames / height / width
    resize: str = "cover"                  # cover: the decoder resizes the shorter side, then a crop | area: frames at their stored size, averaged down by an integer factor to height x width (exact for pixel-space models) | crop: random height x width patches at the stored size


@dataclass
class LoraTrainConfig:
    """train.trainable=lora: a peft LoRA adapter (vidiff.adapters) is the only thing trained (with what the stage
    must train); the exported pipeline keeps the base weights and the adapter beside them (unet/lora.safetensors).
    targets defaults to "temporal": LoRA fine-tuning of a video model is mostly about motion (AnimateDiff's motion
    LoRAs), and the spatial layers are the image model users keep loading their SD LoRAs into; "both" adapts the
    look as well. (On a freshly inflated model the temporal layers start as the identity with zero output
    projections: train those fully first, train.trainable=temporal, then LoRA on the result.)"""
    rank: int = 8                          # r, the inner dimension of the update B A
    alpha: Union[float, None] = None       # the update is scaled by alpha / rank; null = rank (scale 1)
    dropout: float = 0.0                   # dropout on the adapter's input
    targets: str = "temporal"              # spatial (attention projections of the spatial transformers) | temporal (temporal attention / motion modules) | both


@dataclass
class TrainConfig:
    stage: str = "base"                    # what the U-Net is trained for: base | interpolation | tsr | ssr (options in the stage section)
    trainable: str = "temporal"            # temporal | temporal+attn-q (Tune-A-Video) | all | lora (a peft adapter, train.lora)
    max_steps: int = 1000                  # optimiser steps
    batch_size: int = 1                    # clips per rank per micro-batch
    gradient_accumulation_steps: int = 1   # micro-batches per optimiser step
    learning_rate: float = 1e-4            # peak learning rate (AdamW)
    lr_scheduler: str = "constant"         # any name of diffusers.optimization.get_scheduler (constant, cosine, linear, ...), or cosine_floor
    lr_floor: float = 0.0                  # cosine_floor: warm-up times a cosine from learning_rate down to this fraction of it at max_steps
    lr_warmup_steps: int = 0               # linear warm-up, in optimiser steps
    adam_beta1: float = 0.9
    adam_beta2: float = 0.999
    adam_epsilon: float = 1e-8
    weight_decay: float = 1e-2
    max_grad_norm: float = 1.0             # gradient clipping; 0 = off (the norm is still logged)
    mixed_precision: str = "no"            # no | fp16 | bf16 (autocast; trainable weights stay fp32)
    gradient_checkpointing: bool = False   # recompute activations in backward: less memory, ~30% slower
    compile: bool = False                  # torch.compile the U-Net (inductor, vidiff.models.compile): the first step compiles (minutes on a CPU), later ones run faster; checkpoints and exports are unchanged
    prediction_type: Union[str, None] = None  # epsilon | v_prediction; null = the scheduler config's
    snr_gamma: Union[float, None] = None   # min-SNR-gamma loss weighting (Hang et al. 2023); 5.0 is the usual value
    noise_offset: float = 0.0              # offset noise: per-video, per-channel constant added to the noise (0.05-0.1)
    noisy_fraction: float = 0.0            # share of timesteps drawn from the noisiest part of the schedule, where
    noisy_from: float = 0.75               # (from this fraction of it on) only the caption can say where things move
    caption_dropout: float = 0.0           # probability of training on the empty prompt (for classifier-free guidance)
    image_loss_weight: float = 1.0         # weight of the image loss in joint image + video training
    ema: bool = False                      # keep an exponential moving average of the trainable weights (exported)
    ema_decay: float = 0.9999              # EMA decay (with the usual (1 + n) / (10 + n) warm-up)
    train_text_encoder: bool = False       # train the text encoder along with the U-Net (same optimiser, EMA, checkpoints; exported)
    new_tokens: dict[str, str] = field(default_factory=dict)  # textual inversion: new word -> the words its embedding starts from ({purple: red blue}); only the new rows train (with a LoRA: pivotal tuning); exported in the folder and as output_dir/embeddings/<word>.safetensors
    export_defaults: str = "data"          # the exported vidiff.json's sampling defaults: data (the training clip: data.num_frames, height, width, fps) | pretrained (model.pretrained's own: for smoke runs on clips too small to generate at)
    export_sd: bool = False                # also write output_dir/sd: the U-Net as a diffusers SD text-to-image folder (a U-Net without temporal layers)
    seed: int = 0                          # model init, data order and noise are determined by this seed
    checkpoint_every: int = 500            # save a resumable checkpoint every N steps (0 = only at the end)
    keep_checkpoints: int = 3              # keep the last K checkpoints
    log_every: int = 1                     # CSV / TensorBoard row every N steps
    max_nonfinite: int = 5                 # stop after this many non-finite losses in a row
    debug_nan_steps: list[int] = field(default_factory=list)  # test hook: make the loss NaN at these steps
    lora: LoraTrainConfig = field(default_factory=LoraTrainConfig)  # the adapter of train.trainable=lora

    @property
    def trains_text(self) -> bool:
        """The text embeddings keep their graph: the text encoder trains, or new token rows do."""
        return self.train_text_encoder or bool(self.new_tokens)


@dataclass
class StageConfig:
    """Options of the cascade stages (train.stage: interpolation | tsr | ssr); null takes the model folder's
    (vidiff.json `stage_options`, written by `vidiff inflate --stage`), else the stage's default."""
    factor: Union[int, None] = None        # tsr: frame-rate factor (data.num_frames a multiple of it); ssr: spatial factor, 2 or 4
    mask_factors: Union[list[int], None] = None  # interpolation: masks keep every k-th frame, k from this set (the factors it learns; default [2, 4])
    mask_modes: Union[list[str], None] = None    # interpolation: mask kinds drawn uniformly: interpolate | future | past | first (default the first three; future / past = extension, first = image-to-video)
    max_noise_level: Union[int, None] = None     # ssr: condition noise-augmentation levels drawn uniformly in [0, this] (default 350, as the SD x4 upscaler)


@dataclass
class DistillConfig:
    """Distillation (vidiff.training.distill): model.pretrained is the frozen teacher (a vidiff pipeline folder),
    the student starts as its copy and learns to sample in `steps` steps; the exported folder records how
    (vidiff.json `distilled`) and samples that way by default. null method: an ordinary training run."""
    method: Union[str, None] = None        # consistency (LCM: multi-step consistency sampling) | progressive (Salimans & Ho 2022: halving the teacher's DDIM steps in rounds) | null
    steps: int = 4                         # the student's sampling steps (progressive: teacher_steps / 2^k; consistency: its default, any number up to teacher_steps works)
    teacher_steps: Union[int, None] = None  # progressive: the teacher's DDIM steps (null: its vidiff.json default); consistency: the DDIM solver's grid (null: 50, LCM's skipping step of T / 50)
    guidance: bool = False                 # guidance distillation (Meng et al. 2023): the guidance scale becomes a U-Net input, one pass per step instead of two
    guidance_min: float = 1.0              # guidance distillation: scales drawn uniformly from [guidance_min, guidance_max]
    guidance_max: Union[float, None] = None  # null: twice the teacher's default guidance (at least 2)
    strength: float = 1.0                  # progressive, a cascade stage: learn only the last share of the student's DDIM grid, where a stage started from its input's estimate samples (as `--strength`; the student samples so by default); 1: the whole grid
    target: str = "ema"                    # consistency: the target network, ema (the run's EMA: needs train.ema; LCM's decay 0.95 as train.ema_decay) | online (the student, stop-gradient)


@dataclass
class ControlConfig:
    """Training a ControlNet beside the frozen video U-Net (train.trainable=controlnet; vidiff.training.control):
    the control images of each training clip are made from the clip by `extractor`, and the run exports
    output_dir/controlnet, a diffusers ControlNetModel folder (`vidiff generate --controlnet`)."""
    extractor: str = "canny"               # canny | track | raw (vidiff.control.extractors), as `--control` at sampling
    controlnet: Union[str, None] = None    # start from this ControlNet (diffusers folder or hub id); null: a copy of the U-Net's encoder with zero-initialised output convs (ControlNet's recipe)
    cross_frame: str = "none"              # the ControlNet's spatial self-attention: none | first | sparse-causal (as --cross-frame at sampling)
    validation_video: Union[str, None] = None  # the video validation.prompts' control images are made from (needed with validation.prompts)


@dataclass
class ValidationConfig:
    prompts: list[str] = field(default_factory=list)  # prompts rendered to mp4 + contact sheet
    every: int = 0                         # every N steps (0 = only at the end, when prompts are given)
    num_frames: Union[int, None] = None    # default: data.num_frames
    height: Union[int, None] = None        # default: data.height
    width: Union[int, None] = None         # default: data.width
    steps: Union[int, None] = None         # sampling steps (default: the model's, vidiff.json)
    guidance_scale: Union[float, None] = None  # default: the model's (vidiff.json; SD folders: 7.5)
    seed: int = 0
    fps: int = 8
    metrics: list[str] = field(default_factory=list)  # scores of the rendered clips, logged: [vbench] (weight-free)


@dataclass
class Config:
    output_dir: str = "runs/train"         # checkpoints/, logs/, validation/, pipeline/, temporal.safetensors
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    stage: StageConfig = field(default_factory=StageConfig)
    distill: DistillConfig = field(default_factory=DistillConfig)
    control: ControlConfig = field(default_factory=ControlConfig)
    validation: ValidationConfig = field(default_factory=ValidationConfig)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


DISTILL_TARGETS = ("ema", "online")  # distill.target

# validation.metrics: vbench = vidiff.eval.vbench's weight-free dimensions, averaged over the validation clips
VALIDATION_METRICS = ("vbench",)


class ConfigError(ValueError):
    """A bad config file or override; the message names the key and where it came from."""


# ---------------------------------------------------------------------------------------------------------------
# type checking
# ---------------------------------------------------------------------------------------------------------------
def _type_name(tp) -> str:
    origin = typing.get_origin(tp)
    if origin in (Union, types.UnionType):
        return " or ".join(_type_name(a) for a in typing.get_args(tp))
    if origin is list:
        return f"list of {_type_name(typing.get_args(tp)[0])}"
    if origin is dict:
        key, value = typing.get_args(tp)
        return f"mapping of {_type_name(key)} to {_type_name(value)}"
    return "null" if tp is type(None) else tp.__name__


def _coerce(value, tp, key: str, where: str):
    """Return `value` checked against the annotation `tp`; raise ConfigError naming `key` and `where`."""
    origin = typing.get_origin(tp)
    if origin in (Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, key, where)
            except ConfigError:
                pass
        raise ConfigError(f"{key} in {where}: expected {_type_name(tp)}, got {value!r}")
    if origin is list:
        (item,) = typing.get_args(tp)
        if isinstance(value, tuple):
            value = list(value)
        if not isinstance(value, list):
            raise ConfigError(f"{key} in {where}: expected {_type_name(tp)}, got {value!r}")
        return [_coerce(v, item, f"{key}[{i}]", where) for i, v in enumerate(value)]
    if origin is dict:
        key_type, value_type = typing.get_args(tp)
        if not isinstance(value, dict):
            raise ConfigError(f"{key} in {where}: expected {_type_name(tp)}, got {value!r}")
        return {_coerce(k, key_type, f"{key} (a key)", where): _coerce(v, value_type, f"{key}.{k}", where)
                for k, v in value.items()}
    if tp is bool:
        if isinstance(value, bool):
            return value
    elif tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        # PyYAML reads `1e-4` (no dot) as a string; accept numeric strings for float fields.
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                pass
    elif tp is str:
        if isinstance(value, str):
            return value
        if isinstance(value, bool):  # YAML 1.1 reads no / yes / on / off unquoted as booleans
            raise ConfigError(f"{key} in {where}: expected str, got {value!r} (YAML reads unquoted no/yes/on/off "
                              f"as booleans: quote the value, e.g. \"no\")")
    raise ConfigError(f"{key} in {where}: expected {_type_name(tp)}, got {value!r}")


def _field_type(cfg, dotted: str):
    """The annotation of the field at `dotted` (None when the path does not name a field)."""
    obj = cfg
    parts = dotted.split(".")
    for i, part in enumerate(parts):
        if not dataclasses.is_dataclass(obj) or part not in {f.name for f in dataclasses.fields(obj)}:
            return None
        if i == len(parts) - 1:
            return typing.get_type_hints(type(obj))[part]
        obj = getattr(obj, part)
    return None


def _is_plain_str(tp) -> bool:
    """str or Optional[str]: override text is taken as typed (so `no`, `on`, `1e-4`, dates stay strings)."""
    if tp is str:
        return True
    args = typing.get_args(tp) if typing.get_origin(tp) in (Union, types.UnionType) else ()
    return bool(args) and set(args) <= {str, type(None)}


def _fill(obj, data: dict, prefix: str, where: str) -> None:
    """Set the fields of dataclass `obj` from the mapping `data`, recursing into nested dataclasses."""
    if not isinstance(data, dict):
        raise ConfigError(f"{prefix.rstrip('.') or 'the top level'} in {where}: expected a mapping, got {data!r}")
    hints = typing.get_type_hints(type(obj))
    names = {f.name for f in dataclasses.fields(obj)}
    for key, value in data.items():
        full = f"{prefix}{key}"
        if key not in names:
            known = ", ".join(sorted(prefix + n for n in names))
            raise ConfigError(f"unknown key {full!r} in {where}; known keys here: {known}")
        current = getattr(obj, key)
        if dataclasses.is_dataclass(current):
            _fill(current, value, f"{full}.", where)
        else:
            setattr(obj, key, _coerce(value, hints[key], full, where))


def apply_override(cfg: Config, override: str) -> None:
    """Apply one `section.key=value` override (value parsed as YAML) to `cfg` in place."""

    where = f"override {override!r}"
    if "=" not in override:
        raise ConfigError(f"{where}: expected key=value, e.g. train.max_steps=100")
    dotted, raw = override.split("=", 1)
    dotted = dotted.strip()
    tp = _field_type(cfg, dotted)
    if tp is not None and _is_plain_str(tp):
        value = None if raw.strip() in ("null", "~") and type(None) in typing.get_args(tp) else raw
    else:
        try:
            value = yaml.safe_load(raw) if raw.strip() else ""
        except yaml.YAMLError:
            value = raw
        if value is not None and not isinstance(value, (str, int, float, bool, list, dict)):
            value = raw  # YAML dates and the like: keep the text as typed
    data: Any = value
    for part in reversed(dotted.split(".")):
        if not part:
            raise ConfigError(f"{where}: empty key segment in {dotted!r}")
        data = {part: data}
    _fill(cfg, data, "", where)


def validate(cfg: Config, where: str = "config", *, need_data: bool = True) -> None:
    """Cross-field and range checks, after YAML and overrides are applied (`need_data=False`: a config that
    names no data yet passes, for printing it)."""
    t, d = cfg.train, cfg.data

    def check(ok: bool, msg: str):
        if not ok:
            raise ConfigError(f"{msg} (in {where})")

    check(t.trainable in TRAINABLE_MODES, f"train.trainable must be one of {', '.join(TRAINABLE_MODES)}, got {t.trainable!r}")
    check(t.mixed_precision in MIXED_PRECISION, f"train.mixed_precision must be one of {', '.join(MIXED_PRECISION)}, got {t.mixed_precision!r}")
    check(t.prediction_type is None or t.prediction_type in PREDICTION_TYPES,
          f"train.prediction_type must be null or one of {', '.join(PREDICTION_TYPES)}, got {t.prediction_type!r}")
    for name in ("max_steps", "batch_size", "gradient_accumulation_steps", "keep_checkpoints", "log_every", "max_nonfinite"):
        check(getattr(t, name) >= 1, f"train.{name} must be >= 1, got {getattr(t, name)}")
    for name in ("checkpoint_every", "lr_warmup_steps"):
        check(getattr(t, name) >= 0, f"train.{name} must be >= 0, got {getattr(t, name)}")
    check(t.learning_rate > 0, f"train.learning_rate must be > 0, got {t.learning_rate}")
    check(t.max_grad_norm >= 0, f"train.max_grad_norm must be >= 0 (0 = no clipping), got {t.max_grad_norm}")
    check(0.0 <= t.ema_decay < 1.0, f"train.ema_decay must be in [0, 1), got {t.ema_decay}")
    check(0.0 <= t.caption_dropout <= 1.0, f"train.caption_dropout must be in [0, 1], got {t.caption_dropout}")
    check(t.snr_gamma is None or t.snr_gamma > 0, f"train.snr_gamma must be null or > 0, got {t.snr_gamma}")
    check(t.noise_offset >= 0, f"train.noise_offset must be >= 0, got {t.noise_offset}")
    check(0.0 <= t.noisy_fraction <= 1.0, f"train.noisy_fraction must be in [0, 1], got {t.noisy_fraction}")
    check(0.0 <= t.noisy_from < 1.0, f"train.noisy_from must be in [0, 1), got {t.noisy_from}")
    check(0.0 <= t.lr_floor < 1.0, f"train.lr_floor must be in [0, 1) (a fraction of train.learning_rate), got {t.lr_floor}")
    check(t.lr_floor == 0.0 or t.lr_scheduler in FLOOR_SCHEDULES,
          f"train.lr_floor={t.lr_floor} applies to train.lr_scheduler={' | '.join(FLOOR_SCHEDULES)}, not to {t.lr_scheduler!r}")
    check(not t.train_text_encoder or not d.cache,
          "train.train_text_encoder needs captions, not data.cache (its text embeddings are computed once, frozen)")
    check(not t.new_tokens or not d.cache,
          "train.new_tokens needs captions, not data.cache (its text embeddings are computed once, frozen)")
    check(not (t.new_tokens and t.train_text_encoder),
          "train.new_tokens trains new embedding rows of a frozen text encoder; with train.train_text_encoder the "
          "whole encoder trains: set one of them")
    check(t.export_defaults in EXPORT_DEFAULTS,
          f"train.export_defaults must be one of {', '.join(EXPORT_DEFAULTS)}, got {t.export_defaults!r}")
    check(d.resize in RESIZE_MODES, f"data.resize must be one of {', '.join(RESIZE_MODES)}, got {d.resize!r}")
    check(d.resize == "cover" or not d.cache, f"data.resize={d.resize!r} reads videos; data.cache holds fixed latents")
    for name in ("num_frames", "height", "width", "stride"):
        check(getattr(d, name) >= 1, f"data.{name} must be >= 1, got {getattr(d, name)}")
    check(d.fps is None or d.fps > 0, f"data.fps must be null or > 0, got {d.fps}")
    check(d.num_workers >= 0, f"data.num_workers must be >= 0, got {d.num_workers}")
    check(d.image_batch_size >= 0, f"data.image_batch_size must be >= 0, got {d.image_batch_size}")
    check(d.image_batch_size == 0 or bool(d.image_manifest),
          "data.image_batch_size > 0 needs data.image_manifest (a folder or manifest of images)")
    _validate_data(cfg, check, need_data)
    check(bool(cfg.model.pretrained), "model.pretrained is empty: set it to an SD pipeline folder or a vidiff pipeline folder")
    check(bool(cfg.output_dir), "output_dir is empty")
    _validate_model(cfg, check)
    _validate_lora(cfg, check)
    _validate_distill(cfg, check)
    _validate_stage(cfg, check)
    _validate_control(cfg, check)
    _validate_validation(cfg, check)


def _validate_control(cfg: Config, check) -> None:
    """train.trainable=controlnet and the control section: what a ControlNet run needs and refuses."""
    c, t = cfg.control, cfg.train
    check(c.extractor in CONTROL_EXTRACTORS,
          f"control.extractor must be one of {', '.join(CONTROL_EXTRACTORS)}, got {c.extractor!r}")
    check(c.cross_frame in CROSS_FRAME_MODES,
          f"control.cross_frame must be one of {', '.join(CROSS_FRAME_MODES)}, got {c.cross_frame!r}")
    if t.trainable != "controlnet":
        check(c.controlnet is None and c.validation_video is None,
              "control.controlnet / control.validation_video apply to a ControlNet run: set train.trainable=controlnet")
        return
    takes_video = t.stage in STAGES and STAGES[t.stage].takes_video
    for ok, what in ((not takes_video, f"train.stage={t.stage!r} (a ControlNet steers the base stage)"),
                     (not cfg.data.cache, "data.cache (control images are made from the clips' pixels)"),
                     (cfg.distill.method is None, "distill.method (distil the model, then train its ControlNet)"),
                     (not t.trains_text, "train.train_text_encoder / train.new_tokens (the text encoder stays frozen)"),
                     (not t.export_sd, "train.export_sd (the run exports a ControlNet, not a model)"),
                     (not t.compile, "train.compile (it compiles the U-Net alone)"),
                     (not cfg.data.image_batch_size, "data.image_batch_size (ControlNets train on videos)")):
        check(ok, f"train.trainable=controlnet trains a ControlNet beside the frozen U-Net and does not go with {what}")
    check(not cfg.validation.prompts or bool(c.validation_video),
          "validation.prompts of a ControlNet run need control images: set control.validation_video to a video")


def _validate_validation(cfg: Config, check) -> None:
    v = cfg.validation
    check(v.every >= 0, f"validation.every must be >= 0, got {v.every}")
    check(v.steps is None or v.steps >= 1, f"validation.steps must be null (the model's) or >= 1, got {v.steps}")
    check(v.guidance_scale is None or v.guidance_scale >= 0,
          f"validation.guidance_scale must be null (the model's) or >= 0, got {v.guidance_scale}")
    for name in v.metrics:
        check(name in VALIDATION_METRICS, f"validation.metrics: unknown metric {name!r}; choose from "
                                          f"{', '.join(VALIDATION_METRICS)}")
    check(len(set(v.metrics)) == len(v.metrics), f"validation.metrics lists a metric twice: {v.metrics}")
    check(not v.metrics or bool(v.prompts), "validation.metrics scores the validation clips: set validation.prompts")
    frames = v.num_frames or cfg.data.num_frames
    check(not v.metrics or frames >= 3, f"validation.metrics=[vbench] needs clips of at least 3 frames (motion "
                                        f"smoothness), validation renders {frames}; set validation.num_frames")


def _validate_data(cfg: Config, check, need_data: bool) -> None:
    """Where the clips come from (data.cache or data.shards replace data.manifest) and data.buckets."""
    d = cfg.data
    check(not need_data or bool(d.manifest or d.cache or d.shards),
          "data.manifest is empty: set it to a video folder, manifest file or video (or data.shards / data.cache)")
    check(not (d.cache and d.shards), "data.cache and data.shards are both set: give one source of clips")
    if d.buckets is None:
        return
    check(bool(d.buckets), "data.buckets is empty: give [[frames, height, width], ...] or null")
    for i, bucket in enumerate(d.buckets):
        check(len(bucket) == 3 and min(bucket) >= 1,
              f"data.buckets[{i}] must be [frames, height, width], each >= 1, got {bucket}")
    check(not d.cache, "data.buckets sizes clips as they are read; data.cache holds latents of one fixed size")
    check(d.resize == "cover", f"data.buckets resizes each clip to its bucket (cover); data.resize={d.resize!r} "
                               f"is not supported with it")


def _validate_model(cfg: Config, check) -> None:
    """model.cross_frame and model.attention_backend by the names vidiff.spec defines (torch-free);
    whether the backend can run on this machine is checked by the trainer before it loads anything."""

    m = cfg.model
    check(m.cross_frame is None or m.cross_frame in CROSS_FRAME_MODES,
          f"model.cross_frame must be null (keep the model's) or one of {', '.join(CROSS_FRAME_MODES)}, "
          f"got {m.cross_frame!r}")
    check(m.temporal_layout in TEMPORAL_LAYOUTS,
          f"model.temporal_layout must be one of {', '.join(TEMPORAL_LAYOUTS)}, got {m.temporal_layout!r}")
    animatediff = m.temporal_layout == "animatediff" or m.motion_module is not None
    check(not animatediff or not (m.temporal_conv or m.temporal_attention),
          "AnimateDiff's layout (model.temporal_layout=animatediff or a model.motion_module) has motion modules in "
          "place of temporal conv and attention: leave model.temporal_conv and model.temporal_attention null")
    check(m.attention_backend in ATTENTION_BACKENDS,
          f"model.attention_backend must be one of {', '.join(ATTENTION_BACKENDS)}, got {m.attention_backend!r}")


def _validate_lora(cfg: Config, check) -> None:
    """The train.lora section (types are checked when it is read; here the ranges and names)."""
    lora = cfg.train.lora
    check(lora.rank >= 1, f"train.lora.rank must be >= 1, got {lora.rank}")
    check(lora.alpha is None or lora.alpha > 0, f"train.lora.alpha must be null (= rank) or > 0, got {lora.alpha}")
    check(0.0 <= lora.dropout < 1.0, f"train.lora.dropout must be in [0, 1), got {lora.dropout}")
    check(lora.targets in LORA_TARGETS,
          f"train.lora.targets must be one of {', '.join(LORA_TARGETS)}, got {lora.targets!r}")


def _validate_distill(cfg: Config, check) -> None:
    """The distill section on its own (what the teacher folder says is checked by training.preflight)."""
    x = cfg.distill
    if x.method is None:
        return
    check(x.method in DISTILL_METHODS, f"distill.method must be null or one of {', '.join(DISTILL_METHODS)}, "
                                       f"got {x.method!r}")
    check(x.steps >= 1, f"distill.steps must be >= 1, got {x.steps}")
    check(x.teacher_steps is None or x.teacher_steps >= 1,
          f"distill.teacher_steps must be null or >= 1, got {x.teacher_steps}")
    check(x.guidance_min >= 1.0, f"distill.guidance_min must be >= 1 (1 = no guidance), got {x.guidance_min}")
    check(x.guidance_max is None or x.guidance_max >= x.guidance_min,
          f"distill.guidance_max must be null or >= distill.guidance_min ({x.guidance_min}), got {x.guidance_max}")
    check(not x.guidance or cfg.train.trainable in ("all", "lora"),
          f"distill.guidance trains the new guidance embedding with the U-Net: train.trainable must be all or lora, "
          f"got {cfg.train.trainable!r}")
    check(x.target in DISTILL_TARGETS,
          f"distill.target must be one of {', '.join(DISTILL_TARGETS)}, got {x.target!r}")
    check(x.method != "consistency" or x.target != "ema" or cfg.train.ema,
          "distill.target=ema makes the run's EMA the consistency target network: set train.ema=true (and "
          "train.ema_decay=0.95, LCM's), or distill.target=online")
    check(isinstance(x.strength, (int, float)) and 0 < x.strength <= 1,
          f"distill.strength must be in (0, 1] (1: the whole schedule), got {x.strength!r}")
    check(x.strength == 1 or x.method == "progressive",
          f"distill.strength={x.strength} is for progressive distillation (a consistency student samples from pure "
          "noise); set distill.method=progressive or distill.strength=1")
    if x.teacher_steps is not None:
        check_distill_steps(x.method, x.steps, x.teacher_steps, x.guidance, check)


def check_distill_steps(method: str, steps: int, teacher_steps: int, guidance: bool, check) -> None:
    """distill.steps against the teacher's: progressive halves them (teacher_steps / 2^k; k = 0 is guidance
    distillation alone), consistency samples on a subset of its solver grid."""
    if method == "consistency":
        check(steps <= teacher_steps, f"distill.steps={steps} must be at most the consistency solver grid "
                                      f"(distill.teacher_steps={teacher_steps})")
        return
    ratio = teacher_steps // steps
    check(teacher_steps % steps == 0 and ratio & (ratio - 1) == 0,
          f"distill.steps={steps} does not divide the teacher's {teacher_steps} DDIM steps by a power of 2: "
          f"progressive distillation halves the steps in rounds (e.g. {teacher_steps // 2 or 1})")
    check(ratio > 1 or guidance, f"distill.steps={steps} equals the teacher's {teacher_steps}: nothing to distil "
                                 "(halve the steps, or set distill.guidance=true for guidance distillation)")


def _validate_stage(cfg: Config, check) -> None:
    """train.stage and the stage section, checked by the stage itself (vidiff.stages: the one home of each
    stage's options) before any model is loaded."""
    t = cfg.train
    requested = dataclasses.asdict(cfg.stage)
    try:
        check_stage_fields(t.stage, requested)
        stage = make_stage(t.stage, **{k: v for k, v in requested.items() if v is not None})
        for frames in {cfg.data.num_frames, *(b[0] for b in cfg.data.buckets or [] if b)}:
            stage.check_clip(frames)
    except ValueError as e:
        check(False, str(e))
    check(not t.export_sd or (not stage.takes_video and cfg.model.temporal_layout == "vidiff"
                              and cfg.model.temporal_conv is False and cfg.model.temporal_attention is False),
          "train.export_sd writes a text-to-image SD folder: it needs train.stage=base, model.temporal_conv=false "
          "and model.temporal_attention=false")
    check(not stage.takes_video or not cfg.validation.prompts,
          f"validation.prompts renders text-to-video clips, which a {t.stage} stage cannot make alone; "
          "leave it empty for cascade stages")
    check(cfg.distill.strength == 1 or stage.has_start_estimate(),
          f"distill.strength={cfg.distill.strength} teaches a start from the stage's estimate of its output, which "
          f"a {t.stage} model does not make (it has no input, or an SD x4 upscaler's pixel condition): set it to 1")


def load_config(path: str | os.PathLike | None = None, overrides: list[str] | tuple = (), *,
                check: bool = True, need_data: bool = True) -> Config:
    """Read a YAML config (or start from the defaults when `path` is None) and apply `key=value` overrides,
    then `validate` it (`check`; `need_data=False` accepts an empty data.manifest)."""

    cfg = Config()
    where = "config"
    if path is not None:
        path = Path(path)
        where = str(path)
        if not path.is_file():
            raise FileNotFoundError(f"config file {path} does not exist; see configs/train/ for examples")
        try:
            data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        except UnicodeDecodeError as e:
            raise ConfigError(f"{path} is not a UTF-8 text file ({e.reason} at byte {e.start}); give a YAML "
                              "config (see configs/train/)") from None
        except yaml.YAMLError as e:
            raise ConfigError(f"{path} is not valid YAML: {yaml_error_line(e)}") from None
        _fill(cfg, data, "", where)
    for override in overrides:
        apply_override(cfg, override)
    if check:
        validate(cfg, where if not overrides else f"{where} with overrides", need_data=need_data)
    return cfg


def config_from_dict(data: dict, *, where: str = "dict", check: bool = True) -> Config:
    """Build a Config from a nested mapping (e.g. the one stored in a checkpoint)."""
    cfg = Config()
    _fill(cfg, data, "", where)
    if check:
        validate(cfg, where)
    return cfg
