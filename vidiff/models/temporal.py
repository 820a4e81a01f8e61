"""Temporal layers that inflate a 2D U-Net into a pseudo-3D one.

Both start as the identity, so an inflated model *is* the image model run frame by frame until it is trained:
- `TemporalConv`: a 1D convolution over frames at every pixel, kernel 3, Dirac (identity) initialised.
- `TemporalAttention`: self-attention across frames at every spatial position with a sinusoidal frame
  position encoding; its output projection is zero-initialised and added to the input (residual).

Spatial layers see `(b f) c h w`; the temporal layers fold to `(b h w) f c` (or `b c f h w` for the conv) at
their reshape point and unfold before returning.

References: Singer et al. 2022 (Make-A-Video, pseudo-3D conv/attention, identity init); Guo et al. 2023
(AnimateDiff, zero-initialised motion modules with position encodings); Vaswani et al. 2017 (sinusoids).
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn
from einops import rearrange

from vidiff.models.attention import attention


def frame_position_encoding(num_frames: int, dim: int, device=None, dtype=None):
    """Sinusoidal encoding of frame indices, `(num_frames, dim)`; defined for any number of frames, so a
    model trained on 16 frames still runs on 24 or on sliding windows of a long video."""
    half = dim // 2
    freqs = torch.exp(-math.log(10000.0) * torch.arange(half, device=device, dtype=torch.float32) / half)
    angles = torch.arange(num_frames, device=device, dtype=torch.float32)[:, None] * freqs[None]
    enc = torch.cat([angles.sin(), angles.cos()], dim=-1)
    if dim % 2:
        enc = torch.cat([enc, enc.new_zeros(num_frames, 1)], dim=-1)
    return enc.to(dtype)


class TemporalConv(nn.Module):
    """Convolution over frames only (kernel `(k, 1, 1)`), Dirac-initialised: output == input at init."""

    def __init__(self, channels: int, kernel_size: int = 3):
        super().__init__()
        self.conv = nn.Conv3d(channels, channels, (kernel_size, 1, 1), padding=(kernel_size // 2, 0, 0))
        nn.init.dirac_(self.conv.weight)
        nn.init.zeros_(self.conv.bias)

    def forward(self, x, num_frames: int):
        x = rearrange(x, "(b f) c h w -> b c f h w", f=num_frames)
        x = self.conv(x)
        return rearrange(x, "b c f h w -> (b f) c h w")


class TemporalAttention(nn.Module):
    """Pre-norm multi-head self-attention across frames, residual, zero-initialised output projection."""

    def __init__(self, channels: int, num_heads: int = 8, backend: str = "auto"):
        super().__init__()
        if channels % num_heads:
            raise ValueError(f"temporal attention: {channels} channels do not split into {num_heads} heads")
        self.num_heads = num_heads
        self.backend = backend
        self.norm = nn.LayerNorm(channels)
        self.to_q = nn.Linear(channels, channels, bias=False)
        self.to_k = nn.Linear(channels, channels, bias=False)
        self.to_v = nn.Linear(channels, channels, bias=False)
        self.to_out = nn.Linear(channels, channels)
        nn.init.zeros_(self.to_out.weight)
        nn.init.zeros_(self.to_out.bias)

    def forward(self, x, num_frames: int):
        height = x.shape[-2]
        tokens = rearrange(x, "(b f) c h w -> (b h w) f c", f=num_frames)
        h = self.norm(tokens)
        # the position encoding tells the layer where each frame sits; it enters queries and keys, not values
        pos = frame_position_encoding(num_frames, h.shape[-1], device=h.device, dtype=h.dtype)
        q, k = self.to_q(h + pos), self.to_k(h + pos)
        v = self.to_v(h)
        q, k, v = (rearrange(t, "n f (heads d) -> n heads f d", heads=self.num_heads) for t in (q, k, v))
        out = attention(q, k, v, self.backend)
        out = self.to_out(rearrange(out, "n heads f d -> n f (heads d)"))
        tokens = tokens + out
        return rearrange(tokens, "(b h w) f c -> (b f) c h w", f=num_frames, h=height, w=x.shape[-1])
