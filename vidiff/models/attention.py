"""Attention backends (sdpa | xformers | math) and cross-frame spatial self-attention.

All attention in vidiff goes through `attention(q, k, v, backend)` on `(batch, heads, tokens, head_dim)` tensors;
each backend is one entry of the `BACKENDS` registry (its kernel, and why it cannot run here, if it cannot).
The spatial layers keep diffusers' `Attention` modules (so SD weights load by their own names) and get a
`VideoAttnProcessor`, which computes the same thing as diffusers' `AttnProcessor2_0` and, for self-attention,
can take keys and values from other frames (the modes of vidiff.spec.CROSS_FRAME_SOURCES).

References: Dao et al. 2022 (FlashAttention); Lefaudeux et al. 2022 (xformers memory-efficient attention);
Khachatryan et al. 2023 (Text2Video-Zero); Wu et al. 2023 (Tune-A-Video).
"""
from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F
from einops import rearrange

from vidiff.spec import ATTENTION_BACKENDS, CROSS_FRAME_SOURCES, check_backend_name

# Fused CUDA kernels launch one block per (batch x heads) on a grid axis limited to 65535. The temporal layers
# fold b*h*w into the batch (2 * 64 * 64 = 8192 pixel columns for one 512 px clip with CFG, times 8 heads), which
# overflows it (reported for xformers at 512x512x16 frames with CFG), so larger calls are split into chunks.
MAX_BATCH_HEADS = 65535


class AttentionBackendError(RuntimeError):
    """An attention backend was asked for where it cannot run (xformers without CUDA, a broken xformers build)
    or its kernel refused the inputs. The message is one line naming the backend, the reason and the fix."""


XFORMERS_FIX = ("install it with `pip install vidiff[xformers]` on a CUDA machine, or use "
                "attention_backend='sdpa' (or 'auto')")


# ------------------------------------------------------------------------------------------------ kernels
def math_attention(q, k, v, upcast: bool = False):
    """softmax(q k^T / sqrt(d)) v written out; the reference the fused kernels are checked against."""
    dtype = q.dtype
    if upcast:
        q, k = q.float(), k.float()
    scores = torch.einsum("bhid,bhjd->bhij", q, k) * q.shape[-1] ** -0.5
    probs = scores.softmax(dim=-1).to(v.dtype)
    return torch.einsum("bhij,bhjd->bhid", probs, v).to(dtype)


def _sdpa_attention(q, k, v, upcast: bool = False):
    return F.scaled_dot_product_attention(q, k, v)  # accumulates in float32 already: `upcast` is moot


def _xformers_attention(q, k, v, upcast: bool = False):
    import xformers.ops as xops  # optional (the `xformers` extra): this backend is chosen only where it runs

    # xformers wants (batch, tokens, heads, head_dim)
    q, k, v = (t.transpose(1, 2).contiguous() for t in (q, k, v))
    try:
        return xops.memory_efficient_attention(q, k, v).transpose(1, 2)
    except (NotImplementedError, ValueError) as error:  # no kernel for this dtype / head size / device
        reason = " ".join(str(error).split())[:200]
        raise AttentionBackendError(f"attention backend 'xformers' cannot run on {tuple(q.shape)} {q.dtype} "
                                    f"inputs ({type(error).__name__}: {reason}); use attention_backend='sdpa'"
                                    ) from None


@functools.lru_cache(maxsize=None)
def _xformers_probe() -> str | None:
    """None when xformers imports and its kernel runs on the current CUDA device, else the reason it does not."""
    if not torch.cuda.is_available():
        return "it needs a CUDA device"
    try:
        import xformers.ops as xops  # optional: a missing or broken install is a reason, not a crash

        q = torch.zeros(1, 4, 1, 8, device="cuda", dtype=torch.float16)
        xops.memory_efficient_attention(q, q, q)
        return None
    except Exception as e:  # ImportError, or kernels built for another torch / GPU
        return f"{type(e).__name__}: {e}".splitlines()[0][:200]


def xformers_available() -> bool:
    return _xformers_probe() is None


@dataclass(frozen=True)
class Backend:
    kernel: Callable                                     # (q, k, v, upcast) -> out, all (batch, heads, tokens, d)
    fused: bool                                          # a CUDA grid over batch x heads: chunk past MAX_BATCH_HEADS
    unavailable: Callable[[], str | None] = lambda: None  # why it cannot run here, or None
    fix: str = ""                                        # what to do when it cannot


BACKENDS: dict[str, Backend] = {
    "sdpa": Backend(_sdpa_attention, fused=True),
    "xformers": Backend(_xformers_attention, fused=True, unavailable=_xformers_probe, fix=XFORMERS_FIX),
    "math": Backend(math_attention, fused=False),
}
assert ATTENTION_BACKENDS == ("auto", *BACKENDS), "vidiff.spec names every backend of this registry"


def backend_unavailable(name: str) -> str | None:
    """Why backend `name` cannot run on this machine, or None when it can ("auto" always can)."""
    return None if check_backend_name(name) == "auto" else BACKENDS[name].unavailable()


def check_backend(name: str) -> str:
    """`name` if it is a known backend that can run here; ValueError for an unknown name, AttentionBackendError
    (one line: the backend, why not, the fix) for one this machine cannot run."""
    if name != "auto":
        reason = backend_unavailable(name)
        if reason is not None:
            raise AttentionBackendError(f"attention backend {name!r} was requested but cannot run here ({reason}); "
                                        f"{BACKENDS[name].fix}")
    return name


def resolve_backend(name: str, device: torch.device) -> str:
    """'auto' -> xformers on CUDA when it runs, else PyTorch SDPA; other names as they are."""
    if name != "auto":
        return name
    if device.type == "cuda" and xformers_available():
        return "xformers"
    return "sdpa"


def attention(q, k, v, backend: str = "auto", upcast: bool = False):
    """Multi-head attention on `(batch, heads, tokens, head_dim)`; returns the same layout as `q`.

    `upcast` computes the scores in float32 for the math backend (diffusers' `upcast_attention`); the fused
    kernels accumulate in float32 already.
    """
    entry = BACKENDS[resolve_backend(backend, q.device)]
    batch, heads = q.shape[:2]
    if not entry.fused or batch * heads <= MAX_BATCH_HEADS:
        return entry.kernel(q, k, v, upcast)
    chunk = max(1, MAX_BATCH_HEADS // heads)
    return torch.cat([entry.kernel(q[i:i + chunk], k[i:i + chunk], v[i:i + chunk], upcast)
                      for i in range(0, batch, chunk)])


# ------------------------------------------------------------------------------------------------ cross-frame
def cross_frame_kv(x, num_frames: int, mode: str):
    """Gather, for every frame, the frames its self-attention reads keys and values from.

    x: `((b f), tokens, c)` -> `((b f), tokens * n, c)`, n the number of source frames of `mode`.
    """
    sources = [CROSS_FRAME_SOURCES[mode](i) for i in range(num_frames)]            # f lists of n frame indices
    x = rearrange(x, "(b f) t c -> b f t c", f=num_frames)
    out = torch.cat([x[:, list(frames)] for frames in zip(*sources)], dim=2)               # b f (n t) c
    return rearrange(out, "b f t c -> (b f) t c")


class VideoAttnProcessor:
    """Processor for diffusers `Attention` modules inside the spatial transformers.

    Numerically the same as diffusers' `AttnProcessor2_0` for the SD family (no group/spatial norm, no
    residual inside attention), plus the backend choice and cross-frame self-attention. `num_frames` arrives
    through `cross_attention_kwargs`.
    """

    def __init__(self, backend: str = "auto", cross_frame: str = "none"):
        self.backend = backend
        self.cross_frame = cross_frame

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None,
                 num_frames: int = 1):
        if attention_mask is not None:
            raise NotImplementedError("attention masks are not supported by vidiff's video U-Net")
        is_self = encoder_hidden_states is None
        context = hidden_states if is_self else encoder_hidden_states
        if not is_self and attn.norm_cross:
            context = attn.norm_encoder_hidden_states(context)

        query = attn.to_q(hidden_states)
        if is_self and self.cross_frame != "none" and num_frames > 1:
            context = cross_frame_kv(context, num_frames, self.cross_frame)
        key, value = attn.to_k(context), attn.to_v(context)

        q, k, v = (rearrange(t, "b n (h d) -> b h n d", h=attn.heads) for t in (query, key, value))
        out = attention(q, k, v, self.backend, upcast=attn.upcast_attention or attn.upcast_softmax)
        out = rearrange(out, "b h n d -> b n (h d)").to(query.dtype)
        out = attn.to_out[1](attn.to_out[0](out))  # linear, dropout
        if attn.residual_connection:
            out = out + hidden_states
        return out / attn.rescale_output_factor
