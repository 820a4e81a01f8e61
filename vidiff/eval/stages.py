"""Cascade stages against the truth: the synthetic world draws the exact clip a stage should produce.

For each held-out (prompt, seed) case (vidiff.eval.suite) the true clip is drawn with `make_clip` at the full
frame rate and size; the stage gets what it would get in the cascade and its output is scored with PSNR / SSIM
next to the simple baseline (vidiff.eval.video):

    interpolation  every `factor`-th frame of the true clip     -> all frames      vs linear blending
    ssr            the true clip area-downsampled by `factor`   -> full size       vs bicubic upsampling
    extend         the first `num_known` frames of the true clip -> the whole clip  vs holding the last frame

Every output is also judged from its pixels as `vidiff eval shapes` judges a clip (vidiff.eval.shapes): the
case's colour, shape and motion, and one steady shape (consistent). An extension is judged on the frames it made
alone (a stage that only repeats the known frames, or loses the shape, fails), its consistency over the whole clip
(a jump or a colour change at the seam fails).

A stage is passed as a function, so the same scoring serves a Python pipeline, a CLI wrapper or a test double;
it gets the case (its prompt, and `clip_seed(case.seed, case.index)` to seed its noise):
    interpolation: fn(known uint8 (n, h, w, 3), case) -> (f, h, w, 3)
    ssr:           fn(low uint8 (f, h, w, 3), case) -> (f, h * factor, w * factor, 3)
    extend:        fn(known uint8 (k, h, w, 3), case, num_frames) -> (num_frames, h, w, 3)
"""
from __future__ import annotations

import math

import numpy as np

from vidiff.data.synthetic import make_clip
from vidiff.eval import shapes, video
from vidiff.eval.suite import EvalCase, clip_seed
from vidiff.progress import ProgressBar

STAGES = ("interpolation", "ssr", "extend")
SCORES = ("psnr", "baseline_psnr", "psnr_gain", "ssim", "baseline_ssim")
JUDGED = ("color", "shape", "motion", "all", "consistent")


def true_clip(case: EvalCase, num_frames: int, size: int) -> np.ndarray:
    """The synthetic clip of a case, drawn at `size` with `num_frames` frames (seeded by the case)."""
    return make_clip(case.color, case.shape, case.motion, num_frames, size, seed=clip_seed(case.seed, case.index))


def _check_output(stage: str, out, expected: tuple) -> np.ndarray:
    out = np.asarray(out)
    if out.shape != expected or out.dtype != np.uint8:
        raise ValueError(f"the {stage} stage returned {out.dtype} {out.shape}, expected uint8 {expected}")
    return out


def judge(clip, case: EvalCase, consistent_over=None) -> dict:
    """`vidiff eval shapes`'s verdict on `clip` for the case's caption (colour / shape / motion / all /
    consistent); `consistent_over` (default `clip`) is the clip whose temporal consistency counts."""
    correct = shapes.score_clip(clip, case.color, case.shape, case.motion)["correct"]
    if consistent_over is not None:
        correct["consistent"] = shapes.measure_clip(consistent_over).consistent
    return {key: bool(correct[key]) for key in JUDGED}


def _interpolation(fn, true, case, *, factor, num_known):
    return fn(true[::factor], case), lambda out: {**video.score_interpolation(true, out, factor),
                                                  "judged": judge(out, case)}


def _ssr(fn, true, case, *, factor, num_known):
    return fn(video.downsample(true, factor), case), lambda out: {**video.score_ssr(true, out, factor),
                                                                  "judged": judge(out, case)}


def _extend(fn, true, case, *, factor, num_known):
    return fn(true[:num_known], case, len(true)), lambda out: {**video.score_extension(true, out, num_known),
                                                               "judged": judge(out[num_known:], case, out)}


# what each evaluation gives the stage (from the true clip) and how its output is scored
EVALUATIONS = {"interpolation": _interpolation, "ssr": _ssr, "extend": _extend}
assert tuple(EVALUATIONS) == STAGES


def run_stage(stage: str, fn, cases: list[EvalCase], *, num_frames: int, size: int, factor: int = 2,
              num_known: int | None = None, progress: bool = True) -> list[dict]:
    """Score `fn` on every case: one record per clip with the prompt, seed and the scores of `video.compare`.
    `num_frames` and `size` are those of the stage's output (the true clip); `num_known` the frames an extension
    is given (1 <= num_known < num_frames)."""
    if stage not in EVALUATIONS:
        raise ValueError(f"unknown stage {stage!r}; use one of {', '.join(STAGES)}")
    if EVALUATIONS[stage] is _extend and not (num_known and 1 <= num_known < num_frames):
        raise ValueError(f"extend needs 1 <= num_known < num_frames ({num_frames}), got {num_known}")
    records = []
    for case in ProgressBar(cases, desc=stage, unit="clip", disable=not progress):
        true = true_clip(case, num_frames, size)
        out, score = EVALUATIONS[stage](fn, true, case, factor=factor, num_known=num_known)
        scores = score(_check_output(stage, out, true.shape))
        records.append({"prompt": case.prompt, "seed": case.seed, **scores})
    return records


def summarize(records: list[dict]) -> dict:
    """Mean of each score over the clips, and the fraction of clips that beat the baseline's PSNR."""
    if not records:
        raise ValueError("no records to summarise")
    summary = {"num_clips": len(records)}
    summary.update({key: float(np.mean([r[key] for r in records])) for key in SCORES})
    summary["beats_baseline"] = float(np.mean([r["psnr_gain"] > 0 for r in records]))
    if all("judged" in r for r in records):
        summary["judged"] = {key: float(np.mean([r["judged"][key] for r in records])) for key in JUDGED}
    return summary


def markdown_table(stage: str, summary: dict, baseline: str) -> str:
    def number(value, digits=2):
        return "n/a" if value is None or not math.isfinite(value) else f"{value:.{digits}f}"

    judged = summary.get("judged")
    lines = [
        f"| stage | clips | PSNR (dB) | {baseline} PSNR (dB) | gain (dB) | SSIM | {baseline} SSIM | clips beating {baseline} |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
        f"| {stage} | {summary['num_clips']} | {number(summary['psnr'])} | {number(summary['baseline_psnr'])} | "
        f"{number(summary['psnr_gain'])} | {number(summary['ssim'], 4)} | {number(summary['baseline_ssim'], 4)} | "
        f"{100 * summary['beats_baseline']:.0f}% |"]
    if judged is not None:
        lines += ["", "| judged (" + JUDGED_ON.get(stage, "the output") + ") | "
                  + " | ".join(JUDGED) + " |", "| --- |" + " ---: |" * len(JUDGED),
                  f"| {stage} | " + " | ".join(f"{100 * judged[key]:.1f}%" for key in JUDGED) + " |"]
    return "\n".join(lines)


JUDGED_ON = {"extend": "the made frames"}  # an extension is judged on the frames it made
BASELINES = {"interpolation": "linear blending", "ssr": "bicubic", "extend": "last frame held"}
