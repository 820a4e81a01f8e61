"""`vidiff eval`: measured quality on the synthetic shapes world (prompt following, temporal consistency, and the
cascade stages against the drawn truth)."""
from __future__ import annotations

import argparse

from vidiff.cli.common import CLIError, in_flag_names, quiet_loading
from vidiff.utils import DTYPES

SHAPES_EPILOG = """examples:
  vidiff eval shapes --out results.json --contact-sheet sheet.png      (the built-in demo model)
  vidiff eval shapes --model vidiff/assets/demo/base --out base.json
  vidiff eval shapes --model runs/base/pipeline --seeds 9001,9002,9003 --steps 25
  vidiff eval shapes --model M --prompts "a red circle moving left" --prompts "a blue square moving up" --seeds 1

Every caption of the shapes world (4 colours x 3 shapes x 4 motions = 48 prompts) is sampled once per seed;
the default seeds 9001,9002 are held out: no checkpoint or setting was picked with them. Colour, shape and
motion are measured from the pixels (vidiff.eval.shapes); the table gives each attribute's accuracy, all three
together, and temporal consistency (one shape of stable size and colour in every frame)."""

STAGE_EPILOG = """examples:
  vidiff eval stage --model vidiff/assets/demo/interpolation --out interpolation.json
  vidiff eval stage --model vidiff/assets/demo/ssr --out ssr.json
  vidiff eval stage --stage extend --model runs/interpolation/pipeline --num-known 4

For each held-out prompt x seed the true clip is drawn (vidiff.data.synthetic); the stage gets what it would
get in a cascade (every k-th frame / the clip at 1/k size / the first frames) and its output is scored with
PSNR and SSIM next to the baseline: linear blending / bicubic upsampling / holding the last frame."""


def add_parser(sub):
    p = sub.add_parser("eval", help="measure generation quality on the synthetic shapes prompts",
                       formatter_class=argparse.RawDescriptionHelpFormatter,
                       description="Generate clips for a fixed prompt x seed set and measure them from their pixels.",
                       epilog="examples:\n  vidiff eval shapes --model DIR --out results.json\n"
                              "  vidiff eval stage --model STAGE_DIR --out stage.json")
    eval_sub = p.add_subparsers(dest="eval_command", metavar="EVAL_COMMAND")
    shapes = eval_sub.add_parser(
        "shapes", help="prompt following (colour, shape, motion) and temporal consistency of a model or cascade",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Generate one clip per shapes prompt and seed, measure colour, shape, motion direction and "
                    "temporal consistency from the pixels, print a markdown table and write the results as JSON.",
        epilog=SHAPES_EPILOG)
    source = shapes.add_mutually_exclusive_group()
    source.add_argument("--model", metavar="DIR",
                        help="vidiff pipeline folder (text-to-video; a cascade folder counts as --cascade; "
                             "default: the built-in demo model)")
    source.add_argument("--cascade", metavar="YAML", help="cascade YAML (or a folder holding cascade.yaml)")
    _add_case_arguments(shapes)
    shapes.add_argument("--num-frames", type=int, default=None, help="base frames per clip (default: the model's)")
    shapes.add_argument("--height", type=int, default=None, help="base pixels (default: the model's)")
    shapes.add_argument("--width", type=int, default=None, help="base pixels (default: the model's)")
    shapes.add_argument("--steps", type=int, default=None, help="base sampling steps (default: the model's)")
    shapes.add_argument("--guidance", type=float, default=None, help="base guidance scale (default: the model's)")
    shapes.add_argument("--scheduler", default=None, help="sampler name (default: the model's; not with --cascade)")
    shapes.add_argument("--batch-size", type=int, default=16, help="clips sampled together (default: %(default)s)")
    shapes.add_argument("--contact-sheet", default=None, metavar="PNG",
                        help="write a PNG with a row of frames per clip, labelled with what was measured wrong")
    _add_run_arguments(shapes)

    stage = eval_sub.add_parser(
        "stage", help="a cascade stage (interpolation, ssr, extension) against the true synthetic clips",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Score a cascade stage with PSNR / SSIM against the drawn truth, next to its simple baseline.",
        epilog=STAGE_EPILOG)
    stage.add_argument("--model", metavar="DIR", required=True, help="stage pipeline folder")
    stage.add_argument("--stage", choices=("interpolation", "ssr", "extend"), default=None,
                       help="what to score (default: the model's kind; `extend` needs an interpolation model "
                            "trained with future-prediction masks)")
    _add_case_arguments(stage)
    stage.add_argument("--factor", type=int, default=None, help="interpolation factor (default: the stage's first)")
    stage.add_argument("--num-frames", type=int, default=None,
                       help="frames of the output clip (default: the stage's window)")
    stage.add_argument("--num-known", type=int, default=None,
                       help="extend: frames given to the stage (default: half the window)")
    stage.add_argument("--noise-level", type=int, default=None, help="ssr: condition noise level (default: the stage's)")
    stage.add_argument("--steps", type=int, default=None, help="sampling steps (default: the model's)")
    stage.add_argument("--guidance", type=float, default=None, help="guidance scale (default: the model's)")
    _add_run_arguments(stage)

    edit = eval_sub.add_parser(
        "edit", help="video editing: colour (or shape) changed to the target with the motion kept",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Edit true shapes clips to the next colour (or shape) with `vidiff edit`'s code and measure "
                    "from the pixels whether the edit took, the other attribute stayed and the motion was kept.",
        epilog=EDIT_EPILOG)
    edit.add_argument("--model", metavar="DIR", default=None,
                      help="text-to-video pipeline folder (default: the built-in demo base)")
    edit.add_argument("--attribute", choices=("color", "shape"), default="color", help="what the edits change "
                      "(default: %(default)s)")
    edit.add_argument("--method", choices=("zero-shot", "tune"), default="zero-shot",
                      help="zero-shot (cross-frame attention) or tune (Tune-A-Video, per clip) (default: %(default)s)")
    edit.add_argument("--strength", type=float, default=None,
                      help="SDEdit strength in [0, 1] instead of DDIM inversion (default: inversion)")
    edit.add_argument("--negative", choices=("none", "source"), default="none",
                      help="negative prompt while sampling: none (the empty prompt) or source (the clip's own "
                           "caption: guidance then pushes from the source towards the target, the way users pass "
                           "`vidiff edit --negative`) (default: %(default)s)")
    edit.add_argument("--tune-steps", type=int, default=100, help="tune: steps per clip (default: %(default)s)")
    edit.add_argument("--tune-lr", type=float, default=3e-5, help="tune: learning rate (default: %(default)s)")
    _add_case_arguments(edit)
    edit.add_argument("--steps", type=int, default=None, help="DDIM steps (default: the model's)")
    edit.add_argument("--guidance", type=float, default=None, help="guidance while sampling (default: the model's)")
    _add_run_arguments(edit)
    return p


EDIT_EPILOG = """examples:
  vidiff eval edit --out edit.json                               (the built-in demo base, zero-shot)
  vidiff eval edit --model runs/base/pipeline --attribute shape --method tune --tune-steps 50 --limit 12

Each held-out case's true clip (vidiff.data.synthetic) is edited to the next colour in red, green, blue, yellow
order (or the next shape), with its caption as the source prompt and the changed caption as the target."""


def _add_case_arguments(p) -> None:
    p.add_argument("--seeds", default=None, help="comma-separated evaluation seeds (default: the held-out 9001,9002)")
    p.add_argument("--prompts", action="append", default=None, metavar="TEXT",
                   help="evaluate only this shapes caption (repeatable; default: all 48)")
    p.add_argument("--limit", type=int, default=None, help="keep only the first N clips (quick checks)")


def _add_run_arguments(p) -> None:
    p.add_argument("--device", default=None, help="cuda | cuda:N | mps | cpu (default: best available)")
    p.add_argument("--dtype", default=None, choices=DTYPES, help="default: fp16 on CUDA, else fp32")
    p.add_argument("--out", default=None, metavar="JSON", help="write the results here (e.g. results.json)")
    p.add_argument("--overwrite", action="store_true", help="replace existing output files")
    p.add_argument("--quiet", action="store_true", help="no progress bar")


# ---------------------------------------------------------------------------------------------------------------
# Checks (before any model loads)
# ---------------------------------------------------------------------------------------------------------------
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


def _cases(args):
    """The (prompt, seed) cases from --seeds / --prompts / --limit."""
    from vidiff.eval import suite

    if args.seeds is None:
        seeds = list(suite.EVAL_SEEDS)
    else:
        try:
            seeds = [int(part) for part in args.seeds.split(",") if part.strip()]
        except ValueError:
            raise CLIError(f"--seeds {args.seeds!r} must be comma-separated integers, e.g. 9001,9002") from None
        if not seeds or len(set(seeds)) != len(seeds):
            raise CLIError(f"--seeds {args.seeds!r} must list at least one seed, each once")
    if args.limit is not None and args.limit < 1:
        raise CLIError(f"--limit must be >= 1, got {args.limit}")
    return seeds, suite.make_cases(seeds, prompts=args.prompts, limit=args.limit)  # ValueError names a caption


def _check_device(device: str | None) -> None:
    from vidiff.utils import check_device

    if device is not None:
        try:
            check_device(device)
        except ValueError as e:
            raise CLIError(f"--device: {e}") from None


def _resolve(info: dict, model, **requested) -> dict:
    """Sampling settings checked against a model's vidiff.json, errors naming the flags."""
    from pathlib import Path

    from vidiff.pipelines.folder import read_scheduler_config
    from vidiff.pipelines.schedulers import max_inference_steps
    from vidiff.pipelines.text_to_video import resolve_settings

    schedule = read_scheduler_config(Path(model) / "scheduler")
    try:
        return resolve_settings(info, max_steps=max_inference_steps(schedule), **requested)
    except ValueError as e:
        raise CLIError(in_flag_names(str(e), ("num_inference_steps", "num_frames", "guidance_scale", "height",
                                               "width", "scheduler"))) from None


def _command(args, seeds: list[int], flags: tuple[str, ...]) -> str:
    """The command line that reproduces this evaluation (output flags left out)."""
    import shlex

    parts = ["vidiff", "eval", args.eval_command]
    for flag in ("--cascade", "--model", "--stage"):
        value = getattr(args, flag[2:], None)
        if value is not None:
            parts += [flag, str(value)]
    parts += ["--seeds", ",".join(map(str, seeds))]
    for prompt in args.prompts or []:
        parts += ["--prompts", prompt]
    for flag in ("--limit",) + flags + ("--dtype",):
        value = getattr(args, flag[2:].replace("-", "_"), None)
        if value is not None:
            parts += [flag, str(value)]
    return shlex.join(parts)


def _write_results(out, results: dict) -> None:
    from vidiff.utils import write_json_atomic

    if out is not None:
        write_json_atomic(out, results)


def run(args) -> int:
    if args.eval_command == "shapes":
        return run_shapes(args)
    if args.eval_command == "stage":
        return run_stage(args)
    if args.eval_command == "edit":
        return run_edit(args)
    raise CLIError("choose what to evaluate: `vidiff eval shapes`, `vidiff eval stage --model DIR` or "
                   "`vidiff eval edit` (see vidiff eval --help)")


# ---------------------------------------------------------------------------------------------------------------
# vidiff eval shapes
# ---------------------------------------------------------------------------------------------------------------
def _shapes_settings(args) -> tuple[dict, dict]:
    """(sampling settings to pass, settings to record) for --model or --cascade."""
    from vidiff.pipelines.folder import read_info

    if args.cascade is not None:
        from vidiff.pipelines.cascade import read_cascade

        if args.scheduler is not None:
            raise CLIError("--scheduler does not apply to --cascade (each stage uses its YAML's sampler)")
        specs = read_cascade(args.cascade)
        base = specs[0]
        s = _resolve(base.info, base.model, num_frames=args.num_frames, height=args.height, width=args.width,
                     num_inference_steps=args.steps if args.steps is not None else base.steps,
                     guidance_scale=args.guidance if args.guidance is not None else base.guidance)
        call = {k: s[k] for k in ("num_frames", "height", "width", "num_inference_steps", "guidance_scale")}
        return call, dict(call, stages=[str(spec.model) for spec in specs])
    info = read_info(args.model)
    if info["kind"] != "text-to-video" or info.get("stage", "base") != "base":
        raise CLIError(f"--model {args.model} is not a text-to-video base model; `eval shapes` samples from text "
                       "(score a cascade stage with `vidiff eval stage`)")
    s = _resolve(info, args.model, num_frames=args.num_frames, height=args.height, width=args.width,
                 num_inference_steps=args.steps, guidance_scale=args.guidance, scheduler=args.scheduler)
    call = {k: s[k] for k in ("num_frames", "height", "width", "num_inference_steps", "guidance_scale", "scheduler")}
    return call, dict(call)


def _shapes_source(args) -> None:
    """No --model / --cascade: the built-in demo model (its cascade when shipped); a cascade folder given as
    --model is a cascade (as in `vidiff generate`)."""
    from pathlib import Path

    if args.model is None and args.cascade is None:
        from vidiff import demo

        args.model = str(demo.default_model())  # FileNotFoundError (one line) when the install has none
    if args.model is not None and Path(args.model).is_dir():
        from vidiff.pipelines.cascade import is_cascade

        if is_cascade(args.model):
            args.cascade, args.model = args.model, None


def run_shapes(args) -> int:
    import time
    from pathlib import Path

    import vidiff
    from vidiff.eval import suite

    _shapes_source(args)
    seeds, cases = _cases(args)
    if args.batch_size < 1:
        raise CLIError(f"--batch-size must be >= 1, got {args.batch_size}")
    out = _check_file_target(args.out, "--out", ".json", args.overwrite)
    sheet_path = _check_file_target(args.contact_sheet, "--contact-sheet", ".png", args.overwrite)
    _check_device(args.device)
    call, recorded = _shapes_settings(args)
    quiet_loading(args.quiet)
    if args.cascade is not None:
        from vidiff.pipelines.cascade import CascadePipeline

        pipe = CascadePipeline.from_pretrained(args.cascade, device=args.device, dtype=args.dtype)
        device = pipe.base.device
    else:
        from vidiff.pipelines.text_to_video import VideoPipeline

        pipe = VideoPipeline.from_pretrained(args.model, device=args.device, dtype=args.dtype)
        device = pipe.device
    start = time.perf_counter()
    clips = suite.generate(pipe, cases, batch_size=args.batch_size, progress=not args.quiet, **call)
    seconds = time.perf_counter() - start
    records = suite.score(cases, clips)
    summary = suite.summarize(records)
    print(suite.markdown_table(summary))
    flags = ("--num-frames", "--height", "--width", "--steps", "--guidance", "--scheduler")
    _write_results(out, {"command": _command(args, seeds, flags), "model": str(Path(args.cascade or args.model).resolve()),
                         "seeds": seeds, "vidiff_version": vidiff.__version__, "settings": recorded,
                         "clip_size": list(clips[0].shape[:3]), "device": str(device), "seconds": round(seconds, 2),
                         "summary": summary, "clips": records})
    if sheet_path is not None:
        from PIL import Image

        from vidiff.utils import atomic_path

        with atomic_path(sheet_path) as tmp:
            Image.fromarray(suite.contact_sheet(clips, records)).save(tmp, format="PNG")
    written = [str(p) for p in (out, sheet_path) if p is not None]
    print(f"evaluated {len(records)} clips ({len({c.prompt for c in cases})} prompts, {len({c.seed for c in cases})} seeds) "
          f"in {seconds:.1f} s: all attributes right {100 * summary['accuracy']['all']:.1f}%"
          + (f"; wrote {', '.join(written)}" if written else ""))
    return 0


# ---------------------------------------------------------------------------------------------------------------
# vidiff eval stage
# ---------------------------------------------------------------------------------------------------------------
def _stage_plan(args, info: dict) -> dict:
    """What to score and at which sizes, from the model's vidiff.json and the flags (torch-free checks)."""
    from vidiff.pipelines import cascade

    kind = cascade.stage_name(info)
    stage = args.stage or {"interpolation": "interpolation", "ssr": "ssr"}.get(kind)
    if stage is None or (stage in ("interpolation", "extend") and kind != "interpolation") \
            or (stage == "ssr" and kind != "ssr"):
        raise CLIError(f"--model {args.model} is a {kind!r} model; `eval stage` scores interpolation / extend "
                       "(an interpolation stage) and ssr (an ssr stage)")
    d = info["defaults"]
    frames = args.num_frames if args.num_frames is not None else int(d["num_frames"])
    plan = {"stage": stage, "num_frames": frames, "size": int(d["height"]), "factor": 2, "num_known": None}
    if int(d["height"]) != int(d["width"]):
        raise CLIError(f"--model {args.model} makes {d['width']}x{d['height']} clips; the shapes clips are square")
    try:
        if stage == "interpolation":
            plan["factor"] = cascade.check_factor(info, args.factor, f"--model {args.model}")
            if frames < plan["factor"] + 1 or (frames - 1) % plan["factor"]:
                raise CLIError(f"--num-frames {frames}: x{plan['factor']} interpolation makes (n - 1) x "
                               f"{plan['factor']} + 1 frames from n keyframes; use e.g. {2 * plan['factor'] + 1}")
        elif stage == "ssr":
            plan["factor"] = cascade.check_factor(info, None, f"--model {args.model}")
            plan["noise_level"] = cascade.check_noise_level(info, args.noise_level, f"--model {args.model}")
            cascade.stage_output_size(info, (frames, plan["size"] // plan["factor"], plan["size"] // plan["factor"]),
                                      where=f"--model {args.model}")
        else:
            known = args.num_known if args.num_known is not None else max(1, frames // 2)
            if not 1 <= known < frames:
                raise CLIError(f"--num-known must be in [1, {frames - 1}] for {frames}-frame clips, got {known}")
            plan["num_known"] = known
            cascade.check_extension(info, known, frames - known, None)
    except ValueError as e:
        raise CLIError(str(e)) from None
    return plan


def _stage_function(pipe, plan: dict, settings: dict):
    """fn(input uint8 clip, case[, num_frames]) -> uint8 clip, seeded per case (vidiff.eval.stages' contract)."""
    from vidiff.eval.suite import clip_seed
    from vidiff.pipelines import cascade
    from vidiff.pipelines.text_to_video import to_uint8

    def seed(case):
        return clip_seed(case.seed, case.index)

    if plan["stage"] == "interpolation":
        return lambda known, case: to_uint8(cascade.interpolate_video(
            pipe, known, case.prompt, factor=plan["factor"], seed=seed(case), **settings)[0])
    if plan["stage"] == "ssr":
        return lambda low, case: to_uint8(cascade.upscale_video(
            pipe, low, case.prompt, noise_level=plan["noise_level"], seed=seed(case), **settings)[0])
    return lambda known, case, frames: to_uint8(cascade.extend_video(
        pipe, known, case.prompt, num_frames=frames - len(known), seed=seed(case), **settings)[0])


def run_stage(args) -> int:
    import time
    from pathlib import Path

    import vidiff
    from vidiff.eval import stages
    from vidiff.pipelines.folder import read_info

    seeds, cases = _cases(args)
    out = _check_file_target(args.out, "--out", ".json", args.overwrite)
    _check_device(args.device)
    info = read_info(args.model)
    plan = _stage_plan(args, info)
    s = _resolve(info, args.model, num_inference_steps=args.steps, guidance_scale=args.guidance)
    settings = {"steps": s["num_inference_steps"], "guidance": s["guidance_scale"], "progress": False}
    quiet_loading(args.quiet)
    from vidiff.pipelines.text_to_video import VideoPipeline

    pipe = VideoPipeline.from_pretrained(args.model, device=args.device, dtype=args.dtype)
    start = time.perf_counter()
    records = stages.run_stage(plan["stage"], _stage_function(pipe, plan, settings), cases,
                               num_frames=plan["num_frames"], size=plan["size"], factor=plan["factor"],
                               num_known=plan["num_known"], progress=not args.quiet)
    seconds = time.perf_counter() - start
    summary = stages.summarize(records)
    print(stages.markdown_table(plan["stage"], summary, stages.BASELINES[plan["stage"]]))
    flags = ("--factor", "--num-frames", "--num-known", "--noise-level", "--steps", "--guidance")
    _write_results(out, {"command": _command(args, seeds, flags), "model": str(Path(args.model).resolve()),
                         "seeds": seeds, "vidiff_version": vidiff.__version__, "plan": plan,
                         "settings": {k: v for k, v in settings.items() if k != "progress"},
                         "device": str(pipe.device), "seconds": round(seconds, 2), "summary": summary,
                         "clips": records})
    print(f"evaluated the {plan['stage']} stage on {len(records)} clips in {seconds:.1f} s: "
          f"{summary['psnr_gain']:+.2f} dB PSNR over {stages.BASELINES[plan['stage']]}"
          + (f"; wrote {out}" if out is not None else ""))
    return 0


# ---------------------------------------------------------------------------------------------------------------
# vidiff eval edit
# ---------------------------------------------------------------------------------------------------------------
def _edit_model(args) -> str:
    if args.model is not None:
        return args.model
    from vidiff import demo

    if "base" not in demo.available_stages():
        raise CLIError("no --model given and the built-in demo model is not installed: pass --model DIR")
    return str(demo.model_dir("base"))


def _editor(args, model: str, settings: dict):
    """fn(source, case, target_prompt) -> edited uint8 clip with `vidiff edit`'s `edit_video`, seeded per case.
    Tune-A-Video changes the model: it is reloaded for every clip, so each edit starts from the same weights."""
    from vidiff.eval.suite import clip_seed
    from vidiff.pipelines.editing import edit_video
    from vidiff.pipelines.text_to_video import VideoPipeline, to_uint8

    shared = VideoPipeline.from_pretrained(model, device=args.device, dtype=args.dtype)

    def edit(source, case, prompt):
        pipe = shared if args.method != "tune" else VideoPipeline.from_pretrained(model, device=args.device,
                                                                                   dtype=args.dtype)
        result = edit_video(pipe, source, [prompt], source_prompt=case.prompt, method=args.method,
                            num_inference_steps=settings["num_inference_steps"],
                            guidance_scale=settings["guidance_scale"], seed=clip_seed(case.seed, case.index),
                            negative_prompt=case.prompt if args.negative == "source" else None,
                            strength=args.strength, tune_steps=args.tune_steps if args.method == "tune" else 0,
                            tune_lr=args.tune_lr, progress=False)
        return to_uint8(result.videos[0][0])

    return edit, shared


def run_edit(args) -> int:
    import math
    import time
    from pathlib import Path

    import vidiff
    from vidiff.eval import edits
    from vidiff.pipelines.folder import read_info

    seeds, cases = _cases(args)
    out = _check_file_target(args.out, "--out", ".json", args.overwrite)
    _check_device(args.device)
    if args.strength is not None and not (math.isfinite(args.strength) and 0 <= args.strength <= 1):
        raise CLIError(f"--strength must be in [0, 1] (0 = the input unchanged, 1 = plain generation), "
                       f"got {args.strength}")
    if args.method == "tune" and (args.tune_steps < 1 or not (math.isfinite(args.tune_lr) and args.tune_lr > 0)):
        raise CLIError(f"--method tune needs --tune-steps >= 1 and --tune-lr > 0, got {args.tune_steps} and "
                       f"{args.tune_lr}")
    model = _edit_model(args)
    info = read_info(model)
    if info["kind"] != "text-to-video" or info.get("stage", "base") != "base":
        raise CLIError(f"--model {model} is not a text-to-video base model; editing needs one")
    settings = _resolve(info, model, num_inference_steps=args.steps, guidance_scale=args.guidance)
    d = info["defaults"]
    if int(d["height"]) != int(d["width"]):
        raise CLIError(f"--model {model} makes {d['width']}x{d['height']} clips; the shapes clips are square")
    quiet_loading(args.quiet)
    fn, pipe = _editor(args, model, settings)
    start = time.perf_counter()
    records = edits.run_edits(fn, cases, attribute=args.attribute, num_frames=int(d["num_frames"]),
                              size=int(d["height"]), progress=not args.quiet)
    seconds = time.perf_counter() - start
    summary = edits.summarize(records)
    print(edits.markdown_table(args.attribute, summary))
    flags = ("--attribute", "--method", "--strength", "--negative", "--tune-steps", "--tune-lr", "--steps",
             "--guidance")
    args.model = model
    _write_results(out, {"command": _command(args, seeds, flags), "model": str(Path(model).resolve()),
                         "seeds": seeds, "vidiff_version": vidiff.__version__,
                         "settings": {"steps": settings["num_inference_steps"],
                                      "guidance": settings["guidance_scale"], "method": args.method,
                                      "strength": args.strength, "negative": args.negative,
                                      "attribute": args.attribute},
                         "device": str(pipe.device), "seconds": round(seconds, 2), "summary": summary,
                         "clips": records})
    print(f"edited {len(records)} clips in {seconds:.1f} s: {args.attribute} changed with the motion kept in "
          f"{100 * summary['success']:.1f}%" + (f"; wrote {out}" if out is not None else ""))
    return 0
