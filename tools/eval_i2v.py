"""Image-to-video on the shapes world, judged from the pixels: is frame 0 the image, are the colour and the shape
kept in every frame, and does the shape move as the caption says?

    python tools/eval_i2v.py                                   # the demo interpolation stage, seeds 9001,9002
    python tools/eval_i2v.py --model vidiff/assets/demo        # the demo cascade (interpolation, then SSR: 64 px)
    python tools/eval_i2v.py --model runs/i2v/pipeline --json docs/quality/i2v.json

Each held-out case (vidiff.eval.suite: 48 captions x the seeds) gets two first frames at the output size:
  shapes  frame 0 of the case's clip as `vidiff data shapes` draws it (vidiff.data.synthetic.make_clip), so the
          shape sits where that motion starts;
  pil     a second drawer written here with PIL's ImageDraw (a disc, square or triangle, 4x supersampled),
          placed at random (seeded) with room to travel the caption's way: the synthetic world has no other
          drawer, so this one draws the same palette and shapes with other code.
A clip passes when frame 0 equals the image exactly, every frame shows the asked colour (the judge's nearest
colour), the clip shows the asked shape and is consistent (one shape in every frame, area within 15%, colour
within 40: vidiff.eval.shapes), and its motion is the caption's. Prints a markdown table.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw

from vidiff import demo
from vidiff.data.synthetic import ALL_COLORS, BACKGROUND, MOTIONS, make_clip
from vidiff.eval.shapes import analyze_frame, measure_clip, nearest_color
from vidiff.eval.suite import EVAL_SEEDS, make_cases, clip_seed
from vidiff.pipelines.cascade import CascadePipeline, is_cascade
from vidiff.pipelines.image_to_video import image_to_video
from vidiff.pipelines.text_to_video import VideoPipeline, to_uint8
from vidiff.progress import ProgressBar
from vidiff.utils import write_json_atomic

DRAWERS = ("shapes", "pil")
SUPERSAMPLE = 4


def draw_pil(color: str, shape: str, motion: str, size: int, seed: int) -> np.ndarray:
    """uint8 `(size, size, 3)`: one shape drawn with PIL at 4x and reduced (antialiased), radius 12-18% of the
    frame as in the shapes world, its centre in the first 40% of the way the caption moves (room to travel)."""
    rng = np.random.default_rng(seed)
    radius = size * rng.uniform(0.12, 0.18)
    low, high = radius + 1, size - 1 - radius
    start = rng.uniform(low, low + 0.4 * (high - low))
    across = rng.uniform(low, high)
    dx, dy = MOTIONS[motion]
    along = start if dx + dy > 0 else size - start  # moving left / up: start on the right / at the bottom
    cx, cy = (along, across) if dx else (across, along)
    big = size * SUPERSAMPLE
    image = Image.new("RGB", (big, big), BACKGROUND)
    draw = ImageDraw.Draw(image)
    s, r = SUPERSAMPLE, radius * SUPERSAMPLE
    x, y = cx * s, cy * s
    if shape == "circle":
        draw.ellipse([x - r, y - r, x + r, y + r], fill=ALL_COLORS[color])
    elif shape == "square":
        half = 0.85 * r
        draw.rectangle([x - half, y - half, x + half, y + half], fill=ALL_COLORS[color])
    else:  # upward equilateral triangle of circumradius r
        corners = [(x + r * np.cos(a), y - r * np.sin(a)) for a in np.pi / 2 + np.array([0, 2, 4]) * np.pi / 3]
        draw.polygon(corners, fill=ALL_COLORS[color])
    return np.asarray(image.resize((size, size), Image.BOX), dtype=np.uint8)


def first_frame(drawer: str, case, size: int) -> np.ndarray:
    seed = clip_seed(case.seed, case.index)
    if drawer == "shapes":
        return make_clip(case.color, case.shape, case.motion, num_frames=2, size=size, seed=seed)[0]
    return draw_pil(case.color, case.shape, case.motion, size, seed)


def judge(clip: np.ndarray, image: np.ndarray, color: str, shape: str, motion: str) -> dict:
    """The four checks of one clip (see the module docstring) and the numbers behind them."""
    measured = measure_clip(clip)
    frames = [analyze_frame(frame) for frame in clip]
    colors = [nearest_color(f.paint) if f is not None else "none" for f in frames]
    result = {"exact": bool(np.array_equal(clip[0], image)), "color": all(c == color for c in colors),
              "shape": measured.shape == shape and measured.consistent, "motion": measured.motion == motion}
    result["all"] = all(result.values())
    return {**result, "measured_motion": measured.motion, "measured_shape": measured.shape,
            "consistent": measured.consistent, "displacement": list(measured.displacement)}


def load(model: str):
    if is_cascade(model):
        return CascadePipeline.from_pretrained(model, device="cpu")
    return VideoPipeline.from_pretrained(model, device="cpu")


def output_size(pipe) -> int:
    """The side of the clips `pipe` makes (a cascade's final stage's, a stage's own), square as the demo's."""
    d = (pipe.pipelines[-1] if isinstance(pipe, CascadePipeline) else pipe).defaults
    return d.height


def evaluate(pipe, cases, drawers, *, batch: int, steps) -> list[dict]:
    size = output_size(pipe)
    jobs = [(drawer, case) for drawer in drawers for case in cases]
    records = []
    bar = ProgressBar(range(0, len(jobs), batch), desc="image-to-video", unit="batch")
    for start in bar:
        chunk = jobs[start:start + batch]
        images = [first_frame(drawer, case, size) for drawer, case in chunk]
        generators = [torch.Generator().manual_seed(clip_seed(case.seed, case.index)) for _, case in chunk]
        video = image_to_video(pipe, images, [case.prompt for _, case in chunk], generator=generators, steps=steps,
                               progress=False)
        for (drawer, case), image, clip in zip(chunk, images, video):
            clip = to_uint8(clip)
            records.append({"drawer": drawer, "prompt": case.prompt, "seed": case.seed,
                            **judge(clip, image, case.color, case.shape, case.motion)})
    return records


def table(records: list[dict]) -> str:
    keys = ("exact", "color", "shape", "motion", "all")
    lines = ["| first frames | clips | " + " | ".join(keys) + " |", "|---" * (len(keys) + 2) + "|"]
    for drawer in [*DRAWERS, "both"]:
        rows = [r for r in records if drawer in ("both", r["drawer"])]
        if rows:
            cells = [f"{100 * np.mean([r[k] for r in rows]):.1f}%" for k in keys]
            lines.append(f"| {drawer} | {len(rows)} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=None,
                   help="interpolation stage or cascade folder (default: the built-in demo interpolation stage)")
    p.add_argument("--seeds", default=",".join(map(str, EVAL_SEEDS)), help="comma-separated (default: %(default)s)")
    p.add_argument("--drawers", default=",".join(DRAWERS), help="first-frame drawers (default: %(default)s)")
    p.add_argument("--limit", type=int, default=None, help="cases per run (a balanced subset; default: all 48/seed)")
    p.add_argument("--steps", type=int, default=None, help="sampling steps (default: the model's)")
    p.add_argument("--batch", type=int, default=16, help="clips per sampling call (default: %(default)s)")
    p.add_argument("--json", default=None, help="write every clip's record here")
    args = p.parse_args()
    torch.set_num_threads(1)
    drawers = args.drawers.split(",")
    if not set(drawers) <= set(DRAWERS):
        sys.exit(f"--drawers: choose from {', '.join(DRAWERS)}")
    model = args.model or str(demo.model_dir("interpolation"))
    pipe = load(model)
    cases = make_cases([int(s) for s in args.seeds.split(",")], limit=args.limit)
    records = evaluate(pipe, cases, drawers, batch=args.batch, steps=args.steps)
    print(f"{model}, seeds {args.seeds}, {len(records)} clips")
    print(table(records))
    if args.json:
        write_json_atomic(Path(args.json), {"model": model, "seeds": args.seeds, "records": records})


if __name__ == "__main__":
    main()
