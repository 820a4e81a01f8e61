"""Control images from a video: what a ControlNet reads, one image per frame, `(1, 3, f, H, W)` in [0, 1].

    canny   Canny edges (kornia.filters.canny) of each frame at the output size, white on black in 3 channels,
            the input of the SD 1.5 canny ControlNets
    raw     the frames as given (a depth-map, pose or edge video the user made), resized to the output size

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


def control_images(frames, kind: str, height: int, width: int) -> torch.Tensor:
    """The control images of a video for a clip of `height` x `width` pixels: uint8 frames `(f, h, w, 3)` ->
    `(1, 3, f, height, width)` floats in [0, 1] (`kind`: "canny" or "raw", see the module's docstring)."""
    check_choice("control", kind, EXTRACTORS)
    images = resize(as_frames(frames), height, width)
    if kind == "canny":
        images = canny(images)
    return rearrange(images, "f c h w -> 1 c f h w")
