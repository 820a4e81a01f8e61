"""Synthetic shapes: determinism, and captions that match what is drawn (colour, shape, direction of motion)."""
import csv

import numpy as np
import pytest

from vidiff.cli import main
from vidiff.data.synthetic import (BACKGROUND, COLORS, MOTIONS, SHAPES, caption, make_clip, sample_specs,
                                   write_shapes_dataset)
from vidiff.data.video_io import read_video, write_video


def colour_mask(frames: np.ndarray, rgb) -> np.ndarray:
    """Pixels closer to `rgb` than to the background or any other palette colour."""
    palette = np.array([BACKGROUND, *COLORS.values()], np.float64)
    distances = np.linalg.norm(frames[..., None, :].astype(np.float64) - palette, axis=-1)
    return distances.argmin(-1) == 1 + list(COLORS.values()).index(tuple(rgb))


def centroids(mask: np.ndarray) -> np.ndarray:
    """(f, 2) centre of mass (x, y) of a (f, h, w) mask."""
    ys, xs = np.mgrid[0:mask.shape[1], 0:mask.shape[2]]
    area = mask.sum((1, 2))
    return np.stack([(mask * xs).sum((1, 2)) / area, (mask * ys).sum((1, 2)) / area], -1)


def test_palette_shapes_motions():
    assert {"red", "green", "blue", "yellow"} <= set(COLORS)
    assert set(SHAPES) >= {"circle", "square", "triangle"}
    assert set(MOTIONS) >= {"moving left", "moving right", "moving up", "moving down"}
    assert caption("red", "circle", "moving left") == "a red circle moving left"
    for bad in [("pink", "circle", "moving left"), ("red", "hexagon", "moving left"), ("red", "circle", "spinning")]:
        with pytest.raises(ValueError, match="unknown"):
            caption(*bad)


def test_make_clip_deterministic():
    a = make_clip("blue", "triangle", "moving up", num_frames=6, size=32, seed=5)
    assert a.shape == (6, 32, 32, 3) and a.dtype == np.uint8
    np.testing.assert_array_equal(a, make_clip("blue", "triangle", "moving up", num_frames=6, size=32, seed=5))
    assert not np.array_equal(a, make_clip("blue", "triangle", "moving up", num_frames=6, size=32, seed=6))


@pytest.mark.parametrize("color", list(COLORS))
@pytest.mark.parametrize("motion", list(MOTIONS))
def test_clip_matches_caption(color, motion):
    frames = make_clip(color, "circle", motion, num_frames=8, size=48, seed=hash((color, motion)) % 1000)
    mask = colour_mask(frames, COLORS[color])
    assert (mask.sum((1, 2)) > 30).all()  # the shape is visible, whole, in every frame
    for other in COLORS:  # only anti-aliased edge pixels may look like another colour
        if other != color:
            assert colour_mask(frames, COLORS[other]).sum() < 0.1 * mask.sum()
    centre = centroids(mask)
    dx, dy = MOTIONS[motion]
    moving, still = (centre[:, 0], centre[:, 1]) if dx else (centre[:, 1], centre[:, 0])
    steps = np.diff(moving) * (dx + dy)
    assert (steps > 0.5).all(), f"{motion}: centroid steps {steps}"
    assert np.ptp(still) < 0.5  # no drift across the motion


@pytest.mark.parametrize("shape,fill", [("circle", np.pi / 4), ("square", 1.0), ("triangle", 0.5)])
def test_shape_matches_caption(shape, fill):
    """The shape's area over its bounding box's: pi/4 for a disc, 1 for a square, 1/2 for a triangle."""
    frames = make_clip("yellow", shape, "moving right", num_frames=2, size=96, seed=1)
    mask = colour_mask(frames[:1], COLORS["yellow"])[0]
    ys, xs = np.nonzero(mask)
    ratio = mask.sum() / ((ys.max() - ys.min() + 1) * (xs.max() - xs.min() + 1))
    assert ratio == pytest.approx(fill, abs=0.08)
    if shape == "triangle":  # apex up: the top rows are narrower than the bottom ones
        rows = mask.sum(1)[ys.min():ys.max() + 1]
        assert rows[: len(rows) // 4].mean() < rows[-len(rows) // 4:].mean() / 2


def test_sample_specs_balanced():
    specs = sample_specs(48, seed=0)
    assert len(set(specs)) == 48
    assert sample_specs(10, seed=1) == sample_specs(10, seed=1) != sample_specs(10, seed=2)


def test_write_shapes_dataset(tmp_path):
    manifest = write_shapes_dataset(tmp_path / "a", count=6, num_frames=5, size=32, seed=3)
    rows = list(csv.DictReader(manifest.open()))
    assert len(rows) == 6 and set(rows[0]) == {"path", "caption", "color", "shape", "motion"}
    for row in rows:
        video = tmp_path / "a" / row["path"]
        assert (video.with_suffix(".txt")).read_text().strip() == row["caption"]
        assert row["caption"] == caption(row["color"], row["shape"], row["motion"])
        clip = read_video(video, backend="pyav")
        assert clip.frames.shape == (5, 32, 32, 3) and clip.fps == pytest.approx(8.0)
        centre = centroids(colour_mask(clip.frames, COLORS[row["color"]]))
        dx, dy = MOTIONS[row["motion"]]
        moving = centre[:, 0] if dx else centre[:, 1]
        assert (np.diff(moving) * (dx + dy) > 0).all(), row
    # Same seed, same data; another seed, other data.
    again = write_shapes_dataset(tmp_path / "b", count=6, num_frames=5, size=32, seed=3)
    assert again.read_text() == manifest.read_text()
    for row in rows:
        np.testing.assert_array_equal(read_video(tmp_path / "a" / row["path"], backend="pyav").frames,
                                      read_video(tmp_path / "b" / row["path"], backend="pyav").frames)
    other = write_shapes_dataset(tmp_path / "c", count=6, num_frames=5, size=32, seed=4)
    assert other.read_text() != manifest.read_text()
    # Rewriting a shapes folder is fine; a folder of other things is refused.
    write_shapes_dataset(tmp_path / "a", count=2, num_frames=2, size=16, seed=0)
    assert len(list(csv.DictReader((tmp_path / "a" / "manifest.csv").open()))) == 2
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep me")
    with pytest.raises(FileExistsError, match="not a shapes dataset"):
        write_shapes_dataset(tmp_path / "mine", count=2)
    # Found in QA: any folder with a manifest.csv (a user's own dataset) counted as a shapes set and was replaced.
    (tmp_path / "mine" / "manifest.csv").write_text("path,caption\nclip.mp4,my holiday\n")
    with pytest.raises(FileExistsError, match="not a shapes dataset"):
        write_shapes_dataset(tmp_path / "mine", count=2)
    assert (tmp_path / "mine" / "notes.txt").read_text() == "keep me"
    write_shapes_dataset(tmp_path / "again", count=2, num_frames=2, size=16)  # an earlier shapes set is replaced
    write_shapes_dataset(tmp_path / "again", count=1, num_frames=2, size=16)
    assert sorted(p.name for p in (tmp_path / "again").iterdir()) == ["00000.mp4", "00000.txt", "manifest.csv"]


def test_cli_shapes_help_shows_defaults_and_an_unbroken_example(capsys):
    """Found in QA: the example line was wrapped mid-command (not copyable) and required options read
    "(default: None)"."""
    with pytest.raises(SystemExit):
        main(["data", "shapes", "--help"])
    text = capsys.readouterr().out
    assert "example: vidiff data shapes --out data/shapes --count 1000 --frames 16 --size 64 --seed 0\n" in text
    assert "(default: None)" not in text and "(default: 16)" in text and "(default: 0)" in text


def test_cli_shapes(tmp_path, capsys):
    out = tmp_path / "shapes"
    assert main(["data", "shapes", "--out", str(out), "--count", "3", "--frames", "4", "--size", "16",
                 "--seed", "1"]) == 0
    assert "wrote 3 clips" in capsys.readouterr().out
    assert sorted(p.name for p in out.iterdir()) == ["00000.mp4", "00000.txt", "00001.mp4", "00001.txt",
                                                     "00002.mp4", "00002.txt", "manifest.csv"]
    assert main(["data", "shapes", "--out", str(out), "--count", "0"]) == 2
    assert "--count" in capsys.readouterr().err
    # Found in QA: an odd --size wrote mp4s one pixel larger (H.264 pads) than the summary and manifest said.
    assert main(["data", "shapes", "--out", str(tmp_path / "odd"), "--count", "1", "--size", "33"]) == 2
    assert "--size must be even" in capsys.readouterr().err and not (tmp_path / "odd").exists()
    # Found in QA: a zero / NaN rate failed only inside the writer, with a message that did not name --fps.
    for fps in ("0", "nan"):
        assert main(["data", "shapes", "--out", str(tmp_path / "other"), "--count", "1", "--fps", fps]) == 2
        assert "--fps must be between 0.1 and 1000" in capsys.readouterr().err and not (tmp_path / "other").exists()


def test_shapes_dataset_bytes_do_not_depend_on_what_ran_before(tmp_path):
    """Found in QA: after other tests ran in the process, the same seed wrote other pixels. x264's AVX-512 code for
    macroblock-tree rate control reads memory it never wrote on small frames, so what earlier work left in the heap
    (decoded or encoded videos) changed the encoder's choices. The files must be byte-identical for a seed."""
    import hashlib

    def digests(folder):
        return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir())}

    reference = digests(write_shapes_dataset(tmp_path / "ref", count=6, num_frames=5, size=32, seed=3).parent)
    rng = np.random.default_rng(0)
    for round_ in range(6):
        for path in sorted((tmp_path / "ref").glob("*.mp4")):  # leave decoder and encoder memory in the heap
            read_video(path, backend="pyav")
            write_video(tmp_path / "other.mp4", rng.integers(0, 256, (5, 32, 32, 3), dtype=np.uint8), fps=8)
        again = write_shapes_dataset(tmp_path / f"again{round_}", count=6, num_frames=5, size=32, seed=3).parent
        assert digests(again) == reference, f"round {round_}"
