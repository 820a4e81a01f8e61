"""What each training stage feeds the U-Net, and the diffusion objective they share.

A stage turns a batch of clean latents into the U-Net's input: the noisy latents, plus (for cascade stages)
a condition concatenated along channels, derived on the fly from the same video. The trainer never branches
on the stage; it calls `stage.loss(...)`.

    base           noisy latents                                  (text-to-video)
    interpolation  + masked video latents + mask                  (Make-A-Video)          not yet
    tsr            + the low-fps video repeated along time        (Imagen Video TSR)      not yet
    ssr            + the low-res video upsampled, noise-augmented (Imagen / SD x4)        not yet

References: DDPM (Ho et al. 2020) epsilon objective; v-prediction (Salimans & Ho 2022); min-SNR-gamma
weighting (Hang et al. 2023); offset noise (Guttenberg 2023).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

STAGE_NAMES = ("base", "interpolation", "tsr", "ssr")


class Stage:
    """The base (text-to-video) stage; cascade stages subclass it and override `condition`."""

    name = "base"
    conditioning_channels = 0  # extra U-Net input channels this stage concatenates to the noisy latents

    def __init__(self, *, prediction_type: str = "epsilon", snr_gamma: float | None = None,
                 noise_offset: float = 0.0):
        if prediction_type not in ("epsilon", "v_prediction"):
            raise ValueError(f"prediction_type must be 'epsilon' or 'v_prediction', got {prediction_type!r} "
                             "(set train.prediction_type or the scheduler config's prediction_type)")
        self.prediction_type = prediction_type
        self.snr_gamma = snr_gamma
        self.noise_offset = noise_offset

    # -------------------------------------------------------------------------------- stage-specific parts
    def condition(self, latents: torch.Tensor) -> torch.Tensor | None:
        """The condition concatenated to the noisy latents along channels, `(b, conditioning_channels, f, h,
        w)`, derived from the clean `latents` `(b, c, f, h, w)`; None for the base stage."""
        return None

    def is_trainable_extra(self, name: str) -> bool:
        """U-Net parameters this stage must train whatever `train.trainable` says (a cascade stage's widened
        `conv_in`, whose zero-initialised condition channels would otherwise never learn)."""
        return False

    def unet_kwargs(self, latents: torch.Tensor) -> dict:
        """Extra keyword arguments of the U-Net call (the SSR stage's noise level as `class_labels`)."""
        return {}

    # -------------------------------------------------------------------------------- shared objective
    def loss(self, unet, scheduler, latents: torch.Tensor, encoder_hidden_states: torch.Tensor,
             *, generator: torch.Generator | None = None) -> torch.Tensor:
        """Diffusion loss for clean `latents` `(b, c, f, h, w)` and text embeddings `(b, L, D)`; a scalar.

        `scheduler` is a diffusers DDPM-family scheduler (its `alphas_cumprod`, `add_noise`, `get_velocity`).
        Noise and timesteps come from `generator` (or the global RNG).
        """
        b = latents.shape[0]
        noise = torch.randn(latents.shape, generator=generator, device=latents.device, dtype=latents.dtype)
        if self.noise_offset:
            # Offset noise: a per-video, per-channel constant shift lets the model change mean brightness.
            noise = noise + self.noise_offset * torch.randn((b, latents.shape[1], 1, 1, 1), generator=generator,
                                                            device=latents.device, dtype=latents.dtype)
        num_train_timesteps = scheduler.config.num_train_timesteps
        timesteps = torch.randint(0, num_train_timesteps, (b,), generator=generator, device=latents.device)
        noisy = scheduler.add_noise(latents, noise, timesteps)

        if self.prediction_type == "epsilon":
            target = noise
        else:
            target = scheduler.get_velocity(latents, noise, timesteps)

        model_input = noisy
        cond = self.condition(latents)
        if cond is not None:
            model_input = torch.cat([noisy, cond.to(noisy.dtype)], dim=1)  # (b, c + cond, f, h, w)
        pred = unet(model_input, timesteps, encoder_hidden_states, **self.unet_kwargs(latents))

        # Per-video mean squared error, then the min-SNR-gamma weights (uniform when snr_gamma is None).
        per_video = F.mse_loss(pred.float(), target.float(), reduction="none").mean(dim=(1, 2, 3, 4))
        if self.snr_gamma is not None:
            per_video = per_video * min_snr_weights(scheduler, timesteps, self.snr_gamma, self.prediction_type)
        return per_video.mean()


def min_snr_weights(scheduler, timesteps: torch.Tensor, gamma: float, prediction_type: str) -> torch.Tensor:
    """Min-SNR-gamma loss weights (Hang et al. 2023): min(SNR, gamma) / SNR for epsilon targets and
    min(SNR, gamma) / (SNR + 1) for v targets, SNR = alpha_bar / (1 - alpha_bar)."""
    alphas_cumprod = scheduler.alphas_cumprod.to(device=timesteps.device, dtype=torch.float32)[timesteps]
    snr = alphas_cumprod / (1.0 - alphas_cumprod)
    clipped = torch.clamp(snr, max=gamma)
    return clipped / snr if prediction_type == "epsilon" else clipped / (snr + 1.0)


STAGES = {"base": Stage}


def make_stage(name: str, **options) -> Stage:
    """The stage called `name` ("base"; "interpolation", "tsr", "ssr" are planned)."""
    if name in STAGES:
        return STAGES[name](**options)
    if name in STAGE_NAMES:
        raise ValueError(f"train.stage={name!r} is not implemented yet; only 'base' can be trained for now")
    raise ValueError(f"unknown train.stage {name!r}; choose from {', '.join(STAGE_NAMES)}")
