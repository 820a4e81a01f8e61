"""`vidiff data`: write the synthetic shapes dataset, cache VAE latents and text embeddings of a manifest, or write
a manifest as webdataset tar shards."""
from __future__ import annotations

import argparse

from vidiff.cli.common import CLIError, check_device, check_flag, check_writable
from vidiff.cli.options import add_device_options
from vidiff.data.cache import build_latent_cache, launch_state
from vidiff.data.shards import parse_size, write_shards
from vidiff.data.synthetic import ALL_COLORS, COLORS, write_shapes_dataset


class _DataHelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Shows real defaults (not "default: None" on required options) and keeps example lines unwrapped, so
    they can be copied as they are."""

    def _get_help_string(self, action):
        text = action.help or ""
        if ("%(default)" not in text and action.option_strings and not action.required
                and not any(action.default is no_default for no_default in (None, False, argparse.SUPPRESS))):
            text += " (default: %(default)s)"
        return text


def add_parser(sub, help_text: str):
    p = sub.add_parser("data", help=help_text,
                       formatter_class=argparse.RawDescriptionHelpFormatter,
                       epilog="examples:\n"
                              "  vidiff data shapes --out data/shapes --count 1000\n"
                              "  vidiff data cache --model runs/base/pipeline --manifest data/shapes/manifest.csv "
                              "--out data/shapes-cache\n"
                              "  vidiff data shard --manifest data/shapes/manifest.csv --out data/shapes-shards")
    data_sub = p.add_subparsers(dest="data_command", metavar="DATA_COMMAND")
    shapes = data_sub.add_parser(
        "shapes", help="write a synthetic dataset of coloured shapes moving (mp4 + txt pairs and manifest.csv)",
        description="Write COUNT clips of one coloured shape crossing a dark background, each an mp4 with a "
                    "same-named .txt caption (\"a red circle moving left\"), and manifest.csv (path, caption, "
                    "color, shape, motion). Deterministic by --seed.",
        formatter_class=_DataHelpFormatter,
        epilog="example: vidiff data shapes --out data/shapes --count 1000 --frames 16 --size 64 --seed 0")
    shapes.add_argument("--out", required=True, help="output folder (created; replaced if it holds a shapes set)")
    shapes.add_argument("--count", type=int, required=True, help="number of clips")
    shapes.add_argument("--frames", type=int, default=16, help="frames per clip")
    shapes.add_argument("--size", type=int, default=64, help="frame width and height in pixels")
    shapes.add_argument("--seed", type=int, default=0, help="random seed (same seed, same dataset)")
    shapes.add_argument("--fps", type=float, default=8.0, help="frame rate stored in the mp4 files")
    shapes.add_argument("--colors", default=None, metavar="C,C",
                        help=f"colours to draw, comma-separated, from {', '.join(ALL_COLORS)} (default: "
                             f"{','.join(COLORS)}; the others are words no demo model knows, to teach a fine-tune)")
    cache = data_sub.add_parser(
        "cache", help="encode VAE latents and text embeddings of a manifest into safetensors shards",
        description="Encode every readable clip of a manifest with a pipeline's VAE and text encoder into "
                    "safetensors shards plus index.json, for training without decoding videos (data.cache=OUT). "
                    "Bad files are skipped and listed.\n\n"
                    "Under accelerate launch (or torchrun) the clips are split across the processes: clip i goes "
                    "to rank i % world_size, each rank writes its own shards (shard-r00-00000.safetensors, ...) "
                    "and the main process writes index.json when all are done. The cache holds the same clips "
                    "and tensors, in the same order, whatever the number of processes. OUT must be on a "
                    "filesystem every process sees. It appears complete or not at all: the processes write into "
                    ".OUT.partial beside it, renamed onto OUT at the end (a failed run deletes it).",
        formatter_class=_DataHelpFormatter,
        epilog="examples:\n"
               "  vidiff data cache --model runs/base/pipeline --manifest data/shapes/manifest.csv "
               "--out data/shapes-cache --num-frames 16 --height 64 --width 64\n"
               "  accelerate launch --num_processes 8 -m vidiff data cache --model runs/base/pipeline "
               "--manifest data/webvid/results.csv --path-template '{page_dir}/{videoid}.mp4' --caption-column "
               "name --out data/webvid-cache")
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
    add_manifest_options(cache)
    add_device_options(cache, dtype_default="fp32", dtype_help="encoder precision")
    add_shard_parser(data_sub)
    return p


def add_manifest_options(parser) -> None:
    """How a .csv / .jsonl manifest names its clips (cache and shard read manifests as training does)."""
    parser.add_argument("--caption-column", default="caption", help="caption column of a .csv / .jsonl manifest")
    parser.add_argument("--path-column", default="path", help="path column of a .csv / .jsonl manifest")
    parser.add_argument("--path-template", default=None,
                        help="path from columns, e.g. '{page_dir}/{videoid}.mp4' (WebVid)")
    parser.add_argument("--root", default=None,
                        help="folder that relative manifest paths start from (default: the manifest's folder)")
    parser.add_argument("--prompt", default=None, help="prompt for a single-video manifest")


def add_shard_parser(data_sub) -> None:
    shard = data_sub.add_parser(
        "shard", help="write a manifest's videos as webdataset tar shards plus index.json (data.shards)",
        description="Write every readable video of a manifest into webdataset tar shards shard-000000.tar, ... "
                    "of about --shard-size each (a sample: the video's bytes under its extension and a .json with "
                    "caption, source path and stored size) and index.json (shards, clips per shard and their "
                    "sizes, total, the manifest). Train on them with data.shards=OUT.\n\n"
                    "Resumable: each shard is written under a temporary name and renamed when complete, index.json "
                    "last; after an interruption run the same command again and it continues after the last "
                    "complete shard (--overwrite starts over). Files the training dataset could not read are "
                    "skipped and counted.",
        formatter_class=_DataHelpFormatter,
        epilog="example: vidiff data shard --manifest data/webvid/results.csv --path-template "
               "'{page_dir}/{videoid}.mp4' --caption-column name --out data/webvid-shards --shard-size 1GB")
    shard.add_argument("--manifest", required=True, help="folder of videos + .txt captions, .csv / .jsonl, or a video")
    shard.add_argument("--out", required=True, help="output shard folder (created; continued if interrupted)")
    shard.add_argument("--shard-size", default="1GB", help="bytes per shard, e.g. 1GB, 500MB, 64MiB")
    shard.add_argument("--overwrite", action="store_true", help="replace the shards of an earlier run in --out")
    add_manifest_options(shard)


def run(args) -> int:
    if args.data_command == "shapes":
        return run_shapes(args)
    if args.data_command == "cache":
        return run_cache(args)
    if args.data_command == "shard":
        return run_shard(args)
    raise CLIError("give a data command: `vidiff data shapes ...`, `vidiff data cache ...` or `vidiff data shard "
                   "...` (see --help)")


def run_shapes(args) -> int:
    check_flag("count", args.count)
    check_flag("num_frames", args.frames, flag="--frames")
    check_flag("size", args.size)
    check_flag("seed", args.seed)
    check_flag("fps", args.fps)
    if args.size % 2:  # H.264 in yuv420p stores even sizes only: the mp4 would be padded to size + 1
        raise CLIError(f"--size must be even (H.264 mp4 frames have even sizes), got {args.size}; "
                       f"use {args.size - 1} or {args.size + 1}")
    colors = None
    if args.colors is not None:
        colors = [c.strip() for c in args.colors.split(",") if c.strip()]
        unknown = [c for c in colors if c not in ALL_COLORS]
        if unknown or not colors:
            raise CLIError(f"--colors {args.colors!r}: choose comma-separated colours from {', '.join(ALL_COLORS)}")
    check_writable(args.out)
    manifest = write_shapes_dataset(args.out, args.count, num_frames=args.frames, size=args.size,
                                    seed=args.seed, fps=args.fps, progress=True, colors=colors)
    print(f"wrote {args.count} clip{'s' if args.count > 1 else ''} ({args.frames} "
          f"frame{'s' if args.frames > 1 else ''}, {args.size}x{args.size}) and {manifest}")
    return 0


def run_cache(args) -> int:
    for name in ("num_frames", "height", "width", "stride", "fps", "batch_size", "shard_size", "num_workers"):
        check_flag(name, getattr(args, name))
    check_device(args.device)
    check_writable(args.out)
    index = build_latent_cache(
        args.model, args.manifest, args.out, num_frames=args.num_frames, height=args.height, width=args.width,
        stride=args.stride, fps=args.fps, batch_size=args.batch_size, shard_size=args.shard_size,
        num_workers=args.num_workers, device=args.device, dtype=args.dtype,
        caption_column=args.caption_column, path_column=args.path_column, path_template=args.path_template,
        prompt=args.prompt, root=args.root)
    if launch_state().is_main_process:  # (one summary for all the ranks)
        ranks = index.get("world_size", 1)
        print(f"cached {index['num_samples']} clips in {len(index['shards'])} shard(s) under {args.out} "
              f"({index['num_skipped']} bad files skipped{f'; {ranks} processes' if ranks > 1 else ''})")
    return 0


def run_shard(args) -> int:
    try:
        shard_size = parse_size(args.shard_size)
    except ValueError as e:
        raise CLIError(f"--shard-size: {e}") from None
    check_writable(args.out)
    index, bad = write_shards(args.manifest, args.out, shard_size=shard_size, overwrite=args.overwrite,
                              caption_column=args.caption_column, path_column=args.path_column,
                              path_template=args.path_template, root=args.root, prompt=args.prompt)
    example = f", e.g. {bad[0]}" if bad else ""
    print(f"wrote {index.num_samples} clips in {len(index.shards)} shard(s) and {args.out}/index.json "
          f"({index.num_skipped} bad files skipped{example})")
    return 0
