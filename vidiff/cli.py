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
    p = sub.add_parser(
        "inflate", help="turn a Stable Diffusion checkpoint into a vidiff video pipeline folder",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Inflate a Stable Diffusion pipeline into a video pipeline folder: the U-Net gains temporal "
                    "convolutions and attention that start as the identity (so the folder samples each frame as "
                    "the image model does until trained); VAE, text encoder, tokenizer and noise schedule are kept.",
        epilog="examples:\n"
               "  vidiff inflate --base ./stable-diffusion-v1-5 --out models/sd15-video\n"
               "  vidiff inflate --base runwayml/stable-diffusion-v1-5 --out models/sd15-video --cross-frame first\n"
               "  vidiff inflate --base v1-5-pruned.safetensors --config ./sd15-configs --out models/sd15-video\n"
               "\nthen: vidiff generate --model models/sd15-video --prompt \"a cat running\" --out clip.mp4")
    p.add_argument("--base", required=True, metavar="SD",
                   help="diffusers SD pipeline folder, hub id (when online), or single-file .safetensors/.ckpt")
    p.add_argument("--out", required=True, metavar="DIR", help="pipeline folder to write")
    p.add_argument("--config", metavar="DIR", default=None,
                   help="for a single-file --base: a local diffusers SD pipeline folder with its configs")
    p.add_argument("--cross-frame", choices=("none", "first", "sparse-causal"), default="none",
                   help="spatial self-attention across frames (default: %(default)s)")
    p.add_argument("--no-temporal-conv", action="store_true", help="do not add temporal convolutions")
    p.add_argument("--no-temporal-attention", action="store_true", help="do not add temporal attention layers")
    p.add_argument("--num-frames", type=int, default=16,
                   help="default clip length / temporal window written to vidiff.json (default: %(default)s)")
    p.add_argument("--fps", type=float, default=8, help="default frame rate written to vidiff.json (default: %(default)s)")
    p.add_argument("--overwrite", action="store_true", help="replace --out if it already exists")
    return p


def cmd_inflate(args) -> int:
    import math
    from pathlib import Path

    out = Path(args.out)
    if args.num_frames < 1:
        raise CLIError(f"--num-frames must be >= 1, got {args.num_frames}")
    if not (math.isfinite(args.fps) and args.fps > 0):
        raise CLIError(f"--fps must be > 0 and finite, got {args.fps}")
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
    from vidiff.pipelines.folder import inflate_pipeline

    fps = int(args.fps) if float(args.fps).is_integer() else args.fps
    inflate_pipeline(args.base, out, cross_frame=args.cross_frame, temporal_conv=not args.no_temporal_conv,
                     temporal_attention=not args.no_temporal_attention, config=args.config,
                     defaults={"num_frames": args.num_frames, "fps": fps})
    from vidiff.pipelines.folder import read_info

    info = read_info(out)
    d = info["defaults"]
    layers = [name for name, on in (("temporal conv", not args.no_temporal_conv),
                                    ("temporal attention", not args.no_temporal_attention)) if on]
    print(f"wrote {out}/ (vidiff.json, unet/, {'vae/, ' if info['latent'] else ''}text_encoder/, tokenizer/, "
          f"scheduler/): {' + '.join(layers) or 'no temporal layers'}, cross-frame {args.cross_frame}, "
          f"defaults {d['num_frames']} frames {d['height']}x{d['width']} @ {d['fps']} fps")
    return 0


# ---------------------------------------------------------------------------------------------------------------
# vidiff generate  (owner: pipeline)
# ---------------------------------------------------------------------------------------------------------------
def _add_generate(sub):
    p = sub.add_parser(
        "generate", help="generate video clips from text prompts",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Sample video clips from a vidiff pipeline folder. Unset sizes and sampling settings take the "
                    "folder's defaults (its vidiff.json). Each clip gets a JSON sidecar (prompt, seed, settings).",
        epilog="examples:\n"
               "  vidiff generate --model models/sd15-video --prompt \"a red fox running in snow\" --out fox.mp4\n"
               "  vidiff generate --model M --prompt \"waves\" --num-frames 64 --steps 25 --seed 7 --gif --out waves.mp4\n"
               "  vidiff generate --model M --prompts-file prompts.txt --num-videos 2 --out clips/clip.mp4\n"
               "\nseveral videos (prompts x --num-videos) are written as clip-000.mp4, clip-001.mp4, ...;\n"
               "video i uses seed + i, so `--seed S+i --num-videos 1` remakes it alone.\n"
               "--out's suffix picks the format: .mp4, .gif, .png (contact sheet), none (folder of PNG frames).")
    p.add_argument("--model", metavar="DIR", default=None, help="vidiff pipeline folder (from `vidiff inflate`/`train`)")
    p.add_argument("--prompt", action="append", default=None, help="text prompt (repeat for several)")
    p.add_argument("--prompts-file", metavar="F", default=None,
                   help="text file, one prompt per line (blank lines and # comments skipped)")
    p.add_argument("--negative", default=None, metavar="TEXT", help="negative prompt (default: none)")
    p.add_argument("--num-frames", type=int, default=None, help="frames per clip (default: the model's)")
    p.add_argument("--height", type=int, default=None, help="pixels, multiple of the model's factor (default: the model's)")
    p.add_argument("--width", type=int, default=None, help="pixels, multiple of the model's factor (default: the model's)")
    p.add_argument("--steps", type=int, default=None, help="sampling steps (default: the model's)")
    p.add_argument("--guidance", type=float, default=None, help="classifier-free guidance scale, 1 = off (default: the model's)")
    p.add_argument("--scheduler", default=None,
                   help="ddim | dpm-solver++ | euler | euler-ancestral | ddpm | unipc (default: the model's)")
    p.add_argument("--eta", type=float, default=0.0, help="DDIM eta (default: %(default)s)")
    p.add_argument("--seed", type=int, default=None, help="random seed; video i uses seed + i (default: random, recorded)")
    p.add_argument("--num-videos", type=int, default=1, help="videos per prompt (default: %(default)s)")
    p.add_argument("--fps", type=float, default=None, help="frame rate of the written clips (default: the model's)")
    p.add_argument("--cross-frame", choices=("none", "first", "sparse-causal"), default=None,
                   help="override the model's cross-frame attention mode")
    p.add_argument("--window-size", type=int, default=None,
                   help="temporal window for long clips (default: the model's num_frames)")
    p.add_argument("--window-stride", type=int, default=None, help="stride between windows (default: window / 2)")
    p.add_argument("--long-video-noise", choices=("independent", "freenoise"), default="independent",
                   help="noise of frames past the first window: fresh, or FreeNoise's reshuffled (default: %(default)s)")
    p.add_argument("--decode-chunk-size", type=int, default=8, help="frames per VAE decode call (default: %(default)s)")
    p.add_argument("--device", default=None, help="cuda | cuda:N | mps | cpu (default: best available)")
    p.add_argument("--dtype", default=None, choices=("fp32", "fp16", "bf16"), help="default: fp16 on CUDA, else fp32")
    p.add_argument("--out", required=True, metavar="PATH", help="output clip, e.g. clip.mp4")
    p.add_argument("--gif", action="store_true", help="also write a .gif beside each clip")
    p.add_argument("--frames-dir", action="store_true", help="also write a folder of PNG frames (<stem>_frames/)")
    p.add_argument("--contact-sheet", action="store_true", help="also write a .png contact sheet of the frames")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    return p


def cmd_generate(args) -> int:
    import math
    import secrets
    import time
    from pathlib import Path

    from vidiff.pipelines.folder import read_info, read_scheduler_config
    from vidiff.pipelines.outputs import check_output_path, numbered_paths, write_outputs
    from vidiff.pipelines.schedulers import max_inference_steps
    from vidiff.pipelines.text_to_video import resolve_settings

    # Everything is checked before the model loads: a typo costs no time.
    if args.model is None:
        raise CLIError("no --model given (the built-in demo model is not available yet): make a model folder with "
                       "`vidiff inflate --base SD_PIPELINE --out DIR` and pass --model DIR")
    prompts = list(args.prompt or [])
    if args.prompts_file:
        file = Path(args.prompts_file)
        if not file.is_file():
            what = "is a folder, not a text file" if file.is_dir() else "does not exist"
            raise CLIError(f"--prompts-file {str(file)!r} {what}; give a text file with one prompt per line")
        try:
            lines = file.read_text(encoding="utf-8-sig").splitlines()
        except UnicodeDecodeError as e:
            raise CLIError(f"--prompts-file {str(file)!r} is not UTF-8 text ({e.reason} at byte {e.start}); save it "
                           "as UTF-8 with one prompt per line") from None
        prompts += [line.strip() for line in lines if line.strip() and not line.lstrip().startswith("#")]
    if not prompts:
        raise CLIError("no prompt: pass --prompt \"...\" or --prompts-file F")
    if args.num_videos < 1:
        raise CLIError(f"--num-videos must be >= 1, got {args.num_videos}")
    if args.fps is not None and not (math.isfinite(args.fps) and args.fps > 0):
        raise CLIError(f"--fps must be > 0 and finite, got {args.fps}")
    if not (math.isfinite(args.eta) and args.eta >= 0):
        raise CLIError(f"--eta must be a number >= 0 (0 = deterministic DDIM, 1 = DDPM-like), got {args.eta}")
    info = read_info(args.model)
    try:
        schedule = read_scheduler_config(Path(args.model) / "scheduler")
    except (FileNotFoundError, ValueError) as e:  # (json.JSONDecodeError is a ValueError)
        raise CLIError(f"{args.model}: unreadable scheduler/scheduler_config.json ({e}); re-create the folder "
                       "with `vidiff inflate`") from None
    try:
        settings = resolve_settings(info, max_steps=max_inference_steps(schedule),
                                    num_frames=args.num_frames, height=args.height, width=args.width,
                                    num_inference_steps=args.steps, guidance_scale=args.guidance,
                                    scheduler=args.scheduler, cross_frame=args.cross_frame,
                                    window_size=args.window_size, window_stride=args.window_stride,
                                    decode_chunk_size=args.decode_chunk_size)
    except ValueError as e:  # name the flag, not the Python argument
        message = str(e)
        for name, flag in (("num_inference_steps", "--steps"), ("num_frames", "--num-frames"),
                           ("guidance_scale", "--guidance"), ("window_stride", "--window-stride"),
                           ("window_size", "--window-size"), ("decode_chunk_size", "--decode-chunk-size"),
                           ("height", "--height"), ("width", "--width"), ("scheduler", "--scheduler")):
            message = message.replace(name, flag)
        raise CLIError(message) from None
    out = check_output_path(args.out, len(prompts) * args.num_videos, gif=args.gif, frames_dir=args.frames_dir,
                            contact_sheet=args.contact_sheet)
    seed = args.seed if args.seed is not None else secrets.randbelow(2**31)
    fps = args.fps if args.fps is not None else info["defaults"].get("fps", 8)
    paths = numbered_paths(out, len(prompts) * args.num_videos)
    device = args.device
    if device is not None:
        import torch

        kind, _, index = device.partition(":")
        if kind not in ("cpu", "cuda", "mps") or (":" in device and not (kind == "cuda" and index.isdigit())):
            raise CLIError(f"unknown --device {device!r}; use cuda, cuda:N, mps or cpu")
        if kind == "cuda" and not torch.cuda.is_available():
            raise CLIError("--device cuda, but no CUDA device is available; use --device cpu")
        if kind == "cuda" and index and int(index) >= torch.cuda.device_count():
            raise CLIError(f"--device {device}: there are {torch.cuda.device_count()} CUDA devices (cuda:0 .. "
                           f"cuda:{torch.cuda.device_count() - 1})")
        if kind == "mps" and not torch.backends.mps.is_available():
            raise CLIError("--device mps, but MPS is not available; use --device cpu")

    from vidiff.pipelines.text_to_video import VideoPipeline

    if args.quiet:  # transformers / diffusers draw their own weight-loading bars
        import diffusers.utils.logging
        import transformers.utils.logging

        transformers.utils.logging.disable_progress_bar()
        diffusers.utils.logging.disable_progress_bar()
    pipe = VideoPipeline.from_pretrained(args.model, device=device, dtype=args.dtype)
    start = time.perf_counter()
    videos = pipe(prompts, num_frames=settings["num_frames"], height=settings["height"], width=settings["width"],
                  num_inference_steps=settings["num_inference_steps"], guidance_scale=settings["guidance_scale"],
                  negative_prompt=args.negative, seed=seed, num_videos_per_prompt=args.num_videos, eta=args.eta,
                  scheduler=settings["scheduler"], cross_frame=settings["cross_frame"],
                  window_size=settings["window_size"], window_stride=settings["window_stride"],
                  long_video_noise=args.long_video_noise, decode_chunk_size=settings["decode_chunk_size"],
                  progress=not args.quiet)
    seconds = time.perf_counter() - start
    videos = [videos] if len(paths) == 1 else videos
    import vidiff

    for index, (path, frames) in enumerate(zip(paths, videos)):
        prompt = prompts[index // args.num_videos]
        sidecar = {
            "prompt": prompt, "negative_prompt": args.negative, "seed": seed + index,
            "model": str(Path(args.model).resolve()), "num_frames": settings["num_frames"],
            "height": settings["height"], "width": settings["width"], "fps": fps,
            "num_inference_steps": settings["num_inference_steps"], "guidance_scale": settings["guidance_scale"],
            "scheduler": settings["scheduler"], "eta": args.eta, "cross_frame": settings["cross_frame"],
            "window_size": settings["window_size"], "window_stride": settings["window_stride"],
            "long_video_noise": args.long_video_noise, "device": str(pipe.device), "dtype": str(pipe.dtype).replace("torch.", ""),
            "vidiff_version": vidiff.__version__, "seconds": round(seconds / len(paths), 3),
        }
        written = write_outputs(path, frames, fps, sidecar, gif=args.gif, frames_dir=args.frames_dir,
                                contact_sheet=args.contact_sheet)
        print(f"wrote {', '.join(str(p) for p in written)} ({len(frames)} frame{'s' * (len(frames) != 1)}, {frames.shape[2]}x{frames.shape[1]}, "
              f"{fps:g} fps, seed {seed + index}, {prompt!r})")
    return 0


# ---------------------------------------------------------------------------------------------------------------
# vidiff train  (owner: training)
# ---------------------------------------------------------------------------------------------------------------
def _add_train(sub):
    p = sub.add_parser(
        "train", help="fine-tune a video model (also under `accelerate launch -m vidiff train`)",
        description="Train a vidiff video U-Net from a YAML config (see configs/train/). Checkpoints, logs, "
                    "validation clips and the final pipeline folder go to output_dir.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="examples:\n"
               "  vidiff train configs/train/finetune.yaml data.manifest=clips/ output_dir=runs/ft\n"
               "  vidiff train configs/train/tune-a-video.yaml data.manifest=man-skiing.mp4 \\\n"
               "      data.prompt=\"a man is skiing\" train.max_steps=300\n"
               "  accelerate launch --num_processes 2 -m vidiff train configs/train/finetune.yaml --resume auto\n"
               "  vidiff train configs/train/full.yaml --print-config     (show the resolved config)\n")
    p.add_argument("config", help="training config YAML (configs/train/*.yaml)")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE",
                   help="dotted overrides parsed as YAML, e.g. train.max_steps=500 train.ema=true "
                        "validation.prompts='[\"a red circle moving left\"]'")
    p.add_argument("--resume", metavar="auto|PATH", default=None,
                   help="continue from the latest checkpoint in output_dir/checkpoints (auto; starts fresh when "
                        "there is none) or from a checkpoint folder (default: start from step 0)")
    p.add_argument("--print-config", action="store_true", help="print the resolved config as YAML and exit")
    return p


def cmd_train(args) -> int:
    from vidiff.config import load_config

    for item in args.overrides:
        if "=" not in item:
            raise CLIError(f"override {item!r} is not KEY=VALUE (e.g. train.max_steps=100)")
    config = load_config(args.config, args.overrides)
    if args.print_config:
        import yaml

        print(yaml.safe_dump(config.to_dict(), sort_keys=False), end="")
        return 0
    if args.resume not in (None, "auto") and not os.path.isdir(args.resume):
        raise CLIError(f"--resume {args.resume}: no such checkpoint folder; use --resume auto or a folder under "
                       f"{config.output_dir}/checkpoints")

    from vidiff.training.trainer import TrainingError, train

    try:
        result = train(config, resume=args.resume)
    except TrainingError as e:
        print(f"vidiff train: error: {e}", file=sys.stderr)
        return 1
    if not result.is_main_process:
        return 0
    if result.status == "interrupted":
        print(f"vidiff train: stopped at step {result.step}; checkpoint {result.checkpoint} "
              "(continue with --resume auto)")
    else:
        print(f"vidiff train: {result.step} steps; wrote {result.pipeline} and checkpoints in "
              f"{result.output_dir / 'checkpoints'} ({result.nonfinite_steps} non-finite steps skipped, "
              f"{result.skipped_files} bad files skipped)")
    return 0


# ---------------------------------------------------------------------------------------------------------------
# vidiff data  (owner: data)
# ---------------------------------------------------------------------------------------------------------------
class _DataHelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Shows real defaults (not "default: None" on required options) and keeps example lines unwrapped, so
    they can be copied as they are."""

    def _get_help_string(self, action):
        text = action.help or ""
        if ("%(default)" not in text and action.option_strings and not action.required
                and not any(action.default is no_default for no_default in (None, False, argparse.SUPPRESS))):
            text += " (default: %(default)s)"
        return text


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
    cache = data_sub.add_parser(
        "cache", help="encode VAE latents and text embeddings of a manifest into safetensors shards",
        description="Encode every readable clip of a manifest with a pipeline's VAE and text encoder into "
                    "safetensors shards plus index.json, for training without decoding videos. Bad files are "
                    "skipped and listed.",
        formatter_class=_DataHelpFormatter,
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
    cache.add_argument("--root", default=None,
                       help="folder that relative manifest paths start from (default: the manifest's folder)")
    cache.add_argument("--prompt", default=None, help="prompt for a single-video manifest")
    cache.add_argument("--device", default=None, help="cuda | mps | cpu (default: the best available)")
    cache.add_argument("--dtype", default="fp32", choices=["fp32", "fp16", "bf16"], help="encoder precision")
    return p


def cmd_data(args) -> int:
    import math

    if args.data_command == "shapes":
        from vidiff.data.synthetic import write_shapes_dataset

        if args.count < 1 or args.frames < 1 or args.size < 8:
            raise CLIError(f"need --count >= 1, --frames >= 1, --size >= 8; got --count {args.count} "
                           f"--frames {args.frames} --size {args.size}")
        if not (math.isfinite(args.fps) and args.fps > 0):
            raise CLIError(f"--fps must be > 0 and finite, got {args.fps}")
        if args.size % 2:  # H.264 in yuv420p stores even sizes only: the mp4 would be padded to size + 1
            raise CLIError(f"--size must be even (H.264 mp4 frames have even sizes), got {args.size}; "
                           f"use {args.size - 1} or {args.size + 1}")
        manifest = write_shapes_dataset(args.out, args.count, num_frames=args.frames, size=args.size,
                                        seed=args.seed, fps=args.fps, progress=True)
        print(f"wrote {args.count} clip{'s' if args.count > 1 else ''} ({args.frames} "
              f"frame{'s' if args.frames > 1 else ''}, {args.size}x{args.size}) and {manifest}")
        return 0
    if args.data_command == "cache":
        from vidiff.data.cache import build_latent_cache

        for name in ("num_frames", "height", "width", "stride", "batch_size", "shard_size"):
            if getattr(args, name) < 1:
                raise CLIError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
        if args.num_workers < 0:
            raise CLIError(f"--num-workers must be >= 0 (0 decodes in the main process), got {args.num_workers}")
        if args.fps is not None and not (math.isfinite(args.fps) and args.fps > 0):
            raise CLIError(f"--fps must be > 0 and finite, got {args.fps}")
        index = build_latent_cache(
            args.model, args.manifest, args.out, num_frames=args.num_frames, height=args.height, width=args.width,
            stride=args.stride, fps=args.fps, batch_size=args.batch_size, shard_size=args.shard_size,
            num_workers=args.num_workers, device=args.device, dtype=args.dtype,
            caption_column=args.caption_column, path_column=args.path_column, path_template=args.path_template,
            prompt=args.prompt, root=args.root)
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


def _quiet_weight_bars() -> None:
    """transformers draws a progress bar for every weight file it loads or writes, even a tiny one; the commands
    show their own progress. Hub download bars stay (they are hf_hub's, switched separately)."""
    try:
        from transformers.utils import logging as transformers_logging
    except ImportError:
        return
    transformers_logging._tqdm_active = False


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "_run", None) is None:
        parser.print_help()
        return 2
    if (args.command, getattr(args, "data_command", None)) != ("data", "shapes"):
        _quiet_weight_bars()
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
