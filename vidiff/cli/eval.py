"""`vidiff eval`: measured quality on the synthetic shapes world (prompt following, temporal consistency)."""
from __future__ import annotations

import argparse

from vidiff.cli.common import CLIError

SHAPES_EPILOG = """examples:
  vidiff eval shapes --model vidiff/assets/demo/base --out results.json --contact-sheet sheet.png
  vidiff eval shapes --model runs/base/pipeline --seeds 9001,9002,9003 --steps 25
  vidiff eval shapes --model M --prompts "a red circle moving left" --prompts "a blue square moving up" --seeds 1

Every caption of the shapes world (4 colours x 3 shapes x 4 motions = 48 prompts) is sampled once per seed;
the default seeds 9001,9002 are held out: no checkpoint or setting was picked with them. Colour, shape and
motion are measured from the pixels (vidiff.eval.shapes); the table gives each attribute's accuracy, all three
together, and temporal consistency (one shape of stable size and colour in every frame)."""


def add_parser(sub):
    p = sub.add_parser("eval", help="measure generation quality on the synthetic shapes prompts",
                       formatter_class=argparse.RawDescriptionHelpFormatter,
                       description="Generate clips for a fixed prompt x seed set and measure them from their pixels.",
                       epilog="example: vidiff eval shapes --model DIR --out results.json")
    eval_sub = p.add_subparsers(dest="eval_command", metavar="EVAL_COMMAND")
    shapes = eval_sub.add_parser(
        "shapes", help="prompt following (colour, shape, motion) and temporal consistency of a text-to-video model",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Generate one clip per shapes prompt and seed, measure colour, shape, motion direction and "
                    "temporal consistency from the pixels, print a markdown table and write the results as JSON.",
        epilog=SHAPES_EPILOG)
    shapes.add_argument("--model", metavar="DIR", required=True, help="vidiff pipeline folder (text-to-video)")
    shapes.add_argument("--seeds", default=None,
                        help="comma-separated evaluation seeds (default: the held-out 9001,9002)")
    shapes.add_argument("--prompts", action="append", default=None, metavar="TEXT",
                        help="evaluate only this shapes caption (repeatable; default: all 48)")
    shapes.add_argument("--limit", type=int, default=None, help="keep only the first N clips (quick checks)")
    shapes.add_argument("--num-frames", type=int, default=None, help="frames per clip (default: the model's)")
    shapes.add_argument("--height", type=int, default=None, help="pixels (default: the model's)")
    shapes.add_argument("--width", type=int, default=None, help="pixels (default: the model's)")
    shapes.add_argument("--steps", type=int, default=None, help="sampling steps (default: the model's)")
    shapes.add_argument("--guidance", type=float, default=None, help="guidance scale (default: the model's)")
    shapes.add_argument("--scheduler", default=None, help="sampler name (default: the model's)")
    shapes.add_argument("--batch-size", type=int, default=16, help="clips sampled together (default: %(default)s)")
    shapes.add_argument("--device", default=None, help="cuda | mps | cpu (default: best available)")
    shapes.add_argument("--dtype", default=None, choices=("fp32", "fp16", "bf16"),
                        help="default: fp16 on CUDA, else fp32")
    shapes.add_argument("--out", default=None, metavar="JSON", help="write the results here (e.g. results.json)")
    shapes.add_argument("--contact-sheet", default=None, metavar="PNG",
                        help="write a PNG with a row of frames per clip, labelled with what was measured wrong")
    shapes.add_argument("--overwrite", action="store_true", help="replace existing --out / --contact-sheet files")
    shapes.add_argument("--quiet", action="store_true", help="no progress bar")
    return p


def _check_file_target(path: str | None, flag: str, suffix: str, overwrite: bool):
    """A results file: the right suffix, not a folder, not an existing file unless --overwrite."""
    from pathlib import Path

    if path is None:
        return None
    target = Path(path)
    if target.suffix.lower() != suffix:
        raise CLIError(f"{flag} {path!r} must end in {suffix}")
    if target.is_dir():
        raise CLIError(f"{flag} {path!r} is a folder; give a file name such as results{suffix}")
    if target.exists() and not overwrite:
        raise CLIError(f"{flag} {path!r} exists; pass --overwrite to replace it or choose another name")
    parent = target.resolve().parent
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir():
        raise CLIError(f"{flag} {path!r}: {parent} is a file, not a folder")
    return target


def _parse_seeds(text: str | None) -> list[int]:
    from vidiff.eval.suite import EVAL_SEEDS

    if text is None:
        return list(EVAL_SEEDS)
    try:
        seeds = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise CLIError(f"--seeds {text!r} must be comma-separated integers, e.g. 9001,9002") from None
    if not seeds or len(set(seeds)) != len(seeds):
        raise CLIError(f"--seeds {text!r} must list at least one seed, each once")
    return seeds


def _settings(args, info: dict) -> dict:
    """The sampling settings, checked against the model's vidiff.json before it loads (flags named in errors)."""
    from pathlib import Path

    from vidiff.pipelines.folder import read_scheduler_config
    from vidiff.pipelines.schedulers import max_inference_steps
    from vidiff.pipelines.text_to_video import resolve_settings

    schedule = read_scheduler_config(Path(args.model) / "scheduler")
    try:
        return resolve_settings(info, max_steps=max_inference_steps(schedule), num_frames=args.num_frames,
                                height=args.height, width=args.width, num_inference_steps=args.steps,
                                guidance_scale=args.guidance, scheduler=args.scheduler)
    except ValueError as e:
        message = str(e)
        for name, flag in (("num_inference_steps", "--steps"), ("num_frames", "--num-frames"),
                           ("guidance_scale", "--guidance"), ("height", "--height"), ("width", "--width"),
                           ("scheduler", "--scheduler")):
            message = message.replace(name, flag)
        raise CLIError(message) from None


def _command(args, seeds: list[int]) -> str:
    """The command line that reproduces this evaluation (output flags left out)."""
    import shlex

    parts = ["vidiff", "eval", "shapes", "--model", args.model, "--seeds", ",".join(map(str, seeds))]
    for prompt in args.prompts or []:
        parts += ["--prompts", prompt]
    for flag, value in (("--limit", args.limit), ("--num-frames", args.num_frames), ("--height", args.height),
                        ("--width", args.width), ("--steps", args.steps), ("--guidance", args.guidance),
                        ("--scheduler", args.scheduler), ("--dtype", args.dtype)):
        if value is not None:
            parts += [flag, str(value)]
    return shlex.join(parts)


def run(args) -> int:
    if args.eval_command == "shapes":
        return run_shapes(args)
    raise CLIError("choose what to evaluate: `vidiff eval shapes --model DIR` (see vidiff eval --help)")


def run_shapes(args) -> int:
    import time
    from pathlib import Path

    import vidiff
    from vidiff.eval import suite
    from vidiff.pipelines.folder import read_info
    from vidiff.utils import write_json_atomic

    # Everything is checked before the model loads.
    seeds = _parse_seeds(args.seeds)
    if args.batch_size < 1:
        raise CLIError(f"--batch-size must be >= 1, got {args.batch_size}")
    if args.limit is not None and args.limit < 1:
        raise CLIError(f"--limit must be >= 1, got {args.limit}")
    cases = suite.make_cases(seeds, prompts=args.prompts, limit=args.limit)  # ValueError names a bad caption
    out = _check_file_target(args.out, "--out", ".json", args.overwrite)
    sheet_path = _check_file_target(args.contact_sheet, "--contact-sheet", ".png", args.overwrite)
    if args.device is not None and args.device.partition(":")[0] not in ("cpu", "cuda", "mps"):
        raise CLIError(f"unknown --device {args.device!r}; use cuda, cuda:N, mps or cpu")
    info = read_info(args.model)
    if info["kind"] != "text-to-video":
        raise CLIError(f"--model {args.model} holds a {info['kind']!r} model; `eval shapes` needs a text-to-video "
                       "base model")
    settings = _settings(args, info)

    from vidiff.pipelines.text_to_video import VideoPipeline

    pipe = VideoPipeline.from_pretrained(args.model, device=args.device, dtype=args.dtype)
    start = time.perf_counter()
    clips = suite.generate(pipe, cases, batch_size=args.batch_size, progress=not args.quiet,
                           num_frames=settings["num_frames"], height=settings["height"], width=settings["width"],
                           num_inference_steps=settings["num_inference_steps"],
                           guidance_scale=settings["guidance_scale"], scheduler=settings["scheduler"])
    seconds = time.perf_counter() - start
    records = suite.score(cases, clips)
    summary = suite.summarize(records)
    print(suite.markdown_table(summary))
    written = []
    if out is not None:
        results = {"command": _command(args, seeds), "model": str(Path(args.model).resolve()), "seeds": seeds, "vidiff_version": vidiff.__version__,
                   "settings": {k: settings[k] for k in ("num_frames", "height", "width", "num_inference_steps",
                                                         "guidance_scale", "scheduler")},
                   "device": str(pipe.device), "seconds": round(seconds, 2), "summary": summary, "clips": records}
        write_json_atomic(out, results)
        written.append(str(out))
    if sheet_path is not None:
        from PIL import Image

        from vidiff.utils import atomic_path

        with atomic_path(sheet_path) as tmp:
            Image.fromarray(suite.contact_sheet(clips, records)).save(tmp, format="PNG")
        written.append(str(sheet_path))
    print(f"evaluated {len(records)} clips ({len(set(c.prompt for c in cases))} prompts, {len(seeds)} seeds) "
          f"in {seconds:.1f} s: all attributes right {100 * summary['accuracy']['all']:.1f}%"
          + (f"; wrote {', '.join(written)}" if written else ""))
    return 0
