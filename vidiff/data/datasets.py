"""Training datasets: manifests of (video or image, caption), clip sampling, transforms, bad-file handling.

A sample is `{"pixel_values": (c, f, h, w) float in [-1, 1], "prompt": str, "path": str, "num_skipped": int,
"skipped_paths": list[str], "is_image": bool}`. `num_skipped` counts the bad files met (and replaced) while
producing that sample and `skipped_paths` names them, so the trainer can report both how often bad files came up
and how many distinct ones there are, whatever the number of workers and processes.

Manifests:
  - a folder of videos (and images), each with a same-named `.txt` caption (searched recursively);
  - a `.csv`, `.jsonl` or `.json` (a list of objects) with path and caption columns; relative paths are relative
    to the manifest's folder (or `root=`); WebVid's `videoid,name,page_dir` layout works with
    `path_template="{page_dir}/{videoid}.mp4", caption_column="name"`;
  - a single video or image file with `prompt=` (one-shot tuning; `repeat=` makes an epoch longer).

Randomness (clip start, crop, flip, replacement of bad files) comes from a generator seeded by
(seed, epoch, index), so a sample is the same in any worker or process and after a resume; call `set_epoch`.
"""
from __future__ import annotations

import contextlib
import csv
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from vidiff.data.video_io import (BACKENDS, IMAGE_SUFFIXES, VIDEO_SUFFIXES, VideoReadError, clip_indices, clip_span,
                                  frame_step, probe_video, read_frames, read_image)

logger = logging.getLogger("vidiff.data")

# How many random replacements to try for a bad sample before walking the manifest in order.
_RANDOM_TRIES = 32


@dataclass
class Entry:
    path: str
    caption: str


# ---------------------------------------------------------------------------------------------------------------
# Manifests
# ---------------------------------------------------------------------------------------------------------------
def _is_media(path: Path, image_ok: bool) -> bool:
    suffix = path.suffix.lower()
    return suffix in VIDEO_SUFFIXES or (image_ok and suffix in IMAGE_SUFFIXES)


def _folder_entries(folder: Path, image_ok: bool, prompt: str | None) -> list[Entry]:
    files = sorted(p for p in folder.rglob("*") if p.is_file() and _is_media(p, image_ok)
                   and not p.name.startswith("."))
    if not files:
        kinds = "videos or images" if image_ok else "videos"
        raise ValueError(f"manifest folder {folder} holds no {kinds} ({', '.join(sorted(VIDEO_SUFFIXES))}"
                         f"{', ' + ', '.join(sorted(IMAGE_SUFFIXES)) if image_ok else ''})")
    entries, uncaptioned = [], 0
    for path in files:
        text_file = path.with_suffix(".txt")
        if text_file.exists():
            text = text_file.read_text(encoding="utf-8", errors="replace").strip()
        else:
            text, uncaptioned = (prompt or ""), uncaptioned + 1
        entries.append(Entry(str(path), text))
    if uncaptioned and prompt is None:
        logger.warning(f"{uncaptioned} of {len(files)} files in {folder} have no same-named .txt caption; "
                       f"they get an empty prompt")
    return entries


def _table_rows(path: Path) -> list[dict]:
    suffix = path.suffix.lower()
    text = path.read_text(encoding="utf-8-sig")
    if suffix == ".csv":
        return list(csv.DictReader(text.splitlines()))
    if suffix == ".jsonl":
        rows = []
        for number, line in enumerate(text.splitlines(), 1):
            if line.strip():
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError as e:
                    raise ValueError(f"{path}:{number}: not valid JSON ({e.msg})") from None
        return rows
    rows = json.loads(text)
    if not isinstance(rows, list):
        raise ValueError(f"{path}: a .json manifest must be a list of objects")
    return rows


def _table_entries(path: Path, root: Path, path_column: str, caption_column: str, path_template: str | None,
                   prompt: str | None) -> list[Entry]:
    rows = _table_rows(path)
    if not rows:
        raise ValueError(f"manifest {path} has no rows")
    columns = list(rows[0])
    if prompt is None and caption_column not in columns:
        raise ValueError(f"manifest {path} has no caption column {caption_column!r} (columns: {', '.join(columns)});"
                         f" set caption_column=")
    if path_template is None and path_column not in columns:
        raise ValueError(f"manifest {path} has no path column {path_column!r} (columns: {', '.join(columns)}); "
                         f"set path_column= or path_template= (e.g. '{{page_dir}}/{{videoid}}.mp4' for WebVid)")
    entries = []
    for number, row in enumerate(rows, 1):
        try:
            name = path_template.format(**row) if path_template else row[path_column]
        except KeyError as e:
            raise ValueError(f"manifest {path} row {number}: path_template {path_template!r} needs column {e}, "
                             f"columns are {', '.join(row)}") from None
        file = Path(str(name))
        entries.append(Entry(str(file if file.is_absolute() else root / file),
                             prompt if prompt is not None else str(row.get(caption_column) or "")))
    return entries


def load_manifest(manifest: str | os.PathLike, path_column: str = "path", caption_column: str = "caption",
                  path_template: str | None = None, root: str | os.PathLike | None = None,
                  prompt: str | None = None, image_ok: bool = True) -> list[Entry]:
    """The (path, caption) entries of a folder, a .csv / .jsonl / .json table, or a single media file."""
    manifest = Path(manifest)
    if not manifest.exists():
        raise FileNotFoundError(f"manifest {manifest} does not exist; give a folder of videos, a .csv / .jsonl "
                                f"manifest or a video file")
    if manifest.is_dir():
        return _folder_entries(manifest, image_ok, prompt)
    suffix = manifest.suffix.lower()
    if suffix in {".csv", ".jsonl", ".json"}:
        return _table_entries(manifest, Path(root) if root else manifest.parent, path_column, caption_column,
                              path_template, prompt)
    if _is_media(manifest, image_ok):
        if prompt is None:
            text_file = manifest.with_suffix(".txt")
            if not text_file.exists():
                raise ValueError(f"a single-video manifest needs a prompt: pass prompt= (or --prompt), or put the "
                                 f"caption in {text_file}")
            prompt = text_file.read_text(encoding="utf-8").strip()
        return [Entry(str(manifest), prompt)]
    raise ValueError(f"cannot use {manifest} as a manifest: expected a folder, a .csv / .jsonl / .json file or a "
                     f"video ({', '.join(sorted(VIDEO_SUFFIXES))})")


# ---------------------------------------------------------------------------------------------------------------
# Transforms
# ---------------------------------------------------------------------------------------------------------------
def cover_size(height: int, width: int, target_h: int, target_w: int) -> tuple[int, int]:
    """Resize keeping the aspect so that (target_h, target_w) fits inside: the shorter side (relative to the
    target's aspect) becomes the target's."""
    scale = max(target_h / height, target_w / width)
    return max(target_h, round(height * scale)), max(target_w, round(width * scale))


def crop_offsets(height: int, width: int, target_h: int, target_w: int,
                 rng: np.random.Generator | None) -> tuple[int, int]:
    """Top-left corner of a random (rng given) or centred crop."""
    if rng is None:
        return (height - target_h) // 2, (width - target_w) // 2
    return int(rng.integers(0, height - target_h + 1)), int(rng.integers(0, width - target_w + 1))


def to_tensor(frames: np.ndarray) -> torch.Tensor:
    """uint8 (f, h, w, 3) -> float (c, f, h, w) in [-1, 1]."""
    video = torch.from_numpy(np.ascontiguousarray(frames)).permute(3, 0, 1, 2)  # c f h w
    return video.float() / 127.5 - 1.0


# ---------------------------------------------------------------------------------------------------------------
# Dataset
# ---------------------------------------------------------------------------------------------------------------
class VideoDataset(torch.utils.data.Dataset):
    """Clips of `num_frames` frames at `stride` (or a target `fps`), resized (shorter side) and cropped to
    (height, width), as `(c, f, h, w)` tensors in [-1, 1].

    train=True: random clip start, random crop, horizontal flip with probability 0.5 when flip=True.
    train=False: centred clip and crop, no flip (evaluation, caching).
    Images (image_ok=True) load as one frame: f=1 by default (image_as_video=False; keep them in their own
    batches, as joint image-video training does) or repeated to num_frames (image_as_video=True).
    Bad files (missing, empty, truncated, undecodable, too short for the clip) are logged once per process as one
    line, counted in the sample's `num_skipped` and `bad_files`, and replaced by another sample chosen
    deterministically. If every file is bad, access raises ValueError instead of looping.
    """

    def __init__(self, manifest: str | os.PathLike, num_frames: int = 16, height: int = 256, width: int = 256,
                 stride: int | None = 1, fps: float | None = None, train: bool = True, flip: bool = False,
                 caption_column: str = "caption", path_column: str = "path", path_template: str | None = None,
                 image_ok: bool = True, seed: int = 0, image_as_video: bool = False, prompt: str | None = None,
                 root: str | os.PathLike | None = None, backend: str = "auto", repeat: int = 1,
                 check_files: bool = True, entries: list[Entry] | None = None):
        if num_frames < 1:
            raise ValueError(f"num_frames must be >= 1, got {num_frames}")
        if height < 1 or width < 1:
            raise ValueError(f"height and width must be >= 1, got {height}x{width}")
        if fps is not None:
            stride = None  # a target fps replaces the frame stride
            frame_step(None, fps, 1.0)  # validates fps
        else:
            frame_step(stride, None, None)  # validates stride
        if backend not in BACKENDS:
            raise ValueError(f"unknown video backend {backend!r}; use one of {', '.join(BACKENDS)}")
        if repeat < 1:
            raise ValueError(f"repeat must be >= 1, got {repeat}")
        self.num_frames, self.height, self.width = num_frames, height, width
        self.stride, self.fps = stride, fps
        self.train, self.flip = train, flip
        self.image_ok, self.image_as_video = image_ok, image_as_video
        self.seed, self.backend, self.repeat = seed, backend, repeat
        self.epoch = 0
        # `entries` given: a dataset whose files are not plain paths (vidiff.data.shards); `manifest` names it
        self.entries = entries if entries is not None else load_manifest(
            manifest, path_column=path_column, caption_column=caption_column, path_template=path_template,
            root=root, prompt=prompt, image_ok=image_ok)
        self.bad_files: dict[str, str] = {}  # path -> reason, in this process
        if check_files and entries is None:
            usable = [e for e in self.entries if os.path.isfile(e.path) and os.path.getsize(e.path) > 0]
            if not usable:
                raise ValueError(f"none of the {len(self.entries)} files in manifest {manifest} exists or is "
                                 f"non-empty (first: {self.entries[0].path}); check the paths / root=")

    def __len__(self) -> int:
        return len(self.entries) * self.repeat

    def set_epoch(self, epoch: int) -> None:
        """Reseed clip starts, crops and flips for a new epoch (workers see it when they are re-created)."""
        self.epoch = int(epoch)

    def _rng(self, index: int, attempt: int = 0) -> np.random.Generator:
        return np.random.default_rng([self.seed, self.epoch, index, attempt])

    # -- loading one file -----------------------------------------------------------------------------------------
    def _load_image(self, path: Path, rng: np.random.Generator | None) -> np.ndarray:
        if not self.image_ok:
            raise VideoReadError(path, "is an image and image_ok=False")
        frames = read_image(path, size=lambda h, w: cover_size(h, w, self.height, self.width))
        if self.image_as_video:
            frames = np.repeat(frames, self.num_frames, axis=0)
        return frames

    def _load_video(self, path: Path, rng: np.random.Generator | None) -> np.ndarray:
        info = probe_video(path)
        if self.fps and not info.fps:
            raise VideoReadError(path, f"unknown frame rate, cannot sample at fps={self.fps}")
        step = frame_step(self.stride, self.fps, info.fps if self.fps else None)
        span = clip_span(self.num_frames, step)
        if span > info.num_frames:
            raise VideoReadError(path, f"too short: {self.num_frames} frames at a step of {step:g} need {span} "
                                       f"frames, the video has {info.num_frames}")
        free = info.num_frames - span
        start = int(rng.integers(0, free + 1)) if rng is not None else free // 2
        indices = clip_indices(info.num_frames, self.num_frames, self.stride, self.fps, info.fps, start)
        size = cover_size(info.height, info.width, self.height, self.width)
        return read_frames(path, info, indices=indices, size=size, backend=self.backend).frames

    def local_file(self, file_index: int):
        """A context manager giving entry `file_index` as a file the decoders can open: here its own path
        (vidiff.data.shards overrides it to hand out a tar member)."""
        return contextlib.nullcontext(Path(self.entries[file_index].path))

    def clip_size(self, file_index: int) -> tuple[int, int, int, float]:
        """Entry `file_index` as stored: (num_frames, height, width, fps) from its header; VideoReadError if bad."""
        with self.local_file(file_index) as path:
            info = probe_video(path)
        return info.num_frames, info.height, info.width, info.fps

    def load(self, index: int) -> dict:
        """Sample `index` with no bad-file handling: raises VideoReadError for a bad file."""
        entry = self.entries[index % len(self.entries)]
        rng = self._rng(index) if self.train else None
        with self.local_file(index % len(self.entries)) as path:
            is_image = path.suffix.lower() in IMAGE_SUFFIXES
            frames = self._load_image(path, rng) if is_image else self._load_video(path, rng)
        top, left = crop_offsets(frames.shape[1], frames.shape[2], self.height, self.width, rng)
        frames = frames[:, top:top + self.height, left:left + self.width]
        if self.flip and rng is not None and rng.random() < 0.5:
            frames = frames[:, :, ::-1]
        return {"pixel_values": to_tensor(frames), "prompt": entry.caption, "path": entry.path,
                "is_image": is_image}

    # -- bad-file handling ----------------------------------------------------------------------------------------
    def _mark_bad(self, path: str, reason: str) -> None:
        if path not in self.bad_files:
            reason = " ".join(reason.split())  # one line, whatever FFmpeg said
            self.bad_files[path] = reason
            logger.warning(f"skipping bad sample {path}: {reason}")

    def _all_candidates(self, index: int):
        """The sample itself, then replacements: seeded random picks, then every index in order (so it ends)."""
        yield index
        n = len(self)
        rng = self._rng(index, attempt=1)
        for _ in range(min(_RANDOM_TRIES, n - 1)):
            yield int(rng.integers(n))
        for offset in range(1, n):
            yield (index + offset) % n

    def __getitem__(self, index: int) -> dict:
        if not 0 <= index < len(self):
            raise IndexError(f"index {index} out of range for a dataset of {len(self)}")
        skipped: list[str] = []  # the bad files passed over for this sample, one entry per encounter
        tried: set[int] = set()
        for candidate in self._all_candidates(index):
            file_index = candidate % len(self.entries)
            if file_index in tried:
                continue
            tried.add(file_index)
            path = self.entries[file_index].path
            if path in self.bad_files:
                skipped.append(path)
                continue
            try:
                sample = self.load(candidate)
            except (VideoReadError, OSError) as e:
                reason = e.reason if isinstance(e, VideoReadError) else f"{type(e).__name__}: {e}"
                self._mark_bad(path, reason)
                skipped.append(path)
                continue
            # Encounters and paths both: the trainer reports distinct bad files and how often they came up.
            sample["num_skipped"], sample["skipped_paths"] = len(skipped), skipped
            return sample
        first = next(iter(self.bad_files.items()), ("?", "?"))
        raise ValueError(f"all {len(self.entries)} files of the manifest are unreadable or too short for "
                         f"{self.num_frames} frames at stride {self.stride} / fps {self.fps} (e.g. {first[0]}: "
                         f"{first[1]})")


def collate(samples: list[dict]) -> dict:
    """Stack samples into a batch: pixel_values (b, c, f, h, w), prompt / path lists, num_skipped (b,) long,
    is_image (b,) bool. Images with f=1 and videos cannot share a batch: group them, or use image_as_video=True."""
    frames = {s["pixel_values"].shape for s in samples}
    if len(frames) > 1:
        raise ValueError(f"cannot batch samples of different shapes {sorted(frames)}: images (f=1) and videos need "
                         f"separate batches (or image_as_video=True), and every sample needs the same size")
    return {
        "pixel_values": torch.stack([s["pixel_values"] for s in samples]),
        "prompt": [s["prompt"] for s in samples],
        "path": [s["path"] for s in samples],
        "num_skipped": torch.tensor([s["num_skipped"] for s in samples], dtype=torch.long),
        "is_image": torch.tensor([s["is_image"] for s in samples], dtype=torch.bool),
    }
