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

Tar shards against loose files (the same clips, the same random draws, side by side in one run):

    OMP_NUM_THREADS=1 python tools/bench_data.py --shapes 64 --sources files shards --readers decord pyav \
        --workers 1 --num-frames 16 --stride 2 --size 128 --clips 192 --repeats 3

`--shapes N` writes N synthetic clips (`vidiff data shapes`: --shapes-frames frames of --shapes-size pixels)
instead of reading --videos; `--sources files shards` also writes them as tar shards (`vidiff data shard`) and
reads each clip through ShardDataset (the member read by its byte offset into a temporary file, then the same
decoder). A second table gives clips/s of wall time and clips per CPU-second (per core: with 1 worker the
decoding runs in one process) for files and shards, and their ratios; `--repeats R` keeps the best of R.
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
from vidiff.data.shards import ShardDataset, write_shards
from vidiff.data.synthetic import write_shapes_dataset
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


def make_dataset(source: str, reader: str, manifest: Path, shards: Path | None, options: dict):
    """The dataset that reads the clips of `manifest` from loose files or from their tar shards."""
    if source == "shards":
        return ShardDataset(shards, backend=reader, **options)
    if reader == "imageio":
        return ImageioDataset(manifest, **options)
    return VideoDataset(manifest, backend=reader, **options)


def print_reader_table(results: dict, args, readers: list[str]) -> None:
    print("| reader | workers | frames/s | clips/s | frames/s vs PyAV | CPU ms/frame | CPU vs PyAV |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for workers in args.workers:
        for reader in readers:
            fps, cpu = results["files", reader, workers]
            base_fps, base_cpu = results.get(("files", "pyav", workers), (float("nan"), float("nan")))
            print(f"| {reader} | {workers} | {fps:.0f} | {fps / args.num_frames:.1f} | {fps / base_fps:.2f}x | "
                  f"{cpu:.1f} | {cpu / base_cpu:.2f}x |")


def print_source_table(results: dict, args, readers: list[str]) -> None:
    """Shards against files: clips/s of wall time, clips per CPU-second, and shards / files for each."""
    print("| reader | workers | files clips/s | shards clips/s | shards / files | files clips/CPU-s | "
          "shards clips/CPU-s | shards / files (CPU) |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for workers in args.workers:
        for reader in readers:
            if ("shards", reader, workers) not in results:
                continue
            (files_fps, files_cpu), (shards_fps, shards_cpu) = (results[source, reader, workers]
                                                                for source in ("files", "shards"))
            files_cps, shards_cps = (1000 / (cpu * args.num_frames) for cpu in (files_cpu, shards_cpu))
            print(f"| {reader} | {workers} | {files_fps / args.num_frames:.1f} | {shards_fps / args.num_frames:.1f} "
                  f"| {shards_fps / files_fps:.2f}x | {files_cps:.1f} | {shards_cps:.1f} | "
                  f"{shards_cps / files_cps:.2f}x |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--videos", type=Path, default=DEFAULT_VIDEOS, help="folder of .mp4 clips")
    parser.add_argument("--shapes", type=int, default=0, help="use N synthetic shapes clips instead of --videos")
    parser.add_argument("--shapes-frames", type=int, default=48, help="frames of each synthetic clip")
    parser.add_argument("--shapes-size", type=int, default=128, help="width and height of the synthetic clips")
    parser.add_argument("--sources", nargs="+", default=["files"], choices=["files", "shards"],
                        help="read the clips from loose files and/or from tar shards of them")
    parser.add_argument("--clips", type=int, default=48, help="clips decoded per measurement")
    parser.add_argument("--num-frames", type=int, default=16)
    parser.add_argument("--stride", type=int, default=4)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--readers", nargs="+", default=["decord", "pyav", "imageio"])
    parser.add_argument("--repeats", type=int, default=1,
                        help="measure each R times, in alternating order, and keep the best (a shared machine's "
                             "neighbours only ever slow a run down)")
    args = parser.parse_args()

    span = (args.num_frames - 1) * args.stride + 1
    readers = [r for r in args.readers if r != "decord" or _have_decord()]
    with tempfile.TemporaryDirectory() as tmp:
        videos = args.videos
        if args.shapes:
            videos = Path(tmp) / "shapes"
            write_shapes_dataset(videos, args.shapes, num_frames=args.shapes_frames, size=args.shapes_size, seed=0,
                                 progress=False)
        usable, skipped = [], []
        for path in sorted(videos.glob("*.mp4")):
            info = probe_video(path)
            (usable if info.num_frames >= span else skipped).append((path, info))
        if not usable:
            raise SystemExit(f"no clip in {videos} has the {span} frames a sample needs")
        manifest = Path(tmp) / "manifest.csv"
        with manifest.open("w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(["path", "caption"])
            writer.writerows([str(path), path.stem] for path, _ in usable)
        shards = None
        if "shards" in args.sources:
            shards = Path(tmp) / "shards"
            write_shards(manifest, shards, shard_size=64 * 2 ** 20, progress=False)
        options = dict(num_frames=args.num_frames, height=args.size, width=args.size, stride=args.stride,
                       train=True, repeat=1000)
        results = {}
        for repeat in range(args.repeats):
            for workers in args.workers:
                for reader in readers:
                    sources = args.sources if repeat % 2 == 0 else args.sources[::-1]  # neither always goes first
                    for source in sources:  # side by side: the same clips, the same draws
                        if source == "shards" and reader == "imageio":
                            continue  # (the imageio baseline reads files only)
                        fps, cpu = run(make_dataset(source, reader, manifest, shards, options), args.clips, workers)
                        best = results.get((source, reader, workers), (0.0, float("inf")))
                        results[source, reader, workers] = max(best[0], fps), min(best[1], cpu)

    if args.shapes:
        info = usable[0][1]
        print(f"clips: {len(usable)} synthetic shapes clips ({info.num_frames} frames, {info.width}x{info.height})")
    else:
        print(f"clips: {', '.join(f'{p.name} ({i.num_frames} frames, {i.width}x{i.height})' for p, i in usable)}")
    if skipped:
        print(f"left out (fewer than {span} frames): "
              f"{', '.join(f'{p.name} ({i.num_frames} frames)' for p, i in skipped)}")
    print(f"{args.clips} random clips of {args.num_frames} frames at stride {args.stride}, resized + cropped to "
          f"{args.size}x{args.size}, torch {torch.__version__}, {torch.get_num_threads()} threads, best of "
          f"{args.repeats}\n")
    if "files" in args.sources:
        print_reader_table(results, args, readers)
    if set(args.sources) == {"files", "shards"}:
        print()
        print_source_table(results, args, readers)


if __name__ == "__main__":
    main()
