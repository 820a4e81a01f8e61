"""vidiff: video diffusion from Stable Diffusion.

Public API (imported lazily so `import vidiff` stays cheap):
    vidiff.VideoUNet       inflated pseudo-3D U-Net           (vidiff.models.unet)
    vidiff.VideoPipeline   text -> video sampling pipeline    (vidiff.pipelines.text_to_video)
    vidiff.CascadePipeline base -> interpolation / tsr / ssr  (vidiff.pipelines.cascade)
"""
from __future__ import annotations

from vidiff.utils import lazy_exports

__version__ = "0.1.0"

_LAZY = {
    "VideoUNet": "vidiff.models.unet",
    "VideoPipeline": "vidiff.pipelines.text_to_video",
    "CascadePipeline": "vidiff.pipelines.cascade",
}

__all__ = list(_LAZY) + ["__version__"]

__getattr__ = lazy_exports(__name__, _LAZY)
