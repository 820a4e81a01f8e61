"""Latent cache: the stored latents / embeddings equal a direct VAE / CLIP encoding; shards, bad files, CLI; the
rank split (clip i to rank i % world_size) and the merged index, in process and in 2 CPU processes (torchrun)."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from vidiff.cli import main
from vidiff.data import cache as cache_module
from vidiff.data.cache import (CachedLatentDataset, build_latent_cache, encode_part, merge_parts, part_file,
                               rank_clips)
from vidiff.data.datasets import VideoDataset
from vidiff.data.synthetic import write_shapes_dataset
from vidiff.testing import make_tiny_sd_pipeline
from vidiff.utils import write_json_atomic

REPO = Path(__file__).resolve().parents[1]
GEOMETRY = dict(num_frames=3, height=16, width=16, stride=2)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("cache")
    model = make_tiny_sd_pipeline(root / "sd")
    manifest = write_shapes_dataset(root / "shapes", count=5, num_frames=6, size=24, seed=0)
    rows = manifest.read_text().splitlines()
    (root / "shapes" / "broken.mp4").write_bytes(b"\x00" * 100)
    rows.insert(3, "broken.mp4,a broken clip,red,circle,moving left")
    manifest.write_text("\n".join(rows) + "\n")
    return root, model, manifest


def test_cache_matches_direct_encoding(setup, tmp_path):
    from diffusers import AutoencoderKL
    from transformers import CLIPTextModel, CLIPTokenizer

    root, model, manifest = setup
    index = build_latent_cache(model, manifest, tmp_path / "c", num_frames=3, height=16, width=16, stride=2,
                               batch_size=2, shard_size=2, device="cpu", progress=False)
    assert index["num_samples"] == 5 and index["num_skipped"] == 1
    assert list(index["skipped"]) == [str(root / "shapes" / "broken.mp4")]
    assert [s["count"] for s in index["shards"]] == [2, 2, 1]
    assert sorted(p.name for p in (tmp_path / "c").iterdir()) == ["index.json", "shard-00000.safetensors",
                                                                  "shard-00001.safetensors", "shard-00002.safetensors"]
    cached = CachedLatentDataset(tmp_path / "c")
    assert len(cached) == 5
    videos = VideoDataset(manifest, num_frames=3, height=16, width=16, stride=2, train=False)
    good = [i for i, e in enumerate(videos.entries) if not e.path.endswith("broken.mp4")]

    vae = AutoencoderKL.from_pretrained(model / "vae").eval()
    text_encoder = CLIPTextModel.from_pretrained(model / "text_encoder").eval()
    tokenizer = CLIPTokenizer.from_pretrained(model / "tokenizer")
    for row, i in enumerate(good):
        sample, stored = videos.load(i), cached[row]
        assert stored["prompt"] == sample["prompt"] and stored["path"] == sample["path"]
        with torch.no_grad():
            frames = sample["pixel_values"].permute(1, 0, 2, 3)  # f c h w
            reference = vae.encode(frames).latent_dist.mean * vae.config.scaling_factor  # f c h w
            ids = tokenizer([sample["prompt"]], padding="max_length", max_length=tokenizer.model_max_length,
                            truncation=True, return_tensors="pt").input_ids
            text = text_encoder(ids).last_hidden_state[0]
        assert stored["latents"].shape == (4, 3, 8, 8)  # (c, f, h / 2, w / 2): the tiny VAE downsamples by 2
        torch.testing.assert_close(stored["latents"], reference.permute(1, 0, 2, 3), rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(stored["encoder_hidden_states"], text, rtol=1e-4, atol=1e-5)
        assert stored["encoder_hidden_states"].shape == (77, 32)

    loader = torch.utils.data.DataLoader(cached, batch_size=2, num_workers=2)
    batches = list(loader)
    assert torch.cat([b["latents"] for b in batches]).shape == (5, 4, 3, 8, 8)
    assert [p for b in batches for p in b["prompt"]] == [cached[i]["prompt"] for i in range(5)]


def test_cache_errors_and_atomicity(setup, tmp_path, monkeypatch):
    root, model, manifest = setup
    with pytest.raises(FileNotFoundError, match="not a latent cache"):
        CachedLatentDataset(tmp_path)
    (tmp_path / "novae").mkdir()
    with pytest.raises(FileNotFoundError, match="lacks vae/, text_encoder/, tokenizer/"):
        build_latent_cache(tmp_path / "novae", manifest, tmp_path / "c", num_frames=2, height=8, width=8)
    (tmp_path / "bad.csv").write_text(f"path,caption\n{root}/shapes/broken.mp4,x\n")
    with pytest.raises(ValueError, match="no readable samples"):
        build_latent_cache(model, tmp_path / "bad.csv", tmp_path / "c", num_frames=2, height=8, width=8,
                           device="cpu", progress=False)
    assert not (tmp_path / "c").exists()

    def crash(*args, **kwargs):
        raise RuntimeError("out of memory")

    monkeypatch.setattr(cache_module, "encode_text", crash)
    with pytest.raises(RuntimeError):
        build_latent_cache(model, manifest, tmp_path / "c", num_frames=2, height=8, width=8, device="cpu",
                           progress=False)
    assert not (tmp_path / "c").exists() and not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_cli_cache(setup, tmp_path, capsys):
    root, model, manifest = setup
    out = tmp_path / "cache"
    assert main(["data", "cache", "--model", str(model), "--manifest", str(manifest), "--out", str(out),
                 "--num-frames", "2", "--height", "8", "--width", "8", "--batch-size", "3", "--device", "cpu"]) == 0
    assert "cached 5 clips" in capsys.readouterr().out
    assert json.loads((out / "index.json").read_text())["num_frames"] == 2
    assert CachedLatentDataset(out)[0]["latents"].shape == (4, 2, 4, 4)
    assert main(["data", "cache", "--model", str(tmp_path / "nope"), "--manifest", str(manifest), "--out",
                 str(out)]) == 2
    assert "nope does not exist" in capsys.readouterr().err
    assert main(["data", "cache", "--model", str(model), "--manifest", str(manifest), "--out", str(out),
                 "--batch-size", "0"]) == 2
    capsys.readouterr()
    # Found in QA: a negative worker count reached torch; sizes the VAE cannot halve were cached silently; an
    # --out folder of other files was replaced (deleted).
    assert main(["data", "cache", "--model", str(model), "--manifest", str(manifest), "--out", str(out),
                 "--num-workers", "-1"]) == 2
    assert "--num-workers must be between 0 and 256" in capsys.readouterr().err
    assert main(["data", "cache", "--model", str(model), "--manifest", str(manifest), "--out",
                 str(tmp_path / "odd"), "--num-frames", "2", "--height", "9", "--width", "8", "--device", "cpu"]) == 2
    assert "multiples of the VAE's factor 2" in capsys.readouterr().err and not (tmp_path / "odd").exists()
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep me")
    assert main(["data", "cache", "--model", str(model), "--manifest", str(manifest), "--out",
                 str(tmp_path / "mine"), "--num-frames", "2", "--height", "8", "--width", "8"]) == 2
    assert "is not a latent cache" in capsys.readouterr().err
    (tmp_path / "mine" / "index.json").write_text('{"pages": 3}')  # some other tool's index
    assert main(["data", "cache", "--model", str(model), "--manifest", str(manifest), "--out",
                 str(tmp_path / "mine"), "--num-frames", "2", "--height", "8", "--width", "8"]) == 2
    assert "is not a latent cache" in capsys.readouterr().err
    assert (tmp_path / "mine" / "notes.txt").read_text() == "keep me"
    # WebVid-style: the CSV lives apart from the videos; --root says where its relative paths start.
    (tmp_path / "webvid.csv").write_text("videoid,name\n00000,a clip\n00001,another\n")
    assert main(["data", "cache", "--model", str(model), "--manifest", str(tmp_path / "webvid.csv"), "--out",
                 str(tmp_path / "webvid"), "--path-template", "{videoid}.mp4", "--caption-column", "name", "--root",
                 str(root / "shapes"), "--num-frames", "2", "--height", "8", "--width", "8", "--device", "cpu"]) == 0
    assert "cached 2 clips" in capsys.readouterr().out
    # An earlier cache is replaced.
    assert main(["data", "cache", "--model", str(model), "--manifest", str(manifest), "--out", str(out),
                 "--num-frames", "2", "--height", "8", "--width", "8", "--device", "cpu"]) == 0


def test_cache_and_training_on_videos_see_the_same_latents(setup, tmp_path):
    """Issue 9: the cache took the VAE posterior mean while training on videos drew a sample, so the two data
    sources trained on different latents. Both now go through `encoding.encode_video` (the mean)."""
    from diffusers import AutoencoderKL
    from transformers import CLIPTextModel, CLIPTokenizer

    from vidiff.models.encoding import encode_text, encode_video
    from vidiff.training.data import encode_batch

    root, model, manifest = setup
    build_latent_cache(model, manifest, tmp_path / "c", num_frames=2, height=16, width=16, device="cpu",
                       progress=False)
    cached = CachedLatentDataset(tmp_path / "c")
    videos = VideoDataset(manifest, num_frames=2, height=16, width=16, train=False)
    vae = AutoencoderKL.from_pretrained(model / "vae").eval()
    text_encoder = CLIPTextModel.from_pretrained(model / "text_encoder").eval()
    tokenizer = CLIPTokenizer.from_pretrained(model / "tokenizer")
    sample = videos.load(0)
    pixels = sample["pixel_values"][None]
    direct = encode_video(vae, pixels, scaling_factor=vae.config.scaling_factor)[0]
    torch.testing.assert_close(cached[0]["latents"], direct, rtol=0, atol=1e-5)
    torch.testing.assert_close(cached[0]["encoder_hidden_states"],
                               encode_text(text_encoder, tokenizer, [sample["prompt"]])[0], rtol=0, atol=1e-5)
    batch = {"pixel_values": pixels, "prompt": [sample["prompt"]]}
    latents, text = encode_batch(batch, vae, text_encoder, tokenizer, caption_dropout=0.0, device="cpu",
                                 generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(latents[0], cached[0]["latents"], rtol=0, atol=1e-5)
    torch.testing.assert_close(text[0], cached[0]["encoder_hidden_states"], rtol=0, atol=1e-5)


def test_a_damaged_encoder_file_is_one_line_naming_it(setup, tmp_path, capsys):
    import shutil

    root, model, manifest = setup
    damaged = Path(shutil.copytree(model, tmp_path / "sd"))
    weights = damaged / "vae" / "diffusion_pytorch_model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])
    with pytest.raises(ValueError, match=f"{weights} is damaged or truncated"):
        build_latent_cache(damaged, manifest, tmp_path / "c", num_frames=2, height=8, width=8, device="cpu",
                           progress=False)
    assert main(["data", "cache", "--model", str(damaged), "--manifest", str(manifest), "--out", str(tmp_path / "c"),
                 "--num-frames", "2", "--height", "8", "--width", "8", "--device", "cpu"]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and str(weights) in err
    assert not (tmp_path / "c").exists()


# ---------------------------------------------------------------------------------------------------------------
# Split across ranks: each rank encodes clips i % world_size == rank, the main process merges the parts
# ---------------------------------------------------------------------------------------------------------------
def _assert_same_cache(a: Path, b: Path) -> None:
    """Same clips, prompts, paths and tensors in the same order, and the same skipped files."""
    first, second = CachedLatentDataset(a), CachedLatentDataset(b)
    assert len(first) == len(second)
    for i in range(len(first)):
        x, y = first[i], second[i]
        assert (x["path"], x["prompt"]) == (y["path"], y["prompt"])
        for key in ("latents", "encoder_hidden_states"):
            torch.testing.assert_close(x[key], y[key], rtol=0, atol=1e-6, msg=f"sample {i} {key}")
    for key in ("num_samples", "num_skipped", "skipped", "num_frames", "height", "width", "scaling_factor"):
        assert first.index[key] == second.index[key], key


def _write_rank_parts(model: Path, manifest: Path, folder: Path, world_size: int) -> dict:
    """What the ranks of `vidiff data cache` do, one after the other in this process, then the main process's
    merge (the process group's barriers are what a real run adds)."""
    vae, text_encoder, tokenizer = cache_module._load_encoders(model, "cpu", torch.float32)
    samples = cache_module._Samples(VideoDataset(manifest, train=False, flip=False, image_as_video=False,
                                                 **GEOMETRY))
    folder.mkdir()
    for rank in reversed(range(world_size)):  # (any order: the ranks run at once)
        part = encode_part(samples, rank, world_size, folder, vae, text_encoder, tokenizer, device="cpu",
                           dtype=torch.float32, batch_size=2, shard_size=2, num_workers=0, progress=False)
        write_json_atomic(folder / part_file(rank), part)
    settings = {"model": str(model), "manifest": str(manifest), **GEOMETRY, "fps": None, "dtype": "fp32",
                "scaling_factor": float(vae.config.scaling_factor)}
    return merge_parts(folder, world_size, settings)


def test_rank_split_is_disjoint_and_complete():
    for num_clips in (0, 1, 5, 6, 17):
        for world_size in (1, 2, 3, 8):
            shares = [list(rank_clips(num_clips, rank, world_size)) for rank in range(world_size)]
            assert sorted(i for share in shares for i in share) == list(range(num_clips))
            assert max(map(len, shares)) - min(map(len, shares)) <= 1
            assert all(i % world_size == rank for rank, share in enumerate(shares) for i in share)
    with pytest.raises(ValueError, match=r"rank must be in \[0, 2\), got 2"):
        rank_clips(5, 2, 2)


def test_two_rank_parts_merge_into_the_one_process_cache(setup, tmp_path):
    root, model, manifest = setup  # 6 rows, row 2 broken: rank 0 gets rows 0, 2 (bad), 4; rank 1 rows 1, 3, 5
    single = build_latent_cache(model, manifest, tmp_path / "one", **GEOMETRY, batch_size=2, shard_size=2,
                                device="cpu", progress=False)
    index = _write_rank_parts(model, manifest, tmp_path / "two", world_size=2)
    assert sorted(p.name for p in (tmp_path / "two").iterdir()) == [
        "index.json", "shard-r00-00000.safetensors", "shard-r01-00000.safetensors", "shard-r01-00001.safetensors"]
    assert [s["indices"] for s in index["shards"]] == [[0, 4], [1, 3], [5]]
    assert index["world_size"] == 2 and single["world_size"] == 1
    assert index["skipped"] == single["skipped"] == {str(root / "shapes" / "broken.mp4"): index["skipped"][
        str(root / "shapes" / "broken.mp4")]}
    assert [s["indices"] for s in single["shards"]] == [[0, 1], [3, 4], [5]]
    _assert_same_cache(tmp_path / "one", tmp_path / "two")

    # A rank that left no part (it failed, or the folder holds another run's parts) is one error naming it.
    (tmp_path / "three").mkdir()
    write_json_atomic(tmp_path / "three" / part_file(0), {"rank": 0, "world_size": 2, "shards": [], "skipped": []})
    with pytest.raises(ValueError, match="part-r01.json: rank 1 of 2 left no part of the cache"):
        merge_parts(tmp_path / "three", 2, {})


def test_training_reads_a_two_rank_cache_each_clip_once_an_epoch(setup, tmp_path):
    from accelerate.data_loader import prepare_data_loader

    from vidiff.config import load_config
    from vidiff.training.data import make_dataset, make_loader

    root, model, manifest = setup
    _write_rank_parts(model, manifest, tmp_path / "cache", world_size=2)
    run = [f"model.pretrained={model}", f"output_dir={tmp_path / 'run'}"]
    config = load_config(REPO / "configs" / "train" / "tiny.yaml", [*run, f"data.cache={tmp_path / 'cache'}"])
    dataset = make_dataset(config)
    assert isinstance(dataset, CachedLatentDataset) and len(dataset) == 5
    loader = make_loader(dataset, seed=0, batch_size=1, start=0, num_workers=0)
    seen = []
    for rank, batches in ((0, 3), (1, 2)):  # 5 batches of one clip an epoch: ranks take every other batch
        ranked = iter(prepare_data_loader(loader, num_processes=2, process_index=rank, put_on_device=False))
        seen += [path for _ in range(batches) for path in next(ranked)["path"]]
    assert sorted(seen) == sorted(dataset[i]["path"] for i in range(5))

    # data.shards names tars of videos: a latent cache given there is one line saying to use data.cache.
    config = load_config(REPO / "configs" / "train" / "tiny.yaml", [*run, f"data.shards={tmp_path / 'cache'}"])
    with pytest.raises(ValueError, match=f"data.shards={tmp_path / 'cache'} is a latent cache .* set "
                                         f"data.cache={tmp_path / 'cache'}"):
        make_dataset(config)


def test_two_processes_write_the_cache_one_process_writes(setup, tmp_path):
    """`torchrun --nproc_per_node 2 -m vidiff data cache` (gloo, CPU) against one process: same cache. (About
    10 s here, so not marked slow: the real process group is the part the in-process tests cannot reach.)"""
    root, model, manifest = setup
    args = ["data", "cache", "--model", str(model), "--manifest", str(manifest), "--num-frames", "3", "--height",
            "16", "--width", "16", "--stride", "2", "--batch-size", "2", "--shard-size", "2", "--device", "cpu"]
    assert main([*args, "--out", str(tmp_path / "one")]) == 0
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO), ACCELERATE_USE_CPU="true")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port",
           str(29000 + os.getpid() % 500), "-m", "vidiff", *args, "--out", str(tmp_path / "two")]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=REPO, timeout=600)
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, output[-4000:]
    assert output.count("cached 5 clips in 3 shard(s)") == 1 and "2 processes" in output  # one summary
    assert sorted(p.name for p in (tmp_path / "two").iterdir()) == [
        "index.json", "shard-r00-00000.safetensors", "shard-r01-00000.safetensors", "shard-r01-00001.safetensors"]
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]
    _assert_same_cache(tmp_path / "one", tmp_path / "two")
