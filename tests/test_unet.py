"""VideoUNet against diffusers' 2D U-Net and plain-einsum references (tiny seeded configs, CPU, fp32)."""
import json
import warnings

import pytest
import torch
from diffusers import UNet2DConditionModel
from diffusers.models.attention_processor import Attention
from einops import rearrange
from safetensors import safe_open

import vidiff
from vidiff.models import attention as attention_mod
from vidiff.models.attention import AttentionBackendError, VideoAttnProcessor
from vidiff.models.unet import VideoUNet, is_temporal_parameter
from vidiff.models.weights import LoadingError
from vidiff.spec import ATTENTION_BACKENDS, CROSS_FRAME_MODES

TOL = 1e-5

SD1 = dict(block_out_channels=(16, 32), layers_per_block=1, norm_num_groups=8, cross_attention_dim=16,
           sample_size=8, attention_head_dim=4,
           down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"))
SD2 = dict(block_out_channels=(16, 32, 32), layers_per_block=2, norm_num_groups=8, cross_attention_dim=24,
           sample_size=8, attention_head_dim=(2, 4, 8), use_linear_projection=True, upcast_attention=True,
           down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
           up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"))
X4 = dict(in_channels=7, out_channels=4, block_out_channels=(16, 32), layers_per_block=1, norm_num_groups=8,
          cross_attention_dim=16, sample_size=8, attention_head_dim=8, num_class_embeds=1000,
          down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"), up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"))
ONLY_CROSS = dict(SD1, only_cross_attention=True)
# Imagen's pooled text embedding added to the timestep embedding (the demo models use it)
POOLED_TEXT = dict(SD1, addition_embed_type="text", addition_embed_type_num_heads=2)
CONFIGS = {"sd1": SD1, "sd2": SD2, "x4-upscaler": X4, "only-cross-attention": ONLY_CROSS,
           "pooled-text": POOLED_TEXT}


def make_2d(config, seed=0):
    torch.manual_seed(seed)
    unet = UNet2DConditionModel(**config).eval()
    with torch.no_grad():  # random, non-trivial weights everywhere (diffusers zero-inits some outputs)
        for p in unet.parameters():
            p.normal_(0, 0.1)
    return unet


def inputs(unet2d, b=2, f=4, size=16, seed=1):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(b, unet2d.config.in_channels, f, size, size, generator=g)
    context = torch.randn(b, 5, unet2d.config.cross_attention_dim, generator=g)
    t = torch.tensor([10, 500][:b])
    labels = torch.tensor([20, 350][:b]) if unet2d.config.num_class_embeds else None
    return x, t, context, labels


def per_frame_2d(unet2d, x, t, context, labels):
    """Reference: diffusers' U-Net on every frame, frames folded into the batch."""
    f = x.shape[2]
    with torch.no_grad():
        out = unet2d(rearrange(x, "b c f h w -> (b f) c h w"), t.repeat_interleave(f),
                     context.repeat_interleave(f, dim=0),
                     class_labels=None if labels is None else labels.repeat_interleave(f)).sample
    return rearrange(out, "(b f) c h w -> b c f h w", f=f)


@pytest.fixture(scope="module")
def sd1_folder(tmp_path_factory):
    path = tmp_path_factory.mktemp("sd1") / "unet"
    make_2d(SD1).save_pretrained(path)
    return path


@pytest.mark.parametrize("name", list(CONFIGS))
@pytest.mark.parametrize("f", [1, 4])
def test_inflated_equals_2d_per_frame(tmp_path, name, f):
    unet2d = make_2d(CONFIGS[name])
    unet2d.save_pretrained(tmp_path / "unet")
    video = VideoUNet.from_2d(tmp_path / "unet").eval()
    x, t, context, labels = inputs(unet2d, f=f)
    with torch.no_grad():
        out = video(x, t, context, class_labels=labels)
    ref = per_frame_2d(unet2d, x, t, context, labels)
    assert out.shape == (2, unet2d.config.out_channels, f, 16, 16)
    assert (out - ref).abs().max() <= TOL


def test_odd_latent_size_matches_2d(sd1_folder):
    unet2d = UNet2DConditionModel.from_pretrained(sd1_folder).eval()
    video = VideoUNet.from_2d(sd1_folder).eval()
    x, t, context, labels = inputs(unet2d, f=2, size=14)
    x = x[..., :13]  # 14 x 13: not a multiple of the U-Net's factor 2
    with torch.no_grad():
        out = video(x, t, context)
    assert (out - per_frame_2d(unet2d, x, t, context, labels)).abs().max() <= TOL


def test_temporal_layers_present_and_named(sd1_folder):
    video = VideoUNet.from_2d(sd1_folder)
    names = [n for n, _ in video.named_parameters() if is_temporal_parameter(n)]
    assert any(".temporal_convs." in n for n in names) and any(".temporal_attentions." in n for n in names)
    spatial = [n for n, _ in video.named_parameters() if n not in names]
    assert sorted(spatial) == sorted(n for n, _ in UNet2DConditionModel.from_pretrained(sd1_folder).named_parameters())
    assert {id(p) for p in video.temporal_parameters()} == {id(p) for n, p in video.named_parameters() if n in names}
    off = VideoUNet.from_2d(sd1_folder, temporal_conv=False, temporal_attention=False)
    assert not list(off.temporal_parameters())
    assert sum(p.numel() for p in off.parameters()) == sum(
        p.numel() for p in UNet2DConditionModel.from_pretrained(sd1_folder).parameters())


# ------------------------------------------------------------------------------------------- cross-frame
# Written out here independently of vidiff.spec: every registered mode needs a reference.
REFERENCE_SOURCES = {"none": lambda i: [i], "first": lambda i: [0], "sparse-causal": lambda i: [0, max(i - 1, 0)]}


def test_every_cross_frame_mode_has_a_reference():
    assert set(CROSS_FRAME_MODES) == set(REFERENCE_SOURCES)


def reference_cross_frame(attn, x, num_frames, mode):
    """Plain-einsum attention where frame i's keys/values come from frames `sources(i)`."""
    b = x.shape[0] // num_frames
    x = x.reshape(b, num_frames, *x.shape[1:])
    heads = attn.heads
    outs = []
    for i in range(num_frames):
        sources = REFERENCE_SOURCES[mode](i)
        ctx = torch.cat([x[:, s] for s in sources], dim=1)
        q = attn.to_q(x[:, i]).unflatten(-1, (heads, -1))
        k = attn.to_k(ctx).unflatten(-1, (heads, -1))
        v = attn.to_v(ctx).unflatten(-1, (heads, -1))
        w = torch.einsum("bqhd,bkhd->bhqk", q, k).mul(q.shape[-1] ** -0.5).softmax(-1)
        o = torch.einsum("bhqk,bkhd->bqhd", w, v).flatten(-2)
        outs.append(attn.to_out[0](o))
    return torch.stack(outs, dim=1).flatten(0, 1)


@pytest.mark.parametrize("mode", CROSS_FRAME_MODES)
@pytest.mark.parametrize("backend", ["sdpa", "math"])
def test_cross_frame_attention_matches_einsum(mode, backend):
    torch.manual_seed(0)
    attn = Attention(query_dim=16, heads=2, dim_head=8)
    attn.set_processor(VideoAttnProcessor(backend, cross_frame=mode))
    f = 4
    x = torch.randn(2 * f, 6, 16)
    with torch.no_grad():
        out = attn(x, num_frames=f)
        ref = reference_cross_frame(attn, x, f, mode)
    assert (out - ref).abs().max() <= TOL


@pytest.mark.parametrize("mode", ["first", "sparse-causal"])
def test_cross_frame_keeps_frame0_and_changes_others(sd1_folder, mode):
    video = VideoUNet.from_2d(sd1_folder).eval()
    unet2d = UNet2DConditionModel.from_pretrained(sd1_folder)
    x, t, context, _ = inputs(unet2d, f=4)
    with torch.no_grad():
        for module in video.modules():  # sharpen and amplify self-attention (random weights make it a
            if isinstance(module, Attention) and not module.is_cross_attention:  # near-uniform, small average)
                module.to_q.weight.mul_(4.0)
                module.to_v.weight.mul_(20.0)
        per_frame = video(x, t, context)
        video.set_cross_frame(mode)
        crossed = video(x, t, context)
    assert (crossed[:, :, 0] - per_frame[:, :, 0]).abs().max() <= TOL
    assert (crossed[:, :, 1:] - per_frame[:, :, 1:]).abs().max() > 1e-3
    assert VideoUNet.from_2d(sd1_folder, cross_frame=mode).cross_frame == mode


def test_bad_options_are_clear_errors(sd1_folder):
    with pytest.raises(ValueError, match="cross_frame"):
        VideoUNet.from_2d(sd1_folder, cross_frame="previous")
    with pytest.raises(ValueError, match="attention backend"):
        VideoUNet.from_2d(sd1_folder, attention_backend="flash")
    with pytest.raises(ValueError, match="unknown VideoUNet option"):
        VideoUNet.from_2d(sd1_folder, temporal_convs=True)
    with pytest.raises(ValueError, match="stage must be a lower-case stage name.*'Super Res'"):
        VideoUNet.from_2d(sd1_folder, stage="Super Res")
    with pytest.raises(ValueError, match="conditioning_channels must be an integer >= 0, got -1"):
        VideoUNet.from_2d(sd1_folder, conditioning_channels=-1)
    with pytest.raises(ValueError, match="temporal_conv must be true or false, got 'yes'"):
        VideoUNet.from_2d(sd1_folder, temporal_conv="yes")
    # Options are checked before any weights are read or downloaded.
    with pytest.raises(ValueError, match="unknown cross_frame mode 'previous'"):
        VideoUNet.from_2d("someone/not-downloaded", cross_frame="previous")
    with pytest.raises(ValueError, match="unknown attention backend 'flash'"):
        VideoUNet.from_pretrained(sd1_folder.parent / "missing", attention_backend="flash")
    video = VideoUNet.from_2d(sd1_folder)
    with pytest.raises(ValueError, match=r"\(b, c, f, h, w\)"):
        video(torch.randn(2, 4, 8, 8), 1, torch.randn(2, 5, 16))
    with pytest.raises(ValueError, match="channels"):
        video(torch.randn(1, 3, 2, 8, 8), 1, torch.randn(1, 5, 16))


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error where xformers cannot run")
def test_forcing_xformers_without_cuda_is_a_clear_error(sd1_folder):
    video = VideoUNet.from_2d(sd1_folder)
    with pytest.raises(AttentionBackendError, match=r"'xformers' .*cannot run here \(it needs a CUDA device\).*'sdpa'"
                       ) as info:
        video.set_attention_backend("xformers")
    assert isinstance(info.value, RuntimeError) and "\n" not in str(info.value)
    assert video.attention_backend == "auto"  # the refused choice left the model as it was
    assert attention_mod.backend_unavailable("xformers") == "it needs a CUDA device"
    assert attention_mod.backend_unavailable("sdpa") is None and attention_mod.backend_unavailable("auto") is None


def test_xformers_kernel_refusal_is_one_line(monkeypatch):
    """xformers raises NotImplementedError with a many-line table when no kernel fits the inputs."""
    import sys
    import types

    def refuse(q, k, v):
        raise NotImplementedError("No operator found for `memory_efficient_attention_forward` with inputs:\n"
                                  "     query : shape=(1, 2, 3, 4)\n`cutlassF` is not supported because: ...")

    fake = types.ModuleType("xformers.ops")
    fake.memory_efficient_attention = refuse
    monkeypatch.setitem(sys.modules, "xformers", types.ModuleType("xformers"))
    monkeypatch.setitem(sys.modules, "xformers.ops", fake)
    q = torch.randn(1, 2, 3, 4)
    with pytest.raises(AttentionBackendError, match=r"'xformers' cannot run on .*No operator found.*'sdpa'") as info:
        attention_mod.attention(q, q, q, "xformers")
    assert "\n" not in str(info.value)


def test_backend_registry_matches_the_names():
    assert ATTENTION_BACKENDS == ("auto", *attention_mod.BACKENDS)
    assert attention_mod.resolve_backend("auto", torch.device("cpu")) == "sdpa"
    q, k, v = (torch.randn(2, 2, 5, 4, generator=torch.Generator().manual_seed(i)) for i in range(3))
    for name in ("sdpa", "math"):
        assert (attention_mod.attention(q, k, v, name) - attention_mod.math_attention(q, k, v)).abs().max() <= TOL


# ------------------------------------------------------------------------------------------- backends
def test_sdpa_and_math_backends_agree(sd1_folder):
    video = VideoUNet.from_2d(sd1_folder, cross_frame="sparse-causal").eval()
    _train_temporal_one_step(video)  # so the temporal attention is not the identity
    x, t, context, _ = inputs(UNet2DConditionModel.from_pretrained(sd1_folder), f=4)
    with torch.no_grad():
        video.set_attention_backend("sdpa")
        a = video(x, t, context)
        video.set_attention_backend("math")
        b = video(x, t, context)
    assert (a - b).abs().max() <= TOL


def test_attention_chunks_large_batches(monkeypatch):
    torch.manual_seed(0)
    q, k, v = (torch.randn(10, 2, 3, 4) for _ in range(3))
    full = attention_mod.attention(q, k, v, "sdpa")
    monkeypatch.setattr(attention_mod, "MAX_BATCH_HEADS", 6)  # 3 items per chunk
    assert torch.equal(attention_mod.attention(q, k, v, "sdpa"), full)
    assert (full - attention_mod.math_attention(q, k, v)).abs().max() <= TOL


# ------------------------------------------------------------------------------------------- training
def _train_temporal_one_step(video, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(1, 4, 4, 8, 8, generator=g)
    context = torch.randn(1, 5, 16, generator=g)
    opt = torch.optim.Adam(video.temporal_parameters(), lr=1e-2)
    loss = (video(x, 500, context) - torch.randn(x.shape, generator=g)).pow(2).mean()
    loss.backward()
    opt.step()
    opt.zero_grad()


def test_one_temporal_step_makes_frames_interact_and_leaves_spatial_weights(sd1_folder):
    video = VideoUNet.from_2d(sd1_folder)
    video.freeze_spatial()
    spatial_before = {n: p.detach().clone() for n, p in video.named_parameters() if ".temporal_" not in n}
    assert all(not p.requires_grad for n, p in video.named_parameters() if n in spatial_before)
    x, t, context, _ = inputs(UNet2DConditionModel.from_pretrained(sd1_folder), b=1, f=4)
    x2 = x.clone()
    x2[:, :, 3] += 1.0  # change frame 3 only

    def frame0_gap():
        with torch.no_grad():
            return (video(x, t, context)[:, :, 0] - video(x2, t, context)[:, :, 0]).abs().max()

    assert frame0_gap() <= TOL  # at init, frames are independent
    _train_temporal_one_step(video)
    assert frame0_gap() > 1e-4  # after one step on the temporal layers, frame 3 reaches frame 0
    for n, p in video.named_parameters():
        if n in spatial_before:
            assert torch.equal(p, spatial_before[n]), n


def test_gradient_checkpointing_gives_same_gradients(sd1_folder):
    grads = []
    for ckpt in (False, True):
        torch.manual_seed(0)  # the temporal attention's q/k/v projections are randomly initialised
        video = VideoUNet.from_2d(sd1_folder, cross_frame="first")
        _train_temporal_one_step(video)
        if ckpt:
            video.enable_gradient_checkpointing()
        x = torch.randn(1, 4, 3, 8, 8, generator=torch.Generator().manual_seed(3))
        video(x, 10, torch.ones(1, 5, 16)).square().mean().backward()
        grads.append(torch.cat([p.grad.flatten() for p in video.parameters()]))
    assert (grads[0] - grads[1]).abs().max() <= 1e-6


def test_conditioning_channels_start_at_zero(sd1_folder):
    video = VideoUNet.from_2d(sd1_folder, conditioning_channels=3).eval()
    base = VideoUNet.from_2d(sd1_folder).eval()
    assert video.in_channels == 4 and video.conditioning_channels == 3
    unet2d = UNet2DConditionModel.from_pretrained(sd1_folder)
    assert video.conv_in.weight.shape == (16, 7, 3, 3)
    assert torch.equal(video.conv_in.weight[:, :4], unet2d.conv_in.weight)
    assert torch.equal(video.conv_in.weight[:, 4:], torch.zeros(16, 3, 3, 3))
    x, t, context, _ = inputs(unet2d, f=2)
    cond = torch.randn(2, 3, 2, 16, 16)
    with torch.no_grad():
        out = video(torch.cat([x, cond], dim=1), t, context)
        assert (out - base(x, t, context)).abs().max() <= TOL


# ------------------------------------------------------------------------------------------- files
def test_save_pretrained_round_trip(tmp_path, sd1_folder):
    video = VideoUNet.from_2d(sd1_folder, cross_frame="sparse-causal", conditioning_channels=2,
                              stage="interpolation").eval()
    _train_temporal_one_step_cond(video)
    video.save_pretrained(tmp_path / "video_unet")
    assert sorted(p.name for p in (tmp_path / "video_unet").iterdir()) == [
        "config.json", "diffusion_pytorch_model.safetensors"]
    saved = json.loads((tmp_path / "video_unet" / "config.json").read_text())
    assert (saved["stage"], saved["conditioning_channels"], saved["in_channels"]) == ("interpolation", 2, 4)
    loaded = vidiff.VideoUNet.from_pretrained(tmp_path / "video_unet", cross_frame="sparse-causal").eval()
    assert loaded.config == video.config  # the mode is a runtime choice, given again at load
    assert (loaded.config["stage"], loaded.conditioning_channels) == ("interpolation", 2)
    x = torch.randn(1, 6, 3, 8, 8)
    with torch.no_grad():
        assert torch.equal(loaded(x, 7, torch.ones(1, 5, 16)), video(x, 7, torch.ones(1, 5, 16)))


def _train_temporal_one_step_cond(video):
    with torch.no_grad():
        for p in video.temporal_parameters():
            p.add_(torch.randn_like(p) * 0.05)


def test_save_and_load_temporal(tmp_path, sd1_folder):
    trained = VideoUNet.from_2d(sd1_folder).eval()
    _train_temporal_one_step(trained)
    trained.save_temporal(tmp_path / "motion.safetensors")
    fresh = VideoUNet.from_2d(sd1_folder).eval()
    x = torch.randn(1, 4, 3, 8, 8)
    with torch.no_grad():
        assert not torch.equal(fresh(x, 7, torch.ones(1, 5, 16)), trained(x, 7, torch.ones(1, 5, 16)))
        fresh.load_temporal(tmp_path / "motion.safetensors")
        assert torch.equal(fresh(x, 7, torch.ones(1, 5, 16)), trained(x, 7, torch.ones(1, 5, 16)))
    from safetensors.torch import load_file
    assert all(".temporal_" in k for k in load_file(tmp_path / "motion.safetensors"))


def test_load_errors_name_the_keys(tmp_path, sd1_folder):
    from safetensors.torch import load_file, save_file

    video = VideoUNet.from_2d(sd1_folder)
    video.save_pretrained(tmp_path / "v")
    weights = tmp_path / "v" / "diffusion_pytorch_model.safetensors"
    state = load_file(weights)
    del state["conv_in.weight"]
    save_file(state, weights)
    with pytest.raises(ValueError, match=r"1 missing key.*conv_in\.weight"):
        VideoUNet.from_pretrained(tmp_path / "v")
    video.save_temporal(tmp_path / "m.safetensors")
    motion = load_file(tmp_path / "m.safetensors")
    key = next(iter(motion))
    motion[key] = torch.zeros(3, 3)
    save_file(motion, tmp_path / "m.safetensors")
    with pytest.raises(ValueError, match=key.replace(".", r"\.")):
        video.load_temporal(tmp_path / "m.safetensors")
    with pytest.raises(FileNotFoundError, match="VideoUNet"):
        VideoUNet.from_pretrained(tmp_path / "nothing-here")


class _RunsCode:
    """Unpickling this would call os.getcwd(): a stand-in for a checkpoint that runs code."""

    def __reduce__(self):
        import os

        return (os.getcwd, ())


def test_non_weights_only_pickle_is_refused(tmp_path, sd1_folder):
    state = UNet2DConditionModel.from_pretrained(sd1_folder).state_dict()
    torch.save({"state_dict": state, "hook": _RunsCode()}, tmp_path / "evil.ckpt")
    with pytest.raises(ValueError, match="weights-only"):
        VideoUNet.from_2d(tmp_path / "evil.ckpt", config=sd1_folder / "config.json")


def test_bf16_forward_tracks_fp32(sd1_folder):
    """Half-precision plumbing (timestep embedding cast, position encoding dtype, attention) on the CPU; the
    same code path runs in fp16/bf16 on a GPU."""
    torch.manual_seed(0)
    video = VideoUNet.from_2d(sd1_folder, cross_frame="first").eval()
    _train_temporal_one_step(video)
    x, t, context, _ = inputs(UNet2DConditionModel.from_pretrained(sd1_folder), f=3)
    with torch.no_grad():
        ref = video(x, t, context)
        out = video.to(torch.bfloat16)(x.bfloat16(), t, context.bfloat16())
    assert out.dtype == torch.bfloat16
    assert (out.float() - ref).abs().max() <= 0.05 * ref.abs().max()


# ------------------------------------------------------------------------------------------- runtime options
def test_backend_forced_at_save_is_not_saved_and_loads_on_cpu(tmp_path, sd1_folder, monkeypatch):
    """Issue 9: a U-Net trained with attention_backend=xformers on a CUDA box must load on a CPU machine."""
    video = VideoUNet.from_2d(sd1_folder, cross_frame="first").eval()
    _train_temporal_one_step_cond(video)
    with monkeypatch.context() as cuda_box:  # pretend xformers runs here, as on the machine that trained it
        cuda_box.setitem(attention_mod.BACKENDS, "xformers",
                         attention_mod.Backend(attention_mod.math_attention, fused=False))
        video.set_attention_backend("xformers")
        video.save_pretrained(tmp_path / "trained")
    saved = json.loads((tmp_path / "trained" / "config.json").read_text())
    assert "attention_backend" not in saved and "cross_frame" not in saved
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a clean load: nothing to warn about
        loaded = VideoUNet.from_pretrained(tmp_path / "trained", cross_frame="first").eval()
    assert loaded.attention_backend == "auto" and loaded.cross_frame == "first"
    video.set_attention_backend("sdpa")
    x = torch.randn(1, 4, 3, 8, 8)
    with torch.no_grad():
        assert (loaded(x, 7, torch.ones(1, 5, 16)) - video(x, 7, torch.ones(1, 5, 16))).abs().max() <= TOL


def test_cross_frame_mode_is_not_saved(tmp_path, sd1_folder):
    """Issue 18: the cross-frame mode is a per-call setting (the pipeline folder suggests one in vidiff.json), so
    a U-Net saved in one mode reloads in the default mode, and its config and temporal file do not record it."""
    video = VideoUNet.from_2d(sd1_folder)
    video.set_cross_frame("first")
    video.save_pretrained(tmp_path / "saved")
    video.save_temporal(tmp_path / "temporal.safetensors")
    assert "cross_frame" not in json.loads((tmp_path / "saved" / "config.json").read_text())
    with safe_open(str(tmp_path / "temporal.safetensors"), framework="pt") as handle:
        assert "cross_frame" not in json.loads(handle.metadata()["config"])
    assert VideoUNet.from_pretrained(tmp_path / "saved").cross_frame == "none"
    assert video.cross_frame == "first" and "cross_frame" not in video.config


def test_old_config_with_a_cross_frame_mode_loads(tmp_path, sd1_folder):
    """U-Nets saved before issue 18 record the mode they were made with: it is dropped, without a warning, and
    the caller's mode (default "none") is used; saving again writes a config without it."""
    VideoUNet.from_2d(sd1_folder).save_pretrained(tmp_path / "old")
    config_file = tmp_path / "old" / "config.json"
    config_file.write_text(json.dumps({**json.loads(config_file.read_text()), "cross_frame": "sparse-causal"}))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert VideoUNet.from_pretrained(tmp_path / "old").cross_frame == "none"
        loaded = VideoUNet.from_pretrained(tmp_path / "old", cross_frame="first")
    assert loaded.cross_frame == "first"
    loaded.save_pretrained(tmp_path / "old")  # an earlier VideoUNet folder: replaced
    assert "cross_frame" not in json.loads(config_file.read_text())


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks a machine where xformers cannot run")
def test_old_config_with_a_backend_falls_back_to_auto_with_one_warning(tmp_path, sd1_folder):
    VideoUNet.from_2d(sd1_folder).save_pretrained(tmp_path / "old")
    config_file = tmp_path / "old" / "config.json"
    config_file.write_text(json.dumps({**json.loads(config_file.read_text()), "attention_backend": "xformers"}))
    with pytest.warns(UserWarning, match=r"attention_backend='xformers'.*'auto' is used") as caught:
        loaded = VideoUNet.from_pretrained(tmp_path / "old")
    assert len([w for w in caught if "attention_backend" in str(w.message)]) == 1
    assert loaded.attention_backend == "auto"
    # Asking for it explicitly on this machine is still the caller's error, one line.
    with pytest.raises(AttentionBackendError):
        VideoUNet.from_pretrained(tmp_path / "old", attention_backend="xformers")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # an explicit choice replaces the saved one without a warning
        assert VideoUNet.from_pretrained(tmp_path / "old", attention_backend="math").attention_backend == "math"


# ------------------------------------------------------------------------------------------- nothing the user has is lost
def test_save_pretrained_replaces_only_its_own_folder(tmp_path, sd1_folder):
    video = VideoUNet.from_2d(sd1_folder).eval()
    # A folder of the user's files, a plain file, and a diffusers (not vidiff) U-Net folder: all refused, kept.
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep me")
    (tmp_path / "file").write_text("keep me too")
    for target in (tmp_path / "mine", tmp_path / "file", sd1_folder):
        before = {p: p.read_bytes() for p in ([target] if target.is_file() else target.rglob("*"))}
        with pytest.raises(FileExistsError, match=f"{target} exists and is a (folder|file) that is not a VideoUNet "
                                                  "folder"):
            video.save_pretrained(target)
        assert {p: p.read_bytes() for p in ([target] if target.is_file() else target.rglob("*"))} == before
    # An empty folder and an earlier VideoUNet folder are replaced; not one the user has added a file to.
    (tmp_path / "empty").mkdir()
    video.save_pretrained(tmp_path / "empty")
    (tmp_path / "empty" / "README.md").write_text("my notes")
    with pytest.raises(FileExistsError, match="not a VideoUNet folder holding only what save_pretrained writes"):
        video.save_pretrained(tmp_path / "empty")
    (tmp_path / "empty" / "README.md").unlink()
    _train_temporal_one_step_cond(video)
    video.save_pretrained(tmp_path / "empty")
    from safetensors.torch import load_file

    saved = load_file(tmp_path / "empty" / "diffusion_pytorch_model.safetensors")
    assert all(torch.equal(saved[k], v) for k, v in video.state_dict().items())


def test_save_temporal_replaces_only_its_own_file(tmp_path, sd1_folder):
    from safetensors.torch import load_file, save_file

    video = VideoUNet.from_2d(sd1_folder)
    user_weights = tmp_path / "lora.safetensors"
    save_file({"a": torch.ones(2)}, user_weights)  # someone's safetensors without vidiff's metadata
    (tmp_path / "notes.safetensors").write_text("not even safetensors")
    (tmp_path / "folder.safetensors").mkdir()
    for target in (user_weights, tmp_path / "notes.safetensors"):
        with pytest.raises(FileExistsError, match=f"{target} exists and is a file that is not a vidiff "
                                                  "temporal-layers file"):
            video.save_temporal(target)
    with pytest.raises(FileExistsError, match="folder.safetensors is a folder; save_temporal writes one"):
        video.save_temporal(tmp_path / "folder.safetensors")
    assert (tmp_path / "folder.safetensors").is_dir()
    assert torch.equal(load_file(user_weights)["a"], torch.ones(2))
    assert (tmp_path / "notes.safetensors").read_text() == "not even safetensors"
    video.save_temporal(tmp_path / "motion.safetensors")
    _train_temporal_one_step_cond(video)
    video.save_temporal(tmp_path / "motion.safetensors")  # an earlier temporal file is replaced
    saved = load_file(tmp_path / "motion.safetensors")
    assert all(torch.equal(saved[k], video.state_dict()[k]) for k in saved)


def test_from_2d_weights_keeps_a_pretrained_condition(tmp_path):
    """An SD x4-upscaler-style U-Net already takes its condition (3 pixel channels) in conv_in: inflated as a stage
    with conditioning_channels=3 it keeps those trained columns and equals the 2D model on every frame."""
    unet2d = make_2d(X4)
    config = dict(unet2d.config, in_channels=4)  # 4 latent channels; the other 3 are the stage's condition
    video = VideoUNet.from_2d_weights(config, unet2d.state_dict(), conditioning_channels=3, stage="ssr").eval()
    assert (video.in_channels, video.conditioning_channels, video.config["stage"]) == (4, 3, "ssr")
    assert torch.equal(video.conv_in.weight, unet2d.conv_in.weight)
    x, t, context, labels = inputs(unet2d, f=3)
    with torch.no_grad():
        out = video(x, t, context, class_labels=labels)
    assert (out - per_frame_2d(unet2d, x, t, context, labels)).abs().max() <= TOL
    # conv_in columns that are neither the latents alone nor latents + condition are named.
    with pytest.raises(ValueError, match=r"conv_in.weight: checkpoint \(16, 7, 3, 3\) vs model \(16, 6, 3, 3\)"):
        VideoUNet.from_2d_weights(config, unet2d.state_dict(), conditioning_channels=2, source="x4")


def test_temporal_position_is_saved_and_old_configs_mean_qk(tmp_path, sd1_folder):
    """temporal_position is part of the architecture: saved, reloaded, equal to the 2D model at init either way,
    and a config saved before the option existed loads as "qk" (what those models were trained with)."""
    video = VideoUNet.from_2d(sd1_folder, temporal_position="qkv").eval()
    assert {m.position for m in video.modules() if hasattr(m, "position")} == {"qkv"}
    unet2d = UNet2DConditionModel.from_pretrained(sd1_folder)
    x, t, context, labels = inputs(unet2d, f=4)
    with torch.no_grad():
        assert (video(x, t, context) - per_frame_2d(unet2d, x, t, context, labels)).abs().max() <= TOL
        for p in video.temporal_parameters():  # trained temporal layers: "qkv" and "qk" now differ
            p.normal_(0, 0.1)
    video.save_pretrained(tmp_path / "qkv")
    loaded = VideoUNet.from_pretrained(tmp_path / "qkv")
    assert loaded.config["temporal_position"] == "qkv"
    with torch.no_grad():
        assert torch.equal(loaded(x, t, context), video(x, t, context))
    config = json.loads((tmp_path / "qkv" / "config.json").read_text())
    del config["temporal_position"]
    (tmp_path / "qkv" / "config.json").write_text(json.dumps(config))
    old = VideoUNet.from_pretrained(tmp_path / "qkv")
    assert old.config["temporal_position"] == "qk"
    with torch.no_grad():
        assert not torch.allclose(old(x, t, context), video(x, t, context))
    with pytest.raises(ValueError, match="from_pretrained cannot change 'temporal_position'"):
        VideoUNet.from_pretrained(tmp_path / "qkv", temporal_position="qkv")
    with pytest.raises(ValueError, match="temporal_position must be one of qk, qkv"):
        VideoUNet.from_2d(sd1_folder, temporal_position="values")


def test_frame_embedding_adds_each_frames_index_to_its_timestep_embedding(tmp_path, sd1_folder):
    """frame_embedding: zero at inflation (the 2D model per frame); once trained, exactly diffusers' U-Net with the
    frame's embedding added to its timestep embedding (class_embed_type "identity" adds class_labels there);
    trained with the temporal layers; saved, reloaded, and absent from configs saved before it existed."""
    video = VideoUNet.from_2d(sd1_folder, temporal_conv=False, temporal_attention=False, frame_embedding=True).eval()
    unet2d = UNet2DConditionModel.from_pretrained(sd1_folder)
    x, t, context, labels = inputs(unet2d, f=4)
    with torch.no_grad():
        assert (video(x, t, context) - per_frame_2d(unet2d, x, t, context, labels)).abs().max() <= TOL
        for p in video.frame_embedding.parameters():
            p.normal_(0, 0.1)
        frames = video.frame_embedding(4)                                               # (f, d)
        assert not torch.allclose(frames[0], frames[1])
        reference = UNet2DConditionModel(**dict(SD1, class_embed_type="identity")).eval()
        reference.load_state_dict(unet2d.state_dict())
        folded = reference(rearrange(x, "b c f h w -> (b f) c h w"), t.repeat_interleave(4),
                           context.repeat_interleave(4, dim=0), class_labels=frames.repeat(2, 1)).sample
        expected = rearrange(folded, "(b f) c h w -> b c f h w", f=4)
        assert (video(x, t, context) - expected).abs().max() <= TOL
    assert is_temporal_parameter("frame_embedding.proj.weight")
    video.freeze_spatial()
    assert {n for n, p in video.named_parameters() if p.requires_grad} == {"frame_embedding.proj.weight",
                                                                           "frame_embedding.proj.bias"}

    video.save_pretrained(tmp_path / "fe")
    loaded = VideoUNet.from_pretrained(tmp_path / "fe")
    assert loaded.config["frame_embedding"] is True
    with torch.no_grad():
        assert torch.equal(loaded(x, t, context), video(x, t, context))
    config = json.loads((tmp_path / "fe" / "config.json").read_text())
    del config["frame_embedding"]
    (tmp_path / "fe" / "config.json").write_text(json.dumps(config))
    with pytest.raises(LoadingError, match="frame_embedding.proj"):
        VideoUNet.from_pretrained(tmp_path / "fe")  # old config: no such layer, so its weights are unexpected
    assert VideoUNet.from_2d(sd1_folder).frame_embedding is None
    with pytest.raises(ValueError, match="frame_embedding must be true or false"):
        VideoUNet.from_2d(sd1_folder, frame_embedding="yes")


def test_coordinate_embedding_adds_each_pixels_position_after_conv_in(tmp_path, sd1_folder):
    """coordinate_embedding: zero at inflation (the 2D model per frame); once trained, exactly diffusers' U-Net
    given the sinusoid code of each pixel's position as extra input channels whose conv_in columns are the 1x1
    projection at the kernel's centre; the code spans [-1, 1] across any frame size; saved and reloaded."""
    video = VideoUNet.from_2d(sd1_folder, temporal_conv=False, temporal_attention=False,
                              coordinate_embedding=True).eval()
    unet2d = UNet2DConditionModel.from_pretrained(sd1_folder)
    x, t, context, labels = inputs(unet2d, f=2, size=12)
    with torch.no_grad():
        assert (video(x, t, context) - per_frame_2d(unet2d, x, t, context, labels)).abs().max() <= TOL
        for p in video.coordinate_embedding.parameters():
            p.normal_(0, 0.1)
        proj = video.coordinate_embedding.proj
        code_channels = proj.in_channels
        reference = UNet2DConditionModel(**dict(SD1, in_channels=4 + code_channels)).eval()
        state = dict(unet2d.state_dict())
        columns = torch.zeros(proj.out_channels, code_channels, 3, 3)
        columns[:, :, 1, 1] = proj.weight[:, :, 0, 0]
        state["conv_in.weight"] = torch.cat([state["conv_in.weight"], columns], dim=1)
        state["conv_in.bias"] = state["conv_in.bias"] + proj.bias
        reference.load_state_dict(state)
        ys = (torch.arange(12) + 0.5) / 12 * 2 - 1
        angles = ys[:, None] * (torch.pi * 2.0 ** torch.arange(code_channels // 4) / 2)   # (12, k)
        ay, ax = angles[:, None, :].expand(12, 12, -1), angles[None, :, :].expand(12, 12, -1)
        code = torch.cat([ay.sin(), ay.cos(), ax.sin(), ax.cos()], dim=-1).permute(2, 0, 1)
        folded = rearrange(x, "b c f h w -> (b f) c h w")
        folded = torch.cat([folded, code[None].expand(len(folded), -1, -1, -1)], dim=1)
        out = reference(folded, t.repeat_interleave(2), context.repeat_interleave(2, dim=0)).sample
        expected = rearrange(out, "(b f) c h w -> b c f h w", f=2)
        assert (video(x, t, context) - expected).abs().max() <= TOL
    assert is_temporal_parameter("coordinate_embedding.proj.weight")
    video.save_pretrained(tmp_path / "ce")
    loaded = VideoUNet.from_pretrained(tmp_path / "ce")
    assert loaded.config["coordinate_embedding"] is True and loaded.config["frame_embedding"] is False
    with torch.no_grad():
        assert torch.equal(loaded(x, t, context), video(x, t, context))
    with pytest.raises(ValueError, match="coordinate_embedding must be true or false"):
        VideoUNet.from_2d(sd1_folder, coordinate_embedding=1)
