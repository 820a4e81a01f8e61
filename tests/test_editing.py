"""Video editing and training-free text-to-video on tiny models (CPU): DDIM inversion, Tune-A-Video tuning, SDEdit,
Text2Video-Zero motion, the inversion cache, `vidiff edit` and `vidiff generate --zero-shot`."""
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from vidiff.cli import main
from vidiff.pipelines import editing
from vidiff.pipelines.editing import (InversionCache, ddim_invert, edit_video, fit_frames, inverse_ddim_step,
                                      inversion_levels, translate_frames, zero_shot_generate)
from vidiff.pipelines.text_to_video import VideoPipeline, timesteps_for_strength
from vidiff.testing import make_tiny_video_pipeline
from vidiff.training.tune import tune_and_edit

# The shared sample clips, ../shared/data/videos beside the repository (or beside the folder of worktrees).
REAL_VIDEOS = next((p / "shared" / "data" / "videos" for p in Path(__file__).resolve().parents[2:4]
                    if (p / "shared" / "data" / "videos").is_dir()), Path("/nonexistent"))


pytestmark = pytest.mark.usefixtures("one_thread")  # (tests/conftest.py)


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("edit-models")
    return {"latent": make_tiny_video_pipeline(root / "latent", seed=1),
            "pixel": make_tiny_video_pipeline(root / "pixel", seed=2, vae=False)}


def smooth(pipe, scale: float = 0.1):
    """A random U-Net's noise estimate swings wildly with its input, a trained one's is smooth along the ODE path
    (inversion relies on that); a smaller output layer makes the random one smooth. In place; returns pipe."""
    with torch.no_grad():
        pipe.unet.conv_out.weight.mul_(scale)
        pipe.unet.conv_out.bias.mul_(scale)
    return pipe


def load(path, scale=None):
    pipe = VideoPipeline.from_pretrained(path, device="cpu")
    return smooth(pipe, scale) if scale else pipe


def moving_clip(num_frames=4, height=16, width=16, seed=0) -> np.ndarray:
    """uint8 (f, h, w, 3): a bright square moving right over a noisy background."""
    rng = np.random.default_rng(seed)
    frames = rng.integers(0, 60, (num_frames, height, width, 3), dtype=np.uint8)
    for k in range(num_frames):
        frames[k, 4:10, 2 + 2 * k:8 + 2 * k] = (220, 40, 40)
    return frames


def write_clip(path: Path, num_frames=8, height=20, width=24, fps=10.0) -> Path:
    from vidiff.data.video_io import write_video

    return write_video(path, moving_clip(num_frames, height, width), fps=fps)


def cli(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


# ---------------------------------------------------------------------------------------------------------------
# DDIM inversion
# ---------------------------------------------------------------------------------------------------------------
def test_inversion_matches_diffusers_inverse_scheduler(models):
    """Our inverse DDIM step and schedule give what diffusers' DDIMInverseScheduler gives with the same U-Net."""
    from diffusers import DDIMInverseScheduler

    pipe = load(models["latent"])
    latents = torch.randn(1, 4, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    text = pipe.encode_prompt(["a red circle"])
    ours = ddim_invert(pipe, latents, text, 5, progress=False)

    reference = DDIMInverseScheduler.from_config(pipe.scheduler_config)
    reference.set_timesteps(5)
    x = latents.clone()
    with torch.no_grad():
        for t in reference.timesteps:
            x = reference.step(pipe.unet(x, t, text), t, x).prev_sample
    assert reference.timesteps.tolist() == [t for t, _, _ in inversion_levels(pipe.make_scheduler("ddim"), 5)]
    torch.testing.assert_close(ours, x, rtol=1e-5, atol=1e-5)


def test_inverse_step_undoes_the_ddim_step():
    """With the same eps, the inverse step and diffusers' DDIM step are inverses: exact up to the float32 rounding of
    diffusers' alphas_cumprod (its sqrt is taken in float32, so about 1e-7 relative; a wrong formula is off by O(1))."""
    from diffusers import DDIMScheduler

    from vidiff.testing import SD_SCHEDULER

    sampler = DDIMScheduler(**SD_SCHEDULER)
    levels = inversion_levels(sampler, 10)
    generator = torch.Generator().manual_seed(0)
    x0 = torch.randn(2, 4, 3, 5, 5, dtype=torch.float64, generator=generator)
    eps = torch.randn(x0.shape, dtype=torch.float64, generator=generator)
    t, alpha_from, alpha_to = levels[4]
    up = inverse_ddim_step(eps, x0, alpha_from, alpha_to)
    down = sampler.step(eps, t, up).prev_sample
    torch.testing.assert_close(down, x0, rtol=1e-5, atol=1e-5)


def reconstruction_error(pipe, latents, text, steps, cross_frame="none") -> float:
    with pipe.temporary_cross_frame(cross_frame):
        noise = ddim_invert(pipe, latents, text, steps, progress=False)
        sampler = pipe.make_scheduler("ddim")
        timesteps = timesteps_for_strength(sampler, steps, 1.0)
        back = pipe.denoise(noise, text, timesteps, guidance_scale=1.0, scheduler=sampler, progress=False)
    return float((back - latents).pow(2).mean().sqrt() / latents.std())


@pytest.mark.parametrize("cross_frame", ["first", "sparse-causal"])
def test_inversion_then_sampling_reconstructs_the_latents(models, cross_frame):
    pipe = load(models["latent"], scale=0.1)
    latents = torch.randn(1, 4, 4, 8, 8, generator=torch.Generator().manual_seed(1))
    text = pipe.encode_prompt(["a red circle moving right"])
    coarse, fine = (reconstruction_error(pipe, latents, text, n, cross_frame) for n in (8, 32))
    assert fine < 0.03, fine
    assert fine < 0.75 * coarse, (coarse, fine)
    # The inverted latents are noise, not the input: sampling another prompt from them differs.
    noise = ddim_invert(pipe, latents, text, 8, progress=False)
    assert (noise - latents).abs().mean() > 0.1


def test_edit_with_the_source_prompt_gives_the_clip_back(models):
    """End to end through `edit_video` on a pixel-space model (no VAE round trip): invert with the source
    prompt, sample the same prompt with guidance 1 -> the input frames."""
    pipe = load(models["pixel"], scale=0.05)
    frames = moving_clip()
    result = edit_video(pipe, frames, ["a red square"], source_prompt="a red square", guidance_scale=1.0,
                        num_inference_steps=32, progress=False)
    pixels = torch.from_numpy(frames).permute(3, 0, 1, 2)[None].float() / 127.5 - 1
    error = (result.videos[0] - pixels).abs().mean()
    assert error < 0.02, error
    assert (result.start - pixels).abs().mean() > 20 * error  # it went through noise, not around it


# ---------------------------------------------------------------------------------------------------------------
# Tune-A-Video, SDEdit
# ---------------------------------------------------------------------------------------------------------------
def test_tuning_lowers_the_loss_and_trains_only_temporal_layers_and_queries(models):
    pipe = load(models["latent"])
    before = {k: v.clone() for k, v in pipe.unet.state_dict().items()}
    result = tune_and_edit(pipe, moving_clip(), ["a blue square", "a green circle"], source_prompt="a red square",
                           tune_steps=12, tune_lr=3e-3, num_inference_steps=2, seed=0, progress=False)
    loss_before, loss_after = result.reconstruction_loss
    assert loss_after < 0.9 * loss_before, result.reconstruction_loss
    assert len(result.tune_losses) == 12 and len(result.videos) == 2
    changed = {k for k, v in pipe.unet.state_dict().items() if not torch.equal(v, before[k])}
    assert changed and all("temporal" in k or ".to_q." in k for k in changed), sorted(changed)[:5]
    assert any(".to_q." in k for k in changed) and any("temporal" in k for k in changed)
    assert pipe.unet.cross_frame == "none"  # the model's own mode is back after the edit
    assert all(v.shape == (1, 3, 4, 16, 16) for v in result.videos)


def test_strength_zero_returns_the_input_and_one_is_plain_generation(models):
    pipe = load(models["latent"])
    frames = moving_clip()
    kept = edit_video(pipe, frames, ["a blue circle"], strength=0.0, num_inference_steps=3, seed=5, progress=False)
    round_trip = pipe.decode(pipe.encode_video(frames))
    torch.testing.assert_close(kept.videos[0], round_trip)

    fresh = edit_video(pipe, frames, ["a blue circle"], strength=1.0, num_inference_steps=3, guidance_scale=3.0,
                       seed=5, progress=False)
    plain = pipe("a blue circle", num_frames=4, height=16, width=16, num_inference_steps=3, guidance_scale=3.0,
                 seed=5, scheduler="ddim", cross_frame="first", output_type="pt", progress=False)
    torch.testing.assert_close(fresh.videos[0], plain)

    half = edit_video(pipe, frames, ["a blue circle"], strength=0.5, num_inference_steps=4, guidance_scale=3.0,
                      seed=5, progress=False)
    assert (half.videos[0] - round_trip).abs().mean() < (plain - round_trip).abs().mean()  # nearer the input
    with pytest.raises(ValueError, match="strength"):
        edit_video(pipe, frames, ["x"], strength=1.5, progress=False)


# ---------------------------------------------------------------------------------------------------------------
# Text2Video-Zero
# ---------------------------------------------------------------------------------------------------------------
def centroid(image: torch.Tensor) -> torch.Tensor:
    """(x, y) centre of mass of a non-negative (h, w) map."""
    h, w = image.shape
    ys, xs = torch.meshgrid(torch.arange(h, dtype=torch.float64), torch.arange(w, dtype=torch.float64), indexing="ij")
    mass = image.double().sum()
    return torch.stack([(image * xs).sum() / mass, (image * ys).sum() / mass])


@pytest.mark.parametrize("shift", [(1.5, 0.0), (0.0, -1.0), (-1.0, 0.5)])
def test_motion_field_moves_the_first_frame_by_k_times_the_shift(shift):
    first = torch.zeros(1, 2, 24, 24)
    first[:, :, 9:14, 10:15] = 1.0  # a blob in the middle, away from the borders for 3 frames
    frames = translate_frames(first, 4, shift)
    assert frames.shape == (1, 2, 4, 24, 24)
    torch.testing.assert_close(frames[:, :, 0], first)
    start = centroid(first[0, 0])
    for k in range(1, 4):
        moved = centroid(frames[0, 0, k]) - start
        torch.testing.assert_close(moved, torch.tensor(shift, dtype=torch.float64) * k, atol=1e-4, rtol=0)


def test_zero_shot_generation_warps_frame_zero(models):
    pipe = load(models["latent"])
    seen = {}
    video = zero_shot_generate(pipe, "a red circle", motion_field=(4.0, 0.0), num_frames=3, num_inference_steps=10,
                               seed=2, progress=False, callback=lambda stage, x: seen.setdefault(stage, x.clone()))
    assert video.shape == (1, 3, 3, 16, 16)
    # 10 DDIM steps on 1000: timesteps 901, 801, ...; only 901 is above t' = 881, so frame 0 takes one step alone.
    assert seen["first"].shape == (1, 4, 1, 8, 8)
    expected = translate_frames(seen["first"][:, :, 0], 3, (4.0 / 2, 0.0))  # 4 pixels = 2 latent cells (VAE x2)
    torch.testing.assert_close(seen["warped"], expected)
    torch.testing.assert_close(video, pipe.decode(seen["final"]))
    again = zero_shot_generate(pipe, "a red circle", motion_field=(4.0, 0.0), num_frames=3, num_inference_steps=10,
                               seed=2, progress=False)
    torch.testing.assert_close(video, again)  # the seed decides


def test_generate_zero_shot_cli(models, tmp_path, capsys):
    out = tmp_path / "t2vz.mp4"
    code, stdout, err = cli(capsys, "generate", "--model", models["latent"], "--zero-shot", "--motion-field", "4,-2",
                            "--prompt", "a red circle", "--num-frames", 3, "--steps", 3, "--seed", 1, "--quiet",
                            "--out", out)
    assert code == 0, err
    sidecar = json.loads(out.with_suffix(".json").read_text())
    assert sidecar["zero_shot"] is True and sidecar["motion_field"] == [4.0, -2.0]
    assert sidecar["cross_frame"] == "first"
    from vidiff.data.video_io import read_video

    assert read_video(out).frames.shape == (3, 16, 16, 3)
    code, _, err = cli(capsys, "generate", "--model", models["latent"], "--zero-shot", "--motion-field", "4",
                       "--prompt", "x", "--out", tmp_path / "bad.mp4")
    assert code == 2 and "--motion-field" in err and "dx,dy" in err
    code, _, err = cli(capsys, "generate", "--model", models["latent"], "--motion-field", "4,0", "--prompt", "x",
                       "--out", tmp_path / "bad.mp4")
    assert code == 2 and "--zero-shot" in err


# ---------------------------------------------------------------------------------------------------------------
# vidiff edit
# ---------------------------------------------------------------------------------------------------------------
def test_fit_frames_covers_and_centre_crops():
    frames = np.zeros((2, 20, 40, 3), np.uint8)
    frames[:, :, 10:30] = 255  # the centre half of the width
    out = fit_frames(frames, 16, 16)
    assert out.shape == (2, 16, 16, 3)
    assert out[:, :, 2:14].min() > 200  # the centre survives the crop, the dark sides are mostly cut
    assert np.array_equal(fit_frames(out, 16, 16), out)  # the right size already: unchanged


def test_edit_cli_outputs_frames_size_fps_and_several_prompts(models, tmp_path, capsys):
    video = write_clip(tmp_path / "in.mp4", num_frames=9, fps=10)
    out = tmp_path / "edited.mp4"
    code, stdout, err = cli(capsys, "edit", "--model", models["latent"], "--video", video, "--prompt", "a blue circle",
                            "--prompt", "a green square", "--source-prompt", "a red square", "--num-frames", 4,
                            "--stride", 2, "--start", 1, "--steps", 2, "--seed", 3, "--side-by-side",
                            "--contact-sheet", "--quiet", "--out", out)
    assert code == 0, err
    from vidiff.data.video_io import probe_video, read_video

    for index, prompt in enumerate(["a blue circle", "a green square"]):
        path = tmp_path / f"edited-{index:03d}.mp4"
        clip = read_video(path)
        assert clip.frames.shape == (4, 16, 32, 3) and clip.fps == pytest.approx(5.0)  # side by side: 2 x 16 wide
        sidecar = json.loads(path.with_suffix(".json").read_text())
        assert sidecar["prompt"] == prompt and sidecar["input_frames"] == [1, 3, 5, 7]
        assert sidecar["method"] == "zero-shot" and sidecar["cross_frame"] == "first" and sidecar["seed"] == 3
        assert sidecar["fps"] == 5.0 and sidecar["source_prompt"] == "a red square"
        assert path.with_suffix(".png").is_file()
        # The left half is the input clip as the model saw it.
        source = fit_frames(read_video(video, indices=[1, 3, 5, 7]).frames, 16, 16)
        assert np.abs(clip.frames[:, :, :16].astype(int) - source).mean() < 12  # (mp4 is lossy)
    assert probe_video(tmp_path / "edited-000.mp4").num_frames == 4
    assert stdout.count("wrote") == 2


def test_edit_cli_keeps_ntsc_fps_and_ignores_audio(models, tmp_path, capsys):
    import av

    path = tmp_path / "ntsc.mp4"
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=__import__("fractions").Fraction(30000, 1001))
        stream.width, stream.height, stream.pix_fmt = 32, 32, "yuv420p"
        audio = container.add_stream("aac", rate=44100)
        for k, image in enumerate(moving_clip(5, 32, 32)):
            for packet in stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
        frame = av.AudioFrame.from_ndarray(np.zeros((1, 1024), np.float32), format="fltp", layout="mono")
        frame.sample_rate = 44100
        for packet in list(audio.encode(frame)) + list(audio.encode()):
            container.mux(packet)
    out = tmp_path / "edit.mp4"
    code, _, err = cli(capsys, "edit", "--model", models["latent"], "--video", path, "--prompt", "a cat",
                       "--steps", 2, "--seed", 0, "--quiet", "--out", out)
    assert code == 0, err
    from vidiff.data.video_io import probe_video

    assert probe_video(out).fps == pytest.approx(30000 / 1001, rel=1e-4)


def test_tuned_model_is_saved_and_reused(models, tmp_path, capsys):
    video = write_clip(tmp_path / "in.mp4")
    common = ["--video", video, "--prompt", "a blue circle", "--source-prompt", "a red square", "--num-frames", 4,
              "--steps", 2, "--seed", 4, "--quiet"]
    code, stdout, err = cli(capsys, "edit", "--model", models["latent"], *common, "--method", "tune", "--tune-steps",
                            3, "--tune-lr", 1e-3, "--save-tuned", tmp_path / "tuned", "--out", tmp_path / "first")
    assert code == 0, err
    info = json.loads((tmp_path / "tuned" / "vidiff.json").read_text())
    assert info["defaults"]["cross_frame"] == "sparse-causal" and info["tuned_on"]["tune_steps"] == 3
    sidecar = json.loads((tmp_path / "first.json").read_text())
    assert sidecar["tune_steps"] == 3 and sidecar["reconstruction_loss"][1] < sidecar["reconstruction_loss"][0]
    code, _, err = cli(capsys, "edit", "--tuned", tmp_path / "tuned", *common, "--out", tmp_path / "again")
    assert code == 0, err
    assert json.loads((tmp_path / "again.json").read_text())["method"] == "tune"

    def frames(folder):
        from PIL import Image

        return np.stack([np.asarray(Image.open(p)) for p in sorted(Path(folder).glob("*.png"))])

    first, again = frames(tmp_path / "first"), frames(tmp_path / "again")
    assert first.shape == (4, 16, 16, 3)
    assert np.abs(first.astype(int) - again).max() <= 1  # the saved model is the tuned one (PNG: lossless)


def test_inversion_cache_is_reused_only_for_the_same_clip_model_and_settings(models, tmp_path, capsys, monkeypatch):
    calls = []
    real = editing.ddim_invert
    monkeypatch.setattr(editing, "ddim_invert", lambda *a, **k: calls.append(1) or real(*a, **k))
    video = write_clip(tmp_path / "in.mp4")
    out = tmp_path / "e.mp4"
    args = ["edit", "--model", models["latent"], "--video", video, "--prompt", "a blue circle", "--num-frames", 4,
            "--seed", 0, "--cache-inversion", "--quiet", "--overwrite", "--out", out]
    assert cli(capsys, *args, "--steps", 2)[0] == 0
    assert len(calls) == 1 and (tmp_path / "e.inversion.safetensors").is_file()
    key = json.loads((tmp_path / "e.inversion.json").read_text())
    assert key["steps"] == 2 and key["clip"] and key["model"]["path"] == str(Path(models["latent"]).resolve())
    first = (tmp_path / "e.mp4").read_bytes()
    assert cli(capsys, *args, "--steps", 2)[0] == 0
    assert len(calls) == 1  # reused
    assert json.loads(out.with_suffix(".json").read_text())["inversion"] == "cached"
    assert (tmp_path / "e.mp4").read_bytes() == first
    assert cli(capsys, *args, "--steps", 3)[0] == 0
    assert len(calls) == 2  # other settings: inverted again
    assert cli(capsys, *args, "--steps", 3, "--start", 1)[0] == 0
    assert len(calls) == 3  # another clip
    # A damaged cache is recomputed, never trusted.
    (tmp_path / "e.inversion.safetensors").write_bytes(b"garbage")
    assert cli(capsys, *args, "--steps", 3, "--start", 1)[0] == 0
    assert len(calls) == 4


def test_inversion_cache_needs_both_copies_of_the_key(tmp_path):
    cache = InversionCache.beside(tmp_path / "clip.mp4")
    latents = torch.randn(1, 4, 2, 4, 4)
    cache.save({"a": 1}, latents)
    torch.testing.assert_close(cache.load({"a": 1}), latents)
    assert cache.load({"a": 2}) is None
    cache.key_path.write_text(json.dumps({"a": 2, "format": editing.INVERSION_FORMAT}))  # a crash between writes
    assert cache.load({"a": 2}) is None and cache.loads == 1
    (tmp_path / "user.inversion.json").write_text("{}")
    with pytest.raises(ValueError, match="not a vidiff inversion key"):
        InversionCache.beside(tmp_path / "user.mp4").check_writable()


@pytest.mark.skipif(not (REAL_VIDEOS / "camel.mp4").is_file(), reason="no ../shared/data/videos (fresh clone)")
def test_edit_a_real_clip(models, tmp_path, capsys):
    out = tmp_path / "camel.mp4"
    code, _, err = cli(capsys, "edit", "--model", models["latent"], "--video", REAL_VIDEOS / "camel.mp4",
                       "--prompt", "a dog", "--source-prompt", "a camel", "--num-frames", 8, "--steps", 2,
                       "--seed", 0, "--quiet", "--out", out)
    assert code == 0, err
    from vidiff.data.video_io import read_video

    clip = read_video(out)
    assert clip.frames.shape == (8, 16, 16, 3) and clip.fps == pytest.approx(5.0)
    # car-turn (480 x 480, 10 fps, 80 frames) at stride 10: every second of it.
    code, _, err = cli(capsys, "edit", "--model", models["latent"], "--video", REAL_VIDEOS / "car-turn.mp4",
                       "--prompt", "a jeep", "--num-frames", 4, "--stride", 10, "--strength", 0.5, "--steps", 2,
                       "--seed", 0, "--quiet", "--out", tmp_path / "car.mp4")
    assert code == 0, err
    assert json.loads((tmp_path / "car.json").read_text())["input_frames"] == [0, 10, 20, 30]
    assert read_video(tmp_path / "car.mp4").fps == pytest.approx(1.0)


@pytest.fixture
def no_loading(monkeypatch):
    """Fail the test if a model is loaded: every error must come before."""
    def refuse(*args, **kwargs):
        raise AssertionError("a model was loaded before the error")

    monkeypatch.setattr(VideoPipeline, "from_pretrained", classmethod(refuse))


def test_edit_errors_are_one_line_before_any_model_loads(models, tmp_path, capsys, no_loading):
    video = write_clip(tmp_path / "in.mp4", num_frames=5)
    (tmp_path / "garbage.mp4").write_bytes(b"not a video at all" * 10)
    (tmp_path / "taken.mp4").write_bytes(b"mine")
    (tmp_path / "user-folder").mkdir()
    (tmp_path / "user-folder" / "notes.txt").write_text("mine")
    model = models["latent"]
    base = ["edit", "--model", model, "--prompt", "a cat", "--num-frames", 4]
    cases = [
        (["edit", "--model", model, "--video", video, "--out", tmp_path / "o.mp4"], "no prompt"),
        ([*base, "--video", tmp_path / "missing.mp4", "--out", tmp_path / "o.mp4"], "does not exist"),
        ([*base, "--video", tmp_path, "--out", tmp_path / "o.mp4"], "is a folder"),
        ([*base, "--video", tmp_path / "garbage.mp4", "--out", tmp_path / "o.mp4"], "not readable"),
        ([*base, "--video", video, "--stride", 2, "--out", tmp_path / "o.mp4"], "too short"),
        (["edit", "--model", model, "--prompt", "a cat", "--num-frames", 6, "--video", video, "--out",
          tmp_path / "o.mp4"], "too short"),
        ([*base, "--video", video, "--height", 18, "--out", tmp_path / "o.mp4"], "--height must be a positive multiple of 4"),
        ([*base, "--video", video, "--steps", 0, "--out", tmp_path / "o.mp4"], "--steps"),
        ([*base, "--video", video, "--out", tmp_path / "taken.mp4"], "--overwrite"),
        ([*base, "--video", video, "--out", video], "--out must differ from --video"),
        ([*base, "--video", video, "--strength", 1.5, "--out", tmp_path / "o.mp4"], "--strength"),
        ([*base, "--video", video, "--method", "tune", "--tune-steps", 0, "--out", tmp_path / "o.mp4"], "--tune-steps"),
        ([*base, "--video", video, "--method", "tune", "--tune-lr", -1, "--out", tmp_path / "o.mp4"], "--tune-lr"),
        ([*base, "--video", video, "--save-tuned", tmp_path / "t", "--out", tmp_path / "o.mp4"], "--method tune"),
        ([*base, "--video", video, "--method", "tune", "--save-tuned", tmp_path / "user-folder", "--out",
          tmp_path / "o.mp4"], "--save-tuned"),
        ([*base, "--video", video, "--strength", 0.5, "--cache-inversion", "--out", tmp_path / "o.mp4"], "--strength"),
        ([*base, "--video", video, "--stride", 2, "--fps", 5, "--out", tmp_path / "o.mp4"], "not both"),
        ([*base, "--video", video, "--tuned", model, "--out", tmp_path / "o.mp4"], "not both"),
        (["edit", "--tuned", model, "--method", "zero-shot", "--prompt", "x", "--video", video, "--out",
          tmp_path / "o.mp4"], "--method zero-shot"),
        (["edit", "--model", tmp_path / "nope", "--prompt", "x", "--video", video, "--out", tmp_path / "o.mp4"],
         "does not exist"),
        ([*base, "--video", video, "--out", tmp_path / "o.txt"], "--out"),
    ]
    for argv, expected in cases:
        code, stdout, err = cli(capsys, *argv)
        assert code == 2, (argv, err)
        assert expected in err and len(err.strip().splitlines()) == 1, (expected, err)
        assert "Traceback" not in err
    assert (tmp_path / "taken.mp4").read_bytes() == b"mine"
    assert (tmp_path / "user-folder" / "notes.txt").read_text() == "mine"


def test_edit_without_model_uses_the_demo_base(models, tmp_path, capsys, monkeypatch):
    import vidiff.demo

    video = write_clip(tmp_path / "in.mp4")
    argv = ["edit", "--video", video, "--prompt", "a blue circle", "--source-prompt", "a red camel", "--num-frames", 4,
            "--steps", 2, "--seed", 0, "--quiet", "--out", tmp_path / "e.mp4"]
    monkeypatch.setattr(vidiff.demo, "installed", lambda stage: None)  # an install without the demo models
    code, _, err = cli(capsys, *argv)
    assert code == 2 and "demo model is not installed" in err and "--model DIR" in err
    monkeypatch.setattr(vidiff.demo, "installed", lambda stage: Path(models["latent"]))
    monkeypatch.setattr(vidiff.demo, "model_dir", lambda stage="base": Path(models["latent"]))
    code, _, err = cli(capsys, *argv)
    assert code == 0, err
    assert "using the built-in demo base model" in err and "'camel'" in err  # a word the demo never saw
    assert json.loads((tmp_path / "e.json").read_text())["model"] == str(Path(models["latent"]).resolve())


def test_edit_help_has_an_example(capsys):
    with pytest.raises(SystemExit):
        main(["edit", "--help"])
    assert "vidiff edit --model" in capsys.readouterr().out


def test_edit_defaults_come_from_the_model(models, tmp_path, capsys, monkeypatch):
    """vidiff.json's edit_strength / edit_guidance (the measured best for a model, e.g. the demo base's SDEdit
    0.95 / 1.5) are what `vidiff edit` uses when the flags are unset; flags and --inversion override them."""
    import shutil

    from vidiff.cli import edit as edit_cli
    from vidiff.spec import INFO_NAME

    model = tmp_path / "model"
    shutil.copytree(models["latent"], model)
    info = json.loads((model / INFO_NAME).read_text())
    info["defaults"].update(edit_strength=0.8, edit_guidance=2.5)
    (model / INFO_NAME).write_text(json.dumps(info))
    seen = []

    def record(pipe, frames, prompts, **options):
        seen.append(options)
        raise StopIteration

    monkeypatch.setattr(edit_cli.editing, "edit_video", record)
    video = write_clip(tmp_path / "in.mp4", num_frames=4)
    base = ["edit", "--model", model, "--video", video, "--prompt", "a blue circle", "--num-frames", 2, "--steps", 2,
            "--quiet"]
    for n, extra in enumerate([[], ["--strength", "0.5", "--guidance", "1.0"], ["--inversion"]]):
        with pytest.raises(StopIteration):
            main([str(a) for a in base + ["--out", tmp_path / f"out{n}.mp4"] + extra])
    assert [(o["strength"], o["guidance_scale"]) for o in seen] == [(0.8, 2.5), (0.5, 1.0), (None, 2.5)]
    code, _, err = cli(capsys, *base, "--inversion", "--strength", "0.5", "--out", tmp_path / "x.mp4")
    assert code == 2 and "--inversion and --strength" in err
    info["defaults"]["edit_strength"] = 1.5
    (model / INFO_NAME).write_text(json.dumps(info))
    code, _, err = cli(capsys, *base, "--out", tmp_path / "y.mp4")
    assert code == 2 and "edit_strength must be in [0, 1]" in err
