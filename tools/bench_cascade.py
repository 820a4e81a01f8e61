"""Where one cascade run spends its time and memory: base -> interpolation x2 -> SSR x2.

Builds the SD 1.5-shaped random pipeline of tools/bench_sampling.py (U-Net widths 64-128-128, SD's 8x VAE at
quarter width, a 12-layer CLIP text encoder of width 256), inflates a base, an interpolation stage and an SSR
stage from it (`vidiff.stages.folder.inflate_stage`: untrained, so the numbers are the cost, not the
quality), and runs the cascade once with classifier-free guidance in every stage. Per stage: output size, seconds,
share of the run (after a warm-up run), and the peak memory the stage adds to its loaded weights and input,
measured in a fresh process per stage on the saved input (CUDA: max allocated; CPU: the resident high-water
mark, VmHWM reset through /proc/self/clear_refs), so no earlier stage's allocations hide it.

    python tools/bench_cascade.py --threads 1          # 4 frames of 8 x 8 latents (64 px) -> 7 frames, 128 px
    python tools/bench_cascade.py --frames 8 --latent 32 --steps 25 --device cuda --dtype fp16

`--compare A B ...` times whole trained cascades (YAML files or cascade folders) side by side instead: the same
prompts and seeds through each, the order alternating every round after a warm-up clip each, with the U-Net
passes per window of every stage (from the YAML's settings) and each cascade's seconds per clip, per stage and
in all, relative to the first:

    python tools/bench_cascade.py --threads 1 --clips 6 --compare vidiff/assets/demo configs/cascade/demo-fast.yaml

Prints a markdown table (docs/quality.md's Performance section keeps a copy with the set-up and notes; the README
shows the latest table).
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_sampling import PROMPT, build  # noqa: E402  (the same SD-shaped model as the sampling benchmark)
from bench_train import _proc_status_mb  # noqa: E402  (the one /proc/self/status reader)


class PeakMemory:
    """Peak memory a block adds over what is held when it starts (MiB): CUDA max allocated, else the resident
    high-water mark (VmHWM, reset through /proc/self/clear_refs)."""

    def __init__(self, device: torch.device):
        self.device = device

    def __enter__(self):
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self.start = torch.cuda.memory_allocated(self.device) / 2**20
        else:
            Path("/proc/self/clear_refs").write_text("5")  # VmHWM := VmRSS
            self.start = _proc_status_mb("VmRSS")
        return self

    def __exit__(self, *exc):
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            self.added = torch.cuda.max_memory_allocated(self.device) / 2**20 - self.start
        else:
            self.added = _proc_status_mb("VmHWM") - self.start


def make_cascade(root: Path, frames: int, latent: int):
    """Base, interpolation x2 and SSR x2 folders from one SD-shaped pipeline, and their cascade YAML."""
    import yaml

    from vidiff.stages.folder import inflate_stage

    base = build(root, frames, latent)
    defaults = {"num_frames": frames, "height": latent * 8, "width": latent * 8}
    inflate_stage(root / "sd", root / "interpolation", "interpolation", factor=2, defaults=defaults)
    inflate_stage(root / "sd", root / "ssr", "ssr", factor=2, defaults=defaults)
    spec = root / "cascade.yaml"
    spec.write_text(yaml.safe_dump({"stages": [{"model": str(base)}, {"model": "interpolation"}, {"model": "ssr"}]}))
    return spec


def run_stage_once(i: int, spec, stage, video, args):
    """Stage `i` of the cascade on `video` (the previous stage's output; None for the base)."""
    from vidiff.pipelines.cascade import run_stage

    if i == 0:
        size = args.latent * 8
        return stage(PROMPT, num_frames=args.frames, height=size, width=size, seed=0, output_type="pt",
                     num_inference_steps=args.steps, guidance_scale=7.5, progress=False)
    return run_stage(stage, video, PROMPT, seed=0, steps=args.steps, guidance=7.5, progress=False)


def time_stages(pipe, args, root: Path) -> list[dict]:
    """The cascade's stages one by one (as CascadePipeline.__call__ runs them), timed; each stage's input is saved
    (safetensors) for the memory measurement."""
    from safetensors.torch import save_file

    rows, video = [], None
    for i, (spec, stage) in enumerate(zip(pipe.specs, pipe.pipelines)):
        if video is not None:
            save_file({"video": video.float().cpu().contiguous()}, str(root / f"input-{i}.safetensors"))
        start = time.perf_counter()
        video = run_stage_once(i, spec, stage, video, args)
        if stage.device.type == "cuda":
            torch.cuda.synchronize(stage.device)
        rows.append({"stage": spec.stage, "shape": tuple(video.shape[2:]), "seconds": time.perf_counter() - start})
    return rows


def stage_memory(i: int, args, root: Path) -> float:
    """MiB that running stage `i` adds to its loaded weights and input, measured in a fresh process (so nothing
    an earlier stage allocated hides it)."""
    import json
    import subprocess

    command = [sys.executable, __file__, "--child", str(i), "--root", str(root), "--frames", str(args.frames),
               "--latent", str(args.latent), "--steps", str(args.steps), "--device", args.device,
               "--dtype", args.dtype, "--threads", str(torch.get_num_threads())]
    result = subprocess.run(command, capture_output=True, text=True, check=True)
    return json.loads(result.stdout.strip().splitlines()[-1])["added_mib"]


def child(args) -> None:
    """Load stage `args.child` alone, run it once on its saved input, print the memory it added (JSON)."""
    import json

    from safetensors.torch import load_file

    from vidiff.pipelines.cascade import read_cascade
    from vidiff.pipelines.text_to_video import VideoPipeline

    spec = read_cascade(args.root / "cascade.yaml")[args.child]
    stage = VideoPipeline.from_pretrained(spec.model, device=args.device, dtype=args.dtype)
    video = None
    if args.child:
        video = load_file(str(args.root / f"input-{args.child}.safetensors"))["video"].to(stage.device)
    with PeakMemory(stage.device) as memory:
        run_stage_once(args.child, spec, stage, video, args)
    print(json.dumps({"added_mib": memory.added}))


def table(rows: list[dict], device: str) -> str:
    total = sum(r["seconds"] for r in rows)
    kind = "allocated" if device.startswith("cuda") else "resident"
    lines = [f"| stage | output (frames x h x w) | seconds | share | peak {kind} MiB added |",
             "| --- | --- | --- | --- | --- |"]
    for r in rows:
        f, h, w = r["shape"]
        lines.append(f"| {r['stage']} | {f} x {h} x {w} | {r['seconds']:.2f} | {100 * r['seconds'] / total:.0f}% | "
                     f"{r['memory']:.0f} |")
    lines.append(f"| total | | {total:.2f} | 100% | |")
    return "\n".join(lines)


def compare_cascades(paths: list[str], args) -> str:
    """The markdown table of `--compare`: each cascade's U-Net passes per window by stage and seconds per clip."""
    from vidiff.pipelines.cascade import CascadePipeline, read_cascade
    from vidiff.spec import read_info, resolve_sampling

    pipes = [CascadePipeline.from_pretrained(p, device=args.device, dtype=args.dtype) for p in paths]
    passes = [[resolve_sampling(read_info(spec.model), num_inference_steps=spec.steps, guidance_scale=spec.guidance,
                                strength=spec.strength).unet_evaluations for spec in read_cascade(p)] for p in paths]
    prompts = ["a red circle moving right", "a blue square moving up", "a green triangle moving left",
               "a yellow circle moving down"]
    times = [[] for _ in paths]
    stage_times = [[] for _ in paths]
    for pipe in pipes:
        pipe(prompts[0], seed=0, progress=False)  # warm-up
    for r in range(args.clips):
        order = range(len(pipes)) if r % 2 == 0 else reversed(range(len(pipes)))
        for i in order:
            start = time.perf_counter()
            pipes[i](prompts[r % len(prompts)], seed=r, progress=False)
            times[i].append(time.perf_counter() - start)
            stage_times[i].append(list(pipes[i].timings.values()))
    lines = ["| cascade | U-Net passes per window (each stage) | s / clip | s per stage | speed-up |",
             "|---|---|---:|---|---:|"]
    mean = [sum(t) / len(t) for t in times]
    for i, path in enumerate(paths):
        stages = [sum(s[j] for s in stage_times[i]) / len(stage_times[i]) for j in range(len(stage_times[i][0]))]
        lines.append(f"| {path} | {' / '.join(map(str, passes[i]))} | {mean[i]:.3f} | "
                     f"{' / '.join(f'{x:.3f}' for x in stages)} | {mean[0] / mean[i]:.2f}x |")
    return "\n".join(lines)


def main() -> None:
    from vidiff.utils import DTYPES

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--frames", type=int, default=4, help="base frames (default: %(default)s)")
    parser.add_argument("--latent", type=int, default=8, help="base latent size; pixels = 8x (default: %(default)s)")
    parser.add_argument("--steps", type=int, default=4, help="sampling steps per stage (default: %(default)s)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="fp32", choices=DTYPES)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    parser.add_argument("--compare", nargs="+", default=None, metavar="CASCADE",
                        help="time these trained cascades side by side instead (YAML files or cascade folders)")
    parser.add_argument("--clips", type=int, default=8, help="--compare: timed clips per cascade (default: %(default)s)")
    parser.add_argument("--child", type=int, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--root", type=Path, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.child is not None:
        return child(args)
    if args.compare:
        table_text = compare_cascades(args.compare, args)
        print(f"{args.clips} clips per cascade, {args.device} {args.dtype}, {torch.get_num_threads()} thread(s)\n")
        print(table_text)
        return

    from vidiff.pipelines.cascade import CascadePipeline

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        make_cascade(root, args.frames, args.latent)
        pipe = CascadePipeline.from_pretrained(root / "cascade.yaml", device=args.device, dtype=args.dtype)
        time_stages(pipe, args, root)  # warm-up (kernels, allocator), same sizes
        rows = time_stages(pipe, args, root)
        del pipe
        for i, row in enumerate(rows):
            row["memory"] = stage_memory(i, args, root)
    print(f"cascade base -> interpolation x2 -> ssr x2, {args.steps} steps each, guidance 7.5, {args.device} "
          f"{args.dtype}, {torch.get_num_threads()} thread(s)\n")
    print(table(rows, args.device))


if __name__ == "__main__":
    main()
