"""`vidiff generate --cascade YAML` (or `--model` of a cascade folder): the base, then every stage, per clip.

The command line's sizes and sampling flags apply to the base; each later stage samples with its YAML settings
(errors in those name the stage: "stage 1 steps must be ..."). Every check comes before any model loads.
"""
from __future__ import annotations

import time
from pathlib import Path

import vidiff
from vidiff.cli.common import (CLIError, check_device, check_flag, check_output_path, clip_paths, seed_or_random,
                               write_outputs)
from vidiff.cli.options import check_compile_flag
from vidiff.cli.resolve import resolve_settings
from vidiff.pipelines.cascade import (CascadePipeline, check_cascade_side, is_cascade, long_video_method, plan_cascade,
                                     read_cascade)
from vidiff.spec import PromptSchedule, RequestTooLarge, SamplingSettings, SettingError

# generate's flags that a cascade does not take (each stage samples with its own windows and its YAML's sampler)
NOT_FOR_CASCADES = (("--cross-frame", "cross_frame", None), ("--window-size", "window_size", None),
                    ("--window-stride", "window_stride", None), ("--eta", "eta", 0.0),
                    ("--long-video-noise", "long_video_noise", "independent"), ("--scheduler", "scheduler", None))


def is_cascade_request(args) -> bool:
    """`generate` with --cascade, or with a cascade folder / YAML as --model."""
    if args.cascade is not None or is_cascade(args.model):
        return True
    if args.keep_intermediate:
        raise CLIError("--keep-intermediate applies to a cascade (--cascade YAML or a cascade folder as --model)")
    return False


def intermediate_path(path: Path, index: int, stage: str) -> Path:
    """Where --keep-intermediate writes stage `index`'s output of the clip at `path`: clip_0-base.mp4, ..."""
    return path.with_name(f"{path.stem}_{index}-{stage}{path.suffix}")


def check_base_sides(specs, height: int | None, width: int | None) -> None:
    """--height / --width are the base's: one that breaks a stage's size rule (the base's multiples, or a later
    stage's once SSR scales it) is one line naming that stage and the nearest sizes that work."""
    for flag, side in (("--height", height), ("--width", width)):
        if side is not None:
            check_flag(flag[2:], side)
            try:  # (the size rules do not depend on the frame count: probed with the base's own)
                check_cascade_side(specs, specs[0].info.defaults.num_frames, flag, side)
            except ValueError as e:
                raise CLIError(str(e)) from None


def cascade_settings(args, specs) -> list[SamplingSettings]:
    """Every stage's settings resolved against its folder: the command line's (sizes, steps, guidance, videos per
    prompt) for the base, each stage's YAML entry for the others."""
    base = specs[0]
    check_base_sides(specs, args.height, args.width)
    settings = [resolve_settings(base.model, base.info, num_frames=args.num_frames, height=args.height,
                                 width=args.width, num_inference_steps=args.steps if args.steps is not None
                                 else base.steps, guidance_scale=args.guidance if args.guidance is not None
                                 else base.guidance, scheduler=base.scheduler,
                                 decode_chunk_size=args.decode_chunk_size, num_videos_per_prompt=args.num_videos)]
    for i, spec in enumerate(specs[1:], 1):
        settings.append(resolve_settings(spec.model, spec.info, prefix=f"stage {i} ", num_inference_steps=spec.steps,
                                         guidance_scale=spec.guidance, scheduler=spec.scheduler,
                                         strength=spec.strength))
    return settings


def generate_cascade(args, prompts: list[str], travel: PromptSchedule | None = None) -> int:
    """Base, then every stage, for each prompt x --num-videos (or one clip of prompt travel, `travel`, whose
    keyframes count the base's frames); every check before any model loads."""
    if args.cascade is not None and args.model is not None:
        raise CLIError("give --model or --cascade, not both")
    for flag, name, default in NOT_FOR_CASCADES:
        if getattr(args, name) != default:
            raise CLIError(f"{flag} does not apply to a cascade (each stage samples with its own windows and its "
                           "YAML's sampler)")
    source = args.cascade or args.model
    specs = read_cascade(source)
    settings = cascade_settings(args, specs)
    base = settings[0]
    try:  # every stage's output fits the next stage, and all of them the size limits
        sizes = plan_cascade(specs, base.num_frames, base.height, base.width, allow_large=args.allow_large)
    except RequestTooLarge as e:
        raise CLIError(e.for_flags()) from None
    except ValueError as e:
        raise CLIError(f"{e} (sizes from --num-frames / --height / --width or the base's defaults)") from None
    try:
        method = long_video_method(specs, base.num_frames, args.long_video)
        if travel is not None:
            travel.check_frames(base.num_frames)
    except SettingError as e:
        raise CLIError(e.for_flags() + (": the base's clip must reach every prompt keyframe" if travel else "")) \
            from None
    count = len(prompts) * args.num_videos
    seed = seed_or_random(args.seed, count)
    paths = clip_paths(args.out, prompts, args.num_videos, seed)
    check_output_path(args.out, count, gif=args.gif, frames_dir=args.frames_dir, contact_sheet=args.contact_sheet,
                      overwrite=args.overwrite, paths=paths)
    if args.keep_intermediate:
        for path in paths:
            for i, spec in enumerate(specs[:-1]):
                check_output_path(intermediate_path(path, i, spec.name), overwrite=args.overwrite)
    rates = [check_flag("fps", args.fps) if args.fps is not None else specs[0].info.defaults.fps]
    for spec in specs[1:]:  # fps after each stage: the temporal stages multiply it by their factor
        rates.append(rates[-1] * spec.stage.frame_rate_factor(spec.factor))
    stages = [{"model": str(spec.model.resolve()), "stage": spec.name, "steps": s.num_inference_steps,
               "guidance": s.guidance_scale, "scheduler": s.scheduler, "guidance_distilled": s.guidance_distilled,
               "strength": s.strength, "unet_evaluations": s.unet_evaluations, "frames": f, "height": h, "width": w,
               "fps": rate, **spec.stage.sidecar(spec.factor, spec.noise_level, spec.where(i))}
              for i, (spec, s, (f, h, w), rate) in enumerate(zip(specs, settings, sizes, rates))]
    stages[0]["long_video"] = method  # direct (within the base's window), keyframes or windows
    device = check_device(args.device)
    check_compile_flag(args, device)

    pipe = CascadePipeline.from_pretrained(source, device=device, dtype=args.dtype)
    if args.compile:
        pipe.compile_unet()
    for index, path in enumerate(paths):
        write_clip(args, pipe, path, prompts[index // args.num_videos], seed + index, source, stages, travel)
    return 0


def write_clip(args, pipe, path: Path, prompt: str, seed: int, source, stages: list[dict],
               travel: PromptSchedule | None = None) -> None:
    """One clip through the whole cascade, written with its sidecar (and each stage's output with
    --keep-intermediate); prints one line."""
    base, final = stages[0], stages[-1]
    start = time.perf_counter()
    video, outputs = pipe(travel or prompt, num_frames=base["frames"], height=base["height"], width=base["width"],
                          num_inference_steps=base["steps"], guidance_scale=base["guidance"],
                          negative_prompt=args.negative, seed=seed, return_intermediate=True,
                          progress=not args.quiet, allow_large=args.allow_large, long_video=args.long_video)
    stages = [dict(stage, seconds=round(seconds, 3)) for stage, seconds in zip(stages, pipe.timings.values())]
    sidecar = {"prompt": prompt, "negative_prompt": args.negative, "seed": seed,
               "cascade": str(Path(source).resolve()), "num_frames": final["frames"], "height": final["height"],
               "width": final["width"], "fps": final["fps"], "stages": stages, "device": str(pipe.base.device),
               "dtype": str(pipe.base.dtype).replace("torch.", ""), "compile": args.compile, "vidiff_version": vidiff.__version__,
               "seconds": round(time.perf_counter() - start, 3)}
    if travel is not None:  # (the frames of the base's clip; sidecar["stages"] gives each stage's frame count)
        sidecar["prompt_schedule"] = {str(frame): text for frame, text in travel.keyframes}
    written = write_outputs(path, video, final["fps"], sidecar, gif=args.gif, frames_dir=args.frames_dir,
                            contact_sheet=args.contact_sheet, overwrite=args.overwrite)
    if args.keep_intermediate:
        for i, (frames, stage) in enumerate(zip(outputs[:-1], stages[:-1])):
            sizes = {k: stage[k] for k in ("frames", "height", "width", "fps")}
            written += write_outputs(intermediate_path(path, i, stage["stage"]), frames, stage["fps"],
                                     dict(sidecar, stage=i, **sizes), overwrite=args.overwrite)
    shapes = " -> ".join(f"{s['frames']}x{s['width']}x{s['height']}" for s in stages)
    print(f"wrote {', '.join(str(p) for p in written)} ({shapes} frames x w x h, {final['fps']:g} fps, seed {seed}, "
          f"{prompt!r})")
