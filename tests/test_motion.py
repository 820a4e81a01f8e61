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


def test_train_a_loaded_motion_module_resume_and_export_to_diffusers(sd, tmp_path):
    """AnimateDiff's recipe through `vidiff train`: an SD base + a MotionAdapter, motion modules trained alone;
    the run resumes exactly; `vidiff export` writes a MotionAdapter that diffusers' UNetMotionModel runs to the
    same output as the trained vidiff U-Net, and an original-key file that loads back equal."""
    from safetensors.torch import load_file

    from vidiff.config import load_config
    from vidiff.data.synthetic import write_shapes_dataset
    from vidiff.training.checkpoints import list_checkpoints
    from vidiff.training.trainer import train

    settings, adapter = tiny_adapter("v3", seed=4)
    adapter.save_pretrained(str(tmp_path / "adapter"))
    write_shapes_dataset(tmp_path / "shapes", 3, num_frames=4, size=16, seed=0)
    overrides = [f"model.pretrained={sd}", f"model.motion_module={tmp_path / 'adapter'}",
                 f"data.manifest={tmp_path / 'shapes'}", "train.max_steps=4", "train.checkpoint_every=2",
                 "train.trainable=temporal", "data.num_frames=4"]
    tiny = "configs/train/tiny.yaml"
    train(load_config(tiny, [*overrides, f"output_dir={tmp_path / 'a'}"]))
    cfg = load_config(tiny, [*overrides, f"output_dir={tmp_path / 'b'}"])
    assert train(cfg, on_step=lambda step, row: step == 2).status == "interrupted"
    assert train(cfg, resume="auto").step == 4
    weights = [load_file(str(list_checkpoints(tmp_path / run / "checkpoints")[-1] / "model.safetensors"))
               for run in ("a", "b")]
    assert weights[0].keys() == weights[1].keys()
    assert all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0])

    trained = VideoUNet.from_pretrained(tmp_path / "a" / "pipeline" / "unet").eval()
    start = adapter.state_dict()
    moved = [k for k, v in trained.motion_module_state_dict().items() if not torch.equal(v, start[k])]
    assert len(moved) > len(start) // 2
    base = UNet2DConditionModel.from_pretrained(str(sd), subfolder="unet").eval()
    assert all(torch.equal(v, trained.state_dict()[k]) for k, v in base.state_dict().items())  # spatial frozen

    out = tmp_path / "exported"
    assert main(["export", "--model", str(tmp_path / "a" / "pipeline"), "--format", "diffusers-motion-adapter",
                 "--out", str(out)]) == 0
    reference = UNetMotionModel.from_unet2d(base, MotionAdapter.from_pretrained(str(out))).eval()
    x, t, context = inputs()
    with torch.no_grad():
        expected = reference(x, t, context.repeat_interleave(4, 0)).sample
        torch.testing.assert_close(trained(x, t, context), expected, atol=1e-4, rtol=0)
    original = tmp_path / "mm_trained.safetensors"
    assert main(["export", "--model", str(tmp_path / "a" / "pipeline"), "--format", "animatediff",
                 "--out", str(original)]) == 0
    read_settings, tensors = read_motion_module(original)
    assert read_settings == settings  # the head count rides in the metadata
    assert all(torch.equal(tensors[k], v) for k, v in trained.motion_module_state_dict().items())
    assert main(["export", "--model", str(tmp_path / "a" / "pipeline"), "--format", "animatediff",
                 "--out", str(original)]) == 2  # exists: --overwrite needed
    assert main(["export", "--model", str(tmp_path / "a" / "pipeline"), "--format", "animatediff",
                 "--out", str(original), "--overwrite"]) == 0


def test_export_refuses_what_does_not_fit(sd, tmp_path, capsys):
    from vidiff.testing import make_tiny_video_pipeline
    video = make_tiny_video_pipeline(tmp_path / "video")
    capsys.readouterr()
    for args in (["--format", "animatediff", "--out", str(tmp_path / "mm.safetensors")],   # vidiff layout
                 ["--format", "animatediff", "--out", str(tmp_path / "mm.ckpt")],          # not .safetensors
                 ["--format", "diffusers-motion-adapter", "--out", str(video)]):            # exists
        assert main(["export", "--model", str(video), *args]) == 2
        err = capsys.readouterr().err.strip()
        assert err.count("\n") == 0 and "error:" in err
    assert not (tmp_path / "mm.safetensors").exists()
    assert main(["export", "--model", str(video), "--format", "temporal", "--out", str(tmp_path / "t.safetensors")]) == 0
    fresh = VideoUNet.from_pretrained(video / "unet")
    fresh.load_temporal(tmp_path / "t.safetensors")  # keys and shapes checked


def test_spatial_from_equals_a_fresh_inflation_of_the_new_base(tmp_path, capsys):
    """`generate --spatial-from`: a trained motion module under a personalised SD (here another random SD of the
    same architecture, as a single-file LDM checkpoint) equals inflating the new base with the same modules."""
    from vidiff.testing import save_sd_single_file

    settings, adapter = tiny_adapter("v2", seed=6)
    adapter.save_pretrained(str(tmp_path / "adapter"))
    import shutil
    old, new = make_tiny_sd_pipeline(tmp_path / "old", seed=0), make_tiny_sd_pipeline(tmp_path / "new", seed=1)
    for part in ("vae", "text_encoder"):  # a fine-tune of the U-Net alone (--spatial-from swaps only its weights)
        shutil.rmtree(new / part)
        shutil.copytree(old / part, new / part)
    single = save_sd_single_file(new, tmp_path / "dreambooth.safetensors")
    for base, out in ((old, "video"), (new, "expected")):
        assert main(["inflate", "--base", str(base), "--motion-module", str(tmp_path / "adapter"),
                     "--out", str(tmp_path / out), "--num-frames", "2"]) == 0
    swapped = VideoUNet.from_pretrained(tmp_path / "video" / "unet")
    swapped.load_spatial_from(single)
    expected = VideoUNet.from_pretrained(tmp_path / "expected" / "unet")
    assert all(torch.equal(v, swapped.state_dict()[k]) for k, v in expected.state_dict().items())
    args = ["generate", "--prompt", PROMPT, "--num-frames", "2", "--height", "16", "--width", "16", "--steps", "2",
            "--seed", "3", "--quiet"]
    assert main([*args, "--model", str(tmp_path / "video"), "--spatial-from", str(single),
                 "--out", str(tmp_path / "a.mp4")]) == 0
    assert main([*args, "--model", str(tmp_path / "expected"), "--out", str(tmp_path / "b.mp4")]) == 0
    from vidiff.data.video_io import read_video
    assert (read_video(tmp_path / "a.mp4").frames == read_video(tmp_path / "b.mp4").frames).all()
    assert json.loads((tmp_path / "a.json").read_text())["spatial_from"] == str(single)
    capsys.readouterr()
    assert main([*args, "--model", str(tmp_path / "video"), "--spatial-from", str(tmp_path / "nope.safetensors"),
                 "--out", str(tmp_path / "c.mp4")]) == 2
    assert "--spatial-from" in capsys.readouterr().err and not (tmp_path / "c.mp4").exists()


def test_motion_lora_on_real_motion_modules_loads_into_diffusers(unet2d, tmp_path):
    """A motion LoRA (temporal targets) on the AnimateDiff layout: saved in diffusers keys it loads into diffusers'
    UNetMotionModel (peft) with exactly its keys and the same output; `vidiff export --format lora-comfyui` and
    back loads equal."""
    from vidiff.adapters import LoraSettings, add_lora, adapter_parameters, load_lora, save_lora

    settings, adapter = tiny_adapter("v2", seed=7)
    ours = video_unet(unet2d, settings, adapter)
    names = add_lora(ours, LoraSettings(rank=2, alpha=2, targets="temporal"))
    assert names and all(".motion_modules." in n for n in names)
    g = torch.Generator().manual_seed(8)
    with torch.no_grad():
        for p in adapter_parameters(ours).values():
            p.copy_(torch.randn(p.shape, generator=g) * 0.2)
    path = tmp_path / "motion_lora.safetensors"
    save_lora(ours, path, format="diffusers")
    reference = UNetMotionModel.from_unet2d(unet2d, adapter).eval()
    before = None
    x, t, context = inputs()
    with torch.no_grad():
        before = reference(x, t, context.repeat_interleave(4, 0)).sample
    from safetensors.torch import load_file
    tensors = load_file(str(path))
    reference.load_lora_adapter({k.removeprefix("unet."): v for k, v in tensors.items()}, prefix=None,
                                adapter_name="motion")
    with torch.no_grad():
        expected = reference(x, t, context.repeat_interleave(4, 0)).sample
        got = ours(x, t, context)
    assert (expected - before).abs().max() > 1e-3  # the LoRA does something
    torch.testing.assert_close(got, expected, atol=1e-4, rtol=0)

    comfy = tmp_path / "motion_lora_comfy.safetensors"
    assert main(["export", "--model", str(path), "--format", "lora-comfyui", "--out", str(comfy)]) == 0
    assert all(k.startswith("lora_unet_") for k in load_file(str(comfy)))
    again = video_unet(unet2d, settings, adapter)
    load_lora(again, comfy)
    with torch.no_grad():
        torch.testing.assert_close(again(x, t, context), got, atol=1e-5, rtol=0)
