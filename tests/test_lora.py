"""LoRA adapters (vidiff.adapters): peft injection, the key formats, diffusers' 2D U-Net as the reference,
training with train.trainable=lora, `vidiff generate --lora`. Tiny seeded models, CPU, fp32."""
from __future__ import annotations

import warnings

import pytest
import torch
import torch.nn as nn
from diffusers import UNet2DConditionModel
from einops import rearrange
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from vidiff.adapters import (LoraSettings, add_lora, adapter_names, adapter_parameters, export_lora, fuse_lora,
                             has_lora, load_lora, lora_state_dict, save_lora, set_lora_scales, without_lora)
from vidiff.adapters.formats import parse_lora
from vidiff.adapters.lora import lora_layers, target_modules
from vidiff.models.unet import VideoUNet
from vidiff.models.weights import LoadingError
from vidiff.testing import TINY_UNET

pytestmark = pytest.mark.usefixtures("one_thread")  # (tests/conftest.py)

FRAMES = 2


def make_2d(seed=0) -> UNet2DConditionModel:
    torch.manual_seed(seed)
    unet = UNet2DConditionModel(**TINY_UNET).eval()
    with torch.no_grad():  # non-trivial weights everywhere (diffusers zero-inits some outputs)
        for p in unet.parameters():
            p.normal_(0, 0.1)
    return unet


def make_video(unet2d, temporal_weights=True) -> VideoUNet:
    """The 2D U-Net inflated; with `temporal_weights` its temporal layers get random weights too (so a
    temporal LoRA acts on a layer that is not the identity)."""
    unet = VideoUNet.from_2d_weights(dict(unet2d.config), unet2d.state_dict()).eval()
    if temporal_weights:
        g = torch.Generator().manual_seed(5)
        with torch.no_grad():
            for name, p in unet.named_parameters():
                if ".temporal_attentions." in name:
                    p.copy_(torch.randn(p.shape, generator=g) * 0.1)
    return unet


def inputs(seed=1):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(1, 4, FRAMES, 8, 8, generator=g), torch.tensor([10]), torch.randn(1, 5, 32, generator=g))


def run(unet, x, t, c):
    with torch.no_grad():
        return unet(x, t, c)


def randomise(unet, adapter="default", seed=3):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in adapter_parameters(unet, adapter).values():
            p.copy_(torch.randn(p.shape, generator=g) * 0.2)


@pytest.fixture(scope="module")
def base():
    unet2d = make_2d()
    return unet2d, make_video(unet2d)


@pytest.fixture
def fresh(base):
    """A new plain VideoUNet with the base weights (the module fixture stays untouched)."""
    _, video = base
    state = {k: v.clone() for k, v in video.state_dict().items()}

    def make():
        unet = make_video(make_2d(), temporal_weights=False)
        unet.load_state_dict(state)
        return unet.eval()
    return make


# ---------------------------------------------------------------------------------------------------------------
# injection
# ---------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("targets", ["spatial", "temporal", "both"])
def test_fresh_adapter_leaves_outputs_equal_and_targets_the_named_layers(fresh, targets):
    unet = fresh()
    x, t, c = inputs()
    before = run(unet, x, t, c)
    names = add_lora(unet, LoraSettings(rank=8, targets=targets))
    assert torch.allclose(run(unet, x, t, c), before, atol=1e-6)
    spatial = [n for n in names if ".attentions." in n and ".temporal_" not in n]
    temporal = [n for n in names if ".temporal_attentions." in n]
    assert bool(spatial) == (targets != "temporal") and bool(temporal) == (targets != "spatial")
    assert all(n.rsplit(".", 1)[-1] in ("to_q", "to_k", "to_v", "0", "to_out") for n in names)
    assert all(p.requires_grad for p in unet.parameters())  # peft's freezing undone: training chooses


def test_temporal_targets_cover_animatediff_motion_modules():
    class Motion(nn.Module):  # the Linear layers of diffusers' AnimateDiffTransformer3D, by name
        def __init__(self):
            super().__init__()
            self.down_blocks = nn.ModuleList([nn.Module()])
            block = self.down_blocks[0]
            block.motion_modules = nn.ModuleList([nn.Module()])
            mm = block.motion_modules[0]
            mm.proj_in, mm.proj_out, mm.norm = nn.Linear(8, 8), nn.Linear(8, 8), nn.GroupNorm(2, 8)
            tb = nn.Module()
            mm.transformer_blocks = nn.ModuleList([tb])
            for attn in ("attn1", "attn2"):
                a = nn.Module()
                a.to_q, a.to_k, a.to_v = nn.Linear(8, 8), nn.Linear(8, 8), nn.Linear(8, 8)
                a.to_out = nn.ModuleList([nn.Linear(8, 8), nn.Dropout()])
                setattr(tb, attn, a)
            tb.ff = nn.Module()
            gelu = nn.Module()
            gelu.proj = nn.Linear(8, 32)
            tb.ff.net = nn.ModuleList([gelu, nn.Dropout(), nn.Linear(32, 8)])

    names = target_modules(Motion(), "temporal")
    prefix = "down_blocks.0.motion_modules.0."
    assert set(names) == {prefix + n for n in (  # not proj_in / proj_out: diffusers calls them with input=
        *(f"transformer_blocks.0.{a}.{p}" for a in ("attn1", "attn2")
                                 for p in ("to_q", "to_k", "to_v", "to_out.0")),
        "transformer_blocks.0.ff.net.0.proj", "transformer_blocks.0.ff.net.2")}
    with pytest.raises(ValueError, match="select no layer"):
        target_modules(Motion(), "spatial")


def test_settings_are_checked():
    for bad, match in (({"rank": 0}, "rank must be an integer >= 1"), ({"alpha": -1.0}, "alpha must be a number > 0"),
                       ({"dropout": 1.0}, "dropout must be in"), ({"targets": "all"}, "targets must be one of")):
        with pytest.raises(ValueError, match=match):
            LoraSettings(**bad)


def test_fused_equals_unfused_and_scale_zero_equals_base(fresh):
    unet = fresh()
    x, t, c = inputs()
    before = run(unet, x, t, c)
    add_lora(unet, LoraSettings(rank=4, alpha=8, targets="both"))
    randomise(unet)
    unfused = run(unet, x, t, c)
    assert not torch.allclose(unfused, before, atol=1e-3)
    set_lora_scales(unet, {"default": 0.0})
    assert torch.allclose(run(unet, x, t, c), before, atol=1e-6)
    set_lora_scales(unet, {"default": 1.0})
    with without_lora(unet):  # the base layers alone: the plain VideoUNet's keys and weights
        assert set(unet.state_dict()) == set(fresh().state_dict())
        assert torch.allclose(run(unet, x, t, c), before, atol=1e-6)
    fuse_lora(unet)
    assert not has_lora(unet) and set(unet.state_dict()) == set(fresh().state_dict())
    assert torch.allclose(run(unet, x, t, c), unfused, atol=1e-5)


def manual_delta(weights: dict, scale: float, alpha: float, rank: int) -> dict:
    """module -> scale * alpha / rank * B @ A from peft keys."""
    return {k[:-len(".lora_A.weight")]: scale * alpha / rank * (weights[k.replace("lora_A", "lora_B")] @ v)
            for k, v in weights.items() if k.endswith(".lora_A.weight")}


def test_several_loras_with_scales_equal_the_manual_sum(fresh, tmp_path):
    x, t, c = inputs()
    files = []
    for i, (targets, alpha) in enumerate((("spatial", 2.0), ("both", 8.0))):
        unet = fresh()
        add_lora(unet, LoraSettings(rank=4, alpha=alpha, targets=targets))
        randomise(unet, seed=10 + i)
        files.append((save_lora(unet, tmp_path / f"l{i}.safetensors"), lora_state_dict(unet), alpha))
    unet = fresh()
    names = [load_lora(unet, files[0][0], scale=0.5), load_lora(unet, files[1][0], scale=-0.7)]
    assert names == ["l0", "l1"] and adapter_names(unet) == names
    expected = fresh()
    with torch.no_grad():
        modules = dict(expected.named_modules())
        for (_, weights, alpha), scale in zip(files, (0.5, -0.7)):
            for module, delta in manual_delta(weights, scale, alpha, 4).items():
                modules[module].weight += delta
    assert torch.allclose(run(unet, x, t, c), run(expected, x, t, c), atol=1e-5)
    fuse_lora(unet)
    assert torch.allclose(run(unet, x, t, c), run(expected, x, t, c), atol=1e-5)


# ---------------------------------------------------------------------------------------------------------------
# formats
# ---------------------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def spatial_lora(base, tmp_path_factory):
    """A randomised spatial LoRA (rank 4, alpha 2) on the inflated tiny SD U-Net, saved in diffusers format."""
    unet2d, video = base
    root = tmp_path_factory.mktemp("lora")
    unet = make_video(unet2d)
    add_lora(unet, LoraSettings(rank=4, alpha=2.0, targets="spatial"))
    randomise(unet)
    path = save_lora(unet, root / "spatial.safetensors")
    return {"root": root, "path": path, "unet": unet, "out": run(unet, *inputs())}


def test_spatial_lora_loads_into_diffusers_2d_unet_and_matches_per_frame(base, spatial_lora):
    unet2d = make_2d()  # (the same seeded weights as the base)
    path = spatial_lora["path"]
    with safe_open(str(path), framework="pt") as handle:
        metadata = handle.metadata()
        keys = set(handle.keys())
    assert metadata["rank"] == "4" and metadata["targets"] == '"spatial"' and metadata["vidiff"] == "lora"
    assert all(k.startswith("unet.") and (".lora_A." in k or ".lora_B." in k) for k in keys)
    unet2d.load_lora_adapter(str(path), prefix="unet", adapter_name="vidiff")
    loaded = {k.replace(".vidiff.", "."): v for k, v in unet2d.state_dict().items() if ".lora_" in k}
    assert set(loaded) == {k.removeprefix("unet.") for k in keys}  # nothing missing, nothing unexpected
    tensors = load_file(str(path))
    assert all(torch.equal(loaded[k.removeprefix("unet.")], v) for k, v in tensors.items())
    x, t, c = inputs()
    with torch.no_grad():
        ref = unet2d(rearrange(x, "b c f h w -> (b f) c h w"), t.repeat_interleave(FRAMES),
                     c.repeat_interleave(FRAMES, 0)).sample
    # the VideoUNet with fresh (identity) temporal layers is the 2D U-Net per frame
    unet = make_video(make_2d(), temporal_weights=False)
    load_lora(unet, path)
    assert torch.allclose(run(unet, x, t, c), rearrange(ref, "(b f) c h w -> b c f h w", f=FRAMES), atol=1e-5)


def kohya_keys(diffusers_file) -> dict:
    """The diffusers-key file as kohya / A1111 write it: lora_unet_<path with _>.lora_down/up.weight + .alpha."""
    out = {}
    for key, value in load_file(str(diffusers_file)).items():
        module, part = key.removeprefix("unet.").split(".lora_")
        name = "lora_unet_" + module.replace(".", "_")
        out[f"{name}.{'lora_down' if part.startswith('A') else 'lora_up'}.weight"] = value
        out[f"{name}.alpha"] = torch.tensor(4.0)  # = rank: the diffusers file's scale 1
    out["lora_te_text_model_encoder_layers_0_self_attn_q_proj.lora_down.weight"] = torch.zeros(4, 32)
    out["lora_te_text_model_encoder_layers_0_self_attn_q_proj.lora_up.weight"] = torch.zeros(32, 4)
    return out


def test_kohya_and_old_diffusers_keys_load_like_the_diffusers_file(fresh, spatial_lora, tmp_path):
    x, t, c = inputs()
    reference = fresh()
    load_lora(reference, spatial_lora["path"])
    expected = run(reference, x, t, c)
    assert torch.allclose(expected, spatial_lora["out"], atol=1e-6)
    kohya = tmp_path / "kohya.safetensors"
    save_file(kohya_keys(spatial_lora["path"]), str(kohya))
    unet = fresh()
    with pytest.warns(UserWarning, match=r"skipped 2 text-encoder LoRA keys") as record:
        load_lora(unet, kohya)
    assert len([w for w in record if "text-encoder" in str(w.message)]) == 1
    assert set(lora_state_dict(unet)) == set(lora_state_dict(reference))  # no layer missing
    assert torch.allclose(run(unet, x, t, c), expected, atol=1e-6)
    old = {k.replace(".lora_A.", ".lora.down.").replace(".lora_B.", ".lora.up."): v
           for k, v in load_file(str(spatial_lora["path"])).items()}
    unet = fresh()
    load_lora(unet, old)
    assert torch.allclose(run(unet, x, t, c), expected, atol=1e-6)


def test_comfyui_export_loads_back_equal(fresh, spatial_lora, tmp_path):
    comfy = save_lora(spatial_lora["unet"], tmp_path / "comfy.safetensors", format="comfyui")
    tensors = load_file(str(comfy))
    assert "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q.lora_down.weight" in tensors
    assert float(tensors["lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q.alpha"]) == 2.0
    unet = fresh()
    load_lora(unet, comfy)
    assert torch.allclose(run(unet, *inputs()), spatial_lora["out"], atol=1e-6)
    # and converted back by export_lora (what `vidiff export` calls): the same adapter
    back = export_lora(comfy, tmp_path / "back.safetensors", "diffusers")
    unet = fresh()
    load_lora(unet, back)
    assert torch.allclose(run(unet, *inputs()), spatial_lora["out"], atol=1e-6)


def test_temporal_lora_round_trips_through_comfyui_keys(fresh, tmp_path):
    unet = fresh()
    add_lora(unet, LoraSettings(rank=2, targets="temporal"))
    randomise(unet)
    expected = run(unet, *inputs())
    comfy = save_lora(unet, tmp_path / "t.safetensors", format="comfyui")
    assert any("_temporal_attentions_" in k for k in load_file(str(comfy)))
    again = fresh()
    load_lora(again, comfy)  # kohya names resolved against the U-Net's own module names
    assert torch.allclose(run(again, *inputs()), expected, atol=1e-6)


def test_animatediff_motion_lora_keys_map_to_motion_modules():
    layer = "down_blocks.0.motion_modules.0.transformer_blocks.0.attn1.to_q"
    modules = {layer: nn.Linear(8, 8), layer.replace("attn1", "attn2"): nn.Linear(8, 8)}
    down, up = torch.randn(2, 8), torch.randn(8, 2)
    original = "down_blocks.0.motion_modules.0.temporal_transformer.transformer_blocks.0.attention_blocks.{}.to_q"
    for keys in ({f"unet.{layer}.lora_A.weight": down, f"unet.{layer}.lora_B.weight": up},
                 {original.format(0) + ".lora_down.weight": down, original.format(0) + ".lora_up.weight": up},
                 {original.format(0).replace(".to_q", ".processor.to_q_lora.down.weight"): down,
                  original.format(0).replace(".to_q", ".processor.to_q_lora.up.weight"): up}):
        weights = parse_lora(keys, modules, "motion.safetensors")
        assert set(weights.down) == {layer} and torch.equal(weights.up[layer], up)
    weights = parse_lora({original.format(1) + ".lora_down.weight": down, original.format(1) + ".lora_up.weight": up},
                         modules, "motion.safetensors")
    assert set(weights.down) == {layer.replace("attn1", "attn2")}


def test_keys_that_fit_nothing_are_one_line_before_anything_changes(fresh, tmp_path):
    unet = fresh()
    bad = tmp_path / "other.safetensors"
    save_file({"unet.transformer_blocks.0.attn.to_q.lora_A.weight": torch.zeros(4, 8),
               "unet.transformer_blocks.0.attn.to_q.lora_B.weight": torch.zeros(8, 4)}, str(bad))
    with pytest.raises(LoadingError) as error:
        load_lora(unet, bad)
    message = str(error.value)
    assert "\n" not in message and str(bad) in message and "2 of 2 keys fit no layer" in message
    assert "transformer_blocks.0.attn.to_q.lora_A" in message
    assert not has_lora(unet)
    wrong_shape = {"unet.down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q.lora_A.weight": torch.zeros(4, 9),
                   "unet.down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q.lora_B.weight": torch.zeros(16, 4)}
    with pytest.raises(LoadingError, match="shapes that do not fit"):
        load_lora(unet, wrong_shape)
    with pytest.raises(LoadingError, match="lack their lora_A/lora_B pair"):
        load_lora(unet, dict(list(wrong_shape.items())[:1]))
    assert not has_lora(unet) and not lora_layers(unet)


# ---------------------------------------------------------------------------------------------------------------
# training: train.trainable=lora
# ---------------------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def train_assets(tmp_path_factory):
    from vidiff.data.synthetic import write_shapes_dataset
    from vidiff.testing import make_tiny_video_pipeline

    root = tmp_path_factory.mktemp("lora-train")
    video = make_tiny_video_pipeline(root / "video")
    shapes = root / "shapes"
    write_shapes_dataset(shapes, 2, num_frames=2, size=16, seed=0)
    return {"root": root, "video": video, "shapes": shapes}


LORA_RUN = ["train.trainable=lora", "train.lora.targets=both", "train.lora.rank=4", "train.max_steps=4",
            "train.checkpoint_every=2", "train.ema=true", "train.lr_scheduler=cosine", "train.caption_dropout=0.3"]


def lora_run_config(out, assets, *overrides):
    from pathlib import Path

    from vidiff.config import load_config

    tiny = Path(__file__).resolve().parents[1] / "configs" / "train" / "tiny.yaml"
    return load_config(tiny, [f"model.pretrained={assets['video']}", f"data.manifest={assets['shapes']}",
                              f"output_dir={out}", *LORA_RUN, *overrides])


def last_checkpoint(out):
    from vidiff.training.checkpoints import list_checkpoints

    return load_file(str(list_checkpoints(out / "checkpoints")[-1] / "model.safetensors"))


def test_lora_training_trains_only_the_adapter_and_resumes_exactly(train_assets, tmp_path):
    from vidiff.pipelines import VideoPipeline
    from vidiff.training.trainer import train

    straight = train(lora_run_config(tmp_path / "straight", train_assets))
    assert straight.status == "finished" and straight.step == 4
    weights = last_checkpoint(tmp_path / "straight")
    assert weights and all(".lora_A." in k or ".lora_B." in k for k in weights)  # the adapter alone
    assert any(".attn1." in k for k in weights) and any(".temporal_attentions." in k for k in weights)
    assert any(k.endswith(".lora_B.default.weight") and v.abs().sum() > 0 for k, v in weights.items())

    out = tmp_path / "resumed"
    cfg = lora_run_config(out, train_assets)
    assert train(cfg, on_step=lambda step, row: step == 2).status == "interrupted"
    assert train(cfg, resume="auto").step == 4
    resumed = last_checkpoint(out)
    assert weights.keys() == resumed.keys() and all(torch.equal(weights[k], resumed[k]) for k in weights)
    with pytest.raises(ValueError, match="train.lora=.* was trained with"):
        train(lora_run_config(out, train_assets, "train.lora.rank=2"), resume="auto")

    # The export: the base weights unfused (as the source folder's) and the adapter beside them, applied on load.
    folder = tmp_path / "straight" / "pipeline"
    base_weights = load_file(str(train_assets["video"] / "unet" / "diffusion_pytorch_model.safetensors"))
    exported = load_file(str(folder / "unet" / "diffusion_pytorch_model.safetensors"))
    assert exported.keys() == base_weights.keys() and all(torch.equal(exported[k], base_weights[k]) for k in exported)
    with safe_open(str(folder / "unet" / "lora.safetensors"), framework="pt") as handle:
        assert handle.metadata()["targets"] == '"both"' and handle.metadata()["rank"] == "4"
    pipe = VideoPipeline.from_pretrained(folder, device="cpu", dtype="fp32")
    assert pipe.info.extra["lora"]["rank"] == 4 and adapter_names(pipe.unet) == ["default"]
    plain = VideoPipeline.from_pretrained(train_assets["video"], device="cpu", dtype="fp32")
    x, t, c = inputs()
    assert not torch.allclose(run(pipe.unet, x, t, c), run(plain.unet, x, t, c), atol=1e-6)
    # the motion module written beside the pipeline holds the merged weights
    fused = VideoPipeline.from_pretrained(folder, device="cpu", dtype="fp32").unet
    fuse_lora(fused)
    temporal = load_file(str(tmp_path / "straight" / "temporal.safetensors"))
    assert all(torch.allclose(v, fused.state_dict()[k], atol=1e-6) for k, v in temporal.items())


def test_lora_training_counts(train_assets):
    """rank 8, targets both / spatial / temporal on the tiny inflated U-Net: the adapter's size (reported)."""
    from vidiff.stages import make_stage
    from vidiff.training.trainer import select_trainable

    counts = {}
    for targets in ("spatial", "temporal", "both"):
        unet = VideoUNet.from_pretrained(train_assets["video"] / "unet")
        trainable = select_trainable(unet, "lora", make_stage("base"), lora=LoraSettings(rank=8, targets=targets))
        assert set(trainable) == set(adapter_parameters(unet))
        assert all(p.requires_grad == (n in trainable) for n, p in unet.named_parameters())
        counts[targets] = sum(p.numel() for p in trainable.values())
    assert counts["both"] == counts["spatial"] + counts["temporal"]
    print("trainable LoRA parameters at rank 8:", counts)


# ---------------------------------------------------------------------------------------------------------------
# vidiff generate --lora
# ---------------------------------------------------------------------------------------------------------------
def generate(capsys, model, out, *extra):
    from vidiff.cli import main

    code = main([str(a) for a in ("generate", "--model", model, "--prompt", "a red circle", "--num-frames", 2,
                                  "--height", 16, "--width", 16, "--steps", 2, "--seed", 1, "--quiet", "--out", out,
                                  *extra)])
    _, err = capsys.readouterr()
    return code, err


def frames_of(folder):
    import numpy as np
    from PIL import Image

    return np.stack([np.asarray(Image.open(p)) for p in sorted(folder.glob("*.png"))])


def test_generate_with_lora(train_assets, tmp_path, capsys):
    model = train_assets["video"]
    unet = VideoUNet.from_pretrained(model / "unet")
    add_lora(unet, LoraSettings(rank=4, targets="spatial"))
    randomise(unet, seed=7)
    lora = save_lora(unet, tmp_path / "style.safetensors", format="comfyui")

    assert generate(capsys, model, tmp_path / "plain")[0] == 0
    assert generate(capsys, model, tmp_path / "off", "--lora", f"{lora}:0")[0] == 0
    code, err = generate(capsys, model, tmp_path / "on", "--lora", lora)
    assert code == 0 and "LoRA: style x1" in err
    assert generate(capsys, model, tmp_path / "fused", "--lora", f"{lora}:1.0", "--fuse")[0] == 0
    plain, off, on, fused = (frames_of(tmp_path / n) for n in ("plain", "off", "on", "fused"))
    assert (plain == off).all() and not (plain == on).all()
    assert abs(on.astype(int) - fused.astype(int)).max() <= 1  # (rounding of the merged weights)
    sidecar = __import__("json").loads((tmp_path / "on.json").read_text())
    assert sidecar["loras"] == [{"file": str(lora.resolve()), "scale": 1.0}] and sidecar["fused"] is False


def test_generate_lora_errors_are_one_line(train_assets, tmp_path, capsys):
    model = train_assets["video"]
    bad_keys = tmp_path / "other.safetensors"
    save_file({"lora_unet_single_blocks_0_linear1.lora_down.weight": torch.zeros(4, 8),
               "lora_unet_single_blocks_0_linear1.lora_up.weight": torch.zeros(8, 4)}, str(bad_keys))
    file = tmp_path / "f.safetensors"
    file.write_bytes(bad_keys.read_bytes())
    for flags, message in ((["--lora", tmp_path / "missing.safetensors"], "missing.safetensors does not exist"),
                           (["--lora", f"{file}:abc"], "scale 'abc' is not a number"),
                           (["--lora", f"{file}:11"], "--lora must be between -10 and 10"),
                           (["--lora", bad_keys], "2 of 2 keys fit no layer of this U-Net"),
                           (["--fuse"], "--fuse merges LoRA adapters")):
        code, err = generate(capsys, model, tmp_path / "x.mp4", *flags)
        lines = [line for line in err.splitlines() if line.strip()]
        assert code == 2 and len(lines) == 1 and message in lines[0], (flags, err)
        assert not (tmp_path / "x.mp4").exists()
