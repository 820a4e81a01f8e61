"""`vidiff upscale`: raise a clip's resolution with an SSR stage."""
from __future__ import annotations

import argparse

from vidiff.cli import stage_io


def add_parser(sub, help_text: str):
    p = sub.add_parser(
        "upscale", help=help_text, formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Upscale a clip by the SSR stage's factor (x2 or x4): the clip, upsampled and noise-augmented "
                    "to --noise-level (as the SD x4 upscaler and Imagen do), conditions every frame's denoising. "
                    "The fps stays the input's; a JSON sidecar records every setting.",
        epilog="examples:\n"
               "  vidiff upscale --video clip.mp4 --out big.mp4   (no --model: the built-in demo stage)\n"
               "  vidiff upscale --model runs/ssr/pipeline --video in.mp4 --out out.mp4\n"
               "  vidiff upscale --model models/x4-video --video in.mp4 --noise-level 50 --prompt \"a cat\" "
               "--out out.mp4\n"
               "\nhigher noise levels let the stage change more (sharper, less faithful); 0 trusts the input.")
    stage_io.add_stage_options(p, example_model="runs/ssr/pipeline")
    stage_io.add_chunk_option(p)
    p.add_argument("--noise-level", type=int, default=None, metavar="L",
                   help="augmentation level of the low-res condition (default: the stage's, usually 20)")
    return p


def run(args) -> int:
    return stage_io.run_on_video(args, "upscale", demo_stage="ssr")
