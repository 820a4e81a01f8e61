"""Training data: an endless seeded sample stream, per-position seeded items, collation, and the batch encoder.

Determinism and resumption. The data order is a seeded permutation per epoch, walked by a sampler that can
start at any sample; each item's random augmentation is seeded by (seed, position in the stream). So a run
resumed at sample n sees exactly the clips of the straight run from n on, whatever the number of DataLoader
workers or processes.
"""
from __future__ import annotations

import hashlib
import random
import signal

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset, Sampler

from vidiff.config import Config
from vidiff.data import CachedLatentDataset, VideoDataset
from vidiff.data.buckets import BucketedClips
from vidiff.data.cache import is_latent_cache
from vidiff.data.shards import ShardDataset
from vidiff.models.encoding import encode_text, encode_video


class EndlessSampler(Sampler):
    """Yields `(index, position)` forever: epoch e is a permutation of range(num_items) seeded by (seed, e),
    epochs back to back, starting at global sample `start`. Under accelerate each rank takes every
    num_processes-th batch of this stream, so `start` = samples consumed by all ranks together."""

    def __init__(self, num_items: int, seed: int, start: int = 0):
        if num_items < 1:
            raise ValueError("the training dataset is empty")
        self.num_items, self.seed, self.start = num_items, seed, start

    def permutation(self, epoch: int) -> list[int]:
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
        return torch.randperm(self.num_items, generator=g).tolist()

    def __iter__(self):
        epoch, offset = divmod(self.start, self.num_items)
        position = self.start
        while True:
            for index in self.permutation(epoch)[offset:]:
                yield index, position
                position += 1
            epoch, offset = epoch + 1, 0

    def __len__(self) -> int:  # endless; a large finite number keeps DataLoader / accelerate arithmetic working
        return 2 ** 40


class BucketBatchSampler(Sampler):
    """Yields batches `[(index, position), ...]` of `batch_size` clips of one bucket, forever. Epoch e: each
    bucket's clips in a permutation seeded by (seed, e), cut into whole batches (the remainder waits for the
    next epoch's draw), and all buckets' batches in one seeded random order. Starting at global sample `start`
    (a multiple of batch_size: whole batches) continues the same stream, as EndlessSampler does; under accelerate
    each rank takes every num_processes-th batch, so each drawn clip is trained once across the job."""

    def __init__(self, bucket_sizes: list[int], batch_size: int, seed: int, start: int = 0):
        if all(n < batch_size for n in bucket_sizes):
            raise ValueError(f"no bucket holds train.batch_size={batch_size} clips (buckets hold {bucket_sizes}); "
                             f"use a smaller batch or fewer buckets")
        self.bucket_sizes, self.batch_size, self.seed, self.start = bucket_sizes, batch_size, seed, start
        self.batches_per_epoch = sum(n // batch_size for n in bucket_sizes)

    def epoch_batches(self, epoch: int) -> list[list[int]]:
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
        batches, offset = [], 0
        for n in self.bucket_sizes:
            order = (torch.randperm(n, generator=g) + offset).tolist()
            batches += [order[k:k + self.batch_size] for k in range(0, n - self.batch_size + 1, self.batch_size)]
            offset += n
        return [batches[i] for i in torch.randperm(len(batches), generator=g).tolist()]

    def __iter__(self):
        epoch, skip = divmod(self.start // self.batch_size, self.batches_per_epoch)
        position = self.start - self.start % self.batch_size
        while True:
            for batch in self.epoch_batches(epoch)[skip:]:
                yield [(index, position + j) for j, index in enumerate(batch)]
                position += len(batch)
            epoch, skip = epoch + 1, 0

    def __len__(self) -> int:  # endless (see EndlessSampler)
        return 2 ** 40


class SeededItems(Dataset):
    """Wraps a dataset so item `(index, position)` is drawn with the python / numpy / torch RNGs seeded by
    (seed, position): random clip starts, crops and flips do not depend on workers, ranks or resumption."""

    def __init__(self, dataset, seed: int):
        self.dataset, self.seed = dataset, seed

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key):
        index, position = key
        if hasattr(self.dataset, "set_epoch"):  # datasets that seed augmentation by (seed, epoch, index)
            self.dataset.set_epoch(position // len(self.dataset))
        item_seed = (self.seed * 1_000_003 + position) % 2 ** 32
        py_state, np_state = random.getstate(), np.random.get_state()
        with torch.random.fork_rng(devices=[]):
            random.seed(item_seed)
            np.random.seed(item_seed)
            torch.manual_seed(item_seed)
            try:
                return self.dataset[index]
            finally:
                random.setstate(py_state)
                np.random.set_state(np_state)


def _ignore_stop_signals(worker_id: int) -> None:
    """DataLoader workers leave Ctrl-C (sent to the whole process group) to the main process, which saves a
    checkpoint at the step boundary and then shuts them down. (SIGTERM keeps its default: the main process
    uses it to stop workers that do not exit when asked.)"""
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def collate(items: list[dict]) -> dict:
    """Stack tensors, turn numbers into a tensor, keep everything else (prompts, paths) as a list."""
    out = {}
    for key in items[0]:
        values = [item[key] for item in items]
        if torch.is_tensor(values[0]):
            out[key] = torch.stack(values)
        elif isinstance(values[0], (int, float)) and not isinstance(values[0], bool):
            out[key] = torch.tensor(values)
        else:
            out[key] = values
    return out


class ResampledClips(Dataset):
    """Clips read at their stored size (`dataset`), brought to `height` x `width` without the decoder's resize:
    "area" averages k x k pixel blocks (box filter: area resampling by the integer factor k, on the float
    pixels, so nothing is rounded back to uint8); "crop" takes a random patch (torch's RNG, which SeededItems
    seeds by stream position)."""

    def __init__(self, dataset, mode: str, height: int, width: int):
        self.dataset, self.mode, self.height, self.width = dataset, mode, height, width

    def __len__(self) -> int:
        return len(self.dataset)

    def set_epoch(self, epoch: int) -> None:
        self.dataset.set_epoch(epoch)

    def __getitem__(self, index):
        item = dict(self.dataset[index])
        video = item["pixel_values"]                                     # (c, f, H, W) in [-1, 1]
        if self.mode == "area":
            video = F.interpolate(video, size=(self.height, self.width), mode="area")
        else:
            top = int(torch.randint(0, video.shape[2] - self.height + 1, ()))
            left = int(torch.randint(0, video.shape[3] - self.width + 1, ()))
            video = video[:, :, top:top + self.height, left:left + self.width]
        item["pixel_values"] = video.contiguous()
        return item


def stored_size(dataset: VideoDataset, height: int, width: int, mode: str) -> tuple[int, int]:
    """The frame size of the dataset's first video (data.resize area / crop read clips at it), checked
    against the target size."""
    _, h, w, _ = dataset.clip_size(0)
    if mode == "area" and (h % height or w % width or h // height != w // width):
        raise ValueError(f"data.resize=area needs the stored {w}x{h} frames to be one integer multiple of "
                         f"data.width x data.height ({width}x{height})")
    if mode == "crop" and (h < height or w < width):
        raise ValueError(f"data.resize=crop needs stored frames ({w}x{h}) at least data.width x data.height "
                         f"({width}x{height})")
    return h, w


def make_dataset(config: Config, *, images: bool = False):
    """The training dataset for `config.data`: videos (a latent cache when `data.cache` is set), or with
    `images=True` the one-frame image dataset of joint image + video training.

    Cached latents are read through data.cache only, whichever number of processes wrote them: data.shards
    names tars of videos that are decoded and augmented each step, a cache holds fixed latents, and the checks
    that tell them apart (train.train_text_encoder, data.resize, data.buckets) key on the field. data.shards
    naming a cache folder is refused with the line that fixes it."""
    d = config.data
    if images:
        return VideoDataset(d.image_manifest, 1, d.height, d.width, train=True, flip=d.flip,
                            seed=config.train.seed + 1, image_ok=True)
    if d.cache:
        return CachedLatentDataset(d.cache)
    options = dict(stride=d.stride, fps=d.fps, train=True, flip=d.flip, seed=config.train.seed)
    if d.shards and is_latent_cache(d.shards):
        raise ValueError(f"data.shards={d.shards} is a latent cache (`vidiff data cache`), not tar shards of "
                         f"videos; set data.cache={d.shards} and data.shards=null")
    if d.shards:
        dataset = ShardDataset(d.shards, d.num_frames, d.height, d.width, **options)
    else:
        # Images in a video manifest would make one-frame samples that cannot share a batch with clips: they are
        # skipped (and counted) as bad samples; joint training takes them from data.image_manifest instead.
        dataset = VideoDataset(d.manifest, d.num_frames, d.height, d.width, prompt=d.prompt or None,
                               image_ok=False, **options)
    if d.buckets:
        return BucketedClips(dataset, d.buckets)
    if d.resize == "cover":
        return dataset
    dataset.height, dataset.width = stored_size(dataset, d.height, d.width, d.resize)  # read, then resampled
    return ResampledClips(dataset, d.resize, d.height, d.width)


def check_cache_geometry(dataset, config: Config, latent_channels: int, vae_scale_factor: int) -> None:
    """A latent cache fixes the clip geometry: it must be the one the config asks for."""
    d = config.data
    expected = (latent_channels, d.num_frames, d.height // vae_scale_factor, d.width // vae_scale_factor)
    found = tuple(dataset[0]["latents"].shape)
    if found != expected:
        raise ValueError(f"data.cache {d.cache} holds latents of shape {found} but data.num_frames / height / "
                         f"width ask for {expected}; rebuild the cache or set them to match")


def make_loader(dataset, *, seed: int, batch_size: int, start: int, num_workers: int,
                pin_memory: bool = False) -> DataLoader:
    """An endless DataLoader over `dataset` from global sample `start` (see EndlessSampler, SeededItems;
    BucketBatchSampler for a dataset in buckets)."""
    options = dict(collate_fn=collate, pin_memory=pin_memory, num_workers=num_workers,
                   worker_init_fn=_ignore_stop_signals)
    if isinstance(dataset, BucketedClips):
        return DataLoader(SeededItems(dataset, seed), batch_sampler=BucketBatchSampler(
            dataset.bucket_sizes, batch_size, seed, start=start), **options)
    return DataLoader(SeededItems(dataset, seed), batch_size=batch_size, sampler=EndlessSampler(len(dataset), seed,
                      start=start), drop_last=True, **options)


def skipped_file_ids(batch: dict | None) -> set[int]:
    """63-bit ids of the bad files a batch passed over (its items' `skipped_paths`): small integers that ranks
    can exchange as a tensor to count distinct files."""
    if batch is None:
        return set()
    paths = [path for item in batch.get("skipped_paths", []) for path in item]
    return {int.from_bytes(hashlib.blake2b(p.encode("utf-8", "surrogateescape"), digest_size=8).digest(), "little")
            >> 1 for p in paths}


def encode_batch(batch: dict, vae, text_encoder, tokenizer, *, caption_dropout: float, generator, device,
                 vae_chunk: int = 16, train_text: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Batch -> (latents `(b, c, f, h, w)` scaled by the VAE factor, text embeddings `(b, L, D)`).

    Caption dropout (the empty prompt with probability `caption_dropout`) trains the unconditional branch
    that classifier-free guidance needs; dropout comes from `generator`. Latents and embeddings come from
    `vidiff.models.encoding`, as the latent cache's do (the VAE posterior mean: `encode_video` says why).
    `train_text`: the embeddings keep their graph (train.train_text_encoder); else no gradients at all.
    """
    if "latents" in batch:  # a latent cache: both already computed
        return batch["latents"].to(device), batch["encoder_hidden_states"].to(device)
    pixels = batch["pixel_values"].to(device)                        # (b, 3, f, h, w) in [-1, 1]
    scaling_factor = vae.config.scaling_factor if vae is not None else 1.0
    latents = encode_video(vae, pixels, scaling_factor=scaling_factor, chunk_size=vae_chunk)  # the cache's latents
    prompts = list(batch["prompt"])
    if caption_dropout > 0:
        drop = torch.rand(len(prompts), generator=generator, device=generator.device) < caption_dropout
        prompts = ["" if d else p for p, d in zip(prompts, drop.tolist())]
    if train_text:  # encode_text's own tokenization, without its no_grad (torch's decorator keeps __wrapped__)
        text = encode_text.__wrapped__(text_encoder, tokenizer, prompts, device=device)
    else:
        text = encode_text(text_encoder, tokenizer, prompts, device=device)
    return latents.float(), text.float()
