"""A trajectory ControlNet on the shapes world, judged from the pixels: does the generated shape go where the
control's dot goes, and is it the colour and shape the prompt asks for?

    python tools/eval_controlnet.py --controlnet runs/demo-controlnet/controlnet
    python tools/eval_controlnet.py --controlnet runs/demo-controlnet/controlnet --json docs/quality/controlnet.json
    python tools/eval_controlnet.py --controlnet none          # the base alone on the same cases (a baseline)

Each held-out case (vidiff.eval.suite: the 48 captions x the seeds, clip seeds the training set never used) has a
source clip drawn as `vidiff data shapes` draws the demo's (15 frames at 64 px, every 2nd frame, averaged down to
32 px: the base's clip), and its `track` control images (vidiff.control.extractors: a dot at the shape's centroid).
Three tasks per case:
  follow    the prompt is the source's caption: the clip is the source's path, regenerated
  edit      the prompt asks for another colour and shape (the same motion): structure kept, content changed
            (Gen-1's edit, with the track as the structure), sampled from noise (`generate --control-video`)
  sdedit    the same edit as `vidiff edit --controlnet` makes it with the model's defaults (SDEdit at its
            vidiff.json edit_strength and edit_guidance, cross-frame attention to frame 0, the control images
            from the source clip itself)
  diagonal  the dot moves diagonally (a path no training clip has), the prompt names its dominant direction
A clip follows when every frame shows a shape whose centroid (vidiff.eval.shapes) is within --tolerance px (2) of
the control's dot; it is right when it also shows the asked colour (nearest palette colour, every frame) and shape.
Prints a markdown table: per task, the share that follow, that are right, both, and the mean / worst distance.
"""
from __future__ import annotations

import argparse
import itertools
from pathlib import Path

import numpy as np
import torch

from vidiff import demo
from vidiff.control import Control, VideoControlNet, control_images, read_controlnet
from vidiff.data.synthetic import COLORS, MOTIONS, SHAPES, caption, make_clip
from vidiff.eval.shapes import analyze_frame, measure_clip, nearest_color, trajectory
from vidiff.eval.suite import EVAL_SEEDS, clip_seed, make_cases
from vidiff.pipelines.editing import edit_video
from vidiff.pipelines.text_to_video import VideoPipeline, to_uint8
from vidiff.progress import ProgressBar
from vidiff.utils import write_json_atomic

TASKS = ("follow", "edit", "sdedit", "diagonal")
SOURCE_FRAMES, SOURCE_SIZE = 15, 64   # the demo's shapes clips (configs/demo/demo.yaml), read as the base reads them


def base_clip(color: str, shape: str, motion: str, seed: int) -> np.ndarray:
    """A shapes clip as the base trains on it: every 2nd of 15 frames at 64 px, averaged 2x2 down to 32 px."""
    clip = make_clip(color, shape, motion, num_frames=SOURCE_FRAMES, size=SOURCE_SIZE, seed=seed)[::2]
    f, h, w, c = clip.shape
    return np.round(clip.reshape(f, h // 2, 2, w // 2, 2, c).astype(np.float64).mean(axis=(2, 4))).astype(np.uint8)


def diagonal_clip(color: str, shape: str, motion: str, seed: int) -> np.ndarray:
    """The case's clip with a drift at right angles added (whole pixels, towards the side with more room, at most
    half the travel): a shape travelling diagonally, its dominant direction still the caption's."""
    clip = base_clip(color, shape, motion, seed)
    path = trajectory(clip)
    along, across = (1, 0) if MOTIONS[motion][0] else (0, 1)  # (y, x) axes of the motion and across it
    size = clip.shape[1]
    radius = np.sqrt(analyze_frame(clip[0]).area / np.pi)
    position = path[:, across].mean()
    room_low, room_high = position - radius - 1, size - 1 - radius - position
    travel = abs(path[-1, along] - path[0, along])
    drift = min(max(room_low, room_high), 0.5 * travel) * (1 if room_high >= room_low else -1)
    steps = np.round(np.linspace(0.0, drift, len(clip))).astype(int)
    return np.stack([np.roll(frame, step, axis=across) for frame, step in zip(clip, steps)])


def other(value: str, choices, k: int) -> str:
    return [c for c in choices if c != value][k % (len(choices) - 1)]


def task_case(task: str, case) -> tuple[np.ndarray, str, str, str]:
    """(source clip, prompt, asked colour, asked shape) of one task on one held-out case."""
    seed = clip_seed(case.seed, case.index)
    if task == "diagonal":
        return diagonal_clip(case.color, case.shape, case.motion, seed), case.prompt, case.color, case.shape
    source = base_clip(case.color, case.shape, case.motion, seed)
    if task == "follow":
        return source, case.prompt, case.color, case.shape
    # edit, sdedit: another colour and another shape, the source's motion
    color, shape = other(case.color, COLORS, case.index), other(case.shape, SHAPES, case.index // 3)
    return source, caption(color, shape, case.motion), color, shape


def judge(clip: np.ndarray, source: np.ndarray, color: str, shape: str, tolerance: float) -> dict:
    path, wanted = trajectory(clip), trajectory(source)
    distance = np.linalg.norm(path - wanted, axis=1)  # NaN where a frame shows no shape
    worst = float(np.nanmax(distance)) if np.isfinite(distance).any() else float("inf")
    follows = bool(np.isfinite(distance).all() and worst <= tolerance)
    measured = measure_clip(clip)
    colors = [nearest_color(f.paint) if f is not None else "none" for f in map(analyze_frame, clip)]
    right = all(c == color for c in colors) and measured.shape == shape
    return {"follows": follows, "right": bool(right), "both": follows and bool(right),
            "mean_distance": float(np.nanmean(distance)) if np.isfinite(distance).any() else float("inf"),
            "worst_distance": worst, "measured_shape": measured.shape}


def sdedit(pipe, controlnet, source: np.ndarray, prompt: str, seed: int, scale: float) -> np.ndarray:
    """`vidiff edit --controlnet` with the model's defaults on one clip (the control images: the clip's own)."""
    d = pipe.defaults
    control = Control(controlnet, control_images(source, "track", *source.shape[1:3]), scale) if controlnet else None
    result = edit_video(pipe, source, [prompt], strength=d.edit_strength, guidance_scale=d.edit_guidance,
                        seed=seed, control=control, progress=False)
    return to_uint8(result.videos[0][0])


def evaluate(pipe, controlnet, cases, tasks, *, batch: int, steps, scale: float, tolerance: float) -> list[dict]:
    records = []
    if "sdedit" in tasks:
        for case in ProgressBar(cases, desc="controlnet sdedit", unit="clip"):
            source, prompt, color, shape = task_case("sdedit", case)
            clip = sdedit(pipe, controlnet, source, prompt, clip_seed(case.seed, case.index), scale)
            records.append({"task": "sdedit", "prompt": prompt, "seed": case.seed, "source": case.prompt,
                            **judge(clip, source, color, shape, tolerance)})
    jobs = list(itertools.product([t for t in tasks if t != "sdedit"], cases))
    for start in ProgressBar(range(0, len(jobs), batch), desc="controlnet", unit="batch"):
        chunk = jobs[start:start + batch]
        made = [task_case(task, case) for task, case in chunk]
        control = None
        if controlnet is not None:
            images = torch.cat([control_images(source, "track", 32, 32) for source, *_ in made])
            control = Control(controlnet, images, scale)
        generators = [torch.Generator().manual_seed(clip_seed(case.seed, case.index)) for _, case in chunk]
        clips = pipe([prompt for _, prompt, _, _ in made], generator=generators, num_inference_steps=steps,
                     control=control, progress=False)
        for (task, case), (source, prompt, color, shape), clip in zip(chunk, made, clips):
            records.append({"task": task, "prompt": prompt, "seed": case.seed, "source": case.prompt,
                            **judge(clip, source, color, shape, tolerance)})
    return records


def table(records: list[dict], tolerance: float) -> str:
    lines = [f"| task | clips | follows (<= {tolerance:g} px) | right colour + shape | both | mean px | median worst-frame px |",
             "|---|---|---|---|---|---|---|"]
    for task in TASKS:
        rows = [r for r in records if r["task"] == task]
        if rows:
            share = lambda key: f"{100 * np.mean([r[key] for r in rows]):.1f}%"  # noqa: E731
            finite = [r["mean_distance"] for r in rows if np.isfinite(r["mean_distance"])]
            worst = [r["worst_distance"] for r in rows if np.isfinite(r["worst_distance"])]
            lines.append(f"| {task} | {len(rows)} | {share('follows')} | {share('right')} | {share('both')} | "
                         f"{np.mean(finite):.2f} | {np.median(worst):.2f} |")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--controlnet", required=True, help="a trained track ControlNet folder, or `none` (baseline)")
    p.add_argument("--model", default=None, help="the base it steers (default: the built-in demo base)")
    p.add_argument("--seeds", default=",".join(map(str, EVAL_SEEDS)), help="comma-separated (default: %(default)s)")
    p.add_argument("--tasks", default=",".join(TASKS), help="(default: %(default)s)")
    p.add_argument("--limit", type=int, default=None, help="cases per seed (a balanced subset; default: all 48)")
    p.add_argument("--steps", type=int, default=None, help="sampling steps (default: the model's)")
    p.add_argument("--scale", type=float, default=1.0, help="control scale (default: %(default)s)")
    p.add_argument("--tolerance", type=float, default=2.0, help="px from the dot that count as following")
    p.add_argument("--batch", type=int, default=16, help="clips per sampling call (default: %(default)s)")
    p.add_argument("--json", default=None, help="write every clip's record here")
    args = p.parse_args()
    torch.set_num_threads(1)
    tasks = args.tasks.split(",")
    if not set(tasks) <= set(TASKS):
        raise SystemExit(f"--tasks: choose from {', '.join(TASKS)}")
    model = args.model or str(demo.model_dir("base"))
    pipe = VideoPipeline.from_pretrained(model, device="cpu")
    controlnet = None if args.controlnet == "none" else VideoControlNet(read_controlnet(args.controlnet))
    cases = make_cases([int(s) for s in args.seeds.split(",")], limit=args.limit)
    records = evaluate(pipe, controlnet, cases, tasks, batch=args.batch, steps=args.steps, scale=args.scale,
                       tolerance=args.tolerance)
    print(f"{model} + {args.controlnet}, seeds {args.seeds}, {len(records)} clips")
    print(table(records, args.tolerance))
    if args.json:
        write_json_atomic(Path(args.json), {"model": model, "controlnet": args.controlnet, "seeds": args.seeds,
                                            "tolerance": args.tolerance, "records": records})


if __name__ == "__main__":
    main()
