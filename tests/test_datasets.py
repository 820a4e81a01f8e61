"""VideoDataset: manifests, clip sampling and transforms against a direct decode, bad files, workers, sharding."""
import json
import logging

import numpy as np
import pytest
import torch

from vidiff.data.datasets import VideoDataset, collate, cover_size, load_manifest
from vidiff.data.video_io import read_video, write_video


def index_frame(i: int, height: int, width: int) -> np.ndarray:
    """A flat frame whose red and green levels encode i (< 256)."""
    return np.broadcast_to(np.array([16 + (i % 16) * 14, 16 + (i // 16) * 14, 128], np.uint8),
                           (height, width, 3)).copy()


def frame_ids(pixel_values: torch.Tensor) -> list[int]:
    """(c, f, h, w) in [-1, 1] -> the index encoded in each frame."""
    mean = ((pixel_values + 1) * 127.5).mean((2, 3)).T.numpy()
    return [int(round((g - 16) / 14)) * 16 + int(round((r - 16) / 14)) for r, g, _ in mean]


def index_video(path, num_frames, height=24, width=32, fps=30.0):
    return write_video(path, np.stack([index_frame(i, height, width) for i in range(num_frames)]), fps)


def textured_video(path, num_frames=12, height=24, width=32, seed=0):
    """Smooth random frames (so crops and flips are visible and survive the codec)."""
    rng = np.random.default_rng(seed)
    base = rng.integers(0, 256, (num_frames, height // 4, width // 4, 3)).astype(np.uint8)
    return write_video(path, base.repeat(4, 1).repeat(4, 2), 10.0)


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """Five good clips with captions, and the bad files of every kind."""
    root = tmp_path_factory.mktemp("clips")
    for i in range(5):
        index_video(root / f"good{i}.mp4", 20 + i)
        (root / f"good{i}.txt").write_text(f"clip number {i}\n")
    (root / "empty.mp4").write_bytes(b"")
    (root / "garbage.mp4").write_bytes(np.random.default_rng(1).integers(0, 256, 3000, dtype=np.uint8).tobytes())
    data = (root / "good0.mp4").read_bytes()
    (root / "truncated.mp4").write_bytes(data[: len(data) // 2])
    (root / "unsupported.mp4").write_bytes(data.replace(b"avc1", b"zzzz"))  # no decoder for this codec tag
    index_video(root / "short.mp4", 3)
    return root


def bad_manifest(folder, tmp_path):
    rows = [{"path": str(folder / f"good{i}.mp4"), "caption": f"clip number {i}"} for i in range(5)]
    bad = ["missing.mp4", "empty.mp4", "garbage.mp4", "truncated.mp4", "unsupported.mp4", "short.mp4"]
    rows[1:1] = [{"path": str(folder / name), "caption": "bad"} for name in bad]
    manifest = tmp_path / "manifest.jsonl"
    manifest.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return manifest, bad


# ---------------------------------------------------------------------------------------------------------------
# Manifests
# ---------------------------------------------------------------------------------------------------------------
def test_folder_manifest(folder):
    dataset = VideoDataset(folder, num_frames=4, height=16, width=16, stride=2)
    assert len(dataset) == 10  # five good + five bad videos (the bad ones have no .txt: empty prompt)
    sample = dataset[[e.path for e in dataset.entries].index(str(folder / "good2.mp4"))]
    assert sample["pixel_values"].shape == (3, 4, 16, 16) and sample["pixel_values"].dtype == torch.float32
    assert -1 <= sample["pixel_values"].min() and sample["pixel_values"].max() <= 1
    assert sample["prompt"] == "clip number 2" and sample["num_skipped"] == 0 and not sample["is_image"]


def test_table_manifests(folder, tmp_path):
    (tmp_path / "a.csv").write_text("file,text\n" + "".join(f"{folder}/good{i}.mp4,caption {i}\n" for i in range(3)))
    entries = load_manifest(tmp_path / "a.csv", path_column="file", caption_column="text")
    assert [(e.path, e.caption) for e in entries] == [(f"{folder}/good{i}.mp4", f"caption {i}") for i in range(3)]
    # WebVid: videoid,name,page_dir with a path template, relative to root=
    (tmp_path / "webvid.csv").write_text("videoid,name,page_dir\n1,a dog,d1\n2,a cat,d2\n")
    entries = load_manifest(tmp_path / "webvid.csv", caption_column="name", path_template="{page_dir}/{videoid}.mp4",
                            root=folder)
    assert [(e.path, e.caption) for e in entries] == [(f"{folder}/d1/1.mp4", "a dog"), (f"{folder}/d2/2.mp4", "a cat")]
    (tmp_path / "b.jsonl").write_text('{"path": "x.mp4", "caption": "x"}\n\n{"path": "y.mp4", "caption": "y"}\n')
    assert [e.path for e in load_manifest(tmp_path / "b.jsonl")] == [str(tmp_path / "x.mp4"), str(tmp_path / "y.mp4")]


def test_manifest_errors(folder, tmp_path):
    (tmp_path / "a.csv").write_text("path,text\nx.mp4,hi\n")
    with pytest.raises(ValueError, match="no caption column 'caption'.*path, text"):
        VideoDataset(tmp_path / "a.csv", num_frames=2, height=8, width=8)
    with pytest.raises(ValueError, match="no path column 'file'"):
        load_manifest(tmp_path / "a.csv", path_column="file", caption_column="text")
    with pytest.raises(ValueError, match="needs column 'page_dir'"):
        load_manifest(tmp_path / "a.csv", caption_column="text", path_template="{page_dir}/{path}")
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "notes.txt").write_text("no videos here")
    with pytest.raises(ValueError, match="holds no videos"):
        VideoDataset(tmp_path / "empty", num_frames=2, height=8, width=8)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        VideoDataset(tmp_path / "nope", num_frames=2, height=8, width=8)
    (tmp_path / "bad.jsonl").write_text('{"path": "x.mp4"\n')
    with pytest.raises(ValueError, match="bad.jsonl:1: not valid JSON"):
        load_manifest(tmp_path / "bad.jsonl")
    (tmp_path / "none.csv").write_text("path,caption\nmissing1.mp4,a\nmissing2.mp4,b\n")
    with pytest.raises(ValueError, match="none of the 2 files"):
        VideoDataset(tmp_path / "none.csv", num_frames=2, height=8, width=8)
    with pytest.raises(ValueError, match="needs a prompt"):
        VideoDataset(folder / "short.mp4", num_frames=2, height=8, width=8)
    for bad in [dict(num_frames=0), dict(stride=0), dict(fps=-1), dict(backend="x"), dict(repeat=0)]:
        with pytest.raises(ValueError):
            VideoDataset(folder, **{"num_frames": 2, "height": 8, "width": 8, **bad})


def test_single_video(folder):
    dataset = VideoDataset(folder / "good1.mp4", num_frames=3, height=8, width=8, prompt="one clip", repeat=4)
    assert len(dataset) == 4
    assert {dataset[i]["prompt"] for i in range(4)} == {"one clip"}
    assert {dataset[i]["path"] for i in range(4)} == {str(folder / "good1.mp4")}


# ---------------------------------------------------------------------------------------------------------------
# Clip sampling and transforms
# ---------------------------------------------------------------------------------------------------------------
def test_eval_clip_is_centred(tmp_path):
    index_video(tmp_path / "v.mp4", 20)
    dataset = VideoDataset(tmp_path / "v.mp4", num_frames=4, height=8, width=8, stride=3, train=False, prompt="p")
    assert frame_ids(dataset[0]["pixel_values"]) == [5, 8, 11, 14]  # span 10 of 20: start (20 - 10) // 2
    dataset = VideoDataset(tmp_path / "v.mp4", num_frames=4, height=8, width=8, fps=10, train=False, prompt="p")
    assert frame_ids(dataset[0]["pixel_values"]) == [5, 8, 11, 14]  # 30 fps -> 10 fps is a step of 3
    dataset = VideoDataset(tmp_path / "v.mp4", num_frames=3, height=8, width=8, fps=4, train=False, prompt="p")
    # step 7.5: span floor(2 * 7.5 + 0.5) + 1 = 16, start (20 - 16) // 2 = 2, then 2 + floor(i * 7.5 + 0.5)
    assert frame_ids(dataset[0]["pixel_values"]) == [2, 10, 17]


def test_train_clip_start_is_random_and_reproducible(tmp_path):
    index_video(tmp_path / "v.mp4", 30)
    dataset = VideoDataset(tmp_path / "v.mp4", num_frames=4, height=8, width=8, stride=2, prompt="p", repeat=20,
                           seed=7)
    starts = [frame_ids(dataset[i]["pixel_values"])[0] for i in range(20)]
    assert all(frame_ids(dataset[i]["pixel_values"]) == [s + 2 * k for k in range(4)] for i, s in enumerate(starts[:3]))
    assert min(starts) >= 0 and max(starts) <= 30 - 7 and len(set(starts)) > 5
    again = VideoDataset(tmp_path / "v.mp4", num_frames=4, height=8, width=8, stride=2, prompt="p", repeat=20, seed=7)
    assert [frame_ids(again[i]["pixel_values"])[0] for i in range(20)] == starts
    again.set_epoch(1)
    assert [frame_ids(again[i]["pixel_values"])[0] for i in range(20)] != starts


def test_resize_crop_matches_direct_decode(tmp_path):
    path = textured_video(tmp_path / "t.mp4", num_frames=12, height=24, width=32)
    dataset = VideoDataset(path, num_frames=4, height=16, width=16, stride=2, train=False, prompt="p",
                           backend="pyav")
    assert cover_size(24, 32, 16, 16) == (16, 21)
    frames = read_video(path, indices=[2, 4, 6, 8], size=(16, 21), backend="pyav").frames[:, :, 2:18]  # centre
    expected = torch.from_numpy(frames).permute(3, 0, 1, 2).float() / 127.5 - 1
    torch.testing.assert_close(dataset[0]["pixel_values"], expected, rtol=0, atol=1e-6)


def test_random_crop_and_flip(tmp_path):
    path = textured_video(tmp_path / "t.mp4", num_frames=8, height=24, width=32, seed=2)
    options = dict(num_frames=2, height=16, width=16, stride=1, prompt="p", repeat=12, seed=3, backend="pyav")
    plain, flipped = VideoDataset(path, **options), VideoDataset(path, flip=True, **options)
    full = torch.from_numpy(read_video(path, size=(16, 21), backend="pyav").frames).permute(3, 0, 1, 2)
    full = full.float() / 127.5 - 1  # c f h w
    n_flipped, offsets = 0, set()
    for i in range(12):
        a, b = plain[i]["pixel_values"], flipped[i]["pixel_values"]
        matches = [x for x in range(6) for s in range(7) if torch.equal(full[:, s:s + 2, :, x:x + 16], a)]
        assert matches, "a crop of the resized frames"
        offsets.add(matches[0])
        if torch.equal(a, b):
            continue
        assert torch.equal(a.flip(-1), b)
        n_flipped += 1
    assert 0 < n_flipped < 12 and len(offsets) > 1


def test_images(tmp_path):
    from PIL import Image

    Image.fromarray(np.full((20, 30, 3), 200, np.uint8)).save(tmp_path / "img.png")
    (tmp_path / "img.txt").write_text("a picture")
    index_video(tmp_path / "vid.mp4", 10)
    dataset = VideoDataset(tmp_path, num_frames=4, height=8, width=8, train=False)
    samples = {s["path"]: s for s in (dataset[0], dataset[1])}
    image = samples[str(tmp_path / "img.png")]
    assert image["pixel_values"].shape == (3, 1, 8, 8) and image["is_image"] and image["prompt"] == "a picture"
    assert torch.allclose(image["pixel_values"], torch.tensor(200 / 127.5 - 1))
    with pytest.raises(ValueError, match="separate batches"):
        collate(list(samples.values()))
    as_video = VideoDataset(tmp_path, num_frames=4, height=8, width=8, train=False, image_as_video=True)
    batch = collate([as_video[0], as_video[1]])
    assert batch["pixel_values"].shape == (2, 3, 4, 8, 8) and batch["is_image"].tolist() == [True, False]
    assert len(VideoDataset(tmp_path, num_frames=4, height=8, width=8, image_ok=False)) == 1


# ---------------------------------------------------------------------------------------------------------------
# Bad files
# ---------------------------------------------------------------------------------------------------------------
def test_bad_files_skipped_counted_replaced(folder, tmp_path, caplog):
    manifest, bad = bad_manifest(folder, tmp_path)
    dataset = VideoDataset(manifest, num_frames=4, height=8, width=8, stride=2)
    good = {str(folder / f"good{i}.mp4") for i in range(5)}
    with caplog.at_level(logging.WARNING, logger="vidiff.data"):
        first = [dataset[i] for i in range(len(dataset))]
        second = [dataset[i] for i in range(len(dataset))]
    for i, sample in enumerate(first):
        assert sample["path"] in good
        # a bad sample counts itself, plus any bad file its replacement search met first
        assert (sample["num_skipped"] >= 1) if 1 <= i <= len(bad) else (sample["num_skipped"] == 0)
        assert sample["num_skipped"] == second[i]["num_skipped"] and sample["path"] == second[i]["path"]
    # One warning line per bad file, naming it and the reason, however often it is met.
    lines = [r.getMessage() for r in caplog.records]
    for name, reason in zip(bad, ["not found", "empty", "cannot open", "cannot open", "unsupported", "too short"]):
        hits = [line for line in lines if name in line]
        assert len(hits) == 1 and reason in hits[0] and "\n" not in hits[0], (name, hits)
    assert set(dataset.bad_files) == {str(folder / name) for name in bad}
    # The replacement is deterministic: a fresh dataset (another process) picks the same ones.
    fresh = VideoDataset(manifest, num_frames=4, height=8, width=8, stride=2)
    assert [fresh[i]["path"] for i in range(1, 7)] == [s["path"] for s in first[1:7]]


def test_all_bad_manifest_stops(folder, tmp_path):
    rows = "".join(f"{folder}/{name},x\n" for name in ["empty.mp4", "garbage.mp4", "truncated.mp4", "short.mp4"])
    (tmp_path / "bad.csv").write_text("path,caption\n" + rows)
    dataset = VideoDataset(tmp_path / "bad.csv", num_frames=4, height=8, width=8, stride=2)
    with pytest.raises(ValueError, match="all 4 files .* unreadable or too short"):
        dataset[0]
    with pytest.raises(ValueError, match="all 4 files"):  # again, from the cache of known-bad files
        dataset[2]


# ---------------------------------------------------------------------------------------------------------------
# Workers and sharding
# ---------------------------------------------------------------------------------------------------------------
def test_dataloader_workers(folder, tmp_path):
    manifest, bad = bad_manifest(folder, tmp_path)
    dataset = VideoDataset(manifest, num_frames=4, height=8, width=8, stride=2, train=False)
    reference = [dataset[i] for i in range(len(dataset))]
    loader = torch.utils.data.DataLoader(dataset, batch_size=3, num_workers=2, collate_fn=collate)
    batches = list(loader)
    assert [p for b in batches for p in b["path"]] == [s["path"] for s in reference]
    assert sum(int(b["num_skipped"].sum()) for b in batches) == sum(s["num_skipped"] for s in reference) >= len(bad)
    pixels = torch.cat([b["pixel_values"] for b in batches])
    torch.testing.assert_close(pixels, torch.stack([s["pixel_values"] for s in reference]), rtol=0, atol=0)


@pytest.mark.parametrize("shuffle", [False, True])
def test_distributed_sampler_shards_are_disjoint(folder, shuffle):
    dataset = VideoDataset(folder, num_frames=2, height=8, width=8, repeat=2)  # 20 samples
    seen = []
    for rank in range(2):
        sampler = torch.utils.data.DistributedSampler(dataset, num_replicas=2, rank=rank, shuffle=shuffle, seed=0)
        seen.append(list(sampler))
        loader = torch.utils.data.DataLoader(dataset, batch_size=3, sampler=sampler, collate_fn=collate)
        assert sum(len(b["path"]) for b in loader) == 10
    assert not set(seen[0]) & set(seen[1]) and set(seen[0]) | set(seen[1]) == set(range(20))


def test_accelerate_sharding(folder):
    from accelerate.data_loader import prepare_data_loader

    dataset = VideoDataset(folder, num_frames=2, height=8, width=8, train=False)  # bad files among them are replaced
    paths = []
    for rank in range(2):
        loader = torch.utils.data.DataLoader(torch.utils.data.Subset(dataset, range(8)), batch_size=2,
                                             collate_fn=collate, num_workers=1)
        sharded = prepare_data_loader(loader, device=torch.device("cpu"), num_processes=2, process_index=rank,
                                      put_on_device=False)
        paths.append([(i, p) for i, b in enumerate(sharded) for p in b["path"]])
    assert len(paths[0]) == len(paths[1]) == 4
    # ranks take alternate batches: rank 0 gets samples 0-1, 4-5; rank 1 gets 2-3, 6-7
    expected = [dataset[i]["path"] for i in range(8)]
    assert [p for _, p in paths[0]] == expected[0:2] + expected[4:6]
    assert [p for _, p in paths[1]] == expected[2:4] + expected[6:8]
