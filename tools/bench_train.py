"""Benchmark `vidiff train`: step time, samples/s, peak memory with and without gradient checkpointing, and
the share of each step spent waiting for data.

    python tools/bench_train.py                       # small SD-like config, fp32 on the CPU
    python tools/bench_train.py --frames 16 --size 128 --steps 10 --workers 0 2
    python tools/bench_train.py --mixed-precision bf16 --size 256 --frames 16   # on a GPU

Every variant runs the real trainer (`vidiff.training.train`) in its own process on a synthetic shapes dataset
and a small random SD-like pipeline (built here, no download). Step time and samples/s are medians over the
steps after `--warmup`, data wait share = time blocked on the DataLoader / step time (the trainer's CSV).
Peak memory is measured over the steps after the first: on CUDA `max_memory_allocated`, on the CPU the process's
resident-set high-water mark (VmHWM, reset through /proc/self/clear_refs), both minus the memory held right
after step 1 (weights, optimiser state, loader), i.e. what the step itself needs: activations and gradients.
Prints a markdown table; ratios are against the first variant, measured in the same run.
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _proc_status_mb(field: str) -> float:
    """A memory field of /proc/self/status in MiB (VmRSS: resident now, VmHWM: peak resident)."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    return float("nan")


def _rss_mb() -> float:
    return _proc_status_mb("VmRSS")


def _hwm_mb() -> float:
    return _proc_status_mb("VmHWM")


def child(args) -> None:
    """One variant: train, then write {peak_mb, ...} as JSON to args.result."""
    import torch

    from vidiff.config import load_config
    from vidiff.training import train

    if args.threads:
        torch.set_num_threads(args.threads)
    cuda = torch.cuda.is_available()
    marks = {}

    def on_step(step, row):
        if step == 1:  # weights, optimiser state and loader are in memory now: measure the steps from here
            if cuda:
                torch.cuda.synchronize()
                marks["base"] = torch.cuda.memory_allocated() / 2 ** 20
                torch.cuda.reset_peak_memory_stats()
            else:
                marks["base"] = _rss_mb()
                try:
                    Path("/proc/self/clear_refs").write_text("5")  # reset the RSS high-water mark
                except OSError:
                    marks["no_reset"] = True
        return False

    overrides = [f"model.pretrained={args.model}", f"data.manifest={args.data}", f"output_dir={args.out}",
                 f"data.num_frames={args.frames}", f"data.height={args.size}", f"data.width={args.size}",
                 f"data.num_workers={args.workers[0]}", f"train.batch_size={args.batch}",
                 f"train.max_steps={args.steps}", "train.checkpoint_every=0", f"train.trainable={args.trainable}",
                 f"train.gradient_checkpointing={'true' if args.checkpointing else 'false'}",
                 f"train.mixed_precision={args.mixed_precision}", "train.log_every=1"]
    config = load_config(REPO / "configs" / "train" / "tiny.yaml", overrides)
    train(config, on_step=on_step, log=lambda *a, **k: None)
    if cuda:
        peak = torch.cuda.max_memory_allocated() / 2 ** 20
    else:
        peak = _hwm_mb()
    Path(args.result).write_text(json.dumps({"peak_mb": peak - marks.get("base", 0.0),
                                             "reset": "no_reset" not in marks}))


def build_assets(root: Path, args) -> tuple[Path, Path]:
    from vidiff.data.synthetic import write_shapes_dataset
    from vidiff.testing import make_tiny_sd_pipeline

    model = root / "sd"
    # A small SD-like U-Net: two cross-attention levels, widths 32-64 (bigger than the tests' tiny one, so the
    # step is compute-bound), the tests' tiny VAE and text encoder.
    make_tiny_sd_pipeline(model, unet_kwargs=dict(
        block_out_channels=(args.width, 2 * args.width), layers_per_block=1,
        down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D")))
    data = root / "shapes"
    write_shapes_dataset(data, args.clips, num_frames=max(16, args.frames), size=args.size + args.size // 4, seed=0)
    return model, data


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--frames", type=int, default=8, help="frames per clip (default: %(default)s)")
    p.add_argument("--size", type=int, default=64, help="pixels; latents are size/2 with the tiny VAE (default: %(default)s)")
    p.add_argument("--width", type=int, default=32, help="U-Net base width (default: %(default)s)")
    p.add_argument("--batch", type=int, default=1, help="clips per step (default: %(default)s)")
    p.add_argument("--steps", type=int, default=8, help="steps per variant (default: %(default)s)")
    p.add_argument("--warmup", type=int, default=2, help="steps left out of the medians (default: %(default)s)")
    p.add_argument("--clips", type=int, default=8, help="clips in the synthetic dataset (default: %(default)s)")
    p.add_argument("--workers", type=int, nargs="+", default=[0, 2],
                   help="DataLoader workers to compare, without checkpointing (default: 0 2)")
    p.add_argument("--trainable", default="temporal", help="temporal | temporal+attn-q | all (default: %(default)s)")
    p.add_argument("--mixed-precision", default="no", help="no | fp16 | bf16 (default: %(default)s)")
    p.add_argument("--threads", type=int, default=0, help="torch intra-op threads, 0 = torch's default")
    p.add_argument("--keep", default=None, help="keep the assets and runs in this folder")
    # internal: one variant in a child process
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--model", help=argparse.SUPPRESS)
    p.add_argument("--data", help=argparse.SUPPRESS)
    p.add_argument("--out", help=argparse.SUPPRESS)
    p.add_argument("--result", help=argparse.SUPPRESS)
    p.add_argument("--checkpointing", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        return child(args)

    root = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="bench_train."))
    root.mkdir(parents=True, exist_ok=True)
    model, data = build_assets(root, args)
    variants = [("no checkpointing", False, args.workers[0]), ("gradient checkpointing", True, args.workers[0])]
    variants += [(f"no checkpointing, {w} workers", False, w) for w in args.workers[1:]]
    rows = []
    for i, (name, ckpt, workers) in enumerate(variants):
        out, result = root / f"run{i}", root / f"run{i}.json"
        cmd = [sys.executable, __file__, "--child", "--model", str(model), "--data", str(data), "--out", str(out),
               "--result", str(result), "--frames", str(args.frames), "--size", str(args.size),
               "--batch", str(args.batch), "--steps", str(args.steps), "--workers", str(workers),
               "--trainable", args.trainable, "--mixed-precision", args.mixed_precision,
               "--threads", str(args.threads)] + (["--checkpointing"] if ckpt else [])
        print(f"[{i + 1}/{len(variants)}] {name} ...", file=sys.stderr, flush=True)
        with open(root / f"run{i}.log", "w") as log_file:
            proc = subprocess.run(cmd, stdout=log_file, stderr=subprocess.STDOUT,
                                  env=dict(os.environ, PYTHONWARNINGS="ignore"))
        if proc.returncode:
            sys.exit(f"variant {name!r} failed; see {root / f'run{i}.log'}:\n"
                     + (root / f"run{i}.log").read_text()[-3000:])
        with open(out / "train_log.csv", newline="") as f:
            log = [r for r in csv.DictReader(f)][args.warmup:]
        samples_per_s = statistics.median(float(r["samples_per_s"]) for r in log)
        rows.append({"name": name, "workers": workers, "step_s": args.batch / samples_per_s,
                     "samples_per_s": samples_per_s,
                     "wait": statistics.mean(float(r["data_wait_share"]) for r in log),
                     **json.loads(result.read_text())})

    import torch

    device = "cuda" if torch.cuda.is_available() else "cpu"
    threads = args.threads or torch.get_num_threads()
    print(f"\n`vidiff train`, {args.trainable} layers, U-Net widths {args.width}-{2 * args.width} (2 cross-attention "
          f"levels), batch {args.batch} x {args.frames} frames x {args.size}x{args.size} px "
          f"({args.size // 2}x{args.size // 2} latents), {args.mixed_precision if args.mixed_precision != 'no' else 'fp32'} "
          f"on {device} ({threads} threads), median of steps {args.warmup + 1}-{args.steps}\n")
    print("| variant | workers | step (s) | samples/s | data wait / step | peak step memory (MiB) | time ratio | memory ratio |")
    print("|---|---|---|---|---|---|---|---|")
    base = rows[0]
    for r in rows:
        print(f"| {r['name']} | {r['workers']} | {r['step_s']:.3f} | {r['samples_per_s']:.2f} | {r['wait']:.1%} | "
              f"{r['peak_mb']:.0f} | {r['step_s'] / base['step_s']:.2f}x | {r['peak_mb'] / base['peak_mb']:.2f}x |")
    if not all(r["reset"] for r in rows):
        print("\n(could not reset the RSS high-water mark: peak memory includes start-up)")
    print(f"\nassets and runs in {root}" if args.keep else "")


if __name__ == "__main__":
    main()
