"""Aspect-ratio buckets: clips of mixed sizes trained at a few fixed shapes, one shape per batch.

Each clip goes to the bucket (frames, height, width) nearest its aspect ratio (in log ratio, so 2:1 and 1:2 are
equally far from 1:1) among the buckets that fit inside it: height and width at most the clip's, and the bucket's
frames at the configured stride / fps within the clip's length. So nothing is upscaled; a clip smaller than every
bucket is skipped and counted (one warning line at start) rather than blurred up to the smallest one. Ties go to
the larger bucket, then to the earlier one. The assignment reads only the stored size (headers once at start, or
a shard index), so it is the same in every process. The batches themselves come from
vidiff.training.data.BucketBatchSampler.

References: aspect-ratio bucketing as in NovelAI's SD training (https://github.com/NovelAI/novelai-aspect-ratio-bucketing).
"""
from __future__ import annotations

import copy
import logging
import math

from torch.utils.data import Dataset

from vidiff.data.datasets import VideoDataset
from vidiff.data.video_io import VideoReadError, clip_span, frame_step

logger = logging.getLogger("vidiff.data")


def nearest_bucket(size: tuple[int, int, int, float], buckets: list[list[int]], *, stride: int | None,
                   fps: float | None) -> int | None:
    """The index of the bucket for a clip stored as (num_frames, height, width, fps), or None if none fits."""
    num_frames, height, width, clip_fps = size
    if fps and not clip_fps:
        return None
    step = frame_step(stride, fps, clip_fps if fps else None)
    fitting = [i for i, (f, h, w) in enumerate(buckets)
               if h <= height and w <= width and clip_span(f, step) <= num_frames]
    aspect = math.log(width / height)
    return min(fitting, key=lambda i: (abs(math.log(buckets[i][2] / buckets[i][1]) - aspect),
                                       -math.prod(buckets[i]), i), default=None)


class BucketedClips(Dataset):
    """The clips of `dataset` grouped by bucket: index `offsets[b] + j` is clip j of bucket b, read at bucket b's
    frames, height and width. Each bucket is a shallow copy of `dataset` holding only its own entries (so a bad
    file is replaced by another clip of its bucket; the copies share the bad-file record). `bucket_sizes`
    tells the sampler how many clips each bucket has."""

    def __init__(self, dataset: VideoDataset, buckets: list[list[int]]):
        groups: list[list] = [[] for _ in buckets]
        unreadable, too_small = [], []
        for i, entry in enumerate(dataset.entries):
            try:
                size = dataset.clip_size(i)
            except (VideoReadError, OSError):
                unreadable.append(entry.path)
                continue
            b = nearest_bucket(size, buckets, stride=dataset.stride, fps=dataset.fps)
            (groups[b] if b is not None else too_small).append(entry)
        self.num_skipped = len(unreadable) + len(too_small)
        if too_small or unreadable:
            example = (too_small or unreadable)[0]
            logger.warning(f"data.buckets: skipping {len(too_small)} clips smaller than every bucket and "
                           f"{len(unreadable)} unreadable ones, of {len(dataset.entries)} (e.g. {example})")
        if not any(groups):
            raise ValueError(f"no clip fits any of data.buckets {buckets} (buckets never upscale: use smaller ones)")
        self.views = []
        for b, ((frames, height, width), entries) in enumerate(zip(buckets, groups)):
            view = copy.copy(dataset)
            view.entries, view.repeat = entries, 1
            view.num_frames, view.height, view.width = frames, height, width
            view.seed = dataset.seed * 1_000_003 + b + 1  # crops and starts drawn independently per bucket
            self.views.append(view)
        self.bucket_sizes = [len(view) for view in self.views]
        self.offsets = [sum(self.bucket_sizes[:b]) for b in range(len(buckets))]

    def __len__(self) -> int:
        return sum(self.bucket_sizes)

    def set_epoch(self, epoch: int) -> None:
        for view in self.views:
            view.set_epoch(epoch)

    def __getitem__(self, index: int) -> dict:
        bucket = next(b for b, (offset, size) in enumerate(zip(self.offsets, self.bucket_sizes))
                      if offset <= index < offset + size)
        return self.views[bucket][index - self.offsets[bucket]]
