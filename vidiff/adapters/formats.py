"""LoRA key formats: every layout vidiff reads, normalised to one `LoraWeights` (module name -> down, up, alpha).

    diffusers / peft   unet.down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q.lora_A.weight   (+ lora_B)
    diffusers (old)    ...attn1.to_q.lora.down.weight, ...attn1.processor.to_q_lora.down.weight
    kohya / ComfyUI    lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q.lora_down.weight
                       (+ .lora_up.weight, .alpha; text-encoder `lora_te*` keys are skipped, with one warning)
    AnimateDiff        down_blocks.0.motion_modules.0.temporal_transformer.transformer_blocks.0.attention_blocks.0
                       .to_q.lora_down.weight: diffusers' AnimateDiff renames first (.temporal_transformer dropped,
                       .attention_blocks.0/1 -> .attn1/.attn2, .norms.0/1 -> .norm1/.norm2, .ff_norm -> .norm3)

A kohya name loses the dots of the module path, so it is looked up among the U-Net's own module names with dots
turned into underscores (the way ComfyUI maps keys; it covers vidiff's temporal layers too), and only names the
model does not have go through diffusers' converter (`_convert_unet_lora_key`, for the LDM spellings). The
diffusers spellings go through `convert_unet_state_dict_to_peft`.

Scale convention: the effect of a module is `up @ down * alpha / rank`. diffusers / peft files carry no alpha
(alpha = rank, scale 1), so vidiff writes them with `alpha / rank` folded into `up`; kohya files keep `.alpha`.

References: kohya-ss/sd-scripts networks/lora.py (key layout); diffusers loaders/lora_conversion_utils.py,
utils/state_dict_utils.py; diffusers scripts/convert_animatediff_motion_lora_to_diffusers.py (renames).
"""
from __future__ import annotations

import json
import re
from collections import Counter
from dataclasses import dataclass, field

import torch
from diffusers.loaders.lora_conversion_utils import _convert_unet_lora_key
from diffusers.utils.state_dict_utils import convert_unet_state_dict_to_peft

from vidiff.models.weights import LoadingError

FORMATS = ("diffusers", "comfyui")
KOHYA_PREFIX = "lora_unet_"
TEXT_ENCODER_PREFIXES = ("lora_te_", "lora_te1_", "lora_te2_", "text_encoder.", "text_encoder_2.")
ANIMATEDIFF_RENAMES = ((".temporal_transformer", ""), (".attention_blocks.0", ".attn1"),
                       (".attention_blocks.1", ".attn2"), (".norms.0", ".norm1"), (".norms.1", ".norm2"),
                       (".ff_norm", ".norm3"))
# <module>.lora_A.weight / .lora_B.weight (optionally with a peft adapter name), <module>.alpha
PEFT_KEY = re.compile(r"^(?P<module>.+)\.lora_(?P<part>A|B)(?:\.[A-Za-z0-9_]+)?\.weight$")
ALPHA_KEY = re.compile(r"^(?P<module>.+)\.alpha$")
KOHYA_PARTS = {"lora_down.weight": "A", "lora_up.weight": "B", "alpha": "alpha"}


@dataclass
class LoraWeights:
    """One LoRA, by module name of the U-Net: `down` (rank, in ...), `up` (out, rank ...), `alpha` (scale
    alpha / rank); `skipped` counts the text-encoder keys left out."""
    down: dict[str, torch.Tensor] = field(default_factory=dict)
    up: dict[str, torch.Tensor] = field(default_factory=dict)
    alpha: dict[str, float] = field(default_factory=dict)
    skipped: int = 0

    def rank(self, module: str) -> int:
        return int(self.down[module].shape[0])

    def common(self) -> tuple[int, float]:
        """The most frequent rank and alpha (what a file's metadata records)."""
        ranks = Counter(self.rank(m) for m in self.down).most_common(1)
        alphas = Counter(self.alpha.get(m, self.rank(m)) for m in self.down).most_common(1)
        return (ranks[0][0], float(alphas[0][0])) if ranks else (0, 0.0)


def _names(keys, limit: int = 3) -> str:
    keys = list(keys)
    return ", ".join(keys[:limit]) + (", ..." if len(keys) > limit else "")


def _kohya_module(name: str, lookup: dict[str, str]) -> str:
    """`lora_unet_<module path with _>` -> the U-Net's module name (diffusers' converter for other spellings)."""
    flat = name[len(KOHYA_PREFIX):]
    if flat in lookup:
        return lookup[flat]
    converted = convert_unet_state_dict_to_peft({_convert_unet_lora_key(f"{name}.lora_down.weight"): None})
    match = PEFT_KEY.match(next(iter(converted)))
    return match["module"] if match else flat


def _diffusers_key(key: str) -> str:
    """A diffusers / peft / AnimateDiff key in peft spelling (`<module>.lora_A.weight`), `unet.` removed."""
    key = key.removeprefix("unet.")
    if ".motion_modules." in key:
        for old, new in ANIMATEDIFF_RENAMES:
            key = key.replace(old, new)
    key = key.replace(".lora_down.weight", ".lora_A.weight").replace(".lora_up.weight", ".lora_B.weight")
    return next(iter(convert_unet_state_dict_to_peft({key: None})))


def _split_key(key: str, lookup: dict[str, str]) -> tuple[str, str] | None:
    """(module, "A" | "B" | "alpha") for a LoRA key in any format, None for a key that is not one."""
    if key.startswith(KOHYA_PREFIX):
        name, _, part = key.partition(".")
        return (_kohya_module(name, lookup), KOHYA_PARTS[part]) if part in KOHYA_PARTS else None
    match = ALPHA_KEY.match(key.removeprefix("unet."))
    if match:
        return _diffusers_key(f"{match['module']}.lora_A.weight").removesuffix(".lora_A.weight"), "alpha"
    match = PEFT_KEY.match(_diffusers_key(key))
    return (match["module"], match["part"]) if match else None


def parse_lora(state_dict: dict, modules: dict | None, source: str) -> LoraWeights:
    """Normalise a LoRA state dict in any supported format against `modules` (the U-Net's layers that can take
    an adapter, name -> nn.Linear / nn.Conv2d; None: take the names as the keys spell them, no shape check).
    LoadingError (one line: the file, the count, the first keys) when a key is no LoRA key, names no such layer,
    lacks its pair or has the wrong shape; nothing is modified."""
    lookup = {name.replace(".", "_"): name for name in modules or {}}
    weights, bad = LoraWeights(), []
    for key, tensor in state_dict.items():
        if key.startswith(TEXT_ENCODER_PREFIXES):
            weights.skipped += 1
            continue
        split = _split_key(key, lookup)
        if split is None or (modules is not None and split[0] not in modules):
            bad.append(key)
            continue
        module, part = split
        if part == "alpha":
            weights.alpha[module] = float(tensor)
        else:
            (weights.down if part == "A" else weights.up)[module] = tensor
    if bad:
        raise LoadingError(f"{source}: {len(bad)} of {len(state_dict)} keys fit no layer of this U-Net "
                           f"({_names(bad)}); is it a LoRA for another model?")
    unpaired = sorted(set(weights.down) ^ set(weights.up))
    wrong = [m for m in sorted(weights.down) if modules is not None and m not in unpaired
             and not _fits(modules[m], weights, m)]
    if unpaired or wrong:
        what = "lack their lora_A/lora_B pair" if unpaired else "have shapes that do not fit this U-Net"
        raise LoadingError(f"{source}: {len(unpaired or wrong)} LoRA layers {what} ({_names(unpaired or wrong)})")
    if not weights.down:
        raise LoadingError(f"{source} holds no U-Net LoRA weights ({len(state_dict)} keys"
                           f"{', all for the text encoder' if weights.skipped else ''})")
    return weights


def _fits(module, weights: LoraWeights, name: str) -> bool:
    """down (rank, in, ...) and up (out, rank, ...) against the layer's weight (out, in, ...)."""
    base = getattr(module, "base_layer", module).weight
    down, up = weights.down[name], weights.up[name]
    return (down.shape[1] == base.shape[1] and up.shape[0] == base.shape[0] and up.shape[1] == down.shape[0]
            and down.ndim == up.ndim == base.ndim)


def lora_tensors(weights: LoraWeights, format: str) -> dict[str, torch.Tensor]:
    """The file's tensors: "diffusers" (`unet.<module>.lora_A/B.weight`, alpha / rank folded into lora_B: what
    diffusers' `load_lora_weights` reads) or "comfyui" (kohya keys with `.alpha`, as ComfyUI / A1111 read)."""
    if format not in FORMATS:
        raise ValueError(f"LoRA format must be one of {', '.join(FORMATS)}, got {format!r}")
    tensors = {}
    for module in sorted(weights.down):
        down, up = weights.down[module], weights.up[module]
        alpha = weights.alpha.get(module, weights.rank(module))
        if format == "diffusers":
            scale = alpha / weights.rank(module)
            tensors[f"unet.{module}.lora_A.weight"] = down
            tensors[f"unet.{module}.lora_B.weight"] = up * scale if scale != 1 else up
        else:
            name = KOHYA_PREFIX + module.replace(".", "_")
            tensors[f"{name}.lora_down.weight"] = down
            tensors[f"{name}.lora_up.weight"] = up
            tensors[f"{name}.alpha"] = torch.tensor(float(alpha))
    return tensors


def lora_metadata(weights: LoraWeights, format: str, targets: str, extra: dict | None = None) -> dict[str, str]:
    """safetensors metadata (JSON string values): vidiff's record, plus kohya's `ss_network_*` for UIs."""
    rank, alpha = weights.common()
    if format == "diffusers":
        alpha = float(rank)  # (folded into lora_B)
    metadata = {"vidiff": "lora", "lora_format": json.dumps(format), "rank": json.dumps(rank),
                "alpha": json.dumps(alpha), "targets": json.dumps(targets), "format": "pt"}
    if format == "comfyui":
        metadata.update(ss_network_module="networks.lora", ss_network_dim=str(rank), ss_network_alpha=str(alpha))
    for key, value in (extra or {}).items():
        metadata[key] = json.dumps(value)
    return metadata
