"""Training: one accelerate loop for every stage (`train`), the stages' inputs and objective, EMA.

    from vidiff.config import load_config
    from vidiff.training import train
    result = train(load_config("configs/train/finetune.yaml", ["data.manifest=clips/"]), resume="auto")
"""
from __future__ import annotations

from vidiff.utils import lazy_exports

_LAZY = {
    "train": "vidiff.training.trainer",
    "TrainResult": "vidiff.training.trainer",
    "TrainingError": "vidiff.training.trainer",
    "Stage": "vidiff.training.stages",
    "make_stage": "vidiff.training.stages",
    "EMA": "vidiff.training.ema",
}

__all__ = list(_LAZY)

__getattr__ = lazy_exports(__name__, _LAZY)
