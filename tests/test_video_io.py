"""Video reading and writing: exact frame indices through both readers, bad files, round-trips, formats.

Test videos are written here with PyAV; frame i is a flat colour that encodes i, so a decoded frame tells which
source frame it is.
"""
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest

from vidiff.data import video_io
from vidiff.data.video_io import (ClipTooShortError, VideoReadError, clip_indices, make_contact_sheet, probe_video, read_video,
                                  video_rate, write_contact_sheet, write_video)

REAL_VIDEOS = Path(__file__).resolve().parents[2] / "shared/data/videos"
HAVE_DECORD = video_io._have_decord()
BACKENDS = ["pyav"] + (["decord"] if HAVE_DECORD else [])


def index_frame(i: int, height: int = 24, width: int = 32) -> np.ndarray:
    """A flat frame whose red and green levels encode i (< 256)."""
    return np.broadcast_to(np.array([16 + (i % 16) * 14, 16 + (i // 16) * 14, 128], np.uint8),
                           (height, width, 3)).copy()


def frame_ids(frames: np.ndarray) -> list[int]:
    mean = frames.reshape(len(frames), -1, 3).mean(1)
    return [int(round((g - 16) / 14)) * 16 + int(round((r - 16) / 14)) for r, g, _ in mean]


def write_pyav(path, num_frames=20, height=24, width=32, rate=Fraction(30000, 1001), audio=False, faststart=False,
               gop=None):
    options = {"movflags": "faststart"} if faststart else {}
    with av.open(str(path), "w", options=options) as container:
        stream = container.add_stream("libx264", rate=rate)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.options = {"crf": "8", **({"g": str(gop)} if gop else {})}
        if audio:
            sound = container.add_stream("aac", rate=44100)
            sound.layout = "mono"
        for i in range(num_frames):
            for packet in stream.encode(av.VideoFrame.from_ndarray(index_frame(i, height, width), format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
        if audio:
            for k in range(int(num_frames / float(rate) * 44100 / 1024) + 1):
                samples = np.sin(np.arange(1024, dtype=np.float32) / 10)[None] * 0.1
                frame = av.AudioFrame.from_ndarray(samples, format="fltp", layout="mono")
                frame.sample_rate, frame.pts = 44100, k * 1024
                for packet in sound.encode(frame):
                    container.mux(packet)
            for packet in sound.encode():
                container.mux(packet)
    return Path(path)


@pytest.fixture(scope="module")
def videos(tmp_path_factory):
    root = tmp_path_factory.mktemp("videos")
    files = {
        "plain": write_pyav(root / "plain.mp4", num_frames=20),
        "long": write_pyav(root / "long.mp4", num_frames=90, gop=10),
        "audio": write_pyav(root / "audio.mp4", num_frames=20, audio=True),
        "faststart": write_pyav(root / "faststart.mp4", num_frames=90, faststart=True),
    }
    data = files["plain"].read_bytes()
    (root / "truncated.mp4").write_bytes(data[: len(data) // 2])  # moov atom (at the end) lost
    data = files["faststart"].read_bytes()
    (root / "truncated_fs.mp4").write_bytes(data[: len(data) // 3])  # header intact, frames lost
    # An unknown codec tag: the container opens, no decoder exists.
    (root / "unsupported.mp4").write_bytes(files["plain"].read_bytes().replace(b"avc1", b"zzzz"))
    (root / "empty.mp4").write_bytes(b"")
    (root / "garbage.mp4").write_bytes(np.random.default_rng(0).integers(0, 256, 4000, dtype=np.uint8).tobytes())
    for name in ("truncated", "truncated_fs", "empty", "garbage", "unsupported"):
        files[name] = root / f"{name}.mp4"
    files["missing"] = root / "missing.mp4"
    return files


# ---------------------------------------------------------------------------------------------------------------
# Sampling arithmetic
# ---------------------------------------------------------------------------------------------------------------
def test_clip_indices_stride_and_fps():
    assert clip_indices(100, 4, stride=3, start=5).tolist() == [5, 8, 11, 14]
    assert clip_indices(10, None, stride=3, start=1).tolist() == [1, 4, 7]
    assert clip_indices(10, None).tolist() == list(range(10))
    # Target fps: step = source_fps / fps, indices floor(i * step + 0.5).
    assert clip_indices(100, 4, fps=10, source_fps=30).tolist() == [0, 3, 6, 9]
    step = 29.97 / 8
    assert clip_indices(100, 5, fps=8, source_fps=29.97).tolist() == [int(np.floor(i * step + 0.5))
                                                                      for i in range(5)] == [0, 4, 7, 11, 15]
    assert clip_indices(10, 6, fps=16, source_fps=8).tolist() == [0, 1, 1, 2, 2, 3]  # above the source: repeats
    assert clip_indices(10, 4, stride=3, start=0).tolist() == [0, 3, 6, 9]


def test_clip_indices_errors():
    with pytest.raises(ClipTooShortError, match="too short"):
        clip_indices(10, 4, stride=3, start=1)
    with pytest.raises(ClipTooShortError, match="past the end"):
        clip_indices(10, None, start=10)
    with pytest.raises(ValueError, match="either stride"):
        clip_indices(10, 2, stride=2, fps=5, source_fps=10)
    with pytest.raises(ValueError, match="stride"):
        clip_indices(10, 2, stride=0)
    with pytest.raises(ValueError, match="num_frames"):
        clip_indices(10, 0)
    # Found in QA: 2.5 frames gave 3; a NaN rate gave negative indices, an infinite one frame 0 repeated.
    with pytest.raises(ValueError, match="num_frames must be an integer"):
        clip_indices(10, 2.5)
    for fps in (float("nan"), float("inf")):
        with pytest.raises(ValueError, match="fps must be a finite number"):
            clip_indices(10, 3, fps=fps, source_fps=10)


# ---------------------------------------------------------------------------------------------------------------
# Reading
# ---------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("backend", BACKENDS)
def test_read_exact_indices(videos, backend):
    clip = read_video(videos["plain"], backend=backend)
    assert clip.frames.shape == (20, 24, 32, 3) and clip.frames.dtype == np.uint8
    assert frame_ids(clip.frames) == list(range(20))
    assert clip.fps == pytest.approx(30000 / 1001)
    frames, fps = read_video(videos["plain"], num_frames=4, stride=5, start=1, backend=backend)
    assert frame_ids(frames) == [1, 6, 11, 16]
    # Far into a longer clip with keyframes every 10 frames: the PyAV reader seeks, then counts.
    for start in (0, 9, 10, 11, 47, 73):
        clip = read_video(videos["long"], num_frames=5, stride=4, start=start, backend=backend)
        assert frame_ids(clip.frames) == list(range(start, start + 17, 4)), start
    clip = read_video(videos["long"], num_frames=6, fps=10, start=30, backend=backend)  # 29.97 -> 10 fps
    assert frame_ids(clip.frames) == [30 + int(np.floor(i * 2.997 + 0.5)) for i in range(6)]
    assert frame_ids(read_video(videos["long"], indices=[89, 3, 3, 50], backend=backend).frames) == [89, 3, 3, 50]


@pytest.mark.parametrize("backend", BACKENDS)
def test_audio_track_ignored(videos, backend):
    with av.open(str(videos["audio"])) as container:
        assert len(container.streams.audio) == 1
    clip = read_video(videos["audio"], num_frames=5, stride=3, start=2, backend=backend)
    assert frame_ids(clip.frames) == [2, 5, 8, 11, 14]


@pytest.mark.parametrize("backend", BACKENDS)
def test_resize(videos, backend):
    assert read_video(videos["plain"], num_frames=2, size=12, backend=backend).frames.shape == (2, 12, 16, 3)
    clip = read_video(videos["plain"], num_frames=2, size=(10, 14), backend=backend)
    assert clip.frames.shape == (2, 10, 14, 3) and frame_ids(clip.frames) == [0, 1]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("name,reason", [("missing", "not found"), ("empty", "empty"), ("garbage", "cannot open"),
                                         ("truncated", "cannot open"),
                                         ("unsupported", "unsupported video codec"),
                                         ("truncated_fs", "truncated|cannot decode|decord failed")])
def test_bad_files(videos, backend, name, reason):
    with pytest.raises(VideoReadError, match=reason) as error:
        read_video(videos[name], num_frames=60 if name == "truncated_fs" else None, backend=backend)
    assert str(videos[name]) in str(error.value)
    assert isinstance(error.value, ValueError)


@pytest.mark.parametrize("backend", BACKENDS)
def test_too_short(videos, backend):
    with pytest.raises(VideoReadError, match="too short") as error:
        read_video(videos["plain"], num_frames=8, stride=3, backend=backend)
    assert "plain.mp4" in str(error.value)
    with pytest.raises(VideoReadError, match="too short"):
        read_video(videos["plain"], indices=[20], backend=backend)


def test_bad_arguments(videos, monkeypatch):
    for bad in [dict(stride=0), dict(stride=2, fps=5), dict(num_frames=0), dict(start=-1)]:
        with pytest.raises(ValueError) as error:
            read_video(videos["plain"], **bad)
        assert not isinstance(error.value, VideoReadError)  # the caller's mistake, not the file's
    with pytest.raises(ValueError, match="unknown video backend"):
        read_video(videos["plain"], backend="opencv")
    monkeypatch.setattr(video_io, "_have_decord", lambda: False)
    with pytest.raises(ValueError, match="decord is not installed"):
        read_video(videos["plain"], backend="decord")
    assert read_video(videos["plain"], num_frames=2, backend="auto").frames.shape[0] == 2  # falls back to PyAV


@pytest.mark.skipif(not HAVE_DECORD, reason="decord not installed")
def test_backends_agree_on_synthetic(videos):
    for key in ("plain", "long", "audio"):
        a = read_video(videos[key], num_frames=6, stride=2, start=3, backend="decord")
        b = read_video(videos[key], num_frames=6, stride=2, start=3, backend="pyav")
        assert a.frames.shape == b.frames.shape and a.fps == pytest.approx(b.fps)
        assert np.abs(a.frames.astype(int) - b.frames).mean() < 1.0


@pytest.mark.skipif(not REAL_VIDEOS.exists(), reason="shared sample videos not present")
@pytest.mark.parametrize("name,count,fps,side", [("car-turn.mp4", 80, 10.0, 480), ("camel.mp4", 8, 5.0, 512),
                                                 ("white-swan.mp4", 8, 5.0, 512)])
def test_real_clips(name, count, fps, side):
    path = REAL_VIDEOS / name
    info = probe_video(path)
    assert (info.num_frames, info.fps, info.height, info.width) == (count, fps, side, side)
    clips = {b: read_video(path, num_frames=4, stride=2, start=count - 7, size=128, backend=b) for b in BACKENDS}
    for clip in clips.values():
        assert clip.frames.shape == (4, 128, 128, 3) and clip.indices.tolist() == [count - 7 + 2 * i for i in range(4)]
    if HAVE_DECORD:  # same frames, up to resampling / colour-conversion differences
        assert np.abs(clips["decord"].frames.astype(int) - clips["pyav"].frames).mean() < 2.0
    # The seeking PyAV reader gives what decoding everything gives.
    full = read_video(path, size=128, backend="pyav").frames
    assert len(full) == count
    np.testing.assert_array_equal(full[clips["pyav"].indices], clips["pyav"].frames)


def test_read_image(tmp_path):
    from PIL import Image

    image = np.random.default_rng(0).integers(0, 256, (10, 14, 3), dtype=np.uint8)
    Image.fromarray(image).save(tmp_path / "a.png")
    clip = read_video(tmp_path / "a.png")
    assert clip.frames.shape == (1, 10, 14, 3)
    np.testing.assert_array_equal(clip.frames[0], image)
    (tmp_path / "bad.png").write_bytes(b"not a png")
    with pytest.raises(VideoReadError, match="bad.png"):
        read_video(tmp_path / "bad.png")


# ---------------------------------------------------------------------------------------------------------------
# Writing
# ---------------------------------------------------------------------------------------------------------------
def shapes_frames(num_frames=8, size=32):
    from vidiff.data.synthetic import make_clip

    return make_clip("red", "circle", "moving right", num_frames, size, seed=3)


@pytest.mark.parametrize("fps,rate", [(29.97, Fraction(30000, 1001)), (30000 / 1001, Fraction(30000, 1001)),
                                      (Fraction(24000, 1001), Fraction(24000, 1001)), (8, Fraction(8)),
                                      (12.5, Fraction(25, 2))])
def test_mp4_round_trip_fps(tmp_path, fps, rate):
    assert video_rate(fps) == rate
    frames = shapes_frames()
    path = write_video(tmp_path / "clip.mp4", frames, fps)
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        assert stream.average_rate == rate
        assert stream.codec_context.name == "h264" and stream.codec_context.pix_fmt == "yuv420p"
    for backend in BACKENDS:
        clip = read_video(path, backend=backend)
        assert clip.fps == pytest.approx(float(rate), rel=1e-6)
        assert clip.frames.shape == frames.shape
        assert np.abs(clip.frames.astype(int) - frames).mean() < 3.0


def test_mp4_odd_size_is_padded(tmp_path):
    frames = np.random.default_rng(0).integers(0, 256, (3, 17, 23, 3), dtype=np.uint8)
    frames[:] = np.linspace(0, 255, 23, dtype=np.uint8)[None, None, :, None]  # smooth: codec-friendly
    clip = read_video(write_video(tmp_path / "odd.mp4", frames, 10), backend="pyav")
    assert clip.frames.shape == (3, 18, 24, 3)
    assert np.abs(clip.frames[:, :17, :23].astype(int) - frames).mean() < 3.0
    # the added row / column repeats the last one
    # the added row / column repeats the last one (neighbouring columns of the ramp differ by ~11.6)
    assert np.abs(clip.frames[:, 17].astype(int) - clip.frames[:, 16]).mean() < 3.0
    assert np.abs(clip.frames[:, :, 23].astype(int) - clip.frames[:, :, 22]).mean() < 5.0


def test_gif_round_trip(tmp_path):
    frames = shapes_frames()
    path = write_video(tmp_path / "clip.gif", frames, 10)
    clip = read_video(path)
    assert clip.frames.shape == frames.shape and clip.fps == pytest.approx(10.0)
    assert np.abs(clip.frames.astype(int) - frames).mean() < 3.0


def test_gif_keeps_repeated_frames(tmp_path):
    """Found in QA: Pillow's GIF writer merged identical consecutive frames (a still moment, a static clip), so
    4 written frames read back as 1."""
    frames = shapes_frames(num_frames=4)
    frames = np.concatenate([frames[:1], frames[:1], frames[:1], frames[1:]])  # 3 identical, then 3 moving
    clip = read_video(write_video(tmp_path / "still.gif", frames, 8))
    assert clip.frames.shape == frames.shape
    assert np.abs(clip.frames.astype(int) - frames).mean() < 3.0
    static = np.full((5, 8, 8, 3), 90, np.uint8)
    assert read_video(write_video(tmp_path / "static.gif", static, 8)).frames.shape == static.shape


def test_png_frames_folder(tmp_path):
    from PIL import Image

    frames = shapes_frames(num_frames=5)
    path = write_video(tmp_path / "frames", frames, 8)
    files = sorted(path.iterdir())
    assert [f.name for f in files] == [f"{i:05d}.png" for i in range(5)]
    np.testing.assert_array_equal(np.stack([np.asarray(Image.open(f)) for f in files]), frames)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary folder left


def test_contact_sheet(tmp_path):
    from PIL import Image

    frames = np.stack([index_frame(i, 16, 20) for i in range(7)])
    path = write_video(tmp_path / "sheet.png", frames, 8)  # .png -> contact sheet
    sheet = np.asarray(Image.open(path))
    cols, rows, pad, strip = 3, 3, 2, 12
    assert sheet.shape == (rows * (16 + strip) + (rows + 1) * pad, cols * 20 + (cols + 1) * pad, 3) == (92, 68, 3)
    for i in range(7):
        r, c = divmod(i, cols)
        y, x = pad + r * (16 + strip + pad) + strip, pad + c * (20 + pad)
        np.testing.assert_array_equal(sheet[y:y + 16, x:x + 20], frames[i])
    label = sheet[pad:pad + strip, pad:pad + 20]
    assert (label < 128).any()  # the index is drawn
    assert write_contact_sheet(tmp_path / "b.png", frames, cols=7).exists()
    assert make_contact_sheet(frames, cols=7, label=False).shape == (16 + 2 * pad, 7 * 20 + 8 * pad, 3)


def test_write_errors_and_atomicity(tmp_path, monkeypatch):
    frames = shapes_frames(num_frames=2)
    with pytest.raises(ValueError, match="uint8"):
        write_video(tmp_path / "a.mp4", frames.astype(np.float32), 8)
    with pytest.raises(ValueError, match="shape"):
        write_video(tmp_path / "a.mp4", frames[..., :2], 8)
    with pytest.raises(ValueError, match="format"):
        write_video(tmp_path / "a.avi", frames, 8)
    with pytest.raises(ValueError, match="fps"):
        write_video(tmp_path / "a.mp4", frames, 0)

    def crash(writer, frames):
        writer.path.write_bytes(b"half a file")
        raise OSError("disk full")

    monkeypatch.setattr(video_io.VideoWriter, "write", crash)
    with pytest.raises(OSError):
        write_video(tmp_path / "a.mp4", frames, 8)
    assert list(tmp_path.iterdir()) == []  # neither the file nor a temporary one


def test_frames_write_never_replaces_other_things(tmp_path):
    """Found in QA: a suffix-less path (a folder of PNG frames) replaced any existing folder, deleting its files."""
    frames = shapes_frames(num_frames=2)
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep me")
    with pytest.raises(ValueError, match="a folder holding other files"):
        write_video(tmp_path / "mine", frames, 8)
    assert (tmp_path / "mine" / "notes.txt").read_text() == "keep me"
    (tmp_path / "afile").write_text("keep me too")
    with pytest.raises(ValueError, match="is a file"):
        write_video(tmp_path / "afile", frames, 8)
    with pytest.raises(ValueError, match="is a file, not a folder"):
        write_video(tmp_path / "afile" / "clip.mp4", frames, 8)
    (tmp_path / "clip.mp4").mkdir()
    with pytest.raises(ValueError, match="existing folder"):
        write_video(tmp_path / "clip.mp4", frames, 8)
    assert (tmp_path / "afile").read_text() == "keep me too"
    # An earlier frames folder is replaced as a file would be.
    write_video(tmp_path / "frames", frames, 8)
    write_video(tmp_path / "frames", frames[:1], 8)
    assert sorted(p.name for p in (tmp_path / "frames").iterdir()) == ["00000.png"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["afile", "clip.mp4", "frames", "mine"]


class _ContainerProxy:
    """A PyAV container whose methods a test can override one at a time."""

    def __init__(self, container):
        self.container = container

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.container.close()

    def __getattr__(self, name):
        return getattr(self.container, name)


def test_pyav_seek_overshoot_falls_back(videos, monkeypatch):
    """If a seek lands past the first wanted frame, the PyAV reader decodes from the start instead."""
    real_open = av.open
    seeks = []

    class Overshooting(_ContainerProxy):
        def seek(self, offset, **kwargs):
            stream = kwargs["stream"]
            extra = int(40 / float(stream.average_rate) / stream.time_base) if not seeks else 0  # 40 frames on
            seeks.append(offset + extra)
            return self.container.seek(offset + extra, **kwargs)

    monkeypatch.setattr(av, "open", lambda *args, **kwargs: Overshooting(real_open(*args, **kwargs)))
    clip = read_video(videos["long"], num_frames=4, stride=3, start=12, backend="pyav")
    assert len(seeks) == 2 and frame_ids(clip.frames) == [12, 15, 18, 21]


@pytest.mark.parametrize("backend", BACKENDS)
def test_very_short_clips(tmp_path, backend):
    for count in (1, 2):
        frames = np.stack([index_frame(i, 16, 16) for i in range(count)])
        clip = read_video(write_video(tmp_path / f"{count}.mp4", frames, 5), backend=backend)
        assert frame_ids(clip.frames) == list(range(count))
    assert frame_ids(read_video(tmp_path / "2.mp4", num_frames=2, fps=10, backend=backend).frames) == [0, 1]


def test_pyav_failed_seek_decodes_from_the_start(videos, monkeypatch):
    """Found in QA: in a truncated file the seek itself can fail (EPERM); a clip starting past frame 0 (the datasets'
    random start) was then reported as "cannot decode (PermissionError: Operation not permitted)" instead of
    reading on from the start (and calling the file truncated only if frames are really missing)."""
    real_open = av.open

    class SeekFails(_ContainerProxy):
        def seek(self, offset, **kwargs):
            raise av.error.PermissionError(1, "Operation not permitted")

    monkeypatch.setattr(av, "open", lambda *args, **kwargs: SeekFails(real_open(*args, **kwargs)))
    clip = read_video(videos["long"], num_frames=4, stride=3, start=12, backend="pyav")
    assert frame_ids(clip.frames) == [12, 15, 18, 21]


@pytest.mark.skipif(not HAVE_DECORD, reason="decord not installed")
def test_damaged_file_is_one_line_on_stderr(tmp_path):
    """Found in QA: a file whose header is intact but frames are cut made decord's FFmpeg print four raw lines
    ("[buffer @ 0x...] Unable to parse option value ...") to stderr besides vidiff's own one-line reason. Run in
    a subprocess: FFmpeg writes to the process's stderr, which capsys cannot see."""
    import subprocess
    import sys

    frames = shapes_frames(num_frames=8, size=64)
    write_video(tmp_path / "whole.mp4", frames, 8)
    data = (tmp_path / "whole.mp4").read_bytes()
    cut = tmp_path / "cut.mp4"
    for size in range(len(data) - 64, len(data) // 2, -64):  # the first cut that keeps the header, loses frames
        cut.write_bytes(data[:size])
        try:
            read_video(cut, backend="pyav")
        except VideoReadError as e:
            if "truncated" in str(e):
                break
    else:
        pytest.skip("no cut of this file keeps its header and loses frames")
    code = ("from vidiff.data import read_video\n"
            f"try:\n    read_video({str(cut)!r}, backend='auto')\nexcept ValueError as e:\n    print(e)\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert "truncated" in result.stdout and result.stderr.strip() == ""


def test_mp4_bytes_do_not_depend_on_earlier_work(tmp_path):
    """Found in QA (issue 8): the same frames encoded to other bytes (and other pixels) after other videos were
    encoded and decoded in the process: x264's AVX-512 macroblock-tree code reads memory it never wrote, so the
    heap's leftovers steered its rate control. Without the pinned settings this fails on most runs on a CPU with
    AVX-512 (the heap is luck); the settings written into the stream are checked exactly."""
    import hashlib
    import re

    from vidiff.data.synthetic import make_clip

    rng = np.random.default_rng(0)
    clip = make_clip("red", "circle", "moving left", num_frames=5, size=32, seed=1)
    digest = lambda path: hashlib.sha256(path.read_bytes()).hexdigest()  # noqa: E731
    reference = digest(write_video(tmp_path / "clip.mp4", clip, fps=8))
    changed = 0
    for round_ in range(60):  # leave other videos' encoder and decoder memory in the heap
        side = 32 if round_ % 2 else int(rng.integers(8, 33)) * 2
        write_video(tmp_path / "other.mp4", rng.integers(0, 256, (5, side, side, 3), dtype=np.uint8), fps=8)
        read_video(tmp_path / "other.mp4", backend="pyav")
        changed += digest(write_video(tmp_path / "clip.mp4", clip, fps=8)) != reference
    assert changed == 0, f"{changed} of 60 writes of the same frames gave other bytes"
    # x264 records its settings in the stream (an SEI message): macroblock-tree off, one thread whatever the CPU.
    settings = re.search(rb"options: ([^\x00]+)", (tmp_path / "clip.mp4").read_bytes()).group(1).decode().split()
    assert {"mbtree=0", "threads=1", "lookahead_threads=1"} <= set(settings), settings


def write_rotated(path, rotation: int, num_frames: int = 3):
    """A 24x32 (h x w) clip with a red block in the stored top-left corner and a display matrix turning it
    `rotation` degrees counterclockwise, as phones store sideways recordings."""
    frame = np.full((24, 32, 3), 30, np.uint8)
    frame[:8, :16] = [230, 30, 30]
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=8)
        stream.width, stream.height, stream.pix_fmt = 32, 24, "yuv420p"
        stream.options = {"crf": "0"}
        stream.set_display_rotation(rotation)
        for _ in range(num_frames):
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return Path(path)


def ffmpeg_frame(path, height: int, width: int) -> np.ndarray:
    """The first frame as the ffmpeg command line shows it (it applies the display matrix): the reference."""
    import subprocess

    import imageio_ffmpeg

    raw = subprocess.run([imageio_ffmpeg.get_ffmpeg_exe(), "-loglevel", "error", "-i", str(path), "-frames:v", "1",
                          "-f", "rawvideo", "-pix_fmt", "rgb24", "-"], capture_output=True, check=True).stdout
    return np.frombuffer(raw, np.uint8).reshape(height, width, 3)


@pytest.mark.parametrize("rotation", [90, 180, 270])
@pytest.mark.parametrize("backend", BACKENDS)
def test_rotated_videos_read_upright(tmp_path, rotation, backend):
    """Found in QA (issue 8): PyAV returned phone videos unrotated and decord garbled them, so the two readers
    disagreed by 60+ per pixel and a resize squashed the clip to the stored aspect. Both give what players show."""
    path = write_rotated(tmp_path / f"r{rotation}.mp4", rotation)
    upright = (32, 24) if rotation in (90, 270) else (24, 32)
    info = probe_video(path)
    assert (info.height, info.width, info.rotation) == (*upright, rotation)
    clip = read_video(path, backend=backend)
    assert clip.frames.shape == (3, *upright, 3)
    reference = ffmpeg_frame(path, *upright).astype(int)
    assert np.abs(clip.frames[0].astype(int) - reference).max() <= 2
    np.testing.assert_array_equal(clip.frames[0], np.rot90(read_video(write_rotated(tmp_path / "plain.mp4", 0),
                                                                      backend=backend).frames[0], rotation // 90))
    resized = read_video(path, backend=backend, size=12).frames  # shorter side 12, the displayed aspect kept
    assert resized.shape == (3, *(12 * s // 24 for s in upright), 3)
    block = resized[0, ..., 0] > 130  # the red block is where the player shows it
    corner = {90: (slice(-8, None), slice(0, 4)), 180: (slice(-4, None), slice(-8, None)),
              270: (slice(0, 8), slice(-4, None))}[rotation]
    assert block[corner].mean() > 0.9 and block.mean() < 0.3
    # The rotation is read once per file version: a file replaced at the same path is read again.
    import os

    os.replace(write_rotated(tmp_path / "new.mp4", 0), path)
    assert probe_video(path).rotation == 0 and read_video(path, backend=backend).frames.shape == (3, 24, 32, 3)


def write_variable_rate(path, pts_ms):
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=25)
        stream.width, stream.height, stream.pix_fmt = 32, 24, "yuv420p"
        stream.codec_context.time_base = Fraction(1, 1000)
        for i, pts in enumerate(pts_ms):
            frame = av.VideoFrame.from_ndarray(index_frame(i), format="rgb24")
            frame.pts, frame.time_base = pts, Fraction(1, 1000)
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return Path(path)


def test_variable_frame_rate_is_detected_and_fps_sampling_warns_once(tmp_path):
    """Found in QA (issue 8): `fps=` sampling of a variable-frame-rate file (a burst of frames, then a pause)
    silently used the average rate. The file is flagged, and sampling by rate warns once per file."""
    import warnings

    burst = write_variable_rate(tmp_path / "vfr.mp4", [0, 40, 80, 120, 160, 1000, 1040, 1080, 1120, 2000])
    steady = write_variable_rate(tmp_path / "cfr.mp4", [40 * i for i in range(10)])
    assert probe_video(burst).variable_rate and not probe_video(steady).variable_rate
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for _ in range(2):
            read_video(burst, num_frames=3, fps=4, backend="pyav")
        read_video(burst, num_frames=3, stride=2, backend="pyav")  # frame counts, no rates: nothing to warn of
        read_video(steady, num_frames=3, fps=10, backend="pyav")
    messages = [str(w.message) for w in caught if "variable frame rate" in str(w.message)]
    assert len(messages) == 1 and str(burst) in messages[0]


@pytest.mark.parametrize("suffix", [".mp4", ".gif", ""])
def test_a_clip_written_in_chunks_equals_it_written_whole(tmp_path, suffix):
    """VideoWriter (what streamed stage runs write with) appends chunks: the same bytes as one write_video."""
    from vidiff.data.video_io import VideoWriter

    frames = shapes_frames(num_frames=7)
    write_video(tmp_path / f"whole{suffix}", frames, 8)
    with VideoWriter(tmp_path / f"chunks{suffix}", 8, total=7) as writer:
        for start in range(0, 7, 3):
            writer.write(frames[start:start + 3])
    if suffix:
        assert (tmp_path / f"chunks{suffix}").read_bytes() == (tmp_path / f"whole{suffix}").read_bytes()
    else:
        whole, chunks = (sorted((tmp_path / name).iterdir()) for name in ("whole", "chunks"))
        assert [p.name for p in whole] == [p.name for p in chunks]
        assert all(a.read_bytes() == b.read_bytes() for a, b in zip(whole, chunks))
    with pytest.raises(ValueError, match="every chunk"), VideoWriter(tmp_path / "bad.mp4", 8) as writer:
        writer.write(frames)
        writer.write(frames[:, :8])


def test_a_long_clips_contact_sheet_shows_spaced_frames(tmp_path):
    from PIL import Image

    from vidiff.data.video_io import SHEET_FRAMES

    frames = np.random.default_rng(0).integers(0, 255, (100, 8, 8, 3), dtype=np.uint8)
    write_video(tmp_path / "sheet.png", frames, 8)
    spaced = np.linspace(0, 99, SHEET_FRAMES).round().astype(int)
    expected = make_contact_sheet(frames[spaced], labels=spaced.tolist())
    assert np.array_equal(np.asarray(Image.open(tmp_path / "sheet.png")), expected)
    assert not np.array_equal(expected, make_contact_sheet(frames[spaced]))  # (the labels are the frame numbers)
