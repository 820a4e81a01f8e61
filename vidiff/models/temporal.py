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
import torch.nn.functional as F
from einops import rearrange

from vidiff.models.attention import attention
from vidiff.spec import TEMPORAL_POSITIONS


def sinusoids(values: torch.Tensor, dim: int) -> torch.Tensor:
    """`(n, dim)` float32 sin / cos encodings of `values` `(n,)` at `dim // 2` geometric frequencies (the
    transformer's); an odd `dim` gets a zero last column."""
    half = dim // 2
    freqs = torch.exp(-math.log(10000.0) * torch.arange(half, device=values.device, dtype=torch.float32) / half)
    angles = values.float()[:, None] * freqs[None]
    enc = torch.cat([angles.sin(), angles.cos()], dim=-1)
    if dim % 2:
        enc = torch.cat([enc, enc.new_zeros(len(values), 1)], dim=-1)
    return enc


def frame_position_encoding(num_frames: int, dim: int, device=None, dtype=None):
    """Sinusoidal encoding of frame indices, `(num_frames, dim)`; defined for any number of frames, so a
    model trained on 16 frames still runs on 24 or on sliding windows of a long video."""
    return sinusoids(torch.arange(num_frames, device=device), dim).to(dtype)


class ZeroInitEmbedding(nn.Module):
    """Sinusoids of a number through a zero-initialised linear layer: added to the timestep embedding, it changes
    nothing until trained (`embed(values)`: `(n, embed_dim)`)."""

    def __init__(self, embed_dim: int, channels: int = 64):
        super().__init__()
        self.channels = channels
        self.proj = nn.Linear(channels, embed_dim)
        nn.init.zeros_(self.proj.weight)
        nn.init.zeros_(self.proj.bias)

    def embed(self, values: torch.Tensor, dtype=None) -> torch.Tensor:
        code = sinusoids(values, self.channels).to(self.proj.weight.dtype)
        return self.proj(code).to(dtype or self.proj.weight.dtype)


class FrameEmbedding(ZeroInitEmbedding):
    """Which frame of the clip each frame is, for every resnet block: the frame index's sinusoidal encoding through
    a zero-initialised linear layer, added to the frame's timestep embedding (so the inflated U-Net starts as the
    image model). Temporal attention alone tells only the attention resolutions where a frame sits; a caption's
    "moving right" needs a frame-dependent position at every level."""

    def forward(self, num_frames: int, dtype=None) -> torch.Tensor:
        """`(num_frames, embed_dim)`."""
        return self.embed(torch.arange(num_frames, device=self.proj.weight.device), dtype)


class CoordinateEmbedding(nn.Module):
    """Where each pixel is: sinusoids of its (x, y) position (normalised to [-1, 1] across the frame, so any size
    works) at `frequencies` octaves, through a zero-initialised 1x1 convolution, added to the features after
    `conv_in` (the inflated U-Net starts as the image model). Convolutions and SD's attention carry no absolute
    position; a caption that says where a shape goes ("moving right": on the left first) needs it."""

    def __init__(self, channels: int, frequencies: int = 4):
        super().__init__()
        self.frequencies = frequencies
        self.proj = nn.Conv2d(4 * frequencies, channels, kernel_size=1)
        nn.init.zeros_(self.proj.weight)
        nn.init.zeros_(self.proj.bias)

    def forward(self, height: int, width: int) -> torch.Tensor:
        """`(1, channels, height, width)`."""
        device, dtype = self.proj.weight.device, self.proj.weight.dtype
        scales = math.pi * 2.0 ** torch.arange(self.frequencies, device=device, dtype=torch.float32) / 2
        ys = (torch.arange(height, device=device, dtype=torch.float32) + 0.5) / height * 2 - 1
        xs = (torch.arange(width, device=device, dtype=torch.float32) + 0.5) / width * 2 - 1
        ay = (ys[:, None] * scales)[:, None, :].expand(height, width, -1)          # h w k
        ax = (xs[:, None] * scales)[None, :, :].expand(height, width, -1)
        code = torch.cat([ay.sin(), ay.cos(), ax.sin(), ax.cos()], dim=-1).permute(2, 0, 1)[None]
        return self.proj(code.to(dtype))


class TemporalConv(nn.Module):
    """Convolution over frames only, at every pixel (a Conv1d along f), Dirac-initialised: output == input.

    Computed as one matrix product for all taps on the `(b f) c h w` layout plus shifted adds, which avoids the
    two full transposes a Conv3d with a `(k, 1, 1)` kernel needs (and is ~10x faster than it on CPU). Zero padding
    at the clip ends, as a Conv1d with `padding=k // 2`. Weight layout `(c_out, c_in, k)` as `nn.Conv1d`.
    """

    def __init__(self, channels: int, kernel_size: int = 3):
        super().__init__()
        if kernel_size % 2 == 0:
            raise ValueError(f"temporal kernel size must be odd, got {kernel_size}")
        self.weight = nn.Parameter(torch.empty(channels, channels, kernel_size))
        self.bias = nn.Parameter(torch.zeros(channels))
        nn.init.dirac_(self.weight)  # tap k//2 is the identity, the others zero

    def forward(self, x, num_frames: int):
        bf, c, h, w = x.shape
        k = self.weight.shape[-1]
        x = x.reshape(bf // num_frames, num_frames, c, h * w)                     # b f c (h w)
        taps = torch.matmul(rearrange(self.weight, "o i k -> (k o) i"), x)        # b f (k c) (h w)
        taps = taps.unflatten(2, (k, c))                                          # b f k c (h w)
        y = taps[:, :, k // 2] + self.bias[:, None]
        for j in range(k):  # tap j reads frame t + j - k//2
            shift = j - k // 2
            if shift < 0 and num_frames > -shift:
                y[:, -shift:] += taps[:, :shift, j]
            elif shift > 0 and num_frames > shift:
                y[:, :-shift] += taps[:, shift:, j]
        return y.reshape(bf, c, h, w)


class TemporalAttention(nn.Module):
    """Pre-norm multi-head self-attention across frames, residual, zero-initialised output projection."""

    def __init__(self, channels: int, num_heads: int = 8, backend: str = "auto", position: str = "qk"):
        super().__init__()
        if channels % num_heads:
            raise ValueError(f"temporal attention: {channels} channels do not split into {num_heads} heads")
        if position not in TEMPORAL_POSITIONS:
            raise ValueError(f"temporal_position must be one of {', '.join(TEMPORAL_POSITIONS)}, got {position!r}")
        self.num_heads = num_heads
        self.backend = backend
        self.position = position
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
        # The position encoding tells the layer where each frame sits. "qkv": it is added to the input of all three
        # projections. "qk": to queries and keys only, q = W_q (h + pos) = W_q h + W_q pos, so one fused matmul
        # serves q, k and v and pos is projected once (per frame, not per token).
        pos = frame_position_encoding(num_frames, h.shape[-1], device=h.device, dtype=h.dtype)
        x_in = h + pos if self.position == "qkv" else h
        if all(type(m) is nn.Linear for m in (self.to_q, self.to_k, self.to_v)):
            weight = torch.cat([self.to_q.weight, self.to_k.weight, self.to_v.weight])
            q, k, v = F.linear(x_in, weight).chunk(3, dim=-1)
        else:  # wrapped projections (a LoRA adapter, vidiff.adapters) compute their own output
            q, k, v = self.to_q(x_in), self.to_k(x_in), self.to_v(x_in)
        if self.position == "qk":
            q, k = q + self.to_q(pos), k + self.to_k(pos)
        q, k, v = (rearrange(t, "n f (heads d) -> n heads f d", heads=self.num_heads) for t in (q, k, v))
        out = attention(q, k, v, self.backend)
        out = self.to_out(rearrange(out, "n heads f d -> n f (heads d)"))
        tokens = tokens + out
        return rearrange(tokens, "(b h w) f c -> (b f) c h w", f=num_frames, h=height, w=x.shape[-1])
