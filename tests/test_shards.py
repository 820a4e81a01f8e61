"""`vidiff data shard` and training from tar shards (data.shards) and in buckets (data.buckets), on tiny clips."""
import functools
import http.server
import json
import re
import threading
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch

from vidiff.cli import main
from vidiff.data import VideoDataset
from vidiff.data.shards import ShardDataset, parse_size, resolve_shards, write_shards
from vidiff.data.synthetic import write_shapes_dataset

pytestmark = pytest.mark.usefixtures("one_thread")  # (tests/conftest.py)


@pytest.fixture(scope="module")
def shapes(tmp_path_factory):
    """6 clips of 6 frames at 20 px, one of them broken (an empty file with a caption)."""
    root = tmp_path_factory.mktemp("shards")
    manifest = write_shapes_dataset(root / "shapes", 6, num_frames=6, size=20, seed=0)
    rows = manifest.read_text().splitlines()
    (root / "shapes" / "broken.mp4").write_bytes(b"")
    manifest.write_text("\n".join(rows[:3] + ["broken.mp4,a broken clip,red,circle,left"] + rows[3:]) + "\n")
    return root, manifest


def test_parse_size():
    assert parse_size("1GB") == 10 ** 9 and parse_size("64MiB") == 64 * 2 ** 20 and parse_size("4096") == 4096
    with pytest.raises(ValueError, match="positive size"):
        parse_size("lots")


def test_shard_writes_tars_and_index_and_skips_bad_files(shapes, capsys):
    root, manifest = shapes
    out = root / "out"
    assert main(["data", "shard", "--manifest", str(manifest), "--out", str(out), "--shard-size", "10KB"]) == 0
    summary = capsys.readouterr().out.strip().splitlines()[-1]
    assert summary.startswith("wrote 6 clips in ") and "1 bad files skipped, e.g. " in summary and "broken.mp4" in summary
    index = json.loads((out / "index.json").read_text())
    assert index["num_samples"] == 6 and index["num_skipped"] == 1 and index["manifest"] == str(manifest.absolute())
    assert len(index["shards"]) > 1 and sum(s["num_samples"] for s in index["shards"]) == 6
    assert sorted(p.name for p in out.iterdir()) == sorted([s["name"] for s in index["shards"]] + ["index.json"])
    # Each sample: the mp4's bytes, unchanged, and its .json.
    first = index["shards"][0]["samples"][0]
    with tarfile.open(out / index["shards"][0]["name"]) as tar:
        names = tar.getnames()
        meta = json.loads(tar.extractfile(first["key"] + ".json").read())
        video = tar.extractfile(first["video"]).read()
    assert names[:2] == [first["key"] + ".json", first["key"] + ".mp4"]
    assert video == Path(meta["source"]).read_bytes()
    assert (meta["height"], meta["width"], meta["num_frames"]) == (20, 20, 6) == (first["height"], first["width"],
                                                                                  first["num_frames"])


def test_shard_resumes_after_the_last_complete_shard(shapes, monkeypatch):
    root, manifest = shapes
    straight = root / "straight"
    write_shards(manifest, straight, shard_size=10_000, progress=False)
    # Interrupted: index.json never written, the last shard lost, a temporary file left behind.
    out = root / "resumed"
    write_shards(manifest, out, shard_size=10_000, progress=False)
    index = json.loads((out / "index.json").read_text())
    (out / "index.json").unlink()
    (out / index["shards"][-1]["name"]).unlink()
    (out / ".shard-000009.tar.tmp.tar").write_bytes(b"partial")
    written = []
    import vidiff.data.shards as shards
    real = shards._write_shard
    monkeypatch.setattr(shards, "_write_shard", lambda path, *a: written.append(path.name) or real(path, *a))
    resumed, _ = write_shards(manifest, out, shard_size=10_000, progress=False)
    assert written == [index["shards"][-1]["name"]]  # only the missing shard was written again
    assert resumed.to_dict() == json.loads((straight / "index.json").read_text())
    for s in index["shards"]:
        assert (out / s["name"]).read_bytes() == (straight / s["name"]).read_bytes()
    assert not list(out.glob(".*"))
    # Another manifest into the same folder is refused.
    other = write_shapes_dataset(root / "other", 2, num_frames=6, size=20, seed=1)
    with pytest.raises(ValueError, match="holds shards of"):
        write_shards(other, out, progress=False)


def test_shard_dataset_gives_the_clips_the_files_give(shapes):
    root, manifest = shapes
    out = root / "same"
    write_shards(manifest, out, shard_size=10_000, progress=False)
    options = dict(num_frames=4, height=16, width=16, stride=1, train=True, flip=True, seed=3)
    files = VideoDataset(manifest, image_ok=False, **options)
    files.entries = [e for e in files.entries if "broken" not in e.path]
    tars = ShardDataset(out, **options)
    pattern = ShardDataset(f"{out}/shard-{{000000..{len(tars.shard_paths) - 1:06d}}}.tar", **options)
    assert len(tars) == len(pattern) == 6
    for i in range(6):
        a, b, c = files[i], tars[i], pattern[i]
        assert torch.equal(a["pixel_values"], b["pixel_values"]) and torch.equal(a["pixel_values"], c["pixel_values"])
        assert a["prompt"] == b["prompt"] == c["prompt"] and b["path"].endswith(".mp4")
    # Without index.json a pattern is scanned once: the same samples.
    (root / "noindex").mkdir()
    for p in tars.shard_paths:
        (root / "noindex" / Path(p).name).write_bytes(Path(p).read_bytes())
    scanned = ShardDataset(f"{root}/noindex/shard-{{000000..{len(tars.shard_paths) - 1:06d}}}.tar",
                           **options)
    assert torch.equal(scanned[2]["pixel_values"], tars[2]["pixel_values"])
    assert [scanned.clip_size(i) for i in range(6)] == [tars.clip_size(i) for i in range(6)] == [files.clip_size(i) for i in range(6)]


class RangeHandler(http.server.SimpleHTTPRequestHandler):
    """A static file server that answers `Range: bytes=a-b` with 206 (http.server's own ignores ranges)."""

    def log_message(self, *args):
        pass

    def do_GET(self):
        path = Path(self.translate_path(self.path))
        match = re.match(r"bytes=(\d+)-(\d+)", self.headers.get("Range", ""))
        if not path.is_file():
            return self.send_error(404)
        data = path.read_bytes()
        if match:
            a, b = int(match[1]), int(match[2])
            data = data[a:b + 1]
        self.send_response(206 if match else 200)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


@pytest.fixture
def served(shapes):
    """The shard folder behind http://127.0.0.1:<port>/ (a loopback server in a thread)."""
    root, manifest = shapes
    out = root / "served"
    if not out.exists():
        write_shards(manifest, out, shard_size=10_000, progress=False)
    handler = functools.partial(RangeHandler, directory=str(out))
    with http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler) as server:
        thread = threading.Thread(target=server.serve_forever, daemon=True)
        thread.start()
        yield out, f"http://127.0.0.1:{server.server_address[1]}"
        server.shutdown()


def test_shards_behind_urls_give_the_local_samples(served, tmp_path, monkeypatch):
    out, url = served
    monkeypatch.setenv("VIDIFF_SHARD_CACHE", str(tmp_path / "cache"))
    options = dict(num_frames=4, height=16, width=16, stride=1, train=True, flip=True, seed=3)
    local = ShardDataset(out, **options)
    last = len(local.shard_paths) - 1
    folder = ShardDataset(url + "/", **options)
    pattern = ShardDataset(f"{url}/shard-{{000000..{last:06d}}}.tar", **options)
    piped = ShardDataset(f"pipe:cat {out}/shard-{{000000..{last:06d}}}.tar", **options)
    assert folder.shard_paths[0] == url + "/shard-000000.tar" and piped.shard_paths[0].startswith("pipe:cat ")
    assert len(folder) == len(pattern) == len(piped) == len(local) == 6
    for i in range(6):
        ref = local[i]
        for other in (folder, pattern, piped):
            got = other[i]
            assert torch.equal(got["pixel_values"], ref["pixel_values"]) and got["prompt"] == ref["prompt"]
    assert len(list((tmp_path / "cache").glob("*.tar"))) == last + 1  # pipe: shards spooled once each
    with pytest.raises(ValueError, match="need the index.json"):
        resolve_shards(f"{url}/nothing-{{000000..000001}}.tar")
    with pytest.raises(ValueError, match="cannot be read"):
        resolve_shards(url + "/missing/")


# ---------------------------------------------------------------------------------------------------------------
# training from shards and in buckets
# ---------------------------------------------------------------------------------------------------------------
TINY = Path(__file__).resolve().parents[1] / "configs" / "train" / "tiny.yaml"
RUN = ["train.max_steps=4", "train.checkpoint_every=2", "train.batch_size=2", "data.flip=true", "data.num_frames=2"]


@pytest.fixture(scope="module")
def video_model(tmp_path_factory):
    from vidiff.testing import make_tiny_video_pipeline
    return make_tiny_video_pipeline(tmp_path_factory.mktemp("model") / "video")


def run_config(out, model, *overrides):
    from vidiff.config import load_config
    return load_config(TINY, [f"model.pretrained={model}", f"output_dir={out}", *RUN, *overrides])


def last_weights(out) -> dict:
    from safetensors.torch import load_file
    from vidiff.training.checkpoints import list_checkpoints
    return load_file(str(list_checkpoints(Path(out) / "checkpoints")[-1] / "model.safetensors"))


def assert_same(a: dict, b: dict):
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def straight_and_resumed(root, name, model, *overrides):
    """4 steps straight, and 2 steps + resume for 2; both runs' last checkpoint weights."""
    from vidiff.training.trainer import train
    straight = train(run_config(root / f"{name}-straight", model, *overrides))
    assert straight.status == "finished" and straight.step == 4
    cfg = run_config(root / f"{name}-resumed", model, *overrides)
    assert train(cfg, on_step=lambda step, row: step == 2).status == "interrupted"
    assert train(cfg, resume="auto").step == 4
    return last_weights(root / f"{name}-straight"), last_weights(root / f"{name}-resumed")


def test_training_from_shards_resumes_exactly_and_matches_the_files(tmp_path, video_model):
    manifest = write_shapes_dataset(tmp_path / "clips", 5, num_frames=4, size=20, seed=0)
    write_shards(manifest, tmp_path / "shards", shard_size=10_000, progress=False)
    straight, resumed = straight_and_resumed(tmp_path, "shards", video_model, f"data.shards={tmp_path / 'shards'}")
    assert_same(straight, resumed)
    # The same clips as the files: identical weights when trained from the manifest itself.
    from vidiff.training.trainer import train
    train(run_config(tmp_path / "files", video_model, f"data.manifest={manifest}"))
    assert_same(straight, last_weights(tmp_path / "files"))


def test_training_from_shards_behind_a_url_resumes_exactly_and_matches_local_shards(served, tmp_path, video_model,
                                                                                    monkeypatch):
    """The cluster path: shards read over HTTP (byte ranges, the index beside them) train the same weights as the
    same shards on disk, and 2 steps + resume + 2 equal 4 straight."""
    out, url = served
    monkeypatch.setenv("VIDIFF_SHARD_CACHE", str(tmp_path / "cache"))
    straight, resumed = straight_and_resumed(tmp_path, "url", video_model, f"data.shards={url}/")
    assert_same(straight, resumed)
    from vidiff.training.trainer import train
    train(run_config(tmp_path / "local", video_model, f"data.shards={out}"))
    assert_same(straight, last_weights(tmp_path / "local"))


def write_mixed_sizes(root: Path) -> Path:
    """A CSV manifest of 4 square 20x20 clips, 4 wide 16x32 ones and 1 of 8x8, smaller than every bucket."""
    from vidiff.data.video_io import write_video
    square = write_shapes_dataset(root / "square", 4, num_frames=4, size=20, seed=0)
    rows = [line.split(",")[:2] for line in square.read_text().splitlines()[1:]]
    rows = [[str(root / "square" / path), caption] for path, caption in rows]
    rng = np.random.default_rng(0)
    for i, (h, w) in enumerate([(16, 32)] * 4 + [(8, 8)]):
        path = root / f"other-{i}.mp4"
        write_video(path, rng.integers(0, 255, (4, h, w, 3), dtype=np.uint8), fps=8)
        rows.append([str(path), f"noise {h}x{w}"])
    manifest = root / "mixed.csv"
    manifest.write_text("path,caption\n" + "".join(f"{p},{c}\n" for p, c in rows))
    return manifest


BUCKETS = "data.buckets=[[2,16,16],[2,16,32]]"


def test_buckets_batch_one_shape_and_cover_each_clip_once_an_epoch(tmp_path, video_model):
    from vidiff.training.data import make_dataset, make_loader
    manifest = write_mixed_sizes(tmp_path)
    write_shards(manifest, tmp_path / "shards", shard_size=10_000, progress=False)
    for source in (f"data.manifest={manifest}", f"data.shards={tmp_path / 'shards'}"):
        dataset = make_dataset(run_config(tmp_path / "unused", video_model, source, BUCKETS))
        assert dataset.bucket_sizes == [4, 4] and dataset.num_skipped == 1  # the 8x8 clip fits no bucket
        batches = iter(make_loader(dataset, seed=0, batch_size=2, start=0, num_workers=0))
        epoch = [next(batches) for _ in range(4)]
        shapes = [tuple(b["pixel_values"].shape) for b in epoch]
        assert sorted(shapes) == [(2, 3, 2, 16, 16)] * 2 + [(2, 3, 2, 16, 32)] * 2
        assert all(("noise" in b["prompt"][0]) == ("noise" in b["prompt"][1]) for b in epoch)
        assert len({p for b in epoch for p in b["path"]}) == 8  # each clip once in the epoch
        # A loader started at sample 4 continues the same stream.
        later = iter(make_loader(dataset, seed=0, batch_size=2, start=4, num_workers=0))
        for expected in epoch[2:] + [next(batches)]:
            got = next(later)
            assert got["path"] == expected["path"] and torch.equal(got["pixel_values"], expected["pixel_values"])


def test_training_in_buckets_resumes_exactly(tmp_path, video_model):
    manifest = write_mixed_sizes(tmp_path)
    straight, resumed = straight_and_resumed(tmp_path, "buckets", video_model, f"data.manifest={manifest}", BUCKETS)
    assert_same(straight, resumed)


@pytest.mark.parametrize("num_workers", [0, 2])
def test_shard_stream_is_the_same_for_any_ranks_and_workers_each_clip_once_an_epoch(shapes, num_workers):
    """The trainer's loader over shards, split as accelerate splits it for 1 and 2 processes: rank r takes every
    2nd batch of the one seeded stream, so the ranks together see each clip once an epoch, with the same
    pixels (crop / flip / start) as one process with no workers."""
    from accelerate.data_loader import prepare_data_loader
    from vidiff.training.data import make_loader
    root, manifest = shapes
    out = root / "ranks"
    if not out.exists():
        write_shards(manifest, out, shard_size=10_000, progress=False)
    dataset = ShardDataset(out, num_frames=4, height=16, width=16, stride=1, train=True, flip=True, seed=3)
    one = iter(make_loader(dataset, seed=5, batch_size=1, start=0, num_workers=0))
    stream = [next(one) for _ in range(12)]  # two epochs of 6 clips
    for epoch in (stream[:6], stream[6:]):
        assert sorted(b["path"][0] for b in epoch) == sorted({b["path"][0] for b in epoch})  # 6 distinct clips
    assert [b["path"] for b in stream[:6]] != [b["path"] for b in stream[6:]]  # a new order each epoch
    for rank in (0, 1):
        loader = prepare_data_loader(make_loader(dataset, seed=5, batch_size=1, start=0, num_workers=num_workers),
                                     num_processes=2, process_index=rank, put_on_device=False)
        got = iter(loader)
        for expected in stream[rank::2]:
            batch = next(got)
            assert batch["path"] == expected["path"]
            assert torch.equal(batch["pixel_values"], expected["pixel_values"])
