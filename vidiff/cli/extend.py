"""`vidiff extend`: continue a clip with an interpolation stage's future-prediction masks."""
from __future__ import annotations

import argparse

from vidiff.cli import stage_io
from vidiff.cli.common import CLIError, check_size, flag_error
from vidiff.pipelines import cascade
from vidiff.stages.cascade import check_pixels
from vidiff.utils import plural


def add_parser(sub, help_text: str):
    p = sub.add_parser(
        "extend", help=help_text, formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Continue a clip by N frames: chunk by chunk, the last frames are given to an interpolation "
                    "stage as the known past (the MCVD-style future-prediction masks it was trained with) and the "
                    "rest of its window is generated. The input frames are kept exactly; the fps stays the input's.",
        epilog="examples:\n"
               "  vidiff extend --model runs/interpolation/pipeline --video in.mp4 --frames 16 --out out.mp4\n"
               "  vidiff extend --model M --video in.mp4 --frames 8 --context-frames 4 --seed 3 --out out.mp4")
    stage_io.add_stage_options(p)
    p.add_argument("--frames", type=int, required=True, metavar="N", help="number of new frames to add")
    p.add_argument("--context-frames", type=int, default=None, metavar="C",
                   help="known frames per chunk (default: half the stage's window)")
    return p


def run(args) -> int:
    # an interpolation or tsr stage runs under `vidiff interpolate`; the stage itself says whether it extends
    model, source = stage_io.resolve_stage(args, "extend", demo_stage="interpolation", runs="interpolate")
    try:
        context = model.stage.check_extension(model.info, source.num_frames, args.frames, args.context_frames)
    except ValueError as e:
        raise flag_error(e) from None
    try:
        check_pixels(model.info, source.height, source.width, f"--model {model.path}")
    except ValueError as e:
        raise CLIError(f"--video {args.video}: {e}") from None
    check_size([("--video", source.num_frames, source.height, source.width),
                ("the extended clip", source.num_frames + args.frames, source.height, source.width)], args.allow_large)
    stage_io.warn_untrained_size(args, model, source)

    def sample(pipe, frames, settings: dict, seed: int):
        video = cascade.extend_video(pipe, frames, args.prompt, num_frames=args.frames, context_frames=context,
                                     seed=seed, negative_prompt=args.negative, progress=not args.quiet,
                                     allow_large=args.allow_large, **settings)
        fields = {"command": "extend", "stage": model.info.stage, "new_frames": args.frames,
                  "context_frames": context, "input_fps": source.fps}
        return video, source.fps, fields, f"{plural(len(frames), 'frame')} + {args.frames}"

    return stage_io.sample_and_write(args, model, sample)
