"""Where text-to-video sampling spends its time and memory, and what torch.compile and fewer steps buy.

One run samples one clip with classifier-free guidance and prints, side by side:

  * eager vs compiled U-Net (`--compile`, torch.compile with inductor): seconds per U-Net step and their ratio,
    the compile time (the first compiled call), the largest difference of the decoded frames, graphs compiled;
  * the clip time of the teacher at --steps vs a few-step schedule: a distilled student folder (`--student DIR`)
    at its own steps, else the same model at --few-steps (labelled so);
  * the share of each clip's time in the U-Net / VAE decoding / sampler + rest (text encoding, noise, set-up);
  * peak memory of VAE decoding with and without chunking (CUDA: max allocated; CPU: the process's peak RSS
    increase, each setting measured in a fresh process; `--memory-chunks ""` skips it).

The model is a random SD-like pipeline scaled down from SD 1.5 by the same factor in every part (U-Net widths
64-128-128 vs 320-640-1280, VAE 32-64-128-128 vs 128-256-512-512 with SD's 8x factor, a 12-layer CLIP text
encoder of width 256 vs 768), inflated, or a pipeline folder (`--model DIR`; `--model demo`: the built-in demo
base, pixel space). Torch threads are set by --threads (default 2: other jobs share the machine) and printed.

    python tools/bench_sampling.py                      # 8 frames of 32 x 32 latents (256 x 256 px), 25 steps, CPU
    python tools/bench_sampling.py --model demo --threads 2
    python tools/bench_sampling.py --frames 4 --latent 16 --steps 10 --few-steps 4 --threads 2
    python tools/bench_sampling.py --device cuda --dtype bf16 --frames 16 --latent 64   # GPU rows

Prints markdown tables (docs/quality.md's Performance section keeps a copy with the set-up and notes; the README
shows a headline row).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

PROMPT = "a red circle moving right"  # (within the demo text encoder's 16 tokens)


def build(folder: Path, frames: int, latent: int) -> Path:
    """An SD 1.5-shaped pipeline at a quarter of its widths (random weights), inflated into a vidiff folder."""
    from vidiff.models.folder import inflate_pipeline
    from vidiff.testing import make_tiny_sd_pipeline

    sd = make_tiny_sd_pipeline(
        folder / "sd", seed=0,
        unet_kwargs=dict(block_out_channels=(64, 128, 128), layers_per_block=2, norm_num_groups=32,
                         cross_attention_dim=256, attention_head_dim=8, sample_size=latent,
                         down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
                         up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D")),
        vae_kwargs=dict(block_out_channels=(32, 64, 128, 128), layers_per_block=2, norm_num_groups=32,
                        down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
                        sample_size=latent * 8),
        text_encoder_kwargs=dict(hidden_size=256, intermediate_size=1024, num_hidden_layers=12,
                                 num_attention_heads=4, projection_dim=256),
    )
    return inflate_pipeline(sd, folder / "video", defaults={"num_frames": frames, "height": latent * 8,
                                                              "width": latent * 8})


def decode_memory(folder: str, chunk: int | None, frames: int, device: str, dtype: str) -> float:
    """MiB of peak memory that decoding one clip's latents adds (CPU: RSS sampled by a thread, fresh process)."""
    import threading

    from vidiff import VideoPipeline

    pipe = VideoPipeline.from_pretrained(folder, device=device, dtype=dtype)
    h = pipe.defaults.height // pipe.vae_scale_factor
    latents = torch.randn(1, 4, frames, h, h, device=pipe.device)
    if pipe.device.type == "cuda":
        pipe.decode(latents[:, :, :1], chunk)  # warm up kernels / allocator
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        pipe.decode(latents, chunk)
        torch.cuda.synchronize()
        return (torch.cuda.max_memory_allocated() - base) / 2**20

    page = os.sysconf("SC_PAGE_SIZE")

    def rss() -> int:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * page

    peak, done = [rss()], threading.Event()

    def sample():
        while not done.is_set():
            peak[0] = max(peak[0], rss())
            time.sleep(0.002)

    base = rss()
    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    pipe.decode(latents, chunk)
    done.set()
    thread.join()
    return (max(peak[0], rss()) - base) / 2**20


def clip(pipe, steps: int, guidance: float | None, args) -> dict:
    """Sample one clip (pixels, float); its seconds in total and per part (pipe.timings), and the frames."""
    start = time.perf_counter()
    video = pipe(PROMPT, num_frames=args.frames, height=args.px, width=args.px, num_inference_steps=steps,
                 guidance_scale=guidance, seed=0, decode_chunk_size=args.chunk, output_type="pt", progress=False)
    seconds = time.perf_counter() - start
    return {"seconds": seconds, "steps": steps, "video": video, **pipe.timings}


def compare(folder, args) -> tuple[list[tuple[str, dict]], dict]:
    """The timed clips, eager then compiled (teacher, few-step): [(label, clip)], and the compile's figures."""
    from torch._dynamo.utils import counters

    from vidiff import VideoPipeline

    teacher = VideoPipeline.from_pretrained(folder, device=args.device, dtype=args.dtype)
    few = VideoPipeline.from_pretrained(args.student, device=args.device, dtype=args.dtype) if args.student else teacher
    few_steps = args.few_steps or (few.defaults.num_inference_steps if args.student else 4)
    few_guidance = None if args.student else args.guidance  # (a student: its own defaults, often no CFG)
    few_label = f"student {Path(args.student).name}" if args.student else "same model, fewer steps (no student given)"
    for pipe in {id(teacher): teacher, id(few): few}.values():
        clip(pipe, 1, args.guidance, args)  # warm-up
    runs = [("teacher, eager", clip(teacher, args.steps, args.guidance, args)),
            (f"{few_label}, eager", clip(few, few_steps, few_guidance, args))]
    extra = {}
    if args.compile:
        start = time.perf_counter()
        for pipe in {id(teacher): teacher, id(few): few}.values():
            pipe.compile_unet(mode=args.compile_mode)
            clip(pipe, 1, args.guidance, args)  # compiles (the few-step run at the same shapes: no recompile)
        extra["compile_seconds"] = time.perf_counter() - start
        warm = counters["stats"]["unique_graphs"]
        runs += [("teacher, compiled", clip(teacher, args.steps, args.guidance, args)),
                 (f"{few_label}, compiled", clip(few, few_steps, few_guidance, args))]
        extra["graphs"], extra["new_graphs"] = warm, counters["stats"]["unique_graphs"] - warm
        extra["max_diff"] = float((runs[2][1]["video"] - runs[0][1]["video"]).abs().max())
    return runs, extra


def print_table(runs: list[tuple[str, dict]], extra: dict, args) -> None:
    print("| run | steps | s / clip | U-Net s / step | U-Net | VAE decoding | sampler + rest |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: |")
    for label, r in runs:
        rest = r["seconds"] - r["unet"] - r["vae"]
        shares = " | ".join(f"{100 * x / r['seconds']:.1f}%" for x in (r["unet"], r["vae"], rest))
        print(f"| {label} | {r['steps']} | {r['seconds']:.3f} | {r['unet'] / r['steps']:.4f} | {shares} |")
    teacher = runs[0][1]
    print(f"\nfew-step clip / teacher clip (eager): {runs[1][1]['seconds'] / teacher['seconds']:.2f}x")
    if args.compile:
        compiled = runs[2][1]
        ratio = (compiled["unet"] / compiled["steps"]) / (teacher["unet"] / teacher["steps"])
        print(f"compiled / eager U-Net step: **{ratio:.2f}x** ({1 / ratio:.2f}x the speed); compiled / eager clip: "
              f"{compiled['seconds'] / teacher['seconds']:.2f}x; compiling took {extra['compile_seconds']:.1f} s "
              f"(first calls); {extra['graphs']} graph(s) compiled in the warm-up, {extra['new_graphs']} more during the "
              f"timed runs; largest |compiled - eager| of the frames in [-1, 1]: {extra['max_diff']:.2e}")


def decode_memories(folder, args) -> dict:
    """MiB that decoding adds for each --memory-chunks value and unchunked, each in a fresh process."""
    memory = {}
    for chunk in ["none"] + [c for c in args.memory_chunks.split(",") if c]:
        # A fixed mmap threshold makes glibc return freed activations to the OS, so RSS tracks live memory.
        env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="65536")
        out = subprocess.run([sys.executable, __file__, "--decode-memory", chunk, "--folder", str(folder),
                              "--frames", str(args.frames), "--device", args.device, "--dtype", args.dtype],
                             capture_output=True, text=True, check=True, env=env)
        memory[chunk] = json.loads(out.stdout.strip().splitlines()[-1])["mib"]
    return memory


def print_memory(memory: dict, args, px: int) -> None:
    kind = "max allocated" if args.device.startswith("cuda") else "peak RSS increase, sampled every 2 ms"
    print(f"\n### VAE decoding memory ({args.frames} frames to {px}x{px}, {kind}, fresh process each)\n")
    print("| decode_chunk_size | MiB | vs unchunked |")
    print("| --- | ---: | ---: |")
    for chunk, mib in memory.items():
        label = "all frames at once" if chunk == "none" else chunk
        ratio = mib / memory["none"] if memory["none"] > 0 else float("nan")
        print(f"| {label} | {mib:.0f} | {ratio:.2f}x |")


def describe(folder, args) -> str:
    """One line on the model: its parts' sizes and the clip's."""
    from vidiff import VideoPipeline

    pipe = VideoPipeline.from_pretrained(folder, device="cpu", dtype="fp32")
    millions = {name: sum(p.numel() for p in module.parameters()) / 1e6
                for name, module in (("U-Net", pipe.unet), ("VAE", pipe.vae), ("text encoder", pipe.text_encoder))
                if module is not None}
    widths = "-".join(str(w) for w in pipe.unet.config["block_out_channels"])
    vae = "" if pipe.vae is not None else " (pixel space: no VAE)"
    parts = ", ".join(f"{name} {m:.1f}M" for name, m in millions.items())
    return f"U-Net widths {widths}; {parts} params{vae}; {pipe.defaults.height}x{pipe.defaults.width} px default"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=None, help="a pipeline folder, or 'demo' (default: build the SD-shaped one)")
    parser.add_argument("--student", default=None, metavar="DIR", help="a distilled student folder to time")
    parser.add_argument("--frames", type=int, default=8)
    parser.add_argument("--latent", type=int, default=32, help="latent height = width (pixels: x the VAE's factor)")
    parser.add_argument("--steps", type=int, default=25, help="the teacher's steps")
    parser.add_argument("--few-steps", type=int, default=None, help="few-step run (default: the student's, else 4)")
    parser.add_argument("--guidance", type=float, default=7.5)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="fp32")
    parser.add_argument("--threads", type=int, default=2, help="torch intra-op threads (default: %(default)s)")
    parser.add_argument("--no-compile", dest="compile", action="store_false", help="skip the compiled rows")
    parser.add_argument("--compile-mode", default=None, help="torch.compile mode (default: default)")
    parser.add_argument("--chunk", type=int, default=8, help="decode_chunk_size of the timed runs")
    parser.add_argument("--memory-chunks", default="1,4", help="decode_chunk_size values measured for memory")
    parser.add_argument("--folder", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--decode-memory", default=None, help=argparse.SUPPRESS)  # child-process mode
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    if args.decode_memory is not None:
        chunk = None if args.decode_memory == "none" else int(args.decode_memory)
        print(json.dumps({"mib": decode_memory(args.folder, chunk, args.frames, args.device, args.dtype)}))
        return

    from vidiff.demo import DEMO_DIR

    with tempfile.TemporaryDirectory() as tmp:
        folder = (DEMO_DIR / "base" if args.model == "demo" else Path(args.model) if args.model
                  else build(Path(tmp), args.frames, args.latent))
        info = json.loads((Path(folder) / "vidiff.json").read_text())
        px = args.latent * info["vae_scale_factor"]
        model = describe(folder, args)
        args.px = px
        runs, extra = compare(folder, args)
        memory = decode_memories(folder, args) if info["latent"] and args.memory_chunks else {}

    space = f"{args.latent}x{args.latent} latents" if info["latent"] else "pixel space"
    print(f"\n### Sampling: {args.frames} frames x {px}x{px} px ({space}), CFG "
          f"{args.guidance}, DDIM, {args.device} {args.dtype}, torch threads {torch.get_num_threads()} (of "
          f"{os.cpu_count()} cores, shared with other jobs)")
    print(f"{args.model or 'SD 1.5-shaped, random weights'}: {model}\n")
    print_table(runs, extra, args)
    if memory:
        print_memory(memory, args, px)


if __name__ == "__main__":
    main()
