"""Weight loading: diffusers folders (plain, sharded, .bin, pipeline), hub ids, single-file LDM checkpoints.

References are a seeded diffusers `UNet2DConditionModel`'s own state dict, and an LDM checkpoint written by an
inverse converter defined here, independently of diffusers' forward converter.
"""
from __future__ import annotations

import json
import re

import pytest
import torch
from diffusers import UNet2DConditionModel

from vidiff.models.weights import check_state_dict, is_hub_id, load_unet_2d, read_state_dict
from vidiff.utils import save_safetensors_atomic

BASE = dict(block_out_channels=(8, 16), layers_per_block=1, norm_num_groups=8, cross_attention_dim=16, sample_size=8,
            down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
            attention_head_dim=4)
CONFIGS = {
    "sd1": BASE,
    # SD 2.x: linear projections in the transformers, per-block head dims, upcast attention.
    "sd2": {**BASE, "block_out_channels": (16, 32), "attention_head_dim": (4, 8), "use_linear_projection": True,
            "upcast_attention": True},
    # SD x4 upscaler: 7 input channels (4 latents + 3 low-res pixels) and a noise-level class embedding.
    "x4": {**BASE, "in_channels": 7, "out_channels": 4, "num_class_embeds": 1000},
    # Class embedding through a timestep MLP (label_emb.0.0 / label_emb.0.2 in LDM).
    "timestep-class": {**BASE, "class_embed_type": "timestep", "layers_per_block": 2},
}


def tiny_unet(name: str = "sd1", seed: int = 0) -> UNet2DConditionModel:
    torch.manual_seed(seed)
    model = UNet2DConditionModel(**CONFIGS[name]).eval()
    with torch.no_grad():  # random norms and biases too, so a swapped key cannot pass by equal init values
        for parameter in model.parameters():
            parameter.normal_(0, 0.2)
    return model


def assert_same_tensors(actual: dict, expected: dict):
    assert sorted(actual) == sorted(expected)
    for key, value in expected.items():
        assert torch.equal(actual[key], value), key


# ----------------------------------------------------------------------------------------------------------------
# Inverse converter: diffusers keys -> original latent-diffusion keys (model.diffusion_model.*).

RESNET_TO_LDM = {"norm1": "in_layers.0", "conv1": "in_layers.2", "norm2": "out_layers.0", "conv2": "out_layers.3",
                 "time_emb_proj": "emb_layers.1", "conv_shortcut": "skip_connection"}
TOP_TO_LDM = {"time_embedding.linear_1": "time_embed.0", "time_embedding.linear_2": "time_embed.2",
              "conv_in": "input_blocks.0.0", "conv_norm_out": "out.0", "conv_out": "out.2",
              "class_embedding.linear_1": "label_emb.0.0", "class_embedding.linear_2": "label_emb.0.2",
              "class_embedding": "label_emb"}


def diffusers_to_ldm(state_dict: dict, config: dict) -> dict:
    per_block = config["layers_per_block"] + 1  # LDM counts the down/upsampler as one more layer of the block
    up_has_attention = ["CrossAttn" in kind for kind in config["up_block_types"]]
    ldm = {}
    for key, value in state_dict.items():
        if m := re.match(r"(down|up)_blocks\.(\d+)\.(resnets|attentions|downsamplers|upsamplers)\.(\d+)\.(.+)", key):
            side, block, kind, layer, rest = m.group(1), int(m.group(2)), m.group(3), int(m.group(4)), m.group(5)
            if side == "down":
                index = 1 + block * per_block + (config["layers_per_block"] if kind == "downsamplers" else layer)
                prefix = "input_blocks"
            else:
                index = block * per_block + (config["layers_per_block"] if kind == "upsamplers" else layer)
                prefix = "output_blocks"
            if kind == "resnets":
                head, tail = rest.split(".", 1)
                new = f"{prefix}.{index}.0.{RESNET_TO_LDM[head]}.{tail}"
            elif kind == "attentions":
                new = f"{prefix}.{index}.1.{rest}"
            elif kind == "downsamplers":
                new = f"{prefix}.{index}.0.op.{rest.removeprefix('conv.')}"
            else:  # upsampler: after the resnet, and after the attention when the block has one
                new = f"{prefix}.{index}.{2 if up_has_attention[block] else 1}.{rest}"
        elif m := re.match(r"mid_block\.(resnets|attentions)\.(\d+)\.(.+)", key):
            kind, layer, rest = m.groups()
            if kind == "resnets":
                head, tail = rest.split(".", 1)
                new = f"middle_block.{2 * int(layer)}.{RESNET_TO_LDM[head]}.{tail}"
            else:
                new = f"middle_block.{2 * int(layer) + 1}.{rest}"
        else:
            module, parameter = key.rsplit(".", 1)
            new = f"{TOP_TO_LDM[module]}.{parameter}"
        ldm["model.diffusion_model." + new] = value
    # A whole SD checkpoint also holds the VAE and the text encoder: the loader must ignore them.
    ldm["first_stage_model.decoder.conv_in.weight"] = torch.zeros(2, 2)
    ldm["cond_stage_model.transformer.text_model.final_layer_norm.weight"] = torch.zeros(3)
    return ldm


def write_ldm(model, tmp_path, suffix=".safetensors", extra=None):
    ldm = diffusers_to_ldm(model.state_dict(), dict(model.config))
    ldm.update(extra or {})
    path = tmp_path / f"sd-single{suffix}"
    if suffix == ".safetensors":
        save_safetensors_atomic(ldm, path)
    else:  # a Lightning .ckpt: weights under "state_dict" beside plain counters
        torch.save({"state_dict": ldm, "global_step": 1234, "epoch": 3}, path)
    model.save_config(tmp_path / "config")  # the matching diffusers config.json, alone in its folder
    return path


# ----------------------------------------------------------------------------------------------------------------
# Diffusers folders


@pytest.mark.parametrize("name", ["sd1", "sd2"])
def test_folder_round_trip(tmp_path, name):
    model = tiny_unet(name)
    model.save_pretrained(tmp_path / "unet")
    config, state_dict = load_unet_2d(tmp_path / "unet")
    assert config["_class_name"] == "UNet2DConditionModel"
    assert config["block_out_channels"] == list(CONFIGS[name]["block_out_channels"])
    assert_same_tensors(state_dict, model.state_dict())
    check_state_dict(model, state_dict, source=str(tmp_path / "unet"))
    # The weight file alone: diffusers keys, config.json beside it.
    config, state_dict = load_unet_2d(tmp_path / "unet" / "diffusion_pytorch_model.safetensors")
    assert config["block_out_channels"] == list(CONFIGS[name]["block_out_channels"])
    assert_same_tensors(state_dict, model.state_dict())


def test_pipeline_folder_uses_unet_subfolder(tmp_path):
    model = tiny_unet()
    model.save_pretrained(tmp_path / "unet")
    (tmp_path / "model_index.json").write_text(json.dumps({"_class_name": "StableDiffusionPipeline"}))
    for kwargs in ({}, {"subfolder": "unet"}):
        _, state_dict = load_unet_2d(tmp_path, **kwargs)
        assert_same_tensors(state_dict, model.state_dict())
    with pytest.raises(FileNotFoundError, match="'vae' the right subfolder"):
        load_unet_2d(tmp_path, subfolder="vae")


def test_sharded_and_bin_folders(tmp_path):
    model = tiny_unet()
    model.save_pretrained(tmp_path / "sharded", max_shard_size="20KB")
    assert (tmp_path / "sharded" / "diffusion_pytorch_model.safetensors.index.json").is_file()
    assert len(list((tmp_path / "sharded").glob("diffusion_pytorch_model-*.safetensors"))) > 2
    assert_same_tensors(load_unet_2d(tmp_path / "sharded")[1], model.state_dict())

    model.save_pretrained(tmp_path / "bin", safe_serialization=False)
    assert (tmp_path / "bin" / "diffusion_pytorch_model.bin").is_file()
    assert_same_tensors(load_unet_2d(tmp_path / "bin")[1], model.state_dict())

    model.save_pretrained(tmp_path / "bin-sharded", safe_serialization=False, max_shard_size="20KB")
    assert (tmp_path / "bin-sharded" / "diffusion_pytorch_model.bin.index.json").is_file()
    assert_same_tensors(load_unet_2d(tmp_path / "bin-sharded")[1], model.state_dict())


def test_missing_shard_and_missing_weights_are_named(tmp_path):
    model = tiny_unet()
    model.save_pretrained(tmp_path / "sharded", max_shard_size="20KB")
    next((tmp_path / "sharded").glob("diffusion_pytorch_model-*.safetensors")).unlink()
    with pytest.raises(FileNotFoundError, match=r"shard diffusion_pytorch_model-\d+-of-\d+\.safetensors"):
        load_unet_2d(tmp_path / "sharded")
    model.save_config(tmp_path / "config-only")
    with pytest.raises(FileNotFoundError, match="has no U-Net weights"):
        load_unet_2d(tmp_path / "config-only")
    with pytest.raises(FileNotFoundError, match="neither config.json nor unet/config.json"):
        load_unet_2d(tmp_path)


class NotATensor:  # any class: unpickling it would need code execution
    pass


def test_pickle_with_python_objects_is_refused(tmp_path):
    model = tiny_unet()
    model.save_pretrained(tmp_path / "unet", safe_serialization=False)
    weights = tmp_path / "unet" / "diffusion_pytorch_model.bin"
    torch.save({**model.state_dict(), "payload": NotATensor()}, weights)
    with pytest.raises(ValueError, match="contains pickled Python objects.*weights-only.*convert it to safetensors"):
        load_unet_2d(tmp_path / "unet")
    with pytest.raises(ValueError, match="contains pickled Python objects.*GLOBAL test_loading.NotATensor"):
        read_state_dict(weights)


def test_a_file_that_is_no_checkpoint_is_not_called_unsafe(tmp_path):
    garbage = tmp_path / "model.ckpt"
    garbage.write_text("not a pickle\n")
    with pytest.raises(ValueError, match="is not a PyTorch checkpoint") as info:
        read_state_dict(garbage)
    assert "pickled Python objects" not in str(info.value)


def test_read_state_dict_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        read_state_dict(tmp_path / "nope.safetensors")
    (tmp_path / "weights.npz").write_bytes(b"x")
    with pytest.raises(ValueError, match="unsupported weight file"):
        read_state_dict(tmp_path / "weights.npz")
    (tmp_path / "broken.safetensors").write_bytes(b"not safetensors")
    with pytest.raises(ValueError, match="could not read"):
        read_state_dict(tmp_path / "broken.safetensors")
    torch.save({"a": torch.ones(1), "step": 3}, tmp_path / "mixed.pt")
    with pytest.raises(ValueError, match="1 entries are not tensors"):
        read_state_dict(tmp_path / "mixed.pt")


# ----------------------------------------------------------------------------------------------------------------
# Single-file LDM checkpoints


@pytest.mark.parametrize("name", list(CONFIGS))
@pytest.mark.parametrize("suffix", [".safetensors", ".ckpt"])
def test_ldm_single_file_converts_back(tmp_path, name, suffix):
    model = tiny_unet(name)
    path = write_ldm(model, tmp_path, suffix)
    config, state_dict = load_unet_2d(path, config=tmp_path / "config" / "config.json")
    assert config["in_channels"] == model.config.in_channels
    assert_same_tensors(state_dict, model.state_dict())
    # The config may also be given as the folder holding it.
    assert_same_tensors(load_unet_2d(path, config=tmp_path / "config")[1], model.state_dict())


def test_ldm_single_file_output_matches(tmp_path):
    model = tiny_unet("sd2")
    config, state_dict = load_unet_2d(write_ldm(model, tmp_path), config=tmp_path / "config")
    loaded = UNet2DConditionModel.from_config(config).eval()
    loaded.load_state_dict(state_dict, strict=True)
    sample, text = torch.randn(2, 4, 8, 8), torch.randn(2, 5, 16)
    with torch.no_grad():
        assert torch.equal(loaded(sample, 10, text).sample, model(sample, 10, text).sample)


def test_ldm_single_file_needs_a_config(tmp_path):
    path = write_ldm(tiny_unet(), tmp_path)
    with pytest.raises(ValueError, match="pass config="):
        load_unet_2d(path)
    with pytest.raises(FileNotFoundError, match="config .*missing.json does not exist"):
        load_unet_2d(path, config=tmp_path / "missing.json")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="has no config.json"):
        load_unet_2d(path, config=tmp_path / "empty")


def test_ldm_unknown_keys_and_wrong_config_are_reported(tmp_path):
    model = tiny_unet()
    path = write_ldm(model, tmp_path, extra={"model.diffusion_model.extra_layer.weight": torch.zeros(3)})
    config, state_dict = load_unet_2d(path, config=tmp_path / "config")
    with pytest.raises(ValueError, match=r"1 unexpected key \(extra_layer.weight\)"):
        check_state_dict(model, state_dict, source=str(path))
    # A config of another width: every conv in the checkpoint mismatches.
    wider = tiny_unet("sd2")
    wider.save_config(tmp_path / "wider")
    _, state_dict = load_unet_2d(path, config=tmp_path / "wider")
    with pytest.raises(ValueError, match=r"shape mismatch.*conv_in.weight: checkpoint \(8, 4, 3, 3\) vs model "
                                         r"\(16, 4, 3, 3\)"):
        check_state_dict(wider, state_dict, source=str(path))


def test_file_without_unet_is_refused(tmp_path):
    save_safetensors_atomic({"first_stage_model.x": torch.zeros(1)}, tmp_path / "vae.safetensors")
    tiny_unet().save_config(tmp_path / "config")
    with pytest.raises(ValueError, match="holds no Stable Diffusion U-Net"):
        load_unet_2d(tmp_path / "vae.safetensors", config=tmp_path / "config")


# ----------------------------------------------------------------------------------------------------------------
# check_state_dict


def test_check_state_dict_names_keys_and_counts():
    model = tiny_unet()
    expected = {key: value.shape for key, value in model.state_dict().items()}
    state_dict = dict(model.state_dict())
    dropped = list(state_dict)[:7]
    for key in dropped:
        del state_dict[key]
    state_dict["bogus.weight"] = torch.zeros(1)
    state_dict["conv_out.weight"] = torch.zeros(3, 8, 3, 3)
    with pytest.raises(ValueError) as info:
        check_state_dict(expected, state_dict, source="/x/unet")
    message = str(info.value)
    assert message.startswith("weights in /x/unet do not fit the model: 7 missing keys (")
    assert all(key in message for key in dropped[:5]) and dropped[5] not in message and "..." in message
    assert "1 unexpected key (bogus.weight)" in message
    assert "1 shape mismatch (conv_out.weight: checkpoint (3, 8, 3, 3) vs model (4, 8, 3, 3))" in message

    check_state_dict(expected, model.state_dict())  # exact fit passes
    # Keys the caller allows to be missing (new temporal layers) pass; others still fail.
    with_temporal = {**expected, "down_blocks.0.temporal_convs.0.conv.weight": torch.Size([8, 8, 3])}
    check_state_dict(with_temporal, model.state_dict(), allow_missing=lambda key: "temporal" in key)
    with pytest.raises(ValueError, match=r"1 missing key \(down_blocks.0.temporal_convs.0.conv.weight\)"):
        check_state_dict(with_temporal, model.state_dict())


# ----------------------------------------------------------------------------------------------------------------
# Hub ids


def test_hub_id_downloads_only_unet_files(tmp_path, monkeypatch):
    model = tiny_unet()
    model.save_pretrained(tmp_path / "snapshot" / "unet")
    calls = []

    def fake_snapshot_download(repo_id, allow_patterns=None, **kwargs):
        calls.append((repo_id, allow_patterns))
        return str(tmp_path / "snapshot")

    monkeypatch.setattr("vidiff.models.weights.snapshot_download", fake_snapshot_download)
    _, state_dict = load_unet_2d("someone/sd-model", subfolder="unet")
    assert_same_tensors(state_dict, model.state_dict())
    assert calls[0][0] == "someone/sd-model"
    assert "unet/config.json" in calls[0][1] and "unet/diffusion_pytorch_model.safetensors" in calls[0][1]
    assert not any("vae" in pattern or "text_encoder" in pattern for pattern in calls[0][1])


def test_hub_id_offline_gives_a_clear_error(monkeypatch):
    def offline(*args, **kwargs):
        raise OSError("We have no connection or you passed local_files_only=True")

    monkeypatch.setattr("vidiff.models.weights.snapshot_download", offline)
    with pytest.raises(FileNotFoundError, match=r"'someone/sd-model' is not a local path and could not be "
                                                r"downloaded.*pass a local diffusers folder"):
        load_unet_2d("someone/sd-model")
    # Something that cannot be a hub id is reported as a missing path, without a download attempt.
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_unet_2d("./missing/unet")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_unet_2d("missing.safetensors")


# ----------------------------------------------------------------------------------------------------------------
# Inflation from a single-file checkpoint


@pytest.mark.parametrize("name", ["sd1", "x4"])
def test_video_unet_from_ldm_file_equals_2d_per_frame(tmp_path, name):
    from einops import rearrange

    from vidiff.models.unet import VideoUNet

    model = tiny_unet(name)
    path = write_ldm(model, tmp_path, ".ckpt")
    video_unet = VideoUNet.from_2d(path, config=tmp_path / "config").eval()
    batch, frames = 2, 4
    generator = torch.Generator().manual_seed(1)
    sample = torch.randn(batch, model.config.in_channels, frames, 8, 8, generator=generator)
    text = torch.randn(batch, 5, 16, generator=generator)
    timestep = torch.tensor([10, 500])
    labels = torch.tensor([20, 250]) if name == "x4" else None
    with torch.no_grad():
        video = video_unet(sample, timestep, text, class_labels=labels)
        per_frame = model(rearrange(sample, "b c f h w -> (b f) c h w"), timestep.repeat_interleave(frames),
                          text.repeat_interleave(frames, 0),
                          class_labels=None if labels is None else labels.repeat_interleave(frames)).sample
    assert video.shape == (batch, model.config.out_channels, frames, 8, 8)
    expected = rearrange(per_frame, "(b f) c h w -> b c f h w", f=frames)
    assert (video - expected).abs().max() <= 1e-5


def test_video_unet_from_2d_names_bad_keys(tmp_path):
    from vidiff.models.unet import VideoUNet

    model = tiny_unet()
    path = write_ldm(model, tmp_path, extra={"model.diffusion_model.out.2.weight": torch.zeros(3, 8, 3, 3)})
    with pytest.raises(ValueError, match=r"weights in .*sd-single.safetensors do not fit the model: "
                                         r"1 shape mismatch \(conv_out.weight: checkpoint \(3, 8, 3, 3\)"):
        VideoUNet.from_2d(path, config=tmp_path / "config")


def test_hub_id_falls_back_to_bin_weights(tmp_path, monkeypatch):
    model = tiny_unet()
    model.save_pretrained(tmp_path / "snapshot", safe_serialization=False)  # a repo with .bin weights only
    calls = []

    def fake_snapshot_download(repo_id, allow_patterns=None, **kwargs):
        calls.append(allow_patterns)
        return str(tmp_path / "snapshot")

    monkeypatch.setattr("vidiff.models.weights.snapshot_download", fake_snapshot_download)
    _, state_dict = load_unet_2d("someone/old-model")
    assert_same_tensors(state_dict, model.state_dict())
    assert len(calls) == 2 and "diffusion_pytorch_model.bin" in calls[1]
    assert not any(pattern.endswith(".bin") for pattern in calls[0])


@pytest.mark.parametrize("text", ["someone/sd-model", "stable-diffusion-v1-5/stable-diffusion-v1-5",
                                  "org_x/Model.v2", "a/b"])
def test_is_hub_id_accepts_owner_name(text):
    assert is_hub_id(text)


@pytest.mark.parametrize("text", ["sd-model", "./missing/unet", "../x/y", "/abs/path", "~/models", "a/b/c", "a\\b",
                                  "C:/models", "missing.safetensors", "models/unet.ckpt", "configs/base.yaml",
                                  "-a/b", "a/b-", "a--b/c", "a/..", "a/ b", "ünï/cödé", "o/" + "n" * 100, ""])
def test_is_hub_id_refuses_paths_and_malformed_ids(text):
    assert not is_hub_id(text)


def test_is_hub_id_never_takes_a_path_object():
    from pathlib import PurePosixPath

    assert not is_hub_id(PurePosixPath("someone/sd-model"))


# ----------------------------------------------------------------------------------------------------------------
# Damaged files: one line naming the file, whatever the loader (issue 8 §2)


class RunsCode:
    """Unpickling this would call os.getcwd(): a stand-in for a planted payload."""

    def __reduce__(self):
        import os

        return (os.getcwd, ())


def _truncate(path):
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


DAMAGES = {
    "truncated-safetensors": ("diffusion_pytorch_model.safetensors", _truncate),
    "config-not-json": ("config.json", lambda p: p.write_text('{"_class_name": "VideoUNet", "block_out')),
    "config-binary": ("config.json", lambda p: p.write_bytes(b"\x00\xff\xfe garbage \x89PNG")),
    "config-not-an-object": ("config.json", lambda p: p.write_text("[1, 2, 3]")),
}


def _video_unet_folder(tmp_path):
    from vidiff.models.unet import VideoUNet

    tiny_unet().save_pretrained(tmp_path / "sd")
    VideoUNet.from_2d(tmp_path / "sd").save_pretrained(tmp_path / "video")
    return tmp_path / "video"


def _assert_one_line_naming(info, path):
    from vidiff.models.weights import LoadingError

    assert isinstance(info.value, LoadingError), repr(info.value)
    message = str(info.value)
    assert "\n" not in message and str(path) in message, message


@pytest.mark.parametrize("damage", list(DAMAGES))
@pytest.mark.parametrize("loader", ["from_2d", "from_pretrained"])
def test_damaged_folder_is_one_line_naming_the_file(tmp_path, damage, loader):
    from vidiff.models.unet import VideoUNet

    if loader == "from_2d":
        tiny_unet().save_pretrained(tmp_path / "sd")
        folder, load = tmp_path / "sd", VideoUNet.from_2d
    else:
        folder, load = _video_unet_folder(tmp_path), VideoUNet.from_pretrained
    name, spoil = DAMAGES[damage]
    spoil(folder / name)
    with pytest.raises(ValueError) as info:
        load(folder)
    _assert_one_line_naming(info, folder / name)


@pytest.mark.parametrize("damage", ["truncated", "runs-code", "not-a-pickle"])
def test_bin_weights_in_a_folder_are_one_line_naming_the_file(tmp_path, damage):
    from vidiff.models.unet import VideoUNet

    model = tiny_unet()
    model.save_pretrained(tmp_path / "sd", safe_serialization=False)
    weights = tmp_path / "sd" / "diffusion_pytorch_model.bin"
    if damage == "truncated":
        _truncate(weights)
    elif damage == "runs-code":
        torch.save({**model.state_dict(), "hook": RunsCode()}, weights)
    else:
        weights.write_bytes(b"PK\x03\x04 not really a zip")
    with pytest.raises(ValueError) as info:
        VideoUNet.from_2d(tmp_path / "sd")
    _assert_one_line_naming(info, weights)


@pytest.mark.parametrize("damage", ["truncated-safetensors", "truncated-ckpt", "runs-code-ckpt", "config-not-json"])
def test_damaged_single_file_is_one_line_naming_the_file(tmp_path, damage):
    from vidiff.models.unet import VideoUNet

    model = tiny_unet()
    suffix = ".safetensors" if damage == "truncated-safetensors" else ".ckpt"
    path = write_ldm(model, tmp_path, suffix)
    config = tmp_path / "config" / "config.json"
    culprit = path
    if damage.startswith("truncated"):
        _truncate(path)
    elif damage == "runs-code-ckpt":
        torch.save({"state_dict": diffusers_to_ldm(model.state_dict(), dict(model.config)), "hook": RunsCode()}, path)
    else:
        config.write_text('{"block_out_channels": [8, 16')
        culprit = config
    with pytest.raises(ValueError) as info:
        VideoUNet.from_2d(path, config=config)
    _assert_one_line_naming(info, culprit)


def test_damaged_shard_index_is_one_line_naming_the_file(tmp_path):
    model = tiny_unet()
    model.save_pretrained(tmp_path / "sharded", max_shard_size="20KB")
    index = tmp_path / "sharded" / "diffusion_pytorch_model.safetensors.index.json"
    for text in ('{"weight_map": {"a": ', '{"metadata": {}}', '{"weight_map": {"a": 3}}'):
        index.write_text(text)
        with pytest.raises(ValueError) as info:
            load_unet_2d(tmp_path / "sharded")
        _assert_one_line_naming(info, index)
