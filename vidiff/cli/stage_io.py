"""What `vidiff interpolate`, `extend` and `upscale` share: their common flags, the checks they make before any
model loads (stage kind, input size and length, settings, output path), and writing the clip with its sidecar.

An existing --out is replaced only with --overwrite (and never a folder); the sidecar (`out.json`) records every
setting, the input and the seed, so a run can be repeated.
"""
from __future__ import annotations

import math
from pathlib import Path

from vidiff.cli.common import (CLIError, check_device, check_output_path, check_video_output, in_flag_names,
                               probe_video_arg, quiet_loading, seed_or_random, write_outputs)
from vidiff.spec import TEMPORAL_STAGES
from vidiff.pipelines.schedulers import SCHEDULERS
from vidiff.utils import DTYPES

# the settings these commands take (their flags: vidiff.cli.common.SETTING_FLAGS)
SETTING_NAMES = ("num_inference_steps", "guidance_scale", "scheduler")


def add_common_arguments(p, example_model: str = "runs/interpolation/pipeline") -> None:
    p.add_argument("--model", default=None, metavar="DIR",
                   help=f"stage pipeline folder (e.g. {example_model}; default: the built-in demo stage)")
    p.add_argument("--video", required=True, metavar="PATH", help="input video (mp4, gif, webm, ...)")
    p.add_argument("--prompt", default="", help="text prompt (default: none; guidance is then off)")
    p.add_argument("--negative", default=None, metavar="TEXT", help="negative prompt (default: none)")
    p.add_argument("--steps", type=int, default=None, help="sampling steps (default: the model's)")
    p.add_argument("--guidance", type=float, default=None,
                   help="classifier-free guidance, 1 = off (default: the model's with --prompt, else 1)")
    p.add_argument("--scheduler", default=None,
                   help=f"{' | '.join(SCHEDULERS)} (default: the model's)")
    p.add_argument("--seed", type=int, default=None, help="random seed (default: random, recorded in the sidecar)")
    p.add_argument("--device", default=None, help="cuda | cuda:N | mps | cpu (default: best available)")
    p.add_argument("--dtype", default=None, choices=DTYPES, help="default: fp16 on CUDA, else fp32")
    p.add_argument("--out", required=True, metavar="PATH", help="output clip (.mp4, .gif, .png sheet, or a folder)")
    p.add_argument("--overwrite", action="store_true", help="replace --out (and its sidecar) if it exists")
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def use_demo_model(args, stage: str) -> None:
    """No --model: the built-in demo `stage` model (vidiff.demo; trained on the shapes data)."""
    if args.model is not None:
        return
    import sys

    from vidiff import demo

    path = demo.model_dir(stage)
    if not (path / "vidiff.json").is_file():
        raise CLIError(f"no --model given and this install has no demo {stage} model ({path}); pass --model DIR")
    args.model = str(path)
    args.demo_input_size = demo.input_size()
    print(f"using the built-in demo {stage} model {path} (pass --model DIR for another)", file=sys.stderr)


def read_stage_info(model: str, stages: tuple[str, ...], command: str) -> dict:
    """vidiff.json of `--model`, which must be one of `stages`."""
    from vidiff.pipelines.cascade import is_cascade, stage_name
    from vidiff.pipelines.folder import read_info

    if Path(model).is_dir() and is_cascade(model):
        raise CLIError(f"--model {model!r} is a whole cascade; give the folder of its {' or '.join(stages)} stage")
    info = read_info(model)
    if stage_name(info) not in stages:
        raise CLIError(f"--model {model!r} is a {stage_name(info)!r} model; `vidiff {command}` needs "
                       f"{' or '.join(repr(s) for s in stages)} stage (make one with `vidiff inflate --stage "
                       f"{stages[0]}` and train it)")
    return info


def probe_input(args):
    """Frame count, fps and size of `--video` from its header (no decoding). The built-in demo stages were
    trained on the demo base's small clips: a larger input would run for minutes on what they never saw."""
    path = args.video
    video = probe_video_arg(path)
    if not (math.isfinite(video.fps) and video.fps > 0):
        raise CLIError(f"--video {path!r} has no frame rate in its header; re-encode it (e.g. ffmpeg -r 8)")
    demo_size = getattr(args, "demo_input_size", None)
    if demo_size is not None and (video.height, video.width) != demo_size:
        raise CLIError(f"--video {path!r} is {video.width}x{video.height}; the built-in demo stages take the demo "
                       f"model's {demo_size[1]}x{demo_size[0]} clips (make one with `vidiff generate`), or pass "
                       "--model DIR for a stage trained at your size")
    return video


def check_settings(args, info: dict) -> dict:
    """Steps, guidance and scheduler checked against the model (flag names in the messages)."""
    from vidiff.pipelines.folder import read_scheduler_config
    from vidiff.pipelines.schedulers import max_inference_steps
    from vidiff.pipelines.text_to_video import resolve_settings

    guidance = args.guidance if args.guidance is not None else (None if args.prompt else 1.0)
    try:
        schedule = read_scheduler_config(Path(args.model) / "scheduler")
        settings = resolve_settings(info, max_steps=max_inference_steps(schedule), num_inference_steps=args.steps,
                                    guidance_scale=guidance, scheduler=args.scheduler)
    except (ValueError, FileNotFoundError) as e:
        raise CLIError(in_flag_names(str(e), SETTING_NAMES)) from None
    return {"steps": settings["num_inference_steps"], "guidance": settings["guidance_scale"],
            "scheduler": settings["scheduler"]}


def check_output(args) -> Path:
    """--out: a writable video name, not the input, existing (with its sidecar) only with --overwrite."""
    return check_video_output(args.out, args.video, overwrite=args.overwrite)


def load_stage(args):
    """The stage pipeline and the input frames (uint8 `(f, h, w, 3)`), after every check."""
    check_device(args.device)
    quiet_loading(args.quiet)
    from vidiff.data.video_io import read_video
    from vidiff.pipelines.text_to_video import VideoPipeline

    frames = read_video(args.video).frames
    return VideoPipeline.from_pretrained(args.model, device=args.device, dtype=args.dtype), frames


def seed_of(args) -> int:
    return seed_or_random(args.seed)


def sample_and_write(args, info: dict, sample) -> int:
    """What interpolate / extend / upscale do once their own checks pass: the settings, --out and the seed
    checked, the stage and the input loaded, `sample(pipe, frames, settings, seed) -> (video, fps, sidecar
    fields, summary)` timed, the clip and its sidecar written."""
    import time

    settings = check_settings(args, info)
    out = check_output(args)
    seed = seed_of(args)

    pipe, frames = load_stage(args)
    start = time.perf_counter()
    video, fps, fields, summary = sample(pipe, frames, settings, seed)
    sidecar = {**fields, "seed": seed, "input_frames": len(frames), **settings,
               "seconds": round(time.perf_counter() - start, 3)}
    write_result(args, pipe, out, video, fps, sidecar, summary)
    return 0


def write_result(args, pipe, out: Path, video, fps: float, sidecar: dict, summary: str) -> None:
    """Write the clip (`video` `(1, 3, f, h, w)` in [-1, 1]) and its sidecar; print one line."""
    import vidiff
    from vidiff.pipelines.text_to_video import to_uint8

    frames = to_uint8(video[0])
    record = {"input": str(Path(args.video).resolve()), "model": str(Path(args.model).resolve()),
              "prompt": args.prompt, "negative_prompt": args.negative, **sidecar, "fps": fps,
              "num_frames": int(frames.shape[0]), "height": int(frames.shape[1]), "width": int(frames.shape[2]),
              "device": str(pipe.device), "dtype": str(pipe.dtype).replace("torch.", ""),
              "vidiff_version": vidiff.__version__}
    written = write_outputs(out, frames, fps, record, overwrite=args.overwrite)
    print(f"wrote {', '.join(str(p) for p in written)}: {summary} -> {frames.shape[0]} frames "
          f"{frames.shape[2]}x{frames.shape[1]} @ {fps:g} fps (seed {sidecar['seed']})")


# ---------------------------------------------------------------------------------------------------------------
# `vidiff generate --cascade` (or --model of a cascade folder)
# ---------------------------------------------------------------------------------------------------------------
def _cascade_settings(args, specs) -> list[dict]:
    """Resolved steps / guidance / scheduler of every stage; the command line's apply to the base."""
    from vidiff.pipelines.folder import read_scheduler_config
    from vidiff.pipelines.schedulers import max_inference_steps
    from vidiff.pipelines.text_to_video import resolve_settings

    resolved = []
    for i, spec in enumerate(specs):
        ours = i == 0
        steps = args.steps if ours and args.steps is not None else spec.steps
        guidance = args.guidance if ours and args.guidance is not None else spec.guidance
        scheduler = (args.scheduler if ours else None) or spec.scheduler
        try:
            s = resolve_settings(spec.info, max_steps=max_inference_steps(read_scheduler_config(spec.model / "scheduler")),
                                 num_inference_steps=steps, guidance_scale=guidance, scheduler=scheduler)
        except (ValueError, FileNotFoundError) as e:
            raise CLIError(in_flag_names(str(e), SETTING_NAMES, "--" if ours else f"stage {i} ")) from None
        resolved.append({"model": str(spec.model.resolve()), "stage": spec.stage, "steps": s["num_inference_steps"],
                         "guidance": s["guidance_scale"], "scheduler": s["scheduler"]})
    return resolved


def is_cascade_request(args) -> bool:
    """`generate` with --cascade, or with a cascade folder / YAML as --model."""
    from vidiff.pipelines.cascade import is_cascade

    if args.cascade is not None or is_cascade(args.model):
        return True
    if args.keep_intermediate:
        raise CLIError("--keep-intermediate applies to a cascade (--cascade YAML or a cascade folder as --model)")
    return False


def check_base_model(model: str, info: dict) -> dict:
    """`generate --model` needs a text-to-video base: a stage needs a video to work on."""
    if info.get("stage", "base") != "base":
        command = "upscale" if info["stage"] == "ssr" else "interpolate"
        raise CLIError(f"--model {model!r} is a {info['stage']} stage, which needs a video to work on: use "
                       f"`vidiff {command} --model {model} --video IN`, or list it in a cascade (--cascade)")
    return info


def intermediate_path(path: Path, index: int, stage: str) -> Path:
    """Where --keep-intermediate writes stage `index`'s output of the clip at `path`: clip_0-base.mp4, ..."""
    return path.with_name(f"{path.stem}_{index}-{stage}{path.suffix}")


def generate_cascade(args, prompts: list[str]) -> int:
    """Base, then every stage, for each prompt x --num-videos; every check before any model loads."""
    import time

    import vidiff
    from vidiff.pipelines.cascade import CascadePipeline, plan_cascade, read_cascade

    if args.cascade is not None and args.model is not None:
        raise CLIError("give --model or --cascade, not both")
    for flag, value, default in (("--cross-frame", args.cross_frame, None), ("--window-size", args.window_size, None),
                                 ("--window-stride", args.window_stride, None), ("--eta", args.eta, 0.0),
                                 ("--long-video-noise", args.long_video_noise, "independent")):
        if value != default:
            raise CLIError(f"{flag} does not apply to a cascade (each stage samples with its own windows)")
    source = args.cascade or args.model
    specs = read_cascade(source)
    settings = _cascade_settings(args, specs)
    d = specs[0].info["defaults"]
    try:
        sizes = plan_cascade(specs, args.num_frames or d["num_frames"], args.height or d["height"],
                             args.width or d["width"])
    except ValueError as e:
        raise CLIError(f"{e} (sizes from --num-frames / --height / --width or the base's defaults)") from None
    count = len(prompts) * args.num_videos
    out = check_output_path(args.out, count, gif=args.gif, frames_dir=args.frames_dir, contact_sheet=args.contact_sheet,
                            overwrite=args.overwrite)
    paths = [Path(p) for p in _numbered(out, count)]
    if args.keep_intermediate:
        for path in paths:
            for i, spec in enumerate(specs[:-1]):
                check_output_path(intermediate_path(path, i, spec.stage), overwrite=args.overwrite)
    base_fps = args.fps if args.fps is not None else d.get("fps", 8)
    seed = seed_of(args)
    device = check_device(args.device)

    pipe = CascadePipeline.from_pretrained(source, device=device, dtype=args.dtype)
    rates = [base_fps]  # fps after each stage: the temporal stages multiply it by their factor
    for spec in specs[1:]:
        rates.append(rates[-1] * (_factor(spec) if spec.stage in TEMPORAL_STAGES else 1))
    for index, path in enumerate(paths):
        prompt = prompts[index // args.num_videos]
        start = time.perf_counter()
        final, outputs = pipe(prompt, num_frames=sizes[0][0], height=sizes[0][1], width=sizes[0][2],
                              num_inference_steps=settings[0]["steps"], guidance_scale=settings[0]["guidance"],
                              negative_prompt=args.negative, seed=seed + index, return_intermediate=True,
                              progress=not args.quiet)
        stages = [dict(s, frames=f, height=h, width=w, fps=r, seconds=round(pipe.timings[key], 3),
                       **_stage_extra(spec))
                  for s, (f, h, w), r, spec, key in zip(settings, sizes, rates, specs, pipe.timings)]
        sidecar = {"prompt": prompt, "negative_prompt": args.negative, "seed": seed + index,
                   "cascade": str(Path(source).resolve()), "num_frames": sizes[-1][0], "height": sizes[-1][1],
                   "width": sizes[-1][2], "fps": rates[-1], "stages": stages, "device": str(pipe.base.device),
                   "dtype": str(pipe.base.dtype).replace("torch.", ""), "vidiff_version": vidiff.__version__,
                   "seconds": round(time.perf_counter() - start, 3)}
        written = write_outputs(path, final, rates[-1], sidecar, gif=args.gif, frames_dir=args.frames_dir,
                                contact_sheet=args.contact_sheet, overwrite=args.overwrite)
        if args.keep_intermediate:
            for i, (frames, stage) in enumerate(zip(outputs[:-1], stages[:-1])):
                written += write_outputs(intermediate_path(path, i, stage["stage"]), frames, stage["fps"],
                                         dict(sidecar, stage=i, **{k: stage[k] for k in ("frames", "height", "width", "fps")}),
                                         overwrite=args.overwrite)
        print(f"wrote {', '.join(str(p) for p in written)} ({' -> '.join(f'{f}x{w}x{h}' for f, h, w in sizes)} "
              f"frames x w x h, {rates[-1]:g} fps, seed {seed + index}, {prompt!r})")
    return 0


def _numbered(out: Path, count: int):
    from vidiff.cli.common import numbered_paths

    return numbered_paths(out, count)


def _factor(spec) -> int:
    from vidiff.pipelines.cascade import check_factor

    return check_factor(spec.info, spec.factor, str(spec.model))


def _stage_extra(spec) -> dict:
    """The stage-specific settings a sidecar records (factor, noise level)."""
    from vidiff.pipelines.cascade import check_noise_level

    if spec.stage in TEMPORAL_STAGES:
        return {"factor": _factor(spec)}
    if spec.stage == "ssr":
        return {"factor": _factor(spec), "noise_level": check_noise_level(spec.info, spec.noise_level, str(spec.model))}
    return {}
