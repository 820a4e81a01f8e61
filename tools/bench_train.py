"""Benchmark `vidiff train`: step time, samples/s, peak memory with and without gradient checkpointing, the share
of each step spent waiting for data, or (`--compare trainable`) what each trainable set costs.

    python tools/bench_train.py                       # small SD-like config, fp32 on the CPU
    python tools/bench_train.py --frames 16 --size 128 --steps 10 --workers 0 2
    python tools/bench_train.py --mixed-precision bf16 --size 256 --frames 16   # on a GPU
    python tools/bench_train.py --compare trainable   # temporal / LoRA rank 8 / LoRA rank 64 / all
    python tools/bench_train.py --compare trainable --sd15 --frames 4 --size 64 --steps 4 --warmup 1

--compare checkpointing (the default): no checkpointing, gradient checkpointing, then each further `--workers`
count without checkpointing, all training `--trainable`.
--compare trainable: train.trainable=temporal, train.trainable=lora (targets "both", alpha = rank) for each of
`--lora-ranks`, train.trainable=all; without checkpointing, `--workers`' first count. Reports the trainable
parameters (exact count, as the trainer selected them, and their fp32 size) next to step time and memory.

--sd15 builds the U-Net with Stable Diffusion 1.5's exact architecture (widths 320-640-1280-1280, 2 layers per
block, 3 cross-attention levels, cross-attention dim 768, 8 heads, norm groups 32; random weights, about 860M
parameters before vidiff inflates it) with a text encoder of hidden size 768 (2 layers) and the tests' tiny VAE
(factor 2): latents are size/2, and must be a multiple of 8 (3 downsamplings). Without it: a small SD-like U-Net
of widths `--width`-2x`--width` (2 cross-attention levels) and the tests' tiny text encoder.

Every variant runs the real trainer (`vidiff.training.train`) in its own process on a synthetic shapes dataset
and the random pipeline (built here, in a process of its own, no download); the run's final checkpoint and
export are skipped (they are not what is measured). Step time and samples/s are medians over the steps after
`--warmup`, data wait share = time blocked on the DataLoader / step time (the trainer's CSV).
Peak memory is measured over the steps after the first: on CUDA `max_memory_allocated`, on the CPU the process's
resident-set high-water mark (VmHWM, reset through /proc/self/clear_refs), both minus the memory held right
after step 1 (weights, optimiser state, loader), i.e. what the step itself needs: activations and gradients.
Prints a markdown table (the command line as its header); ratios are against the first variant, measured in the
same run.
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

# Stable Diffusion 1.5's U-Net (its unet/config.json), and a text encoder as wide as its CLIP ViT-L/14 (hidden
# 768, so cross attention fits) but only 2 layers deep: it is frozen and runs once per step.
SD15_UNET = dict(
    block_out_channels=(320, 640, 1280, 1280), layers_per_block=2, cross_attention_dim=768, attention_head_dim=8,
    norm_num_groups=32, sample_size=64, in_channels=4, out_channels=4,
    down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
    up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"))
SD15_TEXT_ENCODER = dict(hidden_size=768, intermediate_size=3072, num_attention_heads=12, num_hidden_layers=2,
                         projection_dim=768)


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
    """One variant: train, then write {peak_mb, trainable, ...} as JSON to args.result."""
    import torch

    from vidiff.config import load_config
    from vidiff.training import trainer

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

    def finish_unsaved(run, train_log, status, stop_signal):
        """In place of trainer.finish: count what trained, stop the loader, close the log; no final checkpoint
        and no export (an SD-1.5-size "all" run would write ~12 GB of optimiser state and weights)."""
        unet = run.accelerator.unwrap_model(run.unet)
        marks["trainable"] = sum(p.numel() for p in run.trainable.values())
        marks["unet"] = sum(p.numel() for name, p in unet.named_parameters() if ".lora_" not in name)
        marks["trainable_bytes"] = sum(p.numel() * p.element_size() for p in run.trainable.values())
        for batches in (run.batches, run.image_batches):
            getattr(batches, "close", lambda: None)()
        train_log.close(plot=False)
        run.accelerator.end_training()

    trainer.finish = finish_unsaved  # train() looks it up in its module
    overrides = [f"model.pretrained={args.model}", f"data.manifest={args.data}", f"output_dir={args.out}",
                 f"data.num_frames={args.frames}", f"data.height={args.size}", f"data.width={args.size}",
                 f"train.batch_size={args.batch}", f"train.max_steps={args.steps}", "train.checkpoint_every=0",
                 f"train.mixed_precision={args.mixed_precision}", "train.log_every=1"] + args.set
    config = load_config(REPO / "configs" / "train" / "tiny.yaml", overrides)
    trainer.train(config, on_step=on_step, log=lambda *a, **k: None)
    if cuda:
        peak = torch.cuda.max_memory_allocated() / 2 ** 20
    else:
        peak = _hwm_mb()
    device = torch.cuda.get_device_name() if cuda else "cpu"
    Path(args.result).write_text(json.dumps({"peak_mb": peak - marks.get("base", 0.0),
                                             "reset": "no_reset" not in marks, "device": device,
                                             "trainable": marks["trainable"], "unet": marks["unet"],
                                             "trainable_bytes": marks["trainable_bytes"]}))


def build_assets(root: Path, args) -> tuple[Path, Path]:
    """The random SD pipeline and the shapes dataset under `root` (run in a process of its own: an SD-1.5-size
    U-Net built here would otherwise stay in the parent's memory while the variants run)."""
    from vidiff.data.synthetic import write_shapes_dataset
    from vidiff.testing import make_tiny_sd_pipeline

    model = root / "sd"
    if args.sd15:
        make_tiny_sd_pipeline(model, unet_kwargs=SD15_UNET, text_encoder_kwargs=SD15_TEXT_ENCODER)
    else:
        # A small SD-like U-Net: two cross-attention levels, widths 32-64 (bigger than the tests' tiny one, so the
        # step is compute-bound), the tests' tiny VAE and text encoder.
        make_tiny_sd_pipeline(model, unet_kwargs=dict(
            block_out_channels=(args.width, 2 * args.width), layers_per_block=1,
            down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
            up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D")))
    data = root / "shapes"
    write_shapes_dataset(data, args.clips, num_frames=max(16, args.frames), size=args.size + args.size // 4, seed=0)
    return model, data


def variants(args) -> list[dict]:
    """name, the variant's config overrides, its DataLoader workers."""
    w0 = args.workers[0]
    if args.compare == "trainable":
        lora = [dict(name=f"LoRA rank {r}", workers=w0,
                     set=["train.trainable=lora", f"train.lora.rank={r}", f"train.lora.alpha={r}",
                          "train.lora.targets=both"]) for r in args.lora_ranks]
        found = [dict(name="temporal", workers=w0, set=["train.trainable=temporal"]), *lora,
                 dict(name="all", workers=w0, set=["train.trainable=all"])]
        for v in found:
            v["set"] += ["train.gradient_checkpointing=false", f"data.num_workers={w0}"]
        return found
    found = [dict(name="no checkpointing", workers=w0, ckpt=False), dict(name="gradient checkpointing", workers=w0,
                                                                         ckpt=True)]
    found += [dict(name=f"no checkpointing, {w} workers", workers=w, ckpt=False) for w in args.workers[1:]]
    for v in found:
        v["set"] = [f"train.trainable={args.trainable}", f"data.num_workers={v['workers']}",
                    f"train.gradient_checkpointing={'true' if v.pop('ckpt') else 'false'}"]
    return found


def _params(n: int) -> str:
    return f"{n / 1e6:.2f}M" if n >= 1e5 else f"{n / 1e3:.1f}k"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--compare", choices=("checkpointing", "trainable"), default="checkpointing",
                   help="checkpointing: gradient checkpointing on / off and DataLoader workers; trainable: "
                        "temporal / LoRA ranks / all (default: %(default)s)")
    p.add_argument("--sd15", action="store_true",
                   help="Stable Diffusion 1.5's U-Net architecture (random weights) and a 768-wide text encoder")
    p.add_argument("--frames", type=int, default=8, help="frames per clip (default: %(default)s)")
    p.add_argument("--size", type=int, default=64, help="pixels; latents are size/2 with the tiny VAE (default: %(default)s)")
    p.add_argument("--width", type=int, default=32, help="U-Net base width, without --sd15 (default: %(default)s)")
    p.add_argument("--batch", type=int, default=1, help="clips per step (default: %(default)s)")
    p.add_argument("--steps", type=int, default=8, help="steps per variant (default: %(default)s)")
    p.add_argument("--warmup", type=int, default=2, help="steps left out of the medians (default: %(default)s)")
    p.add_argument("--clips", type=int, default=8, help="clips in the synthetic dataset (default: %(default)s)")
    p.add_argument("--workers", type=int, nargs="+", default=[0, 2],
                   help="DataLoader workers to compare, without checkpointing; --compare trainable uses the first "
                        "(default: 0 2)")
    p.add_argument("--trainable", default="temporal",
                   help="--compare checkpointing's trainable set: temporal | temporal+attn-q | all (default: %(default)s)")
    p.add_argument("--lora-ranks", type=int, nargs="+", default=[8, 64],
                   help="--compare trainable's LoRA ranks (alpha = rank, targets both; default: 8 64)")
    p.add_argument("--mixed-precision", default="no", help="no | fp16 | bf16 (default: %(default)s)")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto",
                   help="auto: CUDA when there is one (accelerate's choice); cpu hides the GPUs (default: %(default)s)")
    p.add_argument("--threads", type=int, default=0, help="torch intra-op threads, 0 = torch's default")
    p.add_argument("--keep", default=None, help="keep the assets and runs in this folder")
    # internal: one variant, or the assets, in a child process
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--build", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--model", help=argparse.SUPPRESS)
    p.add_argument("--data", help=argparse.SUPPRESS)
    p.add_argument("--out", help=argparse.SUPPRESS)
    p.add_argument("--result", help=argparse.SUPPRESS)
    p.add_argument("--set", action="append", default=[], help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        return child(args)
    if args.build:
        build_assets(Path(args.out), args)
        return None

    factor = 2 ** 3 if args.sd15 else 2  # the U-Net's downsamplings
    if args.size % 2 or (args.size // 2) % factor:
        p.error(f"--size {args.size} gives {args.size / 2:g}x{args.size / 2:g} latents (tiny VAE, factor 2); the "
                f"{'SD 1.5' if args.sd15 else 'small'} U-Net needs a multiple of {factor}: --size a multiple of "
                f"{2 * factor}")
    if args.warmup >= args.steps:
        p.error(f"--warmup {args.warmup} leaves no step of --steps {args.steps} to measure")
    env = dict(os.environ, PYTHONWARNINGS="ignore")
    if args.device == "cpu":
        env["CUDA_VISIBLE_DEVICES"] = ""
    elif args.device == "cuda":
        import torch
        if not torch.cuda.is_available():
            p.error("--device cuda: torch sees no CUDA device")

    started = time.perf_counter()
    root = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="bench_train."))
    root.mkdir(parents=True, exist_ok=True)
    common = ["--frames", str(args.frames), "--size", str(args.size), "--width", str(args.width),
              "--clips", str(args.clips)] + (["--sd15"] if args.sd15 else [])
    print("building the random pipeline and the dataset ...", file=sys.stderr, flush=True)
    subprocess.run([sys.executable, __file__, "--build", "--out", str(root)] + common, check=True, env=env)
    model, data = root / "sd", root / "shapes"
    todo = variants(args)
    rows = []
    for i, v in enumerate(todo):
        out, result = root / f"run{i}", root / f"run{i}.json"
        cmd = [sys.executable, __file__, "--child", "--model", str(model), "--data", str(data), "--out", str(out),
               "--result", str(result), "--batch", str(args.batch), "--steps", str(args.steps),
               "--mixed-precision", args.mixed_precision, "--threads", str(args.threads)] + common
        cmd += [a for s in v["set"] for a in ("--set", s)]
        print(f"[{i + 1}/{len(todo)}] {v['name']} ...", file=sys.stderr, flush=True)
        t0 = time.perf_counter()
        with open(root / f"run{i}.log", "w") as log_file:
            proc = subprocess.run(cmd, stdout=log_file, stderr=subprocess.STDOUT, env=env)
        if proc.returncode:
            sys.exit(f"variant {v['name']!r} failed; see {root / f'run{i}.log'}:\n"
                     + (root / f"run{i}.log").read_text()[-3000:])
        with open(out / "train_log.csv", newline="") as f:
            log = [r for r in csv.DictReader(f)][args.warmup:]
        samples_per_s = statistics.median(float(r["samples_per_s"]) for r in log)
        rows.append({"name": v["name"], "workers": v["workers"], "step_s": args.batch / samples_per_s,
                     "samples_per_s": samples_per_s,
                     "wait": statistics.mean(float(r["data_wait_share"]) for r in log),
                     **json.loads(result.read_text())})
        print(f"    {time.perf_counter() - t0:.0f} s, {rows[-1]['step_s']:.2f} s/step", file=sys.stderr, flush=True)
        if not args.keep:
            shutil.rmtree(out, ignore_errors=True)
    if not args.keep:
        shutil.rmtree(root, ignore_errors=True)
    wall = time.perf_counter() - started

    threads = args.threads
    if not threads:
        import torch
        threads = torch.get_num_threads()
    base = rows[0]
    device = base["device"] + ("" if base["device"] != "cpu" else f" ({threads} threads)")
    precision = args.mixed_precision if args.mixed_precision != "no" else "fp32"
    if args.sd15:
        unet = (f"SD 1.5's U-Net architecture (random weights, widths 320-640-1280-1280, 3 cross-attention levels), "
                f"inflated: {_params(base['unet'])} parameters")
    else:
        unet = (f"U-Net widths {args.width}-{2 * args.width} (2 cross-attention levels), inflated: "
                f"{_params(base['unet'])} parameters")
    what = "" if args.compare == "trainable" else f"{args.trainable} layers, "
    command = shlex.join(["python", "tools/bench_train.py", *sys.argv[1:]])
    print(f"\n`{command}`\n")
    print(f"`vidiff train`, {what}{unet}; batch {args.batch} x {args.frames} frames x {args.size}x{args.size} px "
          f"({args.size // 2}x{args.size // 2} latents), {precision} on {device}, median of steps "
          f"{args.warmup + 1}-{args.steps}\n")
    if args.compare == "trainable":
        print("| variant | trainable params | share of U-Net | fp32 trainable weights (MiB) | step (s) | samples/s | "
              "peak step memory (MiB) | params ratio | time ratio | memory ratio |")
        print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
        for r in rows:
            print(f"| {r['name']} | {r['trainable']:,} | {r['trainable'] / r['unet']:.1%} | "
                  f"{r['trainable'] * 4 / 2 ** 20:.1f} | {r['step_s']:.3f} | {r['samples_per_s']:.3f} | "
                  f"{r['peak_mb']:.0f} | {r['trainable'] / base['trainable']:.2f}x | "
                  f"{r['step_s'] / base['step_s']:.2f}x | {r['peak_mb'] / base['peak_mb']:.2f}x |")
    else:
        print("| variant | workers | step (s) | samples/s | data wait / step | peak step memory (MiB) | time ratio | "
              "memory ratio |")
        print("|---|---:|---:|---:|---:|---:|---:|---:|")
        for r in rows:
            print(f"| {r['name']} | {r['workers']} | {r['step_s']:.3f} | {r['samples_per_s']:.2f} | {r['wait']:.1%} | "
                  f"{r['peak_mb']:.0f} | {r['step_s'] / base['step_s']:.2f}x | {r['peak_mb'] / base['peak_mb']:.2f}x |")
    if not all(r["reset"] for r in rows):
        print("\n(could not reset the RSS high-water mark: peak memory includes start-up)")
    print(f"\nwall time {wall:.0f} s" + (f"; assets and runs in {root}" if args.keep else ""))


if __name__ == "__main__":
    main()
