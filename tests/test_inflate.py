"""`inflate_pipeline` / `vidiff inflate`: folder layout, vidiff.json, weights carried over unchanged, errors."""
from __future__ import annotations

import dataclasses
import json

import pytest
import torch

from vidiff.cli import main
from vidiff.spec import read_info
from vidiff.testing import make_tiny_sd_pipeline, save_sd_single_file


@pytest.fixture(scope="module")
def sd(tmp_path_factory):
    return make_tiny_sd_pipeline(tmp_path_factory.mktemp("base") / "sd", seed=1)


def run(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_cli_inflate_writes_a_complete_folder(sd, tmp_path, capsys):
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextModel

    from vidiff import VideoUNet

    out = tmp_path / "video"
    code, stdout, _ = run(capsys, "inflate", "--base", str(sd), "--out", str(out), "--num-frames", "8", "--fps", "12")
    assert code == 0 and f"wrote {out}" in stdout
    assert sorted(p.name for p in out.iterdir()) == ["scheduler", "text_encoder", "tokenizer", "unet", "vae",
                                                    "vidiff.json"]
    info = read_info(out)
    assert info.kind == "text-to-video" and info.stage == "base" and info.latent
    assert info.vae_scale_factor == 2 and info.unet_spatial_factor == 2 and info.spatial_factor == 4
    assert dataclasses.asdict(info.defaults) == {"num_frames": 8, "fps": 12, "height": 16, "width": 16, "num_inference_steps": 25,
                                "guidance_scale": 7.5, "scheduler": "ddim", "cross_frame": "none", "edit_strength": None,
                                "edit_guidance": None}
    assert info.conditioning["max_length"] == 77 and info.conditioning["hidden_size"] == 32

    # Spatial weights are the base's, unchanged; VAE and text encoder are the base's.
    unet = VideoUNet.from_pretrained(out / "unet")
    base_unet = UNet2DConditionModel.from_pretrained(str(sd / "unet")).state_dict()
    ours = unet.state_dict()
    assert all(torch.equal(ours[k], v) for k, v in base_unet.items())
    assert any(".temporal_" in k for k in ours)
    for sub, cls in (("vae", AutoencoderKL), ("text_encoder", CLIPTextModel)):
        a, b = cls.from_pretrained(str(sd / sub)).state_dict(), cls.from_pretrained(str(out / sub)).state_dict()
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert json.loads((out / "scheduler" / "scheduler_config.json").read_text())["beta_schedule"] == "scaled_linear"


def load_weights(folder):
    from safetensors.torch import load_file

    return {sub: load_file(str(folder / sub / name)) for sub, name in (
        ("unet", "diffusion_pytorch_model.safetensors"), ("vae", "diffusion_pytorch_model.safetensors"),
        ("text_encoder", "model.safetensors"))}


@pytest.mark.parametrize("suffix", [".safetensors", ".ckpt"])
def test_single_file_checkpoint_with_local_config(sd, tmp_path, capsys, suffix):
    """An SD release as one LDM-layout file + a folder of configs inflates to the same folder as the diffusers
    folder it was made from (the same seed gives the same temporal initialisation)."""
    checkpoint = save_sd_single_file(sd, tmp_path / f"model{suffix}")
    assert run(capsys, "inflate", "--base", str(sd), "--out", str(tmp_path / "a"))[0] == 0
    code, stdout, err = run(capsys, "inflate", "--base", str(checkpoint), "--config", str(sd),
                            "--out", str(tmp_path / "b"))
    assert code == 0, err
    a, b = load_weights(tmp_path / "a"), load_weights(tmp_path / "b")
    for sub in a:
        assert a[sub].keys() == b[sub].keys(), sub
        assert all(torch.equal(a[sub][k], b[sub][k]) for k in a[sub]), sub
    assert read_info(tmp_path / "b").source == str(checkpoint)


def test_cli_inflate_options(sd, tmp_path, capsys):
    out = tmp_path / "video"
    code, stdout, _ = run(capsys, "inflate", "--base", str(sd), "--out", str(out), "--cross-frame", "sparse-causal",
                          "--no-temporal-conv", "--temporal-position", "qkv", "--frame-embedding",
                          "--coordinate-embedding")
    assert code == 0 and "temporal attention" in stdout and "temporal conv +" not in stdout
    config = json.loads((out / "unet" / "config.json").read_text())
    # the mode is the folder's suggestion (vidiff.json defaults, checked below), not the U-Net's identity
    assert "cross_frame" not in config and not config["temporal_conv"] and config["temporal_attention"]
    assert config["temporal_position"] == "qkv" and config["frame_embedding"] is config["coordinate_embedding"] is True
    code, _, _ = run(capsys, "inflate", "--base", str(sd), "--out", str(tmp_path / "stage"), "--stage", "ssr",
                     "--temporal-position", "qkv")
    assert code == 0 and json.loads((tmp_path / "stage" / "unet" / "config.json").read_text())["temporal_position"] == "qkv"
    assert read_info(out).defaults.cross_frame == "sparse-causal"
    # --overwrite replaces an existing folder; without it, an error.
    code, _, err = run(capsys, "inflate", "--base", str(sd), "--out", str(out))
    assert code == 2 and "--overwrite" in err
    code, _, _ = run(capsys, "inflate", "--base", str(sd), "--out", str(out), "--overwrite", "--no-temporal-attention")
    assert code == 0 and not json.loads((out / "unet" / "config.json").read_text())["temporal_attention"]


def test_pixel_space_base(tmp_path, capsys):
    base = make_tiny_sd_pipeline(tmp_path / "pixel-sd", vae=False)
    out = tmp_path / "pixel"
    assert run(capsys, "inflate", "--base", str(base), "--out", str(out))[0] == 0
    info = read_info(out)
    assert not (out / "vae").exists() and not info.latent and info.vae_scale_factor == 1
    assert info.in_channels == 3 and info.defaults.height == 8


def test_failed_inflate_leaves_nothing(sd, tmp_path, monkeypatch):
    from transformers import CLIPTextModel

    from vidiff.models.folder import inflate_pipeline

    def broken(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(CLIPTextModel, "save_pretrained", broken)
    with pytest.raises(OSError, match="disk full"):
        inflate_pipeline(sd, tmp_path / "video")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("case", ["missing", "not-sd", "single-file-no-config", "hub-offline", "bad-num-frames",
                                  "config-missing", "same-as-base", "fps-nan", "overwrite-foreign-folder",
                                  "overwrite-file", "out-under-file"])
def test_cli_inflate_errors(sd, tmp_path, capsys, monkeypatch, case):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    (tmp_path / "empty").mkdir()
    weights = sd / "unet" / "diffusion_pytorch_model.safetensors"
    argv, match = {
        "missing": (["--base", str(tmp_path / "nope")], "does not exist"),
        "not-sd": (["--base", str(tmp_path / "empty")], "missing unet/"),
        "single-file-no-config": (["--base", str(weights)], "pass --config"),
        "hub-offline": (["--base", "someone/some-model"], "HF_HUB_OFFLINE"),
        "bad-num-frames": (["--base", str(sd), "--num-frames", "0"], "--num-frames must be between 1 and 4096, got 0"),
        "config-missing": (["--base", str(weights), "--config", str(tmp_path / "nope")], "is not a folder"),
        "same-as-base": (["--base", str(sd), "--out", str(sd), "--overwrite"], "must differ"),
        # Found in QA: NaN reached vidiff.json; --overwrite deleted whatever folder --out named.
        "fps-nan": (["--base", str(sd), "--fps", "nan"], "--fps must be between 0.1 and 1000 frames per second, got nan"),
        "overwrite-foreign-folder": (["--base", str(sd), "--out", str(tmp_path / "keep"), "--overwrite"],
                                     "is not a vidiff pipeline folder"),
        "overwrite-file": (["--base", str(sd), "--out", str(tmp_path / "notes.txt"), "--overwrite"],
                           "is not a vidiff pipeline folder"),
        "out-under-file": (["--base", str(sd), "--out", str(tmp_path / "notes.txt" / "video")],
                           "is a file, not a folder"),
    }[case]
    (tmp_path / "keep").mkdir()
    (tmp_path / "keep" / "data.txt").write_text("precious\n")
    (tmp_path / "notes.txt").write_text("precious\n")
    if "--out" not in argv:
        argv += ["--out", str(tmp_path / "out")]
    code, stdout, err = run(capsys, "inflate", *argv)
    assert code == 2 and match in err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert not (tmp_path / "out").exists()
    assert (tmp_path / "keep" / "data.txt").read_text() == "precious\n"
    assert (tmp_path / "notes.txt").read_text() == "precious\n"


def test_a_missing_path_that_is_no_hub_id_is_not_downloaded(tmp_path, monkeypatch):
    """Issue 9: two hub-id tests disagreed (the inflater took "my models/sd" for a hub repo and tried to download
    it); `vidiff.models.loading.is_hub_id` is the one test."""
    from vidiff.models import loading
    from vidiff.models.folder import inflate_pipeline

    def no_download(repo_id):
        raise AssertionError(f"tried to download {repo_id!r}")

    monkeypatch.setattr(loading, "_download_base", no_download)
    for text in ("my models/sd", "../sd/unet", "owner/name/extra", "sd/model.json"):
        with pytest.raises(FileNotFoundError, match="does not exist"):
            inflate_pipeline(text, tmp_path / "out")
    assert not (tmp_path / "out").exists()
    assert loading.is_hub_id("owner/name") and not loading.is_hub_id("my models/sd")


def test_stage_is_checked_in_vidiff_json_and_before_inflating(sd, tmp_path, monkeypatch):
    from vidiff.models import folder as model_folder
    from vidiff.models.folder import inflate_pipeline
    from vidiff.testing import make_tiny_video_pipeline

    folder = make_tiny_video_pipeline(tmp_path / "video")
    info = json.loads((folder / "vidiff.json").read_text())
    assert read_info(folder).stage == "base"
    (folder / "vidiff.json").write_text(json.dumps(dict(info, stage="superres")))
    with pytest.raises(ValueError, match=r"unknown stage 'superres' in .*vidiff.json .*use one of base, "
                                         r"interpolation, tsr, ssr"):
        read_info(folder)

    def no_loading(*args, **kwargs):
        raise AssertionError("loaded the base before checking the options")

    monkeypatch.setattr(model_folder, "load_base_components", no_loading)
    with pytest.raises(ValueError, match="unknown stage 'superres'"):
        inflate_pipeline(sd, tmp_path / "out", stage="superres")
    for bad in (-1, 1.5, True):
        with pytest.raises(ValueError, match="conditioning_channels must be an integer >= 0"):
            inflate_pipeline(sd, tmp_path / "out", stage="tsr", conditioning_channels=bad)


def test_inflated_stage_has_zero_initialised_condition_channels(sd, tmp_path):
    """`inflate_pipeline(stage=..., conditioning_channels=k)`: the stage is recorded, the U-Net takes k more input
    channels, and until trained it samples exactly what the base stage samples, whatever the condition."""
    from vidiff import VideoPipeline
    from vidiff.models.folder import inflate_pipeline

    defaults = {"num_frames": 2, "height": 16, "width": 16}
    base = VideoPipeline.from_pretrained(inflate_pipeline(sd, tmp_path / "base", defaults=defaults), device="cpu")
    out = inflate_pipeline(sd, tmp_path / "tsr", stage="tsr", conditioning_channels=4, defaults=defaults)
    info = read_info(out)
    assert info.stage == "tsr" and info.conditioning["conditioning_channels"] == 4
    unet_config = json.loads((out / "unet" / "config.json").read_text())
    assert unet_config["stage"] == "tsr" and unet_config["conditioning_channels"] == 4
    stage = VideoPipeline.from_pretrained(out, device="cpu")
    assert stage.unet.conv_in.weight.shape[1] == 8 and not stage.unet.conv_in.weight[:, 4:].any()
    condition = torch.randn(1, 4, 2, 8, 8, generator=torch.Generator().manual_seed(0))
    kwargs = dict(num_inference_steps=2, seed=0, output_type="latent", progress=False)
    torch.testing.assert_close(stage("a red circle", condition=condition, **kwargs), base("a red circle", **kwargs),
                               atol=1e-6, rtol=0)


def test_stage_channels_come_from_one_path(sd):
    """`stage_folder.widen_unet` (cascade stages, whose channel count is known once the base is loaded) and
    `VideoUNet.from_2d(conditioning_channels=k)` (what `inflate_pipeline` uses) make the same U-Net: both go
    through `VideoUNet.from_2d_weights`."""
    from vidiff import VideoUNet
    from vidiff.stages.folder import widen_unet

    torch.manual_seed(0)
    base = VideoUNet.from_2d(sd, "unet")
    torch.manual_seed(0)
    direct = VideoUNet.from_2d(sd, "unet", conditioning_channels=5, stage="interpolation")
    widened = widen_unet(base, 5, stage="interpolation")
    assert widened.config == direct.config and widened.config["stage"] == "interpolation"
    expected, got = direct.state_dict(), widened.state_dict()
    assert expected.keys() == got.keys()
    for key in expected:
        torch.testing.assert_close(got[key], expected[key], atol=0, rtol=0, msg=key)
    weight = got["conv_in.weight"]
    assert weight.shape[1] == base.in_channels + 5 and not weight[:, base.in_channels:].any()
    torch.testing.assert_close(weight[:, :base.in_channels], base.state_dict()["conv_in.weight"], atol=0, rtol=0)
    with pytest.raises(ValueError, match="without condition channels"):
        widen_unet(direct, 2, stage="interpolation")


def test_read_info_and_stage_names_do_not_import_torch(tmp_path):
    """The CLI checks a model folder (vidiff.json, stage names) before it loads torch."""
    import subprocess
    import sys

    from vidiff.testing import make_tiny_video_pipeline

    folder = make_tiny_video_pipeline(tmp_path / "video")
    code = ("import sys; from vidiff.spec import read_info; from vidiff.spec import "
            "STAGE_NAMES; info = read_info(sys.argv[1]); assert info.stage in STAGE_NAMES; "
            "print('torch' in sys.modules)")
    result = subprocess.run([sys.executable, "-c", code, str(folder)], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "False"
    from vidiff import spec, stages

    assert spec.STAGE_NAMES == ("base", "interpolation", "tsr", "ssr") == tuple(stages.STAGES)
