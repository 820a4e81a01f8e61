"""FVD, CLIP score and the VBench-style checks: the Fréchet distance against a numpy recomputation written another
way; I3D's layer names and SAME padding; FVD ~0 for a set against itself and rising with noise and blur (random
I3D); CLIPSIM with a tiny CLIP trained here; each VBench dimension ranking a clean clip above a degraded one;
`vidiff eval fvd | clip | vbench` end to end and their one-line errors."""
import itertools
import json
import math

import numpy as np
import pytest
import torch

from vidiff.data.synthetic import COLORS, MOTIONS, SHAPES, caption, make_clip
from vidiff.data.video_io import write_video
from vidiff.eval import clips as clip_sources
from vidiff.eval import fvd, i3d, vbench
from vidiff.eval.clip_score import ClipScorer

COMBOS = list(itertools.product(COLORS, SHAPES, MOTIONS))


@pytest.fixture(scope="module")
def one_thread():
    """Tiny models run fastest on one thread on a shared machine (no oversubscription)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# ---------------------------------------------------------------------------------------------------------------
# Fréchet distance
# ---------------------------------------------------------------------------------------------------------------
def frechet_by_eigenvalues(a: np.ndarray, b: np.ndarray) -> float:
    """The reference, written differently: tr sqrt(S1 S2) = sum of sqrt of the eigenvalues of S1^1/2 S2 S1^1/2
    (symmetric, so numpy's eigh), covariances from explicit sums."""
    mu_a, mu_b = a.mean(0), b.mean(0)
    s_a = (a - mu_a).T @ (a - mu_a) / (len(a) - 1)
    s_b = (b - mu_b).T @ (b - mu_b) / (len(b) - 1)
    w, v = np.linalg.eigh(s_a)
    root_a = v @ np.diag(np.sqrt(np.clip(w, 0, None))) @ v.T
    middle = np.linalg.eigvalsh(root_a @ s_b @ root_a)
    return float(np.sum((mu_a - mu_b) ** 2) + np.trace(s_a) + np.trace(s_b) - 2 * np.sqrt(np.clip(middle, 0, None)).sum())


@pytest.mark.parametrize("n, d, shift", [(64, 8, 0.5), (200, 16, 0.0), (40, 24, 2.0), (10, 50, 1.0)])
def test_frechet_distance_matches_numpy(n, d, shift):
    rng = np.random.default_rng(n + d)
    a = rng.normal(size=(n, d)) @ rng.normal(size=(d, d))
    b = rng.normal(size=(n + 7, d)) * rng.uniform(0.5, 2, d) + shift
    reference = frechet_by_eigenvalues(a, b)
    # (fewer samples than dimensions: the reference's own rounding, sqrt of ~1e-13 eigenvalues that should be 0,
    # is ~1e-8 of the result)
    singular = n <= d
    assert fvd.fvd(a, b) == pytest.approx(reference, rel=1e-7 if singular else 1e-9, abs=1e-9)
    statistics = [s for x in (a, b) for s in fvd.feature_statistics(x)]
    assert fvd.frechet_distance(*statistics) == pytest.approx(reference, rel=1e-4 if singular else 1e-7)  # sqrtm
    assert fvd.fvd(a, a) == pytest.approx(0.0, abs=1e-8 * np.trace(np.cov(a, rowvar=False)))


def test_frechet_distance_of_gaussians_in_closed_form():
    """Two diagonal Gaussians: |mu1 - mu2|^2 + sum (s1 - s2)^2 (s standard deviations)."""
    mu1, mu2 = np.array([0.0, 1.0, 2.0]), np.array([1.0, 1.0, 0.0])
    s1, s2 = np.array([1.0, 2.0, 3.0]), np.array([2.0, 2.0, 1.0])
    value = fvd.frechet_distance(mu1, np.diag(s1 ** 2), mu2, np.diag(s2 ** 2))
    assert value == pytest.approx(np.sum((mu1 - mu2) ** 2) + np.sum((s1 - s2) ** 2), rel=1e-12)


def test_frechet_statistics_errors():
    with pytest.raises(ValueError, match="n >= 2"):
        fvd.fvd(np.zeros((1, 4)), np.zeros((3, 4)))
    with pytest.raises(ValueError, match="mismatched"):
        fvd.frechet_distance(np.zeros(3), np.eye(3), np.zeros(4), np.eye(4))


# ---------------------------------------------------------------------------------------------------------------
# I3D
# ---------------------------------------------------------------------------------------------------------------
def test_i3d_layer_names_and_shapes():
    """pytorch-i3d's key names (and the shapes of Kinetics-400 I3D), so its converted weights load by key."""
    state = i3d.InceptionI3d().state_dict()
    expected = {"Conv3d_1a_7x7.conv3d.weight": (64, 3, 7, 7, 7), "Conv3d_1a_7x7.bn.running_var": (64,),
                "Conv3d_2c_3x3.conv3d.weight": (192, 64, 3, 3, 3), "Mixed_3b.b1b.conv3d.weight": (128, 96, 3, 3, 3),
                "Mixed_4f.b3b.bn.bias": (128,), "Mixed_5c.b0.conv3d.weight": (384, 832, 1, 1, 1),
                "Mixed_5c.b2b.conv3d.weight": (128, 48, 3, 3, 3), "logits.conv3d.weight": (400, 1024, 1, 1, 1),
                "logits.conv3d.bias": (400,)}
    for key, shape in expected.items():
        assert tuple(state[key].shape) == shape, key
    weights = {k: v for k, v in state.items() if not k.endswith("num_batches_tracked")}
    assert sum(v.numel() for k, v in weights.items() if "running" not in k) == 12_697_264  # I3D: ~12.7M


@pytest.mark.parametrize("n, k, s", [(16, 7, 2), (15, 7, 2), (8, 3, 2), (7, 1, 1), (5, 3, 1), (9, 2, 2)])
def test_same_padding_gives_tensorflow_sizes(n, k, s):
    """TF 'SAME': ceil(n / s) outputs; the odd pixel of padding at the back."""
    pad = i3d.same_padding((n, n, n), (k, k, k), (s, s, s))
    total = pad[0] + pad[1]
    assert (n + total - k) // s + 1 == math.ceil(n / s)
    assert pad[1] - pad[0] in (0, 1)


def test_i3d_weights_round_trip_and_bad_files(tmp_path, one_thread):
    from safetensors.torch import save_file

    model = i3d.random_i3d(seed=3)
    path = tmp_path / "i3d.safetensors"
    i3d.save_i3d(model, path)
    loaded = i3d.load_i3d(path)
    x = torch.rand(1, 3, 4, 32, 32) * 2 - 1
    with torch.no_grad():
        assert torch.equal(model(x), loaded(x))
    state = {k: v for k, v in model.state_dict().items() if k != "Mixed_4c.b0.conv3d.weight"}
    save_file(state, str(tmp_path / "broken.safetensors"))
    with pytest.raises(ValueError, match="lacks Mixed_4c.b0.conv3d.weight"):
        i3d.load_i3d(tmp_path / "broken.safetensors")
    with pytest.raises(FileNotFoundError, match="Kinetics-400"):
        i3d.load_i3d(tmp_path / "missing.safetensors")


def degrade(clips, kind: str, level: float, seed: int = 0) -> list:
    """Gaussian noise of std `level`, or a box blur of radius `level`, on uint8 clips."""
    rng = np.random.default_rng(seed)
    out = []
    for clip in clips:
        x = clip.astype(np.float64)
        if kind == "noise":
            x = x + rng.normal(0, level, x.shape)
        else:
            for axis in (1, 2):
                x = sum(np.roll(x, shift, axis) for shift in range(-int(level), int(level) + 1)) / (2 * level + 1)
        out.append(np.clip(np.round(x), 0, 255).astype(np.uint8))
    return out


def test_fvd_zero_for_itself_and_rising_with_noise_and_blur(one_thread):
    """Random-weight I3D on small clips (the protocol's sizes are the CLI's; the network takes any)."""
    model = i3d.random_i3d(seed=0)
    clips = [make_clip(c, s, m, 8, 32, seed) for seed, (c, s, m) in enumerate(COMBOS[::6])]  # 8 clips

    def features(videos):
        return fvd.i3d_features(model, videos, num_frames=8, size=32, batch_size=8, progress=False)

    real = features(clips)
    assert real.shape == (8, 400) and real.dtype == np.float64
    assert fvd.fvd(real, features(clips)) < 1e-6 * np.trace(np.cov(real, rowvar=False))
    for kind, levels in (("noise", (8, 24, 64)), ("blur", (1, 2, 4))):
        values = [fvd.fvd(real, features(degrade(clips, kind, level))) for level in levels]
        assert values[0] > 0 and all(a < b for a, b in zip(values, values[1:])), (kind, values)


def test_prepare_clip_protocol():
    clip = np.full((20, 48, 64, 3), 255, np.uint8)
    clip[:, :, :, 0] = 0
    x = fvd.prepare_clip(clip)
    assert x.shape == (3, 16, 224, 224) and x.dtype == torch.float32
    assert torch.allclose(x[0], torch.tensor(-1.0)) and torch.allclose(x[1:], torch.tensor(1.0))
    with pytest.raises(ValueError, match="takes 16 frames per clip, the clip has 8"):
        fvd.prepare_clip(clip[:8])


# ---------------------------------------------------------------------------------------------------------------
# CLIP score with a tiny CLIP trained here
# ---------------------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tiny_clip(tmp_path_factory, one_thread):
    """A tiny CLIP (32-wide towers) trained contrastively for 200 steps on single frames of shapes clips, saved
    as a folder (model, tokenizer, image processor) as `--clip DIR` reads it."""
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel

    from vidiff.testing import make_tiny_tokenizer

    folder = tmp_path_factory.mktemp("clip") / "tiny-clip"
    tokenizer = make_tiny_tokenizer(folder)
    torch.manual_seed(0)
    tower = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2)
    config = CLIPConfig(text_config=dict(tower, vocab_size=len(tokenizer), max_position_embeddings=32,
                                         bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                                         pad_token_id=tokenizer.pad_token_id),
                        vision_config=dict(tower, image_size=32, patch_size=8), projection_dim=32)
    model = CLIPModel(config)
    processor = CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    frames = np.stack([make_clip(*combo, 4, 32, seed)[seed % 4] for seed in range(3) for combo in COMBOS])
    pixels = processor(images=list(frames), return_tensors="pt")["pixel_values"].reshape(3, len(COMBOS), 3, 32, 32)
    tokens = tokenizer([caption(*combo) for combo in COMBOS], padding=True, return_tensors="pt")
    optimizer = torch.optim.AdamW(model.parameters(), lr=2e-3)
    generator = torch.Generator().manual_seed(0)
    for step in range(200):
        pick = torch.randperm(len(COMBOS), generator=generator)[:16]
        loss = model(input_ids=tokens["input_ids"][pick], attention_mask=tokens["attention_mask"][pick],
                     pixel_values=pixels[step % 3][pick], return_loss=True).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    return folder


def test_clip_score_ranks_matching_captions_above_shuffled(tiny_clip):
    scorer = ClipScorer.from_pretrained(tiny_clip)
    matching, shuffled = [], []
    for k, combo in enumerate(COMBOS[:16]):
        clip = make_clip(*combo, 4, 32, 1000 + k)  # held-out draws
        matching.append(scorer.score(clip, caption(*combo)))
        shuffled.append(scorer.score(clip, caption(*COMBOS[(k + 17) % len(COMBOS)])))  # other colour and shape
    assert np.mean(matching) > np.mean(shuffled) + 10
    assert sum(m > s for m, s in zip(matching, shuffled)) >= 13


def test_clip_score_is_clipsim(tiny_clip):
    """100 x max(cos, 0) per frame, averaged: recomputed from the model's own features."""
    from transformers import CLIPImageProcessor, CLIPModel, CLIPTokenizer

    model = CLIPModel.from_pretrained(tiny_clip).eval()
    tokenizer, processor = CLIPTokenizer.from_pretrained(tiny_clip), CLIPImageProcessor.from_pretrained(tiny_clip)
    clip = make_clip("red", "circle", "moving left", 3, 32, 5)
    with torch.no_grad():
        text = model.get_text_features(**tokenizer(["a red circle moving left"], return_tensors="pt"))
        image = model.get_image_features(pixel_values=processor(images=list(clip), return_tensors="pt")["pixel_values"])
    text, image = getattr(text, "pooler_output", text).double(), getattr(image, "pooler_output", image).double()
    cosine = torch.nn.functional.cosine_similarity(image, text, dim=-1)
    expected = float((100 * cosine.clamp(min=0)).mean())
    assert ClipScorer(model, tokenizer, processor).score(clip, "a red circle moving left") == pytest.approx(expected,
                                                                                                          abs=1e-4)


# ---------------------------------------------------------------------------------------------------------------
# VBench-style dimensions
# ---------------------------------------------------------------------------------------------------------------
CLEAN_CASES = [("red", "circle", "moving left", 3), ("blue", "square", "moving up", 4),
               ("yellow", "triangle", "moving right", 5)]


def jittered(clip, seed=0, shift=5):
    rng = np.random.default_rng(seed)
    return np.stack([np.roll(frame, tuple(rng.integers(-shift, shift + 1, 2)), (0, 1)) for frame in clip])


def flickering(clip, seed=0, amount=50):
    rng = np.random.default_rng(seed)
    gains = rng.uniform(1 - amount / 100, 1 + amount / 100, (len(clip), 1, 1, 1))
    return np.clip(np.round(clip * gains), 0, 255).astype(np.uint8)


def frozen(clip):
    return np.repeat(clip[:1], len(clip), axis=0)


@pytest.mark.parametrize("dimension, degraded", [
    ("subject_consistency", jittered), ("background_consistency", flickering), ("motion_smoothness", jittered),
    ("motion_smoothness", flickering), ("temporal_flicker", flickering), ("temporal_flicker", jittered)])
def test_vbench_ranks_clean_above_degraded(dimension, degraded):
    for color, shape, motion, seed in CLEAN_CASES:
        clip = make_clip(color, shape, motion, 16, 64, seed)
        clean, bad = (vbench.score_clip(x, [dimension])[dimension] for x in (clip, degraded(clip, seed)))
        assert 0 <= bad < clean <= 1, (dimension, degraded.__name__, color, clean, bad)


def test_dynamic_degree_moving_above_frozen():
    for color, shape, motion, seed in CLEAN_CASES:
        clip = make_clip(color, shape, motion, 16, 64, seed)
        moving, still = vbench.dynamic_degree(clip), vbench.dynamic_degree(frozen(clip))
        assert moving["dynamic"] == 1.0 and still["dynamic"] == 0.0
        assert still["flow_magnitude"] < 0.05 < 1.0 < moving["flow_magnitude"]


def test_vbench_reference_values():
    """Against the formulas written out: flicker of a clip whose frames differ by a constant; a frozen clip is
    perfectly consistent and smooth; the interpolation recovers a shape moving at constant speed."""
    clip = np.stack([np.full((16, 16, 3), 10 * t, np.uint8) for t in range(4)])
    assert vbench.temporal_flicker(clip) == pytest.approx(1 - 10 / 255)
    still = frozen(make_clip("green", "square", "moving down", 8, 32, 1))
    assert vbench.subject_consistency(still) == pytest.approx(1.0)
    assert vbench.background_consistency(still) == pytest.approx(1.0)
    assert vbench.motion_smoothness(still) == pytest.approx(1.0, abs=1e-3)  # (Farneback's flow is ~1e-3, not 0)
    for shape, motion, seed in (("square", "moving right", 2), ("triangle", "moving up", 4)):
        moving = make_clip("red", shape, motion, 16, 64, seed)  # 2-3 pixels a frame
        blended = 0.5 * (moving[4].astype(np.float32) + moving[6])  # the no-flow baseline: a ghosted double image
        warped = vbench.interpolate_middle(moving[4], moving[6])
        assert np.abs(warped - moving[5]).mean() < 0.2 * np.abs(blended - moving[5]).mean()


def test_vbench_errors():
    with pytest.raises(ValueError, match="motion_smoothness needs at least 3 frames, the clip has 2"):
        vbench.score_clip(np.zeros((2, 16, 16, 3), np.uint8), ["motion_smoothness"])
    with pytest.raises(ValueError, match="unknown vbench dimension 'sharpness'"):
        vbench.check_dimensions(["sharpness"])


# ---------------------------------------------------------------------------------------------------------------
# Clip sources and the CLI
# ---------------------------------------------------------------------------------------------------------------
def run_cli(capsys, *argv):
    from vidiff.cli import main

    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def write_generate_run(folder, cases, num_frames=8, size=32):
    """What `vidiff generate` leaves: clip-NNN.mp4 + .gif extras + JSON sidecars with the prompt."""
    folder.mkdir(parents=True)
    clips = []
    for i, (color, shape, motion, seed) in enumerate(cases):
        clip = make_clip(color, shape, motion, num_frames, size, seed)
        write_video(folder / f"clip-{i:03d}.mp4", clip, fps=8)
        write_video(folder / f"clip-{i:03d}.gif", clip, fps=8)
        (folder / f"clip-{i:03d}.json").write_text(json.dumps({"prompt": caption(color, shape, motion), "seed": seed,
                                                               "files": [f"clip-{i:03d}.mp4", f"clip-{i:03d}.gif",
                                                                         f"clip-{i:03d}.json"]}))
        clips.append(clip)
    return clips


def test_find_clips_of_a_generate_run_and_captions_file(tmp_path):
    write_generate_run(tmp_path / "run", CLEAN_CASES)
    entries = clip_sources.find_clips(tmp_path / "run")
    assert [e.path.name for e in entries] == ["clip-000.mp4", "clip-001.mp4", "clip-002.mp4"]  # gifs are extras
    assert entries[1].caption == "a blue square moving up"
    (tmp_path / "captions.json").write_text(json.dumps({"clip-001": "a green circle", "clip-002.mp4": "x"}))
    clip_sources.apply_captions(entries, clip_sources.read_captions(tmp_path / "captions.json"), tmp_path / "run")
    assert [e.caption for e in entries] == ["a red circle moving left", "a green circle", "x"]


def test_eval_vbench_cli_matches_the_functions(tmp_path, capsys):
    clips = write_generate_run(tmp_path / "run", CLEAN_CASES)
    out = tmp_path / "vbench.json"
    code, printed, err = run_cli(capsys, "eval", "vbench", "--videos", tmp_path / "run", "--out", out, "--quiet")
    assert code == 0, err
    assert "| clips | subject consistency |" in printed and f"wrote {out}" in printed
    results = json.loads(out.read_text())
    assert results["features"]["background_consistency"] == "colour histograms"
    from vidiff.data.video_io import read_video

    decoded = [read_video(tmp_path / "run" / f"clip-{i:03d}.mp4").frames for i in range(3)]
    assert all(d.shape == c.shape for d, c in zip(decoded, clips))
    for record, frames in zip(results["clips"], decoded):
        assert record == pytest.approx({"path": record["path"], **vbench.score_clip(frames)})
    assert results["summary"]["motion_smoothness"] == pytest.approx(
        np.mean([r["motion_smoothness"] for r in results["clips"]]))


def test_eval_clip_cli(tmp_path, capsys, tiny_clip):
    write_generate_run(tmp_path / "run", [("red", "circle", "moving left", 1), ("blue", "square", "moving up", 2),
                                          ("yellow", "triangle", "moving right", 3), ("green", "circle", "moving down", 4)])
    out = tmp_path / "clip.json"
    code, printed, err = run_cli(capsys, "eval", "clip", "--videos", tmp_path / "run", "--clip", tiny_clip,
                                 "--device", "cpu", "--out", out, "--quiet")
    assert code == 0, err
    summary = json.loads(out.read_text())["summary"]
    assert summary["num_clips"] == 4 and summary["clip_score"] > summary["mismatched"] + 10


def test_eval_fvd_cli_random_i3d(tmp_path, capsys, one_thread):
    write_generate_run(tmp_path / "a", CLEAN_CASES, num_frames=8)
    write_generate_run(tmp_path / "b", [(c, s, m, seed + 10) for c, s, m, seed in CLEAN_CASES], num_frames=8)
    out = tmp_path / "fvd.json"
    code, printed, err = run_cli(capsys, "eval", "fvd", "--real", tmp_path / "a", "--fake", tmp_path / "b", "--i3d",
                                 "random", "--frames", 8, "--size", 32, "--device", "cpu", "--out", out, "--quiet")
    assert code == 0, err
    results = json.loads(out.read_text())
    assert "not comparable" in printed and results["comparable"] is False and results["fvd"] > 0
    assert results["num_real"] == results["num_fake"] == 3


@pytest.mark.parametrize("argv, message", [
    (["fvd", "--real", "{run}", "--fake", "{run}"], "--i3d is required: FVD needs the Kinetics-400 I3D weights"),
    (["fvd", "--real", "{run}", "--fake", "{run}", "--i3d", "random"], "has 8 frames; FVD with --frames 16 needs"),
    (["fvd", "--real", "{run}", "--fake", "{empty}", "--i3d", "random", "--frames", "8"], "holds no videos"),
    (["fvd", "--real", "{run}", "--fake", "{run}", "--i3d", "{tmp}/nope.safetensors", "--frames", "8"],
     "--i3d '{tmp}/nope.safetensors' does not exist"),
    (["vbench", "--videos", "{tmp}/missing"], "--videos {tmp}/missing: no such folder or manifest"),
    (["vbench", "--videos", "{short}"], "has 2 frames; motion_smoothness needs at least 3"),
    (["vbench", "--videos", "{bad}"], "broken.mp4"),
    (["vbench", "--videos", "{run}", "--dimensions", "subject_consistency", "--clip", "x/y"],
     "--clip scores background_consistency"),
    (["clip", "--videos", "{run}"], "--clip is required"),
    (["clip", "--videos", "{uncaptioned}", "--clip", "x/y"], "1 of 1 clips have no caption"),
])
def test_eval_metric_errors_are_one_line(tmp_path, capsys, argv, message):
    write_generate_run(tmp_path / "run", CLEAN_CASES[:2])
    (tmp_path / "empty").mkdir()
    (tmp_path / "short").mkdir()
    write_video(tmp_path / "short" / "s.mp4", make_clip("red", "circle", "moving left", 2, 32, 0), fps=8)
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "broken.mp4").write_bytes(b"not a video at all")
    (tmp_path / "uncaptioned").mkdir()
    write_video(tmp_path / "uncaptioned" / "u.mp4", make_clip("red", "circle", "moving left", 4, 32, 0), fps=8)
    names = {k: tmp_path / k for k in ("run", "empty", "short", "bad", "uncaptioned")}
    argv = [a.format(tmp=tmp_path, **names) for a in argv]
    code, _, err = run_cli(capsys, "eval", *argv)
    assert code == 2
    line = err.strip()
    assert "\n" not in line and line.startswith("vidiff eval: error:") and message.format(tmp=tmp_path) in line, line


# ---------------------------------------------------------------------------------------------------------------
# train: validation.metrics
# ---------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("overrides, message", [
    (["validation.metrics=[fvd]"], "validation.metrics: unknown metric 'fvd'; choose from vbench"),
    (["validation.metrics=[vbench]"], "validation.metrics scores the validation clips: set validation.prompts"),
    (['validation.prompts=["a red circle"]', "validation.metrics=[vbench]"], "needs clips of at least 3 frames"),
])
def test_validation_metrics_config_errors(overrides, message):
    from vidiff.config import ConfigError, load_config

    with pytest.raises(ConfigError, match=message):
        load_config(None, ["model.pretrained=x", "data.manifest=y", "data.num_frames=2", *overrides])


def test_train_logs_vbench_of_validation_clips(tmp_path, one_thread):
    """A 2-step tiny run with validation every step: validation_metrics.csv has one row per validation, equal to
    `vidiff eval vbench` on that validation's folder, and TensorBoard has validation/<dimension> scalars."""
    import csv

    from vidiff.config import load_config
    from vidiff.data.synthetic import write_shapes_dataset
    from vidiff.testing import make_tiny_sd_pipeline
    from vidiff.training import train
    from vidiff.training.logs import score_validation

    sd = make_tiny_sd_pipeline(tmp_path / "sd")
    write_shapes_dataset(tmp_path / "shapes", 2, num_frames=4, size=16, seed=0)
    out = tmp_path / "run"
    config = load_config(None, [f"model.pretrained={sd}", f"data.manifest={tmp_path / 'shapes'}", f"output_dir={out}",
                                "data.num_frames=2", "data.height=16", "data.width=16", "data.num_workers=0",
                                "train.max_steps=2", "train.batch_size=1", "train.checkpoint_every=0",
                                "train.mixed_precision=no", 'validation.prompts=["a red circle moving left"]',
                                "validation.every=1", "validation.num_frames=4", "validation.steps=2",
                                "validation.metrics=[vbench]"])
    assert train(config).status == "finished"
    with open(out / "validation_metrics.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [r["name"] for r in rows] == ["step-00000001", "step-00000002"] and rows[1]["step"] == "2"
    for row in rows:
        clips = sorted((out / "validation" / row["name"]).glob("*.mp4"))
        expected = score_validation(clips, ["vbench"])
        for key in vbench.DIMENSIONS:
            assert float(row[key]) == pytest.approx(expected[key], rel=1e-5), key
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(next((out / "logs").rglob("events.out.tfevents.*")).parent))
    events.Reload()
    assert "validation/motion_smoothness" in events.Tags()["scalars"]
