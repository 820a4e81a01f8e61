"""A cache of VAE latents and CLIP text embeddings, so training on a fixed dataset skips the frozen encoders.

`build_latent_cache` (the `vidiff data cache` command) reads every sample of a manifest once, as evaluation
would (centred clip and crop, no flip), and writes safetensors shards:

    DIR/shard-00000.safetensors   latents (n, c, f, h/k, w/k) = VAE posterior mean x vae.config.scaling_factor
                                  encoder_hidden_states (n, L, D) = CLIP last hidden state of the padded prompt
                                  metadata: prompts and paths as JSON lists
    DIR/index.json                shards, counts, the settings used, and the files skipped with their reasons

(k is the VAE's downsampling factor, 8 for Stable Diffusion.) Both come from `vidiff.models.encoding`, the
functions training and sampling use, so training from the cache sees exactly the latents (the posterior mean;
`encoding.encode_video` says why) and embeddings that training on the videos would.
The folder is written under a temporary name and appears complete or not at all.

`CachedLatentDataset(DIR)` reads it back, one sample at a time, without loading whole shards.
"""
from __future__ import annotations

import bisect
import json
import logging
import os
from pathlib import Path

import torch
from diffusers import AutoencoderKL
from safetensors import safe_open
from transformers import CLIPTextModel, CLIPTokenizer

from vidiff.data.datasets import VideoDataset
from vidiff.data.video_io import VideoReadError
from vidiff.models.encoding import encode_text, encode_video
from vidiff.models.loading import load_component
from vidiff.progress import ProgressBar
from vidiff.utils import (atomic_dir, check_replaceable, default_device, parse_dtype, save_safetensors_atomic,
                          write_json_atomic)

logger = logging.getLogger("vidiff.data")

INDEX_FILE = "index.json"
CACHE_FORMAT = 1


class _Samples(torch.utils.data.Dataset):
    """Every sample of a VideoDataset in order, with a bad file returned as a marker instead of replaced:
    a cache should hold each good file once."""

    def __init__(self, dataset: VideoDataset):
        self.dataset = dataset

    def __len__(self):
        return len(self.dataset)

    def __getitem__(self, index):
        try:
            return self.dataset.load(index)
        except (VideoReadError, OSError) as e:
            reason = e.reason if isinstance(e, VideoReadError) else f"{type(e).__name__}: {e}"
            return {"bad": True, "path": self.dataset.entries[index].path, "reason": reason}


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


def _is_cache(folder: Path) -> bool:
    """True if `folder` is a cache this module wrote (its index.json names the format)."""
    try:
        return json.loads((folder / INDEX_FILE).read_text()).get("format") == CACHE_FORMAT
    except (OSError, ValueError, AttributeError):
        return False


def build_latent_cache(model_dir: str | os.PathLike, manifest: str | os.PathLike, out_dir: str | os.PathLike,
                       num_frames: int = 16, height: int = 256, width: int = 256, stride: int | None = 1,
                       fps: float | None = None, batch_size: int = 4, shard_size: int = 256, num_workers: int = 0,
                       device: str | None = None, dtype: str = "fp32", progress: bool = True,
                       **dataset_options) -> dict:
    """Encode every readable sample of `manifest` with the pipeline's VAE and text encoder into `out_dir`.

    dataset_options go to VideoDataset (caption_column, path_column, path_template, root, prompt, backend, ...).
    Bad files are skipped (one warning line each) and listed in index.json. Returns the index.
    """
    model_dir, out_dir = Path(model_dir), Path(out_dir)
    _check_request(model_dir, out_dir, batch_size=batch_size, shard_size=shard_size, num_workers=num_workers)
    device = device or default_device()
    torch_dtype = parse_dtype(dtype)
    dataset = VideoDataset(manifest, num_frames=num_frames, height=height, width=width, stride=stride, fps=fps,
                           train=False, flip=False, image_as_video=False, **dataset_options)
    vae, text_encoder, tokenizer = _load_encoders(model_dir, device, torch_dtype)
    vae_factor = 2 ** (len(vae.config.block_out_channels) - 1)
    if height % vae_factor or width % vae_factor:
        raise ValueError(f"height and width must be multiples of the VAE's factor {vae_factor} (the latents "
                         f"would not decode back to {height}x{width}), got {height}x{width}")
    loader = torch.utils.data.DataLoader(_Samples(dataset), batch_size=batch_size, num_workers=num_workers,
                                         collate_fn=list)
    skipped: dict[str, str] = {}
    with atomic_dir(out_dir) as tmp:
        shards = _ShardWriter(tmp, shard_size)
        with ProgressBar(total=len(dataset), desc="cache", unit="clip", disable=not progress) as bar:
            for batch in loader:
                good = _without_bad(batch, skipped)
                bar.update(len(batch))
                for latents, embeddings, group in _encode_groups(good, vae, text_encoder, tokenizer, device,
                                                                 torch_dtype):
                    shards.add(latents, embeddings, group)
        shards.flush()
        if shards.count == 0:
            first = next(iter(skipped.items()))
            raise ValueError(f"no readable samples in {manifest}: all {len(dataset)} were skipped "
                             f"(e.g. {first[0]}: {first[1]})")
        index = {
            "format": CACHE_FORMAT, "model": str(model_dir), "manifest": str(manifest), "num_samples": shards.count,
            "num_skipped": len(skipped), "skipped": skipped, "shards": shards.shards, "num_frames": num_frames,
            "height": height, "width": width, "stride": stride, "fps": fps, "dtype": dtype,
            "scaling_factor": float(vae.config.scaling_factor),
        }
        write_json_atomic(tmp / INDEX_FILE, index)
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
    check_replaceable(out_dir, _is_cache, f"a latent cache (no {INDEX_FILE})", "choose a new --out")


def _without_bad(batch: list[dict], skipped: dict[str, str]) -> list[dict]:
    """The readable samples of a batch; each bad one is logged once and recorded in `skipped` (path -> reason)."""
    good = []
    for sample in batch:
        if sample.get("bad"):
            skipped[sample["path"]] = sample["reason"]
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
    (latents, encoder_hidden_states; prompts and paths as JSON metadata), written into `folder`."""

    def __init__(self, folder: Path, shard_size: int):
        self.folder, self.shard_size = folder, shard_size
        self.shards: list[dict] = []   # {"file", "count"} of each written shard, for index.json
        self._buffer: dict[str, list] = {"latents": [], "encoder_hidden_states": [], "prompts": [], "paths": []}

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
            if len(buffer["paths"]) >= self.shard_size:
                self.flush()

    def flush(self) -> None:
        """Write what is collected as the next shard (nothing when empty)."""
        buffer = self._buffer
        if not buffer["paths"]:
            return
        name = f"shard-{len(self.shards):05d}.safetensors"
        tensors = {key: torch.cat(buffer[key]) for key in ("latents", "encoder_hidden_states")}
        metadata = {"prompts": json.dumps(buffer["prompts"]), "paths": json.dumps(buffer["paths"])}
        save_safetensors_atomic(tensors, self.folder / name, metadata=metadata)
        self.shards.append({"file": name, "count": len(buffer["paths"])})
        for values in buffer.values():
            values.clear()


class CachedLatentDataset(torch.utils.data.Dataset):
    """Samples of a latent cache: `{"latents": (c, f, h, w), "encoder_hidden_states": (L, D), "prompt": str,
    "path": str, "num_skipped": 0}` (num_skipped keeps batches compatible with VideoDataset's)."""

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
        self.offsets = [0]
        for shard in self.shards:
            self.offsets.append(self.offsets[-1] + shard["count"])
        self._text: dict[int, tuple[list, list]] = {}
        self._handles: dict[int, object] = {}

    def __len__(self) -> int:
        return self.offsets[-1]

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
        shard = bisect.bisect_right(self.offsets, index) - 1
        row = index - self.offsets[shard]
        handle = self._open(shard)
        prompts, paths = self._text[shard]
        return {
            "latents": handle.get_slice("latents")[row:row + 1][0],
            "encoder_hidden_states": handle.get_slice("encoder_hidden_states")[row:row + 1][0],
            "prompt": prompts[row],
            "path": paths[row],
            "num_skipped": 0,
        }
