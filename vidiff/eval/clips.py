"""The clips a metric reads: a folder of videos (a `vidiff generate` run, `vidiff data shapes`, anyone's), a manifest
(.csv / .jsonl / .json, as training reads), and their captions.

A caption comes from, first to last: a `--captions` file (JSON `{name: caption}` or a CSV with path and caption
columns; a name is the clip's file name, its stem, or its path relative to the folder), the clip's JSON sidecar
(`vidiff generate` writes `clip.json` with the prompt), a same-named `.txt` (`vidiff data shapes`), or the
manifest's caption column. A `generate` run's extras (`clip.gif` beside `clip.mp4`) are one clip: its sidecar lists
the main file first, and only that one is counted.

Everything is probed (readable, enough frames) before any model loads, so a bad clip is a one-line error naming it.
"""
from __future__ import annotations

import csv
import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from vidiff.data.datasets import load_manifest
from vidiff.data.video_io import VIDEO_SUFFIXES, VideoReadError, probe_video, read_video

MANIFEST_SUFFIXES = (".csv", ".jsonl", ".json")


@dataclass
class ClipEntry:
    path: Path
    caption: str | None  # None: no caption found
    num_frames: int = 0  # from the container header (probe_video)


def _sidecar(path: Path) -> dict:
    try:
        data = json.loads(path.with_suffix(".json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _is_extra(path: Path, sidecar: dict) -> bool:
    """A generate run's .gif beside its .mp4: the sidecar lists another file of the stem first."""
    files = sidecar.get("files")
    return isinstance(files, list) and bool(files) and isinstance(files[0], str) and files[0] != path.name \
        and (path.parent / files[0]).is_file() and Path(files[0]).suffix.lower() in VIDEO_SUFFIXES


def _folder_clips(folder: Path) -> list[ClipEntry]:
    files = sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in VIDEO_SUFFIXES
                   and not p.name.startswith("."))
    entries = []
    for path in files:
        sidecar = _sidecar(path)
        if _is_extra(path, sidecar):
            continue
        caption = sidecar.get("prompt") if isinstance(sidecar.get("prompt"), str) else None
        text_file = path.with_suffix(".txt")
        if caption is None and text_file.is_file():
            caption = text_file.read_text(encoding="utf-8", errors="replace").strip()
        entries.append(ClipEntry(path, caption))
    return entries


def find_clips(source: str | os.PathLike, flag: str = "--videos", max_clips: int | None = None) -> list[ClipEntry]:
    """The clips of a folder (searched recursively) or manifest, sorted by path (the first `max_clips`)."""
    source = Path(source)
    if not source.exists():
        raise FileNotFoundError(f"{flag} {source}: no such folder or manifest")
    if source.is_dir():
        entries = _folder_clips(source)
        if not entries:
            raise ValueError(f"{flag} {source} holds no videos ({', '.join(sorted(VIDEO_SUFFIXES))})")
    elif source.suffix.lower() in MANIFEST_SUFFIXES:
        entries = [ClipEntry(Path(e.path), e.caption or None) for e in load_manifest(source, image_ok=False)]
    elif source.suffix.lower() in VIDEO_SUFFIXES:
        entries = [ClipEntry(source, _sidecar(source).get("prompt"))]
    else:
        raise ValueError(f"{flag} {source}: expected a folder of videos or a .csv / .jsonl / .json manifest")
    if max_clips is not None:
        if max_clips < 1:
            raise ValueError(f"--max-clips must be >= 1, got {max_clips}")
        entries = entries[:max_clips]
    return entries


def read_captions(file: str | os.PathLike) -> dict[str, str]:
    """{name: caption} from a JSON object or a CSV with `path` and `caption` columns."""
    file = Path(file)
    if not file.is_file():
        raise FileNotFoundError(f"--captions {file}: no such file")
    try:
        text = file.read_text(encoding="utf-8-sig")
        if file.suffix.lower() == ".csv":
            rows = list(csv.DictReader(text.splitlines()))
            if rows and not {"path", "caption"} <= set(rows[0]):
                raise ValueError(f"needs columns path and caption, has {', '.join(rows[0])}")
            mapping = {row["path"]: row["caption"] for row in rows}
        else:
            mapping = json.loads(text)
    except (UnicodeDecodeError, json.JSONDecodeError, ValueError) as e:
        raise ValueError(f"--captions {file}: {e}; give a JSON object {{\"clip.mp4\": \"caption\"}} or a CSV with "
                         "path,caption columns") from None
    if not isinstance(mapping, dict) or not all(isinstance(v, str) for v in mapping.values()):
        raise ValueError(f"--captions {file}: must map clip names to caption strings")
    return mapping


def apply_captions(entries: list[ClipEntry], captions: dict[str, str], root: Path) -> None:
    """Captions by file name, stem or path relative to `root` (the --videos folder) override the found ones."""
    for entry in entries:
        relative = str(entry.path.relative_to(root)) if root.is_dir() and entry.path.is_relative_to(root) else None
        for key in (relative, entry.path.name, entry.path.stem, str(entry.path)):
            if key is not None and key in captions:
                entry.caption = captions[key]
                break


def check_captions(entries: list[ClipEntry], flag: str = "--videos") -> None:
    missing = [e for e in entries if not e.caption]
    if missing:
        raise ValueError(f"{flag}: {len(missing)} of {len(entries)} clips have no caption (first: {missing[0].path}); "
                         "give --captions FILE, or clips with a JSON sidecar (vidiff generate) or a .txt beside them")


def probe_clips(entries: list[ClipEntry], min_frames: int, why: str) -> None:
    """Every clip readable and at least `min_frames` long (`why` says who needs them), or a one-line error."""
    for entry in entries:
        try:
            entry.num_frames = probe_video(entry.path).num_frames
        except VideoReadError:
            raise
        except Exception as e:
            raise VideoReadError(entry.path, f"cannot read ({type(e).__name__}: {e})") from None
        if entry.num_frames < min_frames:
            raise VideoReadError(entry.path, f"has {entry.num_frames} frames; {why} needs at least {min_frames}")


def read_clip(entry: ClipEntry, num_frames: int | None = None) -> np.ndarray:
    """uint8 (f, h, w, 3): the first `num_frames` frames (all by default)."""
    return read_video(entry.path, num_frames=num_frames).frames
