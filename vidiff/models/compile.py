"""torch.compile of the VideoUNet: one graph per clip shape, the numerics of eager mode within float tolerance.

`compile_unet(unet)` compiles the module in place (`nn.Module.compile`), so everything that reads its weights
sees the plain module: `state_dict` keys keep their names (no `_orig_mod.` prefix), and checkpoints, exported
folders, LoRA injection and `save_temporal` work as without compiling. Nothing is traced until the first call;
that call compiles (seconds to minutes), and later calls at the same shapes reuse the graph.

What keeps the sampling loop on one graph (tests/test_compile.py counts the compiles):
  * the timestep is a tensor (`scheduler.timesteps[i]`, the trainer's sampled timesteps), a graph input rather
    than a constant, so a new step is not a new graph; every vidiff caller passes one;
  * shapes are static (`dynamic=False`): the frame count is fixed within a clip (temporal windows all have the
    window's length), and so are the batch (classifier-free guidance doubles it on every step) and the size.
    A new shape (inversion's unguided batch, a validation clip in training) compiles one more graph;
  * the attention backend is fixed before tracing: "auto" becomes "sdpa" (its choice among the kernels that
    trace; PyTorch's fused attention is what inductor lowers), since resolving it per call would probe CUDA and
    xformers inside the graph. xformers is refused with one line: its kernels are opaque to torch.compile.
The VideoUNet's forward traces without graph breaks in both temporal layouts, with cross-frame attention, per-frame
prompts (prompt travel) and ControlNet residuals.

References: Ansel et al. 2024 (PyTorch 2: TorchDynamo and TorchInductor).
"""
from __future__ import annotations

import os
import shutil
import sys
from importlib.util import find_spec

import torch

COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")  # torch.compile's


class CompileError(ValueError):
    """torch.compile cannot run the U-Net here (no C++ compiler for inductor on the CPU, no triton on CUDA, an
    attention backend that does not trace): one line naming the reason and the fix."""


def _cxx_candidates() -> list[str]:
    """The C++ compilers inductor looks for on the CPU: $CXX, else its configured names (g++)."""
    configured = [name for name in torch._inductor.config.cpp.cxx if name]
    return [os.environ["CXX"]] if os.environ.get("CXX") else configured


def compile_problem(device, attention_backend: str = "auto", backend="inductor") -> str | None:
    """Why torch.compile with `backend` cannot run a U-Net on `device` with `attention_backend`, or None.

    Checked before any model loads. A callable `backend` (a test's graph counter) skips the compiler checks."""
    device = torch.device(device)
    if not torch._dynamo.is_dynamo_supported():
        return (f"torch {torch.__version__} has no torch.compile for Python {sys.version.split()[0]}; run without "
                "--compile")
    if attention_backend == "xformers":
        return ("attention backend 'xformers' does not trace under torch.compile (its kernels are opaque to it); "
                "use 'sdpa' or 'auto', which picks SDPA for a compiled U-Net")
    if backend != "inductor":
        return None
    if device.type == "cpu":
        names = _cxx_candidates()
        if not any(shutil.which(name) for name in names):
            return (f"torch.compile's inductor builds C++ kernels on the CPU and finds no compiler "
                    f"({', '.join(names)}); install one (apt install g++) or set CXX")
    if device.type == "cuda" and find_spec("triton") is None:
        return "torch.compile's inductor needs triton on CUDA; pip install triton (it comes with CUDA torch wheels)"
    return None


def check_compile(device, attention_backend: str = "auto", backend="inductor", mode: str | None = None) -> None:
    """CompileError (one line) when `compile_problem` finds a reason, or `mode` is not one of COMPILE_MODES."""
    if mode is not None and mode not in COMPILE_MODES:
        raise CompileError(f"compile mode must be one of {', '.join(COMPILE_MODES)}, got {mode!r}")
    problem = compile_problem(device, attention_backend, backend)
    if problem is not None:
        raise CompileError(problem)


def compile_unet(unet, *, mode: str | None = None, backend="inductor", fullgraph: bool = False):
    """Compile the VideoUNet `unet` in place with torch.compile and return it (see the module docstring).

    mode: torch.compile's mode (None: "default"; "max-autotune" searches kernels longer for faster steps;
    "reduce-overhead" adds CUDA graphs, for inference only). backend: "inductor" (generated kernels), or any
    torch.compile backend ("aot_eager" traces without generating code: what the fast tests use).
    fullgraph: fail instead of splitting the graph where something does not trace.
    """
    check_compile(unet.device, unet.attention_backend, backend, mode)
    if unet.attention_backend == "auto":
        unet.set_attention_backend("sdpa")  # fixed before tracing (see the module docstring)
    options = {"mode": mode} if mode not in (None, "default") else {}
    unet.compile(backend=backend, fullgraph=fullgraph, dynamic=False, **options)
    return unet


def is_compiled(module) -> bool:
    """True when `module` was compiled in place (`compile_unet`, `nn.Module.compile`)."""
    return getattr(module, "_compiled_call_impl", None) is not None
