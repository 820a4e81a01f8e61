"""Training: one accelerate loop for every stage (`train`), the stages' inputs and objective, EMA.

    from vidiff.config import load_config
    from vidiff.training import train
    result = train(load_config("configs/train/finetune.yaml", ["data.manifest=clips/"]), resume="auto")
"""
from __future__ import annotations

import importlib

_LAZY = {
    "train": "vidiff.training.trainer",
    "TrainResult": "vidiff.training.trainer",
    "TrainingError": "vidiff.training.trainer",
    "Stage": "vidiff.training.stages",
    "make_stage": "vidiff.training.stages",
    "EMA": "vidiff.training.ema",
}

__all__ = list(_LAZY)


def __getattr__(name):
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'vidiff.training' has no attribute {name!r}")
