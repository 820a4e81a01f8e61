"""CUDA checks (run by `make test-all` on a machine with a GPU; skipped elsewhere)."""
import pytest
import torch
from diffusers import UNet2DConditionModel

from vidiff.models import attention as attention_mod
from vidiff.models.unet import VideoUNet

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]

CONFIG = dict(block_out_channels=(32, 64), layers_per_block=1, norm_num_groups=8, cross_attention_dim=32,
              attention_head_dim=8, down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
              up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"))


@pytest.fixture(scope="module")
def video_unet(tmp_path_factory):
    path = tmp_path_factory.mktemp("unet")
    torch.manual_seed(0)
    UNet2DConditionModel(**CONFIG).save_pretrained(path)
    unet = VideoUNet.from_2d(path, cross_frame="sparse-causal").cuda().eval()
    with torch.no_grad():
        for p in unet.temporal_parameters():  # make the temporal layers do something
            p.add_(torch.randn_like(p) * 0.05)
    return unet


def _inputs():
    g = torch.Generator(device="cuda").manual_seed(0)
    return (torch.randn(2, 4, 8, 32, 32, device="cuda", generator=g), torch.tensor([10, 900], device="cuda"),
            torch.randn(2, 7, 32, device="cuda", generator=g))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_tracks_fp32(video_unet, dtype):
    x, t, context = _inputs()
    with torch.no_grad():
        ref = video_unet(x, t, context)
        out = video_unet.to(dtype)(x.to(dtype), t, context.to(dtype)).float()
        video_unet.float()
    assert torch.isfinite(out).all()
    assert (out - ref).abs().max() <= 0.05 * ref.abs().max()


@pytest.mark.parametrize("backend", ["xformers", "sdpa"])
def test_backends_agree_with_math_on_cuda(video_unet, backend):
    if backend == "xformers" and not attention_mod.xformers_available():
        pytest.skip("xformers cannot run here")
    x, t, context = _inputs()
    with torch.no_grad():
        video_unet.set_attention_backend("math")
        ref = video_unet(x, t, context)
        video_unet.set_attention_backend(backend)
        out = video_unet(x, t, context)
        video_unet.set_attention_backend("auto")
    assert (out - ref).abs().max() <= 1e-3


def test_chunked_temporal_attention_on_cuda(monkeypatch):
    q, k, v = (torch.randn(5000, 8, 16, 40, device="cuda", dtype=torch.float16) for _ in range(3))
    full = attention_mod.attention(q, k, v, "sdpa")
    monkeypatch.setattr(attention_mod, "MAX_BATCH_HEADS", 8 * 1000)
    assert torch.equal(attention_mod.attention(q, k, v, "sdpa"), full)
