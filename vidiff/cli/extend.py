"""`vidiff extend`: continue a clip with an interpolation stage's future-prediction masks."""
from __future__ import annotations

import argparse

from vidiff.cli import stage_io
from vidiff.cli.common import CLIError


def add_parser(sub):
    p = sub.add_parser(
        "extend", help="add frames after a clip with an interpolation stage",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Continue a clip by N frames: chunk by chunk, the last frames are given to an interpolation "
                    "stage as the known past (the MCVD-style future-prediction masks it was trained with) and the "
                    "rest of its window is generated. The input frames are kept exactly; the fps stays the input's.",
        epilog="examples:\n"
               "  vidiff extend --model runs/interpolation/pipeline --video in.mp4 --frames 16 --out out.mp4\n"
               "  vidiff extend --model M --video in.mp4 --frames 8 --context-frames 4 --seed 3 --out out.mp4")
    stage_io.add_common_arguments(p)
    p.add_argument("--frames", type=int, required=True, metavar="N", help="number of new frames to add")
    p.add_argument("--context-frames", type=int, default=None, metavar="C",
                   help="known frames per chunk (default: half the stage's window)")
    return p


def run(args) -> int:
    from vidiff.pipelines.cascade import check_pixels, check_extension, extend_video

    stage_io.use_demo_model(args, "interpolation")
    info = stage_io.read_stage_info(args.model, ("interpolation",), "extend")
    source = stage_io.probe_input(args)
    try:
        context = check_extension(info, source.num_frames, args.frames, args.context_frames)
    except ValueError as e:
        message = str(e).replace("the number of new frames", "--frames").replace("context frames", "--context-frames")
        raise CLIError(message) from None
    try:
        check_pixels(info, source.height, source.width, f"--model {args.model}")
    except ValueError as e:
        raise CLIError(f"--video {args.video}: {e}") from None

    def sample(pipe, frames, settings: dict, seed: int):
        video = extend_video(pipe, frames, args.prompt, num_frames=args.frames, context_frames=context, seed=seed,
                             negative_prompt=args.negative, progress=not args.quiet, **settings)
        fields = {"command": "extend", "stage": "interpolation", "new_frames": args.frames,
                  "context_frames": context, "input_fps": source.fps}
        return video, source.fps, fields, f"{len(frames)} frames + {args.frames}"

    return stage_io.sample_and_write(args, info, sample)
