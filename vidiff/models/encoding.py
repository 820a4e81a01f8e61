"""The frozen encoders, each behind one function: prompts -> CLIP embeddings, pixels -> scaled VAE latents.

Sampling (`VideoPipeline.encode_prompt` / `encode_video`), the latent cache (`vidiff data cache`), training
and editing all encode through these two functions, so a model trained from a cache and a model trained on
videos see the same numbers, and sampling conditions on what training conditioned on.

References: Rombach et al. 2022 (latent diffusion: the VAE's latents times a scaling factor, 0.18215 for SD 1.x,
so they have about unit variance); Radford et al. 2021 (CLIP; SD conditions on the text encoder's last hidden
state of the prompt padded to 77 tokens).
"""
from __future__ import annotations

import warnings

import torch
from einops import rearrange

EXPANSIONS = "vidiff_token_expansions"   # tokenizer attribute: a multi-vector word -> its tokens in the prompt


def expand_prompt(tokenizer, prompt: str) -> str:
    """`prompt` with each multi-vector textual-inversion word (`vidiff.adapters.embeddings.load_embedding`)
    written as all of its tokens, as A1111 does."""
    expansions = getattr(tokenizer, EXPANSIONS, None)
    if not expansions:
        return prompt
    return " ".join(expansions.get(word, word) for word in prompt.split(" "))


@torch.no_grad()
def encode_text(text_encoder, tokenizer, prompts: list[str], device=None) -> torch.Tensor:
    """CLIP text encoder's last hidden state for each prompt, `(b, L, D)`, in the encoder's dtype.

    Prompts are padded to the tokenizer's `model_max_length` (77 for CLIP), as Stable Diffusion was trained.
    Longer prompts are cut there, with a warning naming the words that were dropped (a silent cut is a prompt
    the user thinks the model saw). `device`: where the encoder runs (default: the encoder's device).
    """
    if isinstance(prompts, str):
        prompts = [prompts]
    prompts = [expand_prompt(tokenizer, p) for p in prompts]
    max_length = tokenizer.model_max_length
    for prompt in prompts:
        full = tokenizer(prompt, truncation=False, verbose=False)["input_ids"]
        if len(full) > max_length:
            # The kept ids are the first max_length - 1 plus the end token: decode what fell off.
            dropped = tokenizer.decode(full[max_length - 1:-1])
            warnings.warn(f"prompt is longer than the text encoder's {max_length} tokens; dropped: {dropped!r}",
                          stacklevel=3)
    ids = tokenizer(list(prompts), padding="max_length", max_length=max_length, truncation=True,
                    return_tensors="pt")["input_ids"]
    return text_encoder(ids.to(device if device is not None else text_encoder.device))[0]


@torch.no_grad()
def encode_video(vae, pixels: torch.Tensor, *, scaling_factor: float, chunk_size: int | None = 8) -> torch.Tensor:
    """Pixels `(b, 3, f, h, w)` in [-1, 1] -> scaled latents `(b, c, f, h / k, w / k)` (k: the VAE's factor),
    in the VAE's dtype on its device. Pixel-space models (`vae` None) return `pixels` unchanged.

    The latent is the posterior MEAN times `scaling_factor`, never a sample. Training, the latent cache and
    editing all take it, for three reasons: it is deterministic, so a cached latent is exactly the latent
    training on the video would have seen (a sample would make the cache one fixed draw while live training
    draws anew each step); it costs no random numbers, so resumed training stays exact whatever the data
    source; and SD's VAE was trained with a tiny KL weight (1e-6 in the LDM configs), so its posterior is
    narrow and a sample adds next to nothing as augmentation.

    SD's VAE encodes each frame independently, so frames are encoded `chunk_size` at a time (None: all at once)
    to bound memory without changing the result.
    """
    if vae is None:
        return pixels
    if pixels.ndim != 5 or pixels.shape[1] != 3:
        raise ValueError(f"pixels must have shape (b, 3, f, h, w), got {tuple(pixels.shape)}")
    if chunk_size is not None and chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1 or None, got {chunk_size}")
    b = pixels.shape[0]
    frames = rearrange(pixels, "b c f h w -> (b f) c h w").to(vae.device, vae.dtype)
    chunks = frames.split(chunk_size or frames.shape[0])
    latents = torch.cat([vae.encode(chunk).latent_dist.mean for chunk in chunks]) * scaling_factor
    return rearrange(latents, "(b f) c h w -> b c f h w", b=b)
