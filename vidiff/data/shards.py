"""Webdataset tar shards of a manifest: writing them (`vidiff data shard`) and reading them for training.

A shard folder holds `shard-000000.tar`, `shard-000001.tar`, ... and `index.json`. Each sample of a shard is two
tar members with one key: the video file's bytes under its own extension (`000000042.mp4`) and `000000042.json`
(`caption`, `source` path, `manifest_index`, and the clip's stored `num_frames`, `height`, `width`, `fps` from its
header, which bucketing uses). `index.json` lists the shards, their samples (member names, byte offsets and
sizes, caption and stored size), the total, the bad files skipped and the manifest the shards came from.

Writing: shards are cut by size (`shard_size` bytes, a shard holds at least one clip), each written under a
temporary name and renamed when complete, `index.json` last; so a folder holds complete shards only, and a rerun
continues after the last complete shard (the last `manifest_index` it holds). A file the training dataset could
not read (`probe_video`: missing, empty, no video stream, no frames) is skipped and counted.

Reading: `ShardDataset` is a map-style dataset over the global list of (shard, member) from the index (or, for a
brace pattern without an index beside it, from one scan of the tar headers). Each worker opens the tars lazily
and reads a member by its byte offset (`os.pread`: random access, no tar walk). Being map-style is the point:
the seeded EndlessSampler, its resume position and the split across ranks work exactly as for files, so a
resumed run sees the same clips as a straight one whatever the number of ranks and workers. The price: shards
must be local files. URLs (`http://`, `pipe:`) would need webdataset's streaming reader (iterable, so neither
exact resume nor this rank split) or a local cache; they are refused with one line. Only `.json` members are
parsed (by `json`) and video members decoded (by vidiff.data.video_io); nothing else in a tar is ever read, so
webdataset's default decoders (which unpickle `.pyd` / `.pickle`) are never involved.

References: the webdataset format (https://github.com/webdataset/webdataset): POSIX tars, samples grouped by
the member name up to its first dot.
"""
from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import tarfile
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path

import braceexpand
from webdataset import TarWriter

from vidiff.data.datasets import Entry, VideoDataset, load_manifest
from vidiff.data.remote import RangeReader, beside, is_url, join, kind, read_whole
from vidiff.data.video_io import VIDEO_SUFFIXES, VideoReadError, probe_video
from vidiff.progress import ProgressBar
from vidiff.utils import atomic_path, check_replaceable, write_json_atomic

logger = logging.getLogger("vidiff.data")

INDEX_NAME = "index.json"
SHARD_FORMAT = "vidiff-shards"
_SHARD_NAME = re.compile(r"shard-(\d{6})\.tar")
_UNITS = {"": 1, "B": 1, "KB": 10 ** 3, "MB": 10 ** 6, "GB": 10 ** 9, "TB": 10 ** 12,
          "KIB": 2 ** 10, "MIB": 2 ** 20, "GIB": 2 ** 30, "TIB": 2 ** 40}


def parse_size(text: str | int) -> int:
    """'1GB' / '500MB' / '64KiB' / '4096' -> bytes (decimal units, as disks count; KiB/MiB/GiB binary)."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMGT]I?B|B)?\s*", str(text), re.IGNORECASE)
    if not match or float(match[1]) <= 0:
        raise ValueError(f"shard size {text!r}: give a positive size such as 1GB, 500MB or 64MiB")
    return int(float(match[1]) * _UNITS[(match[2] or "").upper()])


def shard_name(number: int) -> str:
    return f"shard-{number:06d}.tar"


# ---------------------------------------------------------------------------------------------------------------
# The index: a description read into dataclasses once
# ---------------------------------------------------------------------------------------------------------------
@dataclass
class ShardSample:
    key: str                 # the member names' common stem
    video: str               # the video member's name (`<key>.mp4`)
    offset: int              # byte offset of the video's data in the tar
    size: int                # its length in bytes
    caption: str
    num_frames: int | None   # the stored clip, from its header (None: not recorded)
    height: int | None
    width: int | None
    fps: float | None


@dataclass
class ShardInfo:
    name: str                # file name beside index.json (or the full path, for a scanned pattern)
    num_samples: int
    samples: list[ShardSample] = field(default_factory=list)


@dataclass
class ShardIndex:
    shards: list[ShardInfo]
    manifest: str = ""        # the manifest the shards were written from
    num_skipped: int = 0      # bad files skipped while writing
    complete: bool = True

    @property
    def num_samples(self) -> int:
        return sum(s.num_samples for s in self.shards)

    def to_dict(self) -> dict:
        return {"format": SHARD_FORMAT, "version": 1, "manifest": self.manifest, "num_samples": self.num_samples,
                "num_skipped": self.num_skipped, "complete": self.complete,
                "shards": [asdict(s) for s in self.shards]}


def read_index(path: str | os.PathLike) -> ShardIndex:
    """index.json -> ShardIndex; a file that is not a vidiff shard index is one ValueError naming it."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise ValueError(f"{path} is not a readable vidiff shard index ({type(e).__name__}: {e}); rewrite it with "
                         f"`vidiff data shard`") from None
    return parse_index(text, path)


def parse_index(text: str | bytes, path) -> ShardIndex:
    """The text of an index.json (read from `path`: a file or a URL) -> ShardIndex, or one ValueError."""
    try:
        data = json.loads(text)
        if data.get("format") != SHARD_FORMAT:
            raise ValueError(f"format is {data.get('format')!r}, not {SHARD_FORMAT!r}")
        shards = [ShardInfo(s["name"], int(s["num_samples"]), [ShardSample(**m) for m in s["samples"]])
                  for s in data["shards"]]
        return ShardIndex(shards, str(data.get("manifest", "")), int(data.get("num_skipped", 0)),
                          bool(data.get("complete", True)))
    except (ValueError, KeyError, TypeError, AttributeError) as e:
        raise ValueError(f"{path} is not a readable vidiff shard index ({type(e).__name__}: {e}); rewrite it with "
                         f"`vidiff data shard`") from None


def _sample_meta(data: bytes, where: str) -> dict:
    try:
        meta = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as e:
        raise ValueError(f"{where}: not valid JSON ({e})") from None
    if not isinstance(meta, dict):
        raise ValueError(f"{where}: a sample's .json must be an object")
    return meta


def scan_shard(path: str | os.PathLike) -> tuple[list[ShardSample], list[dict]]:
    """The samples of one tar (a video member each; members of other kinds are not read) and their .json
    metadata, in tar order, from the headers and the small .json members."""
    path = Path(path)
    videos, metas = {}, {}
    try:
        with tarfile.open(path, "r:") as tar:
            for member in tar:
                if not member.isfile() or "." not in member.name:
                    continue
                key, ext = member.name.split(".", 1)
                if "." + ext.lower() in VIDEO_SUFFIXES:
                    videos[key] = member
                elif ext.lower() == "json":
                    metas[key] = _sample_meta(tar.extractfile(member).read(), f"{path}:{member.name}")
    except (OSError, tarfile.TarError) as e:
        raise ValueError(f"{path}: not a readable tar shard ({type(e).__name__}: {e})") from None
    samples, infos = [], []
    for key, member in videos.items():
        meta = metas.get(key, {})
        samples.append(ShardSample(key, member.name, member.offset_data, member.size, str(meta.get("caption", "")),
                                   meta.get("num_frames"), meta.get("height"), meta.get("width"), meta.get("fps")))
        infos.append(meta)
    return samples, infos


# ---------------------------------------------------------------------------------------------------------------
# Writing
# ---------------------------------------------------------------------------------------------------------------
def _is_shard_folder(path: Path) -> bool:
    """What `vidiff data shard` writes: shard-*.tar, index.json and its own temporary files."""
    return all(_SHARD_NAME.fullmatch(p.name) or p.name == INDEX_NAME or p.name.startswith(".")
               for p in path.iterdir())


def _complete_shards(out: Path) -> list[Path]:
    """shard-000000.tar, shard-000001.tar, ... as far as they are consecutive (a gap ends the run)."""
    shards = []
    while (out / shard_name(len(shards))).is_file():
        shards.append(out / shard_name(len(shards)))
    return shards


def _resume_point(out: Path, entries: list[Entry]) -> tuple[list[ShardInfo], int]:
    """The complete shards already in `out` and the manifest index to continue from; shards of another
    manifest are an error."""
    shards, start = [], 0
    for path in _complete_shards(out):
        samples, metas = scan_shard(path)
        for meta in metas:
            i = meta.get("manifest_index", -1)
            if not (0 <= i < len(entries)) or meta.get("source") != entries[i].path:
                raise ValueError(f"{path} holds clips of another manifest ({meta.get('source')!r}); pass --overwrite "
                                 f"or choose a new --out")
            start = max(start, i + 1)
        shards.append(ShardInfo(path.name, len(samples), samples))
    return shards, start


def _prepare_out(out: Path, manifest: str, overwrite: bool) -> ShardIndex | None:
    """Check `out` may be written; with `overwrite` clear what an earlier run wrote. Returns the index of a
    finished run of the same manifest (nothing to do), else None."""
    check_replaceable(out, _is_shard_folder, "a shard folder (vidiff data shard)", "choose a new --out")
    out.mkdir(parents=True, exist_ok=True)
    if overwrite:
        for path in out.iterdir():
            path.unlink()
        return None
    for tmp in out.glob(".shard-*"):  # an interrupted shard: written again
        tmp.unlink()
    if (out / INDEX_NAME).is_file():
        index = read_index(out / INDEX_NAME)
        if index.manifest != manifest:
            raise ValueError(f"{out} holds shards of {index.manifest}, not {manifest}; pass --overwrite or choose "
                             f"a new --out")
        return index
    return None


def _readable_samples(entries: list[Entry], start: int, bad: list[str], bar):
    """(manifest index, entry, header info) of the entries from `start` that probe as videos; the others are
    appended to `bad` as 'path: reason'."""
    for i in range(start, len(entries)):
        entry = entries[i]
        bar.update(1)
        try:
            info = probe_video(entry.path)
        except (VideoReadError, OSError) as e:
            bad.append(f"{entry.path}: {e.reason if isinstance(e, VideoReadError) else e}")
            continue
        yield i, entry, info


def _record(i: int, entry: Entry, info) -> dict:
    """One webdataset sample: the file's bytes under its extension, and its .json."""
    meta = {"caption": entry.caption, "source": entry.path, "manifest_index": i, "num_frames": info.num_frames,
            "height": info.height, "width": info.width, "fps": info.fps}
    ext = Path(entry.path).suffix.lower().lstrip(".")
    return {"__key__": f"{i:09d}", ext: Path(entry.path).read_bytes(), "json": json.dumps(meta).encode("utf-8")}


def _write_shard(path: Path, first: dict, records, limit: int) -> tuple[ShardInfo, dict | None]:
    """Write `first` and then records while the shard stays under `limit` bytes; returns the shard and the
    record that did not fit (None at the end)."""
    record, size = first, 0
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            writer = TarWriter(f, encoder=False, mtime=0.0)  # our own bytes only; fixed mtime: same input, same tar
            while record is not None:
                cost = sum(512 + len(v) for k, v in record.items() if k != "__key__")  # + one header per member
                if size and size + cost > limit:
                    break
                writer.write(record)
                size += cost
                record = next(records, None)
            writer.close()
        samples, _ = scan_shard(tmp)
    return ShardInfo(path.name, len(samples), samples), record


def write_shards(manifest: str | os.PathLike, out: str | os.PathLike, *, shard_size: int = 10 ** 9,
                 overwrite: bool = False, progress: bool = True, **manifest_options) -> tuple[ShardIndex, list[str]]:
    """Write the readable videos of `manifest` as webdataset tar shards of about `shard_size` bytes plus
    index.json in `out` (see the module docstring); resumes after the last complete shard. Returns the index and
    the bad files skipped in this run ('path: reason')."""
    out, manifest = Path(out), str(Path(manifest).absolute())
    entries = load_manifest(manifest, image_ok=False, **manifest_options)
    finished = _prepare_out(out, manifest, overwrite)
    if finished is not None:
        return finished, []
    shards, start = _resume_point(out, entries)
    earlier_bad = start - sum(s.num_samples for s in shards)
    bad: list[str] = []
    with ProgressBar(total=len(entries), initial=start, unit="clip", desc="sharding", disable=not progress) as bar:
        records = (_record(*sample) for sample in _readable_samples(entries, start, bad, bar))
        record = next(records, None)
        while record is not None:
            shard, record = _write_shard(out / shard_name(len(shards)), record, records, shard_size)
            shards.append(shard)
    index = ShardIndex(shards, manifest, earlier_bad + len(bad))
    if not index.num_samples:
        raise ValueError(f"no readable video in {manifest} ({len(bad)} bad, e.g. {bad[0] if bad else '-'})")
    write_json_atomic(out / INDEX_NAME, index.to_dict())
    return index, bad


# ---------------------------------------------------------------------------------------------------------------
# Reading
# ---------------------------------------------------------------------------------------------------------------
def resolve_shards(spec: str | os.PathLike) -> tuple[list[str], ShardIndex]:
    """`data.shards` -> (the shards' locations, their index): a folder (local or URL) with index.json, or a
    brace pattern of tars (local, URL or `pipe:` command; vidiff.data.remote) whose index is the index.json
    beside them when it lists them all, else (local tars only) one scan of the tars."""
    spec = str(spec)
    expanded = list(braceexpand.braceexpand(spec))
    if not expanded[0].rstrip("'\" ").endswith(".tar"):  # a folder
        folder = spec if is_url(spec) else str(Path(spec).expanduser())
        if not is_url(spec) and not Path(folder).is_dir():
            raise ValueError(f"{spec} is neither a shard folder nor a pattern of .tar shards")
        where = join(folder, INDEX_NAME)
        if not is_url(spec) and not Path(where).is_file():
            raise ValueError(f"{folder} has no {INDEX_NAME}; write it with `vidiff data shard`, or give a pattern "
                             f"such as {folder}/shard-{{000000..000009}}.tar")
        index = parse_index(read_whole(where), where)
        return [join(folder, s.name) for s in index.shards], index
    locations = expanded if is_url(spec) else [str(Path(p).expanduser()) for p in expanded]
    if not is_url(spec):
        missing = [p for p in locations if not Path(p).is_file()]
        if missing:
            raise ValueError(f"{len(missing)} of the {len(locations)} shards of {spec} do not exist (first: "
                             f"{missing[0]})")
    index = _index_beside(locations)
    if index is not None:
        return locations, index
    if is_url(spec):
        raise ValueError(f"{spec}: shards behind URLs need the {INDEX_NAME} that `vidiff data shard` writes beside "
                         f"them, listing every shard (it holds each sample's byte range)")
    shards = [ShardInfo(p, len(samples), samples) for p in locations for samples in [scan_shard(p)[0]]]
    return locations, ShardIndex(shards)


def _shard_file_name(location: str) -> str:
    return re.findall(r"[^\s/'\"]+\.tar\b", location)[-1] if kind(location) == "pipe" else location.rsplit("/", 1)[-1]


def _index_beside(locations: list[str]) -> ShardIndex | None:
    """The index.json next to the first shard, restricted to `locations`, when all sit beside it and it lists
    them all; else None."""
    where = beside(locations[0], INDEX_NAME)
    if any(beside(p, INDEX_NAME) != where for p in locations):
        return None
    if kind(where) == "local" and not Path(where).is_file():
        return None
    try:
        data = read_whole(where)
    except ValueError:
        if kind(where) == "local":
            raise
        return None
    index = parse_index(data, where)
    by_name = {s.name: s for s in index.shards}
    names = [_shard_file_name(p) for p in locations]
    if not all(name in by_name for name in names):
        return None
    return ShardIndex([by_name[name] for name in names], index.manifest, index.num_skipped)


class ShardDataset(VideoDataset):
    """VideoDataset (same clip sampling, transforms and bad-sample handling) over the samples of tar shards,
    indexed (shard, member) in index order; an entry's path is `<shard>#<member>`. A member is read by its byte
    offset into a temporary file that the decoders open, deleted after. `clip_size` comes from the index (or
    the sample's .json), so bucketing opens no tar."""

    def __init__(self, spec: str | os.PathLike, num_frames: int = 16, height: int = 256, width: int = 256, **options):
        paths, index = resolve_shards(spec)
        self.shard_paths = paths
        self.reader = RangeReader(paths)
        self.samples: dict[str, tuple[int, ShardSample]] = {}  # entry path -> (shard number, sample)
        entries = []
        for number, (path, shard) in enumerate(zip(paths, index.shards)):
            for sample in shard.samples:
                entries.append(Entry(f"{path}#{sample.video}", sample.caption))
                self.samples[entries[-1].path] = (number, sample)
        if not entries:
            raise ValueError(f"the shards of {spec} hold no clips")
        super().__init__(str(spec), num_frames, height, width, entries=entries, image_ok=False, **options)

    def read_member(self, file_index: int) -> bytes:
        path = self.entries[file_index].path
        shard, sample = self.samples[path]
        try:
            data = self.reader.read(shard, sample.offset, sample.size)
        except (OSError, ValueError) as e:  # (a network or command failure: a bad sample, skipped and counted)
            raise VideoReadError(path, f"{type(e).__name__}: {e}") from None
        if len(data) != sample.size:
            raise VideoReadError(path, f"truncated shard: {len(data)} of {sample.size} bytes")
        return data

    @contextlib.contextmanager
    def local_file(self, file_index: int):
        suffix = Path(self.samples[self.entries[file_index].path][1].video).suffix
        with tempfile.NamedTemporaryFile(prefix="vidiff-shard-", suffix=suffix) as f:
            f.write(self.read_member(file_index))
            f.flush()
            yield Path(f.name)

    def clip_size(self, file_index: int) -> tuple[int, int, int, float]:
        sample = self.samples[self.entries[file_index].path][1]
        if sample.height and sample.width and sample.num_frames:
            return sample.num_frames, sample.height, sample.width, sample.fps or 0.0
        return super().clip_size(file_index)  # shards of another writer: probe the member
