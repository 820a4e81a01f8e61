"""Reading and writing videos as `uint8 (f, h, w, 3)` arrays.

Reading: decord when it is installed (fast random access to the frames a clip needs), PyAV otherwise; both give
the same frames for the same indices (up to small colour-conversion differences). Which frames a clip takes is
plain arithmetic (`clip_indices`), shared by both readers and by the datasets, so it is tested once. Frames come
out as players show them: a display matrix (phone videos recorded sideways) is applied, and resizing keeps the
displayed aspect. Variable-frame-rate files are flagged (`VideoInfo.variable_rate`); `fps=` sampling of one warns.

Writing: mp4 (H.264, yuv420p), gif, a folder of PNG frames, or a contact-sheet PNG (a grid of frames with their
indices), picked by the path's suffix or `format=`. Every write goes through a temporary name (atomic).

References: H.264 in yuv420p needs even widths and heights (4:2:0 chroma subsampling), so odd sizes are padded by
repeating the last row / column; NTSC rates such as 29.97 are stored exactly as 30000/1001.
"""
from __future__ import annotations

import functools
import math
import os
import warnings
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
from PIL import Image, ImageDraw

from vidiff.utils import atomic_dir, atomic_path

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".webp", ".bmp"}
VIDEO_SUFFIXES = {".mp4", ".mov", ".mkv", ".webm", ".avi", ".m4v", ".gif", ".mpg", ".mpeg", ".ts", ".flv"}
BACKENDS = ("auto", "decord", "pyav")
# decord's own frame threads made reads slower here (tools/bench_data.py: 0.22 s vs 0.17 s per clip); parallelism
# comes from DataLoader workers. PyAV's frame threading (thread_type AUTO) did help (0.22 s vs 0.51 s).
DECORD_THREADS = 1


class VideoReadError(ValueError):
    """A video (or image) that cannot be read: the message names the file and the reason."""

    def __init__(self, path, reason: str):
        self.path = str(path)
        self.reason = reason
        super().__init__(f"{path}: {reason}")


_WARNED_VARIABLE_RATE: set[str] = set()  # files already warned about (once per file and process)


class ClipTooShortError(ValueError):
    """The clip asked for does not fit in the video (raised by `clip_indices`)."""


@dataclass
class VideoInfo:
    """What the container header says about the first video stream."""

    num_frames: int  # frames in the stream (header count, or packets counted when the header has none)
    fps: float  # average frame rate
    height: int  # as displayed: a phone video recorded sideways with rotation metadata is reported upright
    width: int
    rotation: int = 0  # display rotation, degrees counterclockwise (0, 90, 180, 270); frames are read upright
    variable_rate: bool = False  # frame durations differ (phones, screen recordings): `fps=` sampling is approximate


@dataclass
class VideoClip:
    """Frames read from a file. Unpacks as `frames, fps = read_video(...)`."""

    frames: np.ndarray  # uint8 (f, h, w, 3)
    fps: float  # the source's frame rate (not the sampling rate)
    indices: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))  # source frame index of each frame
    num_source_frames: int = 0

    def __iter__(self):
        return iter((self.frames, self.fps))

    def __len__(self):
        return len(self.frames)


# ---------------------------------------------------------------------------------------------------------------
# Which frames a clip takes
# ---------------------------------------------------------------------------------------------------------------
def frame_step(stride: int | None = None, fps: float | None = None, source_fps: float | None = None) -> float:
    """Distance between sampled frames, in source frames: `stride`, or `source_fps / fps` for a target rate."""
    if stride is not None and fps is not None:
        raise ValueError(f"give either stride ({stride}) or fps ({fps}), not both")
    if fps is not None:
        if not (math.isfinite(fps) and fps > 0):
            raise ValueError(f"fps must be a finite number > 0, got {fps}")
        if not source_fps or source_fps <= 0:
            raise ValueError(f"sampling at fps={fps} needs the source fps, got {source_fps}")
        return float(source_fps) / float(fps)
    stride = 1 if stride is None else stride
    if int(stride) != stride or stride < 1:
        raise ValueError(f"stride must be an integer >= 1, got {stride}")
    return float(stride)


def clip_span(num_frames: int, step: float) -> int:
    """Source frames covered by `num_frames` samples `step` apart (first to last, inclusive)."""
    return int(np.floor((num_frames - 1) * step + 0.5)) + 1


def clip_indices(num_source_frames: int, num_frames: int | None = None, stride: int | None = None,
                 fps: float | None = None, source_fps: float | None = None, start: int = 0) -> np.ndarray:
    """Source frame indices of a clip: `start + floor(i * step + 0.5)` for i < num_frames, step = stride or
    source_fps / fps (a target fps above the source's repeats frames). `num_frames=None` takes every step until
    the end. Raises ClipTooShortError (a ValueError) when the clip does not fit in the source."""
    step = frame_step(stride, fps, source_fps)
    if start < 0:
        raise ValueError(f"start must be >= 0, got {start}")
    if num_frames is None:
        available = num_source_frames - start
        num_frames = 0 if available <= 0 else int(math.floor((available - 1) / step + 1e-9)) + 1
        if num_frames < 1:
            raise ClipTooShortError(f"too short: start={start} is past the end ({num_source_frames} frames)")
    if int(num_frames) != num_frames or num_frames < 1:
        raise ValueError(f"num_frames must be an integer >= 1, got {num_frames}")
    indices = start + np.floor(np.arange(num_frames) * step + 0.5).astype(np.int64)  # round half up
    if indices[-1] >= num_source_frames:
        raise ClipTooShortError(f"too short: {num_frames} frames at a step of {step:g} from frame {start} need "
                         f"{start + clip_span(num_frames, step)} frames, the video has {num_source_frames}")
    return indices


# ---------------------------------------------------------------------------------------------------------------
# Readers
# ---------------------------------------------------------------------------------------------------------------
def _have_decord() -> bool:
    try:  # decord is optional (the `decord` extra; no wheels beyond x86-64 Linux): PyAV reads when it is missing
        import decord  # noqa: F401
    except Exception:
        return False
    return True


def _check_file(path: Path) -> None:
    if not path.exists():
        raise VideoReadError(path, "file not found")
    if path.is_dir():
        raise VideoReadError(path, "is a folder, not a video file")
    if path.stat().st_size == 0:
        raise VideoReadError(path, "empty file (0 bytes)")


def _resize_shape(height: int, width: int, size) -> tuple[int, int] | None:
    """`size`: None (keep), an int (shorter side to `size`, aspect kept), (h, w) (exactly) or a function
    (h, w) -> (h, w)."""
    if size is None:
        return None
    if callable(size):
        size = size(height, width)
    if isinstance(size, (int, np.integer)):
        if size < 1:
            raise ValueError(f"size must be >= 1, got {size}")
        scale = size / min(height, width)
        return max(1, round(height * scale)), max(1, round(width * scale))
    h, w = (int(s) for s in size)
    if h < 1 or w < 1:
        raise ValueError(f"size must be positive, got {size}")
    return h, w


def probe_video(path: str | os.PathLike) -> VideoInfo:
    """Header information (no decoding; counts packets only when the container has no frame count)."""
    path = Path(path)
    _check_file(path)
    try:
        with av.open(str(path)) as container:
            if not container.streams.video:
                raise VideoReadError(path, "no video stream")
            stream = container.streams.video[0]
            if stream.codec_context is None:  # FFmpeg has no decoder for this stream's codec
                raise VideoReadError(path, "unsupported video codec (no decoder in this FFmpeg build) "
                                           "or a damaged header")
            rate = stream.average_rate or stream.guessed_rate or stream.base_rate
            fps = float(rate) if rate else 0.0
            num_frames = int(stream.frames or 0)
            if num_frames <= 0:  # e.g. mkv / webm: no count in the header, so count the packets
                num_frames = sum(1 for packet in container.demux(stream) if packet.size)
            width, height = stream.codec_context.width, stream.codec_context.height
            try:
                variable_rate = _has_variable_rate(stream, num_frames)
            except Exception:  # index_entries is PyAV >= 14
                variable_rate = False
    except VideoReadError:
        raise
    except Exception as e:  # av.FFmpegError and friends
        raise VideoReadError(path, f"cannot open as video ({type(e).__name__}: {e})") from None
    if num_frames <= 0:
        raise VideoReadError(path, "video stream has no frames")
    if not width or not height:
        raise VideoReadError(path, "video stream has no frame size (unsupported codec?)")
    rotation = _display_rotation(path)
    if rotation in (90, 270):
        height, width = width, height
    return VideoInfo(num_frames=num_frames, fps=fps, height=height, width=width, rotation=rotation,
                     variable_rate=variable_rate)


def _display_rotation(path: Path) -> int:
    """The display matrix's rotation (ISO/IEC 14496-12 `tkhd` matrix, as FFmpeg reads it into frame side data),
    in degrees counterclockwise, one of 0 / 90 / 180 / 270. Phones store sideways sensor frames with a matrix.
    Read from the first decoded frame (PyAV has no stream-level getter), once per file version: datasets probe
    a file at every load."""
    stat = path.stat()
    return _first_frame_rotation(str(path), stat.st_ino, stat.st_mtime_ns, stat.st_size)


@functools.lru_cache(maxsize=65536)
def _first_frame_rotation(path: str, inode: int, mtime_ns: int, size: int) -> int:
    """(Inode, time and size key the cache: a replaced or rewritten file is read again.) A file that does not decode says 0
    here and fails where its frames are read, with the reader's reason."""
    try:
        with av.open(path) as container:
            for frame in container.decode(video=0):
                return int(round(float(getattr(frame, "rotation", 0) or 0) / 90)) % 4 * 90
    except Exception:
        return 0
    return 0


def _has_variable_rate(stream, num_frames: int) -> bool:
    """True when the container's sample table (mp4 / mov: one index entry per frame) holds frame durations that
    differ by more than half the median one. Containers that index keyframes only (mkv, webm) say False."""
    entries = stream.index_entries
    if len(entries) != num_frames or num_frames < 3:
        return False
    times = np.sort(np.array([entry.timestamp for entry in entries], np.float64))
    steps = np.diff(times)
    median = float(np.median(steps))
    return median > 0 and bool(np.abs(steps - median).max() > 0.5 * median)


def _read_pyav(path: Path, indices: np.ndarray, shape: tuple[int, int] | None, num_source: int) -> np.ndarray:
    """Decode from the keyframe before the first wanted frame, counting frames from there."""
    wanted = {int(i) for i in indices}
    first, last = int(indices.min()), int(indices.max())
    got: dict[int, np.ndarray] = {}
    kwargs = {"format": "rgb24"}
    if shape is not None:
        kwargs.update(height=shape[0], width=shape[1])
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        rate = stream.average_rate or stream.guessed_rate
        t0 = stream.start_time or 0
        index, decoded = 0, -1
        seeked = False
        if first > 0 and rate:
            # Seek to the keyframe at or before the first wanted frame; the first decoded frame's timestamp tells
            # where we landed, from there frames are counted (robust to odd timestamps later on).
            target = t0 + int(round(first / float(rate) / stream.time_base))
            try:
                container.seek(target, stream=stream, backward=True, any_frame=False)
                seeked = True
            except av.FFmpegError:
                # A truncated file can fail the seek itself (EPERM): decode from the start instead, so the
                # reason reported is what is wrong with the file ("truncated"), not the seek's errno.
                got, decoded = _decode_from_start(container, stream, wanted, last, kwargs)
                return _assemble(path, indices, got, decoded, num_source)
        for n, frame in enumerate(container.decode(stream)):
            if seeked and n == 0:
                pts = frame.pts if frame.pts is not None else t0
                index = int(round(float((pts - t0) * stream.time_base) * float(rate)))
                if index > first:  # landed past the frame we need: start over from the beginning
                    container.seek(t0, stream=stream, backward=True, any_frame=False)
                    got, decoded = _decode_from_start(container, stream, wanted, last, kwargs)
                    break
            if index in wanted:
                got[index] = frame.to_ndarray(**kwargs)
            decoded = index
            if index >= last:
                break
            index += 1
    return _assemble(path, indices, got, decoded, num_source)


def _decode_from_start(container, stream, wanted, last, kwargs) -> tuple[dict, int]:
    got, decoded = {}, -1
    for index, frame in enumerate(container.decode(stream)):
        if index in wanted:
            got[index] = frame.to_ndarray(**kwargs)
        decoded = index
        if index >= last:
            break
    return got, decoded


def _assemble(path, indices, got, last_decoded, num_source) -> np.ndarray:
    missing = [int(i) for i in indices if int(i) not in got]
    if missing:
        raise VideoReadError(path, f"truncated: frame {missing[0]} could not be decoded (stream ended after frame "
                                   f"{last_decoded}, header says {num_source} frames)")
    return np.stack([got[int(i)] for i in indices])


def _read_decord(path: Path, indices: np.ndarray, shape: tuple[int, int] | None) -> np.ndarray:
    import decord  # optional: called only when _have_decord()

    # decord's FFmpeg prints several raw lines to stderr for each damaged file (at its default ERROR level); the
    # failure is reported as one VideoReadError line (or PyAV reads the file instead), so keep FFmpeg quiet.
    decord.logging.set_level(decord.logging.QUIET)

    kwargs = {} if shape is None else {"height": shape[0], "width": shape[1]}
    reader = decord.VideoReader(str(path), ctx=decord.cpu(0), num_threads=DECORD_THREADS, **kwargs)
    if int(indices.max()) >= len(reader):
        raise VideoReadError(path, f"truncated: frame {int(indices.max())} requested, decord sees {len(reader)}")
    try:
        return reader.get_batch(indices.tolist()).asnumpy()
    except decord.DECORDError as e:
        # decord 0.6 fails its own buffer-size check for some frame widths (seen: 8, 12, 16, 24, 48 px), at the
        # source size or resized; such files are read with PyAV instead, whatever the backend asked for.
        if "must exactly match" in str(e):
            raise _DecordSizeBug() from None
        raise


class _DecordSizeBug(Exception):
    pass


def read_image(path: str | os.PathLike, size=None) -> np.ndarray:
    """An image as a one-frame video, uint8 (1, h, w, 3)."""
    path = Path(path)
    _check_file(path)
    try:
        with Image.open(path) as image:
            image = image.convert("RGB")
            shape = _resize_shape(image.height, image.width, size)
            if shape is not None and shape != (image.height, image.width):
                image = image.resize((shape[1], shape[0]), Image.BICUBIC)
            return np.asarray(image, dtype=np.uint8)[None].copy()
    except Exception as e:
        raise VideoReadError(path, f"cannot read as image ({type(e).__name__}: {e})") from None


def read_video(path: str | os.PathLike, num_frames: int | None = None, stride: int | None = None,
               fps: float | None = None, start: int = 0, size=None, backend: str = "auto",
               indices=None) -> VideoClip:
    """Read frames from a video file as uint8 (f, h, w, 3).

    num_frames / stride / fps / start: which frames (see `clip_indices`); all of them by default.
    indices: explicit source frame indices instead (overrides the four above).
    size: None, an int (resize the shorter side, aspect kept) or (h, w); resizing happens in the decoder.
    backend: "auto" (decord when installed, falling back to PyAV if decord fails), "decord" or "pyav" (decord
    hands the few frame widths it cannot handle to PyAV).
    Images (.png, .jpg, ...) read as one frame with fps 0. Audio tracks are ignored.
    Raises VideoReadError naming the file and the reason (missing, empty, truncated, undecodable, too short).
    """
    if backend not in BACKENDS:
        raise ValueError(f"unknown video backend {backend!r}; use one of {', '.join(BACKENDS)}")
    path = Path(path)
    if path.suffix.lower() in IMAGE_SUFFIXES:
        return VideoClip(read_image(path, size), 0.0, np.zeros(1, np.int64), 1)
    info = probe_video(path)
    return read_frames(path, info, indices=indices, num_frames=num_frames, stride=stride, fps=fps, start=start,
                       size=size, backend=backend)


def read_frames(path: str | os.PathLike, info: VideoInfo, indices=None, num_frames: int | None = None,
                stride: int | None = None, fps: float | None = None, start: int = 0, size=None,
                backend: str = "auto") -> VideoClip:
    """`read_video` for a file already probed (`info = probe_video(path)`), so datasets probe once."""
    if backend not in BACKENDS:
        raise ValueError(f"unknown video backend {backend!r}; use one of {', '.join(BACKENDS)}")
    path = Path(path)
    if indices is None:
        if fps is not None and not info.fps:
            raise VideoReadError(path, f"unknown frame rate, cannot sample at fps={fps}")
        try:
            indices = clip_indices(info.num_frames, num_frames, stride, fps, info.fps, start)
        except ClipTooShortError as e:  # the file's fault; bad arguments stay plain ValueErrors
            raise VideoReadError(path, str(e)) from None
    indices = np.asarray(indices, dtype=np.int64)
    if indices.ndim != 1 or len(indices) == 0 or indices.min() < 0:
        raise ValueError(f"indices must be a non-empty list of frame numbers >= 0, got {indices}")
    if indices.max() >= info.num_frames:
        raise VideoReadError(path, f"too short: frame {int(indices.max())} requested, the video has "
                                   f"{info.num_frames} frames")
    if fps is not None and info.variable_rate and str(path) not in _WARNED_VARIABLE_RATE:
        _WARNED_VARIABLE_RATE.add(str(path))
        warnings.warn(f"{path}: variable frame rate (frame durations differ); fps={fps:g} sampling counts frames at "
                      f"the average rate {info.fps:g}, so sample times are approximate. Re-encode at a constant "
                      "rate (ffmpeg -fps_mode cfr) for exact timing", stacklevel=2)
    shape = _resize_shape(info.height, info.width, size)  # upright (displayed) size
    turns = info.rotation // 90
    if backend == "decord" and not _have_decord():
        raise ValueError("backend 'decord' requested but decord is not installed: pip install decord, "
                         "or use backend='pyav'")
    # decord 0.6 returns rotated files as garbled 4-channel arrays: PyAV reads them, and the frames are turned
    # upright here, so both backends give the displayed frames.
    use_decord = not turns and (backend == "decord" or (backend == "auto" and _have_decord()
                                                         and path.suffix.lower() != ".gif"))
    frames = None
    if use_decord:
        try:
            frames = _read_decord(path, indices, shape)
        except _DecordSizeBug:
            frames = None
        except VideoReadError:
            if backend == "decord":
                raise
        except Exception as e:  # decord raises its own DECORDError / RuntimeError
            if backend == "decord":
                message = str(e).strip().split("Error: ")[-1][:200]  # drop decord's "[time] file.cc:line:" prefix
                raise VideoReadError(path, f"decord failed ({type(e).__name__}: {message})") from None
    if frames is None:
        coded_shape = shape if shape is None or turns % 2 == 0 else (shape[1], shape[0])
        try:
            frames = _read_pyav(path, indices, coded_shape, info.num_frames)
        except VideoReadError:
            raise
        except Exception as e:
            raise VideoReadError(path, f"cannot decode ({type(e).__name__}: {e})") from None
        if turns:  # counterclockwise quarter turns, as players show the file
            frames = np.rot90(frames, turns, axes=(1, 2))
    return VideoClip(np.ascontiguousarray(frames, dtype=np.uint8), info.fps, indices, info.num_frames)


def chunk_bounds(num_frames: int, chunk: int, overlap: int = 0) -> list[tuple[int, int]]:
    """`[start, end)` frame ranges of about `chunk` frames covering `num_frames`, consecutive ranges sharing
    `overlap` frames (an interpolation stage's keyframe), as even as possible (no short last chunk)."""
    if chunk <= overlap:
        raise ValueError(f"a chunk of {chunk} frames cannot share {overlap} with the next; give more frames")
    if num_frames <= chunk:
        return [(0, num_frames)]
    count = math.ceil((num_frames - overlap) / (chunk - overlap))
    step = (num_frames - overlap) / count
    edges = [round(i * step) for i in range(count + 1)]
    return [(edges[i], edges[i + 1] + overlap) for i in range(count)]


def iter_chunks(path: str | os.PathLike, info: VideoInfo, chunk: int, overlap: int = 0):
    """The frames of a probed video `chunk_bounds` at a time (uint8 (f, h, w, 3) arrays), so a long input is never
    decoded whole; each read seeks to its first frame."""
    for start, end in chunk_bounds(info.num_frames, chunk, overlap):
        yield read_frames(path, info, indices=np.arange(start, end)).frames


# ---------------------------------------------------------------------------------------------------------------
# Writers
# ---------------------------------------------------------------------------------------------------------------
def _as_frames(frames) -> np.ndarray:
    if hasattr(frames, "detach"):  # a torch tensor
        frames = frames.detach().cpu().numpy()
    frames = np.asarray(frames)
    if frames.ndim == 3 and frames.shape[-1] == 3:
        frames = frames[None]
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.shape[0] < 1:
        raise ValueError(f"frames must be uint8 (f, h, w, 3), got shape {frames.shape}")
    if frames.dtype != np.uint8:
        raise ValueError(f"frames must be uint8 (f, h, w, 3), got dtype {frames.dtype}; convert floats in [-1, 1] "
                         f"with ((x + 1) * 127.5).round().clip(0, 255).astype(np.uint8)")
    return frames


def video_rate(fps) -> Fraction:
    """A frame rate as an exact fraction; NTSC rates (29.97, 23.976, 59.94) become n*1000/1001."""
    if isinstance(fps, Fraction):
        return fps
    fps = float(fps)
    if not math.isfinite(fps) or fps <= 0:
        raise ValueError(f"fps must be a positive number, got {fps}")
    ntsc = fps * 1.001
    if abs(ntsc - round(ntsc)) < 2e-3 and abs(fps - round(fps)) > 1e-3:
        return Fraction(int(round(ntsc)) * 1000, 1001)
    return Fraction(fps).limit_denominator(1001)


# Encoder settings pinned so the same frames give the same bytes whatever ran before and on any machine:
# - mbtree off: x264's AVX-512 macroblock-tree code (core 165, as PyAV 18 ships it) reads memory it never wrote,
#   so the heap left by earlier work (decoding or encoding other videos) changed its rate control and the same
#   seed wrote other pixels (seen at 16-80 px; tests/test_video_io.py repeats it). Costs some bitrate, not quality.
# - one thread: the default thread count follows the CPU count, and x264's slices follow the threads.
X264_PINNED = {"mbtree": "0"}
X264_THREADS = 1


SHEET_FRAMES = 64  # a contact sheet of a longer clip shows this many frames, evenly spaced, labelled with their index


class VideoWriter:
    """Frames appended chunk by chunk to one video, so a long clip is never held whole: `format` "mp4" (H.264
    yuv420p at `crf`; odd heights / widths padded to even by repeating the last row / column), "gif", "frames" (a
    folder of 00000.png, ...) or "contact-sheet" (`total` frames expected: a longer clip's sheet shows
    SHEET_FRAMES of them, evenly spaced). Writes `path` itself, not atomically: `write_video` and
    `cli.common.ClipOutputs` write into a temporary place and publish it. Every chunk must have one frame size.

        with VideoWriter(tmp / "clip.mp4", fps=8) as writer:
            for chunk in chunks:
                writer.write(chunk)
    """

    def __init__(self, path: str | os.PathLike, fps: float = 8.0, format: str | None = None, crf: int = 18,
                 total: int | None = None):
        self.path, self.fps, self.crf, self.total = Path(path), fps, crf, total
        self.kind = video_format(self.path, format)
        self.rate = video_rate(fps)  # (checked before anything is written)
        self.count, self.size = 0, None
        self._container = self._stream = None
        self._sheet: dict[int, np.ndarray] = {}
        self._keep = None if total is None or total <= SHEET_FRAMES else \
            set(np.linspace(0, total - 1, SHEET_FRAMES).round().astype(int).tolist())

    def __enter__(self) -> "VideoWriter":
        return self

    def __exit__(self, kind, error, trace) -> None:
        if kind is None:
            self.close()
        elif self._container is not None:  # a failed write: release the file (the caller discards it)
            self._container.close()

    def write(self, frames) -> None:
        frames = _as_frames(frames)
        if self.size is None:
            self.size = frames.shape[1:3]
            self._open()
        elif frames.shape[1:3] != self.size:
            raise ValueError(f"every chunk of {self.path} must be {self.size[1]}x{self.size[0]}, got "
                             f"{frames.shape[2]}x{frames.shape[1]}")
        for frame in frames:
            self._write_frame(frame)
            self.count += 1

    def close(self) -> None:
        if self.count == 0:
            raise ValueError(f"no frames were written to {self.path}")
        if self._container is not None:
            for packet in self._stream.encode():
                self._container.mux(packet)
            self._container.close()
            self._container = None
        if self.kind == "contact-sheet":
            indices = sorted(self._sheet)
            sheet = make_contact_sheet(np.stack([self._sheet[i] for i in indices]), labels=indices)
            Image.fromarray(sheet).save(self.path, format="PNG")

    def _open(self) -> None:
        height, width = self.size
        if self.kind == "frames":
            self.path.mkdir(parents=True, exist_ok=True)
        elif self.kind in ("mp4", "gif"):
            self._container = av.open(str(self.path), "w", format=self.kind)
            if self.kind == "mp4":
                self._stream = self._container.add_stream("libx264", rate=self.rate)
                self._stream.pix_fmt = "yuv420p"
                self._stream.options = {"crf": str(self.crf), **X264_PINNED}
                self._stream.codec_context.thread_count = X264_THREADS
                height, width = height + height % 2, width + width % 2
            else:  # GIF delays are 1/100 s; browsers play shorter delays slowly
                self._stream = self._container.add_stream("gif", rate=min(self.rate, Fraction(50)))
                self._stream.pix_fmt = "pal8"
            self._stream.width, self._stream.height = width, height

    def _write_frame(self, frame: np.ndarray) -> None:
        if self.kind == "frames":
            digits = max(5, len(str((self.total or 0) - 1)))
            Image.fromarray(frame).save(self.path / f"{self.count:0{digits}d}.png")
        elif self.kind == "contact-sheet":
            if self._keep is None or self.count in self._keep:
                self._sheet[self.count] = frame
        else:
            video_frame = _mp4_frame(frame) if self.kind == "mp4" else _gif_frame(frame)
            for packet in self._stream.encode(video_frame):
                self._container.mux(packet)


def _mp4_frame(frame: np.ndarray):
    """yuv420p needs even sizes: pad by repeating the last row / column (nothing is cropped away)."""
    pad_h, pad_w = frame.shape[0] % 2, frame.shape[1] % 2
    if pad_h or pad_w:
        frame = np.pad(frame, ((0, pad_h), (0, pad_w), (0, 0)), mode="edge")
    return av.VideoFrame.from_ndarray(frame, format="rgb24")


def _gif_frame(frame: np.ndarray):
    """GIF through FFmpeg's encoder (PyAV), each frame quantised to its own 256-colour palette by Pillow.

    Not Pillow's GIF writer: it merges identical consecutive frames into one longer frame, so a clip with a
    still moment read back with fewer frames than were written. 8 fps is stored as 12 or 13 cs per frame.
    """
    image = Image.fromarray(frame).quantize(256)
    colours = np.asarray(image.getpalette()[:768], np.uint8).reshape(-1, 3)
    palette = np.zeros((256, 4), np.uint8)  # ARGB, opaque
    palette[:, 0] = 255
    palette[:len(colours), 1:] = colours
    return av.VideoFrame.from_ndarray((np.asarray(image), palette), format="pal8")


def make_contact_sheet(frames, cols: int | None = None, pad: int = 2, label: bool = True,
                       label_height: int = 12, labels=None) -> np.ndarray:
    """A grid of frames, each with its index (or `labels[i]`: the frame numbers of a subset) in a strip above it,
    as uint8 (H, W, 3).

    cols defaults to ceil(sqrt(f)). Size: W = cols * w + (cols + 1) * pad,
    H = rows * (h + label_height) + (rows + 1) * pad (label_height is 0 when label=False).
    """
    frames = _as_frames(frames)
    f, h, w, _ = frames.shape
    cols = cols or int(math.ceil(math.sqrt(f)))
    if cols < 1:
        raise ValueError(f"cols must be >= 1, got {cols}")
    rows = int(math.ceil(f / cols))
    strip = label_height if label else 0
    sheet = np.full((rows * (h + strip) + (rows + 1) * pad, cols * w + (cols + 1) * pad, 3), 255, np.uint8)
    for i, frame in enumerate(frames):
        r, c = divmod(i, cols)
        y, x = pad + r * (h + strip + pad), pad + c * (w + pad)
        sheet[y + strip:y + strip + h, x:x + w] = frame
    if label:
        image = Image.fromarray(sheet)
        draw = ImageDraw.Draw(image)
        for i in range(f):
            r, c = divmod(i, cols)
            text = str(i if labels is None else labels[i])
            draw.text((pad + c * (w + pad) + 1, pad + r * (h + strip + pad)), text, fill=(0, 0, 0))
        sheet = np.asarray(image).copy()
    return sheet


def write_contact_sheet(path: str | os.PathLike, frames, cols: int | None = None, pad: int = 2,
                        label: bool = True) -> Path:
    """Write `make_contact_sheet(frames, ...)` as a PNG, atomically. Returns the path."""
    path = Path(path)
    sheet = make_contact_sheet(frames, cols=cols, pad=pad, label=label)
    with atomic_path(path) as tmp:
        Image.fromarray(sheet).save(tmp, format="PNG")
    return path


def _is_frames_folder(path: Path) -> bool:
    """True for a folder holding only numbered PNG frames (what a "frames" write leaves), or nothing."""
    return path.is_dir() and all(p.suffix == ".png" and p.stem.isdigit() and p.is_file() for p in path.iterdir())


def check_write_target(path: str | os.PathLike, format: str | None = None) -> str:
    """Raise ValueError if `path` cannot take a video of its format without destroying something else: a file
    format where a folder is, a frames folder where a file or a folder of other things is, a file where a parent
    folder should be. Returns the format. Cheap: callers run it before expensive work."""
    path = Path(path)
    if str(path) in ("", "."):
        raise ValueError(f"output path {str(path)!r} is empty; give a name such as clip.mp4")
    kind = video_format(path, format)
    if kind == "frames":
        if path.exists() and not _is_frames_folder(path):
            what = "a file" if not path.is_dir() else "a folder holding other files"
            raise ValueError(f"{path} is {what}; a folder of PNG frames would replace it: choose a new name "
                             "(or a .mp4 / .gif / .png suffix)")
    elif path.is_dir():
        raise ValueError(f"{path} is an existing folder; give a file name such as clip.mp4")
    blocking = next((parent for parent in path.absolute().parents if parent.exists()), None)
    if blocking is not None and not blocking.is_dir():
        raise ValueError(f"cannot write {path}: {blocking} is a file, not a folder")
    return kind


WRITE_FORMATS = ("mp4", "gif", "frames", "contact-sheet")


def video_format(path: str | os.PathLike, format: str | None = None) -> str:
    """The write format for a path: .mp4/.mov/.mkv -> mp4, .gif -> gif, .png -> contact-sheet, no suffix ->
    frames (a folder of PNGs)."""
    if format is not None:
        if format not in WRITE_FORMATS:
            raise ValueError(f"unknown video format {format!r}; use one of {', '.join(WRITE_FORMATS)}")
        return format
    suffix = Path(path).suffix.lower()
    table = {".mp4": "mp4", ".mov": "mp4", ".mkv": "mp4", ".m4v": "mp4", ".gif": "gif", ".png": "contact-sheet",
             "": "frames"}
    if suffix not in table:
        raise ValueError(f"cannot tell the video format from {str(path)!r}: use a .mp4, .gif or .png (contact "
                         f"sheet) suffix, no suffix for a folder of PNG frames, or pass format=")
    return table[suffix]


def write_video(path: str | os.PathLike, frames, fps: float = 8.0, format: str | None = None,
                crf: int = 18) -> Path:
    """Write uint8 (f, h, w, 3) frames, atomically.

    format (default from the suffix, see `video_format`): "mp4" (H.264 yuv420p at `crf`; odd heights / widths
    padded to even by repeating the last row / column), "gif", "frames" (a folder of 00000.png, ...) or
    "contact-sheet" (one PNG grid with frame indices). An existing file of the same format is replaced; an
    existing frames folder is replaced only if it holds nothing but numbered PNGs (ValueError otherwise).
    Returns the path.
    """
    path = Path(path)
    frames = _as_frames(frames)
    kind = check_write_target(path, format)  # never replace a folder of other things (or a file) with frames
    video_rate(fps)  # validate before writing anything
    with (atomic_dir if kind == "frames" else atomic_path)(path) as tmp:
        with VideoWriter(tmp, fps, format=kind, crf=crf, total=len(frames)) as writer:
            writer.write(frames)
    return path
