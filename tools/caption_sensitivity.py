"""How much does a text-to-video model listen to each word of its caption? (an issue-12 diagnostic)

For each attribute of the shapes captions (colour, shape, motion) and a few noise levels, the mean absolute
change of the U-Net's output when only that word of the caption changes (to the next colour / shape / motion),
on the same noisy true clip: every caption of the shapes world once, noised with one seeded draw. A model that
draws the asked colour every time but picks its direction of travel at random shows it here directly, in seconds
instead of a full `vidiff eval shapes`, so it can follow a training run's snapshots:

    python tools/caption_sensitivity.py vidiff/assets/demo/base
    python tools/caption_sensitivity.py runs/demo/base/snapshots/step-00*

Prints a markdown table (one row per model and timestep; the last column is motion / colour) and, with --out,
writes the numbers as JSON.

It also asks the model where it would draw each caption's shape from pure noise (timestep 999): the clean clip it
predicts there is the mean of everything the caption allows, so "moving right" must put its blob further right in
the last frame than in the first. The share of the 48 captions whose predicted blob moves the caption's way (and
how far along the axis, in pixels) is the direction the model has learned to start from; at ~50% a sampler picks
the sign of the motion by chance.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from vidiff.data.synthetic import COLORS, MOTIONS, SHAPES, caption  # noqa: E402
from vidiff.eval.stages import true_clip  # noqa: E402
from vidiff.eval.suite import make_cases  # noqa: E402

ATTRIBUTES = {"color": list(COLORS), "shape": list(SHAPES), "motion": list(MOTIONS)}


def changed(case, attribute: str) -> str:
    """The case's caption with `attribute` moved to its next value (cyclically)."""
    values = dict(color=case.color, shape=case.shape, motion=case.motion)
    options = ATTRIBUTES[attribute]
    values[attribute] = options[(options.index(values[attribute]) + 1) % len(options)]
    return caption(values["color"], values["shape"], values["motion"])


@torch.no_grad()
def sensitivity(pipe, timesteps: list[int], *, seed: int = 0, batch_size: int = 16) -> dict[str, dict[int, float]]:
    """`{attribute: {timestep: mean |unet(x_t, t, caption) - unet(x_t, t, caption with that word changed)|}}`
    over every shapes caption, x_t a true clip of the caption noised to t (the pipeline's noise schedule)."""
    d = pipe.defaults
    cases = make_cases(seeds=[seed])
    clean = torch.cat([pipe.encode_video(true_clip(c, d.num_frames, d.height)) for c in cases])
    generator = torch.Generator().manual_seed(seed)
    noise = torch.randn(clean.shape, generator=generator).to(clean)
    alphas = pipe.make_scheduler("ddim").alphas_cumprod.to(clean)
    texts = {"": pipe.encode_prompt([c.prompt for c in cases])}
    texts.update({a: pipe.encode_prompt([changed(c, a) for c in cases]) for a in ATTRIBUTES})
    result: dict[str, dict[int, float]] = {a: {} for a in ATTRIBUTES}
    for t in timesteps:
        noisy = alphas[t].sqrt() * clean + (1 - alphas[t]).sqrt() * noise
        sums = dict.fromkeys(ATTRIBUTES, 0.0)
        for i in range(0, len(cases), batch_size):
            x = noisy[i:i + batch_size].to(pipe.dtype)
            step = torch.full((len(x),), t, device=x.device)
            out = {k: pipe.unet(x, step, e[i:i + batch_size]).float() for k, e in texts.items()}
            for a in ATTRIBUTES:
                sums[a] += (out[a] - out[""]).abs().mean(dim=(1, 2, 3, 4)).sum().item()
        for a in ATTRIBUTES:
            result[a][t] = sums[a] / len(cases)
    return result


def blob_displacement(clips: torch.Tensor) -> torch.Tensor:
    """`(b, 2)`: how far (x, y in pixels) the centre of what stands out from each frame's median colour moves from
    the first frame to the last, for clips `(b, c, f, h, w)`."""
    weight = (clips - clips.flatten(-2).median(dim=-1).values[..., None, None]).abs().sum(dim=1)  # b f h w
    weight = weight / weight.sum(dim=(-2, -1), keepdim=True).clamp_min(1e-12)
    xs = torch.arange(clips.shape[-1], dtype=weight.dtype, device=weight.device)
    ys = torch.arange(clips.shape[-2], dtype=weight.dtype, device=weight.device)
    cx, cy = (weight.sum(-2) * xs).sum(-1), (weight.sum(-1) * ys).sum(-1)  # b f
    return torch.stack([cx[:, -1] - cx[:, 0], cy[:, -1] - cy[:, 0]], dim=-1)


def direction_score(clips: torch.Tensor, motions: list[str]) -> dict[str, float]:
    """Share of `clips` whose blob moves more than half a pixel in its motion's direction, and the mean distance
    along the motion's axis (negative: the wrong way)."""
    direction = torch.tensor([MOTIONS[m] for m in motions], dtype=torch.float32)
    along = (blob_displacement(clips.float().cpu()) * direction).sum(-1)
    return {"right_way": (along > 0.5).float().mean().item(), "pixels": along.mean().item()}


@torch.no_grad()
def pure_noise_direction(pipe, *, seed: int = 0, batch_size: int = 16, timestep: int = 999) -> dict[str, float]:
    """direction_score of the clean clips the U-Net predicts from pure noise at `timestep`, one per caption."""
    d = pipe.defaults
    cases = make_cases(seeds=[seed])
    shape = (len(cases), pipe.unet.in_channels, d.num_frames, d.height // pipe.vae_scale_factor,
             d.width // pipe.vae_scale_factor)
    noise = torch.randn(shape, generator=torch.Generator().manual_seed(seed)).to(pipe.device)
    alpha = pipe.make_scheduler("ddim").alphas_cumprod[timestep].item()
    text = pipe.encode_prompt([c.prompt for c in cases])
    clean = []
    for i in range(0, len(cases), batch_size):
        x = noise[i:i + batch_size].to(pipe.dtype)
        out = pipe.unet(x, torch.full((len(x),), timestep, device=x.device), text[i:i + batch_size]).float()
        x = x.float()
        if pipe.scheduler_config.get("prediction_type", "epsilon") == "v_prediction":
            clean.append(alpha ** 0.5 * x - (1 - alpha) ** 0.5 * out)
        else:
            clean.append((x - (1 - alpha) ** 0.5 * out) / alpha ** 0.5)
    return direction_score(pipe.decode(torch.cat(clean)), [c.motion for c in cases])


def markdown(rows: list[tuple[str, dict]]) -> str:
    lines = ["| model | timestep | colour | shape | motion | motion / colour |", "| --- | ---: | ---: | ---: | ---: | ---: |"]
    for name, numbers in rows:
        for t in numbers["color"]:
            c, s, m = (numbers[a][t] for a in ATTRIBUTES)
            lines.append(f"| {name} | {t} | {c:.4g} | {s:.4g} | {m:.4g} | {m / c if c else float('nan'):.3g} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    from vidiff.pipelines.text_to_video import VideoPipeline
    from vidiff.utils import write_json_atomic

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("models", nargs="+", help="text-to-video pipeline folders (a base model or its snapshots)")
    parser.add_argument("--timesteps", default="999,900,700,500",
                        help="comma-separated training timesteps (default: %(default)s)")
    parser.add_argument("--seed", type=int, default=0, help="clips and noise (default: %(default)s)")
    parser.add_argument("--out", default=None, help="also write the numbers here (JSON)")
    args = parser.parse_args(argv)
    try:
        timesteps = [int(t) for t in args.timesteps.split(",") if t.strip()]
    except ValueError:
        parser.error(f"--timesteps must be comma-separated integers, got {args.timesteps!r}")
    missing = [m for m in args.models if not (Path(m) / "vidiff.json").is_file()]
    if missing:
        parser.error(f"not a vidiff pipeline folder (no vidiff.json): {', '.join(missing)}")
    rows, directions = [], []
    for model in args.models:
        pipe = VideoPipeline.from_pretrained(model, device="cpu")
        bad = [t for t in timesteps if not 0 <= t < len(pipe.make_scheduler("ddim").alphas_cumprod)]
        if not timesteps or bad:
            parser.error(f"--timesteps must be training timesteps of {model}'s schedule, got {args.timesteps!r}")
        rows.append((model, sensitivity(pipe, timesteps, seed=args.seed)))
        directions.append((model, pure_noise_direction(pipe, seed=args.seed)))
        print(markdown(rows[-1:]) if len(rows) == 1 else markdown(rows[-1:]).split("\n", 2)[2], flush=True)
    print("\nFrom pure noise (timestep 999), the predicted clip's blob moves the caption's way:\n")
    print("| model | captions | pixels along the motion |\n| --- | ---: | ---: |")
    for name, score in directions:
        print(f"| {name} | {score['right_way']:.0%} | {score['pixels']:.2f} |")
    if args.out:
        write_json_atomic(args.out, {"timesteps": timesteps, "seed": args.seed,
                                     "models": {name: numbers for name, numbers in rows},
                                     "pure_noise_direction": dict(directions)})
    return 0


if __name__ == "__main__":
    sys.exit(main())
