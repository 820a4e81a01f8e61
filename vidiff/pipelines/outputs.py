"""Where `vidiff generate` puts its files, and the JSON sidecar that says how each clip was made.

One video goes to `--out` as given (`clip.mp4`); several go to numbered names beside it (`clip-000.mp4`,
`clip-001.mp4`, ... in prompt-major order). Each main output gets a sidecar `clip.json` (or `clip-000.json`) and,
on request, extra formats with the same stem: `clip.gif`, `clip.png` (contact sheet), `clip_frames/` (PNGs).
Torch-free: the CLI checks names before it loads a model.
"""
from __future__ import annotations

import os
from pathlib import Path

from vidiff.utils import write_json_atomic


def check_output_path(out: str | os.PathLike) -> Path:
    """Validate `--out` (a known video suffix, not an existing folder for a file format); returns it."""
    from vidiff.data.video_io import video_format

    out = Path(out)
    kind = video_format(out)  # ValueError for unknown suffixes
    if kind != "frames" and out.is_dir():
        raise ValueError(f"--out {str(out)!r} is an existing folder; give a file name such as clip.mp4")
    if out.suffix.lower() == ".json":
        raise ValueError(f"--out {str(out)!r}: .json is the sidecar's suffix; give a video name such as clip.mp4")
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
    from vidiff.data.video_io import video_format, write_video

    main_kind = video_format(path)
    targets = [(path, main_kind)]
    if gif and main_kind != "gif":
        targets.append((path.with_suffix(".gif"), "gif"))
    if contact_sheet and main_kind != "contact-sheet":
        targets.append((path.with_suffix(".png"), "contact-sheet"))
    if frames_dir and main_kind != "frames":
        targets.append((path.with_name(f"{path.stem}_frames"), "frames"))
    written = [write_video(target, frames, fps=fps, format=kind) for target, kind in targets]
    sidecar_path = path.with_suffix(".json") if path.suffix else path.with_name(path.name + ".json")
    write_json_atomic(sidecar_path, dict(sidecar, files=[str(p.name) for p in written]))
    return written + [sidecar_path]
