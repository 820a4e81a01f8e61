"""Data-loading throughput: random 16-frame clips at stride 4, resized and cropped to 256 x 256.

    python tools/bench_data.py                      # the real clips in ../shared/data/videos
    python tools/bench_data.py --videos DIR --clips 64 --workers 1 2

Each reader runs through `VideoDataset` (train mode: random clip start and crop) in a DataLoader with 1 and 2
worker processes, batch size 1; the first batch of each run (worker start-up) is not timed. Readers:
  decord   decord.VideoReader.get_batch with resizing in the decoder (vidiff's default when installed)
  pyav     vidiff's PyAV reader: seek to the keyframe before the clip, decode to its last frame, swscale resize
  imageio  imageio's ffmpeg plugin as a naive baseline: decode every frame of the file (ffmpeg subprocess),
           pick the clip's frames, resize with PIL
Clips shorter than the span a sample needs ((16 - 1) * 4 + 1 = 61 frames) are left out and listed: of the
shared clips only car-turn.mp4 (80 frames) is long enough; camel.mp4 and white-swan.mp4 have 8 frames.
Prints a markdown table: frames/s of wall time and CPU milliseconds per frame (decode + resize + crop + tensor,
summed over workers), each with its ratio to PyAV at the same worker count, measured in the same run.
"""
from __future__ import annotations

import argparse
import csv
import resource
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from vidiff.data.datasets import VideoDataset, collate, cover_size
from vidiff.data.video_io import VideoReadError, _have_decord, probe_video

DEFAULT_VIDEOS = Path(__file__).resolve().parents[2] / "shared" / "data" / "videos"


class ImageioDataset(VideoDataset):
    """VideoDataset whose video reader is imageio's ffmpeg plugin (whole file decoded, PIL resize)."""

    def _load_video(self, path, rng):
        import imageio.v3 as iio
        from PIL import Image

        info = probe_video(path)
        span = (self.num_frames - 1) * self.stride + 1
        if span > info.num_frames:
            raise VideoReadError(path, "too short")
        start = int(rng.integers(0, info.num_frames - span + 1)) if rng is not None else 0
        frames = iio.imread(path, plugin="FFMPEG", index=None)[start:start + span:self.stride]
        height, width = cover_size(info.height, info.width, self.height, self.width)
        return np.stack([np.asarray(Image.fromarray(f).resize((width, height), Image.BILINEAR)) for f in frames])


def cpu_seconds() -> float:
    """User + system CPU time of this process and its finished children (the DataLoader workers)."""
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def run(dataset, clips: int, workers: int) -> tuple[float, float]:
    """(frames per second of wall time, CPU milliseconds per frame) over `clips` samples.

    Wall time excludes the first batch (worker start-up); CPU time, summed over the workers after they exit,
    includes it and is the figure to trust on a shared, busy machine, where wall time also measures the
    neighbours (and multi-threaded decoders win a larger share of a contended CPU).
    """
    sampler = torch.utils.data.RandomSampler(dataset, replacement=True, num_samples=clips + 1,
                                             generator=torch.Generator().manual_seed(0))
    loader = torch.utils.data.DataLoader(dataset, batch_size=1, sampler=sampler, num_workers=workers,
                                         collate_fn=collate)
    cpu_start = cpu_seconds()
    iterator = iter(loader)
    first = next(iterator)["pixel_values"].shape[2]
    start = time.perf_counter()
    frames = sum(batch["pixel_values"].shape[2] for batch in iterator)
    wall = time.perf_counter() - start
    del iterator  # shuts the workers down, so their CPU time is counted
    cpu = cpu_seconds() - cpu_start
    return frames / wall, 1000 * cpu / (frames + first)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--videos", type=Path, default=DEFAULT_VIDEOS, help="folder of .mp4 clips")
    parser.add_argument("--clips", type=int, default=48, help="clips decoded per measurement")
    parser.add_argument("--num-frames", type=int, default=16)
    parser.add_argument("--stride", type=int, default=4)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--readers", nargs="+", default=["decord", "pyav", "imageio"])
    args = parser.parse_args()

    span = (args.num_frames - 1) * args.stride + 1
    usable, skipped = [], []
    for path in sorted(args.videos.glob("*.mp4")):
        info = probe_video(path)
        (usable if info.num_frames >= span else skipped).append((path, info))
    if not usable:
        raise SystemExit(f"no clip in {args.videos} has the {span} frames a sample needs")
    readers = [r for r in args.readers if r != "decord" or _have_decord()]

    with tempfile.TemporaryDirectory() as tmp:
        manifest = Path(tmp) / "manifest.csv"
        with manifest.open("w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(["path", "caption"])
            writer.writerows([str(path), path.stem] for path, _ in usable)
        options = dict(num_frames=args.num_frames, height=args.size, width=args.size, stride=args.stride,
                       train=True, repeat=1000)
        results = {}
        for workers in args.workers:
            for reader in readers:
                if reader == "imageio":
                    dataset = ImageioDataset(manifest, **options)
                else:
                    dataset = VideoDataset(manifest, backend=reader, **options)
                results[reader, workers] = run(dataset, args.clips, workers)

    print(f"clips: {', '.join(f'{p.name} ({i.num_frames} frames, {i.width}x{i.height})' for p, i in usable)}")
    if skipped:
        print(f"left out (fewer than {span} frames): "
              f"{', '.join(f'{p.name} ({i.num_frames} frames)' for p, i in skipped)}")
    print(f"{args.clips} random clips of {args.num_frames} frames at stride {args.stride}, resized + cropped to "
          f"{args.size}x{args.size}, torch {torch.__version__}, {torch.get_num_threads()} threads\n")
    print("| reader | workers | frames/s | clips/s | frames/s vs PyAV | CPU ms/frame | CPU vs PyAV |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for workers in args.workers:
        for reader in readers:
            fps, cpu = results[reader, workers]
            base_fps, base_cpu = results.get(("pyav", workers), (float("nan"), float("nan")))
            print(f"| {reader} | {workers} | {fps:.0f} | {fps / args.num_frames:.1f} | {fps / base_fps:.2f}x | "
                  f"{cpu:.1f} | {cpu / base_cpu:.2f}x |")


if __name__ == "__main__":
    main()
