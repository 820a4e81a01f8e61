"""Prompt travel on the demo base, judged from the pixels: does the colour change at the scheduled frame while
the shape and its motion stay?

    python tools/eval_prompt_travel.py                         # the demo base, 16 frames, held-out seeds 9001,9002
    python tools/eval_prompt_travel.py --model runs/x/pipeline --frames 24 --switch 12 --seeds 1
    python tools/eval_prompt_travel.py --cascade vidiff/assets/demo    # through a cascade (keyframes past 8)

Each case is one shape and motion with a colour pair (red -> blue, green -> yellow, blue -> red, yellow -> green):
keyframes `0: a A SHAPE MOTION`, `SWITCH-1: a A ...`, `SWITCH: a B ...`, so the embedding changes at one frame.
A case passes when the frames before the switch are judged colour A and the frames from it colour B (the judge of
`vidiff eval shapes`: the nearest named colour of the shape's core), each half shows the asked shape, and the
whole clip moves the asked way (one motion across the change). The clip is longer than the model's 8-frame window,
so a model alone runs it through the sampler's temporal windows; a cascade (`--cascade`) makes it as `vidiff
generate` does (by default the base's keyframes over the whole clip, filled in by the interpolation stage), and
both its base clip (--frames frames, switch at --switch) and its final clip (the switch moved with the frame
rate) are judged. Prints a markdown table.
"""
from __future__ import annotations

import argparse
import itertools

import torch

from vidiff import demo
from vidiff.data.synthetic import MOTIONS, SHAPES, caption
from vidiff.eval.shapes import measure_clip
from vidiff.eval.suite import clip_seed
from vidiff.pipelines.cascade import CascadePipeline
from vidiff.pipelines.text_to_video import VideoPipeline
from vidiff.spec import PromptSchedule

PAIRS = (("red", "blue"), ("green", "yellow"), ("blue", "red"), ("yellow", "green"))


def judge(frames, before: str, after: str, shape: str, motion: str, switch: int) -> dict:
    first, second, whole = measure_clip(frames[:switch]), measure_clip(frames[switch:]), measure_clip(frames)
    result = {"color_before": first.color == before, "color_after": second.color == after,
              "shape": first.shape == shape and second.shape == shape, "motion": whole.motion == motion}
    result["all"] = all(result.values())
    return result


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=None, help="pipeline folder (default: the built-in demo base)")
    p.add_argument("--frames", type=int, default=16, help="clip length (default: %(default)s)")
    p.add_argument("--switch", type=int, default=8, help="the first frame of the second colour (default: %(default)s)")
    p.add_argument("--seeds", default="9001,9002", help="comma-separated seeds (default: the held-out %(default)s)")
    p.add_argument("--steps", type=int, default=None, help="sampling steps (default: the model's)")
    p.add_argument("--batch", type=int, default=8, help="clips per sampling call (default: %(default)s)")
    p.add_argument("--baseline", action="store_true",
                   help="no change of colour (the same prompt at every keyframe): what the clip length alone gives")
    p.add_argument("--cascade", default=None, help="a cascade folder or YAML instead of --model (the final clip and "
                   "the base's are judged)")
    p.add_argument("--long-video", default="auto", help="the cascade's long-clip method (default: %(default)s)")
    args = p.parse_args()
    torch.set_num_threads(1)
    if args.cascade:
        model = args.cascade
        pipe = CascadePipeline.from_pretrained(model, device="cpu")
    else:
        model = args.model or str(demo.model_dir("base"))
        pipe = VideoPipeline.from_pretrained(model, device="cpu")
    cases = [(seed, before, after, shape, motion) for seed in (int(s) for s in args.seeds.split(","))
             for (before, after), shape, motion in itertools.product(PAIRS, SHAPES, MOTIONS)]
    if args.baseline:
        cases = [(seed, before, before, shape, motion) for seed, before, _, shape, motion in cases]
    results, finals = [], []
    for start in range(0, len(cases), args.batch):
        batch = cases[start:start + args.batch]
        schedules = [PromptSchedule(((0, caption(b, s, m)), (args.switch - 1, caption(b, s, m)),
                                     (args.switch, caption(a, s, m)))) for _, b, a, s, m in batch]
        generators = [torch.Generator().manual_seed(clip_seed(seed, start + i)) for i, (seed, *_) in enumerate(batch)]
        if args.cascade:
            final, stages = pipe(schedules, num_frames=args.frames, num_inference_steps=args.steps,
                                 generator=generators, progress=False, return_intermediate=True,
                                 long_video=args.long_video)
            clips, final = stages[0], [final] if len(batch) == 1 else final
            clips = [clips] if len(batch) == 1 else clips
            switch = round(args.switch * (len(final[0]) - 1) / (args.frames - 1))  # (the change's moment)
            finals += [judge(c, b, a, s, m, switch) for c, (_, b, a, s, m) in zip(final, batch)]
        else:
            clips = pipe(schedules, num_frames=args.frames, num_inference_steps=args.steps, generator=generators,
                         progress=False)
            clips = [clips] if len(batch) == 1 else clips
        results += [judge(c, b, a, s, m, args.switch) for c, (_, b, a, s, m) in zip(clips, batch)]
        print(f"{len(results)}/{len(cases)} clips", flush=True)
    n = len(results)
    what = "baseline (no colour change)" if args.baseline else f"prompt travel (colour switched at {args.switch})"
    steps = args.steps or (pipe.specs[0].steps or pipe.base.defaults.num_inference_steps if args.cascade
                           else pipe.defaults.num_inference_steps)
    print(f"\n{what} on {model}: {n} clips of {args.frames} frames, seeds {args.seeds}, {steps} base steps\n")
    print("| clip | colour before | colour after | shape (both halves) | motion (whole clip) | all |")
    print("|---|---:|---:|---:|---:|---:|")
    rows = [("base" if args.cascade else "model", results)] + ([(f"final ({len(final[0])} frames)", finals)]
                                                               if args.cascade else [])
    for name, judged in rows:
        share = {k: sum(r[k] for r in judged) / n for k in judged[0]}
        print(f"| {name} | {share['color_before']:.1%} | {share['color_after']:.1%} | {share['shape']:.1%} | "
              f"{share['motion']:.1%} | {share['all']:.1%} |")


if __name__ == "__main__":
    main()
