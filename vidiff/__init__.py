"""vidiff: video diffusion from Stable Diffusion.

Public API (imported lazily so `import vidiff` stays cheap):
    vidiff.VideoUNet       inflated pseudo-3D U-Net           (vidiff.models.unet)
    vidiff.VideoPipeline   text -> video sampling pipeline    (vidiff.pipelines.text_to_video)
"""
from __future__ import annotations

import importlib

__version__ = "0.1.0"

_LAZY = {
    "VideoUNet": "vidiff.models.unet",
    "VideoPipeline": "vidiff.pipelines.text_to_video",
}

__all__ = list(_LAZY) + ["__version__"]


def __getattr__(name):
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'vidiff' has no attribute {name!r}")
