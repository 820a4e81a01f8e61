"""Full-reference video metrics (PSNR, SSIM) and the simple baselines every cascade stage must beat.

Clips are `uint8 (f, h, w, 3)` as at every file boundary; scores are averaged over frames (the per-frame mean
that video super-resolution and interpolation papers report). SSIM follows Wang et al. 2004 exactly: an 11 x 11
Gaussian window with sigma 1.5, K1 = 0.01, K2 = 0.03, dynamic range L = 255, the window kept inside the image
('valid' filtering, as in the authors' ssim_index.m), computed per RGB channel and averaged.

Baselines: linear blending of the neighbouring known frames (frame interpolation), bicubic upsampling
(spatial super-resolution), repeating the last known frame (extension).

References: Wang, Bovik, Sheikh & Simoncelli 2004, "Image quality assessment: from error visibility to
structural similarity".
"""
from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from einops import rearrange

SSIM_WINDOW = 11
SSIM_SIGMA = 1.5
SSIM_K1, SSIM_K2 = 0.01, 0.03
DATA_RANGE = 255.0
PSNR_CAP = 100.0  # dB reported for identical frames (an infinite PSNR has no JSON spelling)


def _check_pair(a, b) -> tuple[np.ndarray, np.ndarray]:
    a, b = np.asarray(a), np.asarray(b)
    if a.ndim == 3:
        a, b = a[None], b[None]
    if a.shape != b.shape or a.ndim != 4 or a.shape[-1] != 3:
        raise ValueError(f"clips must have the same shape (frames, height, width, 3), got {a.shape} and {b.shape}")
    return a, b


def psnr(a, b, data_range: float = DATA_RANGE) -> float:
    """Mean over frames of 10 log10(L^2 / MSE) between two clips (f, h, w, 3); identical frames count as
    `PSNR_CAP` dB."""
    a, b = _check_pair(a, b)
    diff = a.astype(np.float64) - b.astype(np.float64)
    mse = (diff ** 2).reshape(len(diff), -1).mean(axis=1)
    per_frame = [PSNR_CAP if m == 0 else min(PSNR_CAP, 10 * math.log10(data_range ** 2 / m)) for m in mse]
    return float(np.mean(per_frame))


def gaussian_window(size: int = SSIM_WINDOW, sigma: float = SSIM_SIGMA) -> torch.Tensor:
    """Normalised 2D Gaussian (size, size), float64 (the outer product of the 1D one)."""
    x = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
    g = torch.exp(-x ** 2 / (2 * sigma ** 2))
    g = g / g.sum()
    return torch.outer(g, g)


def ssim(a, b, data_range: float = DATA_RANGE) -> float:
    """Mean SSIM (Wang et al. 2004) over frames, channels and window positions of two clips (f, h, w, 3);
    frames must be at least 11 x 11."""
    a, b = _check_pair(a, b)
    if min(a.shape[1:3]) < SSIM_WINDOW:
        raise ValueError(f"SSIM needs frames of at least {SSIM_WINDOW}x{SSIM_WINDOW} pixels, got {a.shape[1:3]}")
    # (f h w c) -> (f c) 1 h w: every channel of every frame filtered on its own.
    x = rearrange(torch.from_numpy(a.astype(np.float64)), "f h w c -> (f c) 1 h w")
    y = rearrange(torch.from_numpy(b.astype(np.float64)), "f h w c -> (f c) 1 h w")
    window = gaussian_window()[None, None]
    mu_x, mu_y = F.conv2d(x, window), F.conv2d(y, window)
    var_x = F.conv2d(x * x, window) - mu_x ** 2
    var_y = F.conv2d(y * y, window) - mu_y ** 2
    cov = F.conv2d(x * y, window) - mu_x * mu_y
    c1, c2 = (SSIM_K1 * data_range) ** 2, (SSIM_K2 * data_range) ** 2
    ssim_map = ((2 * mu_x * mu_y + c1) * (2 * cov + c2)) / ((mu_x ** 2 + mu_y ** 2 + c1) * (var_x + var_y + c2))
    return float(ssim_map.mean())


# ---------------------------------------------------------------------------------------------------------------
# Baselines
# ---------------------------------------------------------------------------------------------------------------
def _to_uint8(x: np.ndarray) -> np.ndarray:
    return np.clip(np.round(x), 0, 255).astype(np.uint8)


def linear_blend(known, factor: int, num_frames: int | None = None, phase: int = 0) -> np.ndarray:
    """Frame interpolation by linear blending. `known` (n, h, w, 3) are frames phase, phase + factor, ... of a
    clip of `num_frames` frames (default (n - 1) * factor + 1 + phase); frame t between known frames i and i + 1
    is (1 - a) * known_i + a * known_{i+1} with a = (t - phase) / factor - i. Frames before the first or after
    the last known frame hold the nearest known one. Returns (num_frames, h, w, 3)."""
    known = np.asarray(known, np.float64)
    if factor < 1 or len(known) < 1 or phase < 0:
        raise ValueError(f"linear_blend needs factor >= 1, phase >= 0 and a known frame, got {factor}, {phase}, "
                         f"{len(known)}")
    num_frames = (len(known) - 1) * factor + 1 + phase if num_frames is None else num_frames
    position = np.clip((np.arange(num_frames) - phase) / factor, 0, len(known) - 1)  # in known-frame units
    left = np.floor(position).astype(int)
    right = np.minimum(left + 1, len(known) - 1)
    a = (position - left)[:, None, None, None]
    return _to_uint8((1 - a) * known[left] + a * known[right])


def downsample(clip, factor: int) -> np.ndarray:
    """Area (box) downsampling by an integer factor, (f, h, w, 3) -> (f, h / factor, w / factor, 3)."""
    clip = np.asarray(clip)
    f, h, w, _ = clip.shape
    if factor < 1 or h % factor or w % factor:
        raise ValueError(f"frame size {h}x{w} is not divisible by the factor {factor}")
    boxes = rearrange(clip.astype(np.float64), "f (h a) (w b) c -> f h w (a b) c", a=factor, b=factor)
    return _to_uint8(boxes.mean(axis=3))


def bicubic_upsample(clip, factor: int) -> np.ndarray:
    """Bicubic upsampling (torch's interpolate, align_corners=False), (f, h, w, 3) -> (f, h * factor, ...)."""
    x = rearrange(torch.from_numpy(np.asarray(clip).astype(np.float64)), "f h w c -> f c h w")
    y = F.interpolate(x, scale_factor=factor, mode="bicubic", align_corners=False)
    return _to_uint8(rearrange(y, "f c h w -> f h w c").numpy())


def repeat_last(known, num_frames: int) -> np.ndarray:
    """Extension baseline: the last known frame held for `num_frames` more frames."""
    known = np.asarray(known)
    return np.repeat(known[-1:], num_frames, axis=0)


def compare(true, generated, baseline) -> dict:
    """PSNR / SSIM of `generated` and of `baseline` against `true` (same shapes), and the PSNR gain in dB."""
    scores = {"psnr": psnr(true, generated), "ssim": ssim(true, generated),
              "baseline_psnr": psnr(true, baseline), "baseline_ssim": ssim(true, baseline)}
    scores["psnr_gain"] = scores["psnr"] - scores["baseline_psnr"]
    return scores


# ---------------------------------------------------------------------------------------------------------------
# Stage scores: a stage's output against the true synthetic clip, next to its baseline
# ---------------------------------------------------------------------------------------------------------------
def score_interpolation(true, generated, factor: int, phase: int = 0) -> dict:
    """x`factor` frame interpolation: `true` is the full-rate clip, the stage saw frames phase, phase + factor,
    ...; scored on the frames it had to make (the others are copies), against linear blending."""
    true, generated = _check_pair(true, generated)
    keyframe = (np.arange(len(true)) - phase) % factor == 0
    keyframe &= np.arange(len(true)) >= phase
    if keyframe.all():
        raise ValueError(f"a {len(true)}-frame clip with factor {factor} has no frames to interpolate")
    baseline = linear_blend(true[keyframe], factor, len(true), phase)
    return compare(true[~keyframe], generated[~keyframe], baseline[~keyframe])


def score_ssr(true, generated, factor: int) -> dict:
    """x`factor` spatial super-resolution: the stage saw `downsample(true, factor)`; against bicubic."""
    true, generated = _check_pair(true, generated)
    return compare(true, generated, bicubic_upsample(downsample(true, factor), factor))


def score_extension(true, generated, num_known: int) -> dict:
    """Extension / frame prediction: the stage saw the first `num_known` frames of `true`; scored on the rest,
    against holding the last known frame."""
    true, generated = _check_pair(true, generated)
    if not 1 <= num_known < len(true):
        raise ValueError(f"num_known must be in [1, {len(true) - 1}] for a {len(true)}-frame clip, got {num_known}")
    rest = len(true) - num_known
    return compare(true[num_known:], generated[num_known:], repeat_last(true[:num_known], rest))
