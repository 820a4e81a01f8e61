"""`vidiff eval`: measured quality on the synthetic shapes world (prompt following, temporal consistency, and the
cascade stages against the drawn truth)."""
from __future__ import annotations

import argparse
import shlex
import time
from pathlib import Path

from PIL import Image

import vidiff
from vidiff.cli import eval_metrics
from vidiff.cli.cascade import check_base_sides
from vidiff.cli.common import CLIError, check_device, check_file_target, check_flag, flag_error, quiet_loading
from vidiff.cli.options import (add_device_options, add_long_video_option, add_output_options, add_sampler_options,
                                add_size_options)
from vidiff.cli.resolve import Model, demo_model, resolve_model, resolve_settings
from vidiff.eval import edits, stages, suite
from vidiff.pipelines import cascade, editing
from vidiff.pipelines.text_to_video import VideoPipeline, to_uint8
from vidiff.spec import LONG_VIDEO_NOISE, SettingError
from vidiff.training import tune
from vidiff.utils import atomic_path, plural, write_json_atomic

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


EDIT_EPILOG = """examples:
  vidiff eval edit --out edit.json                               (the built-in demo base, zero-shot)
  vidiff eval edit --model runs/base/pipeline --attribute shape --method tune --tune-steps 50 --limit 12

Each held-out case's true clip (vidiff.data.synthetic) is edited to the next colour in red, green, blue, yellow
order (or the next shape), with its caption as the source prompt and the changed caption as the target."""


def add_parser(sub, help_text: str):
    p = sub.add_parser("eval", help=help_text, formatter_class=argparse.RawDescriptionHelpFormatter,
                       description="Generate clips for a fixed prompt x seed set and measure them from their pixels, "
                                   "or score folders of clips with FVD, CLIP score and VBench-style checks.",
                       epilog="examples:\n  vidiff eval shapes --model DIR --out results.json\n"
                              "  vidiff eval stage --model STAGE_DIR --out stage.json\n"
                              "  vidiff eval vbench --videos clips/ --out vbench.json")
    eval_sub = p.add_subparsers(dest="eval_command", metavar="EVAL_COMMAND")
    _add_shapes_parser(eval_sub)
    _add_stage_parser(eval_sub)
    _add_edit_parser(eval_sub)
    eval_metrics.add_parsers(eval_sub)  # fvd, clip, vbench: over folders of clips
    return p


def _add_shapes_parser(eval_sub) -> None:
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
    add_size_options(shapes, frames_help="base frames per clip (default: the model's)")
    add_sampler_options(shapes, steps_help="base sampling steps (default: the model's)",
                        guidance_help="base guidance scale (default: the model's)")
    add_long_video_option(shapes)
    shapes.add_argument("--long-video-noise", choices=LONG_VIDEO_NOISE, default="independent",
                        help="a model's clips longer than its window: fresh noise past the first window, or "
                             "FreeNoise's reshuffled (default: %(default)s)")
    shapes.add_argument("--batch-size", type=int, default=16, help="clips sampled together (default: %(default)s)")
    shapes.add_argument("--contact-sheet", default=None, metavar="PNG",
                        help="write a PNG with a row of frames per clip, labelled with what was measured wrong")
    _add_run_arguments(shapes)


def _add_stage_parser(eval_sub) -> None:
    stage = eval_sub.add_parser(
        "stage", help="a cascade stage (interpolation, ssr, extension) against the true synthetic clips",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Score a cascade stage with PSNR / SSIM against the drawn truth, next to its simple baseline.",
        epilog=STAGE_EPILOG)
    stage.add_argument("--model", metavar="DIR", required=True, help="stage pipeline folder")
    stage.add_argument("--stage", choices=tuple(STAGE_PLANS), default=None,
                       help="what to score (default: the model's kind; `extend` needs an interpolation model "
                            "trained with future-prediction masks)")
    _add_case_arguments(stage)
    stage.add_argument("--factor", type=int, default=None, help="interpolation factor (default: the stage's first)")
    stage.add_argument("--num-frames", type=int, default=None,
                       help="frames of the output clip (default: the stage's window)")
    stage.add_argument("--num-known", type=int, default=None,
                       help="extend: frames given to the stage (default: half the window)")
    stage.add_argument("--noise-level", type=int, default=None, help="ssr: condition noise level (default: the stage's)")
    stage.add_argument("--no-prompt", action="store_true",
                       help="give the stage no caption, as `vidiff interpolate` / `upscale` / `extend` without "
                            "--prompt (guidance off unless --guidance)")
    add_sampler_options(stage, scheduler=False)
    stage.add_argument("--strength", type=float, default=None, metavar="S",
                       help="start from the input's plain answer noised this far (as the stage commands' --strength; "
                            "default 1)")
    _add_run_arguments(stage)


def _add_edit_parser(eval_sub) -> None:
    edit = eval_sub.add_parser(
        "edit", help="video editing: colour (or shape) changed to the target with the motion kept",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Edit true shapes clips to the next colour (or shape) with `vidiff edit`'s code and measure "
                    "from the pixels whether the edit took, the other attribute stayed and the motion was kept.",
        epilog=EDIT_EPILOG)
    edit.add_argument("--model", metavar="DIR", default=None,
                      help="text-to-video pipeline folder (default: the built-in demo base)")
    edit.add_argument("--attribute", choices=edits.EDIT_ATTRIBUTES, default="color",
                      help="what the edits change (default: %(default)s)")
    edit.add_argument("--method", choices=editing.EDIT_METHODS, default="zero-shot",
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
    add_sampler_options(edit, scheduler=False, steps_help="DDIM steps (default: the model's)",
                        guidance_help="guidance while sampling (default: the model's)")
    _add_run_arguments(edit)


def _add_case_arguments(p) -> None:
    p.add_argument("--seeds", default=None, help="comma-separated evaluation seeds (default: the held-out 9001,9002)")
    p.add_argument("--prompts", action="append", default=None, metavar="TEXT",
                   help="evaluate only this shapes caption (repeatable; default: all 48)")
    p.add_argument("--limit", type=int, default=None,
                   help="evaluate only N clips (quick checks): a balanced subset, each colour, shape and motion "
                        "asked for about equally often (the same N clips every run)")


def _add_run_arguments(p) -> None:
    add_device_options(p)
    add_output_options(p, out_help="write the results here (e.g. results.json)", required=False, metavar="JSON",
                       overwrite_help="replace existing output files")


# ---------------------------------------------------------------------------------------------------------------
# Checks (before any model loads)
# ---------------------------------------------------------------------------------------------------------------
def _cases(args):
    """The (prompt, seed) cases from --seeds / --prompts / --limit."""
    if args.seeds is None:
        seeds = list(suite.EVAL_SEEDS)
    else:
        try:
            seeds = [int(part) for part in args.seeds.split(",") if part.strip()]
        except ValueError:
            raise CLIError(f"--seeds {args.seeds!r} must be comma-separated integers, e.g. 9001,9002") from None
        if not seeds or len(set(seeds)) != len(seeds):
            raise CLIError(f"--seeds {args.seeds!r} must list at least one seed, each once")
        for seed in seeds:  # the one seed range (vidiff.spec.SETTINGS), as every other command's --seed
            check_flag("seed", seed, flag="--seeds")
    check_flag("limit", args.limit)
    return seeds, suite.make_cases(seeds, prompts=args.prompts, limit=args.limit)  # ValueError names a caption


def _command(args, seeds: list[int], flags: tuple[str, ...]) -> str:
    """The command line that reproduces this evaluation (output flags left out)."""
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
        if value is True:
            parts.append(flag)
        elif value is not None and value is not False:
            parts += [flag, str(value)]
    return shlex.join(parts)


def _write_results(out, results: dict) -> None:
    if out is not None:
        write_json_atomic(out, results)


def run(args) -> int:
    commands = {"shapes": run_shapes, "stage": run_stage, "edit": run_edit, **eval_metrics.RUNS}
    if args.eval_command not in commands:
        raise CLIError("choose what to evaluate: `vidiff eval shapes`, `vidiff eval stage --model DIR`, "
                       "`vidiff eval edit`, or clips with `vidiff eval fvd | clip | vbench` (see vidiff eval --help)")
    return commands[args.eval_command](args)


# ---------------------------------------------------------------------------------------------------------------
# vidiff eval shapes
# ---------------------------------------------------------------------------------------------------------------
SAMPLING = ("num_frames", "height", "width", "num_inference_steps", "guidance_scale", "scheduler")


def _shapes_settings(args) -> tuple[dict, dict]:
    """(sampling settings to pass, settings to record) for --model or --cascade."""
    request = dict(num_frames=args.num_frames, height=args.height, width=args.width,
                   num_inference_steps=args.steps, guidance_scale=args.guidance, scheduler=args.scheduler)
    if args.cascade is None:
        if args.long_video == "keyframes":
            raise CLIError("--long-video keyframes needs --cascade (an interpolation stage fills the keyframes in)")
        settings = resolve_model(args, "eval shapes", long_video_noise=args.long_video_noise, **request).settings
        call = {k: settings.as_dict()[k] for k in SAMPLING + ("long_video_noise",)}
        return call, dict(call, guidance_distilled=settings.guidance_distilled,
                          unet_evaluations=settings.unet_evaluations)
    if args.scheduler is not None or args.long_video_noise != "independent":
        raise CLIError(f"{'--scheduler' if args.scheduler is not None else '--long-video-noise'} does not apply to "
                       "--cascade (each stage samples with its YAML's sampler and its own windows)")
    specs = cascade.read_cascade(args.cascade)
    base = specs[0]
    check_base_sides(specs, args.height, args.width)  # as `generate --cascade`: a broken rule names its stage
    request.update(scheduler=base.scheduler, num_inference_steps=args.steps if args.steps is not None else base.steps,
                   guidance_scale=args.guidance if args.guidance is not None else base.guidance)
    s = resolve_settings(base.model, base.info, **request).as_dict()
    call = {k: s[k] for k in SAMPLING[:-1]}  # the cascade samples its base with the YAML's sampler
    try:
        method = cascade.long_video_method(specs, s["num_frames"], args.long_video)
    except SettingError as e:
        raise CLIError(e.for_flags()) from None
    return dict(call, long_video=args.long_video), dict(call, stages=[str(spec.model) for spec in specs],
                                                         long_video=method)


def _shapes_source(args) -> None:
    """No --model / --cascade: the built-in demo model (its cascade when shipped); a cascade folder given as
    --model is a cascade (as in `vidiff generate`)."""
    if args.model is None and args.cascade is None:
        args.model = demo_model(None)
    if args.model is not None and Path(args.model).is_dir() and cascade.is_cascade(args.model):
        args.cascade, args.model = args.model, None


def run_shapes(args) -> int:
    _shapes_source(args)
    seeds, cases = _cases(args)
    check_flag("batch_size", args.batch_size)
    out = check_file_target(args.out, "--out", ".json", args.overwrite)
    sheet_path = check_file_target(args.contact_sheet, "--contact-sheet", ".png", args.overwrite)
    device = check_device(args.device)
    call, recorded = _shapes_settings(args)
    quiet_loading(args.quiet)
    if args.cascade is not None:
        pipe = cascade.CascadePipeline.from_pretrained(args.cascade, device=device, dtype=args.dtype)
        device = pipe.base.device
    else:
        pipe = VideoPipeline.from_pretrained(args.model, device=device, dtype=args.dtype)
        device = pipe.device
    start = time.perf_counter()
    clips = suite.generate(pipe, cases, batch_size=args.batch_size, progress=not args.quiet, **call)
    seconds = time.perf_counter() - start
    records = suite.score(cases, clips)
    summary = suite.summarize(records)
    print(suite.markdown_table(summary))
    flags = ("--num-frames", "--height", "--width", "--steps", "--guidance", "--scheduler", "--long-video",
             "--long-video-noise")
    _write_results(out, {"command": _command(args, seeds, flags), "model": str(Path(args.cascade or args.model).resolve()),
                         "seeds": seeds, "vidiff_version": vidiff.__version__, "settings": recorded,
                         "clip_size": list(clips[0].shape[:3]), "device": str(device), "seconds": round(seconds, 2),
                         "summary": summary, "clips": records})
    if sheet_path is not None:
        with atomic_path(sheet_path) as tmp:
            Image.fromarray(suite.contact_sheet(clips, records)).save(tmp, format="PNG")
    written = [str(p) for p in (out, sheet_path) if p is not None]
    print(f"evaluated {len(records)} clips ({plural(len({c.prompt for c in cases}), 'prompt')}, "
          f"{plural(len({c.seed for c in cases}), 'seed')}) "
          f"in {seconds:.1f} s: all attributes right {100 * summary['accuracy']['all']:.1f}%"
          + (f"; wrote {', '.join(written)}" if written else ""))
    return 0


# ---------------------------------------------------------------------------------------------------------------
# vidiff eval stage
# ---------------------------------------------------------------------------------------------------------------
def _plan_interpolation(args, model: Model, plan: dict, where: str) -> None:
    """Keyframes every k-th frame of the true clip; the stage must make (n - 1) k + 1 frames from n of them."""
    k = plan["factor"] = model.stage.check_factor(args.factor, where)
    frames = plan["num_frames"]
    if frames < k + 1 or (frames - 1) % k:
        raise CLIError(f"--num-frames {frames}: x{k} interpolation makes (n - 1) x {k} + 1 frames from n "
                       f"keyframes; use e.g. {2 * k + 1}")
    keyframes = (frames - 1) // k + 1
    made = model.stage.output_size(model.info, (keyframes, plan["size"], plan["size"]), k, where)[0]
    if made != frames:
        raise CLIError(f"{where} is a {model.info.stage!r} model: it makes {made} frames from {keyframes}, not "
                       f"(n - 1) x {k} + 1 = {frames}; `eval stage --stage interpolation` scores an interpolation "
                       "stage")


def _plan_ssr(args, model: Model, plan: dict, where: str) -> None:
    """The true clip at 1 / k size; the stage must make the full size."""
    k = plan["factor"] = model.stage.check_factor(None, where)
    plan["noise_level"] = model.stage.check_noise_level(args.noise_level, where)
    model.stage.output_size(model.info, (plan["num_frames"], plan["size"] // k, plan["size"] // k), k, where)


def _plan_extend(args, model: Model, plan: dict, where: str) -> None:
    """The first frames of the true clip; the stage must extend them to the whole clip."""
    frames = plan["num_frames"]
    known = args.num_known if args.num_known is not None else max(1, frames // 2)
    if not 1 <= known < frames:
        raise CLIError(f"--num-known must be in [1, {frames - 1}] for {frames}-frame clips, got {known}")
    plan["num_known"] = known
    model.stage.check_extension(model.info, known, frames - known, None)


# what `eval stage` scores -> (the `vidiff` command that runs such a stage, its plan)
STAGE_PLANS = {"interpolation": ("interpolate", _plan_interpolation), "ssr": ("upscale", _plan_ssr),
               "extend": ("interpolate", _plan_extend)}
# what is scored without --stage: by the `vidiff` command that runs the model's stage
DEFAULT_SCORE = {"interpolate": "interpolation", "upscale": "ssr"}


def _stage_plan(args, model: Model) -> dict:
    """What to score and at which sizes, from the model's vidiff.json and the flags (torch-free checks, each by
    the model's stage)."""
    scored = args.stage or DEFAULT_SCORE.get(model.stage.command)
    if scored is None or STAGE_PLANS[scored][0] != model.stage.command:
        raise CLIError(f"--model {args.model} is a {model.info.stage!r} model; `eval stage` scores interpolation / "
                       "extend (an interpolation stage) and ssr (an ssr stage)")
    d = model.info.defaults
    if d.height != d.width:
        raise CLIError(f"--model {args.model} makes {d.width}x{d.height} clips; the shapes clips are square")
    frames = args.num_frames if args.num_frames is not None else d.num_frames
    plan = {"stage": scored, "num_frames": frames, "size": d.height, "factor": 2, "num_known": None}
    try:
        STAGE_PLANS[scored][1](args, model, plan, f"--model {args.model}")
    except ValueError as e:
        raise flag_error(e) from None
    return plan


def _stage_function(pipe, plan: dict, settings: dict, captioned: bool = True):
    """fn(input uint8 clip, case[, num_frames]) -> uint8 clip, seeded per case (vidiff.eval.stages' contract);
    the stage gets the case's caption, or none (`captioned=False`)."""
    def seed(case):
        return suite.clip_seed(case.seed, case.index)

    def prompt(case):
        return case.prompt if captioned else ""

    functions = {
        "interpolation": lambda known, case: to_uint8(cascade.interpolate_video(
            pipe, known, prompt(case), factor=plan["factor"], seed=seed(case), **settings)[0]),
        "ssr": lambda low, case: to_uint8(cascade.upscale_video(
            pipe, low, prompt(case), noise_level=plan["noise_level"], seed=seed(case), **settings)[0]),
        "extend": lambda known, case, frames: to_uint8(cascade.extend_video(
            pipe, known, prompt(case), num_frames=frames - len(known), seed=seed(case), **settings)[0]),
    }
    return functions[plan["stage"]]


def run_stage(args) -> int:
    seeds, cases = _cases(args)
    out = check_file_target(args.out, "--out", ".json", args.overwrite)
    device = check_device(args.device)
    guidance = args.guidance if args.guidance is not None or not args.no_prompt else 1.0  # as the stage commands
    model = resolve_model(args, "eval stage", runs=("interpolate", "upscale"), num_inference_steps=args.steps,
                          guidance_scale=guidance, strength=args.strength)
    plan = _stage_plan(args, model)
    plan["captioned"] = not args.no_prompt
    settings = {"steps": model.settings.num_inference_steps, "guidance": model.settings.guidance_scale,
                "strength": model.settings.strength, "progress": False}
    quiet_loading(args.quiet)
    pipe = VideoPipeline.from_pretrained(args.model, device=device, dtype=args.dtype)
    start = time.perf_counter()
    records = stages.run_stage(plan["stage"], _stage_function(pipe, plan, settings, plan["captioned"]), cases,
                               num_frames=plan["num_frames"], size=plan["size"], factor=plan["factor"],
                               num_known=plan["num_known"], progress=not args.quiet)
    seconds = time.perf_counter() - start
    summary = stages.summarize(records)
    print(stages.markdown_table(plan["stage"], summary, stages.BASELINES[plan["stage"]]))
    flags = ("--factor", "--num-frames", "--num-known", "--noise-level", "--steps", "--guidance", "--strength",
             "--no-prompt")
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
def _editor(args, model: Model, device):
    """fn(source, case, target_prompt) -> edited uint8 clip with `vidiff edit`'s code, seeded per case.
    Tune-A-Video changes the model: it is reloaded for every clip, so each edit starts from the same weights."""
    shared = VideoPipeline.from_pretrained(model.path, device=device, dtype=args.dtype)
    tunes = args.method == "tune"

    def edit(source, case, prompt):
        pipe = VideoPipeline.from_pretrained(model.path, device=device, dtype=args.dtype) if tunes else shared
        options = dict(source_prompt=case.prompt, num_inference_steps=model.settings.num_inference_steps,
                       guidance_scale=model.settings.guidance_scale, seed=suite.clip_seed(case.seed, case.index),
                       negative_prompt=case.prompt if args.negative == "source" else None,
                       strength=args.strength, progress=False)
        if tunes:
            result = tune.tune_and_edit(pipe, source, [prompt], tune_steps=args.tune_steps, tune_lr=args.tune_lr,
                                        **options)
        else:
            result = editing.edit_video(pipe, source, [prompt], method=args.method, **options)
        return to_uint8(result.videos[0][0])

    return edit, shared


def run_edit(args) -> int:
    seeds, cases = _cases(args)
    out = check_file_target(args.out, "--out", ".json", args.overwrite)
    device = check_device(args.device)
    check_flag("strength", args.strength)
    if args.method == "tune":
        check_flag("tune_steps", args.tune_steps)
        check_flag("tune_learning_rate", args.tune_lr)
    model = resolve_model(args, "eval edit", num_inference_steps=args.steps, guidance_scale=args.guidance)
    args.model = model.path
    d = model.info.defaults
    if d.height != d.width:
        raise CLIError(f"--model {model.path} makes {d.width}x{d.height} clips; the shapes clips are square")
    quiet_loading(args.quiet)
    fn, pipe = _editor(args, model, device)
    start = time.perf_counter()
    records = edits.run_edits(fn, cases, attribute=args.attribute, num_frames=d.num_frames, size=d.height,
                              progress=not args.quiet)
    seconds = time.perf_counter() - start
    summary = edits.summarize(records)
    print(edits.markdown_table(args.attribute, summary))
    flags = ("--attribute", "--method", "--strength", "--negative", "--tune-steps", "--tune-lr", "--steps",
             "--guidance")
    settings = {"steps": model.settings.num_inference_steps, "guidance": model.settings.guidance_scale,
                "method": args.method, "strength": args.strength, "negative": args.negative,
                "attribute": args.attribute}
    _write_results(out, {"command": _command(args, seeds, flags), "model": str(Path(model.path).resolve()),
                         "seeds": seeds, "vidiff_version": vidiff.__version__, "settings": settings,
                         "device": str(pipe.device), "seconds": round(seconds, 2), "summary": summary,
                         "clips": records})
    print(f"edited {len(records)} clips in {seconds:.1f} s: {args.attribute} changed with the motion kept in "
          f"{100 * summary['success']:.1f}%" + (f"; wrote {out}" if out is not None else ""))
    return 0
