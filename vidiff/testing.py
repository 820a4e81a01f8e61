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
(`vidiff.pipelines.folder.inflate_pipeline`), ready for `VideoPipeline.from_pretrained` / `vidiff generate`.
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

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
    from transformers import CLIPTokenizer

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
    import torch
    from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    path = Path(path)
    if path.exists():
        shutil.rmtree(path)
    path.mkdir(parents=True)

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
    from vidiff.pipelines.folder import inflate_pipeline

    path = Path(path)
    defaults = {"num_frames": 4, "height": 16, "width": 16, "num_inference_steps": 4, "fps": 8}
    defaults.update(inflate_options.pop("defaults", None) or {})
    with tempfile.TemporaryDirectory(dir=path.parent if path.parent.exists() else None) as tmp:
        base = make_tiny_sd_pipeline(Path(tmp) / "sd", seed, unet_kwargs=unet_kwargs, vae=vae)
        inflate_pipeline(base, path, defaults=defaults, **inflate_options)
    return path


def _diffusers_version() -> str:
    import diffusers

    return diffusers.__version__
