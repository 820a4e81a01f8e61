"""Tiny random models for tests, examples and benchmarks: no download, a second or two on a CPU.

`make_tiny_sd_pipeline(path)` writes a diffusers-format Stable Diffusion pipeline folder laid out exactly as
`StableDiffusionPipeline.save_pretrained` lays it out (`unet/`, `vae/`, `text_encoder/`, `tokenizer/`,
`scheduler/`, `model_index.json`; no safety checker, no feature extractor), with random weights:

    U-Net         UNet2DConditionModel, widths (16, 32), one cross-attention down / up block -> spatial factor 2
    VAE           AutoencoderKL, widths (8, 16), 4 latent channels -> spatial factor 2 (SD's VAE: 8)
    text encoder  CLIPTextModel, hidden size 32, 2 layers, 4 heads, 77 positions
    tokenizer     CLIPTokenizer from a byte-level BPE vocabulary generated here (a few hundred tokens)
    scheduler     DDIMScheduler with SD 1.x's settings (scaled_linear betas 0.00085 -> 0.012, 1000 steps)

So a tiny pipeline's pixel size must be a multiple of 2 (VAE) x 2 (U-Net) = 4; 16 x 16 pixels = 8 x 8 latents.

`make_tiny_video_pipeline(path)` builds the same and inflates it into a vidiff pipeline folder
(`vidiff.models.folder.inflate_pipeline`), ready for `VideoPipeline.from_pretrained` / `vidiff generate`.
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

import diffusers
import torch
from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

from vidiff.models.folder import inflate_pipeline
from vidiff.utils import atomic_path, save_safetensors_atomic

# Every tiny model's settings in one place, so tests can build matching references.
TINY_UNET = dict(
    block_out_channels=(16, 32),
    layers_per_block=1,
    norm_num_groups=8,
    cross_attention_dim=32,
    attention_head_dim=8,
    sample_size=8,
    in_channels=4,
    out_channels=4,
    down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
    up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
)
TINY_VAE = dict(
    block_out_channels=(8, 16),
    in_channels=3,
    out_channels=3,
    latent_channels=4,
    norm_num_groups=8,
    layers_per_block=1,
    down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
    up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"),
    sample_size=16,
)
TINY_TEXT_ENCODER = dict(
    hidden_size=32,
    intermediate_size=64,
    num_hidden_layers=2,
    num_attention_heads=4,
    max_position_embeddings=77,
    projection_dim=32,
    hidden_act="quick_gelu",
)
# SD 1.x's scheduler settings (its scheduler/scheduler_config.json), DDIM as the pipeline's default sampler.
SD_SCHEDULER = dict(
    num_train_timesteps=1000,
    beta_start=0.00085,
    beta_end=0.012,
    beta_schedule="scaled_linear",
    clip_sample=False,
    set_alpha_to_one=False,
    steps_offset=1,
    prediction_type="epsilon",
)
TINY_VAE_FACTOR = 2  # 2 ** (len(TINY_VAE["block_out_channels"]) - 1)

# A handful of words that tests and examples use, given whole-word tokens by the BPE merges below.
_WORDS = ("a red circle moving right blue square left green triangle up down on black background "
          "the cat dog running jumping in field of flowers sky ocean waves video clip").split()


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2 / CLIP's reversible map from bytes to printable unicode characters (the BPE's base alphabet)."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    chars = printable[:]
    n = 0
    for b in range(256):
        if b not in printable:
            printable.append(b)
            chars.append(256 + n)
            n += 1
    return dict(zip(printable, map(chr, chars)))


def write_tiny_clip_vocab(folder: str | os.PathLike) -> int:
    """Write `vocab.json` + `merges.txt` for a small CLIP byte-level BPE vocabulary; returns its size.

    The alphabet is all 256 byte characters, alone and word-final (`x</w>`, CLIP's end-of-word marker), plus the
    merges that spell the words in `_WORDS` whole, plus CLIP's `<|startoftext|>` / `<|endoftext|>`. Any text
    encodes (unknown words fall back to characters), which is all a random text encoder needs.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    alphabet = list(_bytes_to_unicode().values())
    vocab: dict[str, int] = {}
    for token in alphabet + [c + "</w>" for c in alphabet]:
        vocab.setdefault(token, len(vocab))
    merges: list[tuple[str, str]] = []
    for word in _WORDS:
        # Merge left to right: ((w o) r) d</w> ..., the last character carrying the end-of-word marker.
        pieces = list(word[:-1]) + [word[-1] + "</w>"]
        while len(pieces) > 1:
            pair = (pieces[0], pieces[1])
            merged = pair[0] + pair[1]
            if pair not in merges:
                merges.append(pair)
            vocab.setdefault(merged, len(vocab))
            pieces = [merged] + pieces[2:]
    for special in ("<|startoftext|>", "<|endoftext|>"):
        vocab.setdefault(special, len(vocab))
    (folder / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False))
    (folder / "merges.txt").write_text("#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in merges))
    return len(vocab)


def make_tiny_tokenizer(folder: str | os.PathLike):
    """A `CLIPTokenizer` over the tiny vocabulary, saved to `folder` (as `save_pretrained` writes it)."""
    folder = Path(folder)
    with tempfile.TemporaryDirectory() as tmp:
        write_tiny_clip_vocab(tmp)
        vocab = json.loads((Path(tmp) / "vocab.json").read_text())
        merges = [tuple(line.split()) for line in (Path(tmp) / "merges.txt").read_text().splitlines()[1:] if line]
    tokenizer = CLIPTokenizer(vocab=vocab, merges=merges, model_max_length=TINY_TEXT_ENCODER["max_position_embeddings"])
    tokenizer.save_pretrained(str(folder))
    # Also the classic vocab.json + merges.txt, which older transformers' slow CLIPTokenizer reads.
    write_tiny_clip_vocab(folder)
    return tokenizer


def make_tiny_sd_pipeline(path: str | os.PathLike, seed: int = 0, *, unet_kwargs: dict | None = None,
                          vae_kwargs: dict | None = None, text_encoder_kwargs: dict | None = None,
                          vae: bool = True) -> Path:
    """Write a tiny random diffusers-format Stable Diffusion pipeline folder to `path`; returns the path.

    `unet_kwargs` / `vae_kwargs` / `text_encoder_kwargs` override entries of `TINY_UNET` / `TINY_VAE` /
    `TINY_TEXT_ENCODER` (benchmarks build larger SD-like models this way). `vae=False` writes a pixel-space
    model (U-Net on 3-channel pixels in [-1, 1], no `vae/`): not a valid StableDiffusionPipeline, but the layout
    `vidiff inflate` accepts for pixel-space bases. Deterministic for a given seed.
    """
    path = Path(path)
    if path.exists() and any(path.iterdir()):
        if not (path / "model_index.json").is_file():  # never delete a folder this function did not write
            raise FileExistsError(f"{path} exists and is not an SD pipeline folder; choose an empty or new path")
        shutil.rmtree(path)
    path.mkdir(parents=True, exist_ok=True)

    # Tokenizer first: the text encoder's vocabulary size must match it.
    tokenizer = make_tiny_tokenizer(path / "tokenizer")

    torch.manual_seed(seed)
    unet_config = dict(TINY_UNET)
    if not vae:
        unet_config.update(in_channels=3, out_channels=3)
    unet_config.update(unet_kwargs or {})
    unet = UNet2DConditionModel(**unet_config)
    unet.save_pretrained(str(path / "unet"))

    if vae:
        vae_model = AutoencoderKL(**{**TINY_VAE, **(vae_kwargs or {})})
        vae_model.save_pretrained(str(path / "vae"))

    text_config = CLIPTextConfig(vocab_size=len(tokenizer), bos_token_id=tokenizer.bos_token_id,
                                 eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
                                 **{**TINY_TEXT_ENCODER, **(text_encoder_kwargs or {})})
    text_encoder = CLIPTextModel(text_config)
    text_encoder.save_pretrained(str(path / "text_encoder"))

    DDIMScheduler(**SD_SCHEDULER).save_pretrained(str(path / "scheduler"))

    # model_index.json as StableDiffusionPipeline.save_pretrained writes it (optional components set to null).
    index = {
        "_class_name": "StableDiffusionPipeline",
        "_diffusers_version": _diffusers_version(),
        "feature_extractor": [None, None],
        "image_encoder": [None, None],
        "requires_safety_checker": False,
        "safety_checker": [None, None],
        "scheduler": ["diffusers", "DDIMScheduler"],
        "text_encoder": ["transformers", "CLIPTextModel"],
        "tokenizer": ["transformers", "CLIPTokenizer"],
        "unet": ["diffusers", "UNet2DConditionModel"],
        "vae": ["diffusers", "AutoencoderKL"] if vae else [None, None],
    }
    (path / "model_index.json").write_text(json.dumps(index, indent=2, sort_keys=True) + "\n")
    return path


def make_tiny_video_pipeline(path: str | os.PathLike, seed: int = 0, *, unet_kwargs: dict | None = None,
                             vae: bool = True, **inflate_options) -> Path:
    """A tiny SD pipeline inflated into a vidiff pipeline folder at `path`; returns the path.

    `inflate_options` go to `inflate_pipeline` (`cross_frame`, `temporal_conv`, `temporal_attention`,
    `defaults={...}` for vidiff.json's sampling defaults, ...). Small defaults (4 frames of 16 x 16 pixels,
    4 steps) keep calls without explicit sizes fast.
    """
    path = Path(path)
    defaults = {"num_frames": 4, "height": 16, "width": 16, "num_inference_steps": 4, "fps": 8}
    defaults.update(inflate_options.pop("defaults", None) or {})
    with tempfile.TemporaryDirectory(dir=path.parent if path.parent.exists() else None) as tmp:
        base = make_tiny_sd_pipeline(Path(tmp) / "sd", seed, unet_kwargs=unet_kwargs, vae=vae)
        inflate_pipeline(base, path, defaults=defaults, **inflate_options)
    return path


def _diffusers_version() -> str:
    return diffusers.__version__


# ---------------------------------------------------------------------------------------------------------------
# Single-file checkpoints (the original LDM / CompVis key layout), for testing `vidiff inflate --base X.safetensors`
# ---------------------------------------------------------------------------------------------------------------
_RESNET_LDM = {"norm1": "in_layers.0", "conv1": "in_layers.2", "time_emb_proj": "emb_layers.1", "norm2": "out_layers.0",
               "conv2": "out_layers.3", "conv_shortcut": "skip_connection"}
_UNET_TOP_LDM = {"time_embedding.linear_1": "time_embed.0", "time_embedding.linear_2": "time_embed.2",
                 "conv_in": "input_blocks.0.0", "conv_norm_out": "out.0", "conv_out": "out.2"}
_VAE_ATTN_LDM = {"group_norm": "norm", "to_q": "q", "to_k": "k", "to_v": "v", "to_out.0": "proj_out"}


def _unet_key_to_ldm(key: str, per_block: int) -> str:
    """diffusers UNet2DConditionModel key -> LDM `model.diffusion_model.*` key (SD 1.x layout).

    LDM counts a block's down/upsampler as one more layer (`per_block` = layers_per_block + 1); an upsampler's
    index inside its layer depends on whether the block has attentions, so it is left as `{up}` here.
    """
    parts = key.split(".")
    if parts[0] in ("down_blocks", "up_blocks"):
        i, kind, j, rest = int(parts[1]), parts[2], int(parts[3]), parts[4:]
        if kind == "downsamplers":
            return f"input_blocks.{1 + i * per_block + per_block - 1}.0.op.{rest[-1]}"
        if kind == "upsamplers":
            return f"output_blocks.{i * per_block + per_block - 1}.{{up}}.conv.{rest[-1]}"
        layer = f"input_blocks.{1 + i * per_block + j}" if parts[0] == "down_blocks" else f"output_blocks.{i * per_block + j}"
        if kind == "resnets":
            return f"{layer}.0.{_RESNET_LDM[rest[0]]}.{'.'.join(rest[1:])}"
        return f"{layer}.1.{'.'.join(rest)}"
    if parts[0] == "mid_block":
        kind, j, rest = parts[1], int(parts[2]), parts[3:]
        if kind == "resnets":
            return f"middle_block.{2 * j}.{_RESNET_LDM[rest[0]]}.{'.'.join(rest[1:])}"
        return f"middle_block.1.{'.'.join(rest)}"
    return f"{_UNET_TOP_LDM['.'.join(parts[:-1])]}.{parts[-1]}"


def _vae_key_to_ldm(key: str, num_blocks: int) -> str:
    """diffusers AutoencoderKL key -> LDM `first_stage_model.*` key."""
    side, *rest = key.split(".")
    if side in ("quant_conv", "post_quant_conv"):
        return key
    if rest[0] in ("down_blocks", "up_blocks"):
        i = int(rest[1])
        name, level = ("down", i) if rest[0] == "down_blocks" else ("up", num_blocks - 1 - i)  # LDM: bottom-up
        if rest[2] == "resnets":
            tail = ".".join(rest[4:]).replace("conv_shortcut", "nin_shortcut")
            return f"{side}.{name}.{level}.block.{rest[3]}.{tail}"
        sampler = "downsample" if rest[2] == "downsamplers" else "upsample"
        return f"{side}.{name}.{level}.{sampler}.conv.{rest[-1]}"
    if rest[0] == "mid_block":
        if rest[1] == "resnets":
            return f"{side}.mid.block_{int(rest[2]) + 1}.{'.'.join(rest[3:])}"
        return f"{side}.mid.attn_1.{_VAE_ATTN_LDM['.'.join(rest[3:-1])]}.{rest[-1]}"
    module = "norm_out" if rest[0] == "conv_norm_out" else rest[0]
    return f"{side}.{module}.{'.'.join(rest[1:])}"


def save_sd_single_file(sd_folder: str | os.PathLike, path: str | os.PathLike) -> Path:
    """Write a diffusers SD 1.x pipeline folder's U-Net, VAE and text encoder as one LDM-layout checkpoint
    (`model.diffusion_model.*`, `first_stage_model.*`, `cond_stage_model.transformer.*`), as the original
    Stable Diffusion releases ship them. .safetensors, or a weights-only .ckpt (`{"state_dict": ...}`)."""


    sd_folder, path = Path(sd_folder), Path(path)
    unet = UNet2DConditionModel.from_pretrained(str(sd_folder / "unet"))
    per_block = unet.config.layers_per_block + 1
    checkpoint = {}
    for key, value in unet.state_dict().items():
        new = _unet_key_to_ldm(key, per_block)
        if "{up}" in new:  # the upsampler follows the resnet (and the attention, when the block has one)
            block = int(key.split(".")[1])
            new = new.replace("{up}", "2" if hasattr(unet.up_blocks[block], "attentions") else "1")
        checkpoint["model.diffusion_model." + new] = value
    vae = AutoencoderKL.from_pretrained(str(sd_folder / "vae"))
    num_blocks = len(vae.config.block_out_channels)
    for key, value in vae.state_dict().items():
        new = _vae_key_to_ldm(key, num_blocks)
        if ".mid.attn_1." in new and new.endswith("weight") and value.ndim == 2:
            value = value[:, :, None, None]  # LDM's attention projections are 1x1 convolutions
        checkpoint["first_stage_model." + new] = value
    text = CLIPTextModel.from_pretrained(str(sd_folder / "text_encoder"))
    for key, value in text.state_dict().items():
        # LDM keeps transformers' old nesting (text_model.*), which transformers >= 5.6 flattened away.
        key = key if key.startswith("text_model.") else "text_model." + key
        checkpoint["cond_stage_model.transformer." + key] = value
    if path.suffix == ".safetensors":
        save_safetensors_atomic(checkpoint, path)
    else:
        with atomic_path(path) as tmp:
            torch.save({"state_dict": {k: v.contiguous() for k, v in checkpoint.items()}}, tmp)
    return path


class FakeAccelerator:
    """One process, no wrapping: what vidiff.training.checkpoints.save_checkpoint needs of accelerate (tests)."""
    is_main_process, process_index, num_processes, step, scaler = True, 0, 1, 0, None

    def wait_for_everyone(self):
        pass

    def unwrap_model(self, model):
        return model
