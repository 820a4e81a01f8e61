"""Attention backends (sdpa | xformers | math) and cross-frame spatial self-attention.

All attention in vidiff goes through `attention(q, k, v, backend)` on `(batch, heads, tokens, head_dim)` tensors.
The spatial layers keep diffusers' `Attention` modules (so SD weights load by their own names) and get a
`VideoAttnProcessor`, which computes the same thing as diffusers' `AttnProcessor2_0` and, for self-attention,
can take keys and values from other frames:

    "none"           every frame attends to itself (the image model run frame by frame)
    "first"          every frame attends to frame 0                      (Text2Video-Zero, Khachatryan et al. 2023)
    "sparse-causal"  every frame attends to frame 0 and the previous one (Tune-A-Video, Wu et al. 2023)

References: Dao et al. 2022 (FlashAttention); Lefaudeux et al. 2022 (xformers memory-efficient attention).
"""
from __future__ import annotations

import functools

import torch
import torch.nn.functional as F
from einops import rearrange

BACKENDS = ("auto", "sdpa", "xformers", "math")
CROSS_FRAME_MODES = ("none", "first", "sparse-causal")

# Fused CUDA kernels launch one block per (batch x heads) on a grid axis limited to 65535. The temporal layers
# fold b*h*w into the batch (2 * 64 * 64 = 8192 pixel columns for one 512 px clip with CFG, times 8 heads), which
# overflows it (reported for xformers at 512x512x16 frames with CFG), so larger calls are split into chunks.
MAX_BATCH_HEADS = 65535


def check_backend(name: str) -> str:
    if name not in BACKENDS:
        raise ValueError(f"unknown attention backend {name!r}; choose one of {', '.join(BACKENDS)}")
    if name == "xformers" and not xformers_available():
        raise RuntimeError(
            "attention backend 'xformers' was requested but xformers cannot run here "
            f"({_xformers_error() or 'it needs a CUDA device'}); install it with `pip install vidiff[xformers]` on a "
            "CUDA machine, or use attention_backend='sdpa'"
        )
    return name


def check_cross_frame(mode: str) -> str:
    if mode not in CROSS_FRAME_MODES:
        raise ValueError(f"unknown cross_frame mode {mode!r}; choose one of {', '.join(CROSS_FRAME_MODES)}")
    return mode


@functools.lru_cache(maxsize=None)
def _xformers_probe() -> str | None:
    """None when xformers imports and its kernel runs on the current CUDA device, else the reason it does not."""
    if not torch.cuda.is_available():
        return "no CUDA device"
    try:
        import xformers.ops as xops

        q = torch.zeros(1, 4, 1, 8, device="cuda", dtype=torch.float16)
        xops.memory_efficient_attention(q, q, q)
        return None
    except Exception as e:  # ImportError, or kernels built for another torch / GPU
        return f"{type(e).__name__}: {e}".splitlines()[0][:200]


def _xformers_error() -> str | None:
    return _xformers_probe()


def xformers_available() -> bool:
    return _xformers_probe() is None


def resolve_backend(name: str, device: torch.device) -> str:
    """'auto' -> xformers on CUDA when it runs, else PyTorch SDPA."""
    if name != "auto":
        return name
    if device.type == "cuda" and xformers_available():
        return "xformers"
    return "sdpa"


def math_attention(q, k, v, upcast: bool = False):
    """softmax(q k^T / sqrt(d)) v written out; the reference the fused kernels are checked against."""
    dtype = q.dtype
    if upcast:
        q, k = q.float(), k.float()
    scores = torch.einsum("bhid,bhjd->bhij", q, k) * q.shape[-1] ** -0.5
    probs = scores.softmax(dim=-1).to(v.dtype)
    return torch.einsum("bhij,bhjd->bhid", probs, v).to(dtype)


def _xformers_attention(q, k, v):
    import xformers.ops as xops

    # xformers wants (batch, tokens, heads, head_dim)
    q, k, v = (t.transpose(1, 2) for t in (q, k, v))
    return xops.memory_efficient_attention(q.contiguous(), k.contiguous(), v.contiguous()).transpose(1, 2)


def attention(q, k, v, backend: str = "auto", upcast: bool = False):
    """Multi-head attention on `(batch, heads, tokens, head_dim)`; returns the same layout as `q`.

    `upcast` computes the scores in float32 for the math backend (diffusers' `upcast_attention`); the fused
    kernels accumulate in float32 already.
    """
    backend = resolve_backend(backend, q.device)
    if backend == "math":
        return math_attention(q, k, v, upcast=upcast)
    fn = _xformers_attention if backend == "xformers" else F.scaled_dot_product_attention
    batch, heads = q.shape[:2]
    if batch * heads <= MAX_BATCH_HEADS:
        return fn(q, k, v)
    chunk = max(1, MAX_BATCH_HEADS // heads)
    return torch.cat([fn(q[i:i + chunk], k[i:i + chunk], v[i:i + chunk]) for i in range(0, batch, chunk)])


def cross_frame_kv(x, num_frames: int, mode: str):
    """Gather, for every frame, the frames its self-attention reads keys and values from.

    x: `((b f), tokens, c)` -> `((b f), tokens * n, c)` with n = 1 ("first") or 2 ("sparse-causal").
    """
    x = rearrange(x, "(b f) n c -> b f n c", f=num_frames)
    first = x[:, :1].expand_as(x)
    if mode == "first":
        out = first
    else:  # sparse-causal: frame 0 and the previous frame (frame 0 reads itself twice, which changes nothing)
        previous = x[:, [max(i - 1, 0) for i in range(num_frames)]]
        out = torch.cat([first, previous], dim=2)
    return rearrange(out, "b f n c -> (b f) n c")


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
