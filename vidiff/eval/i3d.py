"""InceptionI3d (Carreira & Zisserman 2017), the video network behind FVD, written in torch.

The layer names are those of the widely used pytorch-i3d port (piergiaj/pytorch-i3d, also vendored by StyleGAN-V
and most FVD code): `Conv3d_1a_7x7.conv3d.weight`, `Conv3d_1a_7x7.bn.running_mean`, `Mixed_3b.b1b.conv3d.weight`,
..., `logits.conv3d.weight` / `.bias`. So that port's Kinetics-400 state dict (`rgb_imagenet.pt`, converted once to
safetensors, or read weights-only) loads by key with `strict=True`.

As in TensorFlow's original: convolutions and max pools pad 'SAME' (zeros; computed from the input size), batch norm
has eps 1e-3; inputs are RGB in [-1, 1], `(b, 3, f, h, w)`. The head averages Mixed_5c over time and space before
the 1x1x1 `logits` convolution: at the protocol's 16 x 224 x 224 input Mixed_5c is 2 x 7 x 7, exactly the window of
the original 2 x 7 x 7 average pool, and the convolution is linear, so this equals the original logits averaged
over time; smaller inputs (tests) then work too.

References: Carreira & Zisserman 2017, "Quo Vadis, Action Recognition? A New Model and the Kinetics Dataset";
Unterthiner et al. 2018, "Towards Accurate Generative Models of Video: A New Metric & Challenges" (FVD).
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

import torch
import torch.nn.functional as F
from huggingface_hub import hf_hub_download
from safetensors.torch import load_file
from torch import nn

from vidiff.spec import is_hub_id
from vidiff.utils import save_safetensors_atomic

NUM_CLASSES = 400  # Kinetics-400
BN_EPS = 1e-3      # TensorFlow's batch norm epsilon, which the released weights were trained with
HUB_FILE = "i3d.safetensors"  # what `--i3d owner/name` downloads
WEIGHTS_HINT = ("FVD needs the Kinetics-400 I3D weights: convert pytorch-i3d's models/rgb_imagenet.pt with "
                "`python -m vidiff.eval.i3d rgb_imagenet.pt i3d.safetensors` and pass --i3d i3d.safetensors")

# (name, in_channels, [branch_0 1x1, branch_1 1x1, branch_1 3x3, branch_2 1x1, branch_2 3x3, branch_3 pool-proj])
INCEPTION_BLOCKS = {
    "Mixed_3b": (192, (64, 96, 128, 16, 32, 32)),
    "Mixed_3c": (256, (128, 128, 192, 32, 96, 64)),
    "Mixed_4b": (480, (192, 96, 208, 16, 48, 64)),
    "Mixed_4c": (512, (160, 112, 224, 24, 64, 64)),
    "Mixed_4d": (512, (128, 128, 256, 24, 64, 64)),
    "Mixed_4e": (512, (112, 144, 288, 32, 64, 64)),
    "Mixed_4f": (528, (256, 160, 320, 32, 128, 128)),
    "Mixed_5b": (832, (256, 160, 320, 32, 128, 128)),
    "Mixed_5c": (832, (384, 192, 384, 48, 128, 128)),
}


def same_padding(size: tuple[int, int, int], kernel: tuple[int, int, int], stride: tuple[int, int, int]) -> list:
    """F.pad's list (w_front, w_back, h_front, h_back, t_front, t_back) for TensorFlow's 'SAME' padding: the
    output has ceil(size / stride) positions, the extra padding (if odd) going to the back."""
    pads = []
    for n, k, s in zip(size, kernel, stride):
        total = max(k - s, 0) if n % s == 0 else max(k - n % s, 0)
        pads.append((total // 2, total - total // 2))
    (t0, t1), (h0, h1), (w0, w1) = pads
    return [w0, w1, h0, h1, t0, t1]


class Unit3D(nn.Module):
    """Conv3d (no bias) + batch norm + ReLU with 'SAME' padding; the `logits` unit: conv with bias only."""

    def __init__(self, in_channels: int, out_channels: int, kernel=(1, 1, 1), stride=(1, 1, 1), *,
                 batch_norm: bool = True, activation: bool = True, bias: bool = False):
        super().__init__()
        self.kernel, self.stride, self.activation = tuple(kernel), tuple(stride), activation
        self.conv3d = nn.Conv3d(in_channels, out_channels, self.kernel, self.stride, padding=0, bias=bias)
        self.bn = nn.BatchNorm3d(out_channels, eps=BN_EPS, momentum=0.01) if batch_norm else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv3d(F.pad(x, same_padding(x.shape[2:], self.kernel, self.stride)))
        if self.bn is not None:
            x = self.bn(x)
        return F.relu(x) if self.activation else x


class MaxPool3dSame(nn.Module):
    """Max pool with 'SAME' zero padding (its inputs follow a ReLU, so zeros never win over real values)."""

    def __init__(self, kernel, stride):
        super().__init__()
        self.kernel, self.stride = tuple(kernel), tuple(stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.max_pool3d(F.pad(x, same_padding(x.shape[2:], self.kernel, self.stride)), self.kernel, self.stride)


class InceptionBlock(nn.Module):
    """Four branches concatenated on channels: 1x1; 1x1 -> 3x3x3; 1x1 -> 3x3x3; 3x3x3 max pool -> 1x1."""

    def __init__(self, in_channels: int, widths: tuple[int, ...]):
        super().__init__()
        self.b0 = Unit3D(in_channels, widths[0])
        self.b1a = Unit3D(in_channels, widths[1])
        self.b1b = Unit3D(widths[1], widths[2], (3, 3, 3))
        self.b2a = Unit3D(in_channels, widths[3])
        self.b2b = Unit3D(widths[3], widths[4], (3, 3, 3))
        self.b3a = MaxPool3dSame((3, 3, 3), (1, 1, 1))
        self.b3b = Unit3D(in_channels, widths[5])
        self.out_channels = widths[0] + widths[2] + widths[4] + widths[5]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.b0(x), self.b1b(self.b1a(x)), self.b2b(self.b2a(x)), self.b3b(self.b3a(x))], dim=1)


class InceptionI3d(nn.Module):
    """I3D up to the Kinetics logits. `forward(x)` with x `(b, 3, f, h, w)` in [-1, 1] -> logits `(b, 400)`
    (before the softmax: FVD's features); `features(x)` -> the pooled Mixed_5c features `(b, 1024)`."""

    def __init__(self, num_classes: int = NUM_CLASSES):
        super().__init__()
        self.Conv3d_1a_7x7 = Unit3D(3, 64, (7, 7, 7), (2, 2, 2))
        self.MaxPool3d_2a_3x3 = MaxPool3dSame((1, 3, 3), (1, 2, 2))
        self.Conv3d_2b_1x1 = Unit3D(64, 64)
        self.Conv3d_2c_3x3 = Unit3D(64, 192, (3, 3, 3))
        self.MaxPool3d_3a_3x3 = MaxPool3dSame((1, 3, 3), (1, 2, 2))
        self.Mixed_3b = InceptionBlock(*INCEPTION_BLOCKS["Mixed_3b"])
        self.Mixed_3c = InceptionBlock(*INCEPTION_BLOCKS["Mixed_3c"])
        self.MaxPool3d_4a_3x3 = MaxPool3dSame((3, 3, 3), (2, 2, 2))
        for name in ("Mixed_4b", "Mixed_4c", "Mixed_4d", "Mixed_4e", "Mixed_4f"):
            setattr(self, name, InceptionBlock(*INCEPTION_BLOCKS[name]))
        self.MaxPool3d_5a_2x2 = MaxPool3dSame((2, 2, 2), (2, 2, 2))
        self.Mixed_5b = InceptionBlock(*INCEPTION_BLOCKS["Mixed_5b"])
        self.Mixed_5c = InceptionBlock(*INCEPTION_BLOCKS["Mixed_5c"])
        self.logits = Unit3D(1024, num_classes, batch_norm=False, activation=False, bias=True)
        self.trunk = ("Conv3d_1a_7x7", "MaxPool3d_2a_3x3", "Conv3d_2b_1x1", "Conv3d_2c_3x3", "MaxPool3d_3a_3x3",
                      "Mixed_3b", "Mixed_3c", "MaxPool3d_4a_3x3", "Mixed_4b", "Mixed_4c", "Mixed_4d", "Mixed_4e",
                      "Mixed_4f", "MaxPool3d_5a_2x2", "Mixed_5b", "Mixed_5c")

    def features(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim != 5 or x.shape[1] != 3:
            raise ValueError(f"I3D takes RGB videos (b, 3, f, h, w), got shape {tuple(x.shape)}")
        for name in self.trunk:
            x = getattr(self, name)(x)
        return x.mean(dim=(2, 3, 4))  # (b, 1024): the average pool over the whole 2 x 7 x 7 map

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pooled = self.features(x)[:, :, None, None, None]  # (b, 1024, 1, 1, 1)
        return self.logits(pooled).flatten(1)  # (b, num_classes)


def random_i3d(seed: int = 0) -> InceptionI3d:
    """An I3D with seeded random weights: tests and `--i3d random` smoke runs only (its FVD is not comparable with
    any published number). He-normal convolutions and identity batch norms (statistics 0 / 1) keep the activations'
    scale through the 20-odd ReLU layers; torch's default init would shrink them to ~1e-6 by Mixed_5c."""
    generator = torch.Generator().manual_seed(seed)
    model = InceptionI3d()
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.Conv3d):
                fan_in = module.weight[0].numel()
                gain = 2.0 if module is not model.logits.conv3d else 1.0  # ReLU follows all but the logits
                module.weight.normal_(0.0, (gain / fan_in) ** 0.5, generator=generator)
                if module.bias is not None:
                    module.bias.zero_()
    return model.eval()


def _read_state(path: Path) -> dict:
    if path.suffix == ".safetensors":
        return load_file(str(path))
    if path.suffix in (".pt", ".pth", ".ckpt"):  # pytorch-i3d's rgb_imagenet.pt: a plain state dict
        state = torch.load(path, map_location="cpu", weights_only=True)
        return state.get("state_dict", state) if isinstance(state, dict) else state
    raise ValueError(f"--i3d {path}: expected a .safetensors file (or pytorch-i3d's .pt state dict); {WEIGHTS_HINT}")


def load_i3d(source: str | os.PathLike) -> InceptionI3d:
    """I3D with the weights in `source`: a .safetensors file (or a weights-only .pt state dict) with pytorch-i3d's
    key names, or a hub id `owner/name` holding `i3d.safetensors` (downloaded with huggingface_hub). Every key and shape must match: a ValueError names the first that does not."""
    path = Path(source)
    if not path.exists():
        if not is_hub_id(source):
            raise FileNotFoundError(f"--i3d {source}: no such file (and not a hub id owner/name); {WEIGHTS_HINT}")
        path = _download(str(source))
    try:
        state = _read_state(path)
    except ValueError:
        raise
    except Exception as e:  # a damaged file: one line naming it
        raise ValueError(f"--i3d {path}: cannot read the weights ({type(e).__name__}: {e})") from None
    state = {key.removeprefix("module."): value for key, value in state.items()}  # DataParallel saves
    model = InceptionI3d(num_classes=state["logits.conv3d.bias"].shape[0] if "logits.conv3d.bias" in state
                         else NUM_CLASSES)
    # (batch-norm step counters are not weights: pytorch-i3d's file predates them, and load_state_dict adds them)
    expected = {k: v for k, v in model.state_dict().items() if not k.endswith("num_batches_tracked")}
    state = {k: v for k, v in state.items() if not k.endswith("num_batches_tracked")}
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    if missing or unexpected:
        what = f"lacks {missing[0]}" if missing else f"has an unknown key {unexpected[0]}"
        raise ValueError(f"--i3d {path} is not a pytorch-i3d InceptionI3d state dict: it {what} "
                         f"({len(missing)} missing, {len(unexpected)} unknown keys)")
    for key, value in expected.items():
        if state[key].shape != value.shape:
            raise ValueError(f"--i3d {path}: {key} has shape {tuple(state[key].shape)}, expected {tuple(value.shape)}")
    model.load_state_dict(state, strict=True)
    return model.eval()


def _download(hub_id: str) -> Path:
    """`HUB_FILE` of the Hugging Face hub repo `hub_id` (safetensors only: nothing unpickled)."""
    try:
        return Path(hf_hub_download(hub_id, HUB_FILE))
    except Exception as e:
        raise ValueError(f"--i3d {hub_id}: cannot download {HUB_FILE} from the hub ({type(e).__name__}); give a "
                         f"local .safetensors file") from None


def save_i3d(model: InceptionI3d, target: str | os.PathLike) -> Path:
    """The model's weights as a safetensors file `load_i3d` reads (written atomically)."""
    save_safetensors_atomic(model.state_dict(), target)
    return Path(target)


def convert(source: str | os.PathLike, target: str | os.PathLike) -> Path:
    """pytorch-i3d's `rgb_imagenet.pt` (read weights-only, every key checked) -> a safetensors file."""
    return save_i3d(load_i3d(source), target)


if __name__ == "__main__":  # python -m vidiff.eval.i3d rgb_imagenet.pt i3d.safetensors
    if len(sys.argv) != 3:
        sys.exit("usage: python -m vidiff.eval.i3d rgb_imagenet.pt i3d.safetensors")
    print(f"wrote {convert(sys.argv[1], sys.argv[2])}")
