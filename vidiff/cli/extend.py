"""`vidiff extend`: continue a clip with an interpolation stage's future-prediction masks."""
from __future__ import annotations

import argparse
import sys
import time

import numpy as np
import torch

from vidiff import demo
from vidiff.cli import stage_io
from vidiff.cli.common import (ClipOutputs, CLIError, check_device, check_flag, check_size, check_video_output,
                               flag_error, quiet_loading, seed_or_random)
from vidiff.data.video_io import iter_chunks, read_frames
from vidiff.pipelines import cascade
from vidiff.pipelines.text_to_video import VideoPipeline, as_video, to_uint8
from vidiff.stages.cascade import check_pixels
from vidiff.stages.conditions import spatial_downsample
from vidiff.utils import plural


def add_parser(sub, help_text: str):
    p = sub.add_parser(
        "extend", help=help_text, formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Continue a clip by N frames: chunk by chunk, the last frames are given to an interpolation "
                    "stage as the known past (the MCVD-style future-prediction masks it was trained with) and the "
                    "next frame (--new-frames-per-chunk) is generated. The input frames are kept exactly; the fps "
                    "stays the input's.",
        epilog="examples:\n"
               "  vidiff extend --model runs/interpolation/pipeline --video in.mp4 --frames 16 --out out.mp4\n"
               "  vidiff extend --model M --video in.mp4 --frames 8 --context-frames 4 --new-frames-per-chunk 5 "
               "--seed 3 --out out.mp4   (faster: 5 new frames a window)")
    stage_io.add_stage_options(p)
    stage_io.add_chunk_option(p)
    p.add_argument("--frames", type=int, required=True, metavar="N", help="number of new frames to add")
    p.add_argument("--context-frames", type=int, default=None, metavar="C",
                   help="the most known frames per chunk (default: what the stage's window holds beside the new ones)")
    p.add_argument("--new-frames-per-chunk", type=int, default=1, metavar="K",
                   help="new frames generated per chunk (default: %(default)s, each next to known frames; more is "
                        "faster and less coherent)")
    return p


def run(args) -> int:
    # an interpolation or tsr stage runs under `vidiff interpolate`; the stage itself says whether it extends
    model, source = stage_io.resolve_stage(args, "extend", demo_stage=demo.extension_model(), runs="interpolate")
    try:
        context = model.stage.check_extension(model.info, source.num_frames, args.frames, args.context_frames,
                                               args.new_frames_per_chunk)
    except ValueError as e:
        raise flag_error(e) from None
    try:
        check_pixels(model.info, source.height, source.width, f"--model {model.path}")
    except ValueError as e:
        raise CLIError(f"--video {args.video}: {e}") from None
    chunk = check_flag("chunk_frames", args.chunk_frames)
    check_size([("--video", source.num_frames, source.height, source.width),
                ("the extended clip", source.num_frames + args.frames, source.height, source.width)], args.allow_large,
               held=min(1.0, max(chunk, context + args.frames) / (source.num_frames + args.frames)))
    fields = {"command": "extend", "stage": model.info.stage, "new_frames": args.frames, "context_frames": context,
              "new_frames_per_chunk": args.new_frames_per_chunk, "input_fps": source.fps}
    upscaled = source.num_frames <= chunk and demo_cascade_size(model, source)
    if upscaled:
        print(f"extend: --video {args.video} is the demo cascade's {source.width}x{source.height}: the demo stage "
              f"extends it at its own {source.width // 2}x{source.height // 2} and the demo's SSR stage enlarges the "
              "new frames", file=sys.stderr)
        fields["upscaled_by"] = str(demo.model_dir("ssr"))
    else:
        stage_io.warn_untrained_size(args, model, source)
    if source.num_frames > chunk:
        return stream_and_extend(args, model, source, context, chunk, dict(fields, chunk_frames=chunk))

    def sample(pipe, frames, settings: dict, seed: int):
        options = dict(num_frames=args.frames, context_frames=context, new_per_chunk=args.new_frames_per_chunk,
                       seed=seed, negative_prompt=args.negative, progress=not args.quiet,
                       allow_large=args.allow_large)
        if not upscaled:
            video = cascade.extend_video(pipe, frames, args.prompt, **options, **settings)
        else:  # as the cascade makes its clips: the stage at its size, then the SSR stage
            given = as_video(frames, pipe.device)
            small = cascade.extend_video(pipe, spatial_downsample(given, 2), args.prompt, **options, **settings)
            ssr = VideoPipeline.from_pretrained(demo.model_dir("ssr"), device=pipe.device, dtype=pipe.dtype)
            new = cascade.upscale_video(ssr, small[:, :, len(frames):], args.prompt, seed=seed,
                                        negative_prompt=args.negative, progress=not args.quiet)
            video = torch.cat([given.to(new.device, new.dtype), new], dim=2)
        return video, source.fps, fields, f"{plural(len(frames), 'frame')} + {args.frames}"

    return stage_io.sample_and_write(args, model, sample)


def demo_cascade_size(model, source) -> bool:
    """The built-in demo stage given a clip of the demo cascade's output size (twice the stage's trained size, as
    `vidiff generate` writes): extended at the stage's size and enlarged by the demo's SSR stage, which keeps the
    shapes the stage loses at a size it never saw."""
    trained = model.stage.input_size(model.info)
    return bool(model.demo and trained is not None and demo.installed("ssr")
                and (source.height, source.width) == (2 * trained[0], 2 * trained[1]))


def stream_and_extend(args, model, source, context: int, chunk: int, record: dict) -> int:
    """`extend` of an input longer than --chunk-frames: only its last `context` frames are decoded for the
    stage (all it reads), the input is copied to the output chunk by chunk, then the new frames follow; the
    result is the whole-input extension's, frame for frame."""
    settings = stage_io.stage_settings(model)
    out = check_video_output(args.out, args.video, overwrite=args.overwrite, **stage_io.extras(args))
    seed = seed_or_random(args.seed)
    device = check_device(args.device)
    n = source.num_frames
    quiet_loading(args.quiet)
    tail = read_frames(args.video, source, indices=np.arange(max(0, n - context), n)).frames
    stage_io.warn_off_domain(args, model, tail)
    pipe = VideoPipeline.from_pretrained(model.path, device=device, dtype=args.dtype)
    start = time.perf_counter()
    video = cascade.extend_video(pipe, tail, args.prompt, num_frames=args.frames, context_frames=context,
                                 new_per_chunk=args.new_frames_per_chunk, seed=seed, negative_prompt=args.negative,
                                 progress=not args.quiet, allow_large=args.allow_large, **settings)
    new = to_uint8(video[0])[len(tail):]
    total = n + args.frames
    with ClipOutputs(out, source.fps, overwrite=args.overwrite, total=total, **stage_io.extras(args)) as clip:
        for frames in iter_chunks(args.video, source, chunk):
            clip.write(frames)
        clip.write(new)
        sidecar = {**record, "seed": seed, "input_frames": n, **settings,
                   "seconds": round(time.perf_counter() - start, 3)}
        paths = clip.publish(stage_io.clip_record(args, pipe, sidecar, source.fps,
                                                  (total, source.height, source.width)))
    print(f"wrote {', '.join(str(p) for p in paths)}: {plural(n, 'frame')} + {args.frames} (input copied "
          f"{chunk} frames at a time) -> {plural(total, 'frame')} {source.width}x{source.height} @ {source.fps:g} "
          f"fps (seed {seed})")
    return 0
