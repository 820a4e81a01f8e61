"""VideoPipeline on a tiny random model: against diffusers' StableDiffusionPipeline, hand-written sampling loops,
and its own invariants (seeds, guidance, windows, chunked decoding, schedulers, pixel-space models)."""
from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from vidiff import VideoPipeline
from vidiff.pipelines.schedulers import SCHEDULERS, make_scheduler
from vidiff.pipelines.text_to_video import reschedule_noise, temporal_windows, window_weights
from vidiff.testing import make_tiny_sd_pipeline, make_tiny_video_pipeline
from vidiff.spec import PipelineInfo, resolve_sampling

PROMPT = "a red circle moving right"


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("pipe")
    sd = make_tiny_sd_pipeline(root / "sd", seed=0)
    video = make_tiny_video_pipeline(root / "video", seed=0)
    return sd, video


@pytest.fixture(scope="module")
def pipe(folders):
    return VideoPipeline.from_pretrained(folders[1], device="cpu")


def noise(shape, seed=0):
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed))


def test_matches_diffusers_sd_pipeline_frame_by_frame(folders, pipe):
    """An inflated model (temporal layers = identity) samples each frame exactly as SD samples an image: text
    encoding, CFG with a negative prompt, DDIM, latent scaling and VAE decoding all match diffusers."""
    from diffusers import StableDiffusionPipeline

    sd = StableDiffusionPipeline.from_pretrained(str(folders[0]), safety_checker=None, requires_safety_checker=False)
    sd.set_progress_bar_config(disable=True)
    latents = noise((1, 4, 3, 8, 8))
    ours = pipe(PROMPT, num_frames=3, height=16, width=16, num_inference_steps=3, guidance_scale=5.0,
                negative_prompt="blue square", latents=latents, output_type="pt", progress=False)
    images = sd(PROMPT, height=16, width=16, num_inference_steps=3, guidance_scale=5.0, negative_prompt="blue square",
                num_images_per_prompt=3, latents=latents[0].transpose(0, 1), output_type="pt").images  # (f, 3, h, w) in [0, 1]
    reference = images.permute(1, 0, 2, 3) * 2 - 1
    torch.testing.assert_close(ours[0], reference, atol=2e-4, rtol=0)


def reference_loop(pipe, latents, steps, guidance, prompt=PROMPT):
    """DDIM with classifier-free guidance written out by hand, on the whole clip (no windows)."""
    scheduler = make_scheduler("ddim", pipe.scheduler_config)
    scheduler.set_timesteps(steps)
    cond = pipe.encode_prompt([prompt])
    uncond = pipe.encode_prompt([""])
    x = latents.clone()
    with torch.no_grad():
        for t in scheduler.timesteps:
            eps_c = pipe.unet(x, t, cond)
            if guidance == 1.0:  # the conditional-only path: no unconditional pass at all
                eps = eps_c
            else:
                eps_u = pipe.unet(x, t, uncond)
                eps = eps_u + guidance * (eps_c - eps_u)
            x = scheduler.step(eps, t, x).prev_sample
    return x


@pytest.mark.parametrize("guidance", [1.0, 3.0])
def test_guidance_matches_hand_written_loop(pipe, guidance):
    latents = noise((1, 4, 4, 8, 8), seed=1)
    ours = pipe(PROMPT, num_inference_steps=2, guidance_scale=guidance, latents=latents, output_type="latent",
                progress=False)
    torch.testing.assert_close(ours, reference_loop(pipe, latents, 2, guidance), atol=1e-5, rtol=0)


def test_guidance_changes_output(pipe):
    latents = noise((1, 4, 4, 8, 8), seed=1)
    a = pipe(PROMPT, num_inference_steps=2, guidance_scale=1.0, latents=latents, output_type="latent", progress=False)
    b = pipe(PROMPT, num_inference_steps=2, guidance_scale=3.0, latents=latents, output_type="latent", progress=False)
    c = pipe(PROMPT, num_inference_steps=2, guidance_scale=3.0, latents=latents, output_type="latent", progress=False,
             negative_prompt="blue square")
    assert (a - b).abs().max() > 1e-3 and (b - c).abs().max() > 1e-3


def test_seed_determinism_and_one_generator_per_video(pipe):
    a = pipe(PROMPT, num_inference_steps=2, seed=7, progress=False)
    b = pipe(PROMPT, num_inference_steps=2, seed=7, progress=False)
    c = pipe(PROMPT, num_inference_steps=2, seed=8, progress=False)
    assert a.dtype == np.uint8 and a.shape == (4, 16, 16, 3)
    np.testing.assert_array_equal(a, b)
    assert np.abs(a.astype(int) - c).max() > 0
    # A batch of two videos with seed 7: video i is the clip seed 7 + i gives alone (up to batched float rounding).
    batch = pipe(PROMPT, num_inference_steps=2, seed=7, num_videos_per_prompt=2, output_type="latent", progress=False)
    alone = pipe(PROMPT, num_inference_steps=2, seed=8, output_type="latent", progress=False)
    torch.testing.assert_close(batch[1:], alone, atol=1e-4, rtol=0)
    # Explicit generators: the same as seeds.
    gens = [torch.Generator().manual_seed(7)]
    np.testing.assert_array_equal(pipe(PROMPT, num_inference_steps=2, generator=gens, progress=False), a)


def test_batch_of_prompts_returns_list(pipe):
    videos = pipe([PROMPT, "blue square"], num_frames=2, num_inference_steps=1, num_videos_per_prompt=2, seed=0,
                  progress=False)
    assert isinstance(videos, list) and len(videos) == 4
    assert all(v.shape == (2, 16, 16, 3) and v.dtype == np.uint8 for v in videos)


def test_chunked_vae_decoding_equals_unchunked_and_diffusers(pipe):
    latents = noise((2, 4, 5, 8, 8), seed=2)
    full = pipe.decode(latents, chunk_size=None)
    for chunk in (1, 3, 8):
        torch.testing.assert_close(pipe.decode(latents, chunk_size=chunk), full, atol=1e-5, rtol=0)
    # Reference: diffusers' VAE on every frame of video 1, latents divided by the scaling factor.
    with torch.no_grad():
        frames = pipe.vae.decode(latents[1].transpose(0, 1) / pipe.vae.config.scaling_factor).sample
    torch.testing.assert_close(full[1], frames.transpose(0, 1).clamp(-1, 1), atol=1e-5, rtol=0)


def test_temporal_windows_cover_clip():
    assert temporal_windows(4, 16, 8) == [(0, 4)]
    assert temporal_windows(40, 16, 8) == [(0, 16), (8, 24), (16, 32), (24, 40)]
    assert temporal_windows(64, 16, 4)[-1] == (48, 64)
    assert temporal_windows(21, 8, 6) == [(0, 8), (6, 14), (12, 20), (13, 21)]
    with pytest.raises(ValueError, match="window_stride"):  # a request's windows are checked with its settings
        resolve_sampling(PipelineInfo(), num_frames=20, window_size=4, window_stride=5)
    w = window_weights(4)
    assert torch.equal(w, w.flip(0)) and w.min() > 0


def test_long_video_windows_match_hand_written_co_denoising(pipe):
    """10 frames from a 4-frame model: each step averages the windows' predictions with tent weights."""
    latents = noise((1, 4, 10, 8, 8), seed=3)
    ours = pipe(PROMPT, num_frames=10, num_inference_steps=1, guidance_scale=1.0, latents=latents,
                window_size=4, window_stride=2, output_type="latent", progress=False)
    scheduler = make_scheduler("ddim", pipe.scheduler_config)
    scheduler.set_timesteps(1)
    t = scheduler.timesteps[0]
    text = pipe.encode_prompt([PROMPT])
    total, weight = torch.zeros_like(latents), torch.zeros(10)
    tent = torch.tensor([1.0, 2.0, 2.0, 1.0])  # any scale: it cancels in the average
    with torch.no_grad():
        for start in (0, 2, 4, 6):
            total[:, :, start:start + 4] += pipe.unet(latents[:, :, start:start + 4], t, text) * tent.view(1, 1, 4, 1, 1)
            weight[start:start + 4] += tent
    expected = scheduler.step(total / weight.view(1, 1, -1, 1, 1), t, latents).prev_sample
    torch.testing.assert_close(ours, expected, atol=1e-5, rtol=0)


def test_long_video_has_no_seams(folders):
    """With temporal layers that mix frames (perturbed from their identity init) and the same noise on every
    frame, overlapping windows give a clip whose frame-to-frame change is even along it; back-to-back windows
    (stride = window) show the seam this guards against."""
    pipe = VideoPipeline.from_pretrained(folders[1], device="cpu")
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, p in pipe.unet.named_parameters():
            if ".temporal_" in name:
                p.add_(torch.randn(p.shape, generator=gen) * 0.3)
    f, window = 12, 4
    latents = noise((1, 4, 1, 8, 8), seed=4).repeat(1, 1, f, 1, 1)

    def unevenness(stride):
        video = pipe(PROMPT, num_frames=f, latents=latents, window_size=window, window_stride=stride,
                     guidance_scale=1.0, num_inference_steps=2, output_type="pt", progress=False)
        assert video.shape == (1, 3, f, 16, 16)
        change = (video[0, :, 1:] - video[0, :, :-1]).abs().mean(dim=(0, 2, 3))   # (f - 1,)
        interior = change[window:-window]  # away from the clip's ends, where only one window covers a frame
        return (interior.max() / interior.min()).item()

    assert unevenness(stride=2) < 1.05
    assert unevenness(stride=4) > 1.15  # the check can fail: a seam every 4 frames


def test_freenoise_rescheduling_reuses_earlier_noise():
    x = noise((4, 11, 3, 3))
    y = reschedule_noise(x, window_size=4, stride=2, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(y[:, :4], x[:, :4], atol=0, rtol=0)
    first_window = {tuple(x[:, i].flatten().tolist()) for i in range(4)}
    for start in range(4, 11, 2):  # each segment is a permutation of the segment one window earlier
        segment = {tuple(y[:, i].flatten().tolist()) for i in range(start, min(start + 2, 11))}
        earlier = {tuple(y[:, i].flatten().tolist()) for i in range(start - 4, start - 4 + len(segment))}
        assert segment == earlier and segment <= first_window


def test_64_frames_from_16_frame_model_in_one_call(folders):
    # Cheap stand-in for "64 from 16": the tiny model's window is 4; 16 frames = 4 x the window, one call.
    pipe = VideoPipeline.from_pretrained(folders[1], device="cpu")
    video = pipe(PROMPT, num_frames=16, num_inference_steps=1, guidance_scale=1.0, seed=0, window_stride=4,
                 long_video_noise="freenoise", progress=False)
    assert video.shape == (16, 16, 16, 3)


@pytest.mark.parametrize("name", list(SCHEDULERS))
def test_every_scheduler_runs_two_steps(pipe, name):
    a = pipe(PROMPT, num_frames=2, num_inference_steps=2, scheduler=name, seed=0, output_type="latent", progress=False)
    b = pipe(PROMPT, num_frames=2, num_inference_steps=2, scheduler=name, seed=0, output_type="latent", progress=False)
    assert a.shape == (1, 4, 2, 8, 8) and torch.isfinite(a).all()
    torch.testing.assert_close(a, b, atol=0, rtol=0)  # stochastic samplers too: their noise comes from the seed


def test_ddim_eta_draws_noise_from_the_seed(pipe):
    a = pipe(PROMPT, num_frames=2, num_inference_steps=2, eta=1.0, seed=0, output_type="latent", progress=False)
    b = pipe(PROMPT, num_frames=2, num_inference_steps=2, eta=0.0, seed=0, output_type="latent", progress=False)
    assert (a - b).abs().max() > 1e-3


def test_unknown_scheduler_lists_the_names(pipe):
    with pytest.raises(ValueError, match="dpm-solver\\+\\+, euler"):
        pipe(PROMPT, scheduler="heun")


@pytest.mark.parametrize("kwargs, match", [
    ({"height": 18}, "multiple of 4"), ({"num_frames": 0}, "num_frames"), ({"num_inference_steps": 0}, "num_inference"),
    ({"cross_frame": "all"}, "cross_frame must be one of none, first, sparse-causal, got 'all'"),
    ({"output_type": "pil"}, "output_type"),
    # Found in QA: these failed deep inside torch / diffusers (TypeError, IndexError) or after the text encoding,
    # or were silently replaced by the defaults (window 0), or ran on (NaN guidance / eta).
    ({"height": 16.0}, "height must be an integer"), ({"num_inference_steps": 2.5}, "num_inference_steps must be"),
    ({"num_frames": True}, "num_frames must be an integer"), ({"num_inference_steps": 999}, "between 1 and 998"),
    ({"guidance_scale": float("nan")}, "guidance_scale"), ({"eta": -1.0}, "eta"), ({"eta": float("nan")}, "eta"),
    ({"window_size": 0}, "window_size"), ({"window_stride": 0}, "window_stride"),
    ({"prompt": None}, "prompt must be a string"), ({"prompt": [PROMPT, 3]}, "prompt must be a string"),
])
def test_bad_arguments(pipe, kwargs, match):
    kwargs = {"prompt": PROMPT, **kwargs}
    with pytest.raises(ValueError, match=match):
        pipe(kwargs.pop("prompt"), progress=False, **kwargs)


@pytest.mark.parametrize("damage", ["text_encoder-weights", "vae-config", "tokenizer-vocab", "no-text_encoder"])
def test_damaged_folder_is_one_clear_error(folders, tmp_path, damage):
    """Found in QA: a damaged component gave a transformers / diffusers traceback, and a tokenizer folder without
    its vocabulary loaded silently as an empty tokenizer (every word an unknown token)."""
    import shutil

    folder = Path(shutil.copytree(folders[1], tmp_path / "video"))
    if damage == "text_encoder-weights":
        (folder / "text_encoder" / "model.safetensors").unlink()
    elif damage == "vae-config":
        (folder / "vae" / "config.json").write_text('{"_class_name": "AutoencoderKL", "block_')
    elif damage == "tokenizer-vocab":
        for name in ("tokenizer.json", "vocab.json", "merges.txt"):
            (folder / "tokenizer" / name).unlink(missing_ok=True)
    else:
        shutil.rmtree(folder / "text_encoder")
    with pytest.raises((ValueError, FileNotFoundError)) as info:
        VideoPipeline.from_pretrained(folder, device="cpu")
    message = str(info.value)
    assert "\n" not in message and ("vidiff inflate" in message) and damage.split("-")[0] in message


def test_cross_frame_override_is_temporary(pipe):
    latents = noise((1, 4, 3, 8, 8), seed=5)
    kwargs = dict(num_frames=3, num_inference_steps=1, latents=latents, output_type="latent", progress=False)
    none = pipe(PROMPT, **kwargs)
    first = pipe(PROMPT, cross_frame="first", **kwargs)
    assert pipe.unet.cross_frame == "none"
    torch.testing.assert_close(first[:, :, 0], none[:, :, 0], atol=1e-5, rtol=0)  # frame 0 attends to itself
    assert (first[:, :, 1:] - none[:, :, 1:]).abs().max() > 1e-4
    torch.testing.assert_close(pipe(PROMPT, **kwargs), none, atol=0, rtol=0)


def test_long_prompt_is_truncated_with_warning(pipe):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        long_embedding = pipe.encode_prompt([" ".join(["red circle"] * 60) + " ocean"])
    assert any("dropped" in str(w.message) and "ocean" in str(w.message) for w in caught)
    assert long_embedding.shape == (1, 77, 32)


def test_pixel_space_model_runs(tmp_path):
    folder = make_tiny_video_pipeline(tmp_path / "pixel", vae=False, defaults={"height": 8, "width": 8})
    assert not (folder / "vae").exists()
    pipe = VideoPipeline.from_pretrained(folder, device="cpu")
    assert pipe.spatial_factor == 2 and not pipe.latent
    video = pipe(PROMPT, num_frames=3, num_inference_steps=2, seed=0, progress=False)
    assert video.shape == (3, 8, 8, 3) and video.dtype == np.uint8
    latents = pipe(PROMPT, num_frames=3, num_inference_steps=2, seed=0, output_type="latent", progress=False)
    expected = ((latents[0].clamp(-1, 1) + 1) * 127.5).round().permute(1, 2, 3, 0).to(torch.uint8).numpy()
    np.testing.assert_array_equal(video, expected)  # the pixels are the sample itself


def test_save_pretrained_round_trip(pipe, tmp_path):
    pipe.save_pretrained(tmp_path / "copy")
    again = VideoPipeline.from_pretrained(tmp_path / "copy", device="cpu")
    kwargs = dict(num_frames=2, num_inference_steps=1, seed=0, progress=False)
    np.testing.assert_array_equal(again(PROMPT, **kwargs), pipe(PROMPT, **kwargs))
    assert again.info == pipe.info


@pytest.mark.parametrize("name", list(SCHEDULERS))
def test_max_inference_steps_is_the_most_every_sampler_handles(pipe, name):
    """Found in QA: `--steps 1000` on SD's schedule (steps_offset 1) sampled to the end and then failed with an
    IndexError (timestep 1000), and 999 DPM-Solver++ / UniPC steps gave NaN; the bound `max_inference_steps` is
    checked up front, and must itself work for every sampler."""
    from vidiff.spec import max_inference_steps

    limit = max_inference_steps(pipe.scheduler_config)
    assert limit == 998
    if name == "lcm":  # (consistency sampling: a subset of its 50-step grid, resolve_sampling's bound for it)
        limit = 50
    scheduler = pipe.make_scheduler(name)
    scheduler.set_timesteps(limit)
    x = torch.zeros(1, 4, 1, 2, 2)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for t in scheduler.timesteps:
            x = scheduler.step(torch.zeros_like(x), t, scheduler.scale_model_input(x, t)).prev_sample
    assert torch.isfinite(x).all()


@pytest.mark.parametrize("name", ["dpm-solver++", "unipc"])
@pytest.mark.parametrize("steps", [25, 200])
def test_multistep_solvers_start_at_the_noisiest_timestep(pipe, name, steps):
    """Found in QA: with SD's "leading" timestep spacing, diffusers' DPM-Solver++ / UniPC started at t = 951 for 25
    steps and t = 801 for 200 steps (T // (n + 1) spacing), so more steps left more noise in the clip."""
    scheduler = pipe.make_scheduler(name)
    scheduler.set_timesteps(steps)
    assert int(scheduler.timesteps[0]) == pipe.scheduler_config["num_train_timesteps"] - 1
    assert len(scheduler.timesteps) == steps and len(set(scheduler.timesteps.tolist())) == steps


def test_save_pretrained_never_replaces_a_folder_of_other_files(pipe, tmp_path):
    """Found in QA: save_pretrained / inflate_pipeline replaced whatever folder they were given, deleting it."""
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep me")
    with pytest.raises(FileExistsError, match="not a vidiff pipeline folder"):
        pipe.save_pretrained(tmp_path / "mine")
    assert (tmp_path / "mine" / "notes.txt").read_text() == "keep me"
    pipe.save_pretrained(tmp_path / "video")
    pipe.save_pretrained(tmp_path / "video")  # an earlier pipeline folder is replaced
    assert (tmp_path / "video" / "vidiff.json").is_file()


# ---------------------------------------------------------------------------------------------------------------
# The public steps: encode_video, denoise from any timestep, class labels and condition channels
# ---------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["ddim", "euler"])
def test_denoise_from_an_intermediate_timestep_is_the_tail_of_a_full_run(pipe, name):
    """SDEdit / cascade noise augmentation start mid-schedule: given the latents a full run had after step k,
    `denoise` over `timesteps_for_strength`'s tail ends exactly where the full run ended."""
    from vidiff.pipelines.text_to_video import timesteps_for_strength

    steps, k = 4, 2
    seen = []
    full = pipe(PROMPT, num_inference_steps=steps, guidance_scale=3.0, scheduler=name, seed=3, output_type="latent",
                progress=False, callback=lambda i, t, x: seen.append(x.clone()))
    scheduler = pipe.make_scheduler(name)
    timesteps = timesteps_for_strength(scheduler, steps, (steps - k) / steps)
    reference = pipe.make_scheduler(name)
    reference.set_timesteps(steps)
    assert torch.equal(timesteps, reference.timesteps[k:])
    text, negative = pipe.encode_prompt([PROMPT], [""])
    tail = pipe.denoise(seen[k - 1], text, timesteps, guidance_scale=3.0, negative_embeddings=negative,
                        scheduler=scheduler, progress=False)
    torch.testing.assert_close(tail, full, atol=1e-6, rtol=0)
    # The default negative embedding is the empty prompt's.
    scheduler = pipe.make_scheduler(name)
    again = pipe.denoise(seen[k - 1], text, timesteps_for_strength(scheduler, steps, 0.5), guidance_scale=3.0,
                         scheduler=scheduler, progress=False)
    torch.testing.assert_close(again, full, atol=1e-6, rtol=0)


def test_timesteps_for_strength_bounds():
    from vidiff.pipelines.text_to_video import timesteps_for_strength
    from vidiff.testing import SD_SCHEDULER

    scheduler = make_scheduler("ddim", SD_SCHEDULER)
    assert len(timesteps_for_strength(scheduler, 10, 1.0)) == 10
    assert len(timesteps_for_strength(scheduler, 10, 0.01)) == 1  # at least one step
    assert len(timesteps_for_strength(scheduler, 10, 0.3)) == 3
    for bad in (0, -0.5, 1.5, float("nan")):
        with pytest.raises(ValueError, match="strength must be in"):
            timesteps_for_strength(scheduler, 10, bad)


def hand_written_step(unet, scheduler, x, t, text, uncond, guidance, condition=None, class_labels=None):
    """One CFG step written out, with the condition concatenated along channels and the labels passed on."""
    def eps(context):
        model_input = x if condition is None else torch.cat([x, condition], dim=1)
        return unet(model_input, t, context, class_labels=class_labels)
    e_c, e_u = eps(text), eps(uncond)
    return e_u + guidance * (e_c - e_u)


def test_class_labels_reach_the_unet(tmp_path):
    folder = make_tiny_video_pipeline(tmp_path / "labels", unet_kwargs={"num_class_embeds": 5})
    pipe = VideoPipeline.from_pretrained(folder, device="cpu")
    latents = noise((1, 4, 2, 8, 8), seed=6)
    kwargs = dict(num_frames=2, num_inference_steps=2, guidance_scale=2.0, latents=latents, output_type="latent",
                  progress=False)
    with pytest.raises(ValueError, match="class_labels"):
        pipe(PROMPT, **kwargs)
    ours = pipe(PROMPT, class_labels=3, **kwargs)
    scheduler = make_scheduler("ddim", pipe.scheduler_config)
    scheduler.set_timesteps(2)
    text, uncond = pipe.encode_prompt([PROMPT]), pipe.encode_prompt([""])
    x = latents.clone()
    with torch.no_grad():
        for t in scheduler.timesteps:
            eps = hand_written_step(pipe.unet, scheduler, x, t, text, uncond, 2.0, class_labels=torch.tensor([3]))
            x = scheduler.step(eps, t, x).prev_sample
    torch.testing.assert_close(ours, x, atol=1e-5, rtol=0)
    assert (pipe(PROMPT, class_labels=[4], **kwargs) - ours).abs().max() > 1e-3


def test_condition_channels_reach_the_unet_in_every_window(folders, pipe):
    """A U-Net with 2 conditioning channels (their conv_in weights made non-zero, as after training): denoise
    concatenates the condition, windowed with the latents, at every step."""
    from vidiff.models.unet import VideoUNet

    torch.manual_seed(0)
    unet = VideoUNet.from_2d(folders[0], "unet", conditioning_channels=2).eval()
    with torch.no_grad():
        unet.conv_in.weight[:, 4:] = torch.randn_like(unet.conv_in.weight[:, 4:]) * 0.3
    cond_pipe = VideoPipeline(unet, pipe.text_encoder, pipe.tokenizer, pipe.scheduler_config, vae=pipe.vae)
    f = 6
    latents, condition = noise((1, 4, f, 8, 8), seed=7), noise((1, 2, f, 8, 8), seed=8)
    with pytest.raises(ValueError, match="2 conditioning channels"):
        cond_pipe(PROMPT, num_frames=f, latents=latents, progress=False)
    with pytest.raises(ValueError, match=r"condition must have shape \(1, 2, 6, 8, 8\)"):
        cond_pipe(PROMPT, num_frames=f, latents=latents, condition=condition[:, :1], progress=False)
    ours = cond_pipe(PROMPT, num_frames=f, num_inference_steps=1, guidance_scale=2.0, latents=latents,
                     condition=condition, window_size=4, window_stride=2, output_type="latent", progress=False)
    scheduler = make_scheduler("ddim", pipe.scheduler_config)
    scheduler.set_timesteps(1)
    t = scheduler.timesteps[0]
    text, uncond = pipe.encode_prompt([PROMPT]), pipe.encode_prompt([""])
    total, weight = torch.zeros_like(latents), torch.zeros(f)
    tent = torch.tensor([1.0, 2.0, 2.0, 1.0])
    with torch.no_grad():
        for start in (0, 2):
            window = slice(start, start + 4)
            eps = hand_written_step(unet, scheduler, latents[:, :, window], t, text, uncond, 2.0,
                                    condition=condition[:, :, window])
            total[:, :, window] += eps * tent.view(1, 1, 4, 1, 1)
            weight[window] += tent
    expected = scheduler.step(total / weight.view(1, 1, -1, 1, 1), t, latents).prev_sample
    torch.testing.assert_close(ours, expected, atol=1e-5, rtol=0)
    other = cond_pipe(PROMPT, num_frames=f, num_inference_steps=1, guidance_scale=2.0, latents=latents,
                      condition=condition.flip(2), window_size=4, window_stride=2, output_type="latent",
                      progress=False)
    assert (other - ours).abs().max() > 1e-3


def test_encode_video_is_the_vae_posterior_mean_per_frame(pipe):
    frames = torch.rand(2, 3, 5, 16, 16, generator=torch.Generator().manual_seed(9)) * 2 - 1
    latents = pipe.encode_video(frames, chunk_size=2)
    assert latents.shape == (2, 4, 5, 8, 8) and latents.dtype == torch.float32
    with torch.no_grad():
        reference = pipe.vae.encode(frames[1].transpose(0, 1)).latent_dist.mean * pipe.vae.config.scaling_factor
    torch.testing.assert_close(latents[1], reference.transpose(0, 1), atol=1e-5, rtol=0)
    torch.testing.assert_close(pipe.encode_video(frames, chunk_size=None), latents, atol=1e-5, rtol=0)
    # One uint8 video (f, h, w, 3), as video_io reads it, encodes as its [-1, 1] floats.
    video = ((frames[0] + 1) * 127.5).round().to(torch.uint8).permute(1, 2, 3, 0).numpy()
    as_float = torch.from_numpy(video).permute(3, 0, 1, 2)[None].float() / 127.5 - 1
    torch.testing.assert_close(pipe.encode_video(video), pipe.encode_video(as_float), atol=0, rtol=0)
    with pytest.raises(ValueError, match="multiples of the VAE's factor 2"):
        pipe.encode_video(frames[:, :, :, :15])


class _Planted:
    """A pickle that would create a file when unpickled with full pickle (the attack torch.load(weights_only=False)
    lets through)."""

    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (Path(self.marker),))


def _damage(folder: Path, case: str, marker: Path) -> Path:
    """Damage one file of a pipeline folder as `case` says; returns the file that is now damaged."""
    import pickle

    component, kind = case.split(":")
    target = folder / component
    if kind == "truncated":
        file = next(target.glob("*.safetensors"))
        file.write_bytes(file.read_bytes()[: file.stat().st_size // 2])
    elif kind == "pickle":  # only a code-running .bin left where the safetensors weights were
        weights = next(target.glob("*.safetensors"))
        weights.unlink()
        file = target / ("pytorch_model.bin" if component == "text_encoder" else "diffusion_pytorch_model.bin")
        file.write_bytes(pickle.dumps({"weight": _Planted(str(marker))}, protocol=2))
    else:  # garbage JSON
        file = target / kind
        file.write_text('{"_class_name": "Auto')
    return file


DAMAGE = ["text_encoder:truncated", "text_encoder:pickle", "text_encoder:config.json", "vae:truncated", "vae:pickle",
          "vae:config.json", "unet:truncated", "unet:config.json", "tokenizer:tokenizer.json",
          "tokenizer:tokenizer_config.json", "scheduler:scheduler_config.json"]


@pytest.mark.parametrize("case", DAMAGE)
def test_a_damaged_or_unsafe_file_is_one_line_naming_it(folders, tmp_path, capsys, case):
    """Issue 8: a truncated safetensors, a pickle .bin or garbage JSON in a component folder ended in a raw
    SafetensorError / UnpicklingError / JSONDecodeError traceback. Now: one line naming the file, from the Python
    API (a ValueError / FileNotFoundError) and from `vidiff generate` (exit 2), and a planted pickle never runs."""
    import shutil

    from vidiff.cli import main

    folder = Path(shutil.copytree(folders[1], tmp_path / "video"))
    marker = tmp_path / "pickle-ran"
    damaged = _damage(folder, case, marker)
    with pytest.raises((ValueError, FileNotFoundError)) as info:
        VideoPipeline.from_pretrained(folder, device="cpu")
    message = str(info.value)
    assert "\n" not in message and str(damaged) in message, message
    capsys.readouterr()  # what the API call's weight loading drew (transformers' bars are on outside the CLI)
    code = main(["generate", "--model", str(folder), "--prompt", PROMPT, "--steps", "1", "--device", "cpu",
                 "--out", str(tmp_path / "clip.mp4")])
    err = capsys.readouterr().err
    assert code == 2 and len(err.strip().splitlines()) == 1 and str(damaged) in err and "Traceback" not in err
    assert not marker.exists() and not (tmp_path / "clip.mp4").exists()


@pytest.mark.parametrize("device, cuda, count, match", [
    ("cuda", False, 0, r"device 'cuda' asked for, but no CUDA device is available.*use 'cpu'"),
    ("cuda:3", True, 2, r"device 'cuda:3': there are 2 CUDA devices \(cuda:0 .. cuda:1\)"),
    ("tpu", False, 0, r"unknown device 'tpu'; use cuda, cuda:N, mps or cpu"),
])
def test_unavailable_device_is_a_clear_error_before_loading(folders, monkeypatch, device, cuda, count, match):
    """Issue 8: from_pretrained(device="cuda") on a CPU build loaded the whole model, then raised torch's
    AssertionError ("Torch not compiled with CUDA enabled")."""
    from vidiff.models.unet import VideoUNet

    monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: count)

    def no_loading(*args, **kwargs):
        raise AssertionError("loaded the model before checking the device")

    monkeypatch.setattr(VideoUNet, "from_pretrained", no_loading)
    with pytest.raises(ValueError, match=match):
        VideoPipeline.from_pretrained(folders[1], device=device)
    with pytest.raises(ValueError, match="unknown dtype 'fp8'"):
        VideoPipeline.from_pretrained(folders[1], device="cpu", dtype="fp8")
