"""Editing on the shapes world: a true clip is edited to another colour (or shape); did the edit take, and did the
rest of the clip (the other attribute, the motion) stay?

For each held-out (prompt, seed) case (vidiff.eval.suite) the source clip is drawn with `make_clip`; the target
is the next colour (or shape) in `synthetic.COLORS` (`SHAPES`) order, so every colour is both source and target
equally often; the edit prompt is the caption with that one word changed. The edited clip is scored by
`shapes.score_edit`: the target attribute measured in the edit, the other one as in the source, and the motion
kept (same measured direction, centroid trajectory correlated with the source's at >= 0.9); the mean distance
between the two paths (pixels) is reported beside it, since a parallel, shifted path correlates too.

An editor is passed as a function `fn(source uint8 (f, h, w, 3), case, target_prompt) -> uint8 (f, h, w, 3)`.
"""
from __future__ import annotations

import math

import numpy as np

from vidiff.data.synthetic import COLORS, SHAPES, caption
from vidiff.eval.shapes import score_edit
from vidiff.eval.stages import true_clip
from vidiff.eval.suite import EvalCase
from vidiff.progress import ProgressBar

EDIT_ATTRIBUTES = ("color", "shape")
RATES = ("target", "kept", "motion_kept", "success")


def edit_target(case: EvalCase, attribute: str) -> tuple[str, str]:
    """(target value, target prompt): the next colour / shape after the case's, cyclically."""
    if attribute not in EDIT_ATTRIBUTES:
        raise ValueError(f"unknown edit attribute {attribute!r}; use one of {', '.join(EDIT_ATTRIBUTES)}")
    values = list(COLORS) if attribute == "color" else list(SHAPES)
    current = case.color if attribute == "color" else case.shape
    target = values[(values.index(current) + 1) % len(values)]
    if attribute == "color":
        return target, caption(target, case.shape, case.motion)
    return target, caption(case.color, target, case.motion)


def run_edits(fn, cases: list[EvalCase], *, attribute: str = "color", num_frames: int, size: int,
              progress: bool = True) -> list[dict]:
    """Edit every case's true clip with `fn` and score it; one record per clip."""
    records = []
    for case in ProgressBar(cases, desc=f"edit {attribute}", unit="clip", disable=not progress):
        source = true_clip(case, num_frames, size)
        target, prompt = edit_target(case, attribute)
        edited = np.asarray(fn(source, case, prompt))
        if edited.shape != source.shape or edited.dtype != np.uint8:
            raise ValueError(f"the editor returned {edited.dtype} {edited.shape}, expected uint8 {source.shape}")
        scores = score_edit(source, edited, **{attribute: target})
        records.append({"prompt": case.prompt, "seed": case.seed, "edit_prompt": prompt, "target": target,
                        **{k: scores[k] for k in RATES},
                        **{k: scores[k] if math.isfinite(scores[k]) else None
                           for k in ("trajectory_correlation", "path_distance")},
                        "measured": {k: scores["edited"][k] for k in ("color", "shape", "motion")}})
    return records


def summarize(records: list[dict]) -> dict:
    """Rates of target reached / other attribute kept / motion kept / all three, and the mean correlation."""
    if not records:
        raise ValueError("no records to summarise")
    summary = {"num_clips": len(records), **{k: float(np.mean([r[k] for r in records])) for k in RATES}}
    for key in ("trajectory_correlation", "path_distance"):
        values = [r.get(key) for r in records]
        values = [v for v in values if v is not None and math.isfinite(v)]
        summary[f"mean_{key}"] = float(np.mean(values)) if values else None
    return summary


def markdown_table(attribute: str, summary: dict) -> str:
    correlation, distance = summary["mean_trajectory_correlation"], summary.get("mean_path_distance")
    return "\n".join([
        f"| edit | clips | {attribute} changed to the target | other attribute kept | motion kept | all | "
        "mean trajectory correlation | mean path distance (px) |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
        f"| {attribute} | {summary['num_clips']} | {100 * summary['target']:.1f}% | {100 * summary['kept']:.1f}% | "
        f"{100 * summary['motion_kept']:.1f}% | {100 * summary['success']:.1f}% | "
        + ("n/a" if correlation is None else f"{correlation:.3f}") + " | "
        + ("n/a" if distance is None else f"{distance:.2f}") + " |"])
