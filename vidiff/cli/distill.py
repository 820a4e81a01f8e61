"""`vidiff distill`: a few-step student of a pipeline folder, trained by `vidiff train`'s loop.

The flags become a training config (`distill:` section, vidiff.training.distill) on top of `--config` (default: the
built-in defaults), so `vidiff train CONFIG` with the same `distill:` section runs the same thing; KEY=VALUE
overrides come last. Everything is checked before a model loads.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from vidiff.cli import train as train_command
from vidiff.cli.common import CLIError
from vidiff.spec import DISTILL_METHODS, read_info

EPILOG = """examples:
  vidiff distill --model runs/base/pipeline --method consistency --guidance-distill --steps 4 \\
      --data clips/ --out runs/base-fast
  vidiff distill --model M --method progressive --teacher-steps 16 --steps 4 --data clips/ --out runs/pd4
  vidiff distill --model M --method progressive --steps 20 --guidance-distill --data clips/ --out runs/gd
      (steps = the teacher's: guidance distillation alone, one U-Net pass per step instead of two)
  vidiff distill --model M --method consistency --data clips/ --out runs/lcm --resume auto train.max_steps=4000
  vidiff distill --model runs/ssr/pipeline --method progressive --teacher-steps 8 --steps 4 --strength 0.25 \
      --data clips/ --out runs/ssr-1pass
      (a cascade stage's student for its start from the input's estimate: 1 U-Net pass for the teacher's 2)

consistency: latent consistency distillation (LCM); samples with the lcm sampler in any 1..50 steps (--steps is
its default). progressive: rounds that each halve the teacher's DDIM steps (--steps = --teacher-steps / 2^k).
--guidance-distill makes the guidance scale a U-Net input: one pass per step, the scale still chosen at
generation (--guidance). The student folder (OUT/pipeline) records how it was made (vidiff.json `distilled`), and
`vidiff generate --model OUT/pipeline` samples it that way with no further flags."""


def add_parser(sub, help_text: str):
    p = sub.add_parser("distill", help=help_text, formatter_class=argparse.RawDescriptionHelpFormatter,
                       epilog=EPILOG,
                       description="Distil a vidiff pipeline folder (any stage) into a student that samples in a few "
                                   "steps: checkpoints, --resume, EMA, logs and the exported folder as `vidiff train`.")
    p.add_argument("--model", required=True, metavar="TEACHER", help="the teacher: a vidiff pipeline folder")
    p.add_argument("--method", required=True, metavar="METHOD",
                   help=f"{' | '.join(DISTILL_METHODS)}")
    p.add_argument("--steps", type=int, default=None, help="the student's sampling steps (default: 4)")
    p.add_argument("--teacher-steps", type=int, default=None,
                   help="progressive: the teacher's DDIM steps (default: its own); consistency: the solver grid "
                        "(default: 50)")
    p.add_argument("--guidance-distill", action="store_true",
                   help="guidance distillation: the guidance scale as an input, one U-Net pass per step")
    p.add_argument("--guidance-range", metavar="MIN,MAX", default=None,
                   help="scales the student learns (default: 1 to twice the teacher's default guidance)")
    p.add_argument("--strength", type=float, default=None, metavar="S",
                   help="progressive, a cascade stage: learn only the last S share of the student's steps, where a "
                        "start from the input's estimate samples (as the stage commands' --strength; the student "
                        "samples so by default; default 1: all)")
    p.add_argument("--data", metavar="MANIFEST", default=None,
                   help="training clips: a video folder or manifest (default: what the teacher records it was "
                        "trained on)")
    p.add_argument("--cache", metavar="DIR", default=None, help="a latent cache (`vidiff data cache`) instead of --data")
    p.add_argument("--max-steps", type=int, default=None, help="optimiser steps (default: 1000)")
    p.add_argument("--batch-size", type=int, default=None, help="clips per step (default: 4)")
    p.add_argument("--learning-rate", type=float, default=None, help="peak learning rate (default: 2e-5)")
    p.add_argument("--config", metavar="YAML", default=None,
                   help="a training config to start from (configs/train/); the flags above override it")
    p.add_argument("--out", required=True, metavar="DIR", help="the run folder (the student: DIR/pipeline)")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="training config overrides, applied last")
    p.add_argument("--resume", metavar="auto|PATH", default=None, help="continue a run (as `vidiff train --resume`)")
    p.add_argument("--overwrite", action="store_true", help="start over in DIR (as `vidiff train --overwrite`)")
    p.add_argument("--print-config", action="store_true", help="print the resolved config as YAML and exit")
    return p


def teacher_overrides(args) -> list[str]:
    """The config keys the teacher folder decides: model and stage and, without --config, the clip size (its
    `trained_on`, else its sampling defaults), the training defaults of a distillation and the data it records.
    CLIError when it is no teacher."""
    try:
        info = read_info(args.model)
    except (FileNotFoundError, NotADirectoryError, ValueError) as e:
        raise CLIError(f"--model {args.model}: {e}") from None
    if info.distilled is not None:
        raise CLIError(f"--model {args.model} is itself a student ({info.distilled.method}-distilled to "
                       f"{info.distilled.steps} steps); distil its teacher ({info.distilled.teacher or '?'}) instead")
    items = {"model.pretrained": args.model, "train.stage": info.stage}
    if args.config is not None:
        return [f"{key}={value}" for key, value in items.items()]
    clip = info.extra.get("trained_on") if isinstance(info.extra.get("trained_on"), dict) else {}
    d = info.defaults
    items.update({"train.trainable": "all", "data.num_frames": clip.get("num_frames", d.num_frames),
                  "data.height": clip.get("height", d.height), "data.width": clip.get("width", d.width),
                  "data.num_workers": 0, "train.max_steps": 1000, "train.batch_size": 4,
                  "train.learning_rate": 2e-5, "train.checkpoint_every": 250, "train.ema": True,
                  "train.ema_decay": 0.95})  # (the EMA: the consistency target network, as LCM's; exported)
    if args.data is None and args.cache is None:
        if not clip.get("manifest"):
            raise CLIError(f"--model {args.model} does not record the clips it was trained on: pass --data "
                           "MANIFEST (a video folder or manifest) or --cache DIR")
        items["data.manifest"] = clip["manifest"]
    return [f"{key}={json.dumps(value) if not isinstance(value, str) else value}" for key, value in items.items()]


def flag_overrides(args) -> list[str]:
    """The distill flags as config overrides."""
    items = {"distill.method": args.method, "output_dir": args.out, "distill.steps": args.steps,
             "distill.teacher_steps": args.teacher_steps, "distill.strength": args.strength,
             "data.manifest": args.data, "data.cache": args.cache,
             "train.max_steps": args.max_steps, "train.batch_size": args.batch_size,
             "train.learning_rate": args.learning_rate}
    if args.guidance_distill:
        items["distill.guidance"] = True
    if not args.guidance_distill and args.config is None:  # it learns the unconditional branch, for two-pass CFG
        items["train.caption_dropout"] = 0.1
    if args.guidance_range is not None:
        if not args.guidance_distill:
            raise CLIError("--guidance-range applies with --guidance-distill")
        low, sep, high = args.guidance_range.partition(",")
        try:
            items["distill.guidance_min"], items["distill.guidance_max"] = float(low), float(high)
        except ValueError:
            raise CLIError(f"--guidance-range {args.guidance_range!r} must be MIN,MAX, e.g. 1,3") from None
    out = []
    for key, value in items.items():
        if value is not None:
            out.append(f"{key}={value if isinstance(value, str) else json.dumps(value)}")
    return out


def run(args) -> int:
    if args.data is not None and not Path(args.data).exists():
        raise CLIError(f"--data {args.data} does not exist; give a video folder, a manifest file or a video")
    args.overrides = teacher_overrides(args) + flag_overrides(args) + list(args.overrides)
    return train_command.run(args)  # (args.config: None starts from the defaults)
