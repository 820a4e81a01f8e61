"""Helpers shared by the `vidiff` subcommands: the one-line user error, and where `vidiff generate` puts its files.

One video goes to `--out` as given (`clip.mp4`); several go to numbered names beside it (`clip-000.mp4`,
`clip-001.mp4`, ... in prompt-major order). Each main output gets a sidecar `clip.json` (or `clip-000.json`) and,
on request, extra formats with the same stem: `clip.gif`, `clip.png` (contact sheet), `clip_frames/` (PNGs).
Torch-free: the CLI checks names before it loads a model.
"""
from __future__ import annotations

import os
import re
from pathlib import Path

from vidiff.utils import write_json_atomic


class CLIError(Exception):
    """A user error: printed as one line, exit status 2."""


def check_device(device: str | None) -> str | None:
    """`--device` (None = the best available) checked by `vidiff.utils.check_device` (the one device check),
    its message naming the flag; CLIError otherwise."""
    if device is None:
        return None
    from vidiff.utils import check_device as check

    try:
        check(device)
    except ValueError as e:
        raise CLIError(re.sub(r"\bdevice\b", "--device", str(e), count=1)) from None
    return device


def check_output_path(out: str | os.PathLike, count: int = 1, *, gif: bool = False, frames_dir: bool = False,
                      contact_sheet: bool = False) -> Path:
    """Validate `--out` and every file `write_outputs` will write for `count` videos with these extras (a known
    video suffix; nothing that would replace a folder, or a folder of other files; no file where a parent folder
    should be), so a bad name fails before the model loads. Returns `out`."""
    from vidiff.data.video_io import check_write_target, video_format

    if str(out) in ("", "."):
        raise ValueError(f"--out {str(out)!r} is empty; give a file name such as clip.mp4")
    out = Path(out)
    kind = video_format(out)  # ValueError for unknown suffixes
    if kind != "frames" and out.is_dir():
        raise ValueError(f"--out {str(out)!r} is an existing folder; give a file name such as clip.mp4")
    if out.suffix.lower() == ".json":
        raise ValueError(f"--out {str(out)!r}: .json is the sidecar's suffix; give a video name such as clip.mp4")
    for path in numbered_paths(out, count):
        for target, target_kind in _targets(path, gif, frames_dir, contact_sheet):
            try:
                check_write_target(target, target_kind)
            except ValueError as e:
                raise ValueError(f"--out: {e}") from None
        sidecar = _sidecar_path(path)
        if sidecar.is_dir():
            raise ValueError(f"--out: the sidecar {sidecar} would replace a folder; choose another --out")
    return out


def numbered_paths(out: str | os.PathLike, count: int) -> list[Path]:
    """`clip.mp4` for one video; `clip-000.mp4`, `clip-001.mp4`, ... for several."""
    out = Path(out)
    if count == 1:
        return [out]
    digits = max(3, len(str(count - 1)))
    return [out.with_name(f"{out.stem}-{i:0{digits}d}{out.suffix}") for i in range(count)]


def write_outputs(path: Path, frames, fps: float, sidecar: dict, *, gif: bool = False, frames_dir: bool = False,
                  contact_sheet: bool = False) -> list[Path]:
    """Write one clip to `path` (format from its suffix), the requested extras and its sidecar; returns the paths."""
    from vidiff.data.video_io import write_video

    written = [write_video(target, frames, fps=fps, format=kind)
               for target, kind in _targets(path, gif, frames_dir, contact_sheet)]
    sidecar_path = _sidecar_path(path)
    write_json_atomic(sidecar_path, dict(sidecar, files=[str(p.name) for p in written]))
    return written + [sidecar_path]


def _targets(path: Path, gif: bool, frames_dir: bool, contact_sheet: bool) -> list[tuple[Path, str]]:
    """(path, format) of the main output and the requested extras."""
    from vidiff.data.video_io import video_format

    main_kind = video_format(path)
    targets = [(path, main_kind)]
    if gif and main_kind != "gif":
        targets.append((path.with_suffix(".gif"), "gif"))
    if contact_sheet and main_kind != "contact-sheet":
        targets.append((path.with_suffix(".png"), "contact-sheet"))
    if frames_dir and main_kind != "frames":
        targets.append((path.with_name(f"{path.stem}_frames"), "frames"))
    return targets


def _sidecar_path(path: Path) -> Path:
    return path.with_suffix(".json") if path.suffix else path.with_name(path.name + ".json")
