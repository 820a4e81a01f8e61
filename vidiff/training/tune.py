"""Tune-A-Video (Wu et al. 2023): one-shot tuning of a video pipeline on the clip it will edit, then the edit.

The U-Net's temporal layers and spatial attention query projections (`trainable="temporal+attn-q"`) are fitted
to the one clip with its source prompt under sparse-causal cross-frame attention, so the model learns this clip's
motion while keeping the image model's appearance knowledge; the tuned model is then inverted and sampled with
each target prompt (vidiff.pipelines.editing.edit_video, method "tune"). The tuning is the trainer's `fit`.
"""
from __future__ import annotations

import torch
from diffusers import DDPMScheduler

from vidiff.pipelines.editing import EditResult, _timed, edit_video
from vidiff.spec import check_setting
from vidiff.stages import stage_for
from vidiff.training.trainer import fit


@torch.no_grad()
def reconstruction_loss(pipe, latents: torch.Tensor, embeddings: torch.Tensor, *, seed: int = 0,
                        num_draws: int = 8) -> float:
    """The diffusion loss on the clip averaged over `num_draws` fixed (noise, timestep) draws from `seed`: the
    same draws before and after tuning, so the two numbers compare (what `tune_on_clip` lowers)."""
    stage, schedule = stage_for(pipe.info), DDPMScheduler.from_config(pipe.scheduler_config)
    latents = latents.to(pipe.device, pipe.dtype)
    embeddings = embeddings.to(pipe.device, pipe.dtype)
    generator = torch.Generator(pipe.device).manual_seed(seed)
    losses = [float(stage.loss(pipe.unet, schedule, latents, embeddings, generator=generator))
              for _ in range(num_draws)]
    return sum(losses) / len(losses)


def tune_on_clip(pipe, latents: torch.Tensor, embeddings: torch.Tensor, *, steps: int, learning_rate: float,
                 seed: int = 0, accelerator=None, progress: bool = True) -> list[float]:
    """Fit `pipe.unet` in place to the one clip `latents` `(1, c, f, h, w)` with its source prompt's
    `embeddings` (`fit`: accelerate, AdamW, progress bar), under sparse-causal attention; the U-Net's own
    cross-frame mode is restored afterwards. Returns the losses."""
    check_setting("tune_steps", steps)
    check_setting("tune_learning_rate", learning_rate)
    batch = {"latents": latents.to(pipe.device, pipe.dtype),
             "encoder_hidden_states": embeddings.to(pipe.device, pipe.dtype)}
    generator = torch.Generator(pipe.device).manual_seed(seed)
    with torch.enable_grad(), pipe.temporary_cross_frame("sparse-causal"):
        return fit(pipe.unet, stage_for(pipe.info), batch, steps=steps, learning_rate=learning_rate,
                   noise_scheduler=DDPMScheduler.from_config(pipe.scheduler_config), trainable="temporal+attn-q",
                   accelerator=accelerator, generator=generator, progress=progress)


def tune_and_edit(pipe, frames, prompts, *, tune_steps: int, tune_lr: float = 3e-5, source_prompt: str = "",
                  seed: int = 0, accelerator=None, cache_key: dict | None = None, progress: bool = True,
                  **edit_options) -> EditResult:
    """Tune-A-Video: tune `pipe` on the clip `frames` for `tune_steps` steps at `tune_lr` (its reconstruction
    loss measured before and after on the same draws), then `edit_video(method="tune")` with `edit_options`
    (cross_frame, num_inference_steps, guidance_scale, negative_prompt, strength, cache)."""
    check_setting("tune_steps", tune_steps)
    check_setting("tune_learning_rate", tune_lr)
    timings: dict[str, float] = {}
    with _timed(timings, "encode"):
        latents = pipe.encode_video(frames)                                                  # (1, c, f, h', w')
        source = pipe.encode_prompt([source_prompt])
    with pipe.temporary_cross_frame("sparse-causal"):
        with _timed(timings, "tune_loss"):
            before = reconstruction_loss(pipe, latents, source, seed=seed)
        with _timed(timings, "tune"):
            losses = tune_on_clip(pipe, latents, source, steps=tune_steps, learning_rate=tune_lr, seed=seed,
                                  accelerator=accelerator, progress=progress)
        with _timed(timings, "tune_loss"):
            after = reconstruction_loss(pipe, latents, source, seed=seed)
    key = dict(cache_key or {}, tune_steps=tune_steps, tune_lr=tune_lr)
    result = edit_video(pipe, frames, prompts, source_prompt=source_prompt, method="tune", seed=seed,
                        cache_key=key, latents=latents, progress=progress, **edit_options)
    result.tune_losses, result.reconstruction_loss = losses, (before, after)
    result.timings = {k: timings.get(k, 0.0) + result.timings.get(k, 0.0) for k in {*timings, *result.timings}}
    return result
