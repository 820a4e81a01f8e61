"""The string options, defined once: cross-frame attention modes, attention backend names and stage names.

Torch-free on purpose: config validation and the CLI's `choices=` import these names without loading torch;
the U-Net and the attention processors import the same names, so a mode added here is known everywhere.

Cross-frame modes say, for frame i of a clip, which frames its spatial self-attention takes keys and values from:

    "none"           frame i itself (the image model run frame by frame)
    "first"          frame 0                        (Text2Video-Zero, Khachatryan et al. 2023)
    "sparse-causal"  frame 0 and frame i - 1        (Tune-A-Video, Wu et al. 2023)

Attention backends: "auto" resolves per device (xformers on CUDA when it runs, else PyTorch SDPA); "sdpa",
"xformers" and "math" (plain einsum, the reference) can be forced. The kernels are in vidiff.models.attention.

Stage names say what a U-Net's extra input channels hold ("base" has none); what each stage feeds the U-Net is
vidiff.training.stages, and `vidiff.json` / the U-Net config record the name.

Runtime options (attention backend, gradient checkpointing) are not the model's identity: they are never saved
with a model, so a model saved on a CUDA machine with xformers loads on any machine (STYLE habit 15).
"""
from __future__ import annotations

from typing import Callable

# mode -> the frames frame i reads keys/values from (frame 0 in "sparse-causal" reads itself twice: no change)
CROSS_FRAME_SOURCES: dict[str, Callable[[int], list[int]]] = {
    "none": lambda i: [i],
    "first": lambda i: [0],
    "sparse-causal": lambda i: [0, max(i - 1, 0)],
}
CROSS_FRAME_MODES: tuple[str, ...] = tuple(CROSS_FRAME_SOURCES)

ATTENTION_BACKENDS: tuple[str, ...] = ("auto", "sdpa", "xformers", "math")

# Where temporal attention adds its frame position encoding: "qk", to queries and keys (which frames attend to
# which; the values carry content only), or "qkv", to values too (AnimateDiff's motion modules: every frame's
# features also learn which frame they are, which lets a model place content by time, e.g. a direction of travel).
TEMPORAL_POSITIONS: tuple[str, ...] = ("qk", "qkv")

# The cascade stages (what each feeds the U-Net: vidiff.training.stages.STAGES) and all stage names.
CASCADE_STAGES: tuple[str, ...] = ("interpolation", "tsr", "ssr")
STAGE_NAMES: tuple[str, ...] = ("base", *CASCADE_STAGES)
# The stages that raise the frame rate (the others keep it): interpolation and temporal super-resolution.
TEMPORAL_STAGES: tuple[str, ...] = ("interpolation", "tsr")

# VideoUNet options that belong to one run on one machine, never written into a saved model's config.
RUNTIME_OPTIONS: tuple[str, ...] = ("attention_backend",)


def check_cross_frame(mode: str) -> str:
    """`mode` if it is a known cross-frame mode, else a ValueError listing the modes."""
    if mode not in CROSS_FRAME_SOURCES:
        raise ValueError(f"unknown cross_frame mode {mode!r}; choose one of {', '.join(CROSS_FRAME_MODES)}")
    return mode


def check_backend_name(name: str) -> str:
    """`name` if it is a known attention backend, else a ValueError listing them (availability is checked by
    vidiff.models.attention.check_backend, which needs torch)."""
    if name not in ATTENTION_BACKENDS:
        raise ValueError(f"unknown attention backend {name!r}; choose one of {', '.join(ATTENTION_BACKENDS)}")
    return name
