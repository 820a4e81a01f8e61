"""The bottom layer, torch-free: the names every layer agrees on, what a pipeline folder is (`PipelineInfo`,
read from its `vidiff.json`), and what one sampling request is (`SamplingSettings`), each checked once.

    names            cross-frame modes, attention backends, temporal positions, stage and sampler names
    SETTINGS         every user setting's type and range, in one table; `check_setting` is the one check
    PipelineInfo     vidiff.json as a typed, validated object (`read_info`), written back by `to_json`
    SamplingSettings one request's frames / size / steps / guidance / sampler / windows, filled from the folder's
                     defaults and checked against the model (`resolve_sampling`)

A request is checked where it enters (the CLI or the Python API) and the layers below trust what they get.
Errors are `SettingError`s (a ValueError) naming the Python field; the CLI spells the field as its flag with
the `flag` of the table (`SettingError.for_flags`), so a bad value reads the same from both doors.

Cross-frame modes say, for frame i of a clip, which frames its spatial self-attention takes keys and values from:

    "none"           frame i itself (the image model run frame by frame)
    "first"          frame 0                        (Text2Video-Zero, Khachatryan et al. 2023)
    "sparse-causal"  frame 0 and frame i - 1        (Tune-A-Video, Wu et al. 2023)

The mode is a per-call sampling setting, like the sampler: never part of a saved U-Net (a pipeline folder may
suggest one in its sampling defaults, as a Tune-A-Video tuned folder suggests "sparse-causal").
"""
from __future__ import annotations

import json
import math
import os
import re
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Callable

# ---------------------------------------------------------------------------------------------------------------
# Names, defined once
# ---------------------------------------------------------------------------------------------------------------
# mode -> the frames frame i reads keys/values from (frame 0 in "sparse-causal" reads itself twice: no change)
CROSS_FRAME_SOURCES: dict[str, Callable[[int], list[int]]] = {
    "none": lambda i: [i],
    "first": lambda i: [0],
    "sparse-causal": lambda i: [0, max(i - 1, 0)],
}
CROSS_FRAME_MODES: tuple[str, ...] = tuple(CROSS_FRAME_SOURCES)

# "auto" resolves per device (xformers on CUDA when it runs, else PyTorch SDPA); the kernels: vidiff.models.attention
ATTENTION_BACKENDS: tuple[str, ...] = ("auto", "sdpa", "xformers", "math")

# Where temporal attention adds its frame position encoding: "qk", to queries and keys (which frames attend to
# which; the values carry content only), or "qkv", to values too (AnimateDiff's motion modules: every frame's
# features also learn which frame they are, which lets a model place content by time, e.g. a direction of travel).
TEMPORAL_POSITIONS: tuple[str, ...] = ("qk", "qkv")

# How a VideoUNet's temporal layers are laid out: "vidiff" (a temporal conv after every resnet, a temporal attention
# after every spatial transformer) or "animatediff" (AnimateDiff's motion modules after every resnet / attention
# pair, the format of diffusers' MotionAdapter; vidiff.models.motion).
TEMPORAL_LAYOUTS: tuple[str, ...] = ("vidiff", "animatediff")

# Where a LoRA adapter goes (vidiff.adapters.lora): the spatial attention, the temporal layers, or both.
LORA_TARGETS = ("spatial", "temporal", "both")
# How a ControlNet's control images are made from a control video (vidiff.control.extractors): Canny edges, a dot
# on the moving object's track, a depth-map video's grey levels, or the frames as given (pose, edges, ...).
CONTROL_EXTRACTORS: tuple[str, ...] = ("canny", "track", "depth-map", "raw")
# What a U-Net's extra input channels hold ("base" has none); each stage's home is vidiff.stages.
CASCADE_STAGES: tuple[str, ...] = ("interpolation", "tsr", "ssr")
STAGE_NAMES: tuple[str, ...] = ("base", *CASCADE_STAGES)
# The stages that raise the frame rate (the others keep it): what `vidiff interpolate` accepts.
TEMPORAL_STAGES: tuple[str, ...] = ("interpolation", "tsr")

# Samplers by name (built by vidiff.pipelines.schedulers.make_scheduler); "lcm" is multi-step consistency sampling,
# for consistency-distilled students.
SCHEDULER_NAMES: tuple[str, ...] = ("ddim", "dpm-solver++", "euler", "euler-ancestral", "ddpm", "unipc", "lcm")

# How a student is distilled from its teacher (vidiff.training.distill) -> the sampler its steps were learnt for.
DISTILL_SAMPLERS: dict[str, str] = {"consistency": "lcm", "progressive": "ddim"}
DISTILL_METHODS: tuple[str, ...] = tuple(DISTILL_SAMPLERS)
# The "lcm" sampler's steps are a subset of a grid of this many DDIM timesteps (LCM's skipping step, T / 50) unless
# a consistency student records its own (`Distilled.teacher_steps`): it takes at most that many steps.
LCM_GRID = 50

# How the frames past the first temporal window start (FreeNoise, Qiu et al. 2023, reshuffles earlier noise).
LONG_VIDEO_NOISE: tuple[str, ...] = ("independent", "freenoise")
# How a cascade's base makes a clip longer than its window: its window of keyframes over the whole clip, filled in by
# the cascade's interpolation stage ("keyframes"), or temporal windows ("windows"); "auto": keyframes when it can.
LONG_VIDEO: tuple[str, ...] = ("auto", "keyframes", "windows")

# VideoUNet options that belong to one run on one machine, never written into a saved model's config.
RUNTIME_OPTIONS: tuple[str, ...] = ("attention_backend", "cross_frame")


class SettingError(ValueError):
    """A user setting out of range: `str(e)` names the Python field; `for_flags()` names the CLI flag."""

    def __init__(self, name: str, problem: str):
        super().__init__(f"{name} {problem}")
        self.name, self.problem = name, problem

    def for_flags(self, prefix: str = "--") -> str:
        """The message with the field spelled as its flag (`--steps must ...`); `prefix` replaces "--" (a
        cascade stage's setting: "stage 2 steps must ...")."""
        spec = SETTINGS.get(self.name)
        flag = spec.flag if spec is not None and spec.flag else "--" + self.name.replace("_", "-")
        return f"{prefix}{flag[2:]} {self.problem}"


def check_cross_frame(mode: str) -> str:
    """`mode` if it is a known cross-frame mode, else a ValueError listing the modes."""
    if mode not in CROSS_FRAME_SOURCES:
        raise ValueError(f"unknown cross_frame mode {mode!r}; choose one of {', '.join(CROSS_FRAME_MODES)}")
    return mode


def check_backend_name(name: str) -> str:
    """`name` if it is a known attention backend, else a ValueError listing them (availability is checked by
    vidiff.models.attention.check_backend, which needs torch)."""
    if name not in ATTENTION_BACKENDS:
        raise ValueError(f"unknown attention backend {name!r}; choose one of {', '.join(ATTENTION_BACKENDS)}")
    return name


def check_choice(name: str, value, choices) -> str:
    """`value` if it is one of `choices`, else a SettingError listing them."""
    if value not in choices:
        raise SettingError(name, f"must be one of {', '.join(map(str, choices))}, got {value!r}")
    return value


# ---------------------------------------------------------------------------------------------------------------
# Every user setting's range, in one table
# ---------------------------------------------------------------------------------------------------------------
MAX_FRAMES = 4096   # frames in one clip
MAX_SIDE = 4096     # pixels, height or width (beyond any SD-family model's training size and x264's level limits)
MAX_SEED = 2**63 - 1  # torch.Generator.manual_seed takes a 64-bit seed; video i uses seed + i


@dataclass(frozen=True)
class Setting:
    """One setting: integer or real, its closed range, a note for the message, and the CLI flag."""

    kind: type                 # int or float
    low: float
    high: float
    flag: str = ""             # the CLI's spelling (default: --name-with-dashes)
    note: str = ""             # shown after the range, e.g. "(1 = off)"


SETTINGS: dict[str, Setting] = {
    "num_frames": Setting(int, 1, MAX_FRAMES, "--num-frames"),
    "height": Setting(int, 1, MAX_SIDE, "--height", "pixels"),
    "width": Setting(int, 1, MAX_SIDE, "--width", "pixels"),
    "num_inference_steps": Setting(int, 1, 1000, "--steps"),
    # 7.5 is SD's usual scale; far beyond 30 only saturates
    "guidance_scale": Setting(float, 0, 100, "--guidance", "(1 = off)"),
    "eta": Setting(float, 0, 1, "--eta", "(0 = deterministic DDIM, 1 = DDPM-like)"),
    "window_size": Setting(int, 1, MAX_FRAMES, "--window-size"),
    "window_stride": Setting(int, 1, MAX_FRAMES, "--window-stride"),
    "decode_chunk_size": Setting(int, 1, MAX_FRAMES, "--decode-chunk-size"),
    # interpolate / upscale read, sample and write a longer input this many frames at a time
    "chunk_frames": Setting(int, 2, MAX_FRAMES, "--chunk-frames"),
    "num_videos_per_prompt": Setting(int, 1, 10_000, "--num-videos"),
    "seed": Setting(int, 0, MAX_SEED, "--seed"),
    "lora_scale": Setting(float, -10, 10, "--lora", "(the scale in FILE:SCALE; 0 = off, 1 = as trained)"),
    # diffusers' controlnet_conditioning_scale: the ControlNet's residuals are multiplied by it
    "control_scale": Setting(float, 0, 10, "--control-scale", "(0 = off, 1 = as trained)"),
    # mp4 stores rates as fractions of 1001
    "fps": Setting(float, 0.1, 1000, "--fps", "frames per second"),
    # SDEdit / editing: the share of the schedule the input is noised through (1 = start from pure noise)
    "strength": Setting(float, 0, 1, "--strength", "(0 keeps the input, 1 starts from pure noise)"),
    "noise_level": Setting(int, 0, 999, "--noise-level"),
    "factor": Setting(int, 2, 64, "--factor"),
    "context_frames": Setting(int, 1, MAX_FRAMES, "--context-frames"),
    "new_per_chunk": Setting(int, 1, MAX_FRAMES, "--new-frames-per-chunk"),
    "tune_steps": Setting(int, 1, 100_000, "--tune-steps"),
    "tune_learning_rate": Setting(float, 1e-12, 1.0, "--tune-lr"),
    # reading source clips (vidiff edit, vidiff data cache): every stride-th frame, from frame `start`
    "stride": Setting(int, 1, MAX_FRAMES, "--stride", "source frames"),
    "start": Setting(int, 0, 10**9, "--start", "(the first source frame)"),
    # datasets and batches (vidiff data, vidiff eval)
    "count": Setting(int, 1, 1_000_000, "--count", "clips"),
    "size": Setting(int, 8, MAX_SIDE, "--size", "pixels"),
    "batch_size": Setting(int, 1, 4096, "--batch-size", "clips"),
    "shard_size": Setting(int, 1, 1_000_000, "--shard-size", "clips"),
    "num_workers": Setting(int, 0, 256, "--num-workers", "(0 decodes in the main process)"),
    "limit": Setting(int, 1, 1_000_000, "--limit", "clips"),
    # vidiff extend: frames added after the clip (how large the result may be is `check_request_size`'s)
    "new_frames": Setting(int, 1, 1_000_000, "--frames", "new frames"),
    # vidiff app: where it listens, and the largest upload it takes
    "port": Setting(int, 1, 65535, "--port"),
    "max_upload_mb": Setting(float, 0.01, 1_000_000, "--max-upload-mb", "MB"),
}


def check_setting(name: str, value, low=None, high=None):
    """`value` of the setting `name` (None = unset, returned as is) if it has the setting's type and lies in its
    range (`low` / `high` narrow it, e.g. a model's own limit); a SettingError otherwise."""
    if value is None:
        return None
    spec = SETTINGS[name]
    low = spec.low if low is None else max(low, spec.low)
    high = spec.high if high is None else min(high, spec.high)
    if spec.kind is int:
        if isinstance(value, bool) or not (isinstance(value, int) or type(value).__name__.startswith("int")):
            raise SettingError(name, f"must be an integer, got {value!r}")
        value = int(value)
    elif isinstance(value, bool) or not isinstance(value, (int, float)) and not hasattr(value, "__float__"):
        raise SettingError(name, f"must be a number, got {value!r}")
    if not (math.isfinite(value) and low <= value <= high):
        note = f" {spec.note}" if spec.note else ""
        show = (lambda x: str(int(x))) if spec.kind is int else (lambda x: f"{x:g}")  # (:g writes 1e+06)
        raise SettingError(name, f"must be between {show(low)} and {show(high)}{note}, got {show(value)}")
    return value


# ---------------------------------------------------------------------------------------------------------------
# How large one request may be
# ---------------------------------------------------------------------------------------------------------------
# Past these a request runs for hours or dies late (a MemoryError once the models have loaded and sampled), so it
# is refused before anything loads unless it is asked for: `--allow-large` on every command that makes clips,
# `allow_large=True` in Python. No flag lifts a side beyond MAX_SIDE, or clips that would not fit in this
# machine's memory at all.
MAX_FRAME_PIXELS = 1024 * 1024  # height x width of one frame: SD-family models train at 512-1024 px, and
                                # attention's work grows with the square of a frame's pixels
MAX_CLIP_FRAMES = MAX_FRAMES    # frames of a clip read or made (a 10-minute clip is 18,000: hours of sampling)
MAX_REQUEST_BYTES = 8 * 2**30   # the clips a request holds in memory at once
BYTES_PER_PIXEL = 16            # a clip in memory: float32 RGB (12 bytes a pixel) + its uint8 frames (3) + latents


class RequestTooLarge(ValueError):
    """A request beyond the size limits (`check_request_size`): `str(e)` names the clip, the limit and the Python
    fix (`allow_large=True`), `for_flags()` the same with the CLI's (`--allow-large`) where a flag lifts it."""

    def __init__(self, message: str, liftable: bool = True):
        self.message, self.liftable = message, liftable
        super().__init__(f"{message}; pass allow_large=True to run it anyway" if liftable else message)

    def for_flags(self) -> str:
        return f"{self.message}; pass --allow-large to run it anyway" if self.liftable else self.message


def physical_memory() -> int | None:
    """This machine's memory in bytes (None where the OS does not say)."""
    try:
        return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (AttributeError, OSError, ValueError):
        return None


def check_request_size(clips, allow_large: bool = False, held: float = 1.0) -> int:
    """Refuse, before anything loads, a request whose clips are too large. `clips`: `(what, frames, height, width)`
    or `(what, frames, height, width, copies)` for every clip the request reads or makes and holds at once (the
    input, each stage's output, `copies` videos of a batch); `held`: the part of each held in memory at once (a
    clip streamed in chunks). A side beyond MAX_SIDE or more bytes than this machine's memory is always refused;
    more than MAX_CLIP_FRAMES frames, MAX_FRAME_PIXELS pixels a frame or MAX_REQUEST_BYTES in all unless
    `allow_large`. Returns the bytes estimated; RequestTooLarge otherwise."""
    total, parts = 0, []
    for what, frames, height, width, *copies in clips:
        count = copies[0] if copies else 1
        if max(height, width) > MAX_SIDE:
            raise RequestTooLarge(f"{what}: {width}x{height} pixels, beyond the {MAX_SIDE}-pixel limit of a side "
                                  "(the video encoders' and any SD-family model's range); make it smaller (its height "
                                  "and width, or a stage's factor)", liftable=False)
        if not allow_large and height * width > MAX_FRAME_PIXELS:
            raise RequestTooLarge(f"{what}: {frames} frames of {width}x{height} pixels, over the limit of "
                                  f"{MAX_FRAME_PIXELS:,} pixels a frame (1024x1024: attention's work grows with "
                                  f"the square of it)")
        if not allow_large and frames > MAX_CLIP_FRAMES:
            raise RequestTooLarge(f"{what}: {frames:,} frames, over the limit of {MAX_CLIP_FRAMES:,} frames a "
                                  "clip (its sampling runs for hours, and only interpolate / upscale stream a clip rather than hold it)")
        total += round(frames * held) * height * width * BYTES_PER_PIXEL * count
        parts.append(f"{what}: " + f"{count} x " * (count > 1) + f"{frames} frames of {width}x{height}")
    gib = total / 2**30
    memory = physical_memory()
    if memory is not None and total > memory:
        raise RequestTooLarge(f"this request would hold about {gib:,.1f} GiB of video ({', '.join(parts)}), more "
                              f"than this machine's {memory / 2**30:.1f} GiB of memory; make fewer or smaller clips",
                              liftable=False)
    if not allow_large and total > MAX_REQUEST_BYTES:
        raise RequestTooLarge(f"this request would hold about {gib:,.1f} GiB of video at once ({', '.join(parts)}), "
                              f"over the {MAX_REQUEST_BYTES / 2**30:g} GiB limit")
    return total


# ---------------------------------------------------------------------------------------------------------------
# The pipeline folder's description: vidiff.json
# ---------------------------------------------------------------------------------------------------------------
INFO_NAME = "vidiff.json"
KIND = "text-to-video"
REMAKE = "re-create the folder with `vidiff inflate`"


@dataclass(frozen=True)
class Defaults:
    """Sampling defaults of a pipeline folder: what a request leaves unset."""

    num_frames: int = 16                # frames per clip; also the temporal window the model was trained on
    height: int = 512                   # pixels (the base U-Net's trained size: sample_size x VAE factor)
    width: int = 512
    fps: float = 8                      # frame rate of written clips
    num_inference_steps: int = 25       # sampler steps
    guidance_scale: float = 7.5         # classifier-free guidance weight (1 = off)
    scheduler: str = "ddim"             # sampler name (SCHEDULER_NAMES)
    cross_frame: str = "none"           # suggested cross-frame mode (a Tune-A-Video tuned folder: sparse-causal)
    edit_strength: float | None = None  # `vidiff edit`: SDEdit strength (None: DDIM inversion)
    edit_guidance: float | None = None  # `vidiff edit`: guidance (None: guidance_scale)


@dataclass(frozen=True)
class Distilled:
    """vidiff.json's `distilled`: how a student folder was distilled, which its sampling follows."""

    method: str                         # DISTILL_METHODS: consistency (LCM) | progressive (Salimans & Ho 2022)
    steps: int                          # the sampling steps it was distilled for (its default steps)
    teacher_steps: int                  # progressive: the teacher's DDIM steps; consistency: the solver grid (LCM's 50)
    guidance_embedded: bool = False     # guidance distilled: the scale is an input, one U-Net pass per step
    teacher: str = ""                   # the teacher folder
    timesteps: tuple[int, ...] = ()     # progressive: the DDIM timesteps it was trained for
    strength: float = 1.0               # the schedule's last share it learnt (a cascade stage's student starts from
                                        # its input's estimate there by default, as `--strength`); 1: all of it

    @property
    def scheduler(self) -> str:
        return DISTILL_SAMPLERS[self.method]

    @classmethod
    def from_json(cls, data, where: str) -> "Distilled | None":
        if data is None:
            return None
        fix = "fix the value or distil the folder again"
        if not isinstance(data, dict) or data.get("method") not in DISTILL_METHODS:
            raise ValueError(f"{where}: distilled must be an object whose method is one of "
                             f"{', '.join(DISTILL_METHODS)}, got {data!r}; {fix}")
        unknown = set(data) - {f.name for f in fields(cls)}
        ints = [data.get(k) for k in ("steps", "teacher_steps")] + list(data.get("timesteps", []))
        if unknown or not all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in ints) \
                or min(data.get("steps", 0), data.get("teacher_steps", 0)) < 1 \
                or not isinstance(data.get("guidance_embedded", False), bool) \
                or not _is_share(data.get("strength", 1.0)):
            raise ValueError(f"{where}: distilled must hold method, steps and teacher_steps (integers >= 1), "
                             f"guidance_embedded (true / false), teacher, timesteps and strength (in (0, 1]), "
                             f"got {data!r}; {fix}")
        return cls(**{**data, "timesteps": tuple(data.get("timesteps", ()))})


def _is_share(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and 0 < value <= 1


@dataclass(frozen=True)
class PipelineInfo:
    """vidiff.json: what the folder's model is, and how to sample it by default. Read once (`read_info`)."""

    stage: str = "base"                 # STAGE_NAMES: what the U-Net's extra input channels hold
    latent: bool = True                 # a VAE (latent space) or pixel space
    in_channels: int = 4                # latent (or pixel) channels the U-Net denoises
    vae_scale_factor: int = 8           # pixels per latent, each side (1 in pixel space)
    scaling_factor: float = 0.18215     # the VAE latents' scale (SD 1.x)
    unet_spatial_factor: int = 8        # the U-Net's total downsampling
    prediction_type: str = "epsilon"    # epsilon | v_prediction (the noise schedule's)
    max_window: int | None = None       # most frames one U-Net call takes (AnimateDiff motion modules' table); None: any
    defaults: Defaults = field(default_factory=Defaults)
    stage_options: dict = field(default_factory=dict)   # the stage's own options (vidiff.stages checks them)
    conditioning: dict = field(default_factory=dict)    # text encoder class, max length, widths
    kind: str = KIND
    source: str | None = None           # what the folder was inflated from
    vidiff_version: str = ""
    extra: dict = field(default_factory=dict)           # other keys (e.g. `tuned_on`), kept as they are
    distilled: Distilled | None = None  # a student (vidiff.training.distill): its method and steps; None: not one

    @property
    def spatial_factor(self) -> int:
        """Pixel sizes must be multiples of this: the VAE's downsampling times the U-Net's."""
        return self.vae_scale_factor * self.unet_spatial_factor

    def with_defaults(self, **changes) -> "PipelineInfo":
        return replace(self, defaults=replace(self.defaults, **changes))

    def to_json(self) -> dict:
        data = asdict(self)
        extra = data.pop("extra")
        if data["distilled"] is None:  # (folders that are no student keep the keys they always had)
            del data["distilled"]
        else:
            data["distilled"]["timesteps"] = list(data["distilled"]["timesteps"])
        return {**data, **extra}

    @classmethod
    def from_json(cls, data: dict, where: str = INFO_NAME) -> "PipelineInfo":
        """Check and convert vidiff.json's content; ValueError naming the key and the fix."""
        if not isinstance(data, dict):
            raise ValueError(f"{where} must hold a JSON object; {REMAKE}")
        for key in ("kind", "stage", "defaults", "vae_scale_factor", "unet_spatial_factor"):
            if key not in data:
                raise ValueError(f"{where} lacks the key {key!r}; {REMAKE}")
        names = {f.name for f in fields(cls)} - {"extra"}
        info = cls(**{k: v for k, v in data.items() if k in names},
                   extra={k: v for k, v in data.items() if k not in names})
        return replace(info, defaults=_read_defaults(data["defaults"], where),
                       distilled=Distilled.from_json(data.get("distilled"), where)).checked(where)

    def checked(self, where: str = INFO_NAME) -> "PipelineInfo":
        if not isinstance(self.stage, str) or self.stage not in STAGE_NAMES:
            raise ValueError(f"unknown stage {self.stage!r} in {where} (fix it or {REMAKE}); use one of "
                             f"{', '.join(STAGE_NAMES)}")
        for name in ("in_channels", "vae_scale_factor", "unet_spatial_factor", "max_window"):
            value = getattr(self, name)
            if name == "max_window" and value is None:
                continue
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{where}: {name} must be an integer >= 1, got {value!r}; {REMAKE}")
        if not isinstance(self.stage_options, dict) or not isinstance(self.conditioning, dict):
            raise ValueError(f"{where}: stage_options and conditioning must be objects; {REMAKE}")
        if self.defaults.scheduler not in SCHEDULER_NAMES or self.defaults.cross_frame not in CROSS_FRAME_MODES:
            raise ValueError(f"{where}: defaults name an unknown scheduler {self.defaults.scheduler!r} or "
                             f"cross-frame mode {self.defaults.cross_frame!r}; fix the value or {REMAKE}")
        d = self.defaults
        if not ((d.edit_strength is None or 0 <= d.edit_strength <= 1) and (d.edit_guidance is None or d.edit_guidance >= 0)):
            raise ValueError(f"{where}: defaults.edit_strength must be in [0, 1] and edit_guidance >= 0 (or null), "
                             f"got {d.edit_strength!r} / {d.edit_guidance!r}; fix the value or {REMAKE}")
        return self


_DEFAULT_TYPES = {"num_frames": int, "height": int, "width": int, "num_inference_steps": int, "fps": (int, float),
                  "guidance_scale": (int, float), "scheduler": str, "cross_frame": str,
                  "edit_strength": (int, float), "edit_guidance": (int, float)}
_OPTIONAL_DEFAULTS = ("cross_frame", "edit_strength", "edit_guidance")


def _read_defaults(data, where: str) -> Defaults:
    if not isinstance(data, dict):
        raise ValueError(f"{where}: defaults must be an object, got {data!r}; {REMAKE}")
    missing = [key for key in _DEFAULT_TYPES if key not in data and key not in _OPTIONAL_DEFAULTS]
    if missing:
        raise ValueError(f"{where}: defaults lack {', '.join(missing)}; add them or {REMAKE}")
    for key, value in data.items():
        kind = _DEFAULT_TYPES.get(key)
        if kind is None or (value is None and key in _OPTIONAL_DEFAULTS):
            continue
        if not isinstance(value, kind) or isinstance(value, bool) or (
                isinstance(value, float) and not math.isfinite(value)):
            raise ValueError(f"{where}: defaults.{key} must be a finite {kind}, got {value!r}; fix the value or "
                             f"{REMAKE}")
    return Defaults(**{k: v for k, v in data.items() if k in _DEFAULT_TYPES})


def read_info(path: str | os.PathLike) -> PipelineInfo:
    """Read and check `path/vidiff.json`; FileNotFoundError / ValueError naming the problem and the fix."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"model folder {str(path)!r} does not exist (make one with "
                                f"`vidiff inflate --base SD_PIPELINE --out {path}`)")
    if not path.is_dir():
        raise NotADirectoryError(f"model {str(path)!r} is a file, not a vidiff pipeline folder (make one with "
                                 "`vidiff inflate --base SD_PIPELINE --out DIR`)")
    info_file = path / INFO_NAME
    if not info_file.is_file():
        hint = (" (it looks like a diffusers Stable Diffusion folder: inflate it first with "
                f"`vidiff inflate --base {path} --out DIR`)") if (path / "model_index.json").is_file() else ""
        raise FileNotFoundError(f"{str(path)!r} is not a vidiff pipeline folder: {INFO_NAME} is missing{hint}")
    info = PipelineInfo.from_json(read_json(info_file, REMAKE), str(info_file))
    if not (path / "unet" / "config.json").is_file():
        raise FileNotFoundError(f"{path} has no unet/config.json: the pipeline folder is incomplete")
    return info


def read_json(file: str | os.PathLike, fix: str, error: type[Exception] = ValueError):
    """The JSON content of `file`; otherwise `error` (a one-line message naming the file, the problem and `fix`):
    the one JSON reader with a readable error (vidiff.models.weights raises its LoadingError through it)."""
    try:
        return json.loads(Path(file).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise error(f"{file} is not a readable JSON file ({type(e).__name__}: {' '.join(str(e).split())[:200]}"
                    f"); {fix}") from None


# The noise schedule's keys vidiff and diffusers' samplers act on, with what each may hold. The file is data like
# any other: a string that is no known name, a NaN beta or 10^12 training steps (a 4 TB alphas table) must be an
# error naming the file here, not a traceback inside diffusers or a silently blank clip.
MAX_TRAIN_TIMESTEPS = 100_000   # SD trains on 1000; diffusers allocates tables of this length
BETA_SCHEDULES = ("linear", "scaled_linear", "squaredcos_cap_v2")   # what every sampler of SCHEDULER_NAMES takes
PREDICTION_TYPES = ("epsilon", "v_prediction", "sample")
TIMESTEP_SPACINGS = ("leading", "linspace", "trailing")
VARIANCE_TYPES = ("fixed_small", "fixed_small_log", "fixed_large", "fixed_large_log", "learned", "learned_range")
_SCHEDULE_NUMBERS = {  # key -> (kind, low, high, open at low: low < value)
    "num_train_timesteps": (int, 1, MAX_TRAIN_TIMESTEPS, False),
    "steps_offset": (int, 0, MAX_TRAIN_TIMESTEPS, False),
    "beta_start": (float, 0.0, 1.0, True),
    "beta_end": (float, 0.0, 1.0, True),
    "clip_sample_range": (float, 0.0, 1e6, True),
    "sample_max_value": (float, 0.0, 1e6, True),
    "dynamic_thresholding_ratio": (float, 0.0, 1.0, True),
}
_SCHEDULE_NAMES = {"beta_schedule": BETA_SCHEDULES, "prediction_type": PREDICTION_TYPES,
                   "timestep_spacing": TIMESTEP_SPACINGS, "variance_type": (*VARIANCE_TYPES, None),
                   # the other samplers' own names (a folder may keep a DPM-Solver or Euler config)
                   "algorithm_type": ("dpmsolver", "dpmsolver++", "sde-dpmsolver", "sde-dpmsolver++"),
                   "solver_type": ("midpoint", "heun", "bh1", "bh2"), "interpolation_type": ("linear", "log_linear"),
                   "timestep_type": ("discrete", "continuous"), "final_sigmas_type": ("zero", "sigma_min")}
_SCHEDULE_FLAGS = ("clip_sample", "set_alpha_to_one", "thresholding", "rescale_betas_zero_snr", "skip_prk_steps",
                   "use_karras_sigmas", "use_exponential_sigmas", "use_beta_sigmas", "lower_order_final",
                   "euler_at_final", "predict_x0")


def read_scheduler_config(folder: str | os.PathLike) -> dict:
    """The noise schedule of a pipeline: the diffusers scheduler config `folder/scheduler_config.json`, checked
    (`check_scheduler_config`); FileNotFoundError / ValueError naming the file, the key and the fix."""
    file = Path(folder) / "scheduler_config.json"
    if not file.is_file():
        raise FileNotFoundError(f"{folder} has no scheduler_config.json")
    config = read_json(file, "the folder is damaged: re-create it")
    return check_scheduler_config(config, str(file))


def check_scheduler_config(config, where: str = "scheduler_config.json") -> dict:
    """`config` if it is a noise schedule every sampler can build: the known keys with their types, ranges and
    names (finite numbers; `trained_betas` null or one beta in (0, 1) per training step; steps_offset below the
    training steps), any other value plain JSON without NaN or infinity. ValueError naming `where` and the key."""
    fix = "fix the value, or re-create the folder"
    if not isinstance(config, dict):
        raise ValueError(f"{where} holds a JSON {type(config).__name__}, not a scheduler config object; {fix}")
    for key, value in config.items():
        problem = _schedule_value_problem(key, value)
        if problem:
            raise ValueError(f"{where}: {key} {problem}, got {json.dumps(value)[:80]}; {fix}")
    steps = config.get("num_train_timesteps", 1000)
    if int(config.get("steps_offset") or 0) >= steps - 1:
        raise ValueError(f"{where}: steps_offset must be at most num_train_timesteps - 2 ({steps - 2}) to leave a "
                         f"step to sample, got {config['steps_offset']}; {fix}")
    betas = config.get("trained_betas")
    if betas is not None and len(betas) != steps:
        raise ValueError(f"{where}: trained_betas holds {len(betas)} betas for {steps} training steps; {fix}")
    return config


def _schedule_value_problem(key: str, value) -> str | None:
    """What is wrong with one value of a scheduler config ("must be ..."), or None."""
    if key in _SCHEDULE_NUMBERS:
        kind, low, high, open_low = _SCHEDULE_NUMBERS[key]
        number = isinstance(value, (int, float)) and not isinstance(value, bool) and (
            kind is float or isinstance(value, int))
        if not (number and math.isfinite(value) and (low < value if open_low else low <= value) and value <= high):
            what = "an integer" if kind is int else "a number"
            return f"must be {what} in {'(' if open_low else '['}{low:g}, {high:g}]"
    elif key in _SCHEDULE_NAMES:
        if not (isinstance(value, str) or value is None) or value not in _SCHEDULE_NAMES[key]:
            return f"must be one of {', '.join(json.dumps(name) for name in _SCHEDULE_NAMES[key])}"
    elif key in _SCHEDULE_FLAGS:
        if not isinstance(value, bool):
            return "must be true or false"
    elif key == "trained_betas":
        if value is not None and not (isinstance(value, list) and all(
                isinstance(b, (int, float)) and not isinstance(b, bool) and 0 < b < 1 for b in value)):
            return "must be null or a list of betas in (0, 1)"
    elif not _plain_json(value):
        return "must be plain JSON (finite numbers, strings, true / false, null, lists, objects)"
    return None


def _plain_json(value, depth: int = 0) -> bool:
    if isinstance(value, float):
        return math.isfinite(value)
    if isinstance(value, (str, int, bool)) or value is None:
        return True
    if isinstance(value, list) and depth < 8:
        return all(_plain_json(v, depth + 1) for v in value)
    if isinstance(value, dict) and depth < 8:
        return all(isinstance(k, str) and _plain_json(v, depth + 1) for k, v in value.items())
    return False


def max_inference_steps(config: dict) -> int:
    """The most sampling steps every sampler handles on this noise schedule: training steps - steps_offset - 1
    (998 for SD). Beyond it diffusers' samplers step past the schedule's end: 1000 DDIM steps on SD index
    timestep 1000 (IndexError); 999 DPM-Solver++ / UniPC steps start at timestep 1000 (NaN)."""
    return int(config.get("num_train_timesteps", 1000)) - int(config.get("steps_offset", 0) or 0) - 1


# ---------------------------------------------------------------------------------------------------------------
# One sampling request
# ---------------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class SamplingSettings:
    """Every setting of one sampling call, filled and checked (`resolve_sampling`); the layers below trust it."""

    num_frames: int
    height: int                         # pixels
    width: int
    num_inference_steps: int
    guidance_scale: float               # classifier-free guidance runs when > 1 (`guided`)
    scheduler: str
    cross_frame: str
    window_size: int                    # temporal windows of long clips (the trained length by default)
    window_stride: int
    eta: float = 0.0                    # DDIM's noise (0 = deterministic)
    long_video_noise: str = "independent"
    decode_chunk_size: int | None = 8   # frames per VAE decoder call; None = all at once
    num_videos_per_prompt: int = 1
    guidance_distilled: bool = False    # the model takes the scale as an input: one U-Net pass per step, not two
    strength: float = 1.0               # a cascade stage starts from its input's plain estimate (the clip
                                        # upsampled, in-betweens blended, the last frame held) noised this far
                                        # up the schedule and runs that part of it (SDEdit; 1: pure noise)

    @property
    def guided(self) -> bool:
        return guidance_on(self.guidance_scale)

    @property
    def steps_run(self) -> int:
        """The sampler steps that run: the last `strength` share of `num_inference_steps`, at least one
        (`timesteps_for_strength`)."""
        return steps_for_strength(self.num_inference_steps, self.strength)

    @property
    def unet_evaluations(self) -> int:
        """U-Net passes per clip (one temporal window): steps run x 2 under two-pass classifier-free guidance."""
        return self.steps_run * (2 if self.guided and not self.guidance_distilled else 1)

    def as_dict(self) -> dict:
        return asdict(self)


def steps_for_strength(steps: int, strength: float) -> int:
    """How many of `steps` sampler steps a run at `strength` takes: the last `strength` share, at least one (the
    one rule for sampling, the sidecars' evaluation counts and a stage student's training grid)."""
    return min(steps, max(1, round(steps * strength)))


def guidance_on(guidance_scale: float) -> bool:
    """Classifier-free guidance (Ho & Salimans 2022) runs: a scale of 1 or less is the conditional model alone
    (the one place that decides it)."""
    return guidance_scale > 1.0


def resolve_sampling(info: PipelineInfo, *, max_steps: int | None = None, num_frames=None, height=None, width=None,
                     num_inference_steps=None, guidance_scale=None, scheduler=None, cross_frame=None,
                     window_size=None, window_stride=None, eta=0.0, long_video_noise="independent",
                     decode_chunk_size=8, num_videos_per_prompt=1, strength=None) -> SamplingSettings:
    """The settings of one call: None takes the folder's default; every value is checked once, here (its range
    in SETTINGS, then the model's own limits: size multiples, the noise schedule's steps, windows that cover
    the clip). `max_steps` is `max_inference_steps` of the folder's noise schedule, when known."""
    d = info.defaults
    take = lambda value, default: default if value is None else value  # noqa: E731
    if take(scheduler, d.scheduler) == "lcm":  # (its steps are a subset of the consistency grid)
        grid = info.distilled.teacher_steps if info.distilled and info.distilled.method == "consistency" else LCM_GRID
        max_steps = grid if max_steps is None else min(max_steps, grid)
    frames = check_setting("num_frames", take(num_frames, d.num_frames))
    s = dict(num_frames=frames, height=check_setting("height", take(height, d.height)),
             width=check_setting("width", take(width, d.width)),
             num_inference_steps=check_setting("num_inference_steps", take(num_inference_steps,
                                                                           d.num_inference_steps), high=max_steps),
             guidance_scale=float(check_setting("guidance_scale", take(guidance_scale, d.guidance_scale))),
             scheduler=check_choice("scheduler", take(scheduler, d.scheduler), SCHEDULER_NAMES),
             cross_frame=check_choice("cross_frame", take(cross_frame, d.cross_frame), CROSS_FRAME_MODES),
             eta=float(check_setting("eta", eta)),
             long_video_noise=check_choice("long_video_noise", long_video_noise, LONG_VIDEO_NOISE),
             decode_chunk_size=check_setting("decode_chunk_size", decode_chunk_size),
             num_videos_per_prompt=check_setting("num_videos_per_prompt", num_videos_per_prompt))
    for key in ("height", "width"):
        if s[key] % info.spatial_factor:
            raise SettingError(key, f"must be a positive multiple of {info.spatial_factor} for this model (VAE "
                                    f"factor {info.vae_scale_factor} x U-Net factor {info.unet_spatial_factor}), "
                                    f"got {s[key]}")
    # Long clips: windows of the trained length, overlapping by half (FreeNoise uses a quarter: smoother,
    # twice the U-Net calls).
    size = check_setting("window_size", take(window_size, min(d.num_frames, info.max_window or d.num_frames)))
    if info.max_window is not None and size > info.max_window:
        raise SettingError("window_size", f"must be at most {info.max_window} for this model (its motion modules' "
                                          f"frame positions), got {size}: longer clips are sampled in windows")
    stride = check_setting("window_stride", take(window_stride, max(1, size // 2)))
    if stride > size:
        raise SettingError("window_stride", f"must not exceed the window size ({size}), got {stride}: windows would "
                                            "leave frames uncovered")
    if strength is None:  # a stage's student distilled for a share of the schedule starts there
        strength = info.distilled.strength if info.distilled is not None else 1.0
    strength = float(check_setting("strength", strength))
    if strength == 0:
        raise SettingError("strength", "must be above 0 when sampling (1 starts from pure noise), got 0")
    distilled = info.distilled is not None and info.distilled.guidance_embedded
    return SamplingSettings(window_size=size, window_stride=stride, guidance_distilled=distilled, strength=strength,
                            **s)


# ---------------------------------------------------------------------------------------------------------------
# Hub ids
# ---------------------------------------------------------------------------------------------------------------
# A Hugging Face Hub repo id: "owner/name", each part of letters, digits, "-", "_", "." (not at either end, no
# "--" or ".."), at most 96 characters (the hub's own rules, huggingface_hub.utils.validate_repo_id).
_HUB_PART = r"(?!.*(--|\.\.))[A-Za-z0-9](?:[\w.-]*[A-Za-z0-9_])?"
# Names that end like a file are paths the user mistyped, not repos (a repo's name never needs such an ending).
_FILE_ENDINGS = (".safetensors", ".bin", ".ckpt", ".pt", ".pth", ".json", ".yaml", ".yml", ".txt", ".csv", ".jsonl",
                 ".mp4", ".gif")


def is_hub_id(text: str | os.PathLike) -> bool:
    """True when `text` has the form of a Hugging Face Hub repo id, `owner/name` (e.g.
    `stable-diffusion-v1-5/stable-diffusion-v1-5`). The one test every loader uses to tell an id from a path:
    callers look for a local path first and treat a missing path that is no hub id as a typo (no download)."""
    if not isinstance(text, str):
        return False  # a Path object is always meant as a path
    parts = text.split("/")
    return (len(parts) == 2 and len(text) <= 96 and not text.lower().endswith(_FILE_ENDINGS)
            and all(re.fullmatch(_HUB_PART, part, flags=re.ASCII) for part in parts))


# ---------------------------------------------------------------------------------------------------------------
# Prompt travel: prompts at keyframes
# ---------------------------------------------------------------------------------------------------------------
_KEYFRAME = re.compile(r"\s*(\d+)\s*:\s*(.*)", re.S)


@dataclass(frozen=True)
class PromptSchedule:
    """Prompts at keyframes (AnimateDiff's "prompt travel"): frame k takes the text embedding of the keyframes
    around it, interpolated linearly (frames before the first keyframe take the first prompt, after the last the
    last). Two adjacent keyframes (7: red, 8: blue) make a sharp change."""

    keyframes: tuple[tuple[int, str], ...]   # (frame, prompt), frames increasing

    def __post_init__(self):
        frames = [frame for frame, _ in self.keyframes]
        if not frames:
            raise ValueError("a prompt schedule needs at least one keyframe")
        if frames != sorted(set(frames)) or frames[0] < 0:
            raise ValueError(f"prompt keyframes must be distinct frames >= 0, got {frames}")
        if any(not text.strip() for _, text in self.keyframes):
            raise ValueError("every prompt keyframe needs a prompt after 'N:'")

    @property
    def prompts(self) -> list[str]:
        return [text for _, text in self.keyframes]

    def check_frames(self, num_frames: int) -> None:
        last = self.keyframes[-1][0]
        if last >= num_frames:
            raise SettingError("num_frames", f"must exceed the last prompt keyframe ({last}), got {num_frames}")

    def scaled(self, factor: float) -> "PromptSchedule":
        """The schedule on a timeline `factor` times as dense (frame f -> f * factor; frames may become
        fractional): a cascade's keyframes and its interpolated frames keep each change at the same moment."""
        return PromptSchedule(tuple((frame * factor, text) for frame, text in self.keyframes))

    def __str__(self) -> str:
        return "; ".join(f"{frame:g}: {text}" for frame, text in self.keyframes)


def is_keyframe_prompt(text: str) -> bool:
    """'8: a blue circle' (a prompt at a frame), not 'a blue circle'."""
    return isinstance(text, str) and _KEYFRAME.fullmatch(text) is not None


def parse_prompt_schedule(items) -> PromptSchedule:
    """A PromptSchedule from 'N: prompt' strings (in any order) or a {frame: prompt} mapping (a YAML / JSON
    schedule's content); ValueError naming the bad entry."""
    if isinstance(items, dict):
        pairs = []
        for frame, text in items.items():
            if not (isinstance(frame, int) or (isinstance(frame, str) and frame.strip().isdigit())) \
                    or isinstance(frame, bool) or not isinstance(text, str):
                raise ValueError(f"a prompt schedule maps frame numbers to prompts, got {frame!r}: {text!r}")
            pairs.append((int(frame), text.strip()))
    else:
        pairs = []
        for item in items:
            match = _KEYFRAME.fullmatch(item) if isinstance(item, str) else None
            if match is None:
                raise ValueError(f"prompt keyframe {item!r} is not 'FRAME: prompt' (e.g. '8: a blue circle')")
            pairs.append((int(match.group(1)), match.group(2).strip()))
    frames = [frame for frame, _ in pairs]
    if len(set(frames)) != len(frames):
        raise ValueError(f"prompt keyframes name a frame twice: {sorted(frames)}")
    return PromptSchedule(tuple(sorted(pairs)))
