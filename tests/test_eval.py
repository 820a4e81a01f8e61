"""Evaluation metrics: right on true synthetic clips, wrong on wrong ones; PSNR / SSIM against float64 references
written differently; the stage baselines; `vidiff eval` end to end on a tiny random pipeline."""
import itertools
import math

import numpy as np
import pytest

from vidiff.data.synthetic import BACKGROUND, COLORS, MOTIONS, SHAPES, make_clip
from vidiff.eval import shapes, suite, video

COMBOS = list(itertools.product(COLORS, SHAPES, MOTIONS))
OPPOSITE = {"moving left": "moving right", "moving right": "moving left", "moving up": "moving down",
            "moving down": "moving up"}


def soften(clip: np.ndarray, seed: int, noise: float = 12.0) -> np.ndarray:
    """What a generator's output looks like next to the drawing: a [1 2 1]/4 blur (sigma ~0.7 px) and noise."""
    x = clip.astype(np.float64)
    for axis in (1, 2):
        x = (np.roll(x, 1, axis) + 2 * x + np.roll(x, -1, axis)) / 4
    x += np.random.default_rng(seed).normal(0, noise, x.shape)
    return np.clip(np.round(x), 0, 255).astype(np.uint8)


# ---------------------------------------------------------------------------------------------------------------
# Prompt following on true clips
# ---------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("size, num_frames, seeds, noisy", [(32, 8, (0, 1, 2), False), (32, 8, (3,), True),
                                                            (64, 16, (4,), False), (64, 16, (5,), True)])
def test_true_clips_measure_right(size, num_frames, seeds, noisy):
    """Every colour x shape x motion, at the demo's size and larger, drawn cleanly and softened: all right,
    all temporally consistent."""
    failures = []
    for (color, shape, motion), seed in itertools.product(COMBOS, seeds):
        clip = make_clip(color, shape, motion, num_frames, size, seed)
        if noisy:
            clip = soften(clip, seed)
        result = shapes.score_clip(clip, color, shape, motion)
        if not (result["correct"]["all"] and result["correct"]["consistent"]):
            failures.append((color, shape, motion, seed, result["measured"]))
    assert not failures, failures[:3]


def test_features_near_their_analytic_values():
    """fill: square 1, circle pi/4, triangle 1/2 (plus rim blur at small size); skew 0, 0, -2 sqrt(2) / 5."""
    for shape, fill, skew in (("square", 1.0, 0.0), ("circle", math.pi / 4, 0.0), ("triangle", 0.5, -0.566)):
        measured = shapes.measure_clip(make_clip("blue", shape, "moving right", 4, 128, 0))
        assert measured.fill == pytest.approx(fill, abs=0.05), shape
        assert measured.skew == pytest.approx(skew, abs=0.05), shape


@pytest.mark.parametrize("color, shape, motion", [("red", "circle", "moving left"), ("yellow", "triangle", "moving up"),
                                                  ("green", "square", "moving down")])
def test_wrong_prompts_fail(color, shape, motion):
    clip = make_clip(color, shape, motion, 8, 32, 7)
    other_color = next(c for c in COLORS if c != color)
    other_shape = next(s for s in SHAPES if s != shape)
    for asked, failed in (((other_color, shape, motion), "color"), ((color, other_shape, motion), "shape"),
                          ((color, shape, OPPOSITE[motion]), "motion")):
        correct = shapes.score_clip(clip, *asked)["correct"]
        assert not correct[failed] and not correct["all"]
        assert all(correct[k] for k in ("color", "shape", "motion") if k != failed)


@pytest.mark.parametrize("motion", list(MOTIONS))
def test_reversed_and_still_clips(motion):
    clip = make_clip("blue", "square", motion, 8, 32, 3)
    assert shapes.measure_clip(clip[::-1]).motion == OPPOSITE[motion]
    still = np.repeat(clip[:1], 8, axis=0)
    measured = shapes.measure_clip(still)
    assert measured.motion == shapes.STILL and measured.shape == "square" and measured.color == "blue"
    assert not shapes.score_clip(still, "blue", "square", motion)["correct"]["all"]
    # A jitter of a pixel or two is still "still", not a direction.
    jitter = np.stack([np.roll(clip[0], (i % 2, -(i % 3)), axis=(0, 1)) for i in range(8)])
    assert shapes.measure_clip(jitter).motion == shapes.STILL


def test_recoloured_clip_measures_the_new_colour():
    """Paint the drawn shape another colour (same alpha): the colour changes, shape and motion stay."""
    clip = make_clip("red", "triangle", "moving right", 8, 32, 1).astype(np.float64)
    background, red, green = (np.asarray(v, np.float64) for v in (BACKGROUND, COLORS["red"], COLORS["green"]))
    alpha = ((clip - background) @ (red - background)) / ((red - background) @ (red - background))
    recoloured = np.round(background + alpha[..., None] * (green - background)).astype(np.uint8)
    assert shapes.score_clip(recoloured, "green", "triangle", "moving right")["correct"]["all"]


def test_inconsistent_clips():
    clip = make_clip("yellow", "circle", "moving left", 8, 32, 2)
    assert shapes.measure_clip(clip).consistent
    empty = np.full_like(clip, BACKGROUND[0])
    measured = shapes.measure_clip(empty)
    assert (measured.color, measured.shape, measured.frames_with_shape, measured.consistent) == ("none", "none", 0, False)
    assert not shapes.score_clip(empty, "yellow", "circle", "moving left")["correct"]["all"]
    gap = clip.copy()
    gap[4] = BACKGROUND  # the shape vanishes for a frame
    assert not shapes.measure_clip(gap).consistent
    recolour = clip.copy()
    recolour[4:] = make_clip("blue", "circle", "moving left", 8, 32, 2)[4:]  # colour changes half way
    assert shapes.measure_clip(recolour).color_spread > shapes.MAX_COLOR_SPREAD
    assert not shapes.measure_clip(recolour).consistent
    grow = np.concatenate([make_clip("yellow", "circle", "moving left", 8, 64, 2)[:4, 16:48, 16:48],
                           make_clip("yellow", "circle", "moving left", 8, 32, 2)[4:]])  # size doubles
    assert not shapes.measure_clip(grow).consistent
    two = np.maximum(clip, make_clip("red", "square", "moving right", 8, 32, 9))  # a second shape
    assert shapes.measure_clip(two).single_fraction < shapes.MIN_SINGLE and not shapes.measure_clip(two).consistent


def test_trajectory_correlation():
    source = make_clip("red", "circle", "moving right", 8, 32, 4)
    recoloured = make_clip("blue", "circle", "moving right", 8, 32, 4)  # same seed: same path
    a, b = shapes.trajectory(source), shapes.trajectory(recoloured)
    assert shapes.trajectory_correlation(a, b) > 0.99
    assert shapes.trajectory_correlation(a, shapes.trajectory(source[::-1])) < -0.99
    # Reference: numpy's corrcoef of the centred coordinates stacked into one vector.
    rng = np.random.default_rng(0)
    p, q = rng.normal(size=(8, 2)), rng.normal(size=(8, 2))
    reference = np.corrcoef(np.concatenate([p[:, 0] - p[:, 0].mean(), p[:, 1] - p[:, 1].mean()]),
                            np.concatenate([q[:, 0] - q[:, 0].mean(), q[:, 1] - q[:, 1].mean()]))[0, 1]
    assert shapes.trajectory_correlation(p, q) == pytest.approx(reference, abs=1e-12)
    assert math.isnan(shapes.trajectory_correlation(np.full((4, 2), np.nan), q[:4]))


def test_path_distance_sees_the_shift_correlation_misses():
    """A path drawn parallel to the source's but shifted by (3, 4) px correlates at 1 and is 5 px away; frames
    without a shape are left out; none shared: NaN."""
    rng = np.random.default_rng(1)
    p = rng.normal(size=(8, 2)) * 5
    shifted = p + np.array([3.0, 4.0])
    assert shapes.trajectory_correlation(p, shifted) == pytest.approx(1.0)
    assert shapes.path_distance(p, shifted) == pytest.approx(5.0) and shapes.path_distance(p, p) == 0.0
    q = shifted.copy()
    q[2] = np.nan
    assert shapes.path_distance(p, q) == pytest.approx(5.0)
    assert math.isnan(shapes.path_distance(np.full((4, 2), np.nan), p[:4]))
    source = make_clip("red", "circle", "moving right", 8, 32, 4)
    assert shapes.score_edit(source, make_clip("blue", "circle", "moving right", 8, 32, 4),
                             color="blue")["path_distance"] < 0.5  # same seed: the same path


def test_input_errors():
    with pytest.raises(ValueError, match="uint8"):
        shapes.measure_clip(np.zeros((2, 8, 8, 3), np.float32))
    with pytest.raises(ValueError, match="frames, height, width, 3"):
        shapes.measure_clip(np.zeros((2, 8, 8), np.uint8))
    with pytest.raises(ValueError, match="not a shapes caption"):
        shapes.parse_caption("a pink circle moving left")


def test_extra_colours_join_the_palette_only_when_asked():
    """A purple clip (a colour no demo model knows, `vidiff data shapes --colors purple`) is judged purple when a
    prompt asks for purple, and as the nearest of the four demo colours otherwise (old figures unchanged)."""
    from vidiff.data.synthetic import make_clip
    from vidiff.eval.suite import make_cases

    clip = make_clip("purple", "circle", "moving left", num_frames=6, size=32, seed=1)
    assert shapes.measure_clip(clip).color in ("red", "green", "blue", "yellow")
    assert shapes.score_clip(clip, "purple", "circle", "moving left",
                             palette=shapes.palette_for(["purple"]))["correct"]["all"]
    assert shapes.parse_caption("a purple circle moving left") == ("purple", "circle", "moving left")
    cases = make_cases(seeds=[9001], prompts=["a purple circle moving left", "a red circle moving left"])
    old = make_cases(seeds=[9001], prompts=["a red circle moving left"])
    assert cases[1].index == old[0].index and cases[0].index >= 48  # the old prompts keep their clip seeds


# ---------------------------------------------------------------------------------------------------------------
# PSNR / SSIM
# ---------------------------------------------------------------------------------------------------------------
def test_psnr_against_closed_form_and_loop():
    rng = np.random.default_rng(0)
    a = rng.integers(0, 250, (3, 16, 16, 3), dtype=np.uint8)
    assert video.psnr(a, a + 5) == pytest.approx(20 * math.log10(255 / 5), abs=1e-9)  # MSE = 25 everywhere
    b = rng.integers(0, 256, a.shape, dtype=np.uint8)
    per_frame = []
    for x, y in zip(a, b):
        total = sum((int(p) - int(q)) ** 2 for p, q in zip(x.ravel().tolist(), y.ravel().tolist()))
        per_frame.append(10 * math.log10(255 ** 2 * x.size / total))
    assert video.psnr(a, b) == pytest.approx(sum(per_frame) / len(per_frame), abs=1e-9)
    assert video.psnr(a, a) == video.PSNR_CAP


def ssim_reference(x: np.ndarray, y: np.ndarray) -> float:
    """Wang et al. 2004 by direct summation over every 11 x 11 window, float64, no convolution."""
    g = np.exp(-((np.arange(11) - 5.0) ** 2) / (2 * 1.5 ** 2))
    w = np.outer(g, g) / np.outer(g, g).sum()
    c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2
    values = []
    for f, ch in itertools.product(range(x.shape[0]), range(3)):
        p, q = x[f, :, :, ch].astype(np.float64), y[f, :, :, ch].astype(np.float64)
        for i in range(p.shape[0] - 10):
            for j in range(p.shape[1] - 10):
                u, v = p[i:i + 11, j:j + 11], q[i:i + 11, j:j + 11]
                mu, mv = (w * u).sum(), (w * v).sum()
                su, sv, suv = (w * (u - mu) ** 2).sum(), (w * (v - mv) ** 2).sum(), (w * (u - mu) * (v - mv)).sum()
                values.append((2 * mu * mv + c1) * (2 * suv + c2) / ((mu ** 2 + mv ** 2 + c1) * (su + sv + c2)))
    return float(np.mean(values))


def test_ssim_against_reference():
    rng = np.random.default_rng(1)
    clip = make_clip("green", "circle", "moving down", 2, 16, 0)
    noisy = np.clip(clip + rng.normal(0, 20, clip.shape), 0, 255).astype(np.uint8)
    assert video.ssim(clip, noisy) == pytest.approx(ssim_reference(clip, noisy), abs=1e-10)
    random = rng.integers(0, 256, (1, 14, 13, 3), dtype=np.uint8)
    other = rng.integers(0, 256, (1, 14, 13, 3), dtype=np.uint8)
    assert video.ssim(random, other) == pytest.approx(ssim_reference(random, other), abs=1e-10)
    assert video.ssim(clip, clip) == pytest.approx(1.0, abs=1e-12)
    assert video.ssim(clip, noisy) == pytest.approx(video.ssim(noisy, clip), abs=1e-12)
    assert video.ssim(clip, noisy) < 0.9
    with pytest.raises(ValueError, match="at least 11x11"):
        video.ssim(clip[:, :8, :8], clip[:, :8, :8])
    with pytest.raises(ValueError, match="same shape"):
        video.psnr(clip, clip[:1])


# ---------------------------------------------------------------------------------------------------------------
# Stage baselines and scores
# ---------------------------------------------------------------------------------------------------------------
def test_linear_blend_by_hand():
    known = np.stack([np.full((2, 2, 3), 0), np.full((2, 2, 3), 100), np.full((2, 2, 3), 40)]).astype(np.uint8)
    blended = video.linear_blend(known, 4)
    assert blended[:, 0, 0, 0].tolist() == [0, 25, 50, 75, 100, 85, 70, 55, 40]
    held = video.linear_blend(known, 2, num_frames=8, phase=1)  # frames 1, 3, 5 known; 0 and 6, 7 held
    assert held[:, 0, 0, 0].tolist() == [0, 0, 50, 100, 70, 40, 40, 40]


def test_interpolation_true_frames_beat_blending():
    """On synthetic motion, linear blending ghosts: the true in-between frames score far higher, and a
    nearest-frame copy scores no better than blending."""
    for shape, motion in (("circle", "moving right"), ("triangle", "moving up")):
        true = make_clip("red", shape, motion, 9, 32, 0)
        perfect = video.score_interpolation(true, true, 2)
        assert perfect["psnr"] == video.PSNR_CAP and perfect["ssim"] == pytest.approx(1.0)
        assert perfect["baseline_psnr"] < 35 and perfect["psnr_gain"] > 20
        copy = true.copy()
        copy[1::2] = true[0:-1:2]  # each in-between frame copies the previous keyframe
        assert video.score_interpolation(true, copy, 2)["psnr_gain"] < 0


def test_ssr_and_extension_scores():
    true = make_clip("blue", "square", "moving left", 4, 32, 0)
    low = video.downsample(true, 2)
    assert low.shape == (4, 16, 16, 3)
    assert low[0, 0, 0].tolist() == list(BACKGROUND)
    scores = video.score_ssr(true, true, 2)
    assert scores["psnr_gain"] > 5 and scores["baseline_ssim"] < scores["ssim"]
    upsampled = video.bicubic_upsample(low, 2)
    assert video.score_ssr(true, upsampled, 2)["psnr_gain"] == pytest.approx(0.0)
    extension = video.score_extension(true, true, 2)
    assert extension["psnr_gain"] > 10
    held = np.concatenate([true[:2], video.repeat_last(true[:2], 2)])
    assert video.score_extension(true, held, 2)["psnr_gain"] == pytest.approx(0.0)
    with pytest.raises(ValueError, match="num_known"):
        video.score_extension(true, true, 4)


# ---------------------------------------------------------------------------------------------------------------
# The suite
# ---------------------------------------------------------------------------------------------------------------
def test_cases_cover_everything_with_held_out_seeds():
    cases = suite.make_cases()
    assert len(cases) == 48 * len(suite.EVAL_SEEDS) >= 96
    assert {(c.color, c.shape, c.motion) for c in cases} == set(COMBOS)
    assert {c.seed for c in cases} == set(suite.EVAL_SEEDS)
    first = suite.make_cases(prompts=["a blue square moving up"], seeds=[5])
    assert suite.all_prompts()[first[0].index] == "a blue square moving up"
    assert len(suite.make_cases(limit=3)) == 3
    seeds = {suite.clip_seed(c.seed, c.index) for c in cases}
    assert len(seeds) == len(cases)


def test_limit_takes_a_balanced_subset():
    """Issue 24: --limit N spreads the N clips over colours, shapes and motions (every count within one of the
    others), the same clips every time, not the first N prompts (colour-major: all red); kept in the usual order."""
    import collections

    from vidiff.data.synthetic import COLORS, MOTIONS, SHAPES

    assert sorted(suite.balanced_order()) == sorted(suite.all_prompts())
    for limit in (3, 4, 7, 12, 25, 48):
        cases = suite.make_cases(seeds=[1], limit=limit)
        assert len(cases) == limit and cases == suite.make_cases(seeds=[1], limit=limit)
        for attribute, values in (("color", COLORS), ("shape", SHAPES), ("motion", MOTIONS)):
            counts = collections.Counter(getattr(c, attribute) for c in cases)
            low = 0 if len(counts) < len(values) else min(counts.values())
            assert len(counts) == min(limit, len(values)) and max(counts.values()) - low <= 1, (limit, attribute)
        assert [c.index for c in cases] == sorted(c.index for c in cases)
    assert {c.color for c in suite.make_cases(seeds=[1], limit=4)} == set(COLORS)
    # over two seeds: the first seed's balanced prompts, then the second's
    two = suite.make_cases(seeds=[1, 2], limit=50)
    assert [c.seed for c in two].count(2) == 2 and len({c.prompt for c in two if c.seed == 1}) == 48
    # --prompts with --limit: a balanced pick among the given captions
    given = ["a red circle moving left", "a red square moving left", "a green circle moving up"]
    assert [c.prompt for c in suite.make_cases(seeds=[1], prompts=given, limit=2)] == [given[0], given[2]]


def test_eval_prints_its_bar_once(tiny_model, tmp_path, monkeypatch):
    """Issue 24: stdout and stderr in one log: the eval bar's final state appears once (tqdm's close redraws it
    after the last update), on a line of its own, and no sampling bar runs inside it."""
    import io
    import sys
    import time

    from vidiff.cli import main
    from vidiff.pipelines.text_to_video import VideoPipeline

    class Slow:
        device = "cpu"

        def __call__(self, prompts, generator, num_frames, height, progress, **kwargs):
            assert progress is False
            time.sleep(0.15)  # past tqdm's refresh interval, so the last update draws the bar
            return [make_clip(*shapes.parse_caption(p), num_frames, height, seed=0) for p in prompts]

    monkeypatch.setattr(VideoPipeline, "from_pretrained", classmethod(lambda cls, *a, **k: Slow()))
    log = io.StringIO()
    monkeypatch.setattr(sys, "stdout", log)
    monkeypatch.setattr(sys, "stderr", log)
    assert main(["eval", "shapes", "--model", str(tiny_model), "--limit", "2", "--batch-size", "1", "--seeds", "1",
                 "--num-frames", "8", "--height", "32", "--width", "32"]) == 0
    text = log.getvalue()
    assert text.count("2/2") == 1 and "sampling" not in text, text
    assert "evaluated 2 clips (2 prompts, 1 seed)" in text and "\nevaluated 2 clips" in text.replace("\r", "")


def test_summary_from_true_clips():
    """The suite's scoring and summary on perfect clips (the drawn truth) and on deliberately wrong ones."""
    cases = suite.make_cases(seeds=[0])
    clips = [make_clip(c.color, c.shape, c.motion, 8, 32, c.index) for c in cases]
    summary = suite.summarize(suite.score(cases, clips))
    assert summary["accuracy"] == {"color": 1.0, "shape": 1.0, "motion": 1.0, "all": 1.0, "consistent": 1.0}
    reversed_clips = [clip[::-1] for clip in clips]
    summary = suite.summarize(suite.score(cases, reversed_clips))
    assert summary["accuracy"]["motion"] == 0.0 and summary["accuracy"]["color"] == 1.0
    assert summary["by_motion"]["moving up"] == {"clips": 12, "correct": 0.0, "all": 0.0}
    table = suite.markdown_table(summary)
    assert "| 48 | 100.0% | 100.0% | 0.0% | 0.0% | 100.0% |" in table
    sheet = suite.contact_sheet(clips[:3], suite.score(cases[:3], clips[:3]))
    assert sheet.dtype == np.uint8 and sheet.shape[1] >= 8 * 64


# ---------------------------------------------------------------------------------------------------------------
# `vidiff eval shapes`
# ---------------------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    from vidiff.testing import make_tiny_video_pipeline

    return make_tiny_video_pipeline(tmp_path_factory.mktemp("eval") / "model", seed=3, vae=False,
                                    defaults={"num_frames": 4, "height": 16, "width": 16, "num_inference_steps": 2})


def run_cli(capsys, *argv):
    from vidiff.cli import main

    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_eval_shapes_end_to_end(tiny_model, tmp_path, capsys):
    """A tiny random pipeline: the command runs, prints the table, writes valid JSON and a contact sheet that
    decodes; the recorded clips are the ones asked for."""
    import json

    from PIL import Image

    out, sheet = tmp_path / "results.json", tmp_path / "sheet.png"
    code, printed, err = run_cli(capsys, "eval", "shapes", "--model", tiny_model, "--limit", 3, "--seeds", "5,6",
                                 "--batch-size", 2, "--out", out, "--contact-sheet", sheet, "--quiet")
    assert code == 0, err
    assert "| clips | colour | shape | motion | all attributes |" in printed and "evaluated 3 clips" in printed
    results = json.loads(out.read_text(), parse_constant=lambda name: pytest.fail(f"{name} in JSON"))
    assert results["summary"]["num_clips"] == 3 and len(results["clips"]) == 3
    assert [c["prompt"] for c in results["clips"]] == [c.prompt for c in suite.make_cases([5, 6], limit=3)]
    assert results["settings"]["num_frames"] == 4 and results["settings"]["num_inference_steps"] == 2
    assert results["command"].startswith("vidiff eval shapes --model ") and "--limit 3" in results["command"]
    assert Image.open(sheet).size[0] >= 4 * 16 * 2
    # The same command again refuses to replace the results without --overwrite, before any work.
    code, _, err = run_cli(capsys, "eval", "shapes", "--model", tiny_model, "--limit", 1, "--out", out)
    assert code == 2 and "--overwrite" in err and err.count("\n") == 1


def test_eval_shapes_scores_what_the_pipeline_draws(tiny_model, tmp_path, capsys, monkeypatch):
    """With a pipeline that draws the true clip of each prompt, the command reports 100%; drawing them reversed
    in time, motion 0%. (Checks the wiring from prompts and generators to the scored records.)"""
    import json

    from vidiff.pipelines.text_to_video import VideoPipeline

    class Drawer:
        device = "cpu"

        def __init__(self, reverse):
            self.reverse = reverse

        def __call__(self, prompts, generator, num_frames, height, **kwargs):
            assert len(generator) == len(prompts)
            clips = [make_clip(*shapes.parse_caption(p), num_frames, height, seed=i) for i, p in enumerate(prompts)]
            return [c[::-1] if self.reverse else c for c in clips]

    for reverse, motion in ((False, 1.0), (True, 0.0)):
        monkeypatch.setattr(VideoPipeline, "from_pretrained", classmethod(lambda cls, *a, **k: Drawer(reverse)))
        out = tmp_path / f"r{reverse}.json"
        code, printed, err = run_cli(capsys, "eval", "shapes", "--model", tiny_model, "--seeds", "1",
                                     "--num-frames", 8, "--height", 32, "--width", 32, "--out", out, "--quiet")
        assert code == 0, err
        accuracy = json.loads(out.read_text())["summary"]["accuracy"]
        assert accuracy["color"] == 1.0 and accuracy["shape"] == 1.0 and accuracy["motion"] == motion
        assert "evaluated 48 clips" in printed


@pytest.mark.parametrize("argv, message", [
    (["--seeds", "1,x"], "--seeds '1,x' must be comma-separated integers"),
    (["--prompts", "a pink circle moving left"], "is not a shapes caption"),
    (["--limit", "0"], "--limit must be between 1 and 1000000 clips, got 0"),
    (["--batch-size", "0"], "--batch-size must be between 1 and 4096 clips, got 0"),
    (["--out", "results.txt"], "--out 'results.txt' must end in .json"),
    (["--contact-sheet", "s.jpg"], "--contact-sheet 's.jpg' must end in .png"),
    (["--steps", "0"], "--steps must be between 1 and"),
    (["--height", "17"], "--height must be a positive multiple"),
    (["--device", "tpu"], "unknown --device 'tpu'"),
])
def test_eval_shapes_errors_before_any_work(tiny_model, capsys, monkeypatch, argv, message):
    from vidiff.pipelines.text_to_video import VideoPipeline

    monkeypatch.setattr(VideoPipeline, "from_pretrained", lambda *a, **k: pytest.fail("loaded the model"))
    code, _, err = run_cli(capsys, "eval", "shapes", "--model", tiny_model, *argv)
    assert code == 2 and message in err and err.count("\n") == 1, err


def test_eval_shapes_missing_model(tmp_path, capsys):
    code, _, err = run_cli(capsys, "eval", "shapes", "--model", tmp_path / "nope")
    assert code == 2 and "nope" in err and err.count("\n") == 1


# ---------------------------------------------------------------------------------------------------------------
# Stage evaluation against the drawn truth
# ---------------------------------------------------------------------------------------------------------------
def test_stage_scoring_with_oracle_and_baseline_stages():
    """A stage that returns the truth beats every baseline on every clip; a stage that is the baseline gains 0 dB;
    a stage that returns the wrong size is an error naming the stage."""
    from vidiff.eval import stages

    cases = suite.make_cases(seeds=[3], limit=4)
    truth = {"interpolation": (9, 32), "ssr": (4, 32), "extend": (6, 32)}

    def oracle(stage):
        frames, size = truth[stage]
        return lambda *args: stages.true_clip(args[1], frames, size)

    baselines = {"interpolation": lambda known, case: video.linear_blend(known, 2),
                 "ssr": lambda low, case: video.bicubic_upsample(low, 2),
                 "extend": lambda known, case, n: np.concatenate([known, video.repeat_last(known, n - len(known))])}
    for stage, (frames, size) in truth.items():
        options = dict(num_frames=frames, size=size, factor=2, num_known=2, progress=False)
        best = stages.summarize(stages.run_stage(stage, oracle(stage), cases, **options))
        assert best["beats_baseline"] == 1.0 and best["psnr_gain"] > 5 and best["ssim"] > best["baseline_ssim"]
        assert best["judged"] == {key: 1.0 for key in stages.JUDGED}, stage  # the truth passes the shapes judge
        same = stages.summarize(stages.run_stage(stage, baselines[stage], cases, **options))
        assert same["psnr_gain"] == pytest.approx(0.0) and same["beats_baseline"] == 0.0
        assert f"| {stage} | 4 |" in stages.markdown_table(stage, same, stages.BASELINES[stage])
        assert f"| {stage} | 100.0% |" in stages.markdown_table(stage, best, stages.BASELINES[stage])
    # holding the last frame makes no motion: an extension judged on its own frames fails on motion alone
    held = stages.summarize(stages.run_stage("extend", baselines["extend"], cases, num_frames=6, size=32,
                                             num_known=2, progress=False))["judged"]
    assert held["motion"] == 0.0 and held["color"] == 1.0 and held["shape"] == 1.0

    def recoloured(known, case, n):  # the extension changes colour at the seam: its own frames are one colour
        made = stages.true_clip(case, n, 32)
        made[len(known):] = 255 - made[len(known):]
        return made

    jumped = stages.summarize(stages.run_stage("extend", recoloured, cases, num_frames=6, size=32, num_known=2,
                                               progress=False))["judged"]
    assert jumped["consistent"] == 0.0
    with pytest.raises(ValueError, match="the ssr stage returned uint8 \\(4, 16, 16, 3\\)"):
        stages.run_stage("ssr", lambda low, case: low, cases, num_frames=4, size=32, progress=False)
    with pytest.raises(ValueError, match="num_known"):
        stages.run_stage("extend", baselines["extend"], cases, num_frames=4, size=32, num_known=4, progress=False)


def test_edit_scores():
    source = make_clip("red", "circle", "moving right", 8, 32, 4)
    recoloured = make_clip("blue", "circle", "moving right", 8, 32, 4)  # same seed: same path and size
    result = shapes.score_edit(source, recoloured, color="blue")
    assert result["success"] and result["trajectory_correlation"] > 0.99
    assert not shapes.score_edit(source, recoloured, color="green")["target"]
    reshaped = make_clip("red", "square", "moving right", 8, 32, 4)
    assert shapes.score_edit(source, reshaped, shape="square")["success"]
    assert not shapes.score_edit(source, reshaped, color="blue")["success"]  # colour not changed, shape not kept
    down = make_clip("blue", "circle", "moving down", 8, 32, 4)  # right colour, another motion
    moved = shapes.score_edit(source, down, color="blue")
    assert moved["target"] and not moved["motion_kept"] and abs(moved["trajectory_correlation"]) < 0.5
    reversed_ = shapes.score_edit(source, recoloured[::-1], color="blue")
    assert reversed_["target"] and not reversed_["motion_kept"] and not reversed_["success"]
    still = shapes.score_edit(source, np.repeat(recoloured[:1], 8, axis=0), color="blue")
    assert not still["motion_kept"]
    with pytest.raises(ValueError, match="target color and/or shape"):
        shapes.score_edit(source, recoloured)


# ---------------------------------------------------------------------------------------------------------------
# `vidiff eval stage` and `vidiff eval shapes --cascade`
# ---------------------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tiny_stages(tmp_path_factory):
    from vidiff.stages.folder import inflate_stage
    from vidiff.testing import make_tiny_sd_pipeline, make_tiny_video_pipeline

    root = tmp_path_factory.mktemp("stages")
    sd = make_tiny_sd_pipeline(root / "sd", seed=1, vae=False)
    small = {"num_frames": 5, "height": 16, "width": 16, "num_inference_steps": 2}
    paths = {"interpolation": inflate_stage(sd, root / "interpolation", "interpolation", defaults=small),
             "ssr": inflate_stage(sd, root / "ssr", "ssr", factor=2, defaults=dict(small, num_frames=4, height=32,
                                                                                   width=32)),
             "base": make_tiny_video_pipeline(root / "base", seed=1, vae=False, defaults=dict(small, num_frames=3))}
    (root / "cascade.yaml").write_text(f"stages:\n  - model: {paths['base']}\n  - model: {paths['interpolation']}\n"
                                       f"    factor: 2\n  - model: {paths['ssr']}\n")
    paths["cascade"] = root / "cascade.yaml"
    return paths


@pytest.mark.parametrize("stage, model, frames, size", [("interpolation", "interpolation", 5, 16),
                                                       ("extend", "interpolation", 5, 16), ("ssr", "ssr", 4, 32)])
def test_eval_stage_end_to_end(tiny_stages, tmp_path, capsys, stage, model, frames, size):
    """A random stage runs through the real sampler; the JSON holds one record per clip with finite scores and
    the baseline's score equals the one computed here from the drawn truth."""
    import json

    from vidiff.eval import stages

    out = tmp_path / "stage.json"
    code, printed, err = run_cli(capsys, "eval", "stage", "--model", tiny_stages[model], "--stage", stage,
                                 "--limit", 2, "--out", out, "--quiet")
    assert code == 0, err
    assert f"| {stage} | 2 |" in printed and f"evaluated the {stage} stage on 2 clips" in printed
    results = json.loads(out.read_text(), parse_constant=lambda name: pytest.fail(f"{name} in JSON"))
    assert results["plan"]["num_frames"] == frames and results["plan"]["size"] == size
    case = suite.make_cases(limit=1)[0]
    true = stages.true_clip(case, frames, size)
    baseline = {"interpolation": lambda: video.score_interpolation(true, true, 2),
                "extend": lambda: video.score_extension(true, true, results["plan"]["num_known"]),
                "ssr": lambda: video.score_ssr(true, true, 2)}[stage]()["baseline_psnr"]
    assert results["clips"][0]["baseline_psnr"] == pytest.approx(baseline)
    assert all(math.isfinite(r["psnr"]) for r in results["clips"])


def test_eval_stage_feeds_each_stage_what_the_cascade_would(tiny_stages, tmp_path, capsys, monkeypatch):
    """Stand-in stages that return their own baseline from what they were given score exactly 0 dB over it:
    the inputs (keyframes, low-res clip, first frames) and the seeds reach the stage as documented."""
    import json

    from vidiff.pipelines import cascade
    from vidiff.pipelines.text_to_video import VideoPipeline

    seen = []

    def as_pt(clip):
        import torch
        return torch.from_numpy(np.asarray(clip)).permute(3, 0, 1, 2)[None].float() / 127.5 - 1

    def interpolate(pipe, known, prompt, *, factor, seed, **settings):
        seen.append(seed)
        return as_pt(video.linear_blend(known, factor))

    monkeypatch.setattr(cascade, "interpolate_video", interpolate)
    monkeypatch.setattr(cascade, "upscale_video", lambda pipe, low, prompt, **k: as_pt(video.bicubic_upsample(low, 2)))
    monkeypatch.setattr(cascade, "extend_video", lambda pipe, known, prompt, *, num_frames, **k: as_pt(
        np.concatenate([known, video.repeat_last(known, num_frames)])))
    monkeypatch.setattr(VideoPipeline, "from_pretrained", classmethod(lambda cls, *a, **k: type("P", (), {"device": "cpu"})()))
    for stage, model in (("interpolation", "interpolation"), ("ssr", "ssr"), ("extend", "interpolation")):
        out = tmp_path / f"{stage}.json"
        code, _, err = run_cli(capsys, "eval", "stage", "--model", tiny_stages[model], "--stage", stage,
                               "--limit", 3, "--out", out, "--quiet")
        assert code == 0, err
        summary = json.loads(out.read_text())["summary"]
        assert summary["psnr_gain"] == pytest.approx(0.0, abs=1e-9) and summary["num_clips"] == 3, stage
    assert seen == [suite.clip_seed(c.seed, c.index) for c in suite.make_cases(limit=3)]


def test_eval_stage_without_a_prompt_gives_the_stage_no_caption(tiny_stages, tmp_path, capsys, monkeypatch):
    """--no-prompt: the stage gets "" and guidance off (as `vidiff interpolate` without --prompt); the JSON says
    so and its command reproduces the run."""
    import json

    from vidiff.pipelines import cascade
    from vidiff.pipelines.text_to_video import VideoPipeline

    seen = []

    def interpolate(pipe, known, prompt, *, factor, seed, guidance, **settings):
        import torch
        seen.append((prompt, guidance))
        return torch.from_numpy(video.linear_blend(known, factor)).permute(3, 0, 1, 2)[None].float() / 127.5 - 1

    monkeypatch.setattr(cascade, "interpolate_video", interpolate)
    monkeypatch.setattr(VideoPipeline, "from_pretrained", classmethod(lambda cls, *a, **k: type("P", (), {"device": "cpu"})()))
    for argv, prompt in (([], suite.make_cases(limit=1)[0].prompt), (["--no-prompt"], "")):
        out = tmp_path / f"interpolation{len(argv)}.json"
        seen.clear()
        code, _, err = run_cli(capsys, "eval", "stage", "--model", tiny_stages["interpolation"], "--limit", 1,
                               "--out", out, "--quiet", *argv)
        assert code == 0, err
        results = json.loads(out.read_text())
        model_guidance = results["settings"]["guidance"] if not argv else 1.0
        assert seen == [(prompt, model_guidance)] and results["plan"]["captioned"] is (not argv)
        assert results["command"].endswith("--no-prompt") is bool(argv)


@pytest.mark.parametrize("model, argv, message", [
    ("base", [], "is a 'base' model"),
    ("interpolation", ["--stage", "ssr"], "is a 'interpolation' model"),
    ("interpolation", ["--num-frames", "6"], "--num-frames 6: x2 interpolation"),
    ("interpolation", ["--factor", "3"], "factor 3 is not supported"),
    ("interpolation", ["--stage", "extend", "--num-known", "5"], "--num-known must be in [1, 4]"),
    ("ssr", ["--noise-level", "999"], "--noise-level must be an integer in [0, 350]"),
    ("ssr", ["--steps", "0"], "--steps must be between 1 and"),
])
def test_eval_stage_errors_before_any_work(tiny_stages, capsys, monkeypatch, model, argv, message):
    from vidiff.pipelines.text_to_video import VideoPipeline

    monkeypatch.setattr(VideoPipeline, "from_pretrained", lambda *a, **k: pytest.fail("loaded the model"))
    code, _, err = run_cli(capsys, "eval", "stage", "--model", tiny_stages[model], *argv)
    assert code == 2 and message in err and err.count("\n") == 1, err


def test_eval_shapes_cascade(tiny_stages, tmp_path, capsys):
    import json

    out = tmp_path / "cascade.json"
    code, printed, err = run_cli(capsys, "eval", "shapes", "--cascade", tiny_stages["cascade"], "--limit", 2,
                                 "--batch-size", 2, "--out", out, "--quiet")
    assert code == 0, err
    results = json.loads(out.read_text())
    assert results["clip_size"] == [5, 32, 32]  # 3 base frames -> x2 interpolation -> x2 ssr
    assert len(results["settings"]["stages"]) == 3 and results["command"].startswith("vidiff eval shapes --cascade")
    code, _, err = run_cli(capsys, "eval", "shapes", "--cascade", tiny_stages["cascade"], "--scheduler", "ddim")
    assert code == 2 and "--scheduler does not apply to --cascade" in err
    code, _, err = run_cli(capsys, "eval", "shapes", "--model", tiny_stages["ssr"])
    assert code == 2 and "is a ssr stage, which needs a video to work on" in err


def test_ablation_report():
    """tools/eval_ablation.py's table and headline: the fewest steps with which the inflated start reaches the
    scratch run's all-attributes accuracy after the whole recipe, as a fraction of its steps."""
    import importlib.util
    from pathlib import Path

    spec = importlib.util.spec_from_file_location("eval_ablation", Path(__file__).parents[1] / "tools" / "eval_ablation.py")
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)

    def acc(all_):
        return {"color": 1.0, "shape": 0.5, "motion": 0.25, "all": all_, "consistent": 1.0}

    results = {"evaluations": {"inflated": {"0": acc(0.1), "100": acc(0.5), "200": acc(0.7), "400": acc(0.9)},
                               "scratch": {"0": acc(0.0), "200": acc(0.3), "400": acc(0.6)}}}
    table, headline = tool.report(results, 400)
    assert headline == {"scratch_final_all": 0.6, "inflated_final_all": 0.9, "inflated_steps_to_scratch_final": 200,
                        "fraction_of_steps": 0.5}
    assert "| 100 | 100% / 50% / 25% / **50%** | - |" in table and "reaches it with 200 steps (50% of the steps)" in table
    results["evaluations"]["inflated"] = {"400": acc(0.5)}
    table, headline = tool.report(results, 400)
    assert headline["inflated_steps_to_scratch_final"] is None and "no inflated run reaches it" in table
    results["evaluations"]["scratch"]["400"] = acc(0.0)
    assert "read the per-attribute columns" in tool.report(results, 400)[0]


def test_eval_shapes_defaults_to_the_demo_model(tiny_stages, tiny_model, capsys, monkeypatch):
    """No --model: the demo's default model (a cascade folder counts as --cascade), as `vidiff generate` does."""
    from vidiff import demo
    from vidiff.pipelines.cascade import CascadePipeline
    from vidiff.pipelines.text_to_video import VideoPipeline

    class Loaded(Exception):
        pass

    def stop(kind):
        def from_pretrained(cls, path, **kwargs):
            raise Loaded(kind, str(path))
        return classmethod(from_pretrained)

    monkeypatch.setattr(VideoPipeline, "from_pretrained", stop("model"))
    monkeypatch.setattr(CascadePipeline, "from_pretrained", stop("cascade"))
    monkeypatch.setattr(demo, "default_model", lambda: tiny_model)
    with pytest.raises(Loaded) as loaded:
        run_cli(capsys, "eval", "shapes", "--limit", 1)
    assert loaded.value.args == ("model", str(tiny_model))
    cascade_folder = tiny_stages["cascade"].parent
    (cascade_folder / "cascade.yaml").write_text(tiny_stages["cascade"].read_text())
    monkeypatch.setattr(demo, "default_model", lambda: cascade_folder)
    with pytest.raises(Loaded) as loaded:
        run_cli(capsys, "eval", "shapes", "--limit", 1)
    assert loaded.value.args == ("cascade", str(cascade_folder))


# ---------------------------------------------------------------------------------------------------------------
# Editing
# ---------------------------------------------------------------------------------------------------------------
def test_edit_scoring_with_oracle_and_failing_editors():
    from vidiff.eval import edits

    cases = suite.make_cases(seeds=[4], limit=6)
    assert [edits.edit_target(c, "color")[0] for c in cases[:1]] == ["green"]  # red -> green
    assert edits.edit_target(cases[0], "shape") == ("square", "a red square moving left")

    def redraw(attribute):
        def fn(source, case, prompt):
            return make_clip(*shapes.parse_caption(prompt), len(source), source.shape[1],
                             seed=suite.clip_seed(case.seed, case.index))
        return fn

    for attribute in edits.EDIT_ATTRIBUTES:
        best = edits.summarize(edits.run_edits(redraw(attribute), cases, attribute=attribute, num_frames=8,
                                               size=32, progress=False))
        assert best == {"num_clips": 6, "target": 1.0, "kept": 1.0, "motion_kept": 1.0, "success": 1.0,
                        "mean_trajectory_correlation": pytest.approx(1.0, abs=1e-3),
                        "mean_path_distance": pytest.approx(0.0, abs=0.5)}
    unchanged = edits.summarize(edits.run_edits(lambda s, c, p: s, cases, num_frames=8, size=32, progress=False))
    assert unchanged["target"] == 0.0 and unchanged["motion_kept"] == 1.0 and unchanged["success"] == 0.0
    backwards = edits.summarize(edits.run_edits(lambda s, c, p: redraw("color")(s, c, p)[::-1], cases,
                                                num_frames=8, size=32, progress=False))
    assert backwards["target"] == 1.0 and backwards["motion_kept"] == 0.0 and backwards["success"] == 0.0
    assert "| color | 6 | 100.0% |" in edits.markdown_table("color", backwards)


def test_eval_edit_end_to_end(tiny_model, tmp_path, capsys):
    import json

    out = tmp_path / "edit.json"
    code, printed, err = run_cli(capsys, "eval", "edit", "--model", tiny_model, "--limit", 2, "--steps", 2,
                                 "--out", out, "--quiet")
    assert code == 0, err
    results = json.loads(out.read_text(), parse_constant=lambda name: pytest.fail(f"{name} in JSON"))
    assert results["summary"]["num_clips"] == 2 and results["settings"]["method"] == "zero-shot"
    assert [c["edit_prompt"] for c in results["clips"]] == ["a green circle moving left", "a blue square moving right"]
    assert "edited 2 clips" in printed


def test_eval_edit_wiring(tiny_model, tmp_path, capsys, monkeypatch):
    """An editor that redraws the truth with the target prompt scores 100%: the source clip, the prompts and the
    per-case seed reach `edit_video` as documented."""
    import json

    import torch

    from vidiff.pipelines import editing

    calls = []

    def fake_edit(pipe, frames, prompts, *, source_prompt, seed, negative_prompt, **kwargs):
        calls.append((source_prompt, prompts[0], seed, negative_prompt))
        assert np.array_equal(frames, make_clip(*shapes.parse_caption(source_prompt), 4, 16, seed=seed))
        clip = make_clip(*shapes.parse_caption(prompts[0]), 4, 16, seed=seed)
        pixels = torch.from_numpy(clip).permute(3, 0, 1, 2)[None].float() / 127.5 - 1
        return editing.EditResult(videos=[pixels], latents=pixels)

    monkeypatch.setattr(editing, "edit_video", fake_edit)
    out = tmp_path / "edit.json"
    code, _, err = run_cli(capsys, "eval", "edit", "--model", tiny_model, "--limit", 3, "--out", out, "--quiet")
    assert code == 0, err
    assert json.loads(out.read_text())["summary"]["target"] == 1.0
    assert [c[2] for c in calls] == [suite.clip_seed(c.seed, c.index) for c in suite.make_cases(limit=3)]
    assert [c[3] for c in calls] == [None] * 3

    calls.clear()  # --negative source: each clip's own caption is the negative prompt, recorded with the settings
    code, _, err = run_cli(capsys, "eval", "edit", "--model", tiny_model, "--limit", 2, "--negative", "source",
                           "--out", out, "--overwrite", "--quiet")
    assert code == 0, err
    assert [c[3] for c in calls] == [c[0] for c in calls] == [c.prompt for c in suite.make_cases(limit=2)]
    results = json.loads(out.read_text())
    assert results["settings"]["negative"] == "source" and "--negative source" in results["command"]


@pytest.mark.parametrize("argv, message", [
    (["--strength", "2"], "--strength must be between 0 and 1"),
    (["--method", "tune", "--tune-steps", "0"], "--tune-steps must be between 1 and 100000, got 0"),
    (["--steps", "0"], "--steps must be between 1 and"),
    (["--seeds", ""], "--seeds '' must list at least one seed"),
])
def test_eval_edit_errors_before_any_work(tiny_model, capsys, monkeypatch, argv, message):
    from vidiff.pipelines.text_to_video import VideoPipeline

    monkeypatch.setattr(VideoPipeline, "from_pretrained", lambda *a, **k: pytest.fail("loaded the model"))
    code, _, err = run_cli(capsys, "eval", "edit", "--model", tiny_model, *argv)
    assert code == 2 and message in err and err.count("\n") == 1, err


def test_erratic_motion_is_not_a_direction():
    """A blob that jumps about with a net drift (the frames of a true clip out of order) is "erratic"; a real
    motion with a pixel of wobble keeps its direction."""
    clip = make_clip("green", "circle", "moving right", 8, 32, 0)
    shuffled = clip[[0, 5, 2, 7, 1, 4, 6, 3]]
    measured = shapes.measure_clip(shuffled)
    assert measured.motion == shapes.ERRATIC and measured.displacement[0] > 0  # drifts right, but not a path
    wobble = np.stack([np.roll(frame, (i % 2), axis=0) for i, frame in enumerate(clip)])  # 1 px up-down
    assert shapes.measure_clip(wobble).motion == "moving right"
