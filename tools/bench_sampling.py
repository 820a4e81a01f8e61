"""Where text-to-video sampling spends its time and memory.

Builds a random SD-like pipeline scaled down from SD 1.5 by the same factor in every part (U-Net widths
64-128-128 vs 320-640-1280, VAE 32-64-128-128 vs 128-256-512-512 with SD's 8x factor, a 12-layer CLIP text
encoder of width 256 vs 768), inflates it, and samples one clip with classifier-free guidance:

  * time per video and per step, split into text encoding, U-Net, sampler arithmetic, VAE decoding, writing the
    mp4; the U-Net's share of the generation time (target: >= 90%);
  * peak memory of VAE decoding with and without chunking (CUDA: max allocated; CPU: the process's peak RSS
    increase, each setting measured in a fresh process).

    python tools/bench_sampling.py                      # 8 frames of 32 x 32 latents (256 x 256 px), 25 steps, CPU
    python tools/bench_sampling.py --frames 16 --steps 10
    python tools/bench_sampling.py --device cuda --dtype fp16

Prints markdown tables (docs/quality.md's Performance section keeps a copy with the set-up and notes; the README
shows the latest table).
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

PROMPT = "a red circle moving right on a black background"


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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--frames", type=int, default=8)
    parser.add_argument("--latent", type=int, default=32, help="latent height = width (pixels: x8)")
    parser.add_argument("--steps", type=int, default=25)
    parser.add_argument("--guidance", type=float, default=7.5)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="fp32")
    parser.add_argument("--chunk", type=int, default=8, help="decode_chunk_size of the timed run")
    parser.add_argument("--memory-chunks", default="1,4", help="decode_chunk_size values measured for memory")
    parser.add_argument("--folder", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--decode-memory", default=None, help=argparse.SUPPRESS)  # child-process mode
    args = parser.parse_args()

    if args.decode_memory is not None:
        chunk = None if args.decode_memory == "none" else int(args.decode_memory)
        print(json.dumps({"mib": decode_memory(args.folder, chunk, args.frames, args.device, args.dtype)}))
        return

    from vidiff import VideoPipeline
    from vidiff.data import write_video

    with tempfile.TemporaryDirectory() as tmp:
        folder = build(Path(tmp), args.frames, args.latent)
        pipe = VideoPipeline.from_pretrained(folder, device=args.device, dtype=args.dtype)
        unet_params = sum(p.numel() for p in pipe.unet.parameters()) / 1e6
        vae_params = sum(p.numel() for p in pipe.vae.parameters()) / 1e6
        text_params = sum(p.numel() for p in pipe.text_encoder.parameters()) / 1e6
        pipe(PROMPT, num_inference_steps=1, seed=0, progress=False)  # warm-up

        start = time.perf_counter()
        video = pipe(PROMPT, num_inference_steps=args.steps, guidance_scale=args.guidance, seed=0,
                     decode_chunk_size=args.chunk, progress=False)
        generation = time.perf_counter() - start
        timings = dict(pipe.timings)
        start = time.perf_counter()
        write_video(Path(tmp) / "clip.mp4", video, fps=8)
        timings["write"] = time.perf_counter() - start
        timings["other"] = generation - sum(timings[k] for k in ("text", "unet", "sampler", "vae"))

        memory = {}
        for chunk in ["none"] + args.memory_chunks.split(","):
            # A fixed mmap threshold makes glibc return freed activations to the OS, so RSS tracks live memory.
            env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="65536")
            out = subprocess.run([sys.executable, __file__, "--decode-memory", chunk, "--folder", str(folder),
                                  "--frames", str(args.frames), "--device", args.device, "--dtype", args.dtype],
                                 capture_output=True, text=True, check=True, env=env)
            memory[chunk] = json.loads(out.stdout.strip().splitlines()[-1])["mib"]

    px = args.latent * 8
    print(f"\n### Sampling: {args.frames} frames x {px}x{px} px ({args.latent}x{args.latent} latents), {args.steps} "
          f"DDIM steps, CFG {args.guidance}, {args.device} {args.dtype}, torch threads {torch.get_num_threads()}")
    print(f"U-Net {unet_params:.1f}M params (64-128-128, inflated), VAE {vae_params:.1f}M (32-64-128-128, x8), "
          f"text encoder {text_params:.1f}M (CLIP 12 x 256)\n")
    total = generation + timings["write"]
    print("| part | s / video | s / step | share of generation | share incl. writing |")
    print("| --- | ---: | ---: | ---: | ---: |")
    for name, label in (("text", "text encoding"), ("unet", "U-Net (CFG, 2 x batch)"), ("sampler", "sampler step"),
                        ("vae", f"VAE decoding (chunks of {args.chunk})"), ("other", "other (noise, setup)"),
                        ("write", "writing mp4")):
        per_step = f"{timings[name] / args.steps:.3f}" if name in ("unet", "sampler") else ""
        gen_share = f"{100 * timings[name] / generation:.1f}%" if name != "write" else ""
        print(f"| {label} | {timings[name]:.3f} | {per_step} | {gen_share} | {100 * timings[name] / total:.1f}% |")
    print(f"| **total** | {total:.3f} | {total / args.steps:.3f} | generation {generation:.3f} s | |")
    share = timings["unet"] / generation
    print(f"\nU-Net share of generation: {100 * share:.1f}% (target >= 90%: {'met' if share >= 0.9 else 'NOT met'})")

    kind = "max allocated" if args.device.startswith("cuda") else "peak RSS increase, sampled every 2 ms"
    print(f"\n### VAE decoding memory ({args.frames} frames to {px}x{px}, {kind}, fresh process each)\n")
    print("| decode_chunk_size | MiB | vs unchunked |")
    print("| --- | ---: | ---: |")
    for chunk, mib in memory.items():
        label = "all frames at once" if chunk == "none" else chunk
        ratio = mib / memory["none"] if memory["none"] > 0 else float("nan")
        print(f"| {label} | {mib:.0f} | {ratio:.2f}x |")


if __name__ == "__main__":
    main()
