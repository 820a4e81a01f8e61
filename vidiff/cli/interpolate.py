"""`vidiff interpolate`: raise a clip's frame rate with an interpolation or TSR stage."""
from __future__ import annotations

import argparse

from vidiff.cli import stage_io


def add_parser(sub, help_text: str):
    p = sub.add_parser(
        "interpolate", help=help_text, formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Make the frames between the frames of a clip. An interpolation stage (Make-A-Video) turns n "
                    "frames into (n - 1) x K + 1, the input frames kept exactly; a TSR stage (Imagen Video) turns "
                    "them into n x K. The output's fps is the input's x K; a JSON sidecar records every setting.",
        epilog="examples:\n"
               "  vidiff interpolate --video clip.mp4 --out smooth.mp4   (no --model: the built-in demo stage)\n"
               "  vidiff interpolate --model runs/interpolation/pipeline --video in.mp4 --factor 4 --out out.mp4\n"
               "  vidiff interpolate --model M --video in.mp4 --prompt \"a red circle\" --steps 25 --seed 1 "
               "--out out.mp4\n"
               "\nlong clips go through overlapping windows of the stage's trained length.")
    stage_io.add_stage_options(p)
    stage_io.add_chunk_option(p)
    p.add_argument("--factor", type=int, default=None,
                   help="frame-rate factor K (default: the stage's first; see its vidiff.json stage_options)")
    return p


def run(args) -> int:
    return stage_io.run_on_video(args, "interpolate", demo_stage="interpolation")
