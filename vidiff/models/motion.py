"""AnimateDiff's temporal layout: motion modules, their settings, and the files they come in.

A motion module (Guo et al. 2023) is a temporal transformer (GroupNorm, proj_in, transformer blocks of two
frame-wise self-attentions with sinusoidal frame positions and a GEGLU feed-forward, proj_out, residual) placed
after every resnet / attention pair of the down and up blocks, and optionally in the mid block. The modules here
are diffusers' own (`MotionAdapter`'s `AnimateDiffTransformer3D`), adopted by `VideoUNet` under the names
diffusers gives them (`down_blocks.i.motion_modules.j`, `mid_block.motion_modules.0`, `up_blocks.i.motion_modules.j`),
so a diffusers `MotionAdapter` state dict loads as it is and `UNetMotionModel` is the numeric reference.

    settings      `MotionSettings`: the part of a MotionAdapter config that is not fixed by the U-Net (heads,
                  transformer layers, mid block, position-encoding length), stored in the VideoUNet config
    files         `read_motion_module`: a diffusers MotionAdapter folder (or hub id), or an original AnimateDiff
                  single file (`mm_sd_v15*.ckpt` / `.safetensors`, v1 / v2 / v3 and AnimateLCM), returned as
                  settings + a state dict in diffusers keys; `to_original_keys` writes the other way
    writing       `save_motion_adapter` (a MotionAdapter folder, by diffusers), `save_original_motion_module`

Only safe formats are read (vidiff.models.weights.read_state_dict: safetensors, or weights-only torch.load).

References: Guo et al. 2023 (AnimateDiff); diffusers' `MotionAdapter` / `UNetMotionModel` and its AnimateDiff
single-file key renames (`convert_animatediff_checkpoint_to_diffusers`).
"""
from __future__ import annotations

import json
import os
import re
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Mapping

import torch
from diffusers import MotionAdapter
from diffusers.loaders.single_file_utils import convert_animatediff_checkpoint_to_diffusers
from huggingface_hub import snapshot_download
from safetensors import safe_open

from vidiff.models.weights import LoadingError, _names, check_state_dict, is_hub_id, read_json, read_state_dict
from vidiff.utils import atomic_dir, check_replaceable, quiet_libraries, save_safetensors_atomic

ADAPTER_CONFIG = "config.json"
ADAPTER_WEIGHTS = ("diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.bin")

# The original AnimateDiff files' names for what diffusers renamed (the inverse of diffusers' conversion).
_ORIGINAL_NAMES = ((".norm1", ".norms.0"), (".norm2", ".norms.1"), (".norm3", ".ff_norm"),
                   (".attn1", ".attention_blocks.0"), (".attn2", ".attention_blocks.1"))


@dataclass(frozen=True)
class MotionSettings:
    """What a motion module's shape needs beyond the U-Net's own widths and layers per block (its MotionAdapter
    config without `block_out_channels` / `motion_layers_per_block`, which must equal the U-Net's). Defaults are
    AnimateDiff v2's (mm_sd_v15_v2: 8 heads, one transformer block, a mid-block module, 32 positions)."""

    num_attention_heads: int = 8        # heads of every motion module (AnimateDiff: 8 everywhere)
    transformer_layers: int = 1         # transformer blocks per motion module
    mid_block: bool = True              # a module in the mid block too (v2; not v1 / v3)
    mid_block_layers: int = 1           # modules in the mid block
    max_seq_length: int = 32            # frames the sinusoidal position table covers (v1: 24); longer clips in windows

    def __post_init__(self):
        for key in ("num_attention_heads", "transformer_layers", "mid_block_layers", "max_seq_length"):
            value = getattr(self, key)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"motion.{key} must be an integer >= 1, got {value!r}")
        if not isinstance(self.mid_block, bool):
            raise ValueError(f"motion.mid_block must be true or false, got {self.mid_block!r}")

    @classmethod
    def from_config(cls, config: Mapping | None) -> "MotionSettings":
        """From the `motion` entry of a VideoUNet config (None: the defaults)."""
        config = dict(config or {})
        unknown = sorted(set(config) - set(cls.__dataclass_fields__))
        if unknown:
            raise ValueError(f"unknown motion setting(s) {unknown}; choose from "
                             f"{', '.join(cls.__dataclass_fields__)}")
        return cls(**config)

    def to_config(self) -> dict:
        return asdict(self)

    def adapter_config(self, unet_config: Mapping) -> dict:
        """The diffusers MotionAdapter config of these modules on a U-Net with `unet_config`."""
        return dict(block_out_channels=tuple(unet_config["block_out_channels"]),
                    motion_layers_per_block=unet_config.get("layers_per_block", 2),
                    motion_transformer_layers_per_block=self.transformer_layers,
                    motion_mid_block_layers_per_block=self.mid_block_layers,
                    motion_transformer_layers_per_mid_block=self.transformer_layers,
                    motion_num_attention_heads=self.num_attention_heads,
                    # UNetMotionModel builds its modules with the U-Net's group count, whatever the adapter says
                    motion_norm_num_groups=unet_config.get("norm_num_groups", 32),
                    motion_max_seq_length=self.max_seq_length,
                    use_motion_mid_block=self.mid_block)


def build_motion_adapter(unet_config: Mapping, settings: MotionSettings, *, identity: bool = True) -> MotionAdapter:
    """diffusers' MotionAdapter for a U-Net with `unet_config`; `identity` zeroes every module's output projection,
    so the modules start as the identity (AnimateDiff initialises proj_out at zero: the inflated U-Net is the image
    model until the modules are trained)."""
    if unet_config.get("mid_block_type", "UNetMidBlock2DCrossAttn") is None and settings.mid_block:
        raise ValueError("this U-Net has no mid block, so its motion modules cannot have one: set "
                         "motion.mid_block false")
    for channels in unet_config["block_out_channels"]:
        if channels % settings.num_attention_heads:
            raise ValueError(f"motion modules: {channels} channels do not split into "
                             f"{settings.num_attention_heads} heads; set motion.num_attention_heads")
    with quiet_libraries():
        adapter = MotionAdapter(**settings.adapter_config(unet_config))
    if identity:
        with torch.no_grad():
            for name, parameter in adapter.named_parameters():
                if ".proj_out." in name and not parameter.is_meta:
                    parameter.zero_()
    return adapter


# ---------------------------------------------------------------------------------------------------- files
def _count(keys, pattern: str) -> int:
    """1 + the largest index matched by `pattern`'s group in `keys`, 0 when none matches."""
    found = [int(m.group(1)) for key in keys if (m := re.match(pattern, key))]
    return max(found) + 1 if found else 0


def settings_from_state_dict(state_dict: Mapping[str, torch.Tensor], source: str,
                             num_attention_heads: int = 8, max_seq_length: int | None = None) -> MotionSettings:
    """Infer MotionSettings from motion-module weights in diffusers keys. Heads do not show in the weights (every
    AnimateDiff release uses 8); the position length does only in original files (`pos_encoder.pe`)."""
    keys = list(state_dict)
    if not any(key.startswith("down_blocks.") and ".motion_modules." in key for key in keys):
        raise LoadingError(f"{source} holds no AnimateDiff motion modules (no down_blocks.*.motion_modules.* "
                           f"weights; found {_names(keys)})")
    layers = _count(keys, r"down_blocks\.0\.motion_modules\.0\.transformer_blocks\.(\d+)\.")
    mid_layers = _count(keys, r"mid_block\.motion_modules\.(\d+)\.")
    if max_seq_length is None:
        table = next((v for k, v in state_dict.items() if k.endswith("pos_embed.pe")), None)
        max_seq_length = int(table.shape[1]) if table is not None else 32
    return MotionSettings(num_attention_heads=num_attention_heads, transformer_layers=max(layers, 1),
                          mid_block=mid_layers > 0, mid_block_layers=max(mid_layers, 1),
                          max_seq_length=max_seq_length)


def from_original_keys(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """An original AnimateDiff motion-module state dict in diffusers keys (diffusers' own renames); each original
    `pos_encoder.pe` table becomes the block's `pos_embed.pe` (the same sinusoids, one table per block in
    diffusers), so the length survives the conversion."""
    converted = convert_animatediff_checkpoint_to_diffusers(dict(state_dict))
    for key, value in state_dict.items():
        if key.endswith(".attention_blocks.0.pos_encoder.pe"):
            block = key[: -len(".attention_blocks.0.pos_encoder.pe")].replace(".temporal_transformer", "")
            converted[f"{block}.pos_embed.pe"] = value
    return converted


def to_original_keys(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Diffusers motion-module keys -> the original AnimateDiff layout (`...motion_modules.j.temporal_transformer.
    transformer_blocks.k.attention_blocks.0.to_q.weight`, `norms.0`, `ff_norm`, and a `pos_encoder.pe` table per
    attention block), which the original repository and ComfyUI's AnimateDiff nodes load."""
    out = {}
    for key, value in state_dict.items():
        head, sep, tail = key.partition(".motion_modules.")
        if not sep:
            continue
        index, _, rest = tail.partition(".")
        if rest.endswith("pos_embed.pe"):
            block = rest[: -len("pos_embed.pe")]
            for attention in ("attention_blocks.0", "attention_blocks.1"):  # own copies: safetensors shares none
                out[f"{head}.motion_modules.{index}.temporal_transformer.{block}{attention}.pos_encoder.pe"] = \
                    value.clone()
            continue
        for new, old in _ORIGINAL_NAMES:
            rest = rest.replace(new, old)
        out[f"{head}.motion_modules.{index}.temporal_transformer.{rest}"] = value
    return out


def _adapter_folder(path: Path) -> Path | None:
    """The folder of a diffusers MotionAdapter (its config.json names the class), or None."""
    if not (path / ADAPTER_CONFIG).is_file():
        return None
    config = read_json(path / ADAPTER_CONFIG, "a diffusers MotionAdapter config")
    if config.get("_class_name") != "MotionAdapter":
        raise LoadingError(f"{path / ADAPTER_CONFIG} describes a {config.get('_class_name')!r}, not a diffusers "
                           "MotionAdapter; pass a MotionAdapter folder or an AnimateDiff mm_*.ckpt / .safetensors")
    return path


def _read_adapter_folder(folder: Path) -> tuple[MotionSettings, dict[str, torch.Tensor]]:
    config = read_json(folder / ADAPTER_CONFIG, "a diffusers MotionAdapter config")
    weights = next((folder / name for name in ADAPTER_WEIGHTS if (folder / name).is_file()), None)
    if weights is None:
        raise FileNotFoundError(f"MotionAdapter folder {folder} has no {' or '.join(ADAPTER_WEIGHTS)}")
    state_dict = read_state_dict(weights)
    if config.get("conv_in_channels"):
        raise LoadingError(f"{folder} is a MotionAdapter with an input convolution (conv_in_channels="
                           f"{config['conv_in_channels']}: a PIA / SparseCtrl-style model), which vidiff does not run")
    heads = config.get("motion_num_attention_heads", 8)
    layers = config.get("motion_transformer_layers_per_block", 1)
    if not isinstance(heads, int) or not isinstance(layers, int):
        raise LoadingError(f"{folder / ADAPTER_CONFIG}: vidiff runs motion modules with one head count and one "
                           f"transformer depth for every block (got {heads!r} heads, {layers!r} layers)")
    settings = settings_from_state_dict(state_dict, str(weights), num_attention_heads=heads,
                                        max_seq_length=config.get("motion_max_seq_length", 32))
    return settings, state_dict


def read_motion_module(path_or_id: str | os.PathLike) -> tuple[MotionSettings, dict[str, torch.Tensor]]:
    """A motion module as (settings, state dict in diffusers MotionAdapter keys) from a diffusers MotionAdapter
    folder or hub id (e.g. guoyww/animatediff-motion-adapter-v1-5-2), or an original AnimateDiff file
    (mm_sd_v15.ckpt, mm_sd_v15_v2.ckpt, v3_sd15_mm.ckpt, or their .safetensors)."""
    path = Path(path_or_id).expanduser()
    if not path.exists() and is_hub_id(path_or_id):
        path = Path(snapshot_download(str(path_or_id), allow_patterns=[ADAPTER_CONFIG, "*.safetensors"]))
    if path.is_dir():
        folder = _adapter_folder(path)
        if folder is None:
            raise FileNotFoundError(f"{path} is not a diffusers MotionAdapter folder (no {ADAPTER_CONFIG}); pass "
                                    "such a folder or an AnimateDiff mm_*.ckpt / .safetensors file")
        return _read_adapter_folder(folder)
    if not path.is_file():
        raise FileNotFoundError(f"motion module {path_or_id} does not exist: pass a diffusers MotionAdapter folder, "
                                "a hub id, or an AnimateDiff mm_*.ckpt / .safetensors file")
    original = read_state_dict(path)
    if any(".temporal_transformer." in key for key in original):
        state_dict = from_original_keys(original)
    else:  # a single file already in diffusers keys
        state_dict = dict(original)
    if any(key.startswith("conv_in.") for key in state_dict):
        raise LoadingError(f"{path} has an input convolution (a SparseCtrl / PIA model, not a motion module)")
    recorded = _recorded_settings(path)  # a file vidiff exported knows its head count
    settings = settings_from_state_dict(state_dict, str(path),
                                        num_attention_heads=recorded.num_attention_heads if recorded else 8)
    return settings, state_dict


def _recorded_settings(path: Path) -> MotionSettings | None:
    if not is_exported_motion_file(path):
        return None
    with safe_open(str(path), framework="pt") as handle:
        text = (handle.metadata() or {}).get("motion", "{}")
    try:
        return MotionSettings.from_config(json.loads(text))
    except (ValueError, TypeError) as error:
        raise LoadingError(f"{path}: its motion settings metadata is damaged ({error}); export it again") from None


# ---------------------------------------------------------------------------------------------------- writing
EXPORT_TAG = "animatediff-motion-module"  # the "vidiff" metadata entry of an original-layout file written here


def is_motion_adapter_folder(path) -> bool:
    """A folder `save_motion_adapter` may replace: a MotionAdapter's config and weights, nothing else."""
    path = Path(path)
    try:
        return (_adapter_folder(path) is not None
                and {p.name for p in path.iterdir()} <= {ADAPTER_CONFIG, *ADAPTER_WEIGHTS})
    except (OSError, ValueError):
        return False


def is_exported_motion_file(path) -> bool:
    """A file `save_original_motion_module` wrote (its safetensors metadata says so)."""
    try:
        with safe_open(str(path), framework="pt") as handle:
            return (handle.metadata() or {}).get("vidiff") == EXPORT_TAG
    except Exception:  # not safetensors at all: not ours
        return False


def save_motion_adapter(adapter_config: Mapping, state_dict: Mapping[str, torch.Tensor], folder) -> Path:
    """A diffusers MotionAdapter folder (config.json + diffusion_pytorch_model.safetensors), written atomically by
    diffusers' own `save_pretrained`, so `MotionAdapter.from_pretrained` and AnimateDiffPipeline load it as their
    own. The state dict's keys and shapes are checked against the config first."""
    folder = Path(folder)
    check_replaceable(folder, is_motion_adapter_folder, "a diffusers MotionAdapter folder",
                      "choose a new folder for --out")
    with quiet_libraries():
        adapter = MotionAdapter(**adapter_config)
    check_state_dict(adapter, state_dict, source="the motion modules")
    adapter.load_state_dict(dict(state_dict))
    with atomic_dir(folder) as tmp:
        adapter.save_pretrained(str(tmp), safe_serialization=True)
    return folder


def save_original_motion_module(state_dict: Mapping[str, torch.Tensor], path, settings: MotionSettings) -> Path:
    """One .safetensors in the original AnimateDiff key layout (`to_original_keys`), which the AnimateDiff
    repository and ComfyUI's AnimateDiff nodes read; the settings ride along in the metadata."""
    path = Path(path)
    if path.exists() and not is_exported_motion_file(path):
        raise FileExistsError(f"{path} exists and is not a motion-module file vidiff wrote; choose a new --out")
    save_safetensors_atomic(to_original_keys(state_dict), path,
                            metadata={"vidiff": EXPORT_TAG, "motion": json.dumps(settings.to_config())})
    return path
