"""Fréchet Video Distance: I3D features of two sets of clips, and the Fréchet distance of their Gaussians.

Protocol (StyleGAN-V's FVD16, Skorokhodov et al. 2022, on the original TensorFlow FVD of Unterthiner et al. 2018):
  - each clip gives its first `FVD_FRAMES` = 16 consecutive frames (a clip with fewer is an error, not padded);
  - every frame is resized to `FVD_SIZE` x `FVD_SIZE` = 224 x 224 (bilinear, half-pixel centres, aspect not kept,
    as the original's `resize_bilinear`), RGB scaled from [0, 255] to [-1, 1];
  - features: the 400 Kinetics logits before the softmax (`InceptionI3d.forward`), what StyleGAN-V's detector
    returns with `return_features=True`;
  - FVD = |mu_r - mu_f|^2 + tr(S_r + S_f - 2 (S_r S_f)^(1/2)), means and covariances (ddof 1) in float64; the
    trace of the matrix square root from the features' singular values (`fvd`, exact for any set size), or by
    scipy.linalg.sqrtm from given statistics (`frechet_distance`).
Published numbers use 2048 clips per set (StyleGAN-V) or more; FVD of small sets is biased upwards (the
covariance estimate's noise), so compare sets of the same size only. The "content-debiased" FVD of Ge et al.
2024 swaps I3D for VideoMAE-v2 features; it is not implemented here.

References: Unterthiner et al. 2018 "Towards Accurate Generative Models of Video: A New Metric & Challenges";
Skorokhodov, Tulyakov & Elhoseiny 2022 "StyleGAN-V"; Heusel et al. 2017 (the Fréchet distance of FID).
"""
from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import scipy.linalg
import torch
import torch.nn.functional as F
from einops import rearrange

from vidiff.progress import ProgressBar

FVD_FRAMES = 16
FVD_SIZE = 224
MIN_CLIPS = 2  # a covariance needs two samples; real evaluations use thousands


def prepare_clip(frames, num_frames: int = FVD_FRAMES, size: int = FVD_SIZE) -> torch.Tensor:
    """uint8 (f, h, w, 3) -> float32 (3, num_frames, size, size) in [-1, 1]: the first `num_frames` frames,
    each resized to size x size (bilinear)."""
    frames = np.asarray(frames)
    if frames.ndim != 4 or frames.shape[-1] != 3:
        raise ValueError(f"a clip must be (frames, height, width, 3), got shape {frames.shape}")
    if len(frames) < num_frames:
        raise ValueError(f"FVD takes {num_frames} frames per clip, the clip has {len(frames)}")
    x = rearrange(torch.from_numpy(frames[:num_frames].astype(np.float32)), "f h w c -> f c h w")
    if x.shape[-2:] != (size, size):
        x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=False)
    x = x / 127.5 - 1.0
    return rearrange(x.clamp(-1.0, 1.0), "f c h w -> c f h w")


@torch.no_grad()
def i3d_features(model, clips: Iterable, *, num_frames: int = FVD_FRAMES, size: int = FVD_SIZE,
                 batch_size: int = 8, device=None, total: int | None = None, progress: bool = True) -> np.ndarray:
    """I3D logits (n, 400) in float64 of uint8 clips (f, h, w, 3), `batch_size` clips per forward pass."""
    device = torch.device(device or "cpu")
    model = model.to(device).eval()
    features, batch = [], []

    def flush():
        x = torch.stack(batch).to(device)  # (b, 3, f, h, w)
        features.append(model(x).double().cpu().numpy())
        batch.clear()

    with ProgressBar(total=total, desc="i3d", unit="clip", disable=not progress) as bar:
        for clip in clips:
            batch.append(prepare_clip(clip, num_frames, size))
            if len(batch) == batch_size:
                flush()
                bar.update(batch_size)
        if batch:
            bar.update(len(batch))
            flush()
    if not features:
        raise ValueError("no clips to compute I3D features of")
    return np.concatenate(features)


def feature_statistics(features) -> tuple[np.ndarray, np.ndarray]:
    """Mean (d,) and covariance (d, d, ddof 1) of features (n, d), in float64."""
    features = np.asarray(features, dtype=np.float64)
    if features.ndim != 2 or len(features) < MIN_CLIPS:
        raise ValueError(f"need features (n, d) with n >= {MIN_CLIPS}, got shape {features.shape}")
    return features.mean(axis=0), np.cov(features, rowvar=False)


def frechet_distance(mu1, sigma1, mu2, sigma2) -> float:
    """|mu1 - mu2|^2 + tr(sigma1 + sigma2 - 2 sqrtm(sigma1 sigma2)) in float64. sqrtm of a product of singular
    covariances (fewer samples than dimensions) can come out complex or inexact: as pytorch-fid does, a small
    multiple of the identity is then added to both. Rounding below zero is reported as 0."""
    mu1, mu2 = np.asarray(mu1, np.float64), np.asarray(mu2, np.float64)
    sigma1, sigma2 = np.asarray(sigma1, np.float64), np.asarray(sigma2, np.float64)
    if mu1.shape != mu2.shape or sigma1.shape != sigma2.shape or sigma1.shape != (len(mu1), len(mu1)):
        raise ValueError(f"mismatched statistics: means {mu1.shape}, {mu2.shape}; covariances {sigma1.shape}, "
                         f"{sigma2.shape}")
    covmean = scipy.linalg.sqrtm(sigma1 @ sigma2)
    if not np.isfinite(covmean).all() or np.abs(np.imag(covmean)).max() > 1e-3 * max(1.0, np.abs(covmean).max()):
        offset = np.eye(len(mu1)) * 1e-6 * max(1.0, np.trace(sigma1) / len(mu1))
        covmean = scipy.linalg.sqrtm((sigma1 + offset) @ (sigma2 + offset))
    covmean = np.real(covmean)
    diff = mu1 - mu2
    distance = diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2.0 * np.trace(covmean)
    return float(max(distance, 0.0))


def fvd(real_features, fake_features) -> float:
    """The Fréchet distance between the Gaussians of two feature sets (n, d) and (m, d), from the features.

    With A, B the centred features, S1 = A^T A / (n - 1) and S2 = B^T B / (m - 1), and tr (S1 S2)^(1/2) is the sum
    of the singular values of B A^T over sqrt((n - 1)(m - 1)) (both are the square roots of the eigenvalues of
    S1^(1/2) S2 S1^(1/2)). With A = Qa Ra and B = Qb Rb (QR, orthonormal Q) those are the singular values of
    Rb Ra^T, at most d x d: exact for any set size, where sqrtm of a product of singular covariances (fewer clips
    than 400 dimensions) is not."""
    a, b = (np.asarray(f, np.float64) for f in (real_features, fake_features))
    (mu1, sigma1), (mu2, sigma2) = feature_statistics(a), feature_statistics(b)
    if a.shape[1] != b.shape[1]:
        raise ValueError(f"feature sets of different widths: {a.shape} and {b.shape}")
    ra = np.linalg.qr(a - mu1, mode="r")
    rb = np.linalg.qr(b - mu2, mode="r")
    trace_sqrt = np.linalg.svd(rb @ ra.T, compute_uv=False).sum() / np.sqrt((len(a) - 1) * (len(b) - 1))
    diff = mu1 - mu2
    distance = diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2.0 * trace_sqrt
    return float(max(distance, 0.0))
