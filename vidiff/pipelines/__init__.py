"""Sampling pipelines. Imported lazily: `vidiff.pipelines.folder` and `.schedulers` stay torch-free for the CLI."""
from __future__ import annotations

import importlib

_LAZY = {
    "VideoPipeline": "vidiff.pipelines.text_to_video",
    "inflate_pipeline": "vidiff.pipelines.folder",
    "read_info": "vidiff.pipelines.folder",
    "write_pipeline_folder": "vidiff.pipelines.folder",
    "SCHEDULERS": "vidiff.pipelines.schedulers",
    "make_scheduler": "vidiff.pipelines.schedulers",
}

__all__ = list(_LAZY)


def __getattr__(name):
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'vidiff.pipelines' has no attribute {name!r}")
