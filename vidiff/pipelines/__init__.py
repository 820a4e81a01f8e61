"""Sampling pipelines: text-to-video (`VideoPipeline`), the cascade, editing; imported lazily."""
from __future__ import annotations

from vidiff.utils import lazy_exports

_LAZY = {
    "VideoPipeline": "vidiff.pipelines.text_to_video",
    "CascadePipeline": "vidiff.pipelines.cascade",
    "SCHEDULERS": "vidiff.pipelines.schedulers",
    "make_scheduler": "vidiff.pipelines.schedulers",
}

__all__ = list(_LAZY)

__getattr__ = lazy_exports(__name__, _LAZY)
