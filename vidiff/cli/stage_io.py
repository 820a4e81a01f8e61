"""What `vidiff interpolate`, `extend` and `upscale` share: their flags, the checks they make before any model
loads (the stage, the input's size and length, the settings, the output path), running the stage on the input
and writing the clip with its sidecar.

An existing --out is replaced only with --overwrite (and never a folder); the sidecar (`out.json`) records every
setting, the input and the seed, so a run can be repeated.
"""
from __future__ import annotations

import itertools
import math
import sys
import time
from pathlib import Path

import vidiff
from vidiff import demo
from vidiff.cli.common import (CLIError, ClipOutputs, check_device, check_flag, check_size, check_video_output,
                               flag_error, input_sidecar_prompt, probe_video_arg, quiet_loading, seed_or_random,
                               write_outputs)
from vidiff.cli.options import (CLIP_EXTRAS, add_allow_large_option, add_device_options, add_output_options,
                                add_sampler_options, add_seed_option, group)
from vidiff.cli.resolve import Model, resolve_model
from vidiff.data.synthetic import SHAPES_BACKGROUND_SHARE, background_share
from vidiff.data.video_io import chunk_bounds, iter_chunks, read_video
from vidiff.pipelines import cascade
from vidiff.pipelines.text_to_video import VideoPipeline, to_uint8
from vidiff.progress import ProgressBar
from vidiff.utils import plural

CHUNK_FRAMES = 64  # interpolate / upscale stream inputs longer than this (--chunk-frames)


def add_stage_options(p, example_model: str = "runs/interpolation/pipeline") -> None:
    """The flags every command that runs a stage on a video takes."""
    p.add_argument("--model", default=None, metavar="DIR",
                   help=f"stage pipeline folder (e.g. {example_model}; default: the built-in demo stage)")
    p.add_argument("--video", required=True, metavar="PATH", help="input video (mp4, gif, webm, ...)")
    p.add_argument("--prompt", default=None,
                   help="text prompt (default: the prompt in the input's vidiff sidecar, e.g. clip.json beside "
                        "clip.mp4, when it has one; else none, and guidance is off; --prompt '' for none)")
    p.add_argument("--negative", default=None, metavar="TEXT", help="negative prompt (default: none)")
    add_sampler_options(p, guidance_help="classifier-free guidance, 1 = off (default: the model's with --prompt, "
                                         "else 1)")
    group(p, "sampling").add_argument(
        "--strength", type=float, default=None, metavar="S",
        help="start from the input's plain answer (the clip upsampled, the keyframes blended, the last frame held) "
             "noised this far up the schedule and run only that share of the steps, as img2img's denoising "
             "strength (e.g. --steps 8 --strength 0.25: 2 U-Net passes) (default: 1, from pure noise)")
    add_seed_option(p)
    add_allow_large_option(p)
    add_device_options(p)
    add_output_options(p, extras=CLIP_EXTRAS, overwrite_help="replace --out (its sidecar and extras) if it exists")


def add_chunk_option(p) -> None:
    """--chunk-frames: how interpolate / upscale / extend stream a long input."""
    p.add_argument("--chunk-frames", type=int, default=CHUNK_FRAMES, metavar="N",
                   help="an input longer than N frames is read and written N frames at a time, so memory holds one "
                        "chunk (interpolate / upscale sample it chunk by chunk; extend reads only its last frames "
                        "for the stage) (default: %(default)s; the sidecar records it)")


def resolve_stage(args, command: str, demo_stage: str, runs: str) -> tuple[Model, object]:
    """The stage model (`resolve_model`: --model or the demo `demo_stage`, a stage that `runs`) with its steps,
    guidance and scheduler, and the header of --video (`probe_input`)."""
    if args.prompt is None:
        found = input_sidecar_prompt(args.video)
        args.prompt = found[1] if found else ""
        if found:
            print(f"{command}: the prompt of {found[0]}: {found[1]!r} (--prompt '' for none)", file=sys.stderr)
    guidance = args.guidance if args.guidance is not None else (None if args.prompt else 1.0)
    model = resolve_model(args, command, demo_stage=demo_stage, runs=runs, prompts=[args.prompt],
                          num_inference_steps=args.steps, guidance_scale=guidance, scheduler=args.scheduler,
                          strength=args.strength)
    args.model = model.path
    return model, probe_input(args, model)


def probe_input(args, model: Model):
    """Frame count, fps and size of `--video` from its header (no decoding).

    A stage runs at the input's own size when its U-Net takes it (multiples of its factor; the stage checks),
    so `vidiff generate`'s clips of any size go in as they are; an input of another size than the stage was
    trained on gets one warning line. The built-in demo stages refuse inputs larger than the demo's largest
    clip (its cascade's output): a 512 px one would run for many minutes on what they never saw."""
    path = args.video
    video = probe_video_arg(path)
    if not (math.isfinite(video.fps) and video.fps > 0):
        raise CLIError(f"--video {path!r} has no frame rate in its header; re-encode it (e.g. ffmpeg -r 8)")
    if model.demo and video.height * video.width > math.prod(demo.largest_clip()):
        height, width = demo.largest_clip()
        raise CLIError(f"--video {path!r} is {video.width}x{video.height}; the built-in demo stages take clips up "
                       f"to the demo's {width}x{height} (resize it, e.g. ffmpeg -i IN -vf scale={width}:{height} "
                       "OUT.mp4), or pass --model DIR for a stage trained at your size")
    return video


def warn_untrained_size(args, model: Model, video) -> None:
    """One warning line when --video (checked to fit the model) is not the size the stage was trained on."""
    size, trained = (video.height, video.width), model.stage.input_size(model.info)
    if trained is not None and size != trained:
        what = "the built-in demo stage was trained on shapes clips of" if model.demo else \
            f"--model {model.path} was trained on inputs of"
        print(f"warning: --video {args.video} is {video.width}x{video.height}; {what} {trained[1]}x{trained[0]}: it "
              "runs at the input's size, slower and perhaps worse than on what it learned", file=sys.stderr)


def warn_off_domain(args, model: Model, frames) -> None:
    """One warning line when a built-in demo stage gets frames that are not from its shapes world (real video,
    other backgrounds): it runs, but on what it never saw."""
    if not model.demo:
        return
    share = background_share(frames)
    if share < SHAPES_BACKGROUND_SHARE:
        print(f"warning: --video {args.video} does not look like the shapes clips the built-in demo stages were "
              f"trained on (only {share:.0%} of its pixels are their plain dark background); expect poor output, "
              "or pass --model DIR for a stage trained on such clips", file=sys.stderr)


def stage_settings(model: Model) -> dict:
    """The sampling settings a stage run takes (and its sidecar records)."""
    s = model.settings
    return {"steps": s.num_inference_steps, "guidance": s.guidance_scale, "scheduler": s.scheduler,
            "strength": s.strength}


def run_on_video(args, command: str, demo_stage: str) -> int:
    """`vidiff interpolate` / `upscale`: the stage (its factor and noise level checked by the stage itself) on
    --video, after every check."""
    model, source = resolve_stage(args, command, demo_stage, runs=command)
    where = f"--model {model.path}"
    try:
        fields = model.stage.sidecar(getattr(args, "factor", None), getattr(args, "noise_level", None), where)
    except ValueError as e:
        raise flag_error(e) from None
    try:
        output = model.stage.output_size(model.info, (source.num_frames, source.height, source.width),
                                         fields["factor"], where)
    except ValueError as e:
        raise CLIError(f"--video {args.video}: {flag_error(e)}") from None
    chunk = check_flag("chunk_frames", args.chunk_frames)  # (>= 2: more than the frame chunks share)
    held = min(1.0, chunk / source.num_frames)
    # from the header: an 18,000-frame or 2048 px input is refused before a frame is decoded
    check_size([("--video", source.num_frames, source.height, source.width), ("the output", *output)],
               args.allow_large, held=held)
    warn_untrained_size(args, model, source)
    fps = source.fps * model.stage.frame_rate_factor(fields["factor"])
    record = {"command": command, "stage": model.info.stage, **fields, "input_fps": source.fps,
              "input_height": source.height, "input_width": source.width}
    if source.num_frames > chunk:
        return stream_and_write(args, model, source, fields, fps, dict(record, chunk_frames=chunk), chunk)

    def sample(pipe, frames, settings: dict, seed: int):
        video = cascade.run_stage(pipe, frames, args.prompt, seed=seed, negative_prompt=args.negative,
                                  progress=False if args.quiet else model.info.stage, allow_large=args.allow_large,
                                  **fields, **settings)
        summary = (f"{plural(len(frames), 'frame')} {source.width}x{source.height} x{fields['factor']} "
                   f"({model.info.stage})")
        return video, fps, record, summary

    return sample_and_write(args, model, sample)


def stream_and_write(args, model: Model, source, fields: dict, fps: float, record: dict, chunk: int) -> int:
    """`run_on_video` for an input longer than --chunk-frames: chunks read, sampled (one noise stream) and
    appended to the outputs one at a time (`cascade.run_stage_chunks`), published when the last is written."""
    settings = stage_settings(model)
    out = check_video_output(args.out, args.video, overwrite=args.overwrite, **extras(args))
    seed = seed_or_random(args.seed)
    device = check_device(args.device)
    bounds = chunk_bounds(source.num_frames, chunk, model.stage.chunk_overlap())
    total = model.stage.output_size(model.info, (source.num_frames, source.height, source.width), fields["factor"])

    quiet_loading(args.quiet)
    pipe = VideoPipeline.from_pretrained(model.path, device=device, dtype=args.dtype)
    start = time.perf_counter()
    chunks = iter_chunks(args.video, source, chunk, model.stage.chunk_overlap())
    first = next(chunks)
    warn_off_domain(args, model, first)
    chunks = itertools.chain([first], chunks)
    outputs = cascade.run_stage_chunks(pipe, chunks, args.prompt, seed=seed, negative_prompt=args.negative,
                                       progress=False, allow_large=args.allow_large, **fields, **settings)
    with ClipOutputs(out, fps, overwrite=args.overwrite, total=total[0], **extras(args)) as clip, \
            ProgressBar(total=len(bounds), desc=f"{model.info.stage} chunks", disable=args.quiet) as bar:
        written = 0
        for frames in outputs:
            clip.write(frames)
            written += len(frames)
            bar.update()
        sidecar = {**record, "seed": seed, "input_frames": source.num_frames, **settings, "chunks": len(bounds),
                   "unet_evaluations": model.settings.unet_evaluations,  # per chunk, as per window elsewhere
                   "seconds": round(time.perf_counter() - start, 3)}
        paths = clip.publish(clip_record(args, pipe, sidecar, fps, (written, *total[1:])))
    print(f"wrote {', '.join(str(p) for p in paths)}: {plural(source.num_frames, 'frame')} {source.width}x"
          f"{source.height} x{fields['factor']} ({model.info.stage}, {len(bounds)} chunks of <= {chunk}) -> "
          f"{plural(written, 'frame')} {total[2]}x{total[1]} @ {fps:g} fps (seed {seed})")
    return 0


def sample_and_write(args, model: Model, sample) -> int:
    """What the stage commands do once their own checks pass: --out, the seed and the device checked, the stage
    and the input loaded, `sample(pipe, frames, settings, seed) -> (video, fps, sidecar fields, summary)`
    timed, the clip and its sidecar written."""
    settings = stage_settings(model)
    out = check_video_output(args.out, args.video, overwrite=args.overwrite, **extras(args))
    seed = seed_or_random(args.seed)
    device = check_device(args.device)

    quiet_loading(args.quiet)
    frames = read_video(args.video).frames
    warn_off_domain(args, model, frames)
    pipe = VideoPipeline.from_pretrained(model.path, device=device, dtype=args.dtype)
    start = time.perf_counter()
    video, fps, fields, summary = sample(pipe, frames, settings, seed)
    sidecar = {**fields, "seed": seed, "input_frames": len(frames), **settings,
               "unet_evaluations": model.settings.unet_evaluations, "seconds": round(time.perf_counter() - start, 3)}
    write_result(args, pipe, out, video, fps, sidecar, summary)
    return 0


def extras(args) -> dict:
    """The extra formats asked for (--gif, --frames-dir, --contact-sheet) as `write_outputs` arguments."""
    return {"gif": args.gif, "frames_dir": args.frames_dir, "contact_sheet": args.contact_sheet}


def write_result(args, pipe, out: Path, video, fps: float, sidecar: dict, summary: str) -> None:
    """Write the clip (`video` `(1, 3, f, h, w)` in [-1, 1]) and its sidecar; print one line."""
    frames = to_uint8(video[0])
    record = clip_record(args, pipe, sidecar, fps, frames.shape[:3])
    written = write_outputs(out, frames, fps, record, overwrite=args.overwrite, **extras(args))
    print(f"wrote {', '.join(str(p) for p in written)}: {summary} -> {plural(frames.shape[0], 'frame')} "
          f"{frames.shape[2]}x{frames.shape[1]} @ {fps:g} fps (seed {sidecar['seed']})")


def clip_record(args, pipe, sidecar: dict, fps: float, shape) -> dict:
    """A stage command's JSON sidecar: the input, model and prompt, `sidecar`'s settings, the clip's
    `shape` (frames, height, width), device and version."""
    num_frames, height, width = (int(x) for x in shape)
    return {"input": str(Path(args.video).resolve()), "model": str(Path(args.model).resolve()),
            "prompt": args.prompt, "negative_prompt": args.negative, **sidecar, "fps": fps,
            "num_frames": num_frames, "height": height, "width": width,
            "device": str(pipe.device), "dtype": str(pipe.dtype).replace("torch.", ""),
            "vidiff_version": vidiff.__version__}
