"""Where `vidiff edit --method tune` spends its time: tuning N steps, DDIM inversion, sampling (and the rest).

Builds the same SD 1.5-shaped random pipeline as tools/bench_sampling.py (U-Net widths 64-128-128, VAE with SD's
8x factor, 12-layer CLIP text encoder of width 256), reads a clip (../shared/data/videos/car-turn.mp4 when present,
else a synthetic shapes clip), and runs one Tune-A-Video edit through `vidiff.training.tune.tune_and_edit`:
VAE encoding, `--tune-steps` steps of `fit` (temporal layers + attention queries), DDIM inversion and DDIM sampling
with classifier-free guidance for each prompt, VAE decoding. Prints a markdown table of seconds and shares.

    python tools/bench_edit.py                                  # 8 frames, 16 x 16 latents, 20 tune steps, 10 DDIM steps
    python tools/bench_edit.py --tune-steps 50 --steps 25 --prompts 2
    python tools/bench_edit.py --device cuda --frames 16 --latent 64 --tune-steps 300 --steps 50
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tools.bench_sampling import build  # noqa: E402  (the same model as the sampling benchmark)

# ../shared/data/videos/car-turn.mp4 beside the repository (or beside the folder of worktrees)
CLIP = next((p / "shared" / "data" / "videos" / "car-turn.mp4" for p in Path(__file__).resolve().parents[2:4]
             if (p / "shared" / "data" / "videos" / "car-turn.mp4").is_file()), Path("/nonexistent"))


def read_clip(frames: int, size: int) -> tuple[np.ndarray, str]:
    from vidiff.pipelines.editing import fit_frames

    if CLIP.is_file():
        from vidiff.data.video_io import read_video

        return fit_frames(read_video(CLIP, num_frames=frames, stride=2).frames, size, size), CLIP.name
    from vidiff.data.synthetic import make_clip

    return make_clip("red", "circle", "moving right", num_frames=frames, size=size), "synthetic shapes clip"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--frames", type=int, default=8)
    parser.add_argument("--latent", type=int, default=16, help="latent size (pixels = 8 x)")
    parser.add_argument("--tune-steps", type=int, default=20)
    parser.add_argument("--steps", type=int, default=10, help="DDIM steps for inversion and sampling")
    parser.add_argument("--prompts", type=int, default=1, help="target prompts (share one tuning and inversion)")
    parser.add_argument("--guidance", type=float, default=7.5)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    from vidiff.training.tune import tune_and_edit
    from vidiff.pipelines.text_to_video import VideoPipeline

    with tempfile.TemporaryDirectory() as tmp:
        folder = build(Path(tmp), args.frames, args.latent)
        pipe = VideoPipeline.from_pretrained(folder, device=args.device, dtype="fp32")
        frames, source = read_clip(args.frames, args.latent * 8)
        prompts = ["a jeep driving on a road", "a red car in the snow", "a bus", "a horse"][:args.prompts]
        start, cpu_start = time.perf_counter(), time.process_time()
        result = tune_and_edit(pipe, frames, prompts, source_prompt="a car driving on a road",
                               tune_steps=args.tune_steps, tune_lr=3e-5, num_inference_steps=args.steps,
                               guidance_scale=args.guidance, seed=0, progress=False)
        total = time.perf_counter() - start
        cpu = time.process_time() - cpu_start
    timings = dict(result.timings)
    rows = [("tune", f"{args.tune_steps} steps of fit (temporal layers + attention queries)"),
            ("tune_loss", "reconstruction loss before / after tuning (2 x 8 draws)"),
            ("invert", f"{args.steps} inverse DDIM steps, guidance 1"),
            ("sample", f"{args.steps} DDIM steps x {len(prompts)} prompt(s), CFG {args.guidance:g}"),
            ("encode", "VAE encoding + text"), ("decode", f"VAE decoding x {len(prompts)}")]
    print(f"### Editing (`python tools/bench_edit.py {' '.join(sys.argv[1:])}`)\n")
    print(f"{source}, {args.frames} frames of {args.latent * 8} x {args.latent * 8} px ({args.latent} x {args.latent} "
          f"latents), device {args.device}, fp32, torch threads {torch.get_num_threads()}.\n")
    print("| part | what | seconds | per step | share |")
    print("|---|---|---:|---:|---:|")
    per_step = {"tune": args.tune_steps, "invert": args.steps, "sample": args.steps * len(prompts)}
    for name, what in rows:
        seconds = timings.get(name, 0.0)
        step = f"{seconds / per_step[name]:.3f}" if name in per_step else "-"
        print(f"| {name} | {what} | {seconds:.2f} | {step} | {100 * seconds / total:.1f}% |")
    print(f"| total | | {total:.2f} | | 100% |")
    print(f"\nprocess CPU time {cpu:.1f} s for {total:.1f} s of wall time ({cpu / total:.2f} cores busy: a lower "
          "figure means other jobs shared the machine and the seconds are inflated, the shares much less)")
    before, after = result.reconstruction_loss
    print(f"\nreconstruction loss on the clip: {before:.4f} before tuning, {after:.4f} after")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
