"""CascadePipeline: a base text-to-video model, then interpolation / TSR / SSR stages (public: `vidiff.CascadePipeline`).

As in Make-A-Video and Imagen Video, the base model makes a short low-resolution clip and each later stage
raises its frame rate or its resolution. Every stage is a VideoPipeline whose U-Net takes a condition
concatenated to the noisy latents (vidiff.stages builds it the same way for training), sampled by the
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
        steps: 8               # a stage may start from its input's plain estimate (the clip upsampled, the
        strength: 0.25         # keyframes blended) noised this far: 8 x 0.25 = 2 U-Net passes (default 1)

References: Singer et al. 2022 (Make-A-Video); Ho et al. 2022 (Imagen Video; Cascaded Diffusion Models);
Voleti et al. 2022 (MCVD); Saharia et al. 2022 (Imagen).
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

import torch
import yaml

from vidiff.pipelines.text_to_video import VideoPipeline, as_video, make_generators, to_uint8
from vidiff.spec import (LONG_VIDEO, SCHEDULER_NAMES, PipelineInfo, PromptSchedule, SettingError, check_choice,
                         check_request_size, check_setting, read_info)
from vidiff.stages import Stage, stage_for
from vidiff.stages.cascade import check_stage_settings
from vidiff.utils import atomic_dir, check_replaceable, yaml_error_line

CASCADE_FILE = "cascade.yaml"
STAGE_KEYS = ("model", "steps", "guidance", "scheduler", "noise_level", "factor", "strength")


# ---------------------------------------------------------------------------------------------------------------
# Cascade files
# ---------------------------------------------------------------------------------------------------------------
@dataclass
class StageSpec:
    """One entry of a cascade YAML, checked against its model folder."""
    model: Path                    # pipeline folder
    info: PipelineInfo             # its vidiff.json
    steps: int | None = None       # sampling steps (None: the folder's default)
    guidance: float | None = None  # classifier-free guidance scale (None: the folder's default)
    scheduler: str | None = None   # sampler name (None: the folder's default)
    noise_level: int | None = None  # ssr: the condition's augmentation level
    factor: int | None = None      # interpolation / tsr: the frame-rate factor
    strength: float | None = None  # a later stage: start from its input's estimate noised this far (None: 1)
    extra: dict = field(default_factory=dict)

    @cached_property
    def stage(self) -> Stage:
        """What the folder's stage accepts and how it runs (vidiff.stages)."""
        return stage_for(self.info)

    @property
    def name(self) -> str:
        return self.info.stage

    def where(self, index: int) -> str:
        return f"stage {index} ({self.model})"


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
    path = Path(path)
    file = path / CASCADE_FILE if path.is_dir() else path
    if not file.is_file():
        raise FileNotFoundError(f"cascade {str(path)!r} does not exist (give a cascade YAML such as "
                                f"configs/cascade/NAME.yaml, or a folder holding {CASCADE_FILE})")
    try:
        data = yaml.safe_load(file.read_text())
    except yaml.YAMLError as e:
        raise ValueError(f"{file} is not valid YAML: {yaml_error_line(e)}") from None
    if not isinstance(data, dict) or set(data) != {"stages"} or not isinstance(data["stages"], list) \
            or len(data["stages"]) < 1:
        raise ValueError(f"{file} must hold one key, `stages:`, a list of stages (the base model first), each "
                         "with `model:`; see configs/cascade/")
    specs = [_read_stage(file, i, entry) for i, entry in enumerate(data["stages"])]
    if specs[0].stage.takes_video:
        raise ValueError(f"{file}: the first stage must be a text-to-video base model, but {specs[0].model} is "
                         f"a {specs[0].name!r} stage")
    for i, spec in enumerate(specs[1:], 1):
        where = f"{file} stage {i} ({spec.model})"
        if not spec.stage.takes_video:
            raise ValueError(f"{file}: stage {i} ({spec.model}) is a base model; later stages must be "
                             "interpolation, tsr or ssr stages")
        try:  # the factor and noise level fit the stage (named by the file, not as flags)
            spec.stage.sidecar(spec.factor, spec.noise_level, where)
        except SettingError as e:
            raise ValueError(str(e)) from None
    return specs


def _read_stage(file: Path, index: int, entry) -> StageSpec:
    where = f"{file} stage {index}"
    if not isinstance(entry, dict) or "model" not in entry:
        raise ValueError(f"{where}: expected a mapping with `model:` (a pipeline folder), got {entry!r}")
    unknown = sorted(set(entry) - set(STAGE_KEYS))
    if unknown:
        raise ValueError(f"{where}: unknown key(s) {', '.join(unknown)}; known: {', '.join(STAGE_KEYS)}")
    model = _resolve_model(file, str(entry["model"]), where)
    spec = StageSpec(model=model, info=read_info(model), steps=entry.get("steps"), guidance=entry.get("guidance"),
                     scheduler=entry.get("scheduler"), noise_level=entry.get("noise_level"),
                     factor=entry.get("factor"), strength=entry.get("strength"))
    try:  # each setting's range, as `vidiff generate` checks its flags
        check_setting("num_inference_steps", spec.steps)
        check_setting("guidance_scale", spec.guidance)
        check_setting("strength", spec.strength)
        if spec.strength is not None and index == 0:
            raise ValueError("strength is for the stages after the base (they start from their input); remove it "
                             "here")
        if spec.scheduler is not None:
            check_choice("scheduler", spec.scheduler, SCHEDULER_NAMES)
    except ValueError as e:
        raise ValueError(f"{where}: {e}") from None
    for key in ("noise_level", "factor"):
        if entry.get(key) is not None and key not in spec.stage.sampling_keys:
            raise ValueError(f"{where}: {key} does not apply to {model}, a {spec.name!r} model; remove it")
    return spec


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
    raise FileNotFoundError(f"{where}: model {text!r} does not exist (looked for "
                            f"{' and '.join(str(c) for c in candidates)}); train or inflate it first, or "
                            "fix the path")


def plan_cascade(specs: list[StageSpec], num_frames: int, height: int, width: int, *, allow_large: bool = False,
                 videos: int = 1) -> list[tuple[int, int, int]]:
    """(frames, height, width) after the base and after each stage; ValueError when a stage does not fit, and
    RequestTooLarge (`check_request_size`) when the clips of `videos` videos, every stage's output held at once,
    would be too large."""
    sizes = [(num_frames, height, width)]
    for i, spec in enumerate(specs[1:], 1):
        sizes.append(spec.stage.output_size(spec.info, sizes[-1], spec.factor, spec.where(i)))
    check_request_size([(f"the output of stage {i} ({spec.name})", *size, videos)
                        for i, (spec, size) in enumerate(zip(specs, sizes))], allow_large)
    return sizes


def _side_through(specs: list[StageSpec], num_frames: int, side: int) -> tuple[list[int], str | None]:
    """(the side after the base and each stage, None) when a base side of `side` pixels fits every stage; else
    ([], which stage's size rule refuses it). Heights and widths obey the same rules, so a square probes both."""
    base = specs[0].info
    if side < base.spatial_factor or side % base.spatial_factor:
        return [], (f"the base ({specs[0].model.resolve()}) needs a multiple of {base.spatial_factor} (VAE factor "
                    f"{base.vae_scale_factor} x U-Net factor {base.unet_spatial_factor})")
    sizes = [(num_frames, side, side)]
    for i, spec in enumerate(specs[1:], 1):
        try:
            sizes.append(spec.stage.output_size(spec.info, sizes[-1], spec.factor, spec.where(i)))
        except ValueError:
            return [], (f"stage {i} ({spec.name}, {spec.model.resolve()}) needs the sizes it takes and makes to be "
                        f"multiples of {spec.info.spatial_factor} (its VAE factor x U-Net factor)")
    return [size[1] for size in sizes], None


def check_cascade_side(specs: list[StageSpec], num_frames: int, name: str, side: int) -> None:
    """A ValueError when the base's `name` ("height" / "width") of `side` pixels breaks a stage's size rule,
    naming that stage, how the cascade scales the side, and the nearest sides that work (torch-free)."""
    rule = _side_through(specs, num_frames, side)[1]
    if rule is None:
        return
    near = []  # the nearest working side below and above (one search over a period of the stages' rules)
    for candidates in (range(side - 1, 0, -1), range(side + 1, side + 1 + 64 * specs[0].info.spatial_factor)):
        found = next((c for c in candidates if _side_through(specs, num_frames, c)[1] is None), None)
        near += [found] if found is not None else []
    scale = _side_through(specs, num_frames, near[0])[0][-1] // near[0] if near else 1
    made = f" (the cascade makes {scale}x that: {side} -> {side * scale})" if scale != 1 else ""
    options = " or ".join(f"{c} (output {c * scale})" if scale != 1 else str(c) for c in near)
    raise ValueError(f"{name} {side} sets the base's {name.lstrip('-')}{made}, but {rule}; nearest that work: "
                     f"{name} {options or '(none near it)'}")


def keyframe_stage(specs: list[StageSpec]) -> int | None:
    """The index of the first stage that raises the frame rate (interpolation / tsr), or None."""
    return next((i for i, spec in enumerate(specs[1:], 1) if spec.stage.frame_rate_factor(spec.factor) > 1), None)


def long_video_method(specs: list[StageSpec], num_frames: int, long_video: str = "auto") -> str:
    """How the base makes `num_frames` frames (torch-free): "direct" (within its window, its default
    num_frames), "keyframes" (its window of keyframes spanning the clip, filled in by the cascade's first
    interpolation / tsr stage) or "windows" (temporal windows over the whole clip). "auto" takes keyframes when
    the cascade has such a stage; "keyframes" without one is a ValueError."""
    check_choice("long_video", long_video, LONG_VIDEO)
    if num_frames <= specs[0].info.defaults.num_frames:
        return "direct"
    if long_video == "windows" or (long_video == "auto" and keyframe_stage(specs) is None):
        return "windows"
    if keyframe_stage(specs) is None:
        raise SettingError("long_video", "keyframes needs a cascade with an interpolation or tsr stage to fill in "
                           "the keyframes; use windows")
    return "keyframes"


# ---------------------------------------------------------------------------------------------------------------
# Running one stage on a video (the Python API: video as a tensor or uint8 frames, one prompt or one per video)
# ---------------------------------------------------------------------------------------------------------------
def _video_shape(video) -> tuple[int, int, int, int, int]:
    """`(b, 3, n, h, w)` of a video given as a tensor `(b, 3, n, h, w)` or uint8 frames `(n, h, w, 3)`, before
    `as_video` converts it (the size is checked first)."""
    shape = tuple(video.shape)
    if len(shape) == 4 and str(video.dtype).endswith("uint8"):  # (numpy's or torch's)
        return (1, 3, *shape[:3])
    if len(shape) != 5:
        as_video(video)  # its ValueError says which shapes a video may have
    return shape


def _prompts(prompt, count: int) -> list:
    """One prompt per video: texts, or PromptSchedules (prompt travel)."""
    prompts = [prompt] * count if isinstance(prompt, (str, PromptSchedule)) else list(prompt)
    if len(prompts) != count or not all(isinstance(p, (str, PromptSchedule)) for p in prompts):
        raise ValueError(f"give one prompt, or one per video ({count}), got {prompt!r}")
    return prompts


def on_timeline(prompts: list, scale: float) -> list:
    """`prompts` for a clip whose frame f is frame f / scale of the schedules' timeline: each PromptSchedule's
    keyframes move with their moment (a cascade's keyframes, its interpolated frames); texts stay."""
    return [p.scaled(scale) if isinstance(p, PromptSchedule) else p for p in prompts]


@torch.no_grad()
def run_stage(pipe, video, prompt, *, factor: int | None = None, noise_level: int | None = None, generator=None,
              seed: int | None = None, latents: torch.Tensor | None = None,
              condition_noise: torch.Tensor | None = None, allow_large: bool = False, **settings) -> torch.Tensor:
    """Any cascade stage on `video` (`(b, 3, n, h, w)` in [-1, 1], or uint8 `(n, h, w, 3)`): interpolation
    ((n - 1) k + 1 frames, the keyframes copied exactly) and tsr (n k frames) raise the frame rate by `factor`,
    ssr the resolution (the condition noise-augmented to `noise_level`; `latents` / `condition_noise` replace
    its random draws). `settings`: steps, guidance, scheduler, negative_prompt, progress. An output beyond the
    size limits is refused before sampling (RequestTooLarge) unless `allow_large`.
    Returns `(b, 3, frames, h', w')` in [-1, 1]."""
    check_stage_settings(settings)
    b, _, n, h, w = _video_shape(video)
    output = stage_for(pipe.info).output_size(pipe.info, (n, h, w), factor, "this model")
    check_request_size([("the input", n, h, w, b), ("the output", *output, b)], allow_large)
    video = as_video(video, pipe.device)
    draws = {"latents": latents, "condition_noise": condition_noise} if latents is not None or \
        condition_noise is not None else {}
    return stage_for(pipe.info).run(pipe, video, _prompts(prompt, video.shape[0]),
                                    generators=make_generators(video.shape[0], generator, seed), settings=settings,
                                    factor=factor, noise_level=noise_level, **draws)


@torch.no_grad()
def run_stage_chunks(pipe, chunks, prompt: str, *, seed: int | None = None, generator=None, **kwargs):
    """`run_stage` on a long clip given as chunks of uint8 frames `(n, h, w, 3)` (consecutive chunks sharing the
    stage's `chunk_overlap()` frames, as `vidiff.data.video_io.iter_chunks` reads them): yields each chunk's
    output as uint8 frames, a shared frame's output once. One noise stream runs through the chunks, so the first
    chunk equals `run_stage` with the same seed, and a clip that is one chunk equals it whole. Memory holds one
    chunk (and its output) at a time; `kwargs` as `run_stage`'s."""
    overlap = stage_for(pipe.info).chunk_overlap()
    generator = make_generators(1, generator, seed)[0]
    for index, frames in enumerate(chunks):
        video = run_stage(pipe, frames, prompt, generator=generator, **kwargs)
        yield to_uint8(video[0])[overlap if index else 0:]


def interpolate_video(pipe, video, prompt, *, factor: int | None = None, **kwargs) -> torch.Tensor:
    """Raise the frame rate of `video` with an interpolation or TSR stage (`run_stage`)."""
    if stage_for(pipe.info).frame_rate_factor(factor) == 1:
        raise ValueError(f"this model is a {pipe.info.stage!r} model; frame interpolation needs an interpolation "
                         "or tsr stage")
    return run_stage(pipe, video, prompt, factor=factor, **kwargs)


def upscale_video(pipe, video, prompt, *, noise_level: int | None = None, **kwargs) -> torch.Tensor:
    """Raise the resolution of `video` with an SSR stage (`run_stage`)."""
    if "noise_level" not in stage_for(pipe.info).sampling_keys:
        raise ValueError(f"this model is a {pipe.info.stage!r} model; upscaling needs an ssr stage")
    return run_stage(pipe, video, prompt, noise_level=noise_level, **kwargs)


@torch.no_grad()
def extend_video(pipe, video, prompt, *, num_frames: int, context_frames: int | None = None,
                 new_per_chunk: int | None = 1, generator=None, seed: int | None = None, allow_large: bool = False,
                 **settings) -> torch.Tensor:
    """Extend `video` by `num_frames` new frames with an interpolation stage trained with future-prediction
    masks: chunk by chunk, up to `context_frames` last frames (default: all the window holds) are the known
    past and `new_per_chunk` new frames (default 1; None: the rest of the window) are generated. The input
    frames come out exactly as given. A result beyond the size limits is refused before sampling
    (RequestTooLarge) unless `allow_large`.
    Returns `(b, 3, n + num_frames, h, w)` in [-1, 1]."""
    check_stage_settings(settings)
    b, _, n, h, w = _video_shape(video)
    check_setting("new_frames", num_frames)
    check_request_size([("the input", n, h, w, b), ("the extended clip", n + num_frames, h, w, b)], allow_large)
    video = as_video(video, pipe.device)
    b = video.shape[0]
    return stage_for(pipe.info).extend(pipe, video, _prompts(prompt, b), num_frames=num_frames,
                                       context_frames=context_frames, new_per_chunk=new_per_chunk,
                                       generators=make_generators(b, generator, seed), settings=settings)


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
        specs = read_cascade(path)  # every check first: nothing loads when a stage is missing or mismatched
        return cls(specs, [VideoPipeline.from_pretrained(spec.model, device=device, dtype=dtype) for spec in specs])

    def compile_unet(self, mode: str | None = None, backend="inductor") -> "CascadePipeline":
        """torch.compile every stage's U-Net (`VideoPipeline.compile_unet`); each compiles on its first call."""
        for pipe in self.pipelines:
            pipe.compile_unet(mode=mode, backend=backend)
        return self

    @property
    def base(self):
        return self.pipelines[0]

    @property
    def frame_rate_factor(self) -> int:
        """Output fps / base fps: the product of the temporal stages' factors."""
        return math.prod(s.stage.frame_rate_factor(s.factor) for s in self.specs[1:])

    def plan(self, num_frames: int | None = None, height: int | None = None, width: int | None = None, *,
             allow_large: bool = False, videos: int = 1):
        """(frames, height, width) after the base and each stage; ValueError when a stage does not fit or the
        clips would be too large (`plan_cascade`)."""
        d = self.base.defaults
        return plan_cascade(self.specs, num_frames or d.num_frames, height or d.height, width or d.width,
                            allow_large=allow_large, videos=videos)

    def save_pretrained(self, directory) -> Path:
        """One folder holding every stage (`00-base/`, `01-interpolation/`, ...) and `cascade.yaml`."""
        directory = Path(directory)
        check_replaceable(directory, lambda p: (p / CASCADE_FILE).is_file(), f"a cascade folder (no {CASCADE_FILE})",
                          "choose a new folder")
        entries = []
        with atomic_dir(directory) as tmp:
            for i, (spec, pipe) in enumerate(zip(self.specs, self.pipelines)):
                name = f"{i:02d}-{spec.name}"
                pipe.save_pretrained(tmp / name)
                entry = {"model": name, "steps": spec.steps, "guidance": spec.guidance, "scheduler": spec.scheduler,
                         "noise_level": spec.noise_level, "factor": spec.factor, "strength": spec.strength}
                entries.append({k: v for k, v in entry.items() if v is not None})
            (tmp / CASCADE_FILE).write_text(yaml.safe_dump({"stages": entries}, sort_keys=False))
        return directory

    def long_video_method(self, num_frames: int, long_video: str = "auto") -> str:
        return long_video_method(self.specs, num_frames, long_video)

    def _keyframes(self, video: torch.Tensor, num_frames: int, prompts: list[str], seed, generator,
                   negative_prompt, progress: bool) -> torch.Tensor:
        """Raise the base's keyframes to at least `num_frames` with the keyframe stage (as often as needed), then
        take `num_frames` evenly spaced frames (first and last kept): one clip's motion at a higher frame rate."""
        index = keyframe_stage(self.specs)
        spec, pipe = self.specs[index], self.pipelines[index]
        while video.shape[2] < num_frames:
            # (the stage's output: frame f is frame f (n - 1) / (k (num_frames - 1)) of the clip's timeline)
            scale = spec.stage.frame_rate_factor(spec.factor) * (video.shape[2] - 1) / (num_frames - 1)
            video = run_stage(pipe, video, on_timeline(prompts, scale), factor=spec.factor,
                              noise_level=spec.noise_level, generator=make_generators(len(prompts), generator, seed),
                              steps=spec.steps, strength=spec.strength,
                              guidance=spec.guidance, scheduler=spec.scheduler, negative_prompt=negative_prompt,
                              progress=f"keyframes: {spec.name}" if progress else False, allow_large=True)
        keep = torch.linspace(0, video.shape[2] - 1, num_frames).round().long().to(video.device)
        return video.index_select(2, keep)

    def _bar(self, index: int) -> str:
        """The progress bar's name for stage `index`: `base (1/3)`, `interpolation (2/3)`, ..."""
        return f"{self.specs[index].name} ({index + 1}/{len(self.specs)})"

    @torch.no_grad()
    def __call__(self, prompt: str | list[str], num_frames: int | None = None, height: int | None = None,
                 width: int | None = None, num_inference_steps: int | None = None,
                 guidance_scale: float | None = None, negative_prompt=None, generator=None, seed: int | None = None,
                 output_type: str = "uint8", return_intermediate: bool = False, progress: bool = True,
                 allow_large: bool = False, long_video: str = "auto"):
        """Generate with the base, then run every stage. Returns like VideoPipeline (uint8 `(f, h, w, 3)` for one
        video, else a list; "pt": `(b, 3, f, h, w)` in [-1, 1]); with `return_intermediate`, the pair
        `(final, [output of each stage])`. Sizes are checked against every stage, and against the size limits
        (`allow_large` lifts them, `check_request_size`), before sampling starts. A base clip longer than the
        base's window is made as `long_video` says (`long_video_method`): by default the base samples its window
        of keyframes over the whole clip and the interpolation stage fills them in (Make-A-Video's route to
        longer clips), so one motion spans the clip; "windows" samples overlapping temporal windows.
        A prompt may be a PromptSchedule (prompt travel) whose keyframes count the base's frames; every stage
        gets it on its own timeline (`on_timeline`), so a change stays at the same moment of the clip."""
        if output_type not in ("uint8", "pt"):
            raise ValueError(f"unknown output_type {output_type!r}; use uint8 or pt")
        prompts = [prompt] if isinstance(prompt, (str, PromptSchedule)) else list(prompt)
        sizes = self.plan(num_frames, height, width, allow_large=allow_large, videos=len(prompts))
        method = self.long_video_method(sizes[0][0], long_video)
        base = self.specs[0]
        self.timings = {}
        start = time.perf_counter()
        keyframes = self.base.defaults.num_frames
        # prompt travel: the schedules count the base's frames; the keyframes span them, later stages densify
        scale = (keyframes - 1) / (sizes[0][0] - 1) if method == "keyframes" else 1
        video = self.base(on_timeline(prompts, scale), num_frames=keyframes if method == "keyframes" else sizes[0][0],
                          height=sizes[0][1], width=sizes[0][2],
                          num_inference_steps=num_inference_steps or base.steps,
                          guidance_scale=guidance_scale if guidance_scale is not None else base.guidance,
                          scheduler=base.scheduler, negative_prompt=negative_prompt,
                          generator=make_generators(len(prompts), generator, seed), output_type="pt",
                          progress=self._bar(0) if progress else False)
        if method == "keyframes":
            video = self._keyframes(video, sizes[0][0], prompts, seed, generator, negative_prompt, progress)
        self.timings[f"0 {base.name}"] = time.perf_counter() - start
        outputs = [video]
        scale = 1
        for i, (spec, pipe) in enumerate(zip(self.specs[1:], self.pipelines[1:]), 1):
            start = time.perf_counter()
            scale *= spec.stage.frame_rate_factor(spec.factor)
            # each stage draws its noise from generators seeded like the base's (the same seed, another draw)
            video = run_stage(pipe, video, on_timeline(prompts, scale), factor=spec.factor,
                              noise_level=spec.noise_level, generator=make_generators(len(prompts), generator, seed),
                              steps=spec.steps, strength=spec.strength,
                              guidance=spec.guidance, scheduler=spec.scheduler, negative_prompt=negative_prompt,
                              progress=self._bar(i) if progress else False, allow_large=True)  # (the whole plan was checked above)
            self.timings[f"{i} {spec.name}"] = time.perf_counter() - start
            outputs.append(video)
        if output_type == "pt":
            return (video, outputs) if return_intermediate else video

        def frames(v):
            clips = [to_uint8(x) for x in v]
            return clips[0] if len(clips) == 1 else clips

        return (frames(video), [frames(o) for o in outputs]) if return_intermediate else frames(video)
