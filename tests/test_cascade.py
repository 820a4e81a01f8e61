"""Cascade stages on tiny models (CPU): condition builders, fresh stages, x4 upscaler route, training, sampling."""
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from vidiff.stages import make_stage, stage_options
from vidiff.stages.conditions import (AUGMENTATION_SCHEDULE, keyframe_mask, masked_video_condition, noise_augment,
                                      prefix_mask, repeat_frames, sample_frame_masks, ssr_condition, suffix_mask,
                                      tsr_condition)

REPO = Path(__file__).resolve().parents[1]
TINY = REPO / "configs" / "train" / "tiny.yaml"
UNET_WEIGHTS = "unet/diffusion_pytorch_model.safetensors"


pytestmark = pytest.mark.usefixtures("one_thread")  # (tests/conftest.py)


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    """A tiny latent SD pipeline, a tiny pixel-space one, their inflated base folders, a shapes dataset."""
    from vidiff.data.synthetic import write_shapes_dataset
    from vidiff.models.folder import inflate_pipeline
    from vidiff.testing import make_tiny_sd_pipeline

    root = tmp_path_factory.mktemp("cascade-assets")
    sd = make_tiny_sd_pipeline(root / "sd")
    pixel = make_tiny_sd_pipeline(root / "pixel", vae=False)
    inflate_pipeline(sd, root / "base")
    inflate_pipeline(pixel, root / "pixel-base")
    write_shapes_dataset(root / "shapes", 4, num_frames=4, size=20, seed=0)
    return {"root": root, "sd": sd, "pixel": pixel, "base": root / "base", "pixel_base": root / "pixel-base",
            "shapes": root / "shapes"}


# ---------------------------------------------------------------------------------------------------------------
# condition builders
# ---------------------------------------------------------------------------------------------------------------
def test_frame_masks():
    assert keyframe_mask(9, 4).tolist() == [1, 0, 0, 0, 1, 0, 0, 0, 1]
    assert keyframe_mask(8, 3, phase=1).tolist() == [0, 1, 0, 0, 1, 0, 0, 1]
    assert prefix_mask(5, 2).tolist() == [1, 1, 0, 0, 0]
    assert suffix_mask(5, 2).tolist() == [0, 0, 0, 1, 1]

    # Random training masks: one per video, each one of the three kinds, drawn from the generator alone.
    masks = sample_frame_masks(400, 8, factors=[2, 4], modes=["interpolate", "future", "past"],
                               generator=torch.Generator().manual_seed(0))
    again = sample_frame_masks(400, 8, factors=[2, 4], modes=["interpolate", "future", "past"],
                               generator=torch.Generator().manual_seed(0))
    assert masks.shape == (400, 8) and torch.equal(masks, again)
    allowed = {tuple(keyframe_mask(8, k, p).tolist()): "interpolate" for k in (2, 4) for p in range(k)}
    allowed.update({tuple(prefix_mask(8, n).tolist()): "future" for n in range(1, 8)})
    allowed.update({tuple(suffix_mask(8, n).tolist()): "past" for n in range(1, 8)})
    kinds = [allowed.get(tuple(m.tolist())) for m in masks]
    assert None not in kinds, "a mask of no allowed kind"
    assert {kinds.count(k) for k in ("interpolate", "future", "past")} <= set(range(100, 170))  # ~1/3 each
    assert len({tuple(m.tolist()) for m in masks}) == len(allowed)  # every phase, factor and count occurs
    only = sample_frame_masks(50, 8, factors=[4], modes=["interpolate"], generator=torch.Generator().manual_seed(1))
    assert {tuple(m.tolist()) for m in only} == {tuple(keyframe_mask(8, 4, p).tolist()) for p in range(4)}


def test_interpolation_condition_keeps_exactly_the_known_frames():
    latents = torch.randn(2, 4, 6, 3, 5)
    mask = torch.stack([keyframe_mask(6, 2), prefix_mask(6, 1)])
    cond = masked_video_condition(latents, mask)
    assert cond.shape == (2, 5, 6, 3, 5)
    for b in range(2):
        for f in range(6):
            known = bool(mask[b, f])
            assert torch.equal(cond[b, :4, f], latents[b, :, f] if known else torch.zeros(4, 3, 5))
            assert torch.equal(cond[b, 4, f], torch.full((3, 5), float(known)))

    stage = make_stage("interpolation", latent_channels=4, mask_factors=[2], mask_modes=["interpolate"])
    assert stage.conditioning_channels == 5
    cond, kwargs = stage.condition(latents, torch.Generator().manual_seed(3))
    assert kwargs == {}
    phase = [int(cond[b, 4, :, 0, 0].nonzero()[0]) for b in range(2)]
    for b in range(2):  # the mask channel is a phase-shifted x2 keyframe pattern, the latents follow it
        assert torch.equal(cond[b], masked_video_condition(latents[b:b + 1], keyframe_mask(6, 2, phase[b])[None])[0])


def test_blend_of_the_known_frames_is_the_estimate_sampling_starts_from():
    """Training's estimate of a masked clip (a stage student for a strength learns from it) is what sampling
    starts from: for keyframes the trilinear blend the interpolation stage makes, for a known past the held
    last frame of extension, a known future held backwards, and the known frames themselves everywhere known."""
    import torch.nn.functional as F

    from vidiff.stages.conditions import blend_known_frames

    known = torch.randn(1, 4, 3, 2, 5)
    placed = torch.zeros(1, 4, 9, 2, 5)
    placed[:, :, ::4] = known
    blend = blend_known_frames(masked_video_condition(placed, keyframe_mask(9, 4)[None]))
    torch.testing.assert_close(blend, F.interpolate(known, size=(9, 2, 5), mode="trilinear", align_corners=True))
    latents = torch.randn(2, 4, 6, 2, 3)
    mask = torch.stack([prefix_mask(6, 2), prefix_mask(6, 2).flip(0)])  # a known past; a known future
    blend = blend_known_frames(masked_video_condition(latents, mask))
    assert torch.equal(blend[0, :, :2], latents[0, :, :2]) and torch.equal(blend[1, :, 4:], latents[1, :, 4:])
    assert all(torch.equal(blend[0, :, f], latents[0, :, 1]) for f in range(2, 6))
    assert all(torch.equal(blend[1, :, f], latents[1, :, 4]) for f in range(4))
    stage = make_stage("ssr", latent_channels=4, factor=2)
    clip = torch.randn(2, 4, 3, 4, 6)
    torch.testing.assert_close(stage.start_estimate(clip, stage.condition(clip)[0]),
                               ssr_condition(clip, 2))  # (before the condition's noise augmentation)


def test_tsr_condition_repeats_the_low_frame_rate_video():
    latents = torch.randn(1, 4, 6, 2, 2)
    cond = tsr_condition(latents, 3)
    assert cond.shape == latents.shape
    for f in range(6):
        assert torch.equal(cond[:, :, f], latents[:, :, 3 * (f // 3)])
    assert torch.equal(repeat_frames(latents[:, :, :2], 2), latents[:, :, [0, 0, 1, 1]])
    stage = make_stage("tsr", latent_channels=4, factor=3)
    assert stage.conditioning_channels == 4
    assert torch.equal(stage.condition(latents)[0], cond)
    with pytest.raises(ValueError, match="data.num_frames \\(4\\) must be a multiple of stage.factor \\(3\\)"):
        stage.condition(latents[:, :, :4])


def test_ssr_condition_and_noise_augmentation():
    from diffusers import DDPMScheduler

    video = torch.randn(2, 3, 2, 8, 12, dtype=torch.float64)
    clean = ssr_condition(video, 2)
    assert clean.shape == video.shape
    # area reduction: each 2x2 block's mean; then a bilinear upsample back to 8 x 12 (reference: per-frame loop)
    low = video.reshape(2, 3, 2, 4, 2, 6, 2).mean(dim=(4, 6))
    for f in range(2):
        expected = torch.nn.functional.interpolate(low[:, :, f], size=(8, 12), mode="bilinear", align_corners=False)
        torch.testing.assert_close(clean[:, :, f], expected)
    with pytest.raises(ValueError, match="divisible by 4, got 8 x 12|divisible by 4"):
        ssr_condition(video[..., :10], 4)

    stage = make_stage("ssr", latent_channels=3, factor=2, max_noise_level=100)
    latents = video.float()
    cond, kwargs = stage.condition(latents, torch.Generator().manual_seed(5))
    # Replay the generator: levels, then noise; the augmentation is diffusers' DDPM add_noise on the x4 schedule.
    g = torch.Generator().manual_seed(5)
    levels = torch.randint(0, 101, (2,), generator=g)
    noise = torch.randn(clean.shape, generator=g)
    assert torch.equal(kwargs["class_labels"], levels)
    reference = DDPMScheduler(**AUGMENTATION_SCHEDULE).add_noise(clean.float(), noise, levels)
    torch.testing.assert_close(cond, reference, rtol=1e-5, atol=1e-5)
    levels_seen = torch.cat([stage.condition(latents, torch.Generator().manual_seed(s))[1]["class_labels"]
                             for s in range(200)])
    assert levels_seen.min() >= 0 and levels_seen.max() <= 100 and len(levels_seen.unique()) > 50
    # level 0 keeps the clean condition up to 1% of noise (sqrt(1 - alpha_bar_0) = sqrt(1e-4)); level 999 is
    # nearly all noise (float64 reference from the betas: sqrt-spaced 1e-4 -> 2e-2)
    alpha_bar = torch.cumprod(1 - torch.linspace(1e-2, 0.02 ** 0.5, 1000, dtype=torch.float64) ** 2, 0)
    for level in (0, 999):
        got = noise_augment(clean.float(), torch.full((2,), level), stage.alphas_cumprod, noise)
        expected = alpha_bar[level].sqrt() * clean + (1 - alpha_bar[level]).sqrt() * noise.double()
        torch.testing.assert_close(got.double(), expected, rtol=1e-5, atol=1e-5)
    assert (1 - alpha_bar[0]).sqrt() == pytest.approx(0.01) and alpha_bar[999].sqrt() < 0.07


def test_stage_options_and_errors():
    assert stage_options("ssr", {"factor": 4, "noise_level": 20, "condition": "latent"},
                         {"factor": None, "max_noise_level": 100, "mask_factors": None}) == \
        {"factor": 4, "condition": "latent", "max_noise_level": 100, "noise_level": 20}
    with pytest.raises(ValueError, match="stage.mask_factors=\\[2\\] applies to the interpolation stage"):
        stage_options("ssr", {}, {"mask_factors": [2]})
    with pytest.raises(ValueError, match="stage.factor of an ssr stage must be one of 2, 4, got 3"):
        make_stage("ssr", factor=3)
    with pytest.raises(ValueError, match="mask_modes entries must be one of"):
        make_stage("interpolation", mask_modes=["middle"])
    with pytest.raises(ValueError, match="unknown train.stage 'sr'"):
        make_stage("sr")
    pixels = make_stage("ssr", condition="pixels")
    with pytest.raises(ValueError, match="conditioned on low-res pixels"):
        pixels.condition(torch.zeros(1, 4, 2, 4, 4))


# ---------------------------------------------------------------------------------------------------------------
# fresh stages
# ---------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("stage", ["interpolation", "tsr", "ssr"])
def test_fresh_stage_equals_its_base(assets, tmp_path, stage):
    from vidiff.models.unet import VideoUNet
    from vidiff.spec import read_info
    from vidiff.stages.folder import inflate_stage

    out = inflate_stage(assets["sd"], tmp_path / stage, stage)
    info = read_info(out)
    assert info.stage == stage
    unet, base = VideoUNet.from_pretrained(out / "unet"), VideoUNet.from_pretrained(assets["base"] / "unet")
    assert unet.conditioning_channels == {"interpolation": 5, "tsr": 4, "ssr": 4}[stage] and unet.config["stage"] == stage
    assert info.conditioning["conditioning_channels"] == unet.conditioning_channels
    g = torch.Generator().manual_seed(0)
    sample, context = torch.randn(2, 4, 4, 8, 8, generator=g), torch.randn(2, 77, 32, generator=g)
    cond = torch.randn(2, unet.conditioning_channels, 4, 8, 8, generator=g) * 3
    kwargs = {"class_labels": torch.tensor([0, 300])} if stage == "ssr" else {}
    with torch.no_grad():
        expected = base(sample, 500, context)
        got = unet(torch.cat([sample, cond], dim=1), 500, context, **kwargs)
    torch.testing.assert_close(got, expected, rtol=1e-6, atol=1e-6)
    # and the new parts are what the stage trains on top of the base's weights: zero columns, zero class output
    assert torch.count_nonzero(unet.conv_in.weight[:, 4:]) == 0
    if stage == "ssr":
        assert torch.count_nonzero(unet.class_embedding.linear_2.weight) == 0
        assert info.stage_options["factor"] == 2 and info.stage_options["noise_level"] == 20


def test_inflate_stage_options(assets, tmp_path):
    from vidiff.spec import read_info
    from vidiff.stages.folder import inflate_stage

    out = inflate_stage(assets["pixel"], tmp_path / "interp", "interpolation", factor=4, defaults={"num_frames": 8})
    info = read_info(out)
    assert info.stage_options["mask_factors"] == [4] and info.in_channels == 3
    assert info.conditioning["conditioning_channels"] == 4 and info.latent is False
    with pytest.raises(ValueError, match="a tsr x3 stage needs num_frames .* multiple of 3, got 16"):
        inflate_stage(assets["sd"], tmp_path / "tsr", "tsr", factor=3)
    with pytest.raises(ValueError, match="stage.factor of an ssr stage must be one of 2, 4, got 8"):
        inflate_stage(assets["sd"], tmp_path / "ssr", "ssr", factor=8)
    assert not (tmp_path / "tsr").exists() and not (tmp_path / "ssr").exists()


# ---------------------------------------------------------------------------------------------------------------
# training
# ---------------------------------------------------------------------------------------------------------------
def train_config(out, model, manifest, *overrides):
    from vidiff.config import load_config

    return load_config(TINY, [f"model.pretrained={model}", f"data.manifest={manifest}", f"output_dir={out}",
                              "data.num_frames=4", *overrides])


@pytest.mark.parametrize("stage, base", [("interpolation", "sd"), ("tsr", "pixel"), ("ssr", "pixel")])
def test_training_a_stage(assets, tmp_path, stage, base):
    """A few steps of `vidiff train` from an SD pipeline: the stage is inflated, its condition channels train
    even with train.trainable=temporal, and the exported folder records the stage and its options."""
    from vidiff.cli import main
    from vidiff.spec import read_info

    out = tmp_path / "run"
    extra = {"interpolation": ["stage.mask_factors=[2]"], "tsr": ["stage.factor=2"],
             "ssr": ["stage.max_noise_level=200"]}[stage]
    code = main(["train", str(TINY), f"model.pretrained={assets[base]}", f"data.manifest={assets['shapes']}",
                 f"output_dir={out}", "data.num_frames=4", "train.max_steps=3", f"train.stage={stage}", *extra])
    assert code == 0
    info = read_info(out / "pipeline")
    assert info.stage == stage
    expected = {"interpolation": ("mask_factors", [2]), "tsr": ("factor", 2), "ssr": ("max_noise_level", 200)}[stage]
    assert info.stage_options[expected[0]] == expected[1]
    before, after = load_file(str(out / "inflated" / UNET_WEIGHTS)), load_file(str(out / "pipeline" / UNET_WEIGHTS))
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert "conv_in.weight" in changed and any(".temporal_" in k for k in changed)
    assert torch.count_nonzero(after["conv_in.weight"][:, 3 if base == "pixel" else 4:]) > 0
    if stage == "ssr":
        assert "class_embedding.linear_2.weight" in changed
    assert not {k for k in changed if k != "conv_in.weight" and not k.startswith("class_embedding.")
                and ".temporal_" not in k}, "spatial weights changed under train.trainable=temporal"


@pytest.mark.parametrize("stage", ["interpolation", "ssr"])
def test_resume_of_a_stage_run_equals_a_straight_run(assets, tmp_path, stage):
    """Masks, augmentation levels and their noise come from the step's seeded generator: a run stopped and
    resumed ends with exactly the straight run's weights."""
    from vidiff.training.trainer import train

    overrides = [f"train.stage={stage}", "train.max_steps=4", "train.checkpoint_every=2", "data.flip=true",
                 "train.trainable=all"]
    straight = train(train_config(tmp_path / "straight", assets["sd"], assets["shapes"], *overrides), log=lambda *a: None)
    cfg = train_config(tmp_path / "resumed", assets["sd"], assets["shapes"], *overrides)
    stopped = train(cfg, on_step=lambda step, row: step == 2, log=lambda *a: None)
    assert stopped.status == "interrupted" and stopped.step == 2
    resumed = train(cfg, resume="auto", log=lambda *a: None)
    assert straight.status == resumed.status == "finished"
    a, b = load_file(str(straight.pipeline / UNET_WEIGHTS)), load_file(str(resumed.pipeline / UNET_WEIGHTS))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    # and the comparison can fail: another seed (other masks / levels / noise) ends elsewhere
    other = train(train_config(tmp_path / "other", assets["sd"], assets["shapes"], *overrides, "train.seed=1"),
                  log=lambda *a: None)
    c = load_file(str(other.pipeline / UNET_WEIGHTS))
    assert not torch.equal(a["conv_in.weight"], c["conv_in.weight"])


def test_training_config_errors(assets, tmp_path):
    from vidiff.config import ConfigError
    from vidiff.training.trainer import train

    with pytest.raises(ConfigError, match="stage.max_noise_level=100 applies to the ssr stage, not to "
                                          "train.stage='interpolation'"):
        train_config(tmp_path, assets["sd"], assets["shapes"], "train.stage=interpolation", "stage.max_noise_level=100")
    with pytest.raises(ConfigError, match="data.num_frames \\(4\\) must be a multiple of stage.factor \\(3\\)"):
        train_config(tmp_path, assets["sd"], assets["shapes"], "train.stage=tsr", "stage.factor=3")
    with pytest.raises(ConfigError, match="validation.prompts .* leave it empty for cascade stages"):
        train_config(tmp_path, assets["sd"], assets["shapes"], "train.stage=ssr", 'validation.prompts=["a cat"]')
    with pytest.raises(ConfigError, match="train.stage must be one of base, interpolation, tsr, ssr, got 'sr'"):
        train_config(tmp_path, assets["sd"], assets["shapes"], "train.stage=sr")
    # a base folder cannot be trained as a stage (it has no condition channels)
    with pytest.raises(ValueError, match="train.stage='ssr' but .* holds a 'base' model"):
        train(train_config(tmp_path / "x", assets["base"], assets["shapes"], "train.stage=ssr"), log=lambda *a: None)


# ---------------------------------------------------------------------------------------------------------------
# the SD x4 upscaler route
# ---------------------------------------------------------------------------------------------------------------
def make_tiny_x4_upscaler(path: Path, sd: Path):
    """A tiny random StableDiffusionUpscalePipeline saved as diffusers saves it: a 7-channel U-Net (4 latent + 3
    pixel channels) with a noise-level class embedding and cross-attention-only blocks, a x4 VAE, its own
    low-res scheduler; text encoder and tokenizer from the tiny SD pipeline."""
    from diffusers import AutoencoderKL, DDIMScheduler, DDPMScheduler, StableDiffusionUpscalePipeline, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTokenizer

    from vidiff.testing import SD_SCHEDULER, TINY_UNET, TINY_VAE

    torch.manual_seed(0)
    unet = UNet2DConditionModel(**dict(TINY_UNET, in_channels=7, num_class_embeds=1000,
                                       down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
                                       up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
                                       only_cross_attention=[False, True]))
    vae = AutoencoderKL(**dict(TINY_VAE, block_out_channels=(8, 16, 16), down_block_types=("DownEncoderBlock2D",) * 3,
                               up_block_types=("UpDecoderBlock2D",) * 3, scaling_factor=0.08333))
    pipe = StableDiffusionUpscalePipeline(
        vae=vae, text_encoder=CLIPTextModel.from_pretrained(str(sd / "text_encoder")),
        tokenizer=CLIPTokenizer.from_pretrained(str(sd / "tokenizer")), unet=unet,
        low_res_scheduler=DDPMScheduler(num_train_timesteps=1000, beta_start=1e-4, beta_end=0.02,
                                        beta_schedule="scaled_linear"),
        scheduler=DDIMScheduler(**dict(SD_SCHEDULER, prediction_type="v_prediction")), max_noise_level=350)
    pipe.save_pretrained(str(path))
    return pipe


def test_x4_upscaler_inflates_and_matches_diffusers_per_frame(assets, tmp_path):
    from vidiff.pipelines.cascade import upscale_video
    from vidiff.spec import read_info
    from vidiff.stages.folder import inflate_stage
    from vidiff.pipelines.text_to_video import VideoPipeline

    reference = make_tiny_x4_upscaler(tmp_path / "x4", assets["sd"])
    inflate_stage(tmp_path / "x4", tmp_path / "ssr4", "ssr", defaults={"num_frames": 2})
    info = read_info(tmp_path / "ssr4")
    assert info.stage_options["factor"] == 4 and info.stage_options["condition"] == "pixels"
    assert info.stage_options["max_noise_level"] == 350 and info.prediction_type == "v_prediction"
    pipe = VideoPipeline.from_pretrained(tmp_path / "ssr4", device="cpu", dtype="fp32")
    assert pipe.unet.conditioning_channels == 3 and pipe.unet.in_channels == 4

    frames, size = 3, 8
    g = torch.Generator().manual_seed(0)
    video = torch.rand(1, 3, frames, size, size, generator=g) * 2 - 1
    latents = torch.randn(1, 4, frames, size, size, generator=g)
    seeds = [11, 12, 13]
    noise = torch.stack([torch.randn(1, 3, size, size, generator=torch.Generator().manual_seed(s))[0] for s in seeds],
                        dim=1)[None]                                                             # (1, 3, f, h, w)
    settings = dict(steps=2, guidance=3.0, scheduler="ddim", negative_prompt="blue", progress=False)
    ours = upscale_video(pipe, video, "a red circle", noise_level=40, latents=latents, condition_noise=noise,
                         **settings)
    assert ours.shape == (1, 3, frames, 4 * size, 4 * size)
    reference.set_progress_bar_config(disable=True)
    for f, s in enumerate(seeds):  # diffusers draws the image's noise from the generator first, as given here
        expected = reference(prompt="a red circle", image=video[:, :, f], noise_level=40, num_inference_steps=2,
                             guidance_scale=3.0, negative_prompt="blue", latents=latents[:, :, f],
                             generator=torch.Generator().manual_seed(s), output_type="pt").images
        torch.testing.assert_close((ours[:, :, f] + 1) / 2, expected, rtol=1e-4, atol=1e-4)
    with pytest.raises(ValueError, match="x4 upscaler: it can only become an ssr stage"):
        inflate_stage(tmp_path / "x4", tmp_path / "bad", "tsr")


def test_strength_on_an_x4_upscaler_stage_is_refused_before_loading(assets, tmp_path, capsys, monkeypatch):
    """An SD x4 upscaler stage has no latent estimate to start from: --strength < 1 is one line, nothing loads."""
    from vidiff.data import write_video
    from vidiff.pipelines.text_to_video import VideoPipeline
    from vidiff.stages import stage_for
    from vidiff.spec import read_info
    from vidiff.stages.folder import inflate_stage

    make_tiny_x4_upscaler(tmp_path / "x4", assets["sd"])
    inflate_stage(tmp_path / "x4", tmp_path / "ssr4", "ssr", defaults={"num_frames": 2})
    assert not stage_for(read_info(tmp_path / "ssr4")).has_start_estimate()
    write_video(tmp_path / "in.mp4", np.zeros((2, 8, 8, 3), np.uint8), fps=4)
    monkeypatch.setattr(VideoPipeline, "from_pretrained", lambda *a, **k: pytest.fail("loaded the model"))
    capsys.readouterr()  # (the tiny upscaler's loading bars)
    code, _, err = run_cli(capsys, "upscale", "--model", tmp_path / "ssr4", "--video", tmp_path / "in.mp4",
                           "--strength", 0.5, "--out", tmp_path / "up.mp4")
    assert code == 2 and err.strip().count("\n") == 0 and "--strength 0.5" in err and "no estimate" in err, err
    assert not (tmp_path / "up.mp4").exists()


# ---------------------------------------------------------------------------------------------------------------
# sampling: stages on videos, the cascade, the command line
# ---------------------------------------------------------------------------------------------------------------
SMALL = {"num_frames": 4, "height": 16, "width": 16, "num_inference_steps": 2, "fps": 8}


@pytest.fixture(scope="module")
def cascade(assets, tmp_path_factory):
    """A cascade folder: base, interpolation (x2 only), tsr x2 and ssr x2 stages of the tiny SD, 4-frame windows;
    an input clip (5 frames, 16 x 16, 10 fps) as an mp4."""
    import yaml

    from vidiff.data import write_video
    from vidiff.models.folder import inflate_pipeline
    from vidiff.stages.folder import inflate_stage

    root = tmp_path_factory.mktemp("cascade")
    folder = root / "demo"
    folder.mkdir()
    inflate_pipeline(assets["sd"], folder / "base", defaults=SMALL)
    inflate_stage(assets["sd"], folder / "interpolation", "interpolation", factor=2, defaults=SMALL)
    inflate_stage(assets["sd"], folder / "tsr", "tsr", factor=2, defaults=SMALL)
    inflate_stage(assets["sd"], folder / "ssr", "ssr", factor=2, defaults=SMALL)
    (folder / "cascade.yaml").write_text(yaml.safe_dump({"stages": [
        {"model": "base", "steps": 2, "guidance": 2.0}, {"model": "interpolation", "factor": 2, "guidance": 1.0},
        {"model": "ssr", "noise_level": 30, "guidance": 1.0}]}))
    video = root / "in.mp4"
    frames = (torch.rand(5, 16, 16, 3, generator=torch.Generator().manual_seed(0)) * 255).to(torch.uint8).numpy()
    write_video(video, frames, fps=10)
    return {"root": root, "folder": folder, "video": video}


def load(path):
    from vidiff.pipelines.text_to_video import VideoPipeline

    return VideoPipeline.from_pretrained(path, device="cpu", dtype="fp32")


def test_interpolation_keeps_the_keyframes_across_windows(cascade):
    from vidiff.pipelines.cascade import interpolate_video

    pipe = load(cascade["folder"] / "interpolation")
    keyframes = torch.rand(1, 3, 6, 16, 16, generator=torch.Generator().manual_seed(1)) * 2 - 1
    out = interpolate_video(pipe, keyframes, "a red circle", factor=2, seed=0, guidance=1.0, progress=False)
    assert out.shape == (1, 3, 11, 16, 16)  # (6 - 1) x 2 + 1 frames through windows of 4
    assert torch.equal(out[:, :, ::2], keyframes)  # exactly as given
    assert out[:, :, 1::2].abs().sum() > 0 and out.min() >= -1 and out.max() <= 1
    again = interpolate_video(pipe, keyframes, "a red circle", factor=2, seed=0, guidance=1.0, progress=False)
    assert torch.equal(out, again)
    with pytest.raises(ValueError, match="factor 4 is not supported .* trained for x2"):
        interpolate_video(pipe, keyframes, "", factor=4)


@pytest.mark.parametrize("stage", ["interpolation", "ssr", "extend", "tsr"])
def test_stages_start_from_their_input_estimate_at_a_strength(cascade, stage, monkeypatch):
    """Issue 20: at strength s a stage starts from its plain estimate (keyframes blended linearly, the clip
    upsampled as its condition, the last frame held, each frame repeated) noised to the first timestep of the
    schedule's last share s, x = sqrt(a) estimate + sqrt(1 - a) x_T with the same seed's x_T, and runs only those
    steps: 4 steps at 0.5 are the last 2 of the 4 DDIM timesteps."""
    from vidiff.pipelines import cascade as pc
    from vidiff.stages.conditions import spatial_downsample, spatial_upsample

    pipe = load(cascade["folder"] / ("interpolation" if stage == "extend" else stage))
    video = torch.rand(1, 3, 2, 16, 16, generator=torch.Generator().manual_seed(5)) * 2 - 1
    calls = []
    forward = pipe.unet.forward

    def spy(sample, timestep, *args, **kwargs):
        calls.append((int(torch.as_tensor(timestep).reshape(-1)[0]), sample[:, :pipe.unet.out_channels].clone()))
        return forward(sample, timestep, *args, **kwargs)

    monkeypatch.setattr(pipe.unet, "forward", spy)
    run = {"interpolation": lambda **s: pc.interpolate_video(pipe, video, "", factor=2, **s),
           "tsr": lambda **s: pc.interpolate_video(pipe, video, "", **s),
           "ssr": lambda **s: pc.upscale_video(pipe, video, "", noise_level=0, **s),
           "extend": lambda **s: pc.extend_video(pipe, video, "", num_frames=1, **s)}[stage]
    run(seed=0, guidance=1.0, steps=4, progress=False)
    x_t = calls[0][1]
    calls.clear()
    run(seed=0, guidance=1.0, steps=4, strength=0.5, progress=False)
    sampler = pipe.make_scheduler("ddim")
    sampler.set_timesteps(4)
    assert [t for t, _ in calls] == sampler.timesteps[2:].tolist()
    known = pipe.encode_video(video)
    estimate = {"interpolation": lambda: torch.stack([known[:, :, 0], known.mean(2), known[:, :, 1]], dim=2),
                "tsr": lambda: known.repeat_interleave(2, dim=2),
                "ssr": lambda: (lambda big: spatial_upsample(spatial_downsample(big, 2), big.shape[-2:]))(
                    pipe.encode_video(spatial_upsample(video, (32, 32)))),  # (latents reduced and enlarged)
                "extend": lambda: torch.cat([known, known[:, :, -1:]], dim=2)}[stage]()
    a = sampler.alphas_cumprod[sampler.timesteps[2]]
    assert torch.allclose(calls[0][1], a.sqrt() * estimate + (1 - a).sqrt() * x_t, atol=1e-5)


def test_strength_errors_and_evaluations(cascade, tmp_path, capsys):
    """--strength is range-checked before loading (0 would skip sampling), a base model has no input to start
    from, and the sidecar counts the U-Net passes that ran."""
    import yaml

    from vidiff.pipelines.text_to_video import VideoPipeline

    common = ["interpolate", "--model", cascade["folder"] / "interpolation", "--video", cascade["video"],
              "--factor", 2, "--seed", 0, "--quiet", "--out", tmp_path / "i.mp4"]
    for value in ("0", "1.5", "nan"):
        code, _, err = run_cli(capsys, *common, "--strength", value)
        assert code == 2 and err.strip().count("\n") == 0 and "--strength" in err, err
    code, _, _ = run_cli(capsys, *common, "--steps", 4, "--strength", 0.5)
    record = json.loads((tmp_path / "i.json").read_text())
    assert code == 0 and record["strength"] == 0.5 and record["steps"] == 4 and record["unet_evaluations"] == 2
    base = VideoPipeline.from_pretrained(cascade["folder"] / "base")
    with pytest.raises(ValueError, match="strength 0.5 < 1 starts from an estimate"):
        base("a red circle", strength=0.5, num_inference_steps=2, progress=False)
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({"stages": [{"model": str(cascade["folder"] / "base"), "strength": 0.5}]}))
    code, _, err = run_cli(capsys, "generate", "--cascade", bad, "--prompt", "a", "--out", tmp_path / "c.mp4")
    assert code == 2 and "stage 0: strength is for the stages after the base" in err


def test_a_stage_student_for_a_strength_starts_from_its_estimate_with_no_flags(cascade, tmp_path, capsys):
    """A progressive stage student distilled for the last half of its grid (vidiff.json `distilled.strength`,
    `vidiff distill --strength`) samples from its input's estimate by default, alone and in a cascade, and the
    sidecars count the passes that ran; --strength 1 still starts from pure noise."""
    import shutil

    import yaml

    student = tmp_path / "student"
    shutil.copytree(cascade["folder"] / "interpolation", student)
    info = json.loads((student / "vidiff.json").read_text())
    info["distilled"] = {"method": "progressive", "steps": 4, "teacher_steps": 8, "guidance_embedded": False,
                         "teacher": "teacher", "timesteps": [], "strength": 0.5}
    info["defaults"]["num_inference_steps"] = 4
    (student / "vidiff.json").write_text(json.dumps(info))
    common = ["interpolate", "--model", student, "--video", cascade["video"], "--factor", 2, "--seed", 0, "--quiet"]
    for flags, strength, passes in (([], 0.5, 2), (["--strength", 1], 1.0, 4)):
        out = tmp_path / f"i{passes}.mp4"
        code, _, err = run_cli(capsys, *common, *flags, "--out", out)
        record = json.loads(out.with_suffix(".json").read_text())
        assert code == 0, err
        assert (record["strength"], record["steps"], record["unet_evaluations"]) == (strength, 4, passes), record
    plan = tmp_path / "cascade.yaml"
    plan.write_text(yaml.safe_dump({"stages": [{"model": str(cascade["folder"] / "base")},
                                               {"model": str(student), "factor": 2}]}))
    code, _, err = run_cli(capsys, "generate", "--cascade", plan, "--prompt", "a red circle", "--seed", 0,
                           "--quiet", "--out", tmp_path / "c.mp4")
    stages = json.loads((tmp_path / "c.json").read_text())["stages"]
    assert code == 0 and stages[1]["guidance"] == 7.5, stages  # (captioned in a cascade: two passes a step)
    assert (stages[1]["strength"], stages[1]["unet_evaluations"]) == (0.5, 2 * 2), stages


def test_tsr_and_extension(cascade):
    from vidiff.pipelines.cascade import extend_video, interpolate_video

    video = torch.rand(1, 3, 3, 16, 16, generator=torch.Generator().manual_seed(2)) * 2 - 1
    tsr = interpolate_video(load(cascade["folder"] / "tsr"), video, "", seed=0, guidance=1.0, progress=False)
    assert tsr.shape == (1, 3, 6, 16, 16)  # n x 2
    pipe = load(cascade["folder"] / "interpolation")
    longer = extend_video(pipe, video, "", num_frames=5, seed=0, guidance=1.0, progress=False)
    assert longer.shape == (1, 3, 8, 16, 16) and torch.equal(longer[:, :, :3], video)
    with pytest.raises(ValueError, match="context_frames must be in \\[1, 3\\]"):
        extend_video(pipe, video, "", num_frames=2, context_frames=4)


def test_extension_makes_one_frame_a_chunk_beside_a_growing_past(cascade, monkeypatch):
    """Issue 24: extension's default is one new frame per chunk, the known past growing from the input's frames
    to what the window holds (window 4: 2 known + 1, then 3 + 1); five new frames a window lost the demo's motion.
    `new_per_chunk=None` keeps the old chunks (half the window known, the rest new); bad values are one line."""
    from vidiff.pipelines.cascade import extend_video
    from vidiff.spec import SettingError
    from vidiff.stages import cascade as stages_cascade

    pipe = load(cascade["folder"] / "interpolation")
    video = torch.rand(1, 3, 2, 16, 16, generator=torch.Generator().manual_seed(3)) * 2 - 1
    windows, sample = [], stages_cascade.sample_stage

    def spy(pipe, prompts, condition, size, settings, generators, **extra):
        windows.append((size[0], int(condition[0, -1, :, 0, 0].sum())))  # (window, known frames)
        return sample(pipe, prompts, condition, size, settings, generators, **extra)

    monkeypatch.setattr(stages_cascade, "sample_stage", spy)
    options = dict(num_frames=3, seed=0, guidance=1.0, progress=False)
    one = extend_video(pipe, video, "", **options)
    assert windows == [(3, 2), (4, 3), (4, 3)] and one.shape == (1, 3, 5, 16, 16)
    assert torch.equal(one[:, :, :2], video)
    windows.clear()
    old = extend_video(pipe, video, "", new_per_chunk=None, **options)
    assert windows == [(4, 2), (3, 2)] and old.shape == one.shape and not torch.allclose(old, one)
    windows.clear()
    extend_video(pipe, video, "", new_per_chunk=2, context_frames=1, **options)
    assert windows == [(3, 1), (2, 1)]
    with pytest.raises(SettingError, match=r"new_per_chunk must be in \[1, 3\] \(the stage's window 4 less one"):
        extend_video(pipe, video, "", new_per_chunk=4, **options)
    with pytest.raises(SettingError, match=r"context_frames must be in \[1, 2\] \(the stage's window 4 less 2 new"):
        extend_video(pipe, video, "", new_per_chunk=2, context_frames=3, **options)


def test_cascade_end_to_end(cascade):
    from vidiff.pipelines.cascade import CascadePipeline, run_stage

    pipe = CascadePipeline.from_pretrained(cascade["folder"], device="cpu", dtype="fp32")
    assert pipe.plan(3, 16, 16) == [(3, 16, 16), (5, 16, 16), (5, 32, 32)] and pipe.frame_rate_factor == 2
    final, stages = pipe("a red circle", num_frames=3, height=16, width=16, seed=4, return_intermediate=True,
                         output_type="pt", progress=False)
    assert [tuple(s.shape) for s in stages] == [(1, 3, 3, 16, 16), (1, 3, 5, 16, 16), (1, 3, 5, 32, 32)]
    assert torch.equal(final, stages[-1]) and torch.equal(stages[1][:, :, ::2], stages[0])
    assert list(pipe.timings) == ["0 base", "1 interpolation", "2 ssr"]
    # each stage is the stage function on the previous output, with the cascade's settings and seed
    again = run_stage(pipe.pipelines[2], stages[1], "a red circle", noise_level=30, seed=4, guidance=1.0, progress=False)
    torch.testing.assert_close(again, final, rtol=0, atol=1e-6)
    frames = pipe("a red circle", num_frames=3, height=16, width=16, seed=4, progress=False)
    assert frames.shape == (5, 32, 32, 3) and frames.dtype == np.uint8
    with pytest.raises(ValueError, match="interpolation needs at least 2 frames"):
        pipe("a red circle", num_frames=1)


def test_a_long_cascade_clip_is_the_bases_keyframes_filled_in(cascade):
    """Past the base's window (4 frames) the base samples its window of keyframes and the interpolation stage
    fills them in, as often as needed (4 -> 7 -> 13), before 9 evenly spaced frames are taken; "windows" samples
    the 9 frames in temporal windows instead. The method is decided torch-free, before sampling."""
    from vidiff.pipelines.cascade import CascadePipeline, long_video_method, read_cascade, run_stage
    from vidiff.spec import SettingError

    pipe = CascadePipeline.from_pretrained(cascade["folder"], device="cpu", dtype="fp32")
    options = dict(height=16, width=16, seed=4, return_intermediate=True, output_type="pt", progress=False)
    _, direct = pipe("a red circle", num_frames=4, **options)
    final, stages = pipe("a red circle", num_frames=9, **options)
    assert [tuple(s.shape) for s in stages] == [(1, 3, 9, 16, 16), (1, 3, 17, 16, 16), (1, 3, 17, 32, 32)]
    expected = direct[0]
    while expected.shape[2] < 9:
        expected = run_stage(pipe.pipelines[1], expected, "a red circle", factor=2, seed=4, guidance=1.0,
                             progress=False)
    assert expected.shape[2] == 13
    torch.testing.assert_close(stages[0], expected[:, :, [0, 2, 3, 4, 6, 8, 9, 10, 12]], rtol=0, atol=1e-6)
    assert torch.equal(stages[0][:, :, [0, -1]], direct[0][:, :, [0, -1]])  # the base's first and last keyframes
    _, windowed = pipe("a red circle", num_frames=9, long_video="windows", **options)
    assert windowed[0].shape == stages[0].shape and not torch.allclose(windowed[0], stages[0])

    specs = read_cascade(cascade["folder"])
    assert [long_video_method(specs, n, m) for n, m in ((4, "keyframes"), (9, "auto"), (9, "windows"))] == \
        ["direct", "keyframes", "windows"]
    no_interpolation = [specs[0], specs[2]]  # base -> ssr: nothing to fill keyframes in with
    assert long_video_method(no_interpolation, 9, "auto") == "windows"
    with pytest.raises(SettingError, match="long_video keyframes needs a cascade with an interpolation or tsr"):
        long_video_method(no_interpolation, 9, "keyframes")
    with pytest.raises(SettingError, match="long_video must be one of auto, keyframes, windows"):
        pipe("a red circle", num_frames=9, long_video="frames", progress=False)


def test_generate_records_how_a_long_cascade_clip_was_made(cascade, tmp_path, capsys):
    code, _, err = run_cli(capsys, "generate", "--model", cascade["folder"], "--prompt", "a red circle",
                           "--num-frames", 9, "--seed", 5, "--quiet", "--out", tmp_path / "c.mp4")
    assert code == 0, err
    sidecar = json.loads((tmp_path / "c.json").read_text())
    assert sidecar["stages"][0]["long_video"] == "keyframes" and sidecar["num_frames"] == 17
    code, _, err = run_cli(capsys, "generate", "--model", cascade["folder"] / "base", "--prompt", "a red circle",
                           "--long-video", "keyframes", "--out", tmp_path / "d.mp4")
    assert code == 2 and "--long-video keyframes needs a cascade with an interpolation stage" in err
    assert err.count("\n") == 1 and not (tmp_path / "d.mp4").exists()


def test_prompt_travel_through_a_cascade_keeps_each_change_at_its_moment(cascade, monkeypatch):
    """Issue 21: the schedule counts the base's frames (9 here, past its 4-frame window: keyframes); the base's
    keyframes, each filling-in pass and every later stage get it on their own timeline, so the change at frame 8
    of 9 is at keyframe 3 of 4, frame 6 of 7, 12 of 13, then 16 of the x2 stage's 17. One keyframe is the plain
    prompt."""
    from vidiff.pipelines.cascade import CascadePipeline
    from vidiff.pipelines.text_to_video import VideoPipeline
    from vidiff.spec import PromptSchedule

    pipe = CascadePipeline.from_pretrained(cascade["folder"], device="cpu", dtype="fp32")
    options = dict(num_frames=9, height=16, width=16, seed=4, output_type="pt", progress=False)
    red, blue = "a red circle", "a blue square"
    plain = pipe(red, **options)
    torch.testing.assert_close(pipe(PromptSchedule(((0, red),)), **options), plain, rtol=0, atol=1e-6)

    seen, call = [], VideoPipeline.__call__

    def spy(self, prompt, *args, **kwargs):
        seen.append((prompt[0].keyframes, kwargs["num_frames"]))
        return call(self, prompt, *args, **kwargs)

    monkeypatch.setattr(VideoPipeline, "__call__", spy)
    travel = pipe(PromptSchedule(((0, red), (8, blue))), **options)
    assert [(frames, [f for f, _ in keys]) for keys, frames in seen] == \
        [(4, [0, 3]), (7, [0, 6]), (13, [0, 12]), (17, [0, 16]), (17, [0, 16])]
    assert travel.shape == plain.shape and not torch.allclose(travel, plain)


def test_generate_runs_prompt_travel_through_a_cascade(cascade, tmp_path, capsys):
    prompts = ["--prompt", "0: a red circle", "--prompt", "8: a blue square"]
    code, _, err = run_cli(capsys, "generate", "--model", cascade["folder"], *prompts, "--num-frames", 9,
                           "--steps", 2, "--seed", 5, "--quiet", "--out", tmp_path / "t.mp4")
    assert code == 0, err
    sidecar = json.loads((tmp_path / "t.json").read_text())
    assert sidecar["prompt_schedule"] == {"0": "a red circle", "8": "a blue square"}
    assert sidecar["num_frames"] == 17 and sidecar["stages"][0]["long_video"] == "keyframes"
    code, _, err = run_cli(capsys, "generate", "--model", cascade["folder"], *prompts, "--num-frames", 8,
                           "--out", tmp_path / "bad.mp4")
    assert code == 2 and err.count("\n") == 1 and not (tmp_path / "bad.mp4").exists()
    assert "--num-frames must exceed the last prompt keyframe (8), got 8: the base's clip must reach" in err


def run_cli(capsys, *argv):
    from vidiff.cli import main

    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def png_frames(folder: Path) -> np.ndarray:
    from PIL import Image

    return np.stack([np.asarray(Image.open(p)) for p in sorted(folder.glob("*.png"))])


def test_stage_commands(cascade, tmp_path, capsys):
    from vidiff.data import read_video

    source = read_video(cascade["video"]).frames
    code, out, _ = run_cli(capsys, "interpolate", "--model", cascade["folder"] / "interpolation", "--video",
                           cascade["video"], "--factor", 2, "--seed", 3, "--quiet", "--out", tmp_path / "interp")
    assert code == 0 and "9 frames 16x16 @ 20 fps" in out
    frames = png_frames(tmp_path / "interp")
    assert frames.shape == (9, 16, 16, 3) and np.array_equal(frames[::2], source)  # keyframes exact (lossless PNGs)
    sidecar = json.loads((tmp_path / "interp.json").read_text())
    assert sidecar["fps"] == 20 and sidecar["input_fps"] == 10 and sidecar["factor"] == 2 and sidecar["seed"] == 3
    assert sidecar["steps"] == 2 and sidecar["guidance"] == 1.0 and sidecar["scheduler"] == "ddim"

    code, out, _ = run_cli(capsys, "extend", "--model", cascade["folder"] / "interpolation", "--video",
                           cascade["video"], "--frames", 3, "--seed", 1, "--quiet", "--out", tmp_path / "ext.mp4")
    assert code == 0
    assert read_video(tmp_path / "ext.mp4").frames.shape == (8, 16, 16, 3)
    assert json.loads((tmp_path / "ext.json").read_text())["fps"] == 10

    code, out, _ = run_cli(capsys, "upscale", "--model", cascade["folder"] / "ssr", "--video", cascade["video"],
                           "--noise-level", 50, "--prompt", "a red circle", "--seed", 1, "--quiet",
                           "--out", tmp_path / "up.mp4")
    assert code == 0
    clip = read_video(tmp_path / "up.mp4")
    assert clip.frames.shape == (5, 32, 32, 3) and clip.fps == pytest.approx(10)
    sidecar = json.loads((tmp_path / "up.json").read_text())
    assert sidecar["noise_level"] == 50 and sidecar["prompt"] == "a red circle" and sidecar["guidance"] == 7.5
    # --overwrite replaces the clip; without it the run stops before any work (see the errors below)
    code, _, _ = run_cli(capsys, "upscale", "--model", cascade["folder"] / "ssr", "--video", cascade["video"],
                         "--quiet", "--overwrite", "--out", tmp_path / "up.mp4")
    assert code == 0 and json.loads((tmp_path / "up.json").read_text())["noise_level"] == 20


def test_stage_commands_take_the_prompt_of_the_input_sidecar(cascade, tmp_path, capsys):
    """Issue 24: `extend` / `interpolate` / `upscale` of a vidiff output without --prompt use the prompt its
    sidecar records (one line says so); --prompt '' runs without one; a JSON file that is not a vidiff sidecar,
    or records no prompt, is no prompt."""
    import shutil

    video = tmp_path / "clip.mp4"
    shutil.copy(cascade["video"], video)
    sidecar = tmp_path / "clip.json"
    interpolation = cascade["folder"] / "interpolation"
    for record, expected in [({"vidiff_version": "0.1.0", "prompt": "a red circle moving right"},
                              "a red circle moving right"),
                             ({"prompt": "a red circle moving right"}, ""),      # not written by vidiff
                             ({"vidiff_version": "0.1.0", "prompt": ["a", "b"]}, ""),
                             ({"vidiff_version": "0.1.0"}, "")]:
        sidecar.write_text(json.dumps(record))
        for command, extra in [("extend", ["--frames", 1]), ("interpolate", ["--factor", 2])]:
            code, _, err = run_cli(capsys, command, "--model", interpolation, "--video", video, *extra,
                                   "--seed", 0, "--quiet", "--overwrite", "--out", tmp_path / f"{command}.mp4")
            written = json.loads((tmp_path / f"{command}.json").read_text())
            assert code == 0 and written["prompt"] == expected, (record, command)
            assert (f"the prompt of {sidecar}" in err) == bool(expected)
            assert written["guidance"] == (1.0 if not expected else written["guidance"])
    sidecar.write_text(json.dumps({"vidiff_version": "0.1.0", "prompt": "a red circle moving right"}))
    code, _, err = run_cli(capsys, "upscale", "--model", cascade["folder"] / "ssr", "--video", video, "--prompt", "",
                           "--seed", 0, "--quiet", "--out", tmp_path / "up.mp4")
    assert code == 0 and json.loads((tmp_path / "up.json").read_text())["prompt"] == "" and "prompt of" not in err
    sidecar.write_bytes(b"\x80" * 100)  # unreadable: ignored
    code, _, _ = run_cli(capsys, "upscale", "--model", cascade["folder"] / "ssr", "--video", video,
                         "--seed", 0, "--quiet", "--overwrite", "--out", tmp_path / "up.mp4")
    assert code == 0 and json.loads((tmp_path / "up.json").read_text())["prompt"] == ""


def test_outputs_lines_and_bars_of_the_commands(cascade, tmp_path, capsys, monkeypatch):
    """Issue 24: stdout and stderr in one log: each `wrote` line starts a line of its own (no bar glued before
    it), the cascade's bars are named per stage; the stage commands write --gif / --contact-sheet too, and a
    one-frame count reads "1 frame"."""
    import io
    import re
    import sys

    from vidiff.cli import main
    from vidiff.data import probe_video, write_video

    log = io.StringIO()
    monkeypatch.setattr(sys, "stdout", log)
    monkeypatch.setattr(sys, "stderr", log)
    assert main(["generate", "--model", str(cascade["folder"]), "--prompt", "a red circle", "--num-frames", "2",
                 "--seed", "0", "--out", str(tmp_path / "c.mp4")]) == 0
    text = log.getvalue()
    assert "base (1/3)" in text and "interpolation (2/3)" in text and "ssr (3/3)" in text
    assert text.count("wrote ") == 1 and re.search(r"[^\n]wrote ", text) is None
    write_video(tmp_path / "one.mp4", np.zeros((1, 16, 16, 3), np.uint8), fps=8)
    assert main(["extend", "--model", str(cascade["folder"] / "interpolation"), "--video", str(tmp_path / "one.mp4"),
                 "--frames", "1", "--seed", "0", "--gif", "--contact-sheet", "--out", str(tmp_path / "e.mp4")]) == 0
    line = log.getvalue().splitlines()[-1]
    assert line.startswith("wrote ") and ": 1 frame + 1 -> 2 frames 16x16" in line
    assert probe_video(tmp_path / "e.gif").num_frames == 2 and (tmp_path / "e.png").is_file()
    assert json.loads((tmp_path / "e.json").read_text())["files"] == ["e.mp4", "e.gif", "e.png"]


def test_generate_cascade(cascade, tmp_path, capsys):
    code, out, err = run_cli(capsys, "generate", "--model", cascade["folder"], "--prompt", "a red circle",
                             "--num-frames", 3, "--seed", 5, "--keep-intermediate", "--quiet", "--out", tmp_path / "c")
    assert code == 0, err
    assert png_frames(tmp_path / "c").shape == (5, 32, 32, 3)
    assert png_frames(tmp_path / "c_0-base").shape == (3, 16, 16, 3)
    assert np.array_equal(png_frames(tmp_path / "c_1-interpolation")[::2], png_frames(tmp_path / "c_0-base"))
    sidecar = json.loads((tmp_path / "c.json").read_text())
    assert sidecar["fps"] == 16 and [s["stage"] for s in sidecar["stages"]] == ["base", "interpolation", "ssr"]
    assert sidecar["stages"][2]["noise_level"] == 30 and sidecar["stages"][1]["factor"] == 2
    assert sidecar["stages"][0]["guidance"] == 2.0 and sidecar["seed"] == 5
    # the same cascade from its YAML path gives the same clip
    code, _, _ = run_cli(capsys, "generate", "--cascade", cascade["folder"] / "cascade.yaml", "--prompt",
                         "a red circle", "--num-frames", 3, "--seed", 5, "--quiet", "--out", tmp_path / "d")
    assert code == 0 and np.array_equal(png_frames(tmp_path / "d"), png_frames(tmp_path / "c"))


def test_inflate_stage_command(assets, tmp_path, capsys):
    from vidiff.spec import read_info

    code, out, _ = run_cli(capsys, "inflate", "--stage", "tsr", "--factor", 4, "--base", assets["pixel"],
                           "--num-frames", 8, "--out", tmp_path / "tsr")
    assert code == 0 and "tsr stage" in out
    info = read_info(tmp_path / "tsr")
    assert info.stage == "tsr" and info.stage_options == {"factor": 4} and info.defaults.num_frames == 8


def test_the_documented_cascade_examples_run_on_a_fresh_clone(tmp_path, monkeypatch):
    """Issue 24: `generate --help`'s and the README's cascade YAML names models a fresh clone has (from any
    folder), and a missing model's message names the paths it looked for, in full."""
    import re

    from vidiff.cli.generate import EPILOG
    from vidiff.pipelines.cascade import read_cascade

    monkeypatch.chdir(tmp_path)
    examples = re.findall(r"--cascade ([^\s`]+)", EPILOG + (REPO / "README.md").read_text())
    assert "configs/cascade/demo.yaml" in examples
    for example in {e for e in examples if "sd15" not in e}:  # (sd15: the user trains its stages first)
        specs = read_cascade(REPO / example)
        assert [s.name for s in specs] == ["base", "interpolation", "ssr"]
        assert all(s.model.resolve().is_relative_to(REPO / "vidiff" / "assets" / "demo") for s in specs)
    (tmp_path / "c.yaml").write_text("stages:\n  - model: runs/demo-base/pipeline\n")
    with pytest.raises(FileNotFoundError, match=f"looked for {tmp_path}/runs/demo-base/pipeline and "
                                                f"{tmp_path}/runs/demo-base/pipeline"):
        read_cascade(tmp_path / "c.yaml")


@pytest.fixture(scope="module")
def bad_cascades(assets, cascade, tmp_path_factory):
    """Cascade YAMLs with one defect each, and `other-ssr`: a stage whose text encoder is not the base's."""
    import yaml

    from vidiff.stages.folder import inflate_stage
    from vidiff.testing import make_tiny_sd_pipeline

    root = tmp_path_factory.mktemp("bad-cascades")
    other = make_tiny_sd_pipeline(root / "other-sd", seed=1)  # same architecture, other text encoder weights
    inflate_stage(other, root / "other-ssr", "ssr", defaults=SMALL)
    folder = cascade["folder"]
    cases = {
        "missing": [{"model": str(folder / "base")}, {"model": str(root / "nope")}],
        "not-base": [{"model": str(folder / "ssr")}],
        "unknown-key": [{"model": str(folder / "base"), "stepz": 3}],
        "factor": [{"model": str(folder / "base")}, {"model": str(folder / "interpolation"), "factor": 4}],
        "level": [{"model": str(folder / "base")}, {"model": str(folder / "ssr"), "noise_level": 500}],
        "level-on-tsr": [{"model": str(folder / "base")}, {"model": str(folder / "tsr"), "noise_level": 5}],
    }
    for name, stages in cases.items():
        (root / f"{name}.yaml").write_text(yaml.safe_dump({"stages": stages}))
    return root


@pytest.mark.parametrize("case", [
    "interp-factor", "interp-base-model", "interp-ssr-model", "interp-short", "interp-size", "interp-exists",
    "interp-steps", "interp-no-video", "interp-same", "interp-cascade-model", "extend-frames", "extend-context",
    "extend-tsr", "upscale-level", "upscale-negative-level", "upscale-interp-model", "upscale-size",
    "gen-missing", "gen-not-base", "gen-unknown-key", "gen-factor", "gen-level", "gen-level-on-tsr",
    "gen-both", "gen-keep", "gen-window", "gen-stage-model", "gen-fit", "inflate-x4-tsr", "inflate-factor-base",
    "inflate-ssr-factor", "inflate-tsr-frames"])
def test_cli_errors_before_any_work(assets, cascade, bad_cascades, tmp_path, capsys, monkeypatch, case):
    """Every bad input is one line on stderr and exit status 2, before any model loads or any sampling."""
    from vidiff.data import write_video
    from vidiff.stages import folder as stage_folder
    from vidiff.pipelines.text_to_video import VideoPipeline

    def no_loading(*args, **kwargs):
        raise AssertionError("a model was loaded before the input was checked")

    monkeypatch.setattr(VideoPipeline, "from_pretrained", no_loading)
    monkeypatch.setattr("vidiff.models.loading.load_base_components", no_loading)  # its one home (SD-base loading)
    monkeypatch.setattr(stage_folder, "load_upscaler_components", no_loading)
    f, video, out = cascade["folder"], cascade["video"], tmp_path / "out.mp4"
    one_frame, odd, tiny = tmp_path / "one.mp4", tmp_path / "odd.mp4", tmp_path / "tiny.gif"
    write_video(one_frame, np.zeros((1, 16, 16, 3), np.uint8), fps=8)
    write_video(odd, np.zeros((3, 18, 18, 3), np.uint8), fps=8)
    write_video(tiny, np.zeros((3, 9, 9, 3), np.uint8), fps=8)
    (tmp_path / "taken.mp4").write_bytes(b"mine")
    x4 = tmp_path / "x4"
    (x4 / "low_res_scheduler").mkdir(parents=True)
    (x4 / "unet").mkdir()
    interp = ["interpolate", "--model", f / "interpolation", "--video", video, "--out", out]
    extend = ["extend", "--model", f / "interpolation", "--video", video, "--out", out, "--frames", 4]
    upscale = ["upscale", "--model", f / "ssr", "--video", video, "--out", out]
    gen = ["generate", "--prompt", "a cat", "--out", out, "--cascade"]
    inflate = ["inflate", "--base", assets["sd"], "--out", tmp_path / "stage"]
    argv, expected = {
        "interp-factor": (interp + ["--factor", 4], "factor 4 is not supported by --model .* trained for x2"),
        "interp-base-model": (interp[:2] + [f / "base"] + interp[3:], "is a 'base' model; `vidiff interpolate` needs a 'interpolation' or 'tsr' stage"),
        "interp-ssr-model": (interp[:2] + [f / "ssr"] + interp[3:], "is a 'ssr' model"),
        "interp-short": (interp[:4] + [one_frame] + interp[5:], "interpolation needs at least 2 frames"),
        "interp-size": (interp[:4] + [odd] + interp[5:], "the input is 18x18 pixels, but .* needs multiples of 4"),
        "interp-exists": (interp[:-1] + [tmp_path / "taken.mp4"], "taken.mp4 already exists; pass --overwrite"),
        "interp-steps": (interp + ["--steps", 0], "--steps must be between 1 and 998, got 0"),
        "interp-no-video": (interp[:4] + [tmp_path / "nope.mp4"] + interp[5:], "--video .*nope.mp4' does not exist"),
        "interp-same": (interp[:-1] + [video, "--overwrite"], "--out must differ from --video"),
        "interp-cascade-model": (interp[:2] + [f] + interp[3:], "is a whole cascade; give the folder of its"),
        "extend-frames": (extend[:-1] + [0], "--frames must be between 1 and 1000000 new frames, got 0"),
        "extend-context": (extend + ["--context-frames", 4], "--context-frames must be in \\[1, 3\\]"),
        "extend-tsr": (extend[:2] + [f / "tsr"] + extend[3:], "extension needs an interpolation stage .*; this is a 'tsr' model"),
        "upscale-level": (upscale + ["--noise-level", 400], "--noise-level must be an integer in \\[0, 350\\]"),
        "upscale-negative-level": (upscale + ["--noise-level", -1], "--noise-level must be an integer in"),
        "upscale-interp-model": (upscale[:2] + [f / "interpolation"] + upscale[3:], "`vidiff upscale` needs a 'ssr' stage \\(use `vidiff interpolate`\\)"),
        "upscale-size": (upscale[:4] + [tiny] + upscale[5:], "the x2 output is 18x18 pixels, but .* multiples of 4"),
        "gen-missing": (gen + [bad_cascades / "missing.yaml"], "stage 1: model .*nope' does not exist"),
        "gen-not-base": (gen + [bad_cascades / "not-base.yaml"], "the first stage must be a text-to-video base"),
        "gen-unknown-key": (gen + [bad_cascades / "unknown-key.yaml"], "unknown key\\(s\\) stepz"),
        "gen-factor": (gen + [bad_cascades / "factor.yaml"], "factor 4 is not supported by .* trained for x2"),
        "gen-level": (gen + [bad_cascades / "level.yaml"], "noise_level must be an integer in \\[0, 350\\] for .*level.yaml stage"),
        "gen-level-on-tsr": (gen + [bad_cascades / "level-on-tsr.yaml"], "noise_level does not apply to .*tsr, a 'tsr' model"),
        "gen-both": (gen + [f, "--model", f], "give --model or --cascade, not both"),
        "gen-keep": (gen[:-1] + ["--model", f / "base", "--keep-intermediate"], "--keep-intermediate applies to a"),
        "gen-window": (gen + [f, "--window-size", 4], "--window-size does not apply to a cascade"),
        "gen-stage-model": (gen[:-1] + ["--model", f / "ssr"], "is a ssr stage, which needs a video"),
        "gen-fit": (gen + [f, "--num-frames", 1], "interpolation needs at least 2 frames"),
        "inflate-x4-tsr": (["inflate", "--base", x4, "--out", tmp_path / "s", "--stage", "tsr"], "SD x4 upscaler"),
        "inflate-factor-base": (inflate + ["--factor", 2], "--factor applies to a cascade stage"),
        "inflate-ssr-factor": (inflate + ["--stage", "ssr", "--factor", 3], "ssr stage must be one of 2, 4, got 3"),
        "inflate-tsr-frames": (inflate + ["--stage", "tsr", "--factor", 3], "a tsr x3 stage needs num_frames \\(its window\\) a multiple of 3, got 16"),
    }[case]
    code, stdout, err = run_cli(capsys, *argv)
    assert code == 2, (stdout, err)
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"vidiff {argv[0]}: error: "), err
    import re

    assert re.search(expected, lines[0]), lines[0]
    assert not out.exists() and not (tmp_path / "stage").exists()


def test_pixel_space_cascade_saves_as_one_folder(assets, tmp_path):
    """The demo's kind of cascade: pixel-space base -> interpolation x2 -> ssr x2, saved as one folder that
    loads and samples the same clip as the YAML it came from."""
    import vidiff
    import yaml

    from vidiff.models.folder import inflate_pipeline
    from vidiff.stages.folder import inflate_stage

    small = dict(SMALL, height=8, width=8)
    inflate_pipeline(assets["pixel"], tmp_path / "base", defaults=small)
    inflate_stage(assets["pixel"], tmp_path / "interp", "interpolation", factor=2, defaults=small)
    inflate_stage(assets["pixel"], tmp_path / "ssr", "ssr", defaults=small)
    spec = tmp_path / "pixel.yaml"
    spec.write_text(yaml.safe_dump({"stages": [{"model": "base"}, {"model": "interp", "guidance": 1.0},
                                               {"model": "ssr", "guidance": 1.0}]}))
    pipe = vidiff.CascadePipeline.from_pretrained(spec, device="cpu", dtype="fp32")
    first = pipe("a red circle", num_frames=4, seed=0, progress=False)
    assert first.shape == (7, 16, 16, 3)  # (4 - 1) x 2 + 1 frames, 8 px x 2
    pipe.save_pretrained(tmp_path / "folder")
    assert sorted(p.name for p in (tmp_path / "folder").iterdir()) == ["00-base", "01-interpolation", "02-ssr",
                                                                       "cascade.yaml"]
    reloaded = vidiff.CascadePipeline.from_pretrained(tmp_path / "folder", device="cpu", dtype="fp32")
    assert np.array_equal(reloaded("a red circle", num_frames=4, seed=0, progress=False), first)
    with pytest.raises(FileExistsError, match="not a cascade folder"):
        pipe.save_pretrained(tmp_path / "interp")  # never replaces a folder it did not write


def test_each_stage_encodes_the_prompt_with_its_own_text_encoder(cascade, bad_cascades, monkeypatch):
    """A stage made from another text model (a base trained with its text encoder, stages from the original)
    loads, and every stage conditions on its own encoder's embeddings of the prompt."""
    import yaml

    from vidiff.pipelines import text_to_video
    from vidiff.pipelines.cascade import CascadePipeline

    file = bad_cascades / "own-encoders.yaml"
    file.write_text(yaml.safe_dump({"stages": [{"model": str(cascade["folder"] / "base")},
                                               {"model": str(bad_cascades / "other-ssr")}]}))
    pipe = CascadePipeline.from_pretrained(file)
    used = []
    encode = text_to_video.VideoPipeline.encode_prompt

    def recording(self, *args, **kwargs):
        embeddings = encode(self, *args, **kwargs)
        used.append((self.text_encoder, embeddings[0] if isinstance(embeddings, tuple) else embeddings))
        return embeddings

    monkeypatch.setattr(text_to_video.VideoPipeline, "encode_prompt", recording)
    clip = pipe("a red circle", seed=0, num_inference_steps=2, progress=False)
    assert clip.shape[0] == pipe.plan()[-1][0]
    assert [encoder for encoder, _ in used] == [p.text_encoder for p in pipe.pipelines]
    assert not torch.allclose(used[0][1], used[1][1])  # two encoders, two embeddings of the same prompt


def test_pixel_space_ssr_is_conditioned_as_in_training(assets, tmp_path, monkeypatch):
    """A pixel-space ssr stage sees the low-res frames enlarged: exactly the condition training derives from the
    high-res clip (reduced, enlarged). Reducing the enlarged frames once more would blur it (what it did before)."""
    from vidiff.pipelines import cascade as cascade_mod
    from vidiff.pipelines.text_to_video import VideoPipeline
    from vidiff.stages import cascade as stage_cascade
    from vidiff.stages.conditions import augmentation_alphas
    from vidiff.stages.folder import inflate_stage

    folder = inflate_stage(assets["pixel"], tmp_path / "ssr", "ssr", factor=2, defaults=SMALL)
    pipe = VideoPipeline.from_pretrained(folder)
    high = torch.rand(1, 3, 2, 16, 16, generator=torch.Generator().manual_seed(0)) * 2 - 1
    low = torch.nn.functional.avg_pool3d(high, (1, 2, 2))
    seen = {}

    def record(pipe_, prompts, condition, size, settings, generators, **extra):
        seen["condition"] = condition
        raise StopIteration

    monkeypatch.setattr(stage_cascade, "sample_stage", record)
    with pytest.raises(StopIteration):
        cascade_mod.upscale_video(pipe, low, "a red circle", noise_level=0, seed=0,
                                  condition_noise=torch.zeros(1, 3, 2, 16, 16))
    expected = augmentation_alphas()[0].sqrt() * ssr_condition(high, 2)
    torch.testing.assert_close(seen["condition"], expected, atol=1e-6, rtol=0)


def test_stage_runs_refuse_unknown_settings(assets, tmp_path, monkeypatch):
    """A misspelt setting (diffusers' `num_inference_steps` for `steps`) is refused before sampling, not dropped."""
    from vidiff.pipelines import cascade as cascade_mod
    from vidiff.pipelines.text_to_video import VideoPipeline
    from vidiff.stages import cascade as stage_cascade
    from vidiff.stages.folder import inflate_stage

    folder = inflate_stage(assets["pixel"], tmp_path / "ssr", "ssr", factor=2, defaults=SMALL)
    pipe = VideoPipeline.from_pretrained(folder)
    monkeypatch.setattr(stage_cascade, "sample_stage", lambda *a, **k: pytest.fail("sampled"))
    low = torch.zeros(1, 3, 2, 8, 8)
    with pytest.raises(TypeError, match="unknown stage setting.*num_inference_steps.*takes steps"):
        cascade_mod.upscale_video(pipe, low, "a red circle", num_inference_steps=40)
    with pytest.raises(TypeError, match="unknown stage setting.*guidance_scale"):
        cascade_mod.extend_video(pipe, low, "a red circle", num_frames=2, guidance_scale=2.0)


@pytest.mark.parametrize("stage, window, frames_in, frames_out", [("interpolation", 9, 2, 3), ("tsr", 10, 1, 2)])
def test_clips_shorter_than_half_the_window_run(assets, tmp_path, stage, window, frames_in, frames_out):
    """A stage trained on 9-frame windows takes a 2-keyframe clip (3 frames out): the window stride is capped
    at the clip's own window, not the trained one (it failed with `window_stride (4) must not exceed ... (3)`)."""
    from vidiff.pipelines.cascade import interpolate_video
    from vidiff.stages.folder import inflate_stage

    folder = inflate_stage(assets["pixel"], tmp_path / stage, stage, factor=2, defaults={**SMALL, "num_frames": window})
    video = torch.rand(1, 3, frames_in, 16, 16, generator=torch.Generator().manual_seed(3)) * 2 - 1
    out = interpolate_video(load(folder), video, "", factor=2, seed=0, guidance=1.0, progress=False)
    assert out.shape == (1, 3, frames_out, 16, 16)


def test_a_cascade_height_that_breaks_a_stage_rule_names_the_stage_and_the_heights_that_work(capsys, monkeypatch):
    """Issue 24: `generate --height 30` on the built-in demo cascade: one line, before any model loads, saying
    --height is the base's (the cascade doubles it), that the base needs multiples of 4, and the nearest heights
    that work with what they make; a later stage's rule (here an SSR needing multiples of 16 of its output) is
    blamed on that stage."""
    import dataclasses

    from vidiff.pipelines import cascade as cascade_module
    from vidiff.pipelines.text_to_video import VideoPipeline

    monkeypatch.setattr(VideoPipeline, "from_pretrained", lambda *a, **k: pytest.fail("loaded a model"))
    code, _, err = run_cli(capsys, "generate", "--prompt", "a red circle moving left", "--height", 30, "--out",
                           "never.mp4")
    assert code == 2 and err.count("error:") == 1 and err.endswith("\n"), err
    err = err.splitlines()[-1]  # (after the "using the built-in demo model" note)
    assert "--height 30 sets the base's height (the cascade makes 2x that: 30 -> 60)" in err
    assert "the base (" in err and "needs a multiple of 4" in err
    assert "nearest that work: --height 28 (output 56) or 32 (output 64)" in err
    specs = cascade_module.read_cascade(REPO / "configs" / "cascade" / "demo.yaml")
    ssr = specs[2]
    specs[2] = dataclasses.replace(ssr, info=dataclasses.replace(ssr.info, unet_spatial_factor=16))
    cascade_module.check_cascade_side(specs, 8, "--width", 32)  # fits: 32 -> 64
    with pytest.raises(ValueError, match=r"--width 36 sets the base's width .*, but stage 2 \(ssr, .*\) needs the "
                                         r"sizes it takes and makes to be multiples of 16 .*--width 32 \(output 64\) "
                                         r"or 40 \(output 80\)"):
        cascade_module.check_cascade_side(specs, 8, "--width", 36)


# ---------------------------------------------------------------------------------------------------------------
# long inputs, streamed (issue 24): read, sampled and written --chunk-frames at a time
# ---------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("frames, chunk, overlap", [(5, 8, 0), (9, 4, 1), (10, 4, 0), (100, 64, 1), (65, 64, 1)])
def test_chunk_bounds_cover_the_clip_once(frames, chunk, overlap):
    from vidiff.data.video_io import chunk_bounds

    bounds = chunk_bounds(frames, chunk, overlap)
    assert bounds[0][0] == 0 and bounds[-1][1] == frames
    assert all(overlap < end - start <= chunk for start, end in bounds)
    assert all(a[1] - b[0] == overlap for a, b in zip(bounds, bounds[1:]))  # neighbours share `overlap` frames
    sizes = [end - start for start, end in bounds]
    assert max(sizes) - min(sizes) <= 1  # even: no short last chunk
    with pytest.raises(ValueError, match="cannot share"):
        chunk_bounds(frames, overlap, overlap)


def test_long_inputs_are_streamed_in_chunks(cascade, tmp_path, capsys):
    """interpolate / upscale of an input longer than --chunk-frames: chunk by chunk (each read seeks to its
    range), one noise stream, the shared keyframe written once; the result is the Python API's
    `run_stage_chunks`, whose first chunk is `run_stage` with the same seed."""
    from vidiff.data import read_video, write_video
    from vidiff.data.video_io import chunk_bounds, iter_chunks, probe_video
    from vidiff.pipelines.cascade import run_stage, run_stage_chunks

    video = tmp_path / "long.mp4"
    write_video(video, (torch.rand(9, 16, 16, 3, generator=torch.Generator().manual_seed(5)) * 255)
                .to(torch.uint8).numpy(), fps=10)
    source, info = read_video(video).frames, probe_video(video)
    assert np.array_equal(np.concatenate([c[1 * (i > 0):] for i, c in enumerate(iter_chunks(video, info, 4, 1))]),
                          source)
    code, out, _ = run_cli(capsys, "interpolate", "--model", cascade["folder"] / "interpolation", "--video", video,
                           "--chunk-frames", 4, "--seed", 3, "--quiet", "--contact-sheet", "--out", tmp_path / "interp")
    assert code == 0 and "3 chunks of <= 4" in out and "17 frames 16x16 @ 20 fps" in out
    frames = png_frames(tmp_path / "interp")
    assert frames.shape == (17, 16, 16, 3) and np.array_equal(frames[::2], source)  # every keyframe exact, once
    sidecar = json.loads((tmp_path / "interp.json").read_text())
    assert sidecar["chunk_frames"] == 4 and sidecar["num_frames"] == 17 and sidecar["input_frames"] == 9
    assert (sidecar["chunks"], sidecar["unet_evaluations"]) == (3, sidecar["steps"])  # a chunk's, guidance 1
    assert (tmp_path / "interp.png").is_file()
    pipe = load(cascade["folder"] / "interpolation")
    settings = {"steps": 2, "guidance": 1.0, "scheduler": "ddim", "progress": False}
    chunks = [source[a:b] for a, b in chunk_bounds(9, 4, 1)]
    api = list(run_stage_chunks(pipe, iter(chunks), "", seed=3, factor=2, **settings))
    assert np.array_equal(np.concatenate(api), frames)
    first = run_stage(pipe, chunks[0], "", seed=3, factor=2, **settings)
    assert torch.equal(as_uint8(first), torch.from_numpy(api[0]))
    assert not np.array_equal(api[1][1::2], api[0][1:len(api[1]):2])  # the noise runs on: no repeated draws

    code, out, _ = run_cli(capsys, "upscale", "--model", cascade["folder"] / "ssr", "--video", video,
                           "--chunk-frames", 4, "--seed", 1, "--quiet", "--out", tmp_path / "up.mp4")
    assert code == 0 and read_video(tmp_path / "up.mp4").frames.shape == (9, 32, 32, 3)
    assert json.loads((tmp_path / "up.json").read_text())["chunk_frames"] == 4


def test_a_long_input_is_extended_from_its_last_frames_and_copied_in_chunks(cascade, tmp_path, capsys):
    """extend of an input longer than --chunk-frames decodes only its last context frames for the stage and
    copies the input chunk by chunk: the clip equals the whole-input extension, frame for frame."""
    from vidiff.data import write_video

    video = tmp_path / "long.mp4"
    write_video(video, (torch.rand(9, 16, 16, 3, generator=torch.Generator().manual_seed(6)) * 255)
                .to(torch.uint8).numpy(), fps=10)
    common = ["extend", "--model", cascade["folder"] / "interpolation", "--video", video, "--frames", 3,
              "--seed", 2, "--quiet"]
    code, out, _ = run_cli(capsys, *common, "--out", tmp_path / "whole")
    assert code == 0
    code, out, _ = run_cli(capsys, *common, "--chunk-frames", 4, "--contact-sheet", "--out", tmp_path / "streamed")
    assert code == 0 and "input copied 4 frames at a time" in out and "12 frames 16x16" in out
    whole, streamed = png_frames(tmp_path / "whole"), png_frames(tmp_path / "streamed")
    assert streamed.shape == (12, 16, 16, 3) and np.array_equal(whole, streamed)
    sidecar = json.loads((tmp_path / "streamed.json").read_text())
    assert sidecar["chunk_frames"] == 4 and sidecar["input_frames"] == 9 and sidecar["num_frames"] == 12
    assert (tmp_path / "streamed.png").is_file()


def as_uint8(video):
    from vidiff.pipelines.text_to_video import to_uint8

    return torch.from_numpy(to_uint8(video[0]))


def test_a_streamed_input_is_sized_by_its_chunk():
    """The memory estimate of a streamed clip counts the chunk held at once, not the whole clip; the frame
    limit still counts the whole clip (--allow-large lifts it)."""
    from vidiff.spec import RequestTooLarge, check_request_size

    clips = [("--video", 4000, 256, 256), ("the output", 4000, 512, 512)]  # (~20 GiB)
    with pytest.raises(RequestTooLarge, match="GiB"):  # (over the limit, or over this machine's memory)
        check_request_size(clips)
    held = check_request_size(clips, held=64 / 4000)
    assert held == 64 * (256 * 256 + 512 * 512) * check_request_size([("one pixel", 1, 1, 1)])
    with pytest.raises(RequestTooLarge, match="frames a clip"):
        check_request_size([("--video", 18_000, 64, 64)], held=64 / 18_000)
