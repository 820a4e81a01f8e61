"""The inflation ablation (issue 12): is starting the video model from a trained text-to-image model worth it?

Two runs of the demo base (configs/demo/demo.yaml, tools/train_demo.py's training loop, same batches, same
learning-rate schedule, same steps):
    inflated   the text-to-image model inflated with identity temporal layers (what the demo ships)
    scratch    the same video U-Net with the spatial weights the text-to-image run started from (random,
               seeded) and the same identity temporal layers: the video model trained from scratch
Every `--eval-every` steps (and at step 0) the EMA weights of each run sample the shapes prompts on the held-out
evaluation seed(s) (vidiff.eval.suite) and are scored from the pixels (colour, shape, motion, all together).

    python tools/eval_ablation.py                                      # the demo's full schedule (GPU: minutes)
    nice python tools/eval_ablation.py --steps-scale 0.05 --eval-every 50 --sample-steps 10   # CPU-sized

Needs the demo's `text` and `t2i` steps in --demo-work (runs them with tools/train_demo.py when missing).
Writes to --out (default runs/ablation): <run>/train/ (checkpoints, train_log.csv), <run>/ema-<step>.safetensors,
ablation.json (every evaluation; reruns skip what is done), ablation.md (the table) and ablation.png.
The claim measured: the inflated run reaches the scratch run's final all-attributes accuracy in at most half
the steps.
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from vidiff.eval import suite  # noqa: E402
from vidiff.utils import atomic_path, save_safetensors_atomic, write_json_atomic  # noqa: E402

RUNS = ("inflated", "scratch")


def load_train_demo():
    """tools/train_demo.py as a module (tools/ is not a package)."""
    spec = importlib.util.spec_from_file_location("train_demo", ROOT / "tools" / "train_demo.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# ---------------------------------------------------------------------------------------------------------------
# The two starting points
# ---------------------------------------------------------------------------------------------------------------
def initial_unet(run: str, cfg: dict, inflated_dir: Path):
    """The inflated U-Net, or the same U-Net with its spatial weights reset to the text-to-image run's seeded
    random initialisation (temporal layers keep their identity initialisation in both)."""
    from vidiff.models.unet import VideoUNet

    unet = VideoUNet.from_pretrained(inflated_dir / "unet")
    if run == "scratch":
        torch.manual_seed(cfg["seed"])  # as train_demo's t2i step seeds its fresh U-Net
        fresh = VideoUNet(dict(cfg["unet"]), temporal_conv=False, temporal_attention=False)
        missing, unexpected = unet.load_state_dict(fresh.state_dict(), strict=False)
        temporal = {name for name, _ in unet.named_parameters() if name not in fresh.state_dict()}
        if unexpected or not set(missing) <= temporal | {n for n, _ in unet.named_buffers()}:
            raise RuntimeError(f"scratch initialisation does not match the inflated U-Net: missing {missing[:5]}, "
                               f"unexpected {unexpected[:5]}")
    return unet


def train_run(td, ctx, run: str, out: Path, inflated_dir: Path, eval_every: int) -> int:
    """Train one run with train_demo's loop, keeping the EMA weights of every checkpoint as
    <run>/ema-<step>.safetensors (train_demo keeps only its last two checkpoints). Returns the step count."""
    from vidiff.training.stages import make_stage

    cfg = ctx.cfg
    schedule = ctx.run_config("base")
    schedule["checkpoint_every"] = max(1, min(eval_every, schedule["steps"]))
    folder = out / run
    if (folder / f"ema-{schedule['steps']:06d}.safetensors").is_file():
        return schedule["steps"]
    unet = initial_unet(run, cfg, inflated_dir).to(ctx.device)
    folder.mkdir(parents=True, exist_ok=True)
    save_safetensors_atomic({n: p for n, p in unet.named_parameters()}, folder / "ema-000000.safetensors")
    clips, index = ctx.data
    size, frames = cfg["unet"]["sample_size"], slice(None, None, 2)  # as train_demo's base step

    def batch(generator, batch_size):
        pick = torch.randint(0, len(clips), (batch_size,), generator=generator, device=ctx.device)
        return td.to_pixels(clips[pick], frames=frames, size=size), ctx.text_for(index[pick], generator)

    save_checkpoint = td.save_checkpoint

    def save_and_keep(checkpoints, step, unet_, ema, optimizer):
        save_checkpoint(checkpoints, step, unet_, ema, optimizer)
        save_safetensors_atomic(ema.shadow, folder / f"ema-{step:06d}.safetensors")

    td.save_checkpoint = save_and_keep  # train_loop looks it up at call time
    try:
        stage = make_stage("base", prediction_type=cfg["scheduler"]["prediction_type"])
        td.train_loop(unet, stage, batch, schedule, folder / "train", td.scheduler_config(cfg), ctx.device,
                      ctx.resume, f"ablation/{run}")
    finally:
        td.save_checkpoint = save_checkpoint
    return schedule["steps"]


# ---------------------------------------------------------------------------------------------------------------
# Evaluation
# ---------------------------------------------------------------------------------------------------------------
def evaluate_snapshot(path: Path, inflated_dir: Path, cases, settings: dict, device, batch_size: int) -> dict:
    """Sample and score the shapes cases with the U-Net weights in `path` (an EMA snapshot)."""
    from safetensors.torch import load_file
    from transformers import CLIPTextModel, CLIPTokenizer

    from vidiff.models.unet import VideoUNet
    from vidiff.pipelines.folder import read_info, read_scheduler_config
    from vidiff.pipelines.text_to_video import VideoPipeline

    unet = VideoUNet.from_pretrained(inflated_dir / "unet")
    missing, unexpected = unet.load_state_dict(load_file(str(path)), strict=False)
    if unexpected or set(missing) & {n for n, _ in unet.named_parameters()}:
        raise RuntimeError(f"{path} does not match the U-Net: missing {missing[:5]}, unexpected {unexpected[:5]}")
    pipe = VideoPipeline(unet, CLIPTextModel.from_pretrained(str(inflated_dir / "text_encoder")),
                         CLIPTokenizer.from_pretrained(str(inflated_dir / "tokenizer")),
                         read_scheduler_config(inflated_dir / "scheduler"), info=read_info(inflated_dir))
    pipe.to(device)
    clips = suite.generate(pipe, cases, batch_size=batch_size, progress=False, **settings)
    return suite.summarize(suite.score(cases, clips))["accuracy"]


def evaluation_order(out: Path, runs: list[str], total: int) -> list[tuple[str, int, Path]]:
    """(run, step, snapshot) in the order that answers the question soonest: both final steps, then the inflated
    run's curve from its earliest steps, then the rest of the scratch curve."""
    found = {run: {int(p.stem.split("-")[1]): p for p in sorted((out / run).glob("ema-*.safetensors"))} for run in runs}

    def priority(item):
        run, step = item
        if step == total:
            return (0, 0 if run == "scratch" else 1, step)
        return (1, step) if run == "inflated" else (2, step)

    order = sorted(((run, step) for run in runs for step in found[run]), key=priority)
    return [(run, step, found[run][step]) for run, step in order]


def first_step_reaching(curve: dict[int, float], target: float) -> int | None:
    return next((step for step in sorted(curve) if curve[step] >= target), None)


def report(results: dict, total_steps: int) -> tuple[str, dict]:
    """The markdown table (accuracy vs steps of both runs) and the headline comparison."""
    steps = sorted({int(s) for run in RUNS for s in results["evaluations"].get(run, {})})
    lines = ["| step | inflated: colour / shape / motion / **all** | scratch: colour / shape / motion / **all** |",
             "| ---: | --- | --- |"]
    for step in steps:
        cells = []
        for run in RUNS:
            acc = results["evaluations"].get(run, {}).get(str(step))
            cells.append("-" if acc is None else " / ".join(f"{100 * acc[k]:.0f}%" for k in ("color", "shape", "motion"))
                         + f" / **{100 * acc['all']:.0f}%**")
        lines.append(f"| {step} | {cells[0]} | {cells[1]} |")
    curves = {run: {int(s): a["all"] for s, a in results["evaluations"].get(run, {}).items()} for run in RUNS}
    headline = {}
    if total_steps in curves["scratch"] and curves["inflated"]:
        target = curves["scratch"][total_steps]
        reached = first_step_reaching(curves["inflated"], target)
        headline = {"scratch_final_all": target, "inflated_final_all": curves["inflated"].get(total_steps),
                    "inflated_steps_to_scratch_final": reached,
                    "fraction_of_steps": None if reached is None else reached / total_steps}
        if target == 0:  # "reaching 0%" at step 0 says nothing
            lines += ["", f"Scratch after {total_steps} steps: 0% all attributes, so that column "
                          "cannot compare the runs: read the per-attribute columns."]
        else:
            lines += ["", f"Scratch after {total_steps} steps: {100 * target:.0f}% all attributes; the inflated run "
                          + (f"reaches it at step {reached} ({100 * reached / total_steps:.0f}% of the steps)."
                             if reached is not None else "never reaches it.")]
    return "\n".join(lines), headline


def plot(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3), dpi=100)
    for run in RUNS:
        points = sorted((int(s), a["all"]) for s, a in results["evaluations"].get(run, {}).items())
        if points:
            ax.plot(*zip(*points), marker="o", label=run)
    ax.set(xlabel="training step", ylabel="all attributes right", ylim=(0, 1), title="inflation ablation")
    ax.legend()
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp)
    plt.close(fig)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default=str(ROOT / "configs" / "demo" / "demo.yaml"))
    parser.add_argument("--demo-work", default=str(ROOT / "runs" / "demo"),
                        help="train_demo's working folder holding text/ and t2i/ (made when missing)")
    parser.add_argument("--out", default=str(ROOT / "runs" / "ablation"), help="ablation folder")
    parser.add_argument("--steps-scale", type=float, default=1.0, help="multiply the base's step count")
    parser.add_argument("--eval-every", type=int, default=500, help="training steps between evaluations")
    parser.add_argument("--seeds", default=str(suite.EVAL_SEEDS[0]),
                        help="comma-separated evaluation seeds (default: the first held-out one; 48 clips each)")
    parser.add_argument("--sample-steps", type=int, default=None, help="sampling steps (default: the model's)")
    parser.add_argument("--batch-size", type=int, default=48, help="clips sampled together")
    parser.add_argument("--runs", default=",".join(RUNS), help="which runs (inflated,scratch)")
    parser.add_argument("--device", default=None, help="cuda | cpu (default: cuda when available)")
    args = parser.parse_args(argv)
    args.runs = [r.strip() for r in args.runs.split(",") if r.strip()]
    if not args.runs or any(r not in RUNS for r in args.runs):
        parser.error(f"--runs must name some of {', '.join(RUNS)}, got {args.runs}")
    if args.eval_every < 1 or not args.steps_scale > 0:
        parser.error("--eval-every must be >= 1 and --steps-scale > 0")
    try:
        args.seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    except ValueError:
        parser.error(f"--seeds must be comma-separated integers, got {args.seeds!r}")
    return args


def main(argv=None) -> int:
    import yaml

    from vidiff.pipelines.folder import inflate_pipeline, read_info

    args = parse_args(argv)
    td = load_train_demo()
    cfg = yaml.safe_load(Path(args.config).read_text())
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    demo_work, out = Path(args.demo_work), Path(args.out)
    if not (demo_work / "t2i" / "sd" / "model_index.json").is_file():
        td.main(["--config", args.config, "--work", str(demo_work), "--steps", "text,t2i",
                 "--steps-scale", str(args.steps_scale), "--device", device.type])
    inflated_dir = out / "inflated-init"
    if not (inflated_dir / "vidiff.json").is_file():  # as train_demo's base step inflates
        inflate_pipeline(demo_work / "t2i" / "sd", inflated_dir, defaults=cfg["defaults"], seed=cfg["seed"])
    ctx = td.Context(cfg, demo_work, device, "auto", args.steps_scale)
    cases = suite.make_cases(args.seeds)
    defaults = read_info(inflated_dir)["defaults"]
    settings = {"num_frames": defaults["num_frames"], "height": defaults["height"], "width": defaults["width"],
                "num_inference_steps": args.sample_steps or defaults["num_inference_steps"]}
    results_path = out / "ablation.json"
    results = json.loads(results_path.read_text()) if results_path.is_file() else {"evaluations": {}}
    results.update(command="python tools/eval_ablation.py " + " ".join(sys.argv[1:] if argv is None else argv),
                   seeds=args.seeds, settings=settings, device=device.type)
    total = 0
    for run in args.runs:  # train first, evaluate after: a run cut short still compares like with like
        began = time.perf_counter()
        total = train_run(td, ctx, run, out, inflated_dir, args.eval_every)
        print(f"{run}: trained {total} steps in {time.perf_counter() - began:.0f} s", flush=True)
    for run, step, snapshot in evaluation_order(out, args.runs, total):
        done = results["evaluations"].setdefault(run, {})
        if str(step) in done:
            continue
        began = time.perf_counter()
        done[str(step)] = evaluate_snapshot(snapshot, inflated_dir, cases, settings, device, args.batch_size)
        print(f"{run} step {step}: all attributes {100 * done[str(step)]['all']:.1f}% "
              f"({time.perf_counter() - began:.0f} s)", flush=True)
        write_json_atomic(results_path, results)
    table, headline = report(results, total)
    results["headline"] = headline
    write_json_atomic(results_path, results)
    with atomic_path(out / "ablation.md") as tmp:
        tmp.write_text(table + "\n")
    plot(results, out / "ablation.png")
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
