"""`vidiff upscale`: raise a clip's resolution with an SSR stage."""
from __future__ import annotations

import argparse

from vidiff.cli import stage_io
from vidiff.cli.common import CLIError


def add_parser(sub):
    p = sub.add_parser(
        "upscale", help="raise a clip's resolution with a spatial super-resolution (SSR) stage",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Upscale a clip by the SSR stage's factor (x2 or x4): the clip, upsampled and noise-augmented "
                    "to --noise-level (as the SD x4 upscaler and Imagen do), conditions every frame's denoising. "
                    "The fps stays the input's; a JSON sidecar records every setting.",
        epilog="examples:\n"
               "  vidiff upscale --model runs/ssr/pipeline --video in.mp4 --out out.mp4\n"
               "  vidiff upscale --model models/x4-video --video in.mp4 --noise-level 50 --prompt \"a cat\" "
               "--out out.mp4\n"
               "\nhigher noise levels let the stage change more (sharper, less faithful); 0 trusts the input.")
    stage_io.add_common_arguments(p, example_model="runs/ssr/pipeline")
    p.add_argument("--noise-level", type=int, default=None, metavar="L",
                   help="augmentation level of the low-res condition (default: the stage's, usually 20)")
    return p


def run(args) -> int:
    from vidiff.pipelines.cascade import check_noise_level, stage_output_size, upscale_video

    stage_io.use_demo_model(args, "ssr")
    info = stage_io.read_stage_info(args.model, ("ssr",), "upscale")
    try:
        level = check_noise_level(info, args.noise_level, f"--model {args.model}")
    except ValueError as e:
        raise CLIError(str(e).replace("noise level", "--noise-level", 1)) from None
    source = stage_io.probe_input(args)
    try:
        _, height, _ = stage_output_size(info, (source.num_frames, source.height, source.width),
                                         where=f"--model {args.model}")
    except ValueError as e:
        raise CLIError(f"--video {args.video}: {e}") from None
    factor = height // source.height

    def sample(pipe, frames, settings: dict, seed: int):
        video = upscale_video(pipe, frames, args.prompt, noise_level=level, seed=seed, negative_prompt=args.negative,
                              progress=not args.quiet, **settings)
        fields = {"command": "upscale", "stage": "ssr", "factor": factor, "noise_level": level,
                  "input_height": source.height, "input_width": source.width}
        return video, source.fps, fields, f"{source.width}x{source.height} x{factor}"

    return stage_io.sample_and_write(args, info, sample)
