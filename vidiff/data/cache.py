"""A cache of VAE latents and CLIP text embeddings, so training on a fixed dataset skips the frozen encoders.

`build_latent_cache` (the `vidiff data cache` command) reads every sample of a manifest once, as evaluation
would (centred clip and crop, no flip), and writes safetensors shards:

    DIR/shard-00000.safetensors   latents (n, c, f, h/k, w/k) = VAE posterior mean x vae.config.scaling_factor
                                  encoder_hidden_states (n, L, D) = CLIP last hidden state of the padded prompt
                                  metadata: prompts, paths and dataset indices as JSON lists
    DIR/index.json                shards (file, count, dataset indices), counts, the settings used, and the
                                  files skipped with their reasons

(k is the VAE's downsampling factor, 8 for Stable Diffusion.) Both come from `vidiff.models.encoding`, the
functions training and sampling use, so training from the cache sees exactly the latents (the posterior mean;
`encoding.encode_video` says why) and embeddings that training on the videos would.

Under a launcher (`accelerate launch -m vidiff data cache ...`, or torchrun) the clips are split across the
ranks: clip i (its index in the manifest's dataset) goes to rank i % world_size, so the shares are disjoint,
deterministic and within one clip of each other in size. Each rank writes its own shards,
DIR/shard-r{rank:02d}-{n:05d}.safetensors, and a small part-r{rank:02d}.json (its shards and skipped files);
after all ranks finish, the main process merges the parts into the one index.json. The shards record the
dataset index of every clip, and `CachedLatentDataset` serves clips in that order, so a cache written by 1 or
by N processes holds the same clips and the same tensors in the same order. DIR must be on a filesystem that
every rank sees. The ranks write into one temporary folder beside DIR (.DIR.partial), each file under a
temporary name first; the folder is renamed onto DIR when the index is written, so DIR appears complete or not
at all (a failed run deletes it; a rerun starts over).

`CachedLatentDataset(DIR)` reads it back, one sample at a time, without loading whole shards.
"""
from __future__ import annotations

import json
import logging
import os
import shutil
from pathlib import Path

import numpy as np
import torch
from accelerate import PartialState
from accelerate.utils import parse_flag_from_env
from diffusers import AutoencoderKL
from safetensors import safe_open
from transformers import CLIPTextModel, CLIPTokenizer

from vidiff.data.datasets import VideoDataset
from vidiff.data.video_io import VideoReadError
from vidiff.models.encoding import encode_text, encode_video
from vidiff.models.loading import load_component
from vidiff.progress import ProgressBar
from vidiff.utils import (check_replaceable, default_device, parse_dtype, publish_dir, save_safetensors_atomic,
                          write_json_atomic)

logger = logging.getLogger("vidiff.data")

INDEX_FILE = "index.json"
CACHE_FORMAT = 1


class _Samples(torch.utils.data.Dataset):
    """Every sample of a VideoDataset with its dataset index, a bad file returned as a marker instead of
    replaced: a cache should hold each good file once."""

    def __init__(self, dataset: VideoDataset):
        self.dataset = dataset

    def __len__(self):
        return len(self.dataset)

    def __getitem__(self, index):
        try:
            return {**self.dataset.load(index), "index": index}
        except (VideoReadError, OSError) as e:
            reason = e.reason if isinstance(e, VideoReadError) else f"{type(e).__name__}: {e}"
            return {"bad": True, "index": index, "path": self.dataset.entries[index].path, "reason": reason}


def _load_encoders(model_dir: Path, device, dtype):
    """The frozen VAE, text encoder and tokenizer of a pipeline folder (safe formats only; a damaged file is
    one error naming it)."""


    missing = [name for name in ("vae", "text_encoder", "tokenizer") if not (model_dir / name).is_dir()]
    if missing:
        raise FileNotFoundError(f"pipeline folder {model_dir} lacks {'/, '.join(missing)}/; give a Stable Diffusion "
                                f"or vidiff pipeline folder (with vae/, text_encoder/, tokenizer/)")
    fix = "give an intact Stable Diffusion or vidiff pipeline folder"
    vae = load_component(model_dir, "vae", AutoencoderKL, fix).to(device, dtype).eval()
    text_encoder = load_component(model_dir, "text_encoder", CLIPTextModel, fix).to(device, dtype).eval()
    return vae, text_encoder, load_component(model_dir, "tokenizer", CLIPTokenizer, fix)


def is_latent_cache(folder: str | os.PathLike) -> bool:
    """True if `folder` is a cache this module wrote (its index.json names the format)."""
    folder = Path(folder)
    try:
        return json.loads((folder / INDEX_FILE).read_text()).get("format") == CACHE_FORMAT
    except (OSError, ValueError, AttributeError):
        return False


def rank_clips(num_clips: int, rank: int, world_size: int) -> range:
    """The dataset indices rank `rank` of `world_size` encodes: clip i goes to rank i % world_size (disjoint,
    together all clips, the shares within one clip of each other; no shuffling, so a rerun splits the same way)."""
    if not 0 <= rank < world_size:
        raise ValueError(f"rank must be in [0, {world_size}), got {rank}")
    return range(rank, num_clips, world_size)


def shard_file(rank: int, number: int, world_size: int) -> str:
    """A shard's file name: shard-00000.safetensors from a single process (the names of earlier caches),
    shard-r01-00000.safetensors from rank 1 of several."""
    return f"shard-{number:05d}.safetensors" if world_size == 1 else f"shard-r{rank:02d}-{number:05d}.safetensors"


def part_file(rank: int) -> str:
    return f"part-r{rank:02d}.json"


def build_latent_cache(model_dir: str | os.PathLike, manifest: str | os.PathLike, out_dir: str | os.PathLike,
                       num_frames: int = 16, height: int = 256, width: int = 256, stride: int | None = 1,
                       fps: float | None = None, batch_size: int = 4, shard_size: int = 256, num_workers: int = 0,
                       device: str | None = None, dtype: str = "fp32", progress: bool = True,
                       **dataset_options) -> dict:
    """Encode every readable sample of `manifest` with the pipeline's VAE and text encoder into `out_dir`.

    dataset_options go to VideoDataset (caption_column, path_column, path_template, root, prompt, backend, ...).
    Bad files are skipped (one warning line each) and listed in index.json. Under a launcher each rank encodes
    its share (`rank_clips`) and the main process writes index.json (module docstring). Returns the index (on
    every rank).
    """
    model_dir, out_dir = Path(model_dir), Path(out_dir)
    _check_request(model_dir, out_dir, batch_size=batch_size, shard_size=shard_size, num_workers=num_workers)
    state = launch_state()
    rank, world_size = state.process_index, state.num_processes
    device = _rank_device(device, state)
    torch_dtype = parse_dtype(dtype)
    dataset = VideoDataset(manifest, num_frames=num_frames, height=height, width=width, stride=stride, fps=fps,
                           train=False, flip=False, image_as_video=False, **dataset_options)
    vae, text_encoder, tokenizer = _load_encoders(model_dir, device, torch_dtype)
    vae_factor = 2 ** (len(vae.config.block_out_channels) - 1)
    if height % vae_factor or width % vae_factor:
        raise ValueError(f"height and width must be multiples of the VAE's factor {vae_factor} (the latents "
                         f"would not decode back to {height}x{width}), got {height}x{width}")
    work = out_dir.parent / f".{out_dir.name}.partial"  # one name that every rank knows
    if state.is_main_process:
        shutil.rmtree(work, ignore_errors=True)  # (left by a killed run)
        work.mkdir(parents=True)
    state.wait_for_everyone()
    try:
        part = encode_part(_Samples(dataset), rank, world_size, work, vae, text_encoder, tokenizer,
                           device=device, dtype=torch_dtype, batch_size=batch_size, shard_size=shard_size,
                           num_workers=num_workers, progress=progress and state.is_main_process)
        write_json_atomic(work / part_file(rank), part)
        state.wait_for_everyone()
        if state.is_main_process:
            settings = {"model": str(model_dir), "manifest": str(manifest), "num_frames": num_frames,
                        "height": height, "width": width, "stride": stride, "fps": fps, "dtype": dtype,
                        "scaling_factor": float(vae.config.scaling_factor)}
            merge_parts(work, world_size, settings)
            publish_dir(work, out_dir)
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)  # nothing half-written stays, on any rank's failure
        raise
    state.wait_for_everyone()
    return json.loads((out_dir / INDEX_FILE).read_text())


def launch_state() -> PartialState:
    """accelerate's view of the processes: a process group under accelerate launch / torchrun, else one process.
    Without CUDA (or with ACCELERATE_USE_CPU=true) the group is gloo on CPU, as for training
    (training.parallel.wants_cpu). A launch of several processes that accelerate still sees as one is refused:
    each would write the whole cache into the same folder."""
    launched = int(os.environ.get("WORLD_SIZE", "1") or 1)
    cpu = parse_flag_from_env("ACCELERATE_USE_CPU") or (launched > 1 and not torch.cuda.is_available())
    state = PartialState(cpu=cpu)
    if launched > 1 and state.num_processes == 1:
        raise ValueError(f"launched as {launched} processes but accelerate sees one; launch with accelerate "
                         f"launch or torchrun, or set ACCELERATE_USE_CPU=true to run them on CPU")
    return state


def _rank_device(device: str | None, state: PartialState) -> str:
    """The device this rank encodes on: the launcher's (cuda:LOCAL_RANK) when several processes run and no
    device or a bare "cuda" is asked for, so the ranks do not share one GPU."""
    if state.num_processes > 1 and device in (None, "cuda"):
        return str(state.device)
    return device or default_device()


def encode_part(samples: "_Samples", rank: int, world_size: int, folder: Path, vae, text_encoder, tokenizer, *,
                device, dtype, batch_size: int, shard_size: int, num_workers: int, progress: bool) -> dict:
    """Encode rank `rank`'s share of `samples` into shards in `folder`. Returns the part that merge_parts
    reads: `{"rank", "world_size", "shards": [{"file", "count", "indices"}], "skipped": [[index, path, reason]]}`."""
    share = rank_clips(len(samples), rank, world_size)
    loader = torch.utils.data.DataLoader(torch.utils.data.Subset(samples, share), batch_size=batch_size,
                                         num_workers=num_workers, collate_fn=list)
    skipped: list[list] = []
    shards = _ShardWriter(folder, shard_size, lambda n: shard_file(rank, n, world_size))
    with ProgressBar(total=len(share), desc="cache", unit="clip", disable=not progress) as bar:
        for batch in loader:
            good = _without_bad(batch, skipped)
            bar.update(len(batch))
            for latents, embeddings, group in _encode_groups(good, vae, text_encoder, tokenizer, device, dtype):
                shards.add(latents, embeddings, group)
    shards.flush()
    return {"rank": rank, "world_size": world_size, "shards": shards.shards, "skipped": skipped}


def merge_parts(folder: Path, world_size: int, settings: dict) -> dict:
    """The index of the parts part-r00.json ... in `folder` (one per rank), written as index.json; the parts
    are deleted. Shards are listed rank by rank; the skipped files in dataset order, as one process lists them."""
    parts = []
    for rank in range(world_size):
        path = folder / part_file(rank)
        part = json.loads(path.read_text()) if path.is_file() else None
        if not part or part.get("rank") != rank or part.get("world_size") != world_size:
            raise ValueError(f"{path}: rank {rank} of {world_size} left no part of the cache; run the same "
                             f"command again")
        parts.append(part)
    shards = [shard for part in parts for shard in part["shards"]]
    bad = sorted((entry for part in parts for entry in part["skipped"]), key=lambda entry: entry[0])
    skipped = {}
    for _, path, reason in bad:  # in dataset order, as one process records them
        skipped[path] = reason
    num_samples = sum(shard["count"] for shard in shards)
    if num_samples == 0:
        first = next(iter(skipped.items()), ("-", "-"))
        raise ValueError(f"no readable samples in {settings['manifest']}: all {len(bad)} were skipped "
                         f"(e.g. {first[0]}: {first[1]})")
    index = {"format": CACHE_FORMAT, "model": settings["model"], "manifest": settings["manifest"],
             "num_samples": num_samples, "num_skipped": len(skipped), "skipped": skipped, "shards": shards,
             **{k: v for k, v in settings.items() if k not in ("model", "manifest")}, "world_size": world_size}
    write_json_atomic(folder / INDEX_FILE, index)
    for rank in range(world_size):
        (folder / part_file(rank)).unlink()
    return index


def _check_request(model_dir: Path, out_dir: Path, *, batch_size: int, shard_size: int, num_workers: int) -> None:
    """The arguments of build_latent_cache, checked before any model loads."""
    if batch_size < 1 or shard_size < 1:
        raise ValueError(f"batch_size and shard_size must be >= 1, got {batch_size} and {shard_size}")
    if not model_dir.is_dir():
        raise FileNotFoundError(f"pipeline folder {model_dir} does not exist")
    if num_workers < 0:
        raise ValueError(f"num_workers must be >= 0 (0 decodes in the main process), got {num_workers}")
    # The cache replaces out_dir when done: only an earlier cache or an empty folder may be replaced.
    check_replaceable(out_dir, is_latent_cache, f"a latent cache (no {INDEX_FILE})", "choose a new --out")


def _without_bad(batch: list[dict], skipped: list[list]) -> list[dict]:
    """The readable samples of a batch; each bad one is logged once and appended to `skipped` as
    [index, path, reason]."""
    good = []
    for sample in batch:
        if sample.get("bad"):
            skipped.append([sample["index"], sample["path"], sample["reason"]])
            logger.warning(f"skipping bad sample {sample['path']}: {sample['reason']}")
        else:
            good.append(sample)
    return good


def _encode_groups(samples: list[dict], vae, text_encoder, tokenizer, device, dtype):
    """Yield `(latents (n, c, f, h/k, w/k), embeddings (n, L, D), samples)` on the CPU, one group per pixel shape:
    images (f = 1) and videos are encoded separately."""
    for shape in sorted({tuple(s["pixel_values"].shape) for s in samples}):
        group = [s for s in samples if tuple(s["pixel_values"].shape) == shape]
        pixels = torch.stack([s["pixel_values"] for s in group]).to(device, dtype)
        latents = encode_video(vae, pixels, scaling_factor=vae.config.scaling_factor).cpu()
        embeddings = encode_text(text_encoder, tokenizer, [s["prompt"] for s in group]).cpu()
        yield latents, embeddings, group


class _ShardWriter:
    """Collects encoded samples into safetensors shards of at most `shard_size` samples and one latent shape each
    (latents, encoder_hidden_states; prompts, paths and dataset indices as JSON metadata), written into `folder`
    as `name(0)`, `name(1)`, ..."""

    def __init__(self, folder: Path, shard_size: int, name):
        self.folder, self.shard_size, self.name = folder, shard_size, name
        self.shards: list[dict] = []   # {"file", "count", "indices"} of each written shard, for index.json
        self._buffer: dict[str, list] = {"latents": [], "encoder_hidden_states": [], "prompts": [], "paths": [],
                                         "indices": []}

    @property
    def count(self) -> int:
        return sum(shard["count"] for shard in self.shards)

    def add(self, latents: torch.Tensor, embeddings: torch.Tensor, samples: list[dict]) -> None:
        buffer = self._buffer
        if buffer["latents"] and buffer["latents"][0].shape[1:] != latents.shape[1:]:
            self.flush()  # a shard holds one latent shape
        for i, sample in enumerate(samples):
            buffer["latents"].append(latents[i:i + 1])
            buffer["encoder_hidden_states"].append(embeddings[i:i + 1])
            buffer["prompts"].append(sample["prompt"])
            buffer["paths"].append(sample["path"])
            buffer["indices"].append(sample["index"])
            if len(buffer["paths"]) >= self.shard_size:
                self.flush()

    def flush(self) -> None:
        """Write what is collected as the next shard (nothing when empty)."""
        buffer = self._buffer
        if not buffer["paths"]:
            return
        name = self.name(len(self.shards))
        tensors = {key: torch.cat(buffer[key]) for key in ("latents", "encoder_hidden_states")}
        metadata = {key: json.dumps(buffer[key]) for key in ("prompts", "paths", "indices")}
        save_safetensors_atomic(tensors, self.folder / name, metadata=metadata)
        self.shards.append({"file": name, "count": len(buffer["paths"]), "indices": list(buffer["indices"])})
        for values in buffer.values():
            values.clear()


class CachedLatentDataset(torch.utils.data.Dataset):
    """Samples of a latent cache: `{"latents": (c, f, h, w), "encoder_hidden_states": (L, D), "prompt": str,
    "path": str, "num_skipped": 0}` (num_skipped keeps batches compatible with VideoDataset's).

    Sample k is the clip with the k-th smallest dataset index the shards record, whichever rank wrote it, so a
    cache written by N processes reads exactly as one written by one (caches written before the indices were
    recorded: shard order). Training's seeded sampler and rank split then cover each clip once per epoch."""

    def __init__(self, cache_dir: str | os.PathLike):
        self.cache_dir = Path(cache_dir)
        index_file = self.cache_dir / INDEX_FILE
        if not index_file.exists():
            raise FileNotFoundError(f"{self.cache_dir} is not a latent cache (no {INDEX_FILE}); make one with "
                                    f"`vidiff data cache --model DIR --manifest M --out {self.cache_dir}`")
        self.index = json.loads(index_file.read_text())
        if self.index.get("format") != CACHE_FORMAT:
            raise ValueError(f"{index_file}: unknown cache format {self.index.get('format')!r}, "
                             f"expected {CACHE_FORMAT}; rebuild the cache")
        self.shards = self.index["shards"]
        self._shard, self._row = self._sample_order(index_file)  # sample k = row _row[k] of shard _shard[k]
        self._text: dict[int, tuple[list, list]] = {}
        self._handles: dict[int, object] = {}

    def _sample_order(self, index_file: Path) -> tuple[np.ndarray, np.ndarray]:
        counts = [shard["count"] for shard in self.shards]
        shard_of = np.repeat(np.arange(len(counts), dtype=np.int32), counts)       # (n,)
        row = np.concatenate([np.arange(n, dtype=np.int64) for n in counts] or [np.zeros(0, np.int64)])
        if not all("indices" in shard for shard in self.shards):
            return shard_of, row
        if any(len(shard["indices"]) != shard["count"] for shard in self.shards):
            raise ValueError(f"{index_file}: a shard's indices do not match its count; rebuild the cache")
        indices = np.asarray([i for shard in self.shards for i in shard["indices"]], dtype=np.int64)
        if len(np.unique(indices)) != len(indices):
            raise ValueError(f"{index_file}: a clip is stored twice (shards of two runs?); rebuild the cache")
        order = np.argsort(indices, kind="stable")
        return shard_of[order], row[order]

    def __len__(self) -> int:
        return len(self._row)

    def __getstate__(self):  # safetensors handles are per process: reopen them in DataLoader workers
        state = self.__dict__.copy()
        state["_handles"] = {}
        return state

    def _open(self, shard: int):
        if shard not in self._handles:
            path = self.cache_dir / self.shards[shard]["file"]
            handle = safe_open(str(path), framework="pt")
            metadata = handle.metadata()
            self._text[shard] = (json.loads(metadata["prompts"]), json.loads(metadata["paths"]))
            self._handles[shard] = handle
        return self._handles[shard]

    def __getitem__(self, index: int) -> dict:
        if not 0 <= index < len(self):
            raise IndexError(f"index {index} out of range for a cache of {len(self)}")
        shard, row = int(self._shard[index]), int(self._row[index])
        handle = self._open(shard)
        prompts, paths = self._text[shard]
        return {
            "latents": handle.get_slice("latents")[row:row + 1][0],
            "encoder_hidden_states": handle.get_slice("encoder_hidden_states")[row:row + 1][0],
            "prompt": prompts[row],
            "path": paths[row],
            "num_skipped": 0,
        }
