"""AnimateDiff's temporal layout (vidiff.models.motion) against diffusers: MotionAdapter / UNetMotionModel /
AnimateDiffPipeline on tiny random models, the original AnimateDiff key layout, inflation, export and training."""
from __future__ import annotations

import json

import pytest
import torch
from diffusers import MotionAdapter, UNet2DConditionModel, UNetMotionModel

from vidiff.cli import main
from vidiff.models.motion import MotionSettings, from_original_keys, read_motion_module, to_original_keys
from vidiff.models.unet import VideoUNet
from vidiff.models.weights import LoadingError
from vidiff.pipelines.text_to_video import VideoPipeline
from vidiff.spec import SettingError, read_info
from vidiff.testing import TINY_UNET, make_tiny_sd_pipeline
from vidiff.utils import save_safetensors_atomic

PROMPT = "a red circle moving right"
# AnimateDiff's releases on the tiny U-Net: v1 (no mid block, 24 positions), v2 (mid block), v3 (no mid block)
VERSIONS = {"v1": dict(mid_block=False, max_seq_length=24), "v2": dict(mid_block=True, max_seq_length=32),
            "v3": dict(mid_block=False, max_seq_length=32)}


def tiny_adapter(version: str, seed: int = 0) -> tuple[MotionSettings, MotionAdapter]:
    """A random MotionAdapter for TINY_UNET (random proj_out too: the modules do something)."""
    settings = MotionSettings(num_attention_heads=2, **VERSIONS[version])
    torch.manual_seed(seed)
    return settings, MotionAdapter(**settings.adapter_config(TINY_UNET)).eval()


@pytest.fixture(scope="module")
def unet2d():
    torch.manual_seed(0)
    return UNet2DConditionModel(**TINY_UNET).eval()


@pytest.fixture(scope="module")
def sd(tmp_path_factory):
    return make_tiny_sd_pipeline(tmp_path_factory.mktemp("motion") / "sd", seed=0)


def video_unet(unet2d, settings, adapter):
    unet = VideoUNet.from_2d_weights(dict(unet2d.config), unet2d.state_dict(), temporal_layout="animatediff",
                                     motion=settings.to_config()).eval()
    unet.load_motion_module(adapter.state_dict())
    return unet


def inputs(frames=4, seed=1):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(2, 4, frames, 8, 8, generator=g), torch.tensor([10, 700]),
            torch.randn(2, 5, 32, generator=g))


@pytest.mark.parametrize("version", sorted(VERSIONS))
def test_unet_equals_diffusers_unet_motion_model(unet2d, version):
    settings, adapter = tiny_adapter(version)
    reference = UNetMotionModel.from_unet2d(unet2d, adapter).eval()
    ours = video_unet(unet2d, settings, adapter)
    x, t, context = inputs()
    with torch.no_grad():
        expected = reference(x, t, context.repeat_interleave(x.shape[2], 0)).sample  # diffusers: text per frame
        got = ours(x, t, context)
    assert expected.abs().max() > 0.1
    torch.testing.assert_close(got, expected, atol=1e-4, rtol=0)


def test_fresh_motion_modules_are_the_identity(unet2d):
    """Untrained (inflated) motion modules start at zero output: every frame is the image model's."""
    ours = VideoUNet.from_2d_weights(dict(unet2d.config), unet2d.state_dict(), temporal_layout="animatediff",
                                     motion=MotionSettings(num_attention_heads=2).to_config()).eval()
    assert any(".motion_modules." in k for k in ours.state_dict())
    x, t, context = inputs(frames=3)
    with torch.no_grad():
        got = ours(x, t, context)
        for frame in range(3):
            expected = unet2d(x[:, :, frame], t, context).sample
            torch.testing.assert_close(got[:, :, frame], expected, atol=1e-5, rtol=0)


def test_original_keys_round_trip_and_load_equal(unet2d, tmp_path):
    settings, adapter = tiny_adapter("v2")
    original = to_original_keys(adapter.state_dict())
    assert any(".temporal_transformer.transformer_blocks.0.attention_blocks.1.pos_encoder.pe" in k for k in original)
    assert not any(".attn1." in k or ".norm1." in k for k in original)
    assert from_original_keys(original).keys() == adapter.state_dict().keys()
    path = tmp_path / "mm_sd_v15_v2.safetensors"
    save_safetensors_atomic(original, path)
    read_settings, tensors = read_motion_module(path)
    assert read_settings == MotionSettings(num_attention_heads=8, mid_block=True, max_seq_length=32)
    folder = tmp_path / "adapter"
    adapter.save_pretrained(str(folder))
    assert read_motion_module(folder)[0] == settings  # the folder's config says 2 heads
    from_file, from_folder = (video_unet(unet2d, settings, adapter) for _ in range(2))
    from_file.load_motion_module(tensors)
    from_folder.load_motion_module(folder)
    x, t, context = inputs()
    with torch.no_grad():
        torch.testing.assert_close(from_file(x, t, context), from_folder(x, t, context), atol=0, rtol=0)


def test_ckpt_is_read_weights_only(tmp_path):
    """An original .ckpt holding a pickled object is refused (weights only), a plain one is read."""
    _, adapter = tiny_adapter("v1")
    plain = tmp_path / "mm_sd_v15.ckpt"
    torch.save({"state_dict": to_original_keys(adapter.state_dict())}, plain)
    assert read_motion_module(plain)[0].max_seq_length == 24
    evil = tmp_path / "evil.ckpt"
    torch.save({"x": torch.zeros(1), "y": print}, evil)
    with pytest.raises(LoadingError, match="weights-only"):
        read_motion_module(evil)


def test_wrong_shape_and_bad_files_are_one_line(unet2d, tmp_path):
    settings, adapter = tiny_adapter("v2")
    other = MotionAdapter(**MotionSettings(num_attention_heads=2).adapter_config(
        dict(TINY_UNET, block_out_channels=(32, 64), norm_num_groups=8)))
    ours = video_unet(unet2d, settings, adapter)
    with pytest.raises(LoadingError, match="do not fit the model") as info:
        ours.load_motion_module(other.state_dict())
    assert "\n" not in str(info.value)
    save_safetensors_atomic({"foo.weight": torch.zeros(2)}, tmp_path / "not-mm.safetensors")
    with pytest.raises(LoadingError, match="holds no AnimateDiff motion modules"):
        read_motion_module(tmp_path / "not-mm.safetensors")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        read_motion_module(tmp_path / "missing.ckpt")
    x, t, context = inputs(frames=33)
    with pytest.raises(ValueError, match="at most 32 frames"):
        ours(x, t, context)


def test_inflate_with_motion_module_samples_as_animatediff_pipeline(sd, tmp_path):
    """`vidiff inflate --motion-module` on an SD folder: the pipeline's frames equal AnimateDiffPipeline's for the
    same latents, prompt, guidance and DDIM steps (text encoding, CFG, the motion U-Net, VAE decoding)."""
    from diffusers import AnimateDiffPipeline, DDIMScheduler
    settings, adapter = tiny_adapter("v2", seed=3)
    adapter.save_pretrained(str(tmp_path / "adapter"))
    out = tmp_path / "ad"
    assert main(["inflate", "--base", str(sd), "--motion-module", str(tmp_path / "adapter"), "--out", str(out),
                 "--num-frames", "4"]) == 0
    info = read_info(out)
    assert info.max_window == 32
    config = json.loads((out / "unet" / "config.json").read_text())
    assert config["temporal_layout"] == "animatediff" and config["motion"] == settings.to_config()
    ours = VideoPipeline.from_pretrained(out, device="cpu")
    reference = AnimateDiffPipeline.from_pretrained(str(sd), motion_adapter=adapter)
    reference.scheduler = DDIMScheduler.from_config(reference.scheduler.config)
    reference.set_progress_bar_config(disable=True)
    latents = torch.randn(1, 4, 4, 8, 8, generator=torch.Generator().manual_seed(5))
    got = ours(PROMPT, num_frames=4, height=16, width=16, num_inference_steps=3, guidance_scale=4.0,
               latents=latents, output_type="pt", progress=False)
    frames = reference(PROMPT, num_frames=4, height=16, width=16, num_inference_steps=3, guidance_scale=4.0,
                       latents=latents, output_type="pt").frames  # (b, f, 3, h, w) in [0, 1]
    expected = frames.permute(0, 2, 1, 3, 4) * 2 - 1
    assert expected.std() > 0.01
    torch.testing.assert_close(got, expected, atol=2e-4, rtol=0)
    with pytest.raises(SettingError, match="at most 32"):
        ours.resolve_settings(num_frames=40, window_size=40)


def test_inflate_flags_that_clash_are_refused(sd, tmp_path, capsys):
    for extra in (["--temporal-layout", "vidiff", "--motion-module", str(sd)],
                  ["--temporal-layout", "animatediff", "--no-temporal-conv"],
                  ["--motion-module", "mm_missing.ckpt"]):
        assert main(["inflate", "--base", str(sd), "--out", str(tmp_path / "x"), *extra]) == 2
        err = capsys.readouterr().err.strip()
        assert err.count("\n") == 0 and "error:" in err
        assert not (tmp_path / "x").exists()
