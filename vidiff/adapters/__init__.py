"""Adapters: LoRA on a VideoUNet with peft as the engine, and the key formats it is shared in.

Modules: `formats` (diffusers / peft, kohya / ComfyUI, AnimateDiff motion-LoRA keys <-> one `LoraWeights`),
`lora` (`LoraSettings`, `add_lora`, `load_lora`, `save_lora`, `fuse_lora`, several adapters with their scales),
`export` (`export_lora`: a trained pipeline's or a file's adapter in another format). Imports only vidiff.models,
vidiff.spec and vidiff.utils; pipelines and training import it.
"""
from __future__ import annotations

from vidiff.utils import lazy_exports

_LAZY = {name: "vidiff.adapters.lora" for name in (
    "LORA_NAME", "TARGETS", "LoraSettings", "add_lora", "adapter_names", "adapter_parameters", "adapter_settings",
    "fuse_lora", "has_lora", "load_lora", "lora_scales", "lora_state_dict", "save_lora", "set_lora_scales",
    "without_lora")}
_LAZY.update(FORMATS="vidiff.adapters.formats", export_lora="vidiff.adapters.export")

__all__ = list(_LAZY)

__getattr__ = lazy_exports(__name__, _LAZY)
