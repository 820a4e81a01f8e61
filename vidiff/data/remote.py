"""Byte ranges of shard files wherever they are: local paths, http(s) URLs, other fsspec URLs, `pipe:` commands.

`data.shards` names shards as webdataset does: a local folder or pattern, `https://host/shards/` (a folder URL
with index.json), `https://host/shards/shard-{000000..000099}.tar`, `s3://bucket/shards/...` (any fsspec
protocol whose package is installed: s3fs, gcsfs, ...), or `pipe:CMD` (a command that writes the file to
stdout: `pipe:curl -s https://host/shard-{000000..000099}.tar`, `pipe:aws s3 cp s3://b/shard-000000.tar -`).

Training reads a sample by its byte range (the index records every member's offset and size), so the seeded
sampler, its resume position and the rank split are those of local shards:
- local files: `os.pread`;
- http(s): one `Range: bytes=a-b` request per sample (requests, a session per process); a server that ignores
  ranges (status 200) is refused, as a full download per sample would be;
- other fsspec URLs: `fs.cat_file(path, start, end)`;
- `pipe:` commands stream, with no random access: each shard is fetched whole, once per machine, into a local
  cache folder (`$VIDIFF_SHARD_CACHE`, default `<tmp>/vidiff-shard-cache`; written under a temporary name and
  renamed, so concurrent ranks and workers never read half a file), then read by offset. It needs local disk
  for the shards the run touches (in random order: all of them).
"""
from __future__ import annotations

import hashlib
import os
import re
import subprocess
import tempfile
from pathlib import Path

import fsspec
import requests

TIMEOUT_S = 60  # per HTTP request


def is_url(spec: str) -> bool:
    return spec.startswith("pipe:") or re.match(r"^[a-zA-Z][a-zA-Z0-9+.-]*://", spec) is not None


def kind(location: str) -> str:
    """"local" | "http" | "fsspec" | "pipe"."""
    if location.startswith("pipe:"):
        return "pipe"
    if re.match(r"^https?://", location):
        return "http"
    return "fsspec" if is_url(location) else "local"


def beside(location: str, name: str) -> str:
    """The file `name` next to the shard `location` (for `pipe:` the command with the shard's file name
    replaced: `pipe:curl -s https://h/s/shard-000000.tar` -> `pipe:curl -s https://h/s/index.json`)."""
    if kind(location) == "pipe":
        tars = re.findall(r"[^\s/'\"]+\.tar\b", location)
        if not tars:
            raise ValueError(f"{location}: a pipe: shard command must name its .tar file (to find index.json "
                             "beside it)")
        head, _, tail = location.rpartition(tars[-1])
        return head + name + tail
    if kind(location) == "local":
        return str(Path(location).parent / name)
    return location.rsplit("/", 1)[0] + "/" + name


def join(folder: str, name: str) -> str:
    """`name` inside the folder URL or path `folder`."""
    return folder.rstrip("/") + "/" + name if is_url(folder) else str(Path(folder) / name)


def read_whole(location: str) -> bytes:
    """The whole file (an index.json): one GET, one fsspec read, one run of the command, or a local read."""
    where = kind(location)
    try:
        if where == "http":
            response = requests.get(location, timeout=TIMEOUT_S)
            response.raise_for_status()
            return response.content
        if where == "fsspec":
            with fsspec.open(location, "rb") as f:
                return f.read()
        if where == "pipe":
            return _run(location)
        return Path(location).read_bytes()
    except (OSError, requests.RequestException, ImportError, ValueError) as e:
        raise ValueError(f"{location}: cannot be read ({type(e).__name__}: {e})") from None


def _run(command: str) -> bytes:
    proc = subprocess.run(command[len("pipe:"):], shell=True, capture_output=True, timeout=3600)
    if proc.returncode != 0:
        message = proc.stderr.decode("utf-8", "replace").strip().splitlines()
        raise OSError(f"`{command[len('pipe:'):]}` exited with {proc.returncode}"
                      f"{': ' + message[-1] if message else ''}")
    return proc.stdout


def cache_folder() -> Path:
    return Path(os.environ.get("VIDIFF_SHARD_CACHE") or Path(tempfile.gettempdir()) / "vidiff-shard-cache")


def spooled(command: str) -> Path:
    """The local copy of the `pipe:` shard `command` (fetched on first use, kept for later runs)."""
    folder = cache_folder()
    folder.mkdir(parents=True, exist_ok=True)
    name = hashlib.sha256(command.encode("utf-8")).hexdigest()[:24]
    tars = re.findall(r"[^\s/'\"]+\.tar\b", command)
    path = folder / f"{name}-{tars[-1] if tars else 'shard.tar'}"
    if not path.is_file():
        tmp = folder / f".{path.name}.{os.getpid()}.tmp"
        try:
            with open(tmp, "wb") as f:
                proc = subprocess.run(command[len("pipe:"):], shell=True, stdout=f, stderr=subprocess.PIPE,
                                      timeout=24 * 3600)
            if proc.returncode != 0:
                raise OSError(f"`{command[len('pipe:'):]}` exited with {proc.returncode}: "
                              f"{proc.stderr.decode('utf-8', 'replace').strip()[-300:]}")
            os.replace(tmp, path)  # (another process may have won the race: same bytes)
        finally:
            tmp.unlink(missing_ok=True)
    return path


class RangeReader:
    """`read(shard, offset, size)` over the shards `locations` (any mix of kinds). Handles (file descriptors,
    an HTTP session, fsspec file systems) are opened lazily in the process that reads, so a DataLoader worker
    opens its own."""

    def __init__(self, locations: list[str]):
        self.locations = list(locations)
        self._handles: dict = {}
        self._pid = None

    def __getstate__(self):
        return {**self.__dict__, "_handles": {}, "_pid": None}

    def _handle(self, key, make):
        if self._pid != os.getpid():
            self._handles, self._pid = {}, os.getpid()
        if key not in self._handles:
            self._handles[key] = make()
        return self._handles[key]

    def read(self, shard: int, offset: int, size: int) -> bytes:
        location = self.locations[shard]
        where = kind(location)
        if where == "http":
            session = self._handle("http", requests.Session)
            response = session.get(location, headers={"Range": f"bytes={offset}-{offset + size - 1}"},
                                   timeout=TIMEOUT_S)
            if response.status_code != 206:
                raise OSError(f"{location}: the server answered {response.status_code} to a byte-range request "
                              "(206 expected); serve the shards from a server that supports ranges, or use pipe:")
            return response.content
        if where == "fsspec":
            fs, path = self._handle(("fsspec", location), lambda: fsspec.core.url_to_fs(location))
            return fs.cat_file(path, start=offset, end=offset + size)
        fd = self._handle(("fd", shard), lambda: os.open(spooled(location) if where == "pipe" else location,
                                                         os.O_RDONLY))
        return os.pread(fd, size, offset)
