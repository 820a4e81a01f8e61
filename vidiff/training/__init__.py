"""Training: one accelerate loop for every stage (`train`), `fit` for one-off tuning, Tune-A-Video, EMA.

Modules: `trainer` (the loop: `train`, and `fit` / `training_step` for callers without a config file),
`preflight` (every check before a model is loaded), `data` (seeded sample stream, collation, batch encoding),
`checkpoints` (save / find / load / prune) over `state` (the pickle-free training state), `run_folder` (when
output_dir may be written), `logs` (CSV, loss plot, TensorBoard, validation clips), `ema`, `tune` (Tune-A-Video's
one-shot tuning). What each stage feeds the U-Net is vidiff.stages.

    from vidiff.config import load_config
    from vidiff.training import train
    result = train(load_config("configs/train/finetune.yaml", ["data.manifest=clips/"]), resume="auto")
"""
from __future__ import annotations

from vidiff.utils import lazy_exports


class TrainingError(RuntimeError):
    """The run cannot continue (too many non-finite losses, a failed checkpoint save)."""


_LAZY = {
    "train": "vidiff.training.trainer",
    "fit": "vidiff.training.trainer",
    "training_step": "vidiff.training.trainer",
    "TrainResult": "vidiff.training.trainer",
    "tune_and_edit": "vidiff.training.tune",
    "EMA": "vidiff.training.ema",
}

__all__ = ["TrainingError", *_LAZY]

__getattr__ = lazy_exports(__name__, _LAZY)
