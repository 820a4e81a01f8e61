"""Resumable checkpoints: find, save (atomically), prune, load.

    output_dir/checkpoints/checkpoint-00000500/   the run's state + trainer_state.json (written last)

A checkpoint folder is complete when it holds `trainer_state.json`: that file is written last, into a temporary
folder that is then renamed into place, so a crash or a full disk during a save never leaves a folder that looks
complete, and never touches the earlier checkpoints. The run's state (weights, optimiser, LR schedule, RNG
states, EMA) is written and read by `save_checkpoint` / `load_checkpoint` alone.
"""
from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path

from vidiff.config import Config
from vidiff.training import TrainingError
from vidiff.utils import write_json_atomic

CHECKPOINT_RE = re.compile(r"^checkpoint-(\d+)$")
STATE_FILE = "trainer_state.json"
# Config keys a run cannot change on resume: the optimiser and EMA state would not fit the new run.
FIXED_ON_RESUME = (("train", "stage"), ("train", "trainable"), ("train", "ema"))


def list_checkpoints(root) -> list[Path]:
    """Complete checkpoints (with trainer_state.json) under `root`, oldest first."""
    root = Path(root)
    if not root.is_dir():
        return []
    found = []
    for child in root.iterdir():
        match = CHECKPOINT_RE.match(child.name)
        if match and (child / STATE_FILE).is_file():
            found.append((int(match.group(1)), child))
    return [path for _, path in sorted(found)]


def find_resume_checkpoint(output_dir, resume: str | None) -> Path | None:
    """`--resume auto` -> the latest complete checkpoint (None when there is none); a path -> that one."""
    if not resume:
        return None
    if resume == "auto":
        found = list_checkpoints(Path(output_dir) / "checkpoints")
        return found[-1] if found else None
    path = Path(resume)
    if not (path / STATE_FILE).is_file():
        raise FileNotFoundError(f"--resume {resume}: not a complete checkpoint folder (no {STATE_FILE}); "
                                f"use --resume auto or a folder under {Path(output_dir) / 'checkpoints'}")
    return path


def read_trainer_state(checkpoint: Path, config: Config) -> dict:
    """The counters saved with `checkpoint` (step, samples seen, ...), after checking that `config` may
    continue it (same stage, trainable set and EMA switch)."""
    state = json.loads((checkpoint / STATE_FILE).read_text())
    saved = state.pop("config", {})
    for section, key in FIXED_ON_RESUME:
        before, now = saved.get(section, {}).get(key), getattr(getattr(config, section), key)
        if before is not None and before != now:
            raise ValueError(f"{section}.{key}={now!r} but {checkpoint} was trained with {before!r}: the optimiser "
                             f"and EMA state cannot carry over; set {section}.{key}={before!r} to resume, or use "
                             "a new output_dir")
    return state


def _track(accelerator, ema) -> None:
    """Make accelerate's save_state / load_state carry the EMA (once per accelerator)."""
    if ema is not None and not any(obj is ema for obj in accelerator._custom_objects):
        accelerator.register_for_checkpointing(ema)


def load_checkpoint(accelerator, checkpoint: Path, *, ema=None) -> None:
    """Restore the prepared model, optimiser, LR schedule, RNG states and `ema` from `checkpoint`."""
    _track(accelerator, ema)
    accelerator.load_state(str(checkpoint))


def prune_checkpoints(root: Path, keep: int) -> None:
    """Remove all but the last `keep` complete checkpoints under `root`."""
    for old in list_checkpoints(root)[:-keep]:
        shutil.rmtree(old, ignore_errors=True)


def save_checkpoint(accelerator, output_dir: Path, step: int, state: dict, keep: int, *, ema=None) -> Path:
    """Save the run into a temporary folder renamed into place, then prune to the last `keep`.

    `state` (JSON: step, samples seen, config, ...) becomes trainer_state.json. A failure (disk full) removes
    the temporary folder and leaves every earlier checkpoint as it was.
    """
    root = Path(output_dir) / "checkpoints"
    final = root / f"checkpoint-{step:08d}"
    tmp = root / f".checkpoint-{step:08d}.tmp"
    if (final / STATE_FILE).is_file():
        return final  # this step is already saved (e.g. the end of a run right after a periodic save)
    main = accelerator.is_main_process
    if main:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    accelerator.wait_for_everyone()
    try:
        _track(accelerator, ema)
        accelerator.save_state(str(tmp))
        if main:
            write_json_atomic(tmp / STATE_FILE, state)  # written last: marks the folder complete
        accelerator.wait_for_everyone()
        if main:
            shutil.rmtree(final, ignore_errors=True)
            os.replace(tmp, final)
            prune_checkpoints(root, keep)
    except Exception as e:
        if main:
            shutil.rmtree(tmp, ignore_errors=True)
        previous = list_checkpoints(root)
        kept = f"the previous checkpoint {previous[-1]} is intact" if previous else "no earlier checkpoint exists"
        raise TrainingError(f"saving the checkpoint for step {step} failed ({type(e).__name__}: {e}); {kept}") from e
    accelerator.wait_for_everyone()
    return final
