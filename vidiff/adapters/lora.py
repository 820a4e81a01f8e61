"""LoRA on a VideoUNet with peft as the engine: inject, train, save, load (several at once), fuse.

    settings = LoraSettings(rank=8, targets="temporal")
    add_lora(unet, settings)                      # peft LoRA layers, lora_B at zero: outputs unchanged
    save_lora(unet, "motion.safetensors")         # diffusers keys (or format="comfyui": kohya keys)
    load_lora(unet, "style.safetensors", scale=0.8)   # diffusers / peft / kohya / ComfyUI / AnimateDiff keys
    fuse_lora(unet)                               # merged into the weights: a plain VideoUNet again

Targets, by module name (VideoUNet keeps diffusers' names, so a spatial LoRA has exactly an SD LoRA's keys):
    spatial   the spatial transformers' attention projections `*.attentions.i.transformer_blocks.j.attn1/attn2
              .to_q/.to_k/.to_v/.to_out.0`
    temporal  the temporal layers' linear layers: `*.temporal_attentions.i.to_q/to_k/to_v/to_out` (vidiff's layout)
              and `*.motion_modules.i` proj_in / proj_out / attn1 / attn2 projections / ff.net (AnimateDiff's)
    both      the two together
Temporal convolutions are not targeted: they are vidiff's own module (a Conv1d along frames), not a layer peft
wraps, and their Dirac start makes a full update cheap (train.trainable=temporal).

Each adapter is a peft adapter of its own name; the active ones are summed with their scales (peft's multi-adapter
forward: `W x + sum_i scale_i * alpha_i / r_i * B_i A_i x`). Files are read through `vidiff.models.weights`
(safetensors or weights-only torch.load) and written atomically.

References: Hu et al. 2021 (LoRA); Guo et al. 2023 (AnimateDiff motion LoRAs); peft's `inject_adapter_in_model`.
"""
from __future__ import annotations

import contextlib
import json
import os
import re
import warnings
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn as nn
from peft import LoraConfig, inject_adapter_in_model
from peft.tuners.lora import LoraLayer
from peft.tuners.tuners_utils import BaseTunerLayer
from safetensors import safe_open

from vidiff.adapters.formats import FORMATS, LoraWeights, lora_metadata, lora_tensors, parse_lora
from vidiff.models.unet import is_temporal_parameter
from vidiff.models.weights import read_state_dict
from vidiff.spec import LORA_TARGETS
from vidiff.utils import save_safetensors_atomic

TARGETS = LORA_TARGETS
LORA_NAME = "lora.safetensors"  # a pipeline folder's adapter: unet/lora.safetensors beside the base weights
SPATIAL = re.compile(r"(?:.+\.)?attentions\.\d+\.transformer_blocks\.\d+\.attn[12]\.(?:to_q|to_k|to_v|to_out\.0)")
# (not a motion module's proj_in / proj_out: diffusers calls them as `proj_in(input=x)`, which peft's wrapped layer
# does not take; AnimateDiff's motion LoRAs adapt the attention projections)
TEMPORAL = re.compile(r".+\.(?:temporal_attentions\.\d+\.(?:to_q|to_k|to_v|to_out)"
                      r"|motion_modules\.\d+\.transformer_blocks\.\d+\.(?:"
                      r"attn[12]\.(?:to_q|to_k|to_v|to_out\.0)|ff\.net\.\d+(?:\.proj)?))")


@dataclass(frozen=True)
class LoraSettings:
    rank: int = 8                  # r: the inner dimension of B A
    alpha: float | None = None     # the update is scaled by alpha / rank; None = rank (scale 1)
    dropout: float = 0.0           # dropout on the adapter's input (peft's lora_dropout)
    targets: str = "temporal"      # spatial | temporal | both (see the module docstring)

    def __post_init__(self):
        if isinstance(self.rank, bool) or not isinstance(self.rank, int) or self.rank < 1:
            raise ValueError(f"LoRA rank must be an integer >= 1, got {self.rank!r}")
        if self.alpha is not None and (isinstance(self.alpha, bool) or not isinstance(self.alpha, (int, float))
                                       or not self.alpha > 0):
            raise ValueError(f"LoRA alpha must be a number > 0 (or None: the rank), got {self.alpha!r}")
        if isinstance(self.dropout, bool) or not isinstance(self.dropout, (int, float)) \
                or not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"LoRA dropout must be in [0, 1), got {self.dropout!r}")
        if self.targets not in TARGETS:
            raise ValueError(f"LoRA targets must be one of {', '.join(TARGETS)}, got {self.targets!r}")

    @property
    def scale_alpha(self) -> float:
        return float(self.alpha if self.alpha is not None else self.rank)


# ---------------------------------------------------------------------------------------------------------------
# which layers
# ---------------------------------------------------------------------------------------------------------------
def _is_temporal(name: str) -> bool:
    return is_temporal_parameter(f"{name}.weight") or ".motion_modules." in name


def target_kind(name: str) -> str | None:
    """"spatial" / "temporal" for a module name a LoRA target covers, else None."""
    if SPATIAL.fullmatch(name):
        return "spatial"
    if TEMPORAL.fullmatch(name) and _is_temporal(name):
        return "temporal"
    return None


def adaptable_modules(unet) -> dict[str, nn.Module]:
    """Every layer a LoRA file may adapt: nn.Linear / nn.Conv2d, or one already wrapped by an adapter."""
    found = {}
    for name, module in unet.named_modules():
        if isinstance(module, LoraLayer):
            found[name] = module
        elif isinstance(module, (nn.Linear, nn.Conv2d)) and not name.endswith(".base_layer") \
                and ".lora_" not in name:
            found[name] = module
    return found


def target_modules(unet, targets: str) -> list[str]:
    """The module names `targets` selects in this U-Net (linear layers only)."""
    wanted = {"spatial": ("spatial",), "temporal": ("temporal",), "both": ("spatial", "temporal")}[targets]
    names = [name for name, module in adaptable_modules(unet).items()
             if isinstance(getattr(module, "base_layer", module), nn.Linear) and target_kind(name) in wanted]
    if not names:
        raise ValueError(f"LoRA targets={targets!r} select no layer of this U-Net"
                         + (" (it has no temporal layers)" if targets == "temporal" else ""))
    return sorted(names)


def _targets_of(modules) -> str:
    kinds = {target_kind(m) for m in modules}
    return {frozenset({"spatial"}): "spatial", frozenset({"temporal"}): "temporal",
            frozenset({"spatial", "temporal"}): "both"}.get(frozenset(kinds), "custom")


def lora_layers(unet) -> dict[str, LoraLayer]:
    return {name: m for name, m in unet.named_modules() if isinstance(m, LoraLayer)}


def adapter_names(unet) -> list[str]:
    """The adapters injected into `unet`, in the order they were added."""
    names: dict[str, None] = {}
    for layer in lora_layers(unet).values():
        names.update(dict.fromkeys(layer.lora_A.keys()))
    return list(names)


def has_lora(unet) -> bool:
    return bool(lora_layers(unet))


# ---------------------------------------------------------------------------------------------------------------
# inject, read out
# ---------------------------------------------------------------------------------------------------------------
def _check_new_name(unet, adapter_name: str) -> None:
    if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", adapter_name):
        raise ValueError(f"adapter name must be letters, digits and _ (no dots), got {adapter_name!r}")
    if adapter_name in adapter_names(unet):
        raise ValueError(f"this U-Net already has a LoRA adapter named {adapter_name!r}; choose another name")


def _inject(unet, config: LoraConfig, adapter_name: str) -> None:
    """peft's injection, keeping every requires_grad as it was (peft freezes the base model) and the already
    loaded adapters active."""
    requires_grad = {name: p.requires_grad for name, p in unet.named_parameters()}
    active = adapter_names(unet)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # ("Already found a peft_config attribute in the model")
        inject_adapter_in_model(config, unet, adapter_name=adapter_name)
    for name, p in unet.named_parameters():
        p.requires_grad_(requires_grad.get(name, True))
    activate(unet, active + [adapter_name])


def add_lora(unet, settings: LoraSettings, adapter_name: str = "default") -> list[str]:
    """Inject a fresh peft LoRA adapter into the layers `settings.targets` selects; lora_B starts at zero (peft's
    default), so the U-Net's outputs are unchanged. Returns the adapted module names."""
    _check_new_name(unet, adapter_name)
    names = target_modules(unet, settings.targets)
    config = LoraConfig(r=settings.rank, lora_alpha=settings.scale_alpha, lora_dropout=settings.dropout,
                        target_modules=names, init_lora_weights=True)
    _inject(unet, config, adapter_name)
    return names


def adapter_parameters(unet, adapter_name: str | None = None) -> dict[str, nn.Parameter]:
    """The lora_A / lora_B parameters (of one adapter, or all) by their names in `unet`."""
    return {name: p for name, p in unet.named_parameters() if re.search(r"\.lora_[AB]\.", name)
            and (adapter_name is None or f".{adapter_name}." in name)}


def _one_adapter(unet, adapter_name: str | None) -> str:
    """`adapter_name`, or the U-Net's only adapter when None."""
    if adapter_name is not None:
        return adapter_name
    names = adapter_names(unet)
    if len(names) != 1:
        raise ValueError(f"this U-Net has {len(names)} LoRA adapters ({', '.join(names) or 'none'}); name one"
                         if names else "this U-Net has no LoRA adapter")
    return names[0]


def lora_weights(unet, adapter_name: str | None = None) -> LoraWeights:
    """One adapter's tensors and alphas, by module name (the format-free form the writers take); None: the
    only adapter."""
    adapter_name = _one_adapter(unet, adapter_name)
    weights = LoraWeights()
    for name, layer in lora_layers(unet).items():
        if adapter_name in layer.lora_A:
            weights.down[name] = layer.lora_A[adapter_name].weight.detach()
            weights.up[name] = layer.lora_B[adapter_name].weight.detach()
            weights.alpha[name] = float(layer.lora_alpha[adapter_name])
    if not weights.down:
        raise ValueError(f"this U-Net has no LoRA adapter named {adapter_name!r} (it has: "
                         f"{', '.join(adapter_names(unet)) or 'none'})")
    return weights


def lora_state_dict(unet, adapter_name: str | None = None) -> dict[str, torch.Tensor]:
    """The adapter's tensors only, in peft keys (`<module>.lora_A.weight`, `<module>.lora_B.weight`)."""
    weights = lora_weights(unet, adapter_name)
    return {**{f"{m}.lora_A.weight": t for m, t in weights.down.items()},
            **{f"{m}.lora_B.weight": t for m, t in weights.up.items()}}


def adapter_settings(unet, adapter_name: str | None = None) -> LoraSettings:
    """What an injected adapter was made with (its most common rank and alpha, its dropout, its targets)."""
    adapter_name = _one_adapter(unet, adapter_name)
    weights = lora_weights(unet, adapter_name)
    rank, alpha = weights.common()
    layer = next(layer for layer in lora_layers(unet).values() if adapter_name in layer.lora_A)
    dropout = getattr(layer.lora_dropout[adapter_name], "p", 0.0)
    targets = _targets_of(weights.down)
    return LoraSettings(rank=rank, alpha=alpha, dropout=float(dropout),
                        targets=targets if targets in TARGETS else "both")


# ---------------------------------------------------------------------------------------------------------------
# several adapters: scales, fuse, the base weights alone
# ---------------------------------------------------------------------------------------------------------------
def activate(unet, names: list[str], scales: dict[str, float] | None = None) -> None:
    """Make `names` the active adapters (summed), each at its scale (kept as it was when not given); requires_grad
    is left as it was (peft's set_adapter would switch it on)."""
    requires_grad = {name: p.requires_grad for name, p in unet.named_parameters()}
    for layer in lora_layers(unet).values():
        layer.set_adapter(list(names))
        for name, scale in (scales or {}).items():
            layer.set_scale(name, scale)
    for name, p in unet.named_parameters():
        p.requires_grad_(requires_grad[name])


def set_lora_scales(unet, scales: dict[str, float]) -> None:
    """Set the scale of each named adapter (peft's weighted multi-adapter), keeping the same ones active."""
    unknown = set(scales) - set(adapter_names(unet))
    if unknown:
        raise ValueError(f"no LoRA adapter named {sorted(unknown)} in this U-Net")
    activate(unet, adapter_names(unet), scales)


def lora_scales(unet) -> dict[str, float]:
    """The scale of each adapter (1.0 = as trained)."""
    scales = {}
    for layer in lora_layers(unet).values():
        for name in layer.lora_A:
            scales.setdefault(name, layer.scaling[name] * layer.r[name] / layer.lora_alpha[name])
    return scales


def _replace_layers(unet, pick) -> list[tuple[nn.Module, str, nn.Module]]:
    """Put `pick(layer)` in place of every LoRA layer; returns (parent, attribute, layer) to undo it."""
    replaced = []
    for name, layer in list(lora_layers(unet).items()):
        parent_name, _, child = name.rpartition(".")
        parent = unet.get_submodule(parent_name) if parent_name else unet
        setattr(parent, child, pick(layer))
        replaced.append((parent, child, layer))
    return replaced


@contextlib.contextmanager
def without_lora(unet):
    """The U-Net with its base layers back in place of the LoRA layers, for a while: `state_dict()` and
    `save_pretrained` then see the plain VideoUNet (its base weights; merged ones after a merge)."""
    replaced = _replace_layers(unet, lambda layer: layer.get_base_layer())
    try:
        yield unet
    finally:
        for parent, child, layer in replaced:
            setattr(parent, child, layer)


@contextlib.contextmanager
def merged(unet):
    """The U-Net as plain modules holding the merged weights (base + the active adapters at their scales), for a
    while (writing a motion module or an SD folder of a LoRA run); the base weights are restored exactly after."""
    backups = []
    with torch.no_grad():
        for layer in lora_layers(unet).values():
            weight = layer.get_base_layer().weight
            backups.append((weight, weight.detach().clone()))
            for name in (n for n in layer.active_adapters if n in layer.lora_A):
                weight += layer.get_delta_weight(name).to(weight.dtype)
    try:
        with without_lora(unet):
            yield unet
    finally:
        with torch.no_grad():
            for weight, saved in backups:
                weight.copy_(saved)


@torch.no_grad()
def fuse_lora(unet) -> None:
    """Merge the active adapters (at their scales) into the base weights and remove every LoRA layer (peft's
    merge-and-unload): `unet` is a plain VideoUNet again, saved and loaded as any other."""
    for layer in lora_layers(unet).values():
        layer.merge(adapter_names=[n for n in layer.active_adapters if n in layer.lora_A])
    _replace_layers(unet, lambda layer: layer.get_base_layer())
    unet.__dict__.pop("peft_config", None)


# ---------------------------------------------------------------------------------------------------------------
# files
# ---------------------------------------------------------------------------------------------------------------
def read_lora(path_or_state_dict, modules: dict, source: str | None = None) -> LoraWeights:
    """A LoRA file (through `read_state_dict`) or state dict, normalised against `modules` (`adaptable_modules`);
    text-encoder keys are reported in one warning line."""
    if isinstance(path_or_state_dict, (str, os.PathLike)):
        source = source or str(path_or_state_dict)
        state_dict = read_state_dict(path_or_state_dict)
    else:
        source, state_dict = source or "the LoRA state dict", dict(path_or_state_dict)
    weights = parse_lora(state_dict, modules, source)
    if weights.skipped:
        warnings.warn(f"{source}: skipped {weights.skipped} text-encoder LoRA keys (lora_te*); vidiff applies the "
                      "U-Net part only", stacklevel=3)
    return weights


def _default_name(unet, source) -> str:
    stem = re.sub(r"\W", "_", Path(str(source)).stem) if source is not None else "lora"
    stem = stem if re.match(r"[A-Za-z_]", stem) else f"lora_{stem}"
    name, i, taken = stem, 2, set(adapter_names(unet))
    while name in taken:
        name, i = f"{stem}_{i}", i + 1
    return name


def _config_for(weights: LoraWeights) -> LoraConfig:
    """A peft config that recreates the file's layers: the common rank and alpha, patterns for the others."""
    ranks = {m: weights.rank(m) for m in weights.down}
    alphas = {m: weights.alpha.get(m, ranks[m]) for m in weights.down}
    rank = Counter(ranks.values()).most_common(1)[0][0]
    alpha = Counter(alphas.values()).most_common(1)[0][0]
    # (peft matches pattern keys as regular expressions: escape the module names)
    return LoraConfig(r=rank, lora_alpha=alpha, target_modules=sorted(weights.down),
                      rank_pattern={re.escape(m): r for m, r in ranks.items() if r != rank},
                      alpha_pattern={re.escape(m): a for m, a in alphas.items() if a != alpha})


@torch.no_grad()
def load_lora(unet, path_or_state_dict, scale: float = 1.0, adapter_name: str | None = None) -> str:
    """Load a LoRA (a file or a state dict; diffusers / peft, old diffusers, kohya / ComfyUI / A1111 or
    AnimateDiff motion-LoRA keys) as a new peft adapter, active beside the ones already loaded, at `scale`.
    Keys that fit no layer raise LoadingError (one line) before the U-Net is touched. Returns the adapter name
    (default: from the file name)."""
    if isinstance(scale, bool) or not isinstance(scale, (int, float)) or scale != scale:
        raise ValueError(f"LoRA scale must be a number, got {scale!r}")
    source = path_or_state_dict if isinstance(path_or_state_dict, (str, os.PathLike)) else None
    adapter_name = adapter_name or _default_name(unet, source)
    _check_new_name(unet, adapter_name)
    weights = read_lora(path_or_state_dict, adaptable_modules(unet))
    _inject(unet, _config_for(weights), adapter_name)
    layers = lora_layers(unet)
    for module, down in weights.down.items():
        layer = layers[module]
        layer.lora_A[adapter_name].weight.copy_(down)
        layer.lora_B[adapter_name].weight.copy_(weights.up[module])
    set_lora_scales(unet, {adapter_name: float(scale)})
    return adapter_name


def save_lora(unet, path, format: str = "diffusers", adapter_name: str | None = None,
              extra: dict | None = None) -> Path:
    """One adapter as a safetensors file, written atomically: "diffusers" (`unet.`-prefixed peft keys, what
    diffusers' `load_lora_weights` / `load_lora_adapter` read) or "comfyui" (kohya keys: ComfyUI, A1111). The
    metadata records rank, alpha, dropout and targets (JSON strings); `extra` adds more entries. `adapter_name`:
    None for the U-Net's only adapter."""
    if format not in FORMATS:
        raise ValueError(f"LoRA format must be one of {', '.join(FORMATS)}, got {format!r}")
    weights = lora_weights(unet, adapter_name)
    extra = {"dropout": adapter_settings(unet, adapter_name).dropout, **(extra or {})}
    return write_lora(weights, path, format, _targets_of(weights.down), extra)


def write_lora(weights: LoraWeights, path, format: str, targets: str, extra: dict | None = None) -> Path:
    path = Path(path)
    if path.is_dir():
        raise FileExistsError(f"{path} is a folder; a LoRA is one .safetensors file: give a file path")
    if path.suffix != ".safetensors":
        raise ValueError(f"a LoRA file is written as safetensors: give a path ending in .safetensors, got {path}")
    save_safetensors_atomic(lora_tensors(weights, format), path,
                            metadata=lora_metadata(weights, format, targets, extra))
    return path


def read_lora_metadata(path) -> dict:
    """The JSON values of a vidiff LoRA file's metadata ({} for other files, or other formats)."""
    try:
        with safe_open(str(path), framework="pt") as handle:
            raw = handle.metadata() or {}
    except Exception:  # not safetensors (a .bin / .ckpt LoRA): no metadata
        return {}
    if raw.get("vidiff") != "lora":
        return {}
    values = {}
    for key, value in raw.items():
        try:
            values[key] = json.loads(value)
        except ValueError:
            values[key] = value
    return values


def folder_record(unet) -> dict:
    """What a pipeline folder's vidiff.json records of its adapter (`lora`): the file, its settings, its scale."""
    name = _one_adapter(unet, None)
    return {"file": f"unet/{LORA_NAME}", **asdict(adapter_settings(unet, name)), "scale": lora_scales(unet)[name]}


class UNetWithAdapter:
    """What a pipeline folder of a LoRA U-Net holds in unet/: the base weights unfused (`VideoUNet.save_pretrained`,
    so the folder is an ordinary one) and the adapter beside them (`lora.safetensors`, diffusers keys)."""

    def __init__(self, unet):
        names = adapter_names(unet)
        if len(names) != 1:
            raise ValueError(f"a pipeline folder keeps one LoRA adapter; this U-Net has {len(names)} "
                             f"({', '.join(names)}): fuse them first (vidiff.adapters.fuse_lora)")
        self.unet = unet

    def save_pretrained(self, directory) -> None:
        with without_lora(self.unet):
            self.unet.save_pretrained(directory)
        save_lora(self.unet, Path(directory) / LORA_NAME)


def load_folder_lora(unet, unet_folder, record: dict | None) -> str | None:
    """Apply a pipeline folder's adapter (unet/lora.safetensors) at its recorded scale; None when it has none."""
    path = Path(unet_folder) / LORA_NAME
    if not path.is_file():
        return None
    scale = (record or {}).get("scale", 1.0)
    return load_lora(unet, path, scale=scale if isinstance(scale, (int, float)) else 1.0, adapter_name="default")
