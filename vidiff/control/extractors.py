"""Control images from a video: what a ControlNet reads, one image per frame, `(1, 3, f, H, W)` in [0, 1].

    canny   Canny edges (kornia.filters.canny) of each frame at the output size, white on black in 3 channels,
            the input of the SD 1.5 canny ControlNets
    track   a white disc on black at the centroid of what stands out from each frame's background (its median
            colour): the path of one object moving over a plain background, without its shape or colour (the
            demo's trajectory ControlNet reads it); a frame where nothing stands out stays black
    depth-map  a depth video the user made (white near, black far, as the SD depth ControlNets read it): its
            luminance (ITU-R BT.601) in 3 channels, so a coloured depth rendering reads as its grey levels
    raw     the frames as given (a pose or edge video the user made), resized to the output size

References: Canny 1986 (A Computational Approach to Edge Detection); Zhang, Rao & Agrawala 2023 (ControlNet).
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from einops import rearrange
from kornia.filters import canny as kornia_canny

from vidiff.spec import CONTROL_EXTRACTORS, check_choice

EXTRACTORS = CONTROL_EXTRACTORS
# OpenCV's cv2.Canny(image, 100, 200) on uint8 frames, the thresholds of the ControlNet canny examples: the same
# unnormalised 3x3 Sobel magnitude, here on [0, 1] pixels
CANNY_LOW, CANNY_HIGH = 100 / 255, 200 / 255


def as_frames(frames) -> torch.Tensor:
    """uint8 `(f, h, w, 3)` (numpy or torch, as vidiff.data.video_io reads a video) -> float `(f, 3, h, w)` in
    [0, 1]."""
    frames = torch.from_numpy(np.ascontiguousarray(frames)) if isinstance(frames, np.ndarray) else frames
    if frames.dtype != torch.uint8 or frames.ndim != 4 or frames.shape[-1] != 3:
        raise ValueError(f"frames must be uint8 of shape (f, h, w, 3), got {frames.dtype} {tuple(frames.shape)}")
    return rearrange(frames, "f h w c -> f c h w").float() / 255


def resize(frames: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """`(f, 3, h, w)` -> `(f, 3, height, width)`, bilinear with antialiasing (as PIL's resize when shrinking)."""
    if frames.shape[-2:] == (height, width):
        return frames
    return F.interpolate(frames, size=(height, width), mode="bilinear", antialias=True, align_corners=False
                         ).clamp(0, 1)


def canny(frames: torch.Tensor, low_threshold: float = CANNY_LOW, high_threshold: float = CANNY_HIGH
          ) -> torch.Tensor:
    """Canny edges of `(f, 3, h, w)` frames in [0, 1]: `(f, 3, h, w)`, 1 on an edge, 0 elsewhere (grey to 3
    channels, as ControlNet's canny models were trained on)."""
    if not 0 <= low_threshold <= high_threshold:
        raise ValueError(f"canny thresholds must satisfy 0 <= low <= high, got {low_threshold}, {high_threshold}")
    _, edges = kornia_canny(frames.float(), low_threshold, high_threshold)                    # (f, 1, h, w)
    return edges.expand(-1, 3, -1, -1).contiguous()


# track: what differs from the background colour by less than this (in [0, 1] RGB, Euclidean) is background
TRACK_MIN_CONTRAST = 0.1


def track(frames: torch.Tensor, radius: float | None = None, min_contrast: float = TRACK_MIN_CONTRAST
          ) -> torch.Tensor:
    """A disc of `radius` pixels (default 1/16 of the shorter side, at least 1.5) at the centroid of each frame's
    foreground: `(f, 3, h, w)` in [0, 1] -> `(f, 3, h, w)`, white disc on black. The background is the frame's
    median colour; the foreground the pixels at least half as far from it as the 99th percentile of distances
    (the measure vidiff.eval.shapes finds shapes by), weighted by that distance."""
    frames = frames.float()
    f, _, h, w = frames.shape
    radius = max(1.5, min(h, w) / 16) if radius is None else radius
    background = frames.flatten(2).median(dim=2).values                                   # (f, 3)
    distance = (frames - background[:, :, None, None]).norm(dim=1)                         # (f, h, w)
    peak = torch.quantile(distance.flatten(1), 0.99, dim=1)                                # (f,)
    weight = distance * (distance > torch.clamp(0.5 * peak, min=min_contrast / 2)[:, None, None])
    ys = torch.arange(h, dtype=torch.float32)[:, None] + 0.5
    xs = torch.arange(w, dtype=torch.float32)[None, :] + 0.5
    mass = weight.sum(dim=(1, 2)).clamp_min(1e-8)
    cy = (weight * ys).sum(dim=(1, 2)) / mass
    cx = (weight * xs).sum(dim=(1, 2)) / mass
    reach = ((ys[None] - cy[:, None, None]) ** 2 + (xs[None] - cx[:, None, None]) ** 2).sqrt()
    disc = (radius + 0.5 - reach).clamp(0, 1) * (peak >= min_contrast)[:, None, None]      # anti-aliased rim
    return disc[:, None].expand(-1, 3, -1, -1).contiguous()


def luminance(frames: torch.Tensor) -> torch.Tensor:
    """The grey levels (ITU-R BT.601 luma) of `(f, 3, h, w)` frames in [0, 1], in 3 channels."""
    weights = torch.tensor([0.299, 0.587, 0.114], dtype=torch.float32).view(1, 3, 1, 1)
    return (frames.float() * weights).sum(dim=1, keepdim=True).expand(-1, 3, -1, -1).contiguous()


def extract(images: torch.Tensor, kind: str) -> torch.Tensor:
    """Control images of `(f, 3, h, w)` frames in [0, 1], made as `kind` says (the module's docstring)."""
    check_choice("control", kind, EXTRACTORS)
    if kind == "canny":
        return canny(images)
    if kind == "track":
        return track(images)
    if kind == "depth-map":
        return luminance(images)
    return images.float()


def control_images(frames, kind: str, height: int, width: int) -> torch.Tensor:
    """The control images of a video for a clip of `height` x `width` pixels: uint8 frames `(f, h, w, 3)` ->
    `(1, 3, f, height, width)` floats in [0, 1] (`kind`: see the module's docstring)."""
    check_choice("control", kind, EXTRACTORS)
    return rearrange(extract(resize(as_frames(frames), height, width), kind), "f c h w -> 1 c f h w")


def batch_control_images(pixels: torch.Tensor, kind: str) -> torch.Tensor:
    """Control images of a training batch: `(b, 3, f, h, w)` in [-1, 1] -> `(b, 3, f, h, w)` in [0, 1]."""
    b = pixels.shape[0]
    frames = rearrange((pixels.float() + 1) / 2, "b c f h w -> (b f) c h w").clamp(0, 1)
    return rearrange(extract(frames, kind), "(b f) c h w -> b c f h w", b=b)
