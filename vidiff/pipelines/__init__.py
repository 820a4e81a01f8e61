"""Sampling pipelines. Imported lazily: `vidiff.pipelines.folder` and `.schedulers` stay torch-free for the CLI."""
from __future__ import annotations

from vidiff.utils import lazy_exports

_LAZY = {
    "VideoPipeline": "vidiff.pipelines.text_to_video",
    "CascadePipeline": "vidiff.pipelines.cascade",
    "inflate_pipeline": "vidiff.pipelines.folder",
    "inflate_stage": "vidiff.pipelines.stage_folder",
    "read_info": "vidiff.pipelines.folder",
    "write_pipeline_folder": "vidiff.pipelines.folder",
    "SCHEDULERS": "vidiff.pipelines.schedulers",
    "make_scheduler": "vidiff.pipelines.schedulers",
}

__all__ = list(_LAZY)

__getattr__ = lazy_exports(__name__, _LAZY)
