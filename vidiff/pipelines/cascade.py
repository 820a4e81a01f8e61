"""CascadePipeline: a base text-to-video model, then interpolation / TSR / SSR stages (public: `vidiff.CascadePipeline`).

As in Make-A-Video and Imagen Video, the base model makes a short low-resolution clip and each later stage
raises its frame rate or its resolution. Every stage is a VideoPipeline whose U-Net takes a condition
concatenated to the noisy latents (vidiff.training.stages builds it the same way for training), sampled by the
shared `VideoPipeline` loop (`denoise`, with temporal windows for clips longer than the stage's window):

    interpolation  n keyframes -> (n - 1) k + 1 frames; the keyframes come out exactly as given
    (extension)    the same model with a "known past" mask: a clip grows by chunks of its window
    tsr            n frames -> n k frames (the low-frame-rate video repeated in time is the condition)
    ssr            h x w -> kh x kw (the upsampled low-res video, noise-augmented to `noise_level`, plus the level)

A cascade is a YAML file (or a folder holding `cascade.yaml` beside the stage folders, usable as `--model`):

    stages:
      - model: base            # a text-to-video pipeline folder; relative to the YAML's folder (else the cwd)
        steps: 25              # each stage: steps, guidance, scheduler (unset: the folder's defaults)
        guidance: 7.5
      - model: interpolation
        factor: 2              # interpolation / tsr: the frame-rate factor (default: the stage's first)
        guidance: 1.0
      - model: ssr
        noise_level: 20        # ssr: the condition's augmentation level (default: the stage's, 20)

References: Singer et al. 2022 (Make-A-Video); Ho et al. 2022 (Imagen Video; Cascaded Diffusion Models);
Voleti et al. 2022 (MCVD); Saharia et al. 2022 (Imagen).
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from vidiff.spec import TEMPORAL_STAGES
from vidiff.pipelines.folder import read_info, spatial_factor
from vidiff.pipelines.schedulers import check_scheduler_name
from vidiff.pipelines.text_to_video import as_video

CASCADE_FILE = "cascade.yaml"
STAGE_KEYS = ("model", "steps", "guidance", "scheduler", "noise_level", "factor")


# ---------------------------------------------------------------------------------------------------------------
# What a stage can do (torch-free checks on vidiff.json: the CLI runs them before loading anything)
# ---------------------------------------------------------------------------------------------------------------
def stage_name(info: dict) -> str:
    return info.get("stage", "base")


def stage_factors(info: dict) -> list[int]:
    """The frame-rate (interpolation, tsr) or size (ssr) factors a stage supports."""
    options = info.get("stage_options") or {}
    if stage_name(info) == "interpolation":
        return [int(k) for k in options.get("mask_factors", [])]
    return [int(options["factor"])] if "factor" in options else []


def check_factor(info: dict, factor: int | None, where: str) -> int:
    """`factor` if the stage supports it (None: its first); ValueError naming the supported ones."""
    supported = stage_factors(info)
    if not supported:
        raise ValueError(f"{where} is a {stage_name(info)!r} model without stage_options in its vidiff.json; "
                         "make the stage with `vidiff inflate --stage ...` or `vidiff train`")
    if factor is None:
        return supported[0]
    if isinstance(factor, bool) or not isinstance(factor, int) or factor not in supported:
        raise ValueError(f"factor {factor!r} is not supported by {where} (a {stage_name(info)} stage trained for "
                         f"x{', x'.join(map(str, supported))}); use one of those")
    return factor


def check_noise_level(info: dict, noise_level, where: str) -> int:
    """The SSR condition's augmentation level: `noise_level` (None: the stage's default), within training's."""
    options = info.get("stage_options") or {}
    if noise_level is None:
        noise_level = options.get("noise_level", 20)
    highest = int(options.get("max_noise_level", 350))
    if isinstance(noise_level, bool) or not isinstance(noise_level, int) or not 0 <= noise_level <= highest:
        raise ValueError(f"noise level must be an integer in [0, {highest}] for {where} (the levels it was "
                         f"trained on), got {noise_level!r}")
    return noise_level


def stage_output_size(info: dict, size: tuple[int, int, int], *, factor: int | None = None,
                      where: str = "the stage") -> tuple[int, int, int]:
    """(frames, height, width) a stage makes from an input of `size`; ValueError when the input does not fit."""
    stage, (frames, height, width) = stage_name(info), size
    k = check_factor(info, factor, where)
    if stage in TEMPORAL_STAGES:
        check_pixels(info, height, width, where)
        if stage == "interpolation" and frames < 2:
            raise ValueError(f"interpolation needs at least 2 frames (keyframes), got {frames}")
        return ((frames - 1) * k + 1 if stage == "interpolation" else frames * k), height, width
    if stage == "ssr":
        check_pixels(info, height * k, width * k, where, what=f"the x{k} output")
        if info["stage_options"].get("condition") == "pixels":  # x4 upscaler: low-res pixels at the latent size
            unet_factor = int(info["unet_spatial_factor"])
            if height % unet_factor or width % unet_factor:
                raise ValueError(f"{where} needs input sizes that are multiples of {unet_factor}, got "
                                 f"{height}x{width}")
        return frames, height * k, width * k
    raise ValueError(f"{where} is a {stage!r} model, not a cascade stage (interpolation, tsr or ssr)")


def check_pixels(info: dict, height: int, width: int, where: str, what: str = "the input") -> None:
    factor = spatial_factor(info)
    if height % factor or width % factor or height < factor or width < factor:
        raise ValueError(f"{what} is {height}x{width} pixels, but {where} needs multiples of {factor} "
                         "(VAE factor x U-Net factor); resize or crop the video")


# ---------------------------------------------------------------------------------------------------------------
# Cascade files
# ---------------------------------------------------------------------------------------------------------------
@dataclass
class StageSpec:
    """One entry of a cascade YAML, checked against its model folder."""
    model: Path                    # pipeline folder
    info: dict                     # its vidiff.json
    steps: int | None = None       # sampling steps (None: the folder's default)
    guidance: float | None = None  # classifier-free guidance scale (None: the folder's default)
    scheduler: str | None = None   # sampler name (None: the folder's default)
    noise_level: int | None = None  # ssr: the condition's augmentation level
    factor: int | None = None      # interpolation / tsr: the frame-rate factor
    extra: dict = field(default_factory=dict)

    @property
    def stage(self) -> str:
        return stage_name(self.info)


def is_cascade(path) -> bool:
    """A cascade YAML file, or a folder holding `cascade.yaml`."""
    path = Path(path)
    return (path.is_file() and path.suffix.lower() in (".yaml", ".yml")) or (path / CASCADE_FILE).is_file()


def read_cascade(path) -> list[StageSpec]:
    """Read and check a cascade (YAML file or folder with cascade.yaml): every model folder exists and is a
    vidiff pipeline, the first is a base model and the rest are stages, and the settings have the right types.
    ValueError / FileNotFoundError name the file, stage and fix. Stages need not share the base's text encoder:
    each folder is self-contained and every stage encodes the prompt with its own (a base trained together
    with its text model still works with stages made from the original one)."""
    import yaml

    path = Path(path)
    file = path / CASCADE_FILE if path.is_dir() else path
    if not file.is_file():
        raise FileNotFoundError(f"cascade {str(path)!r} does not exist (give a cascade YAML such as "
                                f"configs/cascade/NAME.yaml, or a folder holding {CASCADE_FILE})")
    try:
        data = yaml.safe_load(file.read_text())
    except yaml.YAMLError as e:
        raise ValueError(f"{file} is not valid YAML: {' '.join(str(e).split())}") from None
    if not isinstance(data, dict) or set(data) != {"stages"} or not isinstance(data["stages"], list) \
            or len(data["stages"]) < 1:
        raise ValueError(f"{file} must hold one key, `stages:`, a list of stages (the base model first), each "
                         "with `model:`; see configs/cascade/")
    specs = [_read_stage(file, i, entry) for i, entry in enumerate(data["stages"])]
    if specs[0].stage != "base":
        raise ValueError(f"{file}: the first stage must be a text-to-video base model, but {specs[0].model} is "
                         f"a {specs[0].stage!r} stage")
    for i, spec in enumerate(specs[1:], 1):
        if spec.stage == "base":
            raise ValueError(f"{file}: stage {i} ({spec.model}) is a base model; later stages must be "
                             "interpolation, tsr or ssr stages")
        check_factor(spec.info, spec.factor, f"{file} stage {i} ({spec.model})")
        if spec.stage == "ssr":
            check_noise_level(spec.info, spec.noise_level, f"{file} stage {i} ({spec.model})")
    return specs


def _read_stage(file: Path, index: int, entry) -> StageSpec:
    where = f"{file} stage {index}"
    if not isinstance(entry, dict) or "model" not in entry:
        raise ValueError(f"{where}: expected a mapping with `model:` (a pipeline folder), got {entry!r}")
    unknown = sorted(set(entry) - set(STAGE_KEYS))
    if unknown:
        raise ValueError(f"{where}: unknown key(s) {', '.join(unknown)}; known: {', '.join(STAGE_KEYS)}")
    model = _resolve_model(file, str(entry["model"]), where)
    info = read_info(model)
    types = {"steps": int, "guidance": (int, float), "scheduler": str, "noise_level": int, "factor": int}
    for key, kind in types.items():
        value = entry.get(key)
        if value is not None and (isinstance(value, bool) or not isinstance(value, kind)):
            raise ValueError(f"{where}: {key} must be {getattr(kind, '__name__', 'a number')}, got {value!r}")
    if entry.get("steps") is not None and entry["steps"] < 1:
        raise ValueError(f"{where}: steps must be >= 1, got {entry['steps']}")
    if entry.get("guidance") is not None and not (math.isfinite(entry["guidance"]) and entry["guidance"] >= 0):
        raise ValueError(f"{where}: guidance must be a finite number >= 0, got {entry['guidance']}")
    if entry.get("scheduler") is not None:
        check_scheduler_name(entry["scheduler"])
    stage = stage_name(info)
    for key, users in (("noise_level", ("ssr",)), ("factor", TEMPORAL_STAGES)):
        if entry.get(key) is not None and stage not in users:
            raise ValueError(f"{where}: {key} applies to {' / '.join(users)} stages, but {model} is a {stage!r} "
                             "model; remove it")
    return StageSpec(model=model, info=info, steps=entry.get("steps"), guidance=entry.get("guidance"),
                     scheduler=entry.get("scheduler"), noise_level=entry.get("noise_level"),
                     factor=entry.get("factor"))


def _resolve_model(file: Path, text: str, where: str) -> Path:
    """A relative model path is taken from the YAML's folder (a cascade folder), else from the current directory."""
    path = Path(text).expanduser()
    if path.is_absolute():
        candidates = [path]
    else:
        candidates = [file.parent / path, Path.cwd() / path]
    for candidate in candidates:
        if candidate.exists():
            return candidate
    raise FileNotFoundError(f"{where}: model {text!r} does not exist (looked in "
                            f"{' and '.join(str(c.parent) for c in candidates)}); train or inflate it first, or "
                            "fix the path")


def plan_cascade(specs: list[StageSpec], num_frames: int, height: int, width: int) -> list[tuple[int, int, int]]:
    """(frames, height, width) after the base and after each stage; ValueError when a stage does not fit."""
    sizes = [(num_frames, height, width)]
    for i, spec in enumerate(specs[1:], 1):
        sizes.append(stage_output_size(spec.info, sizes[-1], factor=spec.factor, where=f"stage {i} ({spec.model})"))
    return sizes


# ---------------------------------------------------------------------------------------------------------------
# Running one stage on a video
# ---------------------------------------------------------------------------------------------------------------
def _prompts(prompt, count: int) -> list[str]:
    prompts = [prompt] * count if isinstance(prompt, str) else list(prompt)
    if len(prompts) != count or not all(isinstance(p, str) for p in prompts):
        raise ValueError(f"give one prompt, or one per video ({count}), got {prompt!r}")
    return prompts


def _sample(pipe, prompts, condition, size, settings: dict, generators, **extra) -> torch.Tensor:
    """The stage's U-Net sampled through the shared loop: final latents `(b, c, f, h, w)`."""
    frames, height, width = size
    return pipe(prompts, num_frames=frames, height=height, width=width, condition=condition,
                num_inference_steps=settings.get("steps"), guidance_scale=settings.get("guidance"),
                scheduler=settings.get("scheduler"), negative_prompt=settings.get("negative_prompt"),
                generator=generators, progress=settings.get("progress", True), output_type="latent", **extra)


@torch.no_grad()
def interpolate_video(pipe, video, prompt, *, factor: int | None = None, generator=None, seed: int | None = None,
                      **settings) -> torch.Tensor:
    """Raise the frame rate of `video` (`(b, 3, n, h, w)` in [-1, 1], or uint8 `(n, h, w, 3)`) by `factor` with
    an interpolation stage ((n - 1) k + 1 frames, keyframe i at frame i k, copied exactly from the input) or a
    TSR stage (n k frames). `settings`: steps, guidance, scheduler, negative_prompt, progress.
    Returns `(b, 3, frames, h, w)` in [-1, 1]."""
    from vidiff.pipelines.text_to_video import make_generators
    from vidiff.training.stages import keyframe_mask, masked_video_condition, repeat_frames

    video = as_video(video, pipe.device)
    b, _, n, h, w = video.shape
    stage = stage_name(pipe.info)
    if stage not in TEMPORAL_STAGES:
        raise ValueError(f"this model is a {stage!r} model; frame interpolation needs an interpolation or tsr stage")
    k = check_factor(pipe.info, factor, "this model")
    frames = stage_output_size(pipe.info, (n, h, w), factor=k, where="this model")[0]
    generators = make_generators(b, generator, seed)
    known = pipe.encode_video(video)                                                         # (b, c, n, h', w')
    window = int(pipe.defaults["num_frames"])
    if stage == "interpolation":
        placed = known.new_zeros(b, known.shape[1], frames, *known.shape[3:])
        placed[:, :, ::k] = known
        condition = masked_video_condition(placed, keyframe_mask(frames, k)[None].expand(b, frames))
        stride = max(1, window // 2)
    else:  # TSR: windows start at multiples of k, where the repeated groups start (as in training)
        condition = repeat_frames(known, k)
        stride = k * max(1, window // (2 * k))
    latents = _sample(pipe, _prompts(prompt, b), condition, (frames, h, w), settings, generators,
                      window_size=min(window, frames), window_stride=min(stride, window))
    if stage == "interpolation":
        latents[:, :, ::k] = known  # the keyframes are given, not generated
    out = pipe.decode(latents)
    if stage == "interpolation":
        out[:, :, ::k] = video.to(out.device, out.dtype)  # exactly the input frames, not their VAE round trip
    return out


@torch.no_grad()
def extend_video(pipe, video, prompt, *, num_frames: int, context_frames: int | None = None, generator=None,
                 seed: int | None = None, **settings) -> torch.Tensor:
    """Extend `video` by `num_frames` new frames with an interpolation stage trained with future-prediction
    masks: chunk by chunk, the last `context_frames` frames (default: half the stage's window) are the known
    past and the rest of the window is generated. The input frames come out exactly as given.
    Returns `(b, 3, n + num_frames, h, w)` in [-1, 1]."""
    from vidiff.pipelines.text_to_video import make_generators
    from vidiff.training.stages import masked_video_condition, prefix_mask

    video = as_video(video, pipe.device)
    b, _, n, h, w = video.shape
    window = int(pipe.defaults["num_frames"])
    context = check_extension(pipe.info, n, num_frames, context_frames)
    check_pixels(pipe.info, h, w, "this model")
    generators = make_generators(b, generator, seed)
    prompts = _prompts(prompt, b)
    latents = pipe.encode_video(video)
    made = 0
    while made < num_frames:
        new = min(window - context, num_frames - made)
        past = latents[:, :, -context:]
        placed = torch.cat([past, past.new_zeros(*past.shape[:2], new, *past.shape[3:])], dim=2)
        condition = masked_video_condition(placed, prefix_mask(context + new, context)[None].expand(b, -1))
        chunk = _sample(pipe, prompts, condition, (context + new, h, w), settings, generators)
        latents = torch.cat([latents, chunk[:, :, context:]], dim=2)
        made += new
    out = pipe.decode(latents[:, :, n:])
    return torch.cat([video.to(out.device, out.dtype), out], dim=2)


def check_extension(info: dict, frames: int, num_frames: int, context_frames: int | None) -> int:
    """The context length of `extend_video`, after checking the stage can extend (torch-free)."""
    options = info.get("stage_options") or {}
    if stage_name(info) != "interpolation" or "future" not in options.get("mask_modes", []):
        raise ValueError(f"extension needs an interpolation stage trained with future-prediction masks "
                         f"(stage.mask_modes with 'future'); this is a {stage_name(info)!r} model"
                         + (f" with mask_modes {options.get('mask_modes')}" if stage_name(info) == "interpolation" else ""))
    if isinstance(num_frames, bool) or not isinstance(num_frames, int) or num_frames < 1:
        raise ValueError(f"the number of new frames must be an integer >= 1, got {num_frames!r}")
    window = int(info["defaults"]["num_frames"])
    if window < 2:
        raise ValueError(f"this stage's window is {window} frame(s); extension needs at least 2")
    context = context_frames if context_frames is not None else min(frames, max(1, window // 2))
    if not 1 <= context <= min(frames, window - 1):
        raise ValueError(f"context frames must be in [1, {min(frames, window - 1)}] (the input has {frames} frames, "
                         f"the stage's window {window}), got {context}")
    return context


@torch.no_grad()
def upscale_video(pipe, video, prompt, *, noise_level: int | None = None, generator=None, seed: int | None = None,
                  latents: torch.Tensor | None = None, condition_noise: torch.Tensor | None = None,
                  **settings) -> torch.Tensor:
    """Raise the resolution of `video` by the SSR stage's factor k: the video upsampled to k h x k w (its latents
    reduced and enlarged as in training, or for an SD x4 upscaler the low-res pixels themselves) is noise-
    augmented to `noise_level` (default: the stage's) and given with the level as `class_labels`.
    `latents` / `condition_noise` replace the random draws (the condition's noise is drawn first, per video).
    Returns `(b, 3, n, k h, k w)` in [-1, 1]."""
    from vidiff.pipelines.text_to_video import make_generators
    from vidiff.training.stages import augmentation_alphas, noise_augment, spatial_upsample, ssr_condition

    video = as_video(video, pipe.device)
    b, _, n, h, w = video.shape
    if stage_name(pipe.info) != "ssr":
        raise ValueError(f"this model is a {stage_name(pipe.info)!r} model; upscaling needs an ssr stage")
    options = pipe.info["stage_options"]
    level = check_noise_level(pipe.info, noise_level, "this model")
    _, height, width = stage_output_size(pipe.info, (n, h, w), where="this model")
    k = height // h
    generators = make_generators(b, generator, seed)
    if options.get("condition") == "pixels":  # SD x4 upscaler: the low-res pixels are the condition
        clean = video
    elif not pipe.latent:  # pixel space: the low-res frames are what training reduced the clip to, enlarged
        clean = spatial_upsample(video, (height, width))  # (reducing them again would blur the condition)
    else:
        clean = ssr_condition(pipe.encode_video(spatial_upsample(video, (height, width))), k)
    if condition_noise is None:
        condition_noise = torch.stack([torch.randn(clean.shape[1:], generator=g) for g in generators])
    levels = torch.full((b,), level, dtype=torch.long)
    schedule = augmentation_alphas(options.get("augmentation_schedule"))
    condition = noise_augment(clean.float(), levels, schedule, condition_noise.to(clean.device))
    window = int(pipe.defaults["num_frames"])
    out = _sample(pipe, _prompts(prompt, b), condition, (n, height, width), settings, generators,
                  class_labels=levels, latents=latents, window_size=min(window, n),
                  window_stride=max(1, min(window, n) // 2))
    return pipe.decode(out)


def run_stage(pipe, video, prompt, *, factor=None, noise_level=None, generator=None, seed=None, **settings):
    """Any cascade stage on `video`: interpolation / tsr raise the frame rate, ssr the resolution."""
    if stage_name(pipe.info) == "ssr":
        return upscale_video(pipe, video, prompt, noise_level=noise_level, generator=generator, seed=seed, **settings)
    return interpolate_video(pipe, video, prompt, factor=factor, generator=generator, seed=seed, **settings)


# ---------------------------------------------------------------------------------------------------------------
# The cascade
# ---------------------------------------------------------------------------------------------------------------
class CascadePipeline:
    """Text -> base clip -> each stage in turn (public: `vidiff.CascadePipeline`).

    `CascadePipeline.from_pretrained(path)` takes a cascade YAML or a folder holding `cascade.yaml`; calling it
    takes the same arguments as `VideoPipeline` (num_frames / height / width / steps / guidance are the base's;
    each later stage uses its YAML settings). `pipe.timings` holds the seconds per stage of the last call.
    """

    def __init__(self, specs: list[StageSpec], pipelines: list):
        if len(specs) != len(pipelines):
            raise ValueError(f"got {len(pipelines)} pipelines for {len(specs)} stages")
        self.specs, self.pipelines = specs, pipelines
        self.timings: dict[str, float] = {}

    @classmethod
    def from_pretrained(cls, path, device=None, dtype=None) -> "CascadePipeline":
        from vidiff.pipelines.text_to_video import VideoPipeline

        specs = read_cascade(path)  # every check first: nothing loads when a stage is missing or mismatched
        return cls(specs, [VideoPipeline.from_pretrained(spec.model, device=device, dtype=dtype) for spec in specs])

    @property
    def base(self):
        return self.pipelines[0]

    @property
    def frame_rate_factor(self) -> int:
        """Output fps / base fps: the product of the temporal stages' factors."""
        return math.prod(check_factor(s.info, s.factor, str(s.model)) for s in self.specs[1:]
                         if s.stage in TEMPORAL_STAGES)

    def plan(self, num_frames: int | None = None, height: int | None = None, width: int | None = None):
        """(frames, height, width) after the base and each stage; ValueError when a stage does not fit."""
        d = self.base.defaults
        return plan_cascade(self.specs, num_frames or d["num_frames"], height or d["height"], width or d["width"])

    def save_pretrained(self, directory) -> Path:
        """One folder holding every stage (`00-base/`, `01-interpolation/`, ...) and `cascade.yaml`."""
        import yaml

        from vidiff.utils import atomic_dir, check_replaceable

        directory = Path(directory)
        check_replaceable(directory, lambda p: (p / CASCADE_FILE).is_file(), f"a cascade folder (no {CASCADE_FILE})",
                          "choose a new folder")
        entries = []
        with atomic_dir(directory) as tmp:
            for i, (spec, pipe) in enumerate(zip(self.specs, self.pipelines)):
                name = f"{i:02d}-{spec.stage}"
                pipe.save_pretrained(tmp / name)
                entry = {"model": name, "steps": spec.steps, "guidance": spec.guidance, "scheduler": spec.scheduler,
                         "noise_level": spec.noise_level, "factor": spec.factor}
                entries.append({k: v for k, v in entry.items() if v is not None})
            (tmp / CASCADE_FILE).write_text(yaml.safe_dump({"stages": entries}, sort_keys=False))
        return directory

    @torch.no_grad()
    def __call__(self, prompt: str | list[str], num_frames: int | None = None, height: int | None = None,
                 width: int | None = None, num_inference_steps: int | None = None,
                 guidance_scale: float | None = None, negative_prompt=None, generator=None, seed: int | None = None,
                 output_type: str = "uint8", return_intermediate: bool = False, progress: bool = True):
        """Generate with the base, then run every stage. Returns like VideoPipeline (uint8 `(f, h, w, 3)` for one
        video, else a list; "pt": `(b, 3, f, h, w)` in [-1, 1]); with `return_intermediate`, the pair
        `(final, [output of each stage])`. Sizes are checked against every stage before sampling starts."""
        from vidiff.pipelines.text_to_video import make_generators, to_uint8

        if output_type not in ("uint8", "pt"):
            raise ValueError(f"unknown output_type {output_type!r}; use uint8 or pt")
        sizes = self.plan(num_frames, height, width)
        prompts = [prompt] if isinstance(prompt, str) else list(prompt)
        base = self.specs[0]
        self.timings = {}
        start = time.perf_counter()
        video = self.base(prompts, num_frames=sizes[0][0], height=sizes[0][1], width=sizes[0][2],
                          num_inference_steps=num_inference_steps or base.steps,
                          guidance_scale=guidance_scale if guidance_scale is not None else base.guidance,
                          scheduler=base.scheduler, negative_prompt=negative_prompt,
                          generator=make_generators(len(prompts), generator, seed), output_type="pt",
                          progress=progress)
        self.timings[f"0 {base.stage}"] = time.perf_counter() - start
        outputs = [video]
        for i, (spec, pipe) in enumerate(zip(self.specs[1:], self.pipelines[1:]), 1):
            start = time.perf_counter()
            # each stage draws its noise from generators seeded like the base's (the same seed, another draw)
            video = run_stage(pipe, video, prompts, factor=spec.factor, noise_level=spec.noise_level,
                              generator=make_generators(len(prompts), generator, seed), steps=spec.steps,
                              guidance=spec.guidance, scheduler=spec.scheduler, negative_prompt=negative_prompt,
                              progress=progress)
            self.timings[f"{i} {spec.stage}"] = time.perf_counter() - start
            outputs.append(video)
        if output_type == "pt":
            return (video, outputs) if return_intermediate else video

        def frames(v):
            clips = [to_uint8(x) for x in v]
            return clips[0] if len(clips) == 1 else clips

        return (frames(video), [frames(o) for o in outputs]) if return_intermediate else frames(video)
