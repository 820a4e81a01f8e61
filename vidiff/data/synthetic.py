"""Procedural "shapes" videos: one coloured shape crossing a plain background, with a caption that says what it is.

Used by the tests, the demo model and the evaluation (which checks that a generated "a red circle moving left"
has a red mass that moves left), so the palette, shapes and motions below are public and must stay stable.
Everything is drawn with numpy (anti-aliased by a one-pixel ramp at the edge) and is deterministic by seed.
"""
from __future__ import annotations

import csv
import io
import itertools
import os
from pathlib import Path

import numpy as np

from vidiff.data.video_io import write_video
from vidiff.progress import ProgressBar
from vidiff.utils import atomic_dir, check_replaceable

# Saturated, well separated colours, so evaluation can tell them apart by nearest colour.
COLORS: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40),
    "green": (40, 190, 60),
    "blue": (40, 80, 230),
    "yellow": (240, 220, 40),
}
# Colours no demo model was trained on (`vidiff data shapes --colors purple`): new words to teach a fine-tune.
# The evaluation judges with the four above plus any of these its prompts name (vidiff.eval.shapes.palette_for).
EXTRA_COLORS: dict[str, tuple[int, int, int]] = {
    "purple": (150, 50, 200),
    "orange": (245, 130, 20),
}
ALL_COLORS: dict[str, tuple[int, int, int]] = {**COLORS, **EXTRA_COLORS}
SHAPES: tuple[str, ...] = ("circle", "square", "triangle")
# Direction of travel in image coordinates (x to the right, y down), per frame.
MOTIONS: dict[str, tuple[int, int]] = {
    "moving left": (-1, 0),
    "moving right": (1, 0),
    "moving up": (0, -1),
    "moving down": (0, 1),
}
BACKGROUND: tuple[int, int, int] = (24, 24, 24)
SHAPES_BACKGROUND_SHARE = 0.5  # below this share of plain background a clip is not from the shapes world


def background_share(frames: np.ndarray, tolerance: int = 24) -> float:
    """The share of pixels of uint8 frames `(..., 3)` within `tolerance` of BACKGROUND in every channel: ~0.9+ for
    a shapes clip (one small shape on the plain background), as the demo cascade draws it too; low for real
    video."""
    frames = np.asarray(frames)
    return float((np.abs(frames.astype(np.int16) - np.asarray(BACKGROUND, np.int16)).max(-1) <= tolerance).mean())


def caption(color: str, shape: str, motion: str) -> str:
    """"a red circle moving left"."""
    _check(color, shape, motion)
    return f"a {color} {shape} {motion}"


def _check(color: str, shape: str, motion: str) -> None:
    if color not in ALL_COLORS:
        raise ValueError(f"unknown color {color!r}; use one of {', '.join(ALL_COLORS)}")
    if shape not in SHAPES:
        raise ValueError(f"unknown shape {shape!r}; use one of {', '.join(SHAPES)}")
    if motion not in MOTIONS:
        raise ValueError(f"unknown motion {motion!r}; use one of {', '.join(MOTIONS)}")


def _coverage(shape: str, ys: np.ndarray, xs: np.ndarray, cy: float, cx: float, radius: float) -> np.ndarray:
    """Fraction of each pixel covered by the shape, from a signed distance (negative inside) and a 1-px ramp."""
    dy, dx = ys - cy, xs - cx
    if shape == "circle":
        distance = np.sqrt(dx * dx + dy * dy) - radius
    elif shape == "square":
        half = radius * 0.85  # a square of the same visual weight as the circle
        distance = np.maximum(np.abs(dx), np.abs(dy)) - half
    else:  # upward equilateral triangle with circumradius `radius`: the max over its three edge half-planes
        inradius = radius / 2
        normals = [(0.0, 1.0), (np.sqrt(3) / 2, -0.5), (-np.sqrt(3) / 2, -0.5)]  # (nx, ny), outward
        distance = np.max([dx * nx + dy * ny - inradius for nx, ny in normals], axis=0)
    return np.clip(0.5 - distance, 0.0, 1.0)


def make_clip(color: str, shape: str, motion: str, num_frames: int = 16, size: int = 64,
              seed: int = 0) -> np.ndarray:
    """One clip, uint8 (num_frames, size, size, 3): the shape crosses the frame in the motion's direction.

    The seed picks the shape's radius (12-18% of the frame), its position across the motion and how far along
    the motion it starts and ends; the shape always stays fully inside the frame.
    """
    _check(color, shape, motion)
    if num_frames < 1 or size < 8:
        raise ValueError(f"need num_frames >= 1 and size >= 8, got num_frames={num_frames}, size={size}")
    rng = np.random.default_rng(seed)
    radius = size * rng.uniform(0.12, 0.18)
    low, high = radius + 1, size - 1 - radius  # centre range that keeps the shape inside
    travel = rng.uniform(0.6, 1.0) * (high - low)
    begin = rng.uniform(low, high - travel)
    across = rng.uniform(low, high)
    dx, dy = MOTIONS[motion]
    sign = dx + dy  # +1: towards larger coordinates
    along = begin + travel * np.linspace(0.0, 1.0, num_frames)
    if sign < 0:
        along = along[::-1]
    ys, xs = np.mgrid[0:size, 0:size].astype(np.float64) + 0.5
    background = np.asarray(BACKGROUND, np.float64)
    paint = np.asarray(ALL_COLORS[color], np.float64)
    frames = np.empty((num_frames, size, size, 3), np.uint8)
    for i in range(num_frames):
        cx, cy = (along[i], across) if dx else (across, along[i])
        alpha = _coverage(shape, ys, xs, cy, cx, radius)[..., None]
        frames[i] = np.round(background * (1 - alpha) + paint * alpha).astype(np.uint8)
    return frames


def sample_specs(count: int, seed: int = 0, colors=None) -> list[tuple[str, str, str]]:
    """`count` (color, shape, motion) triples: every block of 48 (12 per colour) holds each combination once, in a
    seeded order, so small datasets stay balanced. `colors` (default the four of COLORS) may name ALL_COLORS."""
    colors = list(COLORS) if colors is None else list(colors)
    for color in colors:
        _check(color, SHAPES[0], next(iter(MOTIONS)))
    if not colors:
        raise ValueError("colors must name at least one colour")
    combos = list(itertools.product(colors, SHAPES, MOTIONS))
    rng = np.random.default_rng(seed)
    specs: list[tuple[str, str, str]] = []
    while len(specs) < count:
        specs.extend(combos[i] for i in rng.permutation(len(combos)))
    return specs[:count]


def _is_shapes_dataset(folder: Path) -> bool:
    """True if `folder` holds what `write_shapes_dataset` writes and nothing else (so replacing it loses nothing
    but an earlier shapes set; a user's own dataset with a manifest.csv is not one)."""
    manifest = folder / "manifest.csv"
    if not manifest.is_file():
        return False
    with open(manifest, encoding="utf-8", errors="replace") as file:
        if file.readline().strip() != "path,caption,color,shape,motion":
            return False
    return all(p.name == "manifest.csv" or (p.is_file() and p.stem.isdigit() and p.suffix in (".mp4", ".txt"))
               for p in folder.iterdir())


def write_shapes_dataset(out_dir: str | os.PathLike, count: int, num_frames: int = 16, size: int = 64,
                         seed: int = 0, fps: float = 8.0, progress: bool = False, colors=None) -> Path:
    """Write `count` clips as 00000.mp4 + 00000.txt (caption) pairs and `manifest.csv` (path, caption, color,
    shape, motion), all at once (the folder appears complete or not at all). Returns the manifest's path.
    `colors` picks the colours (default COLORS; EXTRA_COLORS too, e.g. ["purple"] for a new word).

    An existing `out_dir` is replaced only if it is empty or a previous shapes dataset (has a manifest.csv).
    """
    out_dir = Path(out_dir)
    if count < 1:
        raise ValueError(f"count must be >= 1, got {count}")
    check_replaceable(out_dir, _is_shapes_dataset, "a shapes dataset", "pick a new --out")
    specs = sample_specs(count, seed, colors)
    rows = []
    with atomic_dir(out_dir) as tmp:
        bar = ProgressBar(specs, desc="shapes", unit="clip", disable=not progress)
        for i, (color, shape, motion) in enumerate(bar):
            name = f"{i:05d}"
            text = caption(color, shape, motion)
            clip_seed = int(np.random.default_rng([seed, i]).integers(2**31))
            write_video(tmp / f"{name}.mp4", make_clip(color, shape, motion, num_frames, size, clip_seed), fps)
            (tmp / f"{name}.txt").write_text(text + "\n")
            rows.append({"path": f"{name}.mp4", "caption": text, "color": color, "shape": shape, "motion": motion})
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=["path", "caption", "color", "shape", "motion"])
        writer.writeheader()
        writer.writerows(rows)
        (tmp / "manifest.csv").write_text(buffer.getvalue())
    return out_dir / "manifest.csv"
