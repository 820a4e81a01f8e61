"""The shapes evaluation suite: generate a fixed prompt x seed set, measure every clip, summarise.

The prompt set is every caption of the synthetic world: 4 colours x 3 shapes x 4 motions = 48 prompts, so each
colour, shape and direction is asked for equally often. Each prompt is sampled once per evaluation seed.

Held-out seeds: `EVAL_SEEDS` (9001, 9002) are reserved for this evaluation. Nothing that picks a checkpoint, a
sampling setting or a threshold (the demo training, its previews) may use them, so the numbers are measured on
samples that played no part in choosing the model. Clip (prompt i, seed s) draws its noise from a CPU
`torch.Generator` seeded with `clip_seed(s, i)`, i being the prompt's index in the full 48-prompt list, so a
clip does not depend on the batch size or on `--limit`.

Quick checks (`limit`) take a balanced subset, not the first prompts (which, colour-major, would all be red):
`balanced_order` lists the 48 prompts so that every prefix asks each colour, shape and motion equally often
(to within one), and pairs of attributes nearly so.
"""
from __future__ import annotations

import collections
import itertools
import math
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image, ImageDraw

from vidiff.data.synthetic import ALL_COLORS, COLORS, MOTIONS, SHAPES, caption
from vidiff.eval.shapes import palette_for, parse_caption, score_clip
from vidiff.progress import ProgressBar

EVAL_SEEDS: tuple[int, ...] = (9001, 9002)
ATTRIBUTES = ("color", "shape", "motion", "all", "consistent")


@dataclass(frozen=True)
class EvalCase:
    prompt: str
    color: str
    shape: str
    motion: str
    seed: int
    index: int  # the prompt's index in `all_prompts()`


def all_prompts() -> list[str]:
    """Every caption of the shapes world, colour-major: 'a red circle moving left', ..."""
    return [caption(c, s, m) for c, s, m in itertools.product(COLORS, SHAPES, MOTIONS)]


def balanced_order() -> list[str]:
    """The 48 captions in an order whose every prefix is balanced: prompt i has colour i mod 4, shape i mod 3
    and motion (i - i // 4) mod 4 (all 48 combinations once: i mod 12 fixes colour and shape, and i // 12 then
    shifts the motion). Any 12 consecutive prompts hold every colour-shape pair; colour and motion, and shape and
    motion, meet at most twice in the first 12."""
    colors, shapes, motions = list(COLORS), list(SHAPES), list(MOTIONS)
    return [caption(colors[i % 4], shapes[i % 3], motions[(i - i // 4) % 4]) for i in range(48)]


def clip_seed(seed: int, index: int) -> int:
    """The generator seed of prompt `index` under evaluation seed `seed` (independent streams per clip)."""
    return int(np.random.default_rng([seed, index]).integers(2**31))


def _balanced(cases: list[EvalCase]) -> list[EvalCase]:
    """`cases` reordered greedily so that every prefix asks each colour, shape and motion about equally often:
    next comes the case whose attributes were asked least so far (the largest count, then their sum), ties going
    to the earlier prompt of `balanced_order`. On all 48 prompts this is `balanced_order` itself."""
    rank = {prompt: i for i, prompt in enumerate(balanced_order())}
    asked = collections.Counter()

    def cost(case: EvalCase):
        counts = [asked[key] for key in (("color", case.color), ("shape", case.shape), ("motion", case.motion))]
        return max(counts), sum(counts), rank.get(case.prompt, len(rank) + case.index)

    left, order = list(cases), []
    while left:
        best = min(left, key=cost)
        left.remove(best)
        order.append(best)
        asked.update([("color", best.color), ("shape", best.shape), ("motion", best.motion)])
    return order


def make_cases(seeds=EVAL_SEEDS, prompts: list[str] | None = None, limit: int | None = None) -> list[EvalCase]:
    """The (prompt, seed) cases, seed-major; `prompts` (captions of the shapes world) replaces the full set.
    `limit` keeps N cases (quick checks; a full evaluation has at least 48): the first N of the seed-major cases
    balanced per seed (`_balanced`), so every colour, shape and motion is asked for about equally often; they are
    returned in the usual order (seeds, then prompts as listed)."""
    seeds = list(seeds)
    if not seeds:
        raise ValueError("give at least one evaluation seed")
    if limit is not None and limit < 1:
        raise ValueError(f"limit must be >= 1, got {limit}")
    full = all_prompts()
    chosen = full if prompts is None else list(prompts)
    # clip seeds by position in the captions of every colour (the four demo colours first: their seeds as ever)
    every = [caption(c, s, m) for c, s, m in itertools.product(ALL_COLORS, SHAPES, MOTIONS)]
    cases = []
    for seed in seeds:
        for prompt in chosen:
            color, shape, motion = parse_caption(prompt)
            index = every.index(caption(color, shape, motion))
            cases.append(EvalCase(caption(color, shape, motion), color, shape, motion, int(seed), index))
    if limit is None or limit >= len(cases):
        return cases
    picked = [c for seed in seeds for c in _balanced([c for c in cases if c.seed == seed])][:limit]
    return sorted(picked, key=cases.index)


def generate(pipe, cases: list[EvalCase], *, batch_size: int = 16, progress: bool = True, **call_kwargs) -> list:
    """Sample one clip per case with `pipe(prompts, generator=[...], **call_kwargs)` (a VideoPipeline or a
    CascadePipeline), in batches; returns uint8 (f, h, w, 3) arrays in case order."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    clips = []
    with ProgressBar(total=len(cases), desc="eval", unit="clip", disable=not progress) as bar:
        for start in range(0, len(cases), batch_size):
            batch = cases[start:start + batch_size]
            generators = [torch.Generator("cpu").manual_seed(clip_seed(c.seed, c.index)) for c in batch]
            out = pipe([c.prompt for c in batch], generator=generators, progress=False, **call_kwargs)
            clips.extend([out] if isinstance(out, np.ndarray) else out)
            bar.update(len(batch))
    return clips


def score(cases: list[EvalCase], clips: list) -> list[dict]:
    """One record per clip: the case, what was measured and which attributes are right."""
    if len(cases) != len(clips):
        raise ValueError(f"got {len(clips)} clips for {len(cases)} cases")
    palette = palette_for({c.color for c in cases})  # a new colour in the prompts joins the judge's palette
    return [dict(prompt=c.prompt, seed=c.seed, **score_clip(clip, c.color, c.shape, c.motion, palette=palette))
            for c, clip in zip(cases, clips)]


def _rate(records: list[dict], key: str) -> float | None:
    return float(np.mean([r["correct"][key] for r in records])) if records else None


def summarize(records: list[dict]) -> dict:
    """Accuracy of each attribute (and all together, and consistency) over all clips, and the all-attributes
    accuracy per asked colour, shape and motion."""
    summary = {"num_clips": len(records), "accuracy": {key: _rate(records, key) for key in ATTRIBUTES}}
    for attribute, values in (("color", COLORS), ("shape", SHAPES), ("motion", MOTIONS)):
        groups = {v: [r for r in records if r["expected"][attribute] == v] for v in values}
        summary[f"by_{attribute}"] = {v: {"clips": len(g), "correct": _rate(g, attribute), "all": _rate(g, "all")}
                                      for v, g in groups.items() if g}
    area_cv = [r["measured"]["area_cv"] for r in records if r["measured"]["area_cv"] is not None]
    summary["mean_area_cv"] = float(np.mean(area_cv)) if area_cv else None  # JSON has no NaN
    return summary


def _pct(value: float) -> str:
    return "n/a" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{100 * value:.1f}%"


def markdown_table(summary: dict) -> str:
    """The summary as markdown: one row of overall accuracies, then the per-value breakdowns."""
    acc = summary["accuracy"]
    lines = [f"| clips | colour | shape | motion | all attributes | temporally consistent |",
             "| ---: | ---: | ---: | ---: | ---: | ---: |",
             f"| {summary['num_clips']} | {_pct(acc['color'])} | {_pct(acc['shape'])} | {_pct(acc['motion'])} | "
             f"{_pct(acc['all'])} | {_pct(acc['consistent'])} |", "",
             "| asked for | clips | that attribute right | all attributes right |",
             "| --- | ---: | ---: | ---: |"]
    for attribute in ("color", "shape", "motion"):
        for value, row in summary[f"by_{attribute}"].items():
            lines.append(f"| {value} | {row['clips']} | {_pct(row['correct'])} | {_pct(row['all'])} |")
    return "\n".join(lines)


def contact_sheet(clips: list, records: list[dict], max_frames: int = 8, scale: int = 2) -> np.ndarray:
    """One row per clip (up to `max_frames` frames, evenly spaced, enlarged `scale` times), each under a strip
    naming the prompt and what was wrong: uint8 (H, W, 3)."""
    if not clips:
        raise ValueError("no clips for the contact sheet")
    strip, pad = 12, 2
    rows = []
    for clip, record in zip(clips, records):
        picks = np.linspace(0, len(clip) - 1, min(max_frames, len(clip))).round().astype(int)
        frames = np.asarray(clip)[picks].repeat(scale, axis=1).repeat(scale, axis=2)
        rows.append(np.concatenate(list(frames), axis=1))
    width = max(r.shape[1] for r in rows) + 2 * pad
    height = sum(r.shape[0] + strip + pad for r in rows) + pad
    sheet = Image.new("RGB", (width, height), (255, 255, 255))
    draw = ImageDraw.Draw(sheet)
    y = pad
    for row, record in zip(rows, records):
        wrong = [k for k in ("color", "shape", "motion") if not record["correct"][k]]
        note = "ok" if not wrong else "wrong " + ", ".join(f"{k}: {record['measured'][k]}" for k in wrong)
        draw.text((pad, y), f"{record['prompt']} (seed {record['seed']}): {note}",
                  fill=(0, 110, 0) if not wrong else (190, 0, 0))
        sheet.paste(Image.fromarray(row), (pad, y + strip))
        y += row.shape[0] + strip + pad
    return np.asarray(sheet)
