"""The `vidiff` command line: one parser-builder and one function per subcommand.

Heavy imports (torch, diffusers) happen inside the subcommand functions, so `vidiff --help` is instant.
Bad input exits non-zero with a one-line `vidiff <cmd>: error: ...` (set VIDIFF_DEBUG=1 for the traceback).
"""
from __future__ import annotations

import argparse
import os
import sys


class CLIError(Exception):
    """A user error: printed as one line, exit status 2."""


# ---------------------------------------------------------------------------------------------------------------
# vidiff inflate  (owner: pipeline)
# ---------------------------------------------------------------------------------------------------------------
def _add_inflate(sub):
    p = sub.add_parser("inflate", help="turn a Stable Diffusion checkpoint into a vidiff video pipeline folder")
    return p


def cmd_inflate(args) -> int:
    raise CLIError("inflate is not implemented yet")


# ---------------------------------------------------------------------------------------------------------------
# vidiff generate  (owner: pipeline)
# ---------------------------------------------------------------------------------------------------------------
def _add_generate(sub):
    p = sub.add_parser("generate", help="generate video clips from text prompts")
    return p


def cmd_generate(args) -> int:
    raise CLIError("generate is not implemented yet")


# ---------------------------------------------------------------------------------------------------------------
# vidiff train  (owner: training)
# ---------------------------------------------------------------------------------------------------------------
def _add_train(sub):
    p = sub.add_parser("train", help="fine-tune a video model (also under `accelerate launch -m vidiff train`)")
    return p


def cmd_train(args) -> int:
    raise CLIError("train is not implemented yet")


# ---------------------------------------------------------------------------------------------------------------
# vidiff data  (owner: data)
# ---------------------------------------------------------------------------------------------------------------
def _add_data(sub):
    p = sub.add_parser("data", help="datasets: synthetic shapes, latent caches",
                       formatter_class=argparse.RawDescriptionHelpFormatter,
                       epilog="examples:\n"
                              "  vidiff data shapes --out data/shapes --count 1000\n"
                              "  vidiff data cache --model runs/base/pipeline --manifest data/shapes/manifest.csv "
                              "--out data/shapes-cache")
    data_sub = p.add_subparsers(dest="data_command", metavar="DATA_COMMAND")
    shapes = data_sub.add_parser(
        "shapes", help="write a synthetic dataset of coloured shapes moving (mp4 + txt pairs and manifest.csv)",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
        epilog="example: vidiff data shapes --out data/shapes --count 1000 --frames 16 --size 64 --seed 0")
    shapes.add_argument("--out", required=True, help="output folder (created; replaced if it holds a shapes set)")
    shapes.add_argument("--count", type=int, required=True, help="number of clips")
    shapes.add_argument("--frames", type=int, default=16, help="frames per clip")
    shapes.add_argument("--size", type=int, default=64, help="frame width and height in pixels")
    shapes.add_argument("--seed", type=int, default=0, help="random seed (same seed, same dataset)")
    shapes.add_argument("--fps", type=float, default=8.0, help="frame rate stored in the mp4 files")
    cache = data_sub.add_parser(
        "cache", help="encode VAE latents and text embeddings of a manifest into safetensors shards",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
        epilog="example: vidiff data cache --model runs/base/pipeline --manifest data/shapes/manifest.csv "
               "--out data/shapes-cache --num-frames 16 --height 64 --width 64")
    cache.add_argument("--model", required=True, help="pipeline folder with vae/, text_encoder/, tokenizer/")
    cache.add_argument("--manifest", required=True, help="folder of videos + .txt captions, .csv / .jsonl, or a video")
    cache.add_argument("--out", required=True, help="output cache folder")
    cache.add_argument("--num-frames", type=int, default=16, help="frames per clip")
    cache.add_argument("--height", type=int, default=256, help="clip height in pixels")
    cache.add_argument("--width", type=int, default=256, help="clip width in pixels")
    cache.add_argument("--stride", type=int, default=1, help="frame stride in source frames")
    cache.add_argument("--fps", type=float, default=None, help="sample at this frame rate instead of --stride")
    cache.add_argument("--batch-size", type=int, default=4, help="clips encoded together")
    cache.add_argument("--shard-size", type=int, default=256, help="clips per safetensors shard")
    cache.add_argument("--num-workers", type=int, default=0, help="DataLoader workers decoding videos")
    cache.add_argument("--caption-column", default="caption", help="caption column of a .csv / .jsonl manifest")
    cache.add_argument("--path-column", default="path", help="path column of a .csv / .jsonl manifest")
    cache.add_argument("--path-template", default=None,
                       help="path from columns, e.g. '{page_dir}/{videoid}.mp4' (WebVid)")
    cache.add_argument("--prompt", default=None, help="prompt for a single-video manifest")
    cache.add_argument("--device", default=None, help="cuda | mps | cpu (default: the best available)")
    cache.add_argument("--dtype", default="fp32", choices=["fp32", "fp16", "bf16"], help="encoder precision")
    return p


def cmd_data(args) -> int:
    if args.data_command == "shapes":
        from vidiff.data.synthetic import write_shapes_dataset

        if args.count < 1 or args.frames < 1 or args.size < 8:
            raise CLIError(f"need --count >= 1, --frames >= 1, --size >= 8; got --count {args.count} "
                           f"--frames {args.frames} --size {args.size}")
        manifest = write_shapes_dataset(args.out, args.count, num_frames=args.frames, size=args.size,
                                        seed=args.seed, fps=args.fps, progress=True)
        print(f"wrote {args.count} clips ({args.frames} frames, {args.size}x{args.size}) and {manifest}")
        return 0
    if args.data_command == "cache":
        from vidiff.data.cache import build_latent_cache

        for name in ("num_frames", "height", "width", "stride", "batch_size", "shard_size"):
            if getattr(args, name) < 1:
                raise CLIError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
        index = build_latent_cache(
            args.model, args.manifest, args.out, num_frames=args.num_frames, height=args.height, width=args.width,
            stride=args.stride, fps=args.fps, batch_size=args.batch_size, shard_size=args.shard_size,
            num_workers=args.num_workers, device=args.device, dtype=args.dtype,
            caption_column=args.caption_column, path_column=args.path_column, path_template=args.path_template,
            prompt=args.prompt)
        print(f"cached {index['num_samples']} clips in {len(index['shards'])} shard(s) under {args.out} "
              f"({index['num_skipped']} bad files skipped)")
        return 0
    raise CLIError("give a data command: `vidiff data shapes ...` or `vidiff data cache ...` (see --help)")


# ---------------------------------------------------------------------------------------------------------------
COMMANDS = {
    "inflate": (_add_inflate, cmd_inflate),
    "generate": (_add_generate, cmd_generate),
    "train": (_add_train, cmd_train),
    "data": (_add_data, cmd_data),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="vidiff",
        description="vidiff: video diffusion from Stable Diffusion (inflate, generate, train, edit).",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for add, run in COMMANDS.values():
        sp = add(sub)
        sp.set_defaults(_run=run)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "_run", None) is None:
        parser.print_help()
        return 2
    try:
        return int(args._run(args) or 0)
    except (CLIError, ValueError, FileNotFoundError, NotADirectoryError, FileExistsError, KeyError) as e:
        if os.environ.get("VIDIFF_DEBUG"):
            raise
        msg = e.args[0] if isinstance(e, KeyError) and e.args else e
        print(f"vidiff {args.command}: error: {msg}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"vidiff {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
