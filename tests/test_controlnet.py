"""ControlNets beside the video U-Net (vidiff.control): against diffusers' ControlNetModel + UNet2DConditionModel
frame by frame and StableDiffusionControlNetPipeline; the loaders and fit checks; the canny extractor; the CLI."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from diffusers import ControlNetModel, UNet2DConditionModel

from vidiff import VideoPipeline
from vidiff.control import Control, VideoControlNet, canny, check_fits, control_images, read_controlnet
from vidiff.models.unet import VideoUNet
from vidiff.models.weights import LoadingError
from vidiff.testing import TINY_UNET, make_tiny_sd_pipeline, make_tiny_video_pipeline

pytestmark = pytest.mark.usefixtures("one_thread")

PROMPT = "a red circle moving right"
EMBEDDING_CHANNELS = (8, 16)  # the tiny control-image encoder shrinks pixels 2x, as the tiny VAE does


def noise(shape, seed=0):
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed))


def tiny_controlnet(unet2d, seed=0) -> ControlNetModel:
    """diffusers' ControlNetModel.from_unet with random (not zero) zero-convolutions, so the residuals matter."""
    torch.manual_seed(seed)
    controlnet = ControlNetModel.from_unet(unet2d, conditioning_embedding_out_channels=EMBEDDING_CHANNELS)
    with torch.no_grad():
        for module in [*controlnet.controlnet_down_blocks, controlnet.controlnet_mid_block,
                       controlnet.controlnet_cond_embedding.conv_out]:
            for p in module.parameters():
                p.normal_(0, 0.3)
    return controlnet.eval()


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("controlnet")
    sd = make_tiny_sd_pipeline(root / "sd", seed=0)
    video = make_tiny_video_pipeline(root / "video", seed=0)
    controlnet = tiny_controlnet(UNet2DConditionModel.from_pretrained(str(sd / "unet")))
    controlnet.save_pretrained(str(root / "controlnet"))
    return sd, video, root / "controlnet"


@pytest.fixture(scope="module")
def pipe(folders):
    return VideoPipeline.from_pretrained(folders[1], device="cpu")


@pytest.fixture(scope="module")
def controlnet(folders):
    return read_controlnet(folders[2])


# ------------------------------------------------------------------------------------------------ the U-Net
def test_residuals_match_diffusers_frame_by_frame():
    """A fresh inflation (temporal layers = identity) + the ControlNet on every frame equals diffusers'
    UNet2DConditionModel + the same ControlNet on each frame as an image."""
    torch.manual_seed(0)
    unet2d = UNet2DConditionModel(**TINY_UNET).eval()
    controlnet = tiny_controlnet(unet2d, seed=1)
    video = VideoUNet.from_2d_weights(dict(unet2d.config), unet2d.state_dict()).eval()
    b, f = 2, 3
    x, text, images = noise((b, 4, f, 8, 8)), noise((b, 7, 32), 1), torch.rand(b, 3, f, 16, 16)
    t = torch.tensor(500)
    with torch.no_grad():
        ours = video(x, t, text, **VideoControlNet(controlnet)(x, t, text, images, 0.7))
        reference = torch.empty_like(ours)
        for i in range(b):
            for j in range(f):
                down, mid = controlnet(x[i:i + 1, :, j], t, text[i:i + 1], controlnet_cond=images[i:i + 1, :, j],
                                       conditioning_scale=0.7, return_dict=False)
                reference[i:i + 1, :, j] = unet2d(x[i:i + 1, :, j], t, text[i:i + 1], return_dict=False,
                                                  down_block_additional_residuals=down,
                                                  mid_block_additional_residual=mid)[0]
        plain = video(x, t, text)
    torch.testing.assert_close(ours, reference, atol=1e-5, rtol=0)
    assert (ours - plain).abs().max() > 1e-2  # the residuals do something


def test_scale_zero_is_the_model_without_controlnet(pipe, controlnet):
    latents = noise((1, 4, 3, 8, 8))
    control = Control(VideoControlNet(controlnet), torch.rand(1, 3, 3, 16, 16), scale=0.0)
    kwargs = dict(num_frames=3, num_inference_steps=2, guidance_scale=3.0, latents=latents, output_type="latent",
                  progress=False)
    assert torch.equal(pipe(PROMPT, control=control, **kwargs), pipe(PROMPT, **kwargs))
    steered = pipe(PROMPT, control=Control(control.controlnet, control.images, scale=1.0), **kwargs)
    assert (steered - pipe(PROMPT, **kwargs)).abs().max() > 1e-3


def test_residuals_accept_both_layouts_and_are_checked():
    torch.manual_seed(0)
    unet2d = UNet2DConditionModel(**TINY_UNET).eval()
    video = VideoUNet.from_2d_weights(dict(unet2d.config), unet2d.state_dict()).eval()
    x, text, t = noise((1, 4, 2, 8, 8)), noise((1, 7, 32), 1), torch.tensor(10)
    with torch.no_grad():
        residuals = VideoControlNet(tiny_controlnet(unet2d))(x, t, text, torch.rand(1, 3, 2, 16, 16))
        folded = video(x, t, text, **residuals)
        as_video = {"down_block_additional_residuals": [r.reshape(1, 2, *r.shape[1:]).transpose(1, 2)
                                                        for r in residuals["down_block_additional_residuals"]],
                    "mid_block_additional_residual": residuals["mid_block_additional_residual"]}
        torch.testing.assert_close(video(x, t, text, **as_video), folded, atol=0, rtol=0)
        with pytest.raises(ValueError, match="skip connections"):
            video(x, t, text, down_block_additional_residuals=residuals["down_block_additional_residuals"][:-1])


# ------------------------------------------------------------------------------------------------ the pipeline
def test_pipeline_matches_diffusers_controlnet_pipeline_frame_by_frame(folders, pipe, controlnet):
    """Same latents, prompt, negative prompt, guidance and DDIM steps: each frame of the clip is the image
    StableDiffusionControlNetPipeline makes from that frame's control image (the ControlNet on both CFG halves)."""
    from diffusers import StableDiffusionControlNetPipeline

    sd = StableDiffusionControlNetPipeline.from_pretrained(str(folders[0]), controlnet=controlnet,
                                                           safety_checker=None, requires_safety_checker=False)
    sd.set_progress_bar_config(disable=True)
    f = 3
    latents, images = noise((1, 4, f, 8, 8)), torch.rand(1, 3, f, 16, 16, generator=torch.Generator().manual_seed(3))
    ours = pipe(PROMPT, num_frames=f, height=16, width=16, num_inference_steps=3, guidance_scale=5.0,
                negative_prompt="blue square", latents=latents, output_type="pt", progress=False,
                control=Control(VideoControlNet(controlnet), images, scale=0.8))
    frames = sd([PROMPT] * f, image=images[0].transpose(0, 1), height=16, width=16, num_inference_steps=3,
                guidance_scale=5.0, negative_prompt=["blue square"] * f, latents=latents[0].transpose(0, 1),
                controlnet_conditioning_scale=0.8, output_type="pt").images                   # (f, 3, h, w) in [0, 1]
    reference = frames.permute(1, 0, 2, 3) * 2 - 1
    print("max abs difference against StableDiffusionControlNetPipeline:", (ours[0] - reference).abs().max().item())
    torch.testing.assert_close(ours[0], reference, atol=2e-4, rtol=0)


def test_windows_slice_the_control_frames(pipe, controlnet):
    """With identity temporal layers frames are independent, so windows of 2 (stride 1) must give the whole
    clip's result: only if each window gets its own frames' control images."""
    latents, images = noise((1, 4, 4, 8, 8), 2), torch.rand(1, 3, 4, 16, 16)
    control = Control(VideoControlNet(controlnet), images)
    kwargs = dict(num_frames=4, num_inference_steps=2, guidance_scale=3.0, latents=latents, output_type="latent",
                  progress=False, control=control)
    whole = pipe(PROMPT, **kwargs)
    torch.testing.assert_close(pipe(PROMPT, window_size=2, window_stride=1, **kwargs), whole, atol=1e-5, rtol=0)


def test_cross_frame_first_reads_frame_zero(controlnet):
    """cross_frame="first": every frame's self-attention reads frame 0's keys and values, so a clip whose frames
    all equal frame 0 gives frame 0's residuals everywhere, and frame 0 is unchanged by the mode."""
    x, text, t = noise((1, 4, 3, 8, 8)), noise((1, 7, 32), 1), torch.tensor(300)
    images = torch.rand(1, 3, 3, 16, 16)
    per_frame = VideoControlNet(controlnet, cross_frame="none")
    first = VideoControlNet(controlnet, cross_frame="first")
    with torch.no_grad():
        a = per_frame(x, t, text, images)["mid_block_additional_residual"]
        b = first(x, t, text, images)["mid_block_additional_residual"]
        again = per_frame(x, t, text, images)["mid_block_additional_residual"]  # (they share the ControlNet)
    torch.testing.assert_close(again, a, atol=0, rtol=0)
    torch.testing.assert_close(b[0], a[0], atol=1e-6, rtol=0)
    assert (b[1:] - a[1:]).abs().max() > 1e-4


# ------------------------------------------------------------------------------------------------ loading
def test_loading_checks_and_single_file(folders, pipe, controlnet, tmp_path):
    from safetensors.torch import save_file

    config = dict(controlnet.config)
    check_fits(config, pipe.unet.config, "cn", vae_scale_factor=2)
    with pytest.raises(LoadingError, match="cross_attention_dim is 64, the U-Net's 32"):
        check_fits({**config, "cross_attention_dim": 64}, pipe.unet.config, "cn")
    with pytest.raises(LoadingError, match="shrinks control images 2x, this model's VAE 8x"):
        check_fits(config, pipe.unet.config, "cn", vae_scale_factor=8)
    single = tmp_path / "cn.safetensors"
    save_file({k: v.contiguous() for k, v in controlnet.state_dict().items()}, str(single))
    loaded = read_controlnet(single, config=folders[2])
    assert all(torch.equal(v, controlnet.state_dict()[k]) for k, v in loaded.state_dict().items())
    with pytest.raises(ValueError, match="without a config"):
        read_controlnet(single)
    with pytest.raises(LoadingError, match="not a ControlNetModel"):
        read_controlnet(folders[0] / "unet")


# ------------------------------------------------------------------------------------------------ extractors
def test_canny_finds_the_border_of_a_shape():
    """A white square on black: the edges lie on its border (within a pixel of where a plain finite-difference
    gradient is non-zero) and every side of it is found."""
    frame = np.zeros((32, 32, 3), np.uint8)
    frame[8:24, 10:22] = 255
    edges = canny(torch.from_numpy(frame).permute(2, 0, 1)[None].float() / 255)[0, 0].numpy() > 0
    gray = frame[..., 0].astype(float)
    gradient = np.zeros_like(gray)
    gradient[:, 1:] += np.abs(np.diff(gray, axis=1))
    gradient[:, :-1] += np.abs(np.diff(gray, axis=1))
    gradient[1:] += np.abs(np.diff(gray, axis=0))
    gradient[:-1] += np.abs(np.diff(gray, axis=0))
    border = gradient > 0
    near = np.zeros_like(border)
    for dy in (-1, 0, 1):
        for dx in (-1, 0, 1):
            near |= np.roll(np.roll(border, dy, 0), dx, 1)
    assert edges.any() and not (edges & ~near).any()
    for side in (edges[7:10, 10:22], edges[22:25, 10:22], edges[8:24, 9:12], edges[8:24, 20:23]):
        assert side.any(axis=0 if side.shape[0] == 3 else 1).mean() > 0.8
    assert not edges[12:20, 14:18].any()  # nothing inside


def test_control_images_resize_and_raw():
    frames = np.random.default_rng(0).integers(0, 256, (3, 20, 24, 3), dtype=np.uint8)
    raw = control_images(frames, "raw", 16, 16)
    assert raw.shape == (1, 3, 3, 16, 16) and 0 <= raw.min() and raw.max() <= 1
    same = control_images(frames, "raw", 20, 24)
    torch.testing.assert_close(same[0, :, 1], torch.from_numpy(frames[1]).permute(2, 0, 1).float() / 255)
    edges = control_images(frames, "canny", 16, 16)
    assert set(edges.unique().tolist()) <= {0.0, 1.0}
    with pytest.raises(ValueError, match="control"):
        control_images(frames, "depth", 16, 16)


# ------------------------------------------------------------------------------------------------ the CLI
@pytest.fixture(scope="module")
def control_clip(tmp_path_factory):
    from vidiff.data.video_io import write_video

    frames = np.zeros((4, 20, 20, 3), np.uint8)
    for i in range(4):
        frames[i, 4:14, 2 + 2 * i:12 + 2 * i] = 255  # a square moving right
    return write_video(tmp_path_factory.mktemp("clip") / "control.mp4", frames, fps=8)


def run_cli(capsys, *argv):
    from vidiff.cli import main

    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


@pytest.mark.parametrize("kind", ["canny", "raw"])
def test_cli_generates_with_a_controlnet(folders, control_clip, tmp_path, capsys, kind):
    from vidiff.data import read_video

    out = tmp_path / "clip.mp4"
    code, stdout, err = run_cli(capsys, "generate", "--model", folders[1], "--controlnet", folders[2],
                                "--control-video", control_clip, "--control", kind, "--control-scale", 0.5,
                                "--prompt", PROMPT, "--num-frames", 3, "--steps", 2, "--seed", 1, "--quiet",
                                "--out", out)
    assert code == 0, err
    assert read_video(out).frames.shape == (3, 16, 16, 3)
    sidecar = json.loads(out.with_suffix(".json").read_text())
    assert sidecar["control"] == kind and sidecar["control_scale"] == 0.5
    assert sidecar["controlnet"] == str(folders[2].resolve()) and sidecar["control_video"].endswith("control.mp4")


def test_cli_edit_takes_its_control_from_the_clip_and_the_kind_from_a_vidiff_controlnet(folders, control_clip,
                                                                                       tmp_path, capsys):
    """`vidiff edit --controlnet` without --control-video steers with the edited clip's own control images
    (Gen-1: its structure, the prompt's content); a ControlNet vidiff trained says its --control."""
    import shutil

    from vidiff.control import RECORD_NAME
    from vidiff.data import read_video

    trained = tmp_path / "trained-cn"
    shutil.copytree(folders[2], trained)
    (trained / RECORD_NAME).write_text(json.dumps({"extractor": "canny"}))
    common = ["edit", "--model", folders[1], "--video", control_clip, "--prompt", PROMPT, "--num-frames", 3,
              "--steps", 2, "--strength", 0.8, "--seed", 1, "--quiet"]
    code, _, err = run_cli(capsys, *common, "--out", tmp_path / "plain.mp4")
    assert code == 0, err
    code, _, err = run_cli(capsys, *common, "--controlnet", trained, "--out", tmp_path / "steered.mp4")
    assert code == 0, err
    sidecar = json.loads((tmp_path / "steered.json").read_text())
    assert sidecar["control"] == "canny" and sidecar["control_video"] == str(control_clip.resolve())
    plain, steered = read_video(tmp_path / "plain.mp4").frames, read_video(tmp_path / "steered.mp4").frames
    assert plain.shape == steered.shape == (3, 16, 16, 3) and not np.array_equal(plain, steered)
    code, _, err = run_cli(capsys, *common, "--controlnet", folders[2], "--out", tmp_path / "x.mp4")
    assert code == 2 and "--controlnet needs --control canny | track | depth-map | raw" in err  # (not trained by vidiff)


CLI_ERRORS = {
    "no-controlnet": (["--control-video", "{clip}", "--control", "canny"], "--control-video applies to a ControlNet"),
    "scale-alone": (["--control-scale", "0.5"], "--control-scale applies to a ControlNet: add --controlnet"),
    "no-video": (["--controlnet", "{cn}", "--control", "canny"], "--controlnet needs --control-video"),
    "no-kind": (["--controlnet", "{cn}", "--control-video", "{clip}"], "--controlnet needs --control canny | track | depth-map | raw"),
    "bad-kind": (["--controlnet", "{cn}", "--control-video", "{clip}", "--control", "depth"],
                 "--control must be one of canny, track, depth-map, raw, got 'depth'"),
    "scale": (["--controlnet", "{cn}", "--control-video", "{clip}", "--control", "raw", "--control-scale", "-1"],
              "--control-scale must be between 0 and 10"),
    "missing-cn": (["--controlnet", "{tmp}/nope", "--control-video", "{clip}", "--control", "raw"],
                   "--controlnet '{tmp}/nope' does not exist"),
    "not-a-cn": (["--controlnet", "{sd}/unet", "--control-video", "{clip}", "--control", "raw"],
                 "not a ControlNetModel"),
    "misfit": (["--controlnet", "{tmp}/wide", "--control-video", "{clip}", "--control", "raw"],
               "its cross_attention_dim is 64, the U-Net's 32"),
    "single-no-config": (["--controlnet", "{tmp}/cn.safetensors", "--control-video", "{clip}", "--control", "raw"],
                         "without a config"),
    "missing-video": (["--controlnet", "{cn}", "--control-video", "{tmp}/none.mp4", "--control", "raw"],
                      "--control-video '{tmp}/none.mp4' does not exist"),
    "unreadable-video": (["--controlnet", "{cn}", "--control-video", "{tmp}/bad.mp4", "--control", "raw"],
                         "is not readable"),
    "short-video": (["--controlnet", "{cn}", "--control-video", "{clip}", "--control", "raw", "--num-frames", "6"],
                    "has 4 frames, fewer than the 6 of the clip"),
    "zero-shot": (["--controlnet", "{cn}", "--control-video", "{clip}", "--control", "raw", "--zero-shot"],
                  "--controlnet does not combine with --zero-shot"),
}


@pytest.mark.parametrize("case", sorted(CLI_ERRORS))
def test_cli_bad_control_input_is_one_line_before_loading(folders, control_clip, tmp_path, capsys, monkeypatch,
                                                          case):
    def no_loading(*args, **kwargs):
        raise AssertionError("the model was loaded before the input was checked")

    monkeypatch.setattr(VideoPipeline, "from_pretrained", no_loading)
    (tmp_path / "bad.mp4").write_bytes(b"not a video at all")
    (tmp_path / "cn.safetensors").write_bytes(b"")
    wide = json.loads((folders[2] / "config.json").read_text())
    (tmp_path / "wide").mkdir()
    (tmp_path / "wide" / "config.json").write_text(json.dumps({**wide, "cross_attention_dim": 64}))
    names = {"clip": control_clip, "cn": folders[2], "sd": folders[0], "tmp": tmp_path}
    extra, match = CLI_ERRORS[case]
    extra, match = [e.format(**names) for e in extra], match.format(**names)
    code, _, err = run_cli(capsys, "generate", "--model", folders[1], "--prompt", PROMPT, "--steps", 1,
                           "--out", tmp_path / "clip.mp4", *extra)
    assert code == 2, err
    assert match in err and err.startswith("vidiff generate: error:"), err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert not (tmp_path / "clip.mp4").exists() and not (tmp_path / "clip.json").exists()


def _to_original_layout(controlnet: ControlNetModel) -> dict:
    """A diffusers ControlNet's weights in the original ControlNet release's single-file keys (`control_model.*`:
    the SD U-Net encoder's LDM names, `zero_convs.i.0`, `middle_block_out.0`, `input_hint_block.n`)."""
    from vidiff.testing import _unet_key_to_ldm

    per_block, out = controlnet.config.layers_per_block + 1, {}
    for key, value in controlnet.state_dict().items():
        *path, leaf = key.split(".")
        if path[0] == "controlnet_down_blocks":
            new = f"zero_convs.{path[1]}.0.{leaf}"
        elif path[0] == "controlnet_mid_block":
            new = f"middle_block_out.0.{leaf}"
        elif path[0] == "controlnet_cond_embedding":  # conv, SiLU, conv, SiLU, ... in one nn.Sequential
            index = {"conv_in": 0, "conv_out": 14}[path[1]] if path[1] != "blocks" else 2 * (int(path[2]) + 1)
            new = f"input_hint_block.{index}.{leaf}"
        else:
            new = _unet_key_to_ldm(key, per_block)
        out["control_model." + new] = value.contiguous()
    return out


def test_original_single_file_loads_with_a_config_folder(folders, tmp_path):
    """An SD 1.5-style single-file ControlNet (original keys, the SD control encoder of 8 layers) read with a local
    diffusers config folder equals the model it was written from."""
    from safetensors.torch import save_file

    unet2d = UNet2DConditionModel.from_pretrained(str(folders[0] / "unet"))
    torch.manual_seed(4)
    reference = ControlNetModel.from_unet(unet2d)  # conditioning_embedding_out_channels (16, 32, 96, 256), SD's
    reference.save_pretrained(str(tmp_path / "config"))
    save_file(_to_original_layout(reference), str(tmp_path / "control_sd15_tiny.safetensors"))
    loaded = read_controlnet(tmp_path / "control_sd15_tiny.safetensors", config=tmp_path / "config")
    expected = reference.state_dict()
    assert loaded.state_dict().keys() == expected.keys()
    assert all(torch.equal(v, expected[k]) for k, v in loaded.state_dict().items())


# ------------------------------------------------------------------------------------------------ the track extractor
def test_track_puts_a_dot_where_the_shape_is_and_nothing_on_a_blank_frame():
    from vidiff.control import track
    from vidiff.data.synthetic import make_clip
    from vidiff.eval.shapes import trajectory

    clip = make_clip("green", "triangle", "moving left", num_frames=4, size=32, seed=3)
    clip = np.concatenate([clip, np.full_like(clip[:1], clip[0, 0, 0])])  # + a frame of background only
    images = control_images(clip, "track", 32, 32)                         # (1, 3, f, 32, 32)
    dots = (images[0].permute(1, 2, 3, 0).numpy() * 255).round().astype(np.uint8)
    found, wanted = trajectory(dots[:4]), trajectory(clip[:4])
    assert np.abs(found - wanted).max() < 0.5                              # the dot's centre is the shape's
    assert float(images[0, :, 4].max()) == 0.0                             # nothing stands out: black
    radius = np.sqrt(images[0, 0, 0].sum().item() / np.pi)
    assert 1.5 < radius < 2.6                                              # 1/16 of 32 px, anti-aliased rim
    with pytest.raises(ValueError, match="control must be one of"):
        control_images(clip, "depth", 32, 32)
    assert torch.equal(track(torch.zeros(2, 3, 8, 8)), torch.zeros(2, 3, 8, 8))


def test_depth_map_reads_grey_levels_in_three_channels():
    frames = np.zeros((2, 8, 8, 3), np.uint8)
    frames[0, :, :4] = (255, 0, 0)                       # red: luma 0.299
    frames[1] = 128                                      # grey stays grey
    images = control_images(frames, "depth-map", 8, 8)[0]   # (3, f, 8, 8)
    assert images.shape == (3, 2, 8, 8) and torch.equal(images[0], images[2])
    assert abs(float(images[0, 0, 0, 0]) - 0.299) < 1e-6 and float(images[0, 0, 0, 7]) == 0.0
    assert abs(float(images[1, 1, 3, 3]) - 128 / 255) < 1e-6


# ------------------------------------------------------------------------------------------------ training
def test_controlnet_from_unet_copies_the_encoder_as_diffusers_does(folders):
    """The ControlNet made from a VideoUNet holds the weights diffusers' ControlNetModel.from_unet copies from the
    2D U-Net, its zero convolutions are zero, and so at step 0 the steered U-Net is the U-Net."""
    from vidiff.training.control import ControlledUNet, controlnet_from_unet

    sd, video, _ = folders
    unet = VideoUNet.from_pretrained(str(video / "unet"))
    ours = controlnet_from_unet(unet, vae_scale_factor=2)
    theirs = ControlNetModel.from_unet(UNet2DConditionModel.from_pretrained(str(sd / "unet")),
                                       conditioning_embedding_out_channels=(16, 32))
    mine, reference = ours.state_dict(), theirs.state_dict()
    assert mine.keys() == reference.keys()
    copied = [k for k in mine if not k.startswith(("controlnet_", "controlnet_cond_embedding."))]
    assert len(copied) > 20 and all(torch.equal(mine[k], reference[k]) for k in copied)
    zero = [k for k in mine if k.startswith(("controlnet_down_blocks", "controlnet_mid_block",
                                             "controlnet_cond_embedding.conv_out"))]
    assert zero and all(not mine[k].any() for k in zero)
    steered = ControlledUNet(unet, ours).eval()
    x, t, c = noise((1, 4, 3, 8, 8)), torch.tensor([500]), noise((1, 7, TINY_UNET["cross_attention_dim"]), 1)
    with torch.no_grad():
        assert torch.equal(steered(x, t, c, control_images=torch.rand(1, 3, 3, 16, 16)), unet(x, t, c))
    with pytest.raises(ValueError, match="1, 2, 4 or 8"):
        controlnet_from_unet(unet, vae_scale_factor=3)


def controlnet_run_config(out, assets, *overrides):
    from pathlib import Path

    from vidiff.config import load_config

    tiny = Path(__file__).resolve().parents[1] / "configs" / "train" / "tiny.yaml"
    return load_config(tiny, [f"model.pretrained={assets['video']}", f"data.manifest={assets['shapes']}",
                              f"output_dir={out}", "train.trainable=controlnet", "control.extractor=track",
                              "train.max_steps=4", "train.checkpoint_every=2", "train.ema=true",
                              "train.learning_rate=1e-2", *overrides])


@pytest.fixture(scope="module")
def train_assets(tmp_path_factory, folders):
    from vidiff.data.synthetic import write_shapes_dataset

    shapes = tmp_path_factory.mktemp("controlnet-train") / "shapes"
    write_shapes_dataset(shapes, 2, num_frames=2, size=16, seed=0)
    return {"video": folders[1], "shapes": shapes}


def test_controlnet_training_trains_only_the_controlnet_resumes_exactly_and_exports_diffusers_format(
        train_assets, tmp_path):
    from safetensors.torch import load_file

    from vidiff.training.checkpoints import list_checkpoints
    from vidiff.control import read_record
    from vidiff.training.trainer import train

    def last_checkpoint(out):
        return load_file(str(list_checkpoints(out / "checkpoints")[-1] / "model.safetensors"))

    straight = train(controlnet_run_config(tmp_path / "straight", train_assets))
    assert straight.status == "finished" and straight.step == 4
    weights = last_checkpoint(tmp_path / "straight")
    assert weights and all(k.startswith("controlnet.controlnet.") for k in weights)  # the ControlNet alone
    assert any("controlnet_down_blocks" in k and v.abs().sum() > 0 for k, v in weights.items())  # it learned

    out = tmp_path / "resumed"
    cfg = controlnet_run_config(out, train_assets)
    assert train(cfg, on_step=lambda step, row: step == 2).status == "interrupted"
    assert train(cfg, resume="auto").step == 4
    resumed = last_checkpoint(out)
    assert weights.keys() == resumed.keys() and all(torch.equal(weights[k], resumed[k]) for k in weights)

    # the export: a diffusers ControlNetModel folder (safetensors), the EMA weights, read by diffusers and by vidiff
    folder = tmp_path / "straight" / "controlnet"
    assert (folder / "diffusion_pytorch_model.safetensors").is_file() and not list(folder.glob("*.bin"))
    loaded = ControlNetModel.from_pretrained(str(folder))
    ours = read_controlnet(folder)
    assert all(torch.equal(a, b) for a, b in zip(loaded.state_dict().values(), ours.state_dict().values()))
    sidecar = read_record(folder)
    assert sidecar["extractor"] == "track" and sidecar["steps"] == 4 and sidecar["ema"] is True
    assert not (tmp_path / "straight" / "pipeline").exists()  # the U-Net is the model's, unchanged
    # and it steers the model it was trained for through the pipeline
    pipe = VideoPipeline.from_pretrained(train_assets["video"], device="cpu")
    images = torch.rand(1, 3, 2, 16, 16)
    plain = pipe(PROMPT, num_frames=2, seed=0, output_type="pt", progress=False)
    steered = pipe(PROMPT, num_frames=2, seed=0, output_type="pt", progress=False,
                   control=Control(VideoControlNet(ours), images))
    assert plain.shape == steered.shape and not torch.allclose(plain, steered)


@pytest.mark.parametrize("override, message", [
    (["data.cache=somewhere", "data.manifest="], "does not go with data.cache"),
    (["distill.method=consistency"], "does not go with distill.method"),
    (["validation.prompts=[a red circle moving right]"], "set control.validation_video"),
    (["control.extractor=depth"], "control.extractor must be one of canny, track, depth-map, raw"),
    (["train.trainable=all"], "apply to a ControlNet run"),
])
def test_controlnet_run_config_errors_are_one_line(train_assets, tmp_path, override, message):
    from vidiff.config import ConfigError, validate

    extra = ["control.validation_video=x.mp4"] if "train.trainable=all" in override else []
    with pytest.raises(ConfigError, match=message) as error:
        validate(controlnet_run_config(tmp_path / "run", train_assets, *override, *extra))
    assert "\n" not in str(error.value)
