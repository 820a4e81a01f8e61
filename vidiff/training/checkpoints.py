"""Resumable checkpoints: find, save (atomically), prune, load.

    output_dir/checkpoints/checkpoint-00000500/   the run's state (training/state.py) + trainer_state.json (last)

A checkpoint folder is complete when it holds `trainer_state.json`: that file is written last, into a temporary
folder that is then renamed into place, so a crash or a full disk during a save never leaves a folder that looks
complete, and never touches the earlier checkpoints. Removing one (pruning, replacing a checkpoint of the same
step, --overwrite) first renames it to a hidden `.checkpoint-N.trash` name, so a kill halfway through a delete
leaves no half-deleted folder under a checkpoint's name; `clean_stale` removes such leftovers when the next run
starts. The run's state is written and read by training/state.py as safetensors and JSON only: nothing in a
checkpoint is unpickled.
"""
from __future__ import annotations

import dataclasses
import os
import re
import shutil
from pathlib import Path

from vidiff.config import Config
from vidiff.training import TrainingError
from vidiff.training.state import (CorruptCheckpointError, check_checkpoint, load_training_state, read_json,
                                   save_training_state)
from vidiff.utils import write_json_atomic

CHECKPOINT_RE = re.compile(r"^checkpoint-(\d+)$")
LEFTOVER_RE = re.compile(r"^\.checkpoint-\d+\.(tmp|trash)$")   # a save or a removal that was killed
STATE_FILE = "trainer_state.json"
# Config keys a run cannot change on resume: the optimiser and EMA state would not fit the new run.
FIXED_ON_RESUME = (("train", "stage"), ("train", "trainable"), ("train", "ema"), ("train", "lora"),
                   ("distill", "method"), ("distill", "guidance"))


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


def find_resume_checkpoint(output_dir, resume: str | None, say=print) -> Path | None:
    """`--resume auto` -> the latest intact checkpoint (None when there is none); a path -> that one.

    Every file of the checkpoint is validated first (training/state.check_checkpoint). Under `auto` a damaged
    latest checkpoint (truncated by a full disk, ...) is reported and the previous one tried; a pickle or an
    unknown file is never skipped over: it raises, naming the file.
    """
    if not resume:
        return None
    root = Path(output_dir) / "checkpoints"
    if resume != "auto":
        path = Path(resume)
        if not (path / STATE_FILE).is_file():
            raise FileNotFoundError(f"--resume {resume}: not a complete checkpoint folder (no {STATE_FILE}); "
                                    f"use --resume auto or a folder under {root}")
        check_checkpoint(path)
        return path
    damaged = []
    for candidate in reversed(list_checkpoints(root)):
        try:
            check_checkpoint(candidate)
        except CorruptCheckpointError as e:
            say(f"--resume auto: {candidate.name} is damaged ({e}); trying the checkpoint before it")
            damaged.append(e)
            continue
        if damaged:
            say(f"--resume auto: resuming from {candidate.name}, the latest intact checkpoint")
        return candidate
    if damaged:
        raise ValueError(f"--resume auto: every checkpoint under {root} is damaged (latest: {damaged[0]}); start "
                         "over with --overwrite")
    return None


def read_trainer_state(checkpoint: Path, config: Config) -> dict:
    """The counters saved with `checkpoint` (step, samples seen, ...), after checking that `config` may
    continue it (same stage, trainable set, EMA switch and, for LoRA runs, adapter settings)."""
    state = read_json(checkpoint / STATE_FILE)
    saved = state.pop("config", {})
    for section, key in FIXED_ON_RESUME:
        if key == "lora" and config.train.trainable != "lora":
            continue  # (the adapter's settings matter to LoRA runs only)
        before, now = saved.get(section, {}).get(key), getattr(getattr(config, section), key)
        now = dataclasses.asdict(now) if dataclasses.is_dataclass(now) else now
        if before is not None and before != now:
            raise ValueError(f"{section}.{key}={now!r} but {checkpoint} was trained with {before!r}: the optimiser "
                             f"and EMA state cannot carry over; set {section}.{key}={before!r} to resume, or use "
                             "a new output_dir")
    return state


def load_checkpoint(accelerator, checkpoint: Path, *, model, optimizer, lr_scheduler, ema=None) -> None:
    """Restore the prepared model, optimiser, LR schedule, RNG states and `ema` from `checkpoint`."""
    load_training_state(checkpoint, model=model, optimizer=optimizer, lr_scheduler=lr_scheduler, ema=ema,
                        accelerator=accelerator)


def remove_checkpoint(path: Path) -> None:
    """Rename to a hidden trash name, then delete: a kill midway leaves only a name that clean_stale removes."""
    trash = path.parent / f".{path.name}.trash"
    shutil.rmtree(trash, ignore_errors=True)
    os.replace(path, trash)
    shutil.rmtree(trash, ignore_errors=True)


def clean_stale(root) -> list[Path]:
    """Remove what killed saves and removals left under `root` (hidden .tmp / .trash folders, checkpoint folders
    without trainer_state.json); a complete .tmp folder whose checkpoint name is free is renamed into place.
    Main process, at the start of a run, before any save. Returns the folders removed."""
    root = Path(root)
    removed = []
    for child in sorted(root.iterdir()) if root.is_dir() else []:
        final = root / child.name[1:].removesuffix(".tmp")
        if child.name.endswith(".tmp") and (child / STATE_FILE).is_file() and not final.exists():
            os.replace(child, final)  # complete (marked last) but killed before its rename: keep it
            continue
        incomplete = CHECKPOINT_RE.match(child.name) and not (child / STATE_FILE).is_file()
        if child.is_dir() and not child.is_symlink() and (LEFTOVER_RE.match(child.name) or incomplete):
            shutil.rmtree(child, ignore_errors=True)
            removed.append(child)
    return removed


def prune_checkpoints(root: Path, keep: int) -> None:
    """Remove all but the last `keep` complete checkpoints under `root`."""
    for old in list_checkpoints(root)[:-keep]:
        remove_checkpoint(old)


def save_checkpoint(accelerator, output_dir: Path, step: int, state: dict, keep: int, *, model, optimizer,
                    lr_scheduler, ema=None, discard: tuple = ()) -> Path:
    """Save the run into a temporary folder renamed into place, then prune to the last `keep`.

    `state` (JSON: step, samples seen, config, ...) becomes trainer_state.json. An existing checkpoint of the
    same step is replaced (it may be another run's, or another branch's). `discard`: checkpoints of an earlier
    run to remove once this one is in place (--overwrite). A failure (disk full) removes the temporary folder
    and leaves every earlier checkpoint as it was.
    """
    root = Path(output_dir) / "checkpoints"
    final = root / f"checkpoint-{step:08d}"
    tmp = root / f".checkpoint-{step:08d}.tmp"
    main = accelerator.is_main_process
    if main:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    accelerator.wait_for_everyone()
    try:
        save_training_state(tmp, model=model, optimizer=optimizer, lr_scheduler=lr_scheduler, ema=ema,
                            accelerator=accelerator)
        accelerator.wait_for_everyone()  # every rank's random states are in before the folder is marked complete
        if main:
            write_json_atomic(tmp / STATE_FILE, state)  # written last: marks the folder complete
        accelerator.wait_for_everyone()
        if main:
            if final.exists():
                remove_checkpoint(final)
            os.replace(tmp, final)
            for old in discard:
                if old != final and old.exists():
                    remove_checkpoint(old)
            prune_checkpoints(root, keep)
    except Exception as e:
        if main:
            shutil.rmtree(tmp, ignore_errors=True)
        previous = list_checkpoints(root)
        kept = f"the previous checkpoint {previous[-1]} is intact" if previous else "no earlier checkpoint exists"
        raise TrainingError(f"saving the checkpoint for step {step} failed ({type(e).__name__}: {e}); {kept}") from e
    accelerator.wait_for_everyone()
    return final
