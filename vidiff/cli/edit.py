"""`vidiff edit`: redraw a video to a new prompt (Tune-A-Video one-shot tuning, or zero-shot cross-frame editing)."""
from __future__ import annotations

import argparse
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

import vidiff
from vidiff.cli.common import (CLIError, check_device, check_flag, check_size, check_video_output, numbered_paths,
                               probe_video_arg, quiet_loading, seed_or_random, write_outputs)
from vidiff.cli.controlnet import add_control_options, load_control, read_control_request
from vidiff.cli.options import (add_allow_large_option, add_compile_option, add_device_options, add_output_options,
                                add_sampler_options, add_seed_option, add_size_options, check_compile_flag, group)
from vidiff.cli.resolve import Model, resolve_model
from vidiff.data.datasets import cover_size
from vidiff.data.video_io import VideoReadError, clip_indices, read_video
from vidiff.pipelines import editing
from vidiff.pipelines.text_to_video import VideoPipeline, to_uint8
from vidiff.spec import CROSS_FRAME_MODES, INFO_NAME
from vidiff.training import tune
from vidiff.utils import check_replaceable, plural

EPILOG = """examples:
  vidiff edit --model models/sd15-video --video car-turn.mp4 --source-prompt "a car driving on a road" \\
      --prompt "a jeep driving on a road, snow" --method tune --tune-steps 300 --out jeep.mp4
  vidiff edit --model M --video swan.mp4 --prompt "a black swan" --prompt "a duck" --side-by-side --out swan.mp4
  vidiff edit --model M --video in.mp4 --prompt "a cat" --strength 0.6 --seed 3 --out cat.mp4
  vidiff edit --tuned tuned/car --video car-turn.mp4 --prompt "a red car" --out red.mp4
  vidiff edit --model M --video dance.mp4 --controlnet lllyasviel/sd-controlnet-canny --control canny \
      --prompt "a robot dancing" --out robot.mp4

--controlnet steers the edit with a ControlNet whose control images come from the clip itself (the same frames,
at the model's size), or from --control-video: the clip's structure kept, the prompt's content drawn (Gen-1).

several --prompt give out-000.mp4, out-001.mp4, ... (in prompt order), sharing one tuning and one inversion;
--cache-inversion keeps the inverted latents as out.inversion.safetensors (+ .json key) and reuses them
when the same clip, model and settings come back."""


def add_parser(sub, help_text: str):
    p = sub.add_parser(
        "edit", help=help_text, formatter_class=argparse.RawDescriptionHelpFormatter, epilog=EPILOG,
        description="Edit a video clip to one or more text prompts, keeping its layout and motion. The clip is "
                    "resized and centre-cropped to the model's size, DDIM-inverted with the source prompt (or "
                    "noised SDEdit-style with --strength), and sampled again with each target prompt. --method "
                    "tune first tunes the model on the clip (Tune-A-Video); zero-shot needs no training "
                    "(Text2Video-Zero's cross-frame attention). The output keeps the clip's fps; each gets a "
                    "JSON sidecar with every setting.")
    p.add_argument("--model", metavar="DIR", default=None,
                   help="vidiff pipeline folder (default: the built-in demo model, when installed)")
    p.add_argument("--tuned", metavar="DIR", default=None,
                   help="a model already tuned on this clip (from --save-tuned): no tuning, --method tune implied")
    p.add_argument("--video", required=True, metavar="PATH", help="input video (anything PyAV or decord reads)")
    p.add_argument("--prompt", action="append", default=None, help="target prompt (repeat for several outputs)")
    p.add_argument("--source-prompt", default="", metavar="TEXT",
                   help="what the input shows; inversion and tuning condition on it (default: the empty prompt)")
    p.add_argument("--negative", default=None, metavar="TEXT", help="negative prompt (default: none)")
    _add_edit_options(p)
    add_size_options(p, frames_help="frames taken from the clip (default: the model's)")
    add_sampler_options(p, scheduler=False, steps_help="DDIM steps for inversion and sampling (default: the model's)",
                        guidance_help="classifier-free guidance while sampling (default: the model's)")
    add_seed_option(p, "seed for tuning and SDEdit noise (default: random, recorded)")
    add_allow_large_option(p)
    _add_clip_options(group(p, "input clip"))
    add_device_options(p, dtype_help="default: fp32 for --method tune (AdamW on fp16 weights loses the updates), "
                                     "else fp16 on CUDA")
    add_compile_option(p)
    add_control_options(p)
    add_output_options(p, out_help="output clip, e.g. edited.mp4", extras=("contact-sheet",),
                       quiet_help="no progress bars")
    group(p, "output").add_argument("--side-by-side", action="store_true",
                                    help="write the input and the edit next to each other")
    return p


def _add_edit_options(p) -> None:
    p.add_argument("--method", choices=editing.EDIT_METHODS, default=None,
                   help="zero-shot (no training) or tune (Tune-A-Video) (default: zero-shot; tune with --tuned)")
    p.add_argument("--cross-frame", choices=[m for m in CROSS_FRAME_MODES if m != "none"], default=None,
                   help="attention across frames while inverting and sampling (default: first for zero-shot, "
                        "sparse-causal for tune)")
    p.add_argument("--strength", type=float, default=None,
                   help="SDEdit instead of inversion: noise the clip this far up the schedule, 0..1 (default: the "
                        "model's edit_strength, else invert)")
    p.add_argument("--inversion", action="store_true",
                   help="DDIM inversion even where the model's defaults suggest an SDEdit strength")
    p.add_argument("--tune-steps", type=int, default=300, help="tuning steps for --method tune (default: %(default)s)")
    p.add_argument("--tune-lr", type=float, default=3e-5, help="tuning learning rate (default: %(default)s)")
    p.add_argument("--save-tuned", metavar="DIR", default=None, help="keep the tuned model as a pipeline folder")
    p.add_argument("--cache-inversion", action="store_true",
                   help="keep / reuse the inverted latents beside --out (out.inversion.safetensors)")


def _add_clip_options(options) -> None:
    options.add_argument("--stride", type=int, default=None, help="take every S-th source frame (default: 1)")
    options.add_argument("--fps", type=float, default=None, help="sample the clip at this rate instead of --stride")
    options.add_argument("--start", type=int, default=0, help="first source frame (default: %(default)s)")


def run(args) -> int:
    # Every check before the model loads: a typo costs no time.
    prompts = list(args.prompt or [])
    if not prompts or not all(p.strip() for p in prompts):
        raise CLIError("no prompt: pass --prompt \"what the video should show\" (repeat for several)")
    method = _method(args)
    _check_options(args, method)
    if args.tuned is not None:
        if args.model is not None:
            raise CLIError("give --model or --tuned, not both (--tuned DIR is a model folder tuned on the clip)")
        args.model = args.tuned
    model = resolve_model(args, "edit", prompts=prompts + [args.source_prompt], num_frames=args.num_frames,
                          height=args.height, width=args.width, num_inference_steps=args.steps,
                          guidance_scale=args.guidance)
    model = _with_edit_defaults(args, model, method)
    source, indices = _check_video(args, model.settings.num_frames)
    control = read_control_request(args, model, clip=args.video)
    s = model.settings  # the clip, fitted to the model's size, and one edit of it per prompt, held together
    check_size([("the clip", len(indices), s.height, s.width), ("the edits", len(indices), s.height,
                s.width * (2 if args.side_by_side else 1), len(prompts))], args.allow_large)
    paths = _check_outputs(args, len(prompts))
    cache = None
    if args.cache_inversion:
        cache = editing.InversionCache.beside(paths[0] if len(paths) == 1 else Path(args.out))
        try:
            cache.check_writable()
        except ValueError as e:
            raise CLIError(f"--cache-inversion: {e}") from None
    cross_frame = editing.check_edit_options(method, args.cross_frame)
    device = check_device(args.device)
    check_compile_flag(args, device)
    dtype = args.dtype or ("fp32" if _tunes(args, method) else None)
    seed = seed_or_random(args.seed)

    frames = _read_clip(args, source, indices, model.settings.height, model.settings.width)
    if control is not None and control.images is None:  # the clip's own structure
        control = control.for_clip(frames, model.settings.height, model.settings.width)
    quiet_loading(args.quiet)
    pipe = VideoPipeline.from_pretrained(model.path, device=device, dtype=dtype)
    if args.compile:  # (with --method tune the tuning steps run compiled too: one more graph, with gradients)
        pipe.compile_unet()
    start = time.perf_counter()
    result, key = _edit(args, pipe, model, method, frames, prompts, cross_frame, cache, seed,
                        load_control(control, pipe, cross_frame))
    record = _record(args, model, method, cross_frame, seed, source, indices, cache, result, pipe)
    if control is not None:
        record.update(control.sidecar())
    record["total_seconds"] = round(time.perf_counter() - start, 3)
    _write(args, paths, prompts, frames, result, record)
    if args.save_tuned is not None:
        saved = editing.save_tuned(pipe, args.save_tuned, {
            "video": str(Path(args.video).resolve()), "clip": key["clip"], "source_prompt": args.source_prompt,
            "tune_steps": args.tune_steps, "tune_lr": args.tune_lr, "seed": seed})
        print(f"wrote {saved} (the model tuned on {args.video}; reuse it with --tuned {saved})")
    return 0


def _method(args) -> str:
    if args.tuned is not None:
        if args.method == "zero-shot":
            raise CLIError("--tuned DIR is a Tune-A-Video model: drop --method zero-shot (or use --model)")
        return "tune"
    return args.method or "zero-shot"


def _with_edit_defaults(args, model: Model, method: str) -> Model:
    """The folder's zero-shot edit defaults (vidiff.json `edit_strength` / `edit_guidance`, the measured best
    for that model) where the flags leave them unset; --inversion (or --cache-inversion) and Tune-A-Video keep
    DDIM inversion."""
    d = model.info.defaults
    if method == "zero-shot" and args.strength is None and not (args.inversion or args.cache_inversion):
        args.strength = d.edit_strength
    if args.guidance is None and d.edit_guidance is not None:
        model = replace(model, settings=replace(model.settings, guidance_scale=d.edit_guidance))
    return model


def _tunes(args, method: str) -> bool:
    """This run tunes the model on the clip (--method tune without an already --tuned model)."""
    return method == "tune" and args.tuned is None


def _check_options(args, method: str) -> None:
    """The flags' ranges (vidiff.spec's, as the Python API checks them) and their combinations."""
    check_flag("strength", args.strength)
    if _tunes(args, method):
        check_flag("tune_steps", args.tune_steps)
        check_flag("tune_learning_rate", args.tune_lr)
    if args.save_tuned is not None and not _tunes(args, method):
        raise CLIError("--save-tuned keeps a model tuned here: it needs --method tune (and no --tuned)")
    if args.inversion and args.strength is not None:
        raise CLIError("--inversion and --strength pick two ways of starting the edit; drop one")
    if args.cache_inversion and args.strength is not None:
        raise CLIError("--cache-inversion caches the DDIM inversion, which --strength (SDEdit) skips; drop one")
    if args.stride is not None and args.fps is not None:
        raise CLIError(f"give --stride or --fps, not both (got --stride {args.stride} --fps {args.fps})")
    check_flag("stride", args.stride)
    check_flag("fps", args.fps)
    check_flag("start", args.start)


def _check_video(args, num_frames: int):
    """Probe --video and check the clip fits in it (header only: no decoding, no model)."""
    source = probe_video_arg(args.video)
    if args.fps is not None and not source.fps:
        raise CLIError(f"--video {args.video!r} has no frame rate in its header, so --fps cannot apply; use --stride")
    try:
        indices = clip_indices(source.num_frames, num_frames, args.stride, args.fps, source.fps, args.start)
    except ValueError as e:
        raise CLIError(f"--video {args.video!r} is {e} (lower --num-frames / --stride or --start)") from None
    return source, indices


def _check_outputs(args, count: int) -> list[Path]:
    """The clips, their sidecars and contact sheets (existing ones only with --overwrite), and --save-tuned."""
    out = check_video_output(args.out, args.video, count, contact_sheet=args.contact_sheet, overwrite=args.overwrite)
    if args.save_tuned is not None:
        try:
            check_replaceable(Path(args.save_tuned), lambda p: (p / INFO_NAME).is_file(),
                              f"a vidiff pipeline folder (no {INFO_NAME})", "choose a new --save-tuned folder")
        except (ValueError, FileExistsError) as e:
            raise CLIError(f"--save-tuned: {e}") from None
    return numbered_paths(out, count)


def _read_clip(args, source, indices, height: int, width: int):
    try:
        clip = read_video(args.video, indices=indices, size=cover_size(source.height, source.width, height, width))
    except VideoReadError as e:
        raise CLIError(f"--video {args.video!r}: {e.reason}") from None
    return editing.fit_frames(clip.frames, height, width)


def _edit(args, pipe, model: Model, method: str, frames, prompts, cross_frame: str, cache, seed: int, control=None):
    """The edit (Tune-A-Video tuning first with --method tune) and its inversion cache key."""
    key = {"clip": editing.clip_hash(frames), "model": editing.model_fingerprint(model.path),
           "dtype": str(pipe.dtype), "device": pipe.device.type}
    options = dict(source_prompt=args.source_prompt, cross_frame=cross_frame,
                   num_inference_steps=model.settings.num_inference_steps,
                   guidance_scale=model.settings.guidance_scale, negative_prompt=args.negative, seed=seed,
                   strength=args.strength, cache=cache, cache_key=key, progress=not args.quiet, control=control)
    if _tunes(args, method):
        result = tune.tune_and_edit(pipe, frames, prompts, tune_steps=args.tune_steps, tune_lr=args.tune_lr,
                                    **options)
    else:
        result = editing.edit_video(pipe, frames, prompts, method=method, **options)
    return result, key


def _record(args, model: Model, method, cross_frame, seed, source, indices, cache, result, pipe) -> dict:
    """What every output's sidecar records (its prompt is added per output)."""
    tune_steps = args.tune_steps if _tunes(args, method) else 0
    s = model.settings
    return {"command": "edit", "input": str(Path(args.video).resolve()), "model": str(Path(model.path).resolve()),
            "method": method, "source_prompt": args.source_prompt, "negative_prompt": args.negative,
            "cross_frame": cross_frame, "strength": args.strength, "seed": seed,
            "num_inference_steps": s.num_inference_steps, "guidance_scale": s.guidance_scale, "scheduler": "ddim",
            "tune_steps": tune_steps, "tune_lr": args.tune_lr if tune_steps else None,
            "tuned_model": str(Path(args.tuned).resolve()) if args.tuned else None,
            "reconstruction_loss": result.reconstruction_loss,
            "input_frames": [int(i) for i in indices], "input_fps": source.fps, "start": args.start,
            "stride": args.stride, "fps": _output_fps(args, source), "num_frames": len(indices),
            "height": s.height, "width": s.width,
            "inversion": None if args.strength is not None else ("cached" if result.inversion_cached else "computed"),
            "inversion_cache": str(cache.path) if cache is not None else None,
            "side_by_side": args.side_by_side, "device": str(pipe.device),
            "dtype": str(pipe.dtype).replace("torch.", ""), "compile": args.compile, "vidiff_version": vidiff.__version__,
            "seconds": {k: round(v, 3) for k, v in result.timings.items()}}


def _output_fps(args, source) -> float:
    """The edit keeps the clip's time: its fps, or the rate it was sampled at (--fps, or fps / --stride)."""
    return args.fps if args.fps is not None else source.fps / (args.stride or 1)


def _write(args, paths, prompts, frames, result, record: dict) -> None:
    for path, prompt, video in zip(paths, prompts, result.videos):
        edited = to_uint8(video[0])
        out_frames = np.concatenate([frames, edited], axis=2) if args.side_by_side else edited
        written = write_outputs(path, out_frames, record["fps"], dict(record, prompt=prompt),
                                contact_sheet=args.contact_sheet, overwrite=args.overwrite)
        print(f"wrote {', '.join(str(p) for p in written)} ({plural(len(out_frames), 'frame')}, {out_frames.shape[2]}x"
              f"{out_frames.shape[1]}, {record['fps']:g} fps, {record['method']}, seed {record['seed']}, {prompt!r})")
