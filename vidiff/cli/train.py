"""`vidiff train`: fine-tune a video model from a YAML config."""
from __future__ import annotations

import argparse
import os
import sys

import yaml

from vidiff.cli.common import CLIError
from vidiff.config import load_config
from vidiff.training.trainer import TrainingError, train


def add_parser(sub, help_text: str):
    p = sub.add_parser(
        "train", help=help_text,
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
    p.add_argument("--overwrite", action="store_true",
                   help="start over in an output_dir that holds an earlier run's checkpoints (they are removed); "
                        "without it such a run is refused")
    p.add_argument("--print-config", action="store_true", help="print the resolved config as YAML and exit")
    return p


def run(args) -> int:
    for item in args.overrides:
        if "=" not in item:
            raise CLIError(f"override {item!r} is not KEY=VALUE (e.g. train.max_steps=100)")
    config = load_config(args.config, args.overrides, need_data=not args.print_config)  # printing needs no data
    if args.print_config:
        print(yaml.safe_dump(config.to_dict(), sort_keys=False), end="")
        return 0
    if args.resume not in (None, "auto") and not os.path.isdir(args.resume):
        raise CLIError(f"--resume {args.resume}: no such checkpoint folder; use --resume auto or a folder under "
                       f"{config.output_dir}/checkpoints")
    name = f"vidiff {getattr(args, 'command', None) or 'train'}"  # (`vidiff distill` runs this too)
    try:
        result = train(config, resume=args.resume, overwrite=args.overwrite)
    except TrainingError as e:
        print(f"{name}: error: {e}", file=sys.stderr)
        return 1
    # Saved cleanly, but stopped by a signal: exit as the shell reports a signal death (128 + number), so
    # scripts can tell an interrupted run from a finished one.
    code = {"SIGINT": 130, "SIGTERM": 143}.get(result.stop_signal, 0)
    if not result.is_main_process:
        return code
    if result.status == "interrupted":
        print(f"{name}: stopped at step {result.step}; checkpoint {result.checkpoint} "
              "(continue with --resume auto)")
    else:
        print(f"{name}: {result.step} steps; wrote {result.pipeline} and checkpoints in "
              f"{result.output_dir / 'checkpoints'} ({result.nonfinite_steps} non-finite steps skipped, "
              f"{result.skipped_files} bad files skipped, {result.skipped_encounters} times in all)")
    return code


