"""The run folder (`output_dir`): when `vidiff train` may write into it at all.

A run writes config.json, train_log.csv, loss.png, logs/, checkpoints/, validation/, pipeline/ and
temporal.safetensors into output_dir, replacing earlier ones. So output_dir must be new, empty, or a folder an
earlier run marked as its own with `vidiff-run.json` (utils.check_replaceable, the one rule for every writer): a
user's `myproject/config.json` is never replaced. And a fresh run into a run folder that holds checkpoints must be
told what to do with them: continue (`--resume auto`) or start over (`--overwrite`, the old checkpoints are
removed first); else `--resume auto` would later mix the two runs.
"""
from __future__ import annotations

from pathlib import Path

from vidiff.utils import check_replaceable, write_json_atomic

MARKER = "vidiff-run.json"


def is_run_folder(path) -> bool:
    return (Path(path) / MARKER).is_file()


def check_output_dir(output_dir, *, resume: str | None, overwrite: bool, checkpoints: list[Path]) -> None:
    """Raise FileExistsError (one line naming the folder and the fix) unless a run may write into `output_dir`.
    `checkpoints`: the complete checkpoints found under output_dir/checkpoints."""
    output_dir = Path(output_dir)
    check_replaceable(output_dir, is_run_folder, f"a vidiff run folder (with {MARKER})",
                      "train writes config.json, train_log.csv, loss.png and checkpoints/ there; set output_dir to a "
                      "new or empty folder")
    if checkpoints and not resume and not overwrite:
        raise FileExistsError(f"output_dir {output_dir} holds checkpoints of an earlier run (latest "
                              f"{checkpoints[-1].name}): continue it with --resume auto, or start over with "
                              "--overwrite (removes them), or set another output_dir")


def mark_run_folder(output_dir) -> None:
    """Create output_dir (if needed) and claim it for vidiff runs (main process, after check_output_dir)."""
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    if not is_run_folder(output_dir):
        write_json_atomic(output_dir / MARKER, {"format": "vidiff training run", "version": 1})
