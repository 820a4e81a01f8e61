"""Temporal layers against plain references: Conv1d over frames, einsum attention across frames."""
import pytest
import torch

from vidiff.models.temporal import TemporalAttention, TemporalConv, frame_position_encoding


@pytest.mark.parametrize("num_frames", [1, 2, 5])
def test_temporal_conv_equals_conv1d_over_frames(num_frames):
    torch.manual_seed(0)
    layer = TemporalConv(8)
    with torch.no_grad():
        layer.weight.normal_()
        layer.bias.normal_()
    reference = torch.nn.Conv1d(8, 8, 3, padding=1)
    reference.load_state_dict({"weight": layer.weight, "bias": layer.bias})
    b, h, w = 2, 3, 4
    x = torch.randn(b * num_frames, 8, h, w)
    # reference on (b h w) c f: every pixel's frames as one 1D signal
    seq = x.reshape(b, num_frames, 8, h * w).permute(0, 3, 2, 1).reshape(b * h * w, 8, num_frames)
    ref = reference(seq).reshape(b, h * w, 8, num_frames).permute(0, 3, 2, 1).reshape(b * num_frames, 8, h, w)
    assert (layer(x, num_frames) - ref).abs().max() <= 1e-5


def test_temporal_layers_start_as_identity():
    x = torch.randn(2 * 4, 16, 3, 5)
    assert torch.equal(TemporalConv(16)(x, 4), x)
    assert torch.equal(TemporalAttention(16, num_heads=2)(x, 4), x)
    assert torch.equal(TemporalAttention(16, num_heads=2, position="qkv")(x, 4), x)


@pytest.mark.parametrize("position", ["qk", "qkv"])
def test_temporal_attention_equals_einsum_reference(position):
    """Frame positions enter queries and keys ("qk"), or values too ("qkv", AnimateDiff's form)."""
    torch.manual_seed(0)
    layer = TemporalAttention(8, num_heads=2, backend="sdpa", position=position)
    with torch.no_grad():
        for p in layer.parameters():
            p.normal_(0, 0.5)
    b, f, h, w = 2, 5, 3, 2
    x = torch.randn(b * f, 8, h, w)
    tokens = x.reshape(b, f, 8, h, w).permute(0, 3, 4, 1, 2)            # b h w f c
    normed = layer.norm(tokens)
    pos = frame_position_encoding(f, 8)
    q = layer.to_q(normed + pos).unflatten(-1, (2, 4))
    k = layer.to_k(normed + pos).unflatten(-1, (2, 4))
    v = layer.to_v(normed + pos if position == "qkv" else normed).unflatten(-1, (2, 4))
    weights = torch.einsum("bxyqhd,bxykhd->bxyhqk", q, k).mul(4 ** -0.5).softmax(-1)
    attended = torch.einsum("bxyhqk,bxykhd->bxyqhd", weights, v).flatten(-2)
    ref = (tokens + layer.to_out(attended)).permute(0, 3, 4, 1, 2).reshape(b * f, 8, h, w)
    assert (layer(x, f) - ref).abs().max() <= 1e-5
    with pytest.raises(ValueError, match="temporal_position must be one of qk, qkv, got 'v'"):
        TemporalAttention(8, num_heads=2, position="v")


def test_frame_position_encoding_is_sinusoidal():
    enc = frame_position_encoding(6, 8).double()
    i = torch.arange(6.0, dtype=torch.float64)[:, None]
    freqs = torch.exp(-torch.log(torch.tensor(10000.0, dtype=torch.float64)) * torch.arange(4) / 4)
    assert torch.allclose(enc, torch.cat([(i * freqs).sin(), (i * freqs).cos()], dim=-1), atol=1e-6)
