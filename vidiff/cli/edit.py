"""`vidiff edit`: redraw a video to a new prompt (Tune-A-Video one-shot tuning, or zero-shot cross-frame editing)."""
from __future__ import annotations

import argparse
import math
from pathlib import Path

from vidiff.cli.common import (CLIError, check_device, check_video_output, in_flag_names, probe_video_arg,
                               quiet_loading, seed_or_random, write_outputs)
from vidiff.spec import CROSS_FRAME_MODES
from vidiff.utils import DTYPES

# the settings edit takes (their flags: vidiff.cli.common.SETTING_FLAGS)
SETTING_NAMES = ("num_inference_steps", "guidance_scale", "num_frames", "height", "width")


def add_parser(sub):
    p = sub.add_parser(
        "edit", help="edit a video to new text prompts (Tune-A-Video / Text2Video-Zero)",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Edit a video clip to one or more text prompts, keeping its layout and motion. The clip is "
                    "resized and centre-cropped to the model's size, DDIM-inverted with the source prompt (or "
                    "noised SDEdit-style with --strength), and sampled again with each target prompt. --method "
                    "tune first tunes the model on the clip (Tune-A-Video); zero-shot needs no training "
                    "(Text2Video-Zero's cross-frame attention). The output keeps the clip's fps; each gets a "
                    "JSON sidecar with every setting.",
        epilog="examples:\n"
               "  vidiff edit --model models/sd15-video --video car-turn.mp4 --source-prompt \"a car driving on a "
               "road\" \\\n      --prompt \"a jeep driving on a road, snow\" --method tune --tune-steps 300 --out jeep.mp4\n"
               "  vidiff edit --model M --video swan.mp4 --prompt \"a black swan\" --prompt \"a duck\" "
               "--side-by-side --out swan.mp4\n"
               "  vidiff edit --model M --video in.mp4 --prompt \"a cat\" --strength 0.6 --seed 3 --out cat.mp4\n"
               "  vidiff edit --tuned tuned/car --video car-turn.mp4 --prompt \"a red car\" --out red.mp4\n"
               "\nseveral --prompt give out-000.mp4, out-001.mp4, ... (in prompt order), sharing one tuning and one "
               "inversion;\n--cache-inversion keeps the inverted latents as out.inversion.safetensors (+ .json key) "
               "and reuses them\nwhen the same clip, model and settings come back.")
    p.add_argument("--model", metavar="DIR", default=None,
                   help="vidiff pipeline folder (default: the built-in demo model, when installed)")
    p.add_argument("--tuned", metavar="DIR", default=None,
                   help="a model already tuned on this clip (from --save-tuned): no tuning, --method tune implied")
    p.add_argument("--video", required=True, metavar="PATH", help="input video (anything PyAV or decord reads)")
    p.add_argument("--prompt", action="append", default=None, help="target prompt (repeat for several outputs)")
    p.add_argument("--source-prompt", default="", metavar="TEXT",
                   help="what the input shows; inversion and tuning condition on it (default: the empty prompt)")
    p.add_argument("--negative", default=None, metavar="TEXT", help="negative prompt (default: none)")
    p.add_argument("--method", choices=("zero-shot", "tune"), default=None,
                   help="zero-shot (no training) or tune (Tune-A-Video) (default: zero-shot; tune with --tuned)")
    p.add_argument("--cross-frame", choices=[m for m in CROSS_FRAME_MODES if m != "none"], default=None,
                   help="attention across frames while inverting and sampling (default: first for zero-shot, "
                        "sparse-causal for tune)")
    p.add_argument("--strength", type=float, default=None,
                   help="SDEdit instead of inversion: noise the clip this far up the schedule, 0..1 (default: invert)")
    p.add_argument("--tune-steps", type=int, default=300, help="tuning steps for --method tune (default: %(default)s)")
    p.add_argument("--tune-lr", type=float, default=3e-5, help="tuning learning rate (default: %(default)s)")
    p.add_argument("--save-tuned", metavar="DIR", default=None, help="keep the tuned model as a pipeline folder")
    p.add_argument("--cache-inversion", action="store_true",
                   help="keep / reuse the inverted latents beside --out (out.inversion.safetensors)")
    p.add_argument("--num-frames", type=int, default=None, help="frames taken from the clip (default: the model's)")
    p.add_argument("--stride", type=int, default=None, help="take every S-th source frame (default: 1)")
    p.add_argument("--fps", type=float, default=None, help="sample the clip at this rate instead of --stride")
    p.add_argument("--start", type=int, default=0, help="first source frame (default: %(default)s)")
    p.add_argument("--height", type=int, default=None, help="pixels, multiple of the model's factor (default: the model's)")
    p.add_argument("--width", type=int, default=None, help="pixels, multiple of the model's factor (default: the model's)")
    p.add_argument("--steps", type=int, default=None, help="DDIM steps for inversion and sampling (default: the model's)")
    p.add_argument("--guidance", type=float, default=None, help="classifier-free guidance while sampling (default: the model's)")
    p.add_argument("--seed", type=int, default=None, help="seed for tuning and SDEdit noise (default: random, recorded)")
    p.add_argument("--device", default=None, help="cuda | cuda:N | mps | cpu (default: best available)")
    p.add_argument("--dtype", default=None, choices=DTYPES,
                   help="default: fp32 for --method tune (AdamW on fp16 weights loses the updates), else fp16 on CUDA")
    p.add_argument("--out", required=True, metavar="PATH", help="output clip, e.g. edited.mp4")
    p.add_argument("--side-by-side", action="store_true", help="write the input and the edit next to each other")
    p.add_argument("--contact-sheet", action="store_true", help="also write a .png contact sheet of the frames")
    p.add_argument("--overwrite", action="store_true", help="replace existing outputs (and their sidecars)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    return p


def _model_dir(args) -> str:
    if args.tuned is not None:
        if args.model is not None:
            raise CLIError("give --model or --tuned, not both (--tuned DIR is a model folder tuned on the clip)")
        return args.tuned
    if args.model is not None:
        return args.model
    try:
        from vidiff.demo import available_stages, model_dir
    except ImportError:
        available_stages = None
    if available_stages is None or "base" not in available_stages():
        raise CLIError("no --model given and the built-in demo model is not installed: pass --model DIR (make one "
                       "with `vidiff inflate --base SD_PIPELINE --out DIR`)")
    import sys

    from vidiff.demo import unknown_words_message

    # The demo base (shapes: colours, circle / square / triangle), not its cascade: editing needs one base model.
    print(f"using the built-in demo model {model_dir('base')} (pass --model DIR for another)", file=sys.stderr)
    message = unknown_words_message(list(args.prompt) + ([args.source_prompt] if args.source_prompt else []))
    if message:
        print(f"warning: {message}", file=sys.stderr)
    return str(model_dir("base"))


def _method(args) -> str:
    if args.tuned is not None:
        if args.method == "zero-shot":
            raise CLIError("--tuned DIR is a Tune-A-Video model: drop --method zero-shot (or use --model)")
        return "tune"
    return args.method or "zero-shot"


def _check_numbers(args, method: str) -> None:
    if args.strength is not None and not (math.isfinite(args.strength) and 0 <= args.strength <= 1):
        raise CLIError(f"--strength must be in [0, 1] (0 = the input unchanged, 1 = plain generation), "
                       f"got {args.strength}")
    if method == "tune" and args.tuned is None:
        if args.tune_steps < 1:
            raise CLIError(f"--tune-steps must be >= 1, got {args.tune_steps}")
        if not (math.isfinite(args.tune_lr) and args.tune_lr > 0):
            raise CLIError(f"--tune-lr must be a finite number > 0, got {args.tune_lr}")
    if args.save_tuned is not None and (method != "tune" or args.tuned is not None):
        raise CLIError("--save-tuned keeps a model tuned here: it needs --method tune (and no --tuned)")
    if args.cache_inversion and args.strength is not None:
        raise CLIError("--cache-inversion caches the DDIM inversion, which --strength (SDEdit) skips; drop one")
    if args.stride is not None and args.fps is not None:
        raise CLIError(f"give --stride or --fps, not both (got --stride {args.stride} --fps {args.fps})")
    if args.stride is not None and args.stride < 1:
        raise CLIError(f"--stride must be >= 1, got {args.stride}")
    if args.fps is not None and not (math.isfinite(args.fps) and args.fps > 0):
        raise CLIError(f"--fps must be a finite number > 0, got {args.fps}")
    if args.start < 0:
        raise CLIError(f"--start must be >= 0, got {args.start}")


def _check_video(args, num_frames: int):
    """Probe --video and check the clip fits in it (header only: no decoding, no model)."""
    from vidiff.data.video_io import clip_indices

    source = probe_video_arg(args.video)
    if args.fps is not None and not source.fps:
        raise CLIError(f"--video {args.video!r} has no frame rate in its header, so --fps cannot apply; use --stride")
    try:
        indices = clip_indices(source.num_frames, num_frames, args.stride, args.fps, source.fps, args.start)
    except ValueError as e:
        raise CLIError(f"--video {args.video!r} is {e} (lower --num-frames / --stride or --start)") from None
    return source, indices


def _settings(args, info: dict, model: str) -> dict:
    from vidiff.pipelines.folder import read_scheduler_config
    from vidiff.pipelines.schedulers import max_inference_steps
    from vidiff.pipelines.text_to_video import resolve_settings

    try:
        schedule = read_scheduler_config(Path(model) / "scheduler")
        return resolve_settings(info, max_steps=max_inference_steps(schedule), num_frames=args.num_frames,
                                height=args.height, width=args.width, num_inference_steps=args.steps,
                                guidance_scale=args.guidance)
    except (ValueError, FileNotFoundError) as e:
        raise CLIError(in_flag_names(str(e), SETTING_NAMES)) from None


def output_paths(out: Path, count: int) -> list[Path]:
    """`out` for one prompt; out-000.mp4, out-001.mp4, ... (prompt order) for several."""
    from vidiff.cli.common import numbered_paths

    return numbered_paths(out, count)


def _check_outputs(args, count: int) -> list[Path]:
    # the clips, their sidecars and contact sheets: existing ones only with --overwrite
    out = check_video_output(args.out, args.video, count, contact_sheet=args.contact_sheet, overwrite=args.overwrite)
    paths = output_paths(out, count)
    if args.save_tuned is not None:
        from vidiff.pipelines.folder import INFO_NAME
        from vidiff.utils import check_replaceable

        try:
            check_replaceable(Path(args.save_tuned), lambda p: (p / INFO_NAME).is_file(),
                              f"a vidiff pipeline folder (no {INFO_NAME})", "choose a new --save-tuned folder")
        except (ValueError, FileExistsError) as e:
            raise CLIError(f"--save-tuned: {e}") from None
    return paths


def run(args) -> int:
    from vidiff.pipelines.folder import read_info

    # Every check before the model loads: a typo costs no time.
    prompts = list(args.prompt or [])
    if not prompts or not all(p.strip() for p in prompts):
        raise CLIError("no prompt: pass --prompt \"what the video should show\" (repeat for several)")
    method = _method(args)
    _check_numbers(args, method)
    model = _model_dir(args)
    info = read_info(model)
    if info.get("stage", "base") != "base":
        raise CLIError(f"--model {model!r} is a {info['stage']} stage; editing needs a text-to-video base model")
    settings = _settings(args, info, model)
    source, indices = _check_video(args, settings["num_frames"])
    paths = _check_outputs(args, len(prompts))
    cache = None
    if args.cache_inversion:
        from vidiff.pipelines.editing import InversionCache

        cache = InversionCache.beside(paths[0] if len(paths) == 1 else Path(args.out))
        try:
            cache.check_writable()
        except ValueError as e:
            raise CLIError(f"--cache-inversion: {e}") from None
    device = check_device(args.device)
    dtype = args.dtype or ("fp32" if method == "tune" and args.tuned is None else None)
    seed = seed_or_random(args.seed)
    return _edit(args, model, method, prompts, settings, source, indices, paths, cache, device, dtype, seed)


def _read_clip(args, source, indices, height: int, width: int):
    from vidiff.data.datasets import cover_size
    from vidiff.data.video_io import VideoReadError, read_video
    from vidiff.pipelines.editing import fit_frames

    try:
        clip = read_video(args.video, indices=indices, size=cover_size(source.height, source.width, height, width))
    except VideoReadError as e:
        raise CLIError(f"--video {args.video!r}: {e.reason}") from None
    return fit_frames(clip.frames, height, width)


def _edit(args, model, method, prompts, settings, source, indices, paths, cache, device, dtype, seed) -> int:
    import time

    import numpy as np

    import vidiff
    from vidiff.pipelines.editing import check_edit_options, clip_hash, edit_video, model_fingerprint, save_tuned
    from vidiff.pipelines.text_to_video import VideoPipeline, to_uint8

    cross_frame = check_edit_options(method, args.cross_frame)
    height, width = settings["height"], settings["width"]
    frames = _read_clip(args, source, indices, height, width)
    quiet_loading(args.quiet)
    pipe = VideoPipeline.from_pretrained(model, device=device, dtype=dtype)
    start = time.perf_counter()
    tune_steps = args.tune_steps if method == "tune" and args.tuned is None else 0
    key = {"clip": clip_hash(frames), "model": model_fingerprint(model), "dtype": str(pipe.dtype),
           "device": pipe.device.type}
    result = edit_video(pipe, frames, prompts, source_prompt=args.source_prompt, method=method,
                        cross_frame=cross_frame, num_inference_steps=settings["num_inference_steps"],
                        guidance_scale=settings["guidance_scale"], negative_prompt=args.negative, seed=seed,
                        strength=args.strength, tune_steps=tune_steps, tune_lr=args.tune_lr, cache=cache,
                        cache_key=key, progress=not args.quiet)
    seconds = time.perf_counter() - start
    fps = args.fps if args.fps is not None else (source.fps / (args.stride or 1))
    record = {"command": "edit", "input": str(Path(args.video).resolve()), "model": str(Path(model).resolve()),
              "method": method, "source_prompt": args.source_prompt, "negative_prompt": args.negative,
              "cross_frame": cross_frame, "strength": args.strength, "seed": seed,
              "num_inference_steps": settings["num_inference_steps"], "guidance_scale": settings["guidance_scale"],
              "scheduler": "ddim", "tune_steps": tune_steps, "tune_lr": args.tune_lr if tune_steps else None,
              "tuned_model": str(Path(args.tuned).resolve()) if args.tuned else None,
              "reconstruction_loss": result.reconstruction_loss,
              "input_frames": [int(i) for i in indices], "input_fps": source.fps, "start": args.start,
              "stride": args.stride, "fps": fps, "num_frames": len(indices), "height": height, "width": width,
              "inversion": None if args.strength is not None else ("cached" if result.inversion_cached else "computed"),
              "inversion_cache": str(cache.path) if cache is not None else None,
              "side_by_side": args.side_by_side, "device": str(pipe.device),
              "dtype": str(pipe.dtype).replace("torch.", ""), "vidiff_version": vidiff.__version__,
              "seconds": {k: round(v, 3) for k, v in result.timings.items()}, "total_seconds": round(seconds, 3)}
    for path, prompt, video in zip(paths, prompts, result.videos):
        edited = to_uint8(video[0])
        out_frames = np.concatenate([frames, edited], axis=2) if args.side_by_side else edited
        written = write_outputs(path, out_frames, fps, dict(record, prompt=prompt), contact_sheet=args.contact_sheet,
                                overwrite=args.overwrite)
        print(f"wrote {', '.join(str(p) for p in written)} ({len(out_frames)} frames, {out_frames.shape[2]}x"
              f"{out_frames.shape[1]}, {fps:g} fps, {method}, seed {seed}, {prompt!r})")
    if args.save_tuned is not None:
        saved = save_tuned(pipe, args.save_tuned, {"video": str(Path(args.video).resolve()), "clip": key["clip"],
                                                   "source_prompt": args.source_prompt, "tune_steps": tune_steps,
                                                   "tune_lr": args.tune_lr, "seed": seed})
        print(f"wrote {saved} (the model tuned on {args.video}; reuse it with --tuned {saved})")
    return 0
