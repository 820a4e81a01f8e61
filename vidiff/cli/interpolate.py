"""`vidiff interpolate`: raise a clip's frame rate with an interpolation or TSR stage."""
from __future__ import annotations

import argparse

from vidiff.cli import stage_io
from vidiff.cli.common import CLIError
from vidiff.spec import TEMPORAL_STAGES


def add_parser(sub):
    p = sub.add_parser(
        "interpolate", help="raise a clip's frame rate with an interpolation or TSR stage",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Make the frames between the frames of a clip. An interpolation stage (Make-A-Video) turns n "
                    "frames into (n - 1) x K + 1, the input frames kept exactly; a TSR stage (Imagen Video) turns "
                    "them into n x K. The output's fps is the input's x K; a JSON sidecar records every setting.",
        epilog="examples:\n"
               "  vidiff interpolate --model runs/interpolation/pipeline --video in.mp4 --factor 4 --out out.mp4\n"
               "  vidiff interpolate --model M --video in.mp4 --prompt \"a red circle\" --steps 25 --seed 1 "
               "--out out.mp4\n"
               "\nlong clips go through overlapping windows of the stage's trained length.")
    stage_io.add_common_arguments(p)
    p.add_argument("--factor", type=int, default=None,
                   help="frame-rate factor K (default: the stage's first; see its vidiff.json stage_options)")
    return p


def run(args) -> int:
    from vidiff.pipelines.cascade import check_factor, interpolate_video, stage_name, stage_output_size

    stage_io.use_demo_model(args, "interpolation")
    info = stage_io.read_stage_info(args.model, TEMPORAL_STAGES, "interpolate")
    try:
        factor = check_factor(info, args.factor, f"--model {args.model}")
    except ValueError as e:
        raise CLIError(str(e).replace("factor", "--factor", 1)) from None
    source = stage_io.probe_input(args)
    try:
        stage_output_size(info, (source.num_frames, source.height, source.width), factor=factor,
                          where=f"--model {args.model}")
    except ValueError as e:
        raise CLIError(f"--video {args.video}: {e}") from None

    def sample(pipe, frames, settings: dict, seed: int):
        video = interpolate_video(pipe, frames, args.prompt, factor=factor, seed=seed, negative_prompt=args.negative,
                                  progress=not args.quiet, **settings)
        fields = {"command": "interpolate", "stage": stage_name(info), "factor": factor, "input_fps": source.fps}
        return video, source.fps * factor, fields, f"{len(frames)} frames x{factor} ({stage_name(info)})"

    return stage_io.sample_and_write(args, info, sample)
