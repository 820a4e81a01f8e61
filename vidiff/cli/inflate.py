"""`vidiff inflate`: turn a Stable Diffusion checkpoint into a vidiff video pipeline folder."""
from __future__ import annotations

import argparse
from pathlib import Path

from vidiff.cli.common import CLIError, check_flag, check_source, check_writable, flag_error
from vidiff.spec import CROSS_FRAME_MODES, STAGE_NAMES, TEMPORAL_LAYOUTS, TEMPORAL_POSITIONS, read_info
from vidiff.stages import STAGES
from vidiff.stages.folder import check_inflate_stage, fresh_stage, inflate_stage, is_upscaler_folder
from vidiff.utils import plural


def add_parser(sub, help_text: str):
    p = sub.add_parser(
        "inflate", help=help_text, formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Inflate a Stable Diffusion pipeline into a video pipeline folder: the U-Net gains temporal "
                    "convolutions and attention that start as the identity (so the folder samples each frame as "
                    "the image model does until trained); VAE, text encoder, tokenizer and noise schedule are kept.",
        epilog="examples:\n"
               "  vidiff inflate --base ./stable-diffusion-v1-5 --out models/sd15-video\n"
               "  vidiff inflate --base stable-diffusion-v1-5/stable-diffusion-v1-5 --out models/sd15-video --cross-frame first\n"
               "  vidiff inflate --base v1-5-pruned.safetensors --config ./sd15-configs --out models/sd15-video\n"
               "  vidiff inflate --stage interpolation --base ./stable-diffusion-v1-5 --out models/interp --factor 4\n"
               "  vidiff inflate --stage ssr --base ./stable-diffusion-x4-upscaler --out models/x4-video\n"
               "  vidiff inflate --base ./stable-diffusion-v1-5 --motion-module mm_sd_v15_v2.ckpt --out models/animatediff\n"
               "  vidiff inflate --base ./stable-diffusion-v1-5 --motion-module guoyww/animatediff-motion-adapter-v1-5-3 --out models/ad3\n"
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
    p.add_argument("--temporal-layout", choices=TEMPORAL_LAYOUTS, default=None,
                   help="vidiff: a temporal conv after every resnet + a temporal attention after every transformer; "
                        "animatediff: AnimateDiff's motion modules (untrained, identity-initialised, unless "
                        "--motion-module gives trained ones) (default: vidiff, or animatediff with --motion-module)")
    p.add_argument("--motion-module", metavar="MM", default=None,
                   help="trained AnimateDiff motion modules: a diffusers MotionAdapter folder or hub id, or an "
                        "original mm_sd_v15*.ckpt / .safetensors (v1, v2, v3); implies --temporal-layout animatediff")
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
    out = Path(args.out)
    check_flag("num_frames", args.num_frames)
    check_flag("fps", args.fps)
    _check_out(args, out)
    stage = STAGES[args.stage]
    try:
        _check_stage(args, stage)
    except ValueError as e:
        raise flag_error(e) from None
    layout = _check_layout(args)
    fps = int(args.fps) if float(args.fps).is_integer() else args.fps
    inflate_stage(args.base, out, args.stage, factor=args.factor, cross_frame=args.cross_frame,
                  temporal_layout=layout, motion_module=args.motion_module,
                  temporal_conv=False if args.no_temporal_conv else None,
                  temporal_attention=False if args.no_temporal_attention else None,
                  temporal_position=args.temporal_position, frame_embedding=args.frame_embedding,
                  coordinate_embedding=args.coordinate_embedding, config=args.config,
                  defaults={"num_frames": args.num_frames, "fps": fps})
    info = read_info(out)
    d = info.defaults
    if layout == "animatediff":
        layers = [f"motion modules ({'from ' + args.motion_module if args.motion_module else 'untrained'})"]
    else:
        layers = [name for name, on in (("temporal conv", not args.no_temporal_conv),
                                        ("temporal attention", not args.no_temporal_attention)) if on]
    kind = f"{info.stage} stage {info.stage_options}, " if stage.takes_video else ""
    print(f"wrote {out}/ (vidiff.json, unet/, {'vae/, ' if info.latent else ''}text_encoder/, tokenizer/, "
          f"scheduler/): {kind}{' + '.join(layers) or 'no temporal layers'}, cross-frame {args.cross_frame}, "
          f"defaults {plural(d.num_frames, 'frame')} {d.height}x{d.width} @ {d.fps} fps")
    return 0


def _check_layout(args) -> str:
    """The temporal layout asked for, its flags consistent, before anything loads."""
    layout = args.temporal_layout or ("animatediff" if args.motion_module else "vidiff")
    if args.motion_module and layout != "animatediff":
        raise CLIError("--motion-module loads AnimateDiff motion modules: it needs --temporal-layout animatediff "
                       "(or leave --temporal-layout out)")
    if layout == "animatediff":
        clashing = [flag for flag, on in (("--no-temporal-conv", args.no_temporal_conv),
                                          ("--no-temporal-attention", args.no_temporal_attention),
                                          ("--temporal-position", args.temporal_position != "qk")) if on]
        if clashing:
            raise CLIError(f"{', '.join(clashing)} apply to vidiff's temporal layout; the animatediff layout has "
                           "motion modules instead: leave them out")
    check_source(args.motion_module, "--motion-module")
    return layout


def _check_out(args, out: Path) -> None:
    """--out: new, or an earlier pipeline folder with --overwrite; never --base itself; writable."""
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


def _check_stage(args, stage) -> None:
    """What the stage asked for takes, before anything loads: its factor, its base, its window (num_frames)."""
    if not stage.takes_video:
        if args.factor is not None:
            raise CLIError("--factor applies to a cascade stage (--stage interpolation | tsr | ssr)")
        if is_upscaler_folder(args.base):
            raise CLIError(f"--base {args.base} is an SD x4 upscaler: it can only become an ssr stage (--stage ssr)")
        return
    if not check_inflate_stage(args.base, args.stage, args.factor):  # True: an SD x4 upscaler (its own window)
        fresh_stage(args.stage, args.factor).check_window(args.num_frames)
