"""Prompt-following metrics for the synthetic shapes world: which colour, shape and motion a clip shows.

Everything is measured from the pixels of a `uint8 (f, h, w, 3)` clip, with no model: a generated "a red circle
moving left" passes if its dominant blob is nearest to red among `synthetic.COLORS`, looks like a circle, and its
centroid travels left. The measures work on sub-pixel quantities (a soft coverage map, row / column sums of it,
moments), so they stay right for shapes only 7 pixels wide (32 x 32 frames) and for soft, noisy generated edges.

Per frame:
  1. background = the frame's median colour (the shape covers at most ~13% of a frame);
  2. foreground = pixels far from it; the dominant shape = the largest 8-connected blob of them;
  3. its paint = the median colour of the blob's core; coverage (alpha) of each pixel near the blob = the
     projection of (pixel - background) on (paint - background), clipped to [0, 1];
  4. from alpha: area, centroid, and two shape features that do not depend on scale:
       fill = area / (widest row sum x tallest column sum): square 1, circle pi/4, triangle 1/2
              (row sums of a soft mask are chord lengths, so this is the bounding-box fill ratio without the
              one-pixel rounding of a binary bounding box);
       skew = vertical skewness of the mass: 0 for the symmetric circle and square, -2*sqrt(2)/5 = -0.566 for
              the upward triangle (its mass grows towards its base; image y points down).
Per clip: colour from the median paint over frames, shape from the median features, motion from the
least-squares slope of the centroid over time (below a minimum travel the clip is "still"; a path a straight
line fits badly, a blob jumping about, is "erratic").
"""
from __future__ import annotations

import math
from collections import deque
from dataclasses import asdict, dataclass, field

import numpy as np

from vidiff.data.synthetic import ALL_COLORS, COLORS, MOTIONS, SHAPES

# Shape decision thresholds on (fill, skew); see the module docstring for the clean values. Circle / square are
# split half-way between their fills (pi/4, 1). The upward triangle is told by its skew (exactly -0.566; circle and
# square are symmetric, 0): a slight blur of a 7-pixel triangle (32 x 32 frames) pulls it to about -0.3 and its fill
# up to the circle's, so the skew threshold sits nearer 0 than half-way; a fill below half-way between triangle
# and circle (1/2, pi/4) also means triangle.
SQUARE_FILL = (math.pi / 4 + 1.0) / 2
TRIANGLE_FILL = (0.5 + math.pi / 4) / 2
TRIANGLE_SKEW = -0.2
STILL = "still"
ERRATIC = "erratic"
NO_SHAPE = "none"

MIN_CONTRAST = 60.0      # RGB distance from the background below which nothing counts as a shape (the palette's
                         # closest colour, green, is ~170 away from the background)
MIN_TRAVEL = 0.1         # fraction of the frame size the centroid must travel to count as moving
MIN_LINEARITY = 0.6      # R^2 of the straight-line fit of the centroid path below which motion is "erratic" (a
                         # blob that jumps about with some net drift is not "moving left"; drawn motion: R^2 = 1)
# Temporal consistency: one shape in every frame, of stable size and colour.
MAX_AREA_CV = 0.15       # std / mean of the per-frame area
MAX_COLOR_SPREAD = 40.0  # largest RGB distance of a frame's paint from the clip's median paint
MIN_SINGLE = 0.9         # fraction of frames with exactly one significant blob


@dataclass
class FrameShape:
    """What one frame shows (coordinates in pixels, y down, pixel centres at +0.5)."""
    paint: np.ndarray         # (3,) float RGB of the shape's core
    area: float               # soft area in pixels
    centroid: tuple[float, float]  # (y, x)
    fill: float
    skew: float
    num_blobs: int            # significant blobs (at least a fifth of the largest)


@dataclass
class ClipMeasure:
    """What a clip shows: the three attributes and the numbers they came from."""
    color: str
    shape: str
    motion: str
    num_frames: int
    frames_with_shape: int
    paint: list[float] = field(default_factory=list)
    fill: float = float("nan")
    skew: float = float("nan")
    displacement: tuple[float, float] = (0.0, 0.0)  # (dx, dy) in pixels over the clip, from the fitted slope
    area_cv: float = float("nan")
    color_spread: float = float("nan")
    single_fraction: float = 0.0
    consistent: bool = False

    def to_dict(self) -> dict:
        out = asdict(self)
        return {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in out.items()}


# ---------------------------------------------------------------------------------------------------------------
# Helpers
# ---------------------------------------------------------------------------------------------------------------
def _as_clip(frames) -> np.ndarray:
    """uint8 (f, h, w, 3) (or one (h, w, 3) frame) -> float64 (f, h, w, 3)."""
    frames = np.asarray(frames)
    if frames.ndim == 3:
        frames = frames[None]
    if frames.ndim != 4 or frames.shape[-1] != 3:
        raise ValueError(f"expected a clip of shape (frames, height, width, 3), got {frames.shape}")
    if frames.dtype != np.uint8:
        raise ValueError(f"expected uint8 pixels (0-255), got {frames.dtype}")
    return frames.astype(np.float64)


def _components(mask: np.ndarray) -> list[np.ndarray]:
    """8-connected components of a boolean (h, w) mask, as arrays of flat indices (breadth-first flood fill;
    the masks here hold a few hundred pixels, so plain Python is fast enough and needs no scipy)."""
    h, w = mask.shape
    seen = np.zeros_like(mask)
    components = []
    for start in np.flatnonzero(mask):
        if seen.flat[start]:
            continue
        seen.flat[start] = True
        queue, members = deque([start]), []
        while queue:
            index = queue.popleft()
            members.append(index)
            y, x = divmod(int(index), w)
            for ny in range(max(y - 1, 0), min(y + 2, h)):
                for nx in range(max(x - 1, 0), min(x + 2, w)):
                    if mask[ny, nx] and not seen[ny, nx]:
                        seen[ny, nx] = True
                        queue.append(ny * w + nx)
        components.append(np.asarray(members))
    return components


def _dilate(mask: np.ndarray) -> np.ndarray:
    """3 x 3 binary dilation."""
    padded = np.pad(mask, 1)
    h, w = mask.shape
    return np.any([padded[dy:dy + h, dx:dx + w] for dy in range(3) for dx in range(3)], axis=0)


def palette_for(colors=()) -> dict[str, tuple[int, int, int]]:
    """The colours a judge tells apart: `synthetic.COLORS`, plus any of `synthetic.EXTRA_COLORS` in `colors` (the
    colours an evaluation's prompts name), so a judge of old words is not changed by colours no prompt asks for."""
    return {**COLORS, **{name: ALL_COLORS[name] for name in colors if name in ALL_COLORS}}


def nearest_color(rgb, palette=None) -> str:
    """The name in `palette` (default `synthetic.COLORS`) nearest to an RGB triple (Euclidean distance)."""
    palette = COLORS if palette is None else palette
    rgb = np.asarray(rgb, np.float64)
    return min(palette, key=lambda name: float(np.sum((np.asarray(palette[name], np.float64) - rgb) ** 2)))


def classify_shape(fill: float, skew: float) -> str:
    """circle / square / triangle from the fill ratio and the vertical skewness (thresholds above)."""
    if skew < TRIANGLE_SKEW or fill < TRIANGLE_FILL:
        return "triangle"
    return "square" if fill > SQUARE_FILL else "circle"


# ---------------------------------------------------------------------------------------------------------------
# One frame
# ---------------------------------------------------------------------------------------------------------------
def _shape_features(alpha: np.ndarray) -> tuple[float, tuple[float, float], float, float]:
    """(area, (cy, cx), fill, skew) of a soft coverage map (h, w)."""
    area = float(alpha.sum())
    rows, cols = alpha.sum(axis=1), alpha.sum(axis=0)  # chord lengths along y and along x
    ys = np.arange(alpha.shape[0]) + 0.5
    xs = np.arange(alpha.shape[1]) + 0.5
    cy, cx = float(rows @ ys) / area, float(cols @ xs) / area
    fill = area / float(rows.max() * cols.max())
    variance = float(rows @ (ys - cy) ** 2) / area
    skew = float(rows @ (ys - cy) ** 3) / area / max(variance, 1e-12) ** 1.5
    return area, (cy, cx), fill, skew


def analyze_frame(frame, min_contrast: float = MIN_CONTRAST) -> FrameShape | None:
    """The dominant shape of one frame `(h, w, 3)` (uint8, or float in 0-255), or None when nothing stands out."""
    frame = np.asarray(frame, np.float64)
    background = np.median(frame.reshape(-1, 3), axis=0)
    offset = frame - background
    distance = np.linalg.norm(offset, axis=-1)
    # A robust peak: the 99th percentile lies inside even the smallest shape (~2% of a 32 x 32 frame), so one
    # bright speck of generation noise does not set the threshold.
    peak = float(np.percentile(distance, 99))
    if peak < min_contrast:
        return None
    mask = distance > max(0.5 * peak, min_contrast / 2)
    blobs = _components(mask)
    if not blobs:
        return None
    masses = [float(distance.flat[b].sum()) for b in blobs]
    largest = blobs[int(np.argmax(masses))]
    num_blobs = sum(m >= 0.2 * max(masses) for m in masses)
    core = largest[distance.flat[largest] >= np.median(distance.flat[largest])]
    paint = np.median(frame.reshape(-1, 3)[core], axis=0)
    direction = paint - background
    norm2 = float(direction @ direction)
    if norm2 < min_contrast ** 2:
        return None
    region = np.zeros(mask.shape, bool)
    region.flat[largest] = True
    region = _dilate(region)  # the anti-aliased rim just outside the thresholded blob
    alpha = np.where(region, np.clip(offset @ direction / norm2, 0.0, 1.0), 0.0)
    area, centroid, fill, skew = _shape_features(alpha)
    return FrameShape(paint=paint, area=area, centroid=centroid, fill=fill, skew=skew, num_blobs=num_blobs)


# ---------------------------------------------------------------------------------------------------------------
# One clip
# ---------------------------------------------------------------------------------------------------------------
def motion_direction(centroids: np.ndarray, times: np.ndarray, size: int, min_travel: float = MIN_TRAVEL,
                     min_linearity: float = MIN_LINEARITY) -> tuple[str, tuple[float, float]]:
    """(direction, (dx, dy)) from centroids (n, 2) as (y, x) at frame indices `times`: the least-squares slope
    over the clip's span; the dominant axis names the direction unless the travel is below
    `min_travel * size` pixels ("still") or the straight line explains less than `min_linearity` of the path's
    variance ("erratic")."""
    if len(times) < 2:
        return STILL, (0.0, 0.0)
    span = float(times.max() - times.min())
    centred = times - times.mean()
    deviation = centroids - centroids.mean(axis=0)
    slopes = centred @ deviation / float(centred @ centred)  # (dy/dt, dx/dt)
    dy, dx = (float(s) * span for s in slopes)
    if max(abs(dx), abs(dy)) < min_travel * size:
        return STILL, (dx, dy)
    residual = deviation - centred[:, None] * slopes[None, :]
    if 1.0 - float((residual ** 2).sum()) / float((deviation ** 2).sum()) < min_linearity:
        return ERRATIC, (dx, dy)
    if abs(dx) >= abs(dy):
        return ("moving right" if dx > 0 else "moving left"), (dx, dy)
    return ("moving down" if dy > 0 else "moving up"), (dx, dy)


def trajectory(frames, min_contrast: float = MIN_CONTRAST) -> np.ndarray:
    """Centroid (y, x) of the dominant shape per frame, (f, 2); NaN where a frame shows none."""
    clip = _as_clip(frames)
    out = np.full((len(clip), 2), np.nan)
    for i, frame in enumerate(clip):
        found = analyze_frame(frame, min_contrast)
        if found is not None:
            out[i] = found.centroid
    return out


def measure_clip(frames, min_contrast: float = MIN_CONTRAST, min_travel: float = MIN_TRAVEL,
                 palette=None) -> ClipMeasure:
    """Colour (nearest in `palette`, default `synthetic.COLORS`), shape, motion and temporal consistency of a clip
    `uint8 (f, h, w, 3)`."""
    clip = _as_clip(frames)
    num_frames, height, width, _ = clip.shape
    found = [(i, s) for i, s in enumerate(analyze_frame(frame, min_contrast) for frame in clip) if s is not None]
    if not found:
        return ClipMeasure(color=NO_SHAPE, shape=NO_SHAPE, motion=STILL, num_frames=num_frames, frames_with_shape=0)
    times = np.array([i for i, _ in found], np.float64)
    shapes = [s for _, s in found]
    paints = np.stack([s.paint for s in shapes])
    paint = np.median(paints, axis=0)
    fill = float(np.median([s.fill for s in shapes]))
    skew = float(np.median([s.skew for s in shapes]))
    centroids = np.array([s.centroid for s in shapes])
    motion, displacement = motion_direction(centroids, times, min(height, width), min_travel)
    areas = np.array([s.area for s in shapes])
    area_cv = float(areas.std() / areas.mean())
    color_spread = float(np.linalg.norm(paints - paint, axis=-1).max())
    single = sum(s.num_blobs == 1 for s in shapes) / num_frames
    consistent = (len(found) == num_frames and area_cv <= MAX_AREA_CV and color_spread <= MAX_COLOR_SPREAD
                  and single >= MIN_SINGLE)
    return ClipMeasure(color=nearest_color(paint, palette), shape=classify_shape(fill, skew), motion=motion,
                       num_frames=num_frames, frames_with_shape=len(found), paint=[float(v) for v in paint],
                       fill=fill, skew=skew, displacement=displacement, area_cv=area_cv,
                       color_spread=color_spread, single_fraction=single, consistent=bool(consistent))


def score_clip(frames, color: str, shape: str, motion: str, **options) -> dict:
    """Measure a clip and compare with what its prompt asked for: {"expected", "measured", "correct"} where
    correct holds color / shape / motion / all (all three right) / consistent booleans."""
    measured = measure_clip(frames, **options)
    correct = {"color": measured.color == color, "shape": measured.shape == shape,
               "motion": measured.motion == motion}
    correct["all"] = all(correct.values())
    correct["consistent"] = measured.consistent
    return {"expected": {"color": color, "shape": shape, "motion": motion}, "measured": measured.to_dict(),
            "correct": correct}


def _shared_frames(a, b) -> tuple[np.ndarray, np.ndarray]:
    """Two centroid trajectories (f, 2) as float64, kept to the frames where both show a shape."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    if a.shape != b.shape or a.ndim != 2 or a.shape[1] != 2:
        raise ValueError(f"trajectories must both be (frames, 2), got {a.shape} and {b.shape}")
    keep = ~(np.isnan(a).any(axis=1) | np.isnan(b).any(axis=1))
    return a[keep], b[keep]


def trajectory_correlation(a: np.ndarray, b: np.ndarray) -> float:
    """Pearson correlation of two centroid trajectories (f, 2) taken jointly over both axes (each axis centred
    on its own mean), on the frames where both show a shape: 1 when one path is a positive scaling of the other.
    NaN when fewer than two frames are shared or either path does not move."""
    a, b = _shared_frames(a, b)
    if len(a) < 2:
        return float("nan")
    a, b = a - a.mean(axis=0), b - b.mean(axis=0)
    denominator = math.sqrt(float((a * a).sum()) * float((b * b).sum()))
    return float((a * b).sum() / denominator) if denominator > 0 else float("nan")


def path_distance(a: np.ndarray, b: np.ndarray) -> float:
    """Mean distance in pixels between two centroid trajectories (f, 2), frame by frame, on the frames where both
    show a shape: what trajectory_correlation leaves out (a path drawn parallel to the other, shifted, correlates
    at 1). NaN when no frame is shared."""
    a, b = _shared_frames(a, b)
    return float(np.linalg.norm(a - b, axis=1).mean()) if len(a) else float("nan")


def parse_caption(text: str) -> tuple[str, str, str]:
    """"a red circle moving left" -> ("red", "circle", "moving left"); a ValueError for anything else."""
    words = text.strip().split()
    if len(words) == 5 and words[0] == "a":
        color, shape, motion = words[1], words[2], " ".join(words[3:])
        if color in ALL_COLORS and shape in SHAPES and motion in MOTIONS:
            return color, shape, motion
    raise ValueError(f"{text!r} is not a shapes caption; write 'a <color> <shape> <motion>' with color in "
                     f"{'/'.join(ALL_COLORS)}, shape in {'/'.join(SHAPES)}, motion in {'/'.join(MOTIONS)}")


MIN_TRAJECTORY_CORRELATION = 0.9  # an edit keeps the motion when the edited path follows the source's this closely


def score_edit(source, edited, *, color: str | None = None, shape: str | None = None,
               min_correlation: float = MIN_TRAJECTORY_CORRELATION, **options) -> dict:
    """An edit of `source` into `edited` (both uint8 (f, h, w, 3)) that asked for a new `color` and/or `shape`:
    {"target": the asked attributes are measured in the edit, "kept": the attributes not asked for are measured
    as in the source, "motion_kept": same measured direction and trajectory correlation >= min_correlation,
    "success": all three, "trajectory_correlation", "path_distance" (pixels), plus the measurements}."""
    if color is None and shape is None:
        raise ValueError("score_edit needs the target color and/or shape of the edit")
    if color is not None and color not in COLORS:
        raise ValueError(f"unknown color {color!r}; use one of {', '.join(COLORS)}")
    if shape is not None and shape not in SHAPES:
        raise ValueError(f"unknown shape {shape!r}; use one of {', '.join(SHAPES)}")
    before, after = measure_clip(source, **options), measure_clip(edited, **options)
    asked = {"color": color, "shape": shape}
    target = all(getattr(after, k) == v for k, v in asked.items() if v is not None)
    kept = all(getattr(after, k) == getattr(before, k) for k, v in asked.items() if v is None)
    path_a, path_b = trajectory(source), trajectory(edited)
    correlation = trajectory_correlation(path_a, path_b)
    motion_kept = after.motion == before.motion and math.isfinite(correlation) and correlation >= min_correlation
    return {"target": target, "kept": kept, "motion_kept": bool(motion_kept),
            "success": bool(target and kept and motion_kept), "trajectory_correlation": correlation,
            "path_distance": path_distance(path_a, path_b), "source": before.to_dict(), "edited": after.to_dict()}
