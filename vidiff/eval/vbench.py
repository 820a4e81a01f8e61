"""VBench-style per-dimension video checks that need no downloaded weights.

VBench (Huang et al. 2024) scores a clip on separate dimensions with pretrained networks; here each dimension
keeps VBench's formula and swaps its network for a weight-free measure, so the numbers rank clips the same way
but are not VBench's published numbers:

  subject_consistency     VBench: DINO features. Here: each frame as a 16 x 16 thumbnail (area-averaged RGB),
                          mean removed, unit length: similar layouts and colours score high.
  background_consistency  VBench: CLIP image features; here too when a CLIP model is given (`scorer=`), else the
                          frame's joint RGB histogram (8 bins a channel, square-rooted to unit length, so the cosine
                          is the Bhattacharyya coefficient): blind to where things are, sensitive to what colours
                          the scene holds.
      Both: the mean over frames t >= 1 of (max(0, cos(x_t, x_0)) + max(0, cos(x_t, x_{t-1}))) / 2.
  motion_smoothness       VBench: frame t reconstructed from t - 1 and t + 1 by a video interpolation network (AMT).
                          Here: by flow-warped interpolation, Farneback flow (OpenCV) both ways, each neighbour
                          warped half-way and the two averaged; score = 1 - mean |error| / 255 over frames 1..f-2.
  dynamic_degree          VBench: RAFT flow. Here: Farneback flow of consecutive frames; a pair's motion is the mean
                          of its largest 5% flow magnitudes; the clip is dynamic when at least round(4 f / 16) pairs
                          exceed 6 x min(h, w) / 256 pixels (VBench's rule). The set's score is the dynamic fraction.
  temporal_flicker        As VBench: 1 - mean |frame t+1 - frame t| / 255 (a static scene that flickers scores low;
                          VBench reports it on static clips, where motion does not count against it).

Every score is in [0, 1], higher is better (for dynamic_degree: more motion); `flow_magnitude` (pixels a frame)
comes with dynamic_degree.

References: Huang et al. 2024 "VBench: Comprehensive Benchmark Suite for Video Generative Models"; Farnebäck 2003
"Two-Frame Motion Estimation Based on Polynomial Expansion".
"""
from __future__ import annotations

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from einops import rearrange

DIMENSIONS = ("subject_consistency", "background_consistency", "motion_smoothness", "dynamic_degree",
              "temporal_flicker")
MIN_FRAMES = {"subject_consistency": 2, "background_consistency": 2, "motion_smoothness": 3, "dynamic_degree": 2,
              "temporal_flicker": 2}
THUMBNAIL = 16           # subject features: 16 x 16 RGB thumbnails
HISTOGRAM_BINS = 8       # background features: 8 x 8 x 8 RGB histogram
TOP_FRACTION = 0.05      # dynamic degree: a pair's motion is the mean of its largest 5% flow magnitudes
DYNAMIC_THRESHOLD = 6.0  # ... in pixels at a 256-pixel short side (VBench), scaled with the frame
# Farneback parameters (OpenCV's documented example): pyramid scale 0.5, 3 levels, 15-pixel window, 3 iterations,
# 5-pixel polynomial neighbourhood with sigma 1.2.
FARNEBACK = dict(pyr_scale=0.5, levels=3, winsize=15, iterations=3, poly_n=5, poly_sigma=1.2, flags=0)


def _check_clip(frames, dimension: str) -> np.ndarray:
    frames = np.asarray(frames)
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
        raise ValueError(f"a clip must be uint8 (frames, height, width, 3), got {frames.dtype} {frames.shape}")
    if len(frames) < MIN_FRAMES[dimension]:
        raise ValueError(f"{dimension} needs at least {MIN_FRAMES[dimension]} frames, the clip has {len(frames)}")
    return frames


# ---------------------------------------------------------------------------------------------------------------
# Features and flow
# ---------------------------------------------------------------------------------------------------------------
def thumbnails(frames) -> torch.Tensor:
    """(f, 3 * 16 * 16) unit-length, mean-removed area-averaged thumbnails of uint8 frames (f, h, w, 3)."""
    x = rearrange(torch.from_numpy(np.asarray(frames, np.float64)), "f h w c -> f c h w")
    x = F.adaptive_avg_pool2d(x, THUMBNAIL).flatten(1)
    x = x - x.mean(dim=1, keepdim=True)
    return F.normalize(x, dim=1, eps=1e-12)


def color_histograms(frames) -> torch.Tensor:
    """(f, 512) square roots of each frame's joint RGB histogram (8 bins a channel): unit length."""
    frames = np.asarray(frames)
    bins = (frames.astype(np.int64) * HISTOGRAM_BINS) // 256  # (f, h, w, 3) in 0..7
    index = (bins[..., 0] * HISTOGRAM_BINS + bins[..., 1]) * HISTOGRAM_BINS + bins[..., 2]
    counts = np.stack([np.bincount(i.ravel(), minlength=HISTOGRAM_BINS ** 3) for i in index]).astype(np.float64)
    return torch.from_numpy(np.sqrt(counts / counts.sum(axis=1, keepdims=True)))


def consistency(features: torch.Tensor) -> float:
    """VBench's consistency of per-frame features (f, d), unit length: the mean over t >= 1 of
    (max(0, cos(x_t, x_0)) + max(0, cos(x_t, x_{t-1}))) / 2."""
    features = features.double()
    to_first = (features[1:] @ features[0]).clamp(min=0)
    to_previous = (features[1:] * features[:-1]).sum(dim=1).clamp(min=0)
    return float(((to_first + to_previous) / 2).mean())


def _grey(frame: np.ndarray) -> np.ndarray:
    return cv2.cvtColor(np.ascontiguousarray(frame), cv2.COLOR_RGB2GRAY)


def optical_flow(first: np.ndarray, second: np.ndarray) -> np.ndarray:
    """Farneback flow (h, w, 2), (dx, dy) in pixels, from uint8 RGB frame `first` to `second`: a pixel at p in
    `first` is at p + flow(p) in `second`."""
    return cv2.calcOpticalFlowFarneback(_grey(first), _grey(second), None, **FARNEBACK)


def _warp(frame: np.ndarray, offset: np.ndarray) -> np.ndarray:
    """`frame` sampled at p + offset(p) (bilinear, borders replicated), float32."""
    h, w = frame.shape[:2]
    xs, ys = np.meshgrid(np.arange(w, dtype=np.float32), np.arange(h, dtype=np.float32))
    return cv2.remap(frame.astype(np.float32), xs + offset[..., 0], ys + offset[..., 1], cv2.INTER_LINEAR,
                     borderMode=cv2.BORDER_REPLICATE)


def interpolate_middle(before: np.ndarray, after: np.ndarray) -> np.ndarray:
    """The frame half-way between two frames: each warped half-way along its flow to the other (a point at p in
    the middle frame was at about p - flow/2 in `before`), then averaged. float32 (h, w, 3)."""
    forward, backward = optical_flow(before, after), optical_flow(after, before)
    return 0.5 * (_warp(before, -0.5 * forward) + _warp(after, -0.5 * backward))


# ---------------------------------------------------------------------------------------------------------------
# Dimensions (one clip each)
# ---------------------------------------------------------------------------------------------------------------
def subject_consistency(frames) -> float:
    return consistency(thumbnails(_check_clip(frames, "subject_consistency")))


def background_consistency(frames, scorer=None) -> float:
    """With `scorer` (a vidiff.eval.clip_score.ClipScorer): CLIP image features, as VBench; else histograms."""
    frames = _check_clip(frames, "background_consistency")
    return consistency(scorer.image_embeddings(frames) if scorer is not None else color_histograms(frames))


def motion_smoothness(frames) -> float:
    frames = _check_clip(frames, "motion_smoothness")
    errors = [np.abs(interpolate_middle(frames[t - 1], frames[t + 1]) - frames[t].astype(np.float32)).mean()
              for t in range(1, len(frames) - 1)]
    return float(1.0 - np.mean(errors) / 255.0)


def dynamic_degree(frames) -> dict:
    """{"dynamic": 0 or 1, "flow_magnitude": mean over pairs of the top-5% flow magnitude (pixels)}."""
    frames = _check_clip(frames, "dynamic_degree")
    motions = []
    for t in range(len(frames) - 1):
        magnitude = np.linalg.norm(optical_flow(frames[t], frames[t + 1]), axis=-1).ravel()
        top = max(1, int(round(TOP_FRACTION * magnitude.size)))
        motions.append(float(np.sort(magnitude)[-top:].mean()))
    threshold = DYNAMIC_THRESHOLD * min(frames.shape[1:3]) / 256.0
    needed = max(1, int(round(4 * len(frames) / 16)))
    moving = sum(m > threshold for m in motions)
    return {"dynamic": float(moving >= min(needed, len(motions))), "flow_magnitude": float(np.mean(motions))}


def temporal_flicker(frames) -> float:
    frames = _check_clip(frames, "temporal_flicker").astype(np.float64)
    return float(1.0 - np.abs(np.diff(frames, axis=0)).mean() / 255.0)


# ---------------------------------------------------------------------------------------------------------------
# A clip, a set
# ---------------------------------------------------------------------------------------------------------------
PLAIN_DIMENSIONS = {"subject_consistency": subject_consistency, "motion_smoothness": motion_smoothness,
                    "temporal_flicker": temporal_flicker}


def check_dimensions(dimensions) -> tuple[str, ...]:
    """The dimensions asked for (default all), each known and named once."""
    dimensions = tuple(DIMENSIONS if not dimensions else dimensions)
    unknown = [d for d in dimensions if d not in DIMENSIONS]
    if unknown:
        raise ValueError(f"unknown vbench dimension {unknown[0]!r}; choose from {', '.join(DIMENSIONS)}")
    if len(set(dimensions)) != len(dimensions):
        raise ValueError(f"vbench dimensions listed twice: {', '.join(dimensions)}")
    return dimensions


def min_frames(dimensions) -> int:
    return max(MIN_FRAMES[d] for d in check_dimensions(dimensions))


def score_clip(frames, dimensions=DIMENSIONS, scorer=None) -> dict:
    """{dimension: score} for one uint8 clip (f, h, w, 3); dynamic_degree adds flow_magnitude."""
    scores = {}
    for dimension in check_dimensions(dimensions):
        if dimension == "dynamic_degree":
            result = dynamic_degree(frames)
            scores.update(dynamic_degree=result["dynamic"], flow_magnitude=result["flow_magnitude"])
        elif dimension == "background_consistency":
            scores[dimension] = background_consistency(frames, scorer)
        else:
            scores[dimension] = PLAIN_DIMENSIONS[dimension](frames)
    return scores


def summarize(records: list[dict]) -> dict:
    """The mean of every score over clips (dynamic_degree: the fraction of dynamic clips)."""
    if not records:
        raise ValueError("no clips to summarise")
    keys = [k for k in (*DIMENSIONS, "flow_magnitude") if k in records[0]]
    return {"num_clips": len(records), **{k: float(np.mean([r[k] for r in records])) for k in keys}}


def markdown_table(summary: dict) -> str:
    keys = [k for k in (*DIMENSIONS, "flow_magnitude") if k in summary]
    cells = [f"{summary[k]:.2f}" if k == "flow_magnitude" else f"{100 * summary[k]:.2f}%" for k in keys]
    return "\n".join(["| clips | " + " | ".join(k.replace("_", " ") for k in keys) + " |",
                      "| ---: |" + " ---: |" * len(keys),
                      f"| {summary['num_clips']} | " + " | ".join(cells) + " |"])
