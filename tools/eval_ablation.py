"""The inflation ablation (issue 12): is starting the video model from a trained text-to-image model worth it?

`python tools/train_demo.py --steps ablation` trains the demo base's recipe (both phases, each with its
learning-rate schedule, the same batches) at every `ablation.budgets` fraction of its steps, twice:
    inflated   from the text-to-image model inflated with identity temporal layers (at budget 1: the shipped base)
    scratch    from a random start: the same video U-Net, text model and data
This tool samples the shapes prompts on the held-out evaluation seeds (vidiff.eval.suite) with the final (EMA)
model of every run, scores them from the pixels (colour, shape, motion, all together) and reports accuracy vs
training steps. The claim measured: the inflated start reaches the scratch model's accuracy after the whole
recipe with at most half the steps.

    python tools/train_demo.py --steps ablation     # after the base step (or alongside it)
    python tools/eval_ablation.py                   # every run there is; reruns skip what is done

Writes to --out (default runs/ablation): ablation.json (every evaluation), ablation.md (the table) and
ablation.png.
"""
from __future__ import annotations

import argparse
import csv
import json
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tools")]

from train_demo import DemoRun, ablation_runs, final_model  # noqa: E402
from vidiff.eval import suite  # noqa: E402
from vidiff.utils import atomic_path, write_json_atomic  # noqa: E402

RUNS = ("inflated", "scratch")


# ---------------------------------------------------------------------------------------------------------------
# Evaluation
# ---------------------------------------------------------------------------------------------------------------
def evaluate_model(folder: Path, cases, settings: dict, device, batch_size: int) -> dict:
    """Sample and score the shapes cases with one pipeline folder: the accuracies."""
    from vidiff.pipelines.text_to_video import VideoPipeline

    pipe = VideoPipeline.from_pretrained(folder, device=device)
    clips = suite.generate(pipe, cases, batch_size=batch_size, progress=False, **settings)
    return suite.summarize(suite.score(cases, clips))["accuracy"]


def evaluation_order(found: dict[str, dict[int, Path]], total: int) -> list[tuple[str, int, Path]]:
    """(run, steps, model) in the order that answers the question soonest: both runs of the whole recipe, then the
    inflated runs from the fewest steps, then the rest of the scratch runs."""
    def priority(item):
        run, step = item
        if step == total:
            return (0, 0 if run == "scratch" else 1, step)
        return (1, step) if run == "inflated" else (2, step)

    order = sorted(((run, step) for run in found for step in found[run]), key=priority)
    return [(run, step, found[run][step]) for run, step in order]


def first_step_reaching(curve: dict[int, float], target: float) -> int | None:
    return next((step for step in sorted(curve) if curve[step] >= target), None)


def report(results: dict, total_steps: int) -> tuple[str, dict]:
    """The markdown table (accuracy vs training steps from both starts) and the headline comparison."""
    steps = sorted({int(s) for run in RUNS for s in results["evaluations"].get(run, {})})
    lines = ["| steps | inflated: colour / shape / motion / **all** | scratch: colour / shape / motion / **all** |",
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
                          + (f"reaches it with {reached} steps ({100 * reached / total_steps:.0f}% of the steps)."
                             if reached is not None else "no inflated run reaches it.")]
    return "\n".join(lines), headline


def training_log(path: Path) -> list[tuple[int, float]]:
    """(step, loss) rows of a `vidiff train` train_log.csv; [] when there is none."""
    if not path.is_file():
        return []
    with open(path, newline="") as file:
        return [(int(row["step"]), float(row["loss"])) for row in csv.DictReader(file)]


def plot(results: dict, path: Path, models: dict[str, dict[int, Path]] | None = None) -> None:
    """Accuracy vs steps of both starts; beside it, with `models` (`{run: {steps: run folder}}`), every run's
    training loss (both phases: the finishing one starts where the dotted line is)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2 if models else 1, figsize=(10 if models else 5, 3), dpi=100, squeeze=False)
    ax = axes[0, 0]
    for run in RUNS:
        points = sorted((int(s), a["all"]) for s, a in results["evaluations"].get(run, {}).items())
        if points:
            ax.plot(*zip(*points), marker="o", label=run)
    ax.set(xlabel="training steps", ylabel="all attributes right", ylim=(0, 1), title="inflation ablation")
    ax.legend()
    if models:
        ax = axes[0, 1]
        for run, style in zip(RUNS, ("-", "--")):
            for steps, folder in sorted(models[run].items()):
                first, finish = (training_log(folder / phase / "train_log.csv") for phase in ("train", "finish"))
                end = first[-1][0] if first else 0
                x, y = zip(*(first + [(end + step, loss) for step, loss in finish])) if first or finish else ((), ())
                line, = ax.plot(x, y, style, lw=1, label=f"{run}, {steps} steps")
                if first and finish:
                    ax.axvline(end, color=line.get_color(), lw=0.5, ls=":")
        ax.set(xlabel="step", ylabel="loss", yscale="log", title="training loss")
        ax.legend(fontsize=6)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp)
    plt.close(fig)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default=str(ROOT / "configs" / "demo" / "demo.yaml"))
    parser.add_argument("--demo-work", default=str(ROOT / "runs" / "demo"),
                        help="train_demo's working folder (holding base/ and ablation/)")
    parser.add_argument("--steps-scale", type=float, default=1.0, help="train_demo's --steps-scale of the runs")
    parser.add_argument("--out", default=str(ROOT / "runs" / "ablation"), help="ablation folder")
    parser.add_argument("--seeds", default=",".join(map(str, suite.EVAL_SEEDS)),
                        help="comma-separated evaluation seeds (default: the held-out ones; 48 clips each)")
    parser.add_argument("--sample-steps", type=int, default=None, help="sampling steps (default: the model's)")
    parser.add_argument("--guidance", type=float, default=None, help="guidance scale (default: the model's)")
    parser.add_argument("--batch-size", type=int, default=48, help="clips sampled together")
    parser.add_argument("--device", default=None, help="cuda | cpu (default: cuda when available)")
    args = parser.parse_args(argv)
    try:
        args.seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    except ValueError:
        parser.error(f"--seeds must be comma-separated integers, got {args.seeds!r}")
    if not args.steps_scale > 0:
        parser.error(f"--steps-scale must be > 0, got {args.steps_scale}")
    return args


def main(argv=None) -> int:
    import yaml

    args = parse_args(argv)
    cfg = yaml.safe_load(Path(args.config).read_text())
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    work, out = Path(args.demo_work), Path(args.out)
    runs = ablation_runs(DemoRun(cfg, Path(args.config).parent, work, "auto", args.steps_scale, device.type))
    total = max(steps for _, _, steps, _ in runs)
    found = {run: {} for run in RUNS}
    for start, _, steps, folder in runs:
        if (final_model(folder) / "vidiff.json").is_file():
            found[start][steps] = folder
        else:
            print(f"eval_ablation: {start} run of {steps} steps not trained yet ({folder}): `python "
                  f"tools/train_demo.py --steps {'base' if folder.name == 'base' else 'ablation'}`", flush=True)
    if not any(found.values()):
        raise SystemExit(f"eval_ablation: no ablation runs in {work}; run `python tools/train_demo.py --steps "
                         "base,ablation` first")
    cases = suite.make_cases(args.seeds)
    results_path = out / "ablation.json"
    results = json.loads(results_path.read_text()) if results_path.is_file() else {"evaluations": {}}
    settings = {key: value for key, value in (("num_inference_steps", args.sample_steps),
                                              ("guidance_scale", args.guidance)) if value is not None}
    results.update(command="python tools/eval_ablation.py " + " ".join(sys.argv[1:] if argv is None else argv),
                   seeds=args.seeds, device=device.type, total_steps=total, settings=settings,
                   runs={start: {str(steps): str(final_model(folder)) for steps, folder in found[start].items()}
                         for start in RUNS})
    out.mkdir(parents=True, exist_ok=True)
    for run, steps, folder in evaluation_order(found, total):
        done = results["evaluations"].setdefault(run, {})
        if str(steps) in done:
            continue
        began = time.perf_counter()
        done[str(steps)] = evaluate_model(final_model(folder), cases, settings, device, args.batch_size)
        print(f"{run}, {steps} steps: all attributes {100 * done[str(steps)]['all']:.1f}% "
              f"({time.perf_counter() - began:.0f} s)", flush=True)
        write_json_atomic(results_path, results)
    table, headline = report(results, total)
    results["headline"] = headline
    write_json_atomic(results_path, results)
    with atomic_path(out / "ablation.md") as tmp:
        tmp.write_text(table + "\n")
    plot(results, out / "ablation.png", found)
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
