"""`vidiff inflate`: turn a Stable Diffusion checkpoint into a vidiff video pipeline folder."""
from __future__ import annotations

import argparse

from vidiff.cli.common import MAX_FPS, MAX_FRAMES, MIN_FPS, CLIError, check_number, check_writable
from vidiff.spec import CROSS_FRAME_MODES, STAGE_NAMES, TEMPORAL_POSITIONS


def add_parser(sub):
    p = sub.add_parser(
        "inflate", help="turn a Stable Diffusion checkpoint into a vidiff video pipeline folder",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Inflate a Stable Diffusion pipeline into a video pipeline folder: the U-Net gains temporal "
                    "convolutions and attention that start as the identity (so the folder samples each frame as "
                    "the image model does until trained); VAE, text encoder, tokenizer and noise schedule are kept.",
        epilog="examples:\n"
               "  vidiff inflate --base ./stable-diffusion-v1-5 --out models/sd15-video\n"
               "  vidiff inflate --base stable-diffusion-v1-5/stable-diffusion-v1-5 --out models/sd15-video --cross-frame first\n"
               "  vidiff inflate --base v1-5-pruned.safetensors --config ./sd15-configs --out models/sd15-video\n"
               "  vidiff inflate --stage interpolation --base ./stable-diffusion-v1-5 --out models/interp --factor 4\n"
               "  vidiff inflate --stage ssr --base ./stable-diffusion-x4-upscaler --out models/x4-video\n"
               "\nthen: vidiff generate --model models/sd15-video --prompt \"a cat running\" --out clip.mp4\n"
               "a cascade stage (--stage) starts as its base model (zero-initialised condition channels); train it\n"
               "with `vidiff train configs/train/STAGE.yaml model.pretrained=DIR`.")
    p.add_argument("--base", required=True, metavar="SD",
                   help="diffusers SD pipeline folder, hub id (when online), or single-file .safetensors/.ckpt")
    p.add_argument("--out", required=True, metavar="DIR", help="pipeline folder to write")
    p.add_argument("--config", metavar="DIR", default=None,
                   help="for a single-file --base: a local diffusers SD pipeline folder with its configs")
    p.add_argument("--cross-frame", choices=CROSS_FRAME_MODES, default="none",
                   help="spatial self-attention across frames (default: %(default)s)")
    p.add_argument("--no-temporal-conv", action="store_true", help="do not add temporal convolutions")
    p.add_argument("--no-temporal-attention", action="store_true", help="do not add temporal attention layers")
    p.add_argument("--temporal-position", choices=TEMPORAL_POSITIONS, default="qk",
                   help="where temporal attention adds frame positions: queries and keys, or values too "
                        "(AnimateDiff's form) (default: %(default)s)")
    p.add_argument("--frame-embedding", action="store_true",
                   help="add each frame's index to its timestep embedding (zero-initialised), so every block, not "
                        "only temporal attention, knows which frame it draws")
    p.add_argument("--coordinate-embedding", action="store_true",
                   help="add each pixel's position to the features after conv_in (zero-initialised): convolutions "
                        "and SD's attention carry no absolute position")
    p.add_argument("--num-frames", type=int, default=16,
                   help="default clip length / temporal window written to vidiff.json (default: %(default)s)")
    p.add_argument("--fps", type=float, default=8, help="default frame rate written to vidiff.json (default: %(default)s)")
    p.add_argument("--stage", choices=STAGE_NAMES, default="base",
                   help="what the folder is: a text-to-video base, or a cascade stage with extra condition channels "
                        "(ssr also takes an SD x4 upscaler folder, keeping its conditioning) (default: %(default)s)")
    p.add_argument("--factor", type=int, default=None,
                   help="stage factor: interpolation: the one mask factor to train (default 2 and 4); tsr: frame "
                        "rate (default 2); ssr: 2 or 4 (default 2; an x4 upscaler is 4)")
    p.add_argument("--overwrite", action="store_true", help="replace --out if it already exists")
    return p


def run(args) -> int:
    from pathlib import Path

    out = Path(args.out)
    check_number("--num-frames", args.num_frames, 1, MAX_FRAMES)
    check_number("--fps", args.fps, MIN_FPS, MAX_FPS, "frames per second")
    if out.exists() and not args.overwrite:
        raise CLIError(f"--out {str(out)!r} already exists; pass --overwrite to replace it or choose another folder")
    if Path(args.base).exists() and out.resolve() == Path(args.base).resolve():
        raise CLIError("--out must differ from --base")
    # --overwrite replaces an earlier pipeline folder, never a folder or file of something else (a typo in --out
    # must not delete a user's data).
    if out.exists() and not (out.is_dir() and ((out / "vidiff.json").is_file() or not any(out.iterdir()))):
        raise CLIError(f"--out {str(out)!r} exists and is not a vidiff pipeline folder (no vidiff.json); "
                       "--overwrite only replaces a pipeline folder: choose another --out")
    blocking = next((parent for parent in out.absolute().parents if parent.exists()), None)
    if blocking is not None and not blocking.is_dir():
        raise CLIError(f"--out {str(out)!r}: {str(blocking)!r} is a file, not a folder; choose another --out")
    check_writable(out)
    from vidiff.pipelines.folder import inflate_pipeline
    from vidiff.pipelines.stage_folder import default_stage_options, inflate_stage, is_upscaler_folder

    if args.stage == "base" and args.factor is not None:
        raise CLIError("--factor applies to a cascade stage (--stage interpolation | tsr | ssr)")
    upscaler = is_upscaler_folder(args.base)
    if upscaler and args.stage != "ssr":
        raise CLIError(f"--base {args.base} is an SD x4 upscaler: it can only become an ssr stage (--stage ssr)")
    if args.stage != "base" and not upscaler:
        default_stage_options(args.stage, args.factor)  # a bad --factor fails here, before loading
    if args.stage == "tsr" and args.num_frames % (args.factor or 2):
        raise CLIError(f"--num-frames {args.num_frames} must be a multiple of the tsr factor {args.factor or 2} "
                       "(the stage's window holds whole groups of repeated frames)")
    fps = int(args.fps) if float(args.fps).is_integer() else args.fps
    options = dict(cross_frame=args.cross_frame, temporal_conv=not args.no_temporal_conv,
                   temporal_attention=not args.no_temporal_attention, temporal_position=args.temporal_position,
                   frame_embedding=args.frame_embedding,
                   coordinate_embedding=args.coordinate_embedding, config=args.config,
                   defaults={"num_frames": args.num_frames, "fps": fps})
    if args.stage == "base":
        inflate_pipeline(args.base, out, **options)
    else:
        inflate_stage(args.base, out, args.stage, factor=args.factor, **options)
    from vidiff.pipelines.folder import read_info

    info = read_info(out)
    d = info["defaults"]
    layers = [name for name, on in (("temporal conv", not args.no_temporal_conv),
                                    ("temporal attention", not args.no_temporal_attention)) if on]
    stage = "" if args.stage == "base" else f"{args.stage} stage {info.get('stage_options')}, "
    print(f"wrote {out}/ (vidiff.json, unet/, {'vae/, ' if info['latent'] else ''}text_encoder/, tokenizer/, "
          f"scheduler/): {stage}{' + '.join(layers) or 'no temporal layers'}, cross-frame {args.cross_frame}, "
          f"defaults {d['num_frames']} frames {d['height']}x{d['width']} @ {d['fps']} fps")
    return 0


