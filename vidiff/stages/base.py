"""The base stage: what every stage shares, the diffusion objective, and what a stage folder can do.

A stage turns a batch of clean latents into the U-Net's input: the noisy latents, plus (for cascade stages)
a condition concatenated along channels, derived on the fly from the same video. The trainer never branches
on the stage; it calls `stage.loss(...)`. Sampling asks the same object what a folder of the stage accepts
(`factors`, `output_size`, `check_noise_level`) and runs it on a video (`run`, `extend`).

References: DDPM (Ho et al. 2020) epsilon objective; v-prediction (Salimans & Ho 2022); min-SNR-gamma
weighting (Hang et al. 2023); offset noise (Guttenberg 2023).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from vidiff.spec import SettingError

class Stage:
    """The base (text-to-video) stage; cascade stages subclass it and override `condition` and the sampling side."""

    name = "base"
    config_fields: tuple[str, ...] = ()   # the training config's `stage.*` fields this stage takes
    sampling_keys: tuple[str, ...] = ()   # a cascade YAML entry's stage settings: factor, noise_level
    command: str | None = None            # the `vidiff` command that runs a folder of this stage on a video
    takes_video = False                   # a cascade stage works on a video; the base makes one from text

    def __init__(self, *, latent_channels: int = 4, prediction_type: str = "epsilon",
                 snr_gamma: float | None = None, noise_offset: float = 0.0, noisy_fraction: float = 0.0,
                 noisy_from: float = 0.75, **options):
        if options:  # subclasses take their own options and pass the rest here
            raise ValueError(f"the {self.name} stage takes no option(s) {', '.join(sorted(options))}")
        if prediction_type not in ("epsilon", "v_prediction"):
            raise ValueError(f"prediction_type must be 'epsilon' or 'v_prediction', got {prediction_type!r} "
                             "(set train.prediction_type or the scheduler config's prediction_type)")
        self.latent_channels = latent_channels
        # Extra U-Net input channels this stage concatenates to the noisy latents: per instance, since a
        # cascade stage's count follows the latent channels (subclasses set it after this __init__).
        self.conditioning_channels = 0
        self.prediction_type = prediction_type
        self.snr_gamma = snr_gamma
        self.noise_offset = noise_offset
        if not 0.0 <= noisy_fraction <= 1.0:
            raise ValueError(f"noisy_fraction must be in [0, 1], got {noisy_fraction!r}")
        if not 0.0 <= noisy_from < 1.0:
            raise ValueError(f"noisy_from must be in [0, 1), got {noisy_from!r}")
        # this share of each batch draws its timestep from the noisiest part of the schedule (from `noisy_from`
        # of it on: 0.75, the noisiest quarter), where a clip's layout (and a video's motion) is still open and
        # only the caption can say what it should be
        self.noisy_fraction = noisy_fraction
        self.noisy_from = noisy_from

    # -------------------------------------------------------------------------------- stage-specific parts
    def condition(self, latents: torch.Tensor, generator: torch.Generator | None = None):
        """`(cond, unet_kwargs)`: the condition concatenated to the noisy latents along channels, `(b,
        conditioning_channels, f, h, w)`, derived from the clean `latents` `(b, c, f, h, w)` (None for the base
        stage), and extra U-Net keyword arguments (the SSR stage's noise level as `class_labels`). All
        randomness comes from `generator`."""
        return None, {}

    def options(self) -> dict:
        """The stage's settings as recorded in vidiff.json's `stage_options` (the base stage has none)."""
        return {}

    def check_clip(self, num_frames: int) -> None:
        """Training clips of `num_frames` frames suit the stage (ValueError naming data.num_frames otherwise)."""

    def is_trainable_extra(self, name: str) -> bool:
        """U-Net parameters this stage must train whatever `train.trainable` says (a cascade stage's widened
        `conv_in`, whose zero-initialised condition channels would otherwise never learn)."""
        return False

    # -------------------------------------------------------------------------------- sampling side
    # What a pipeline folder of this stage accepts, checked on its vidiff.json (vidiff.spec.PipelineInfo)
    # before anything loads; the base stage takes no video.
    def factors(self) -> list[int]:
        """The frame-rate (interpolation, tsr) or size (ssr) factors the stage supports."""
        return []

    def check_factor(self, factor: int | None, where: str) -> int:
        """`factor` if the stage supports it (None: its first); ValueError naming the supported ones."""
        supported = self.factors()
        if not supported:
            raise ValueError(f"{where} is a {self.name!r} model, not a cascade stage (interpolation, tsr or ssr)")
        if factor is None:
            return supported[0]
        if isinstance(factor, bool) or not isinstance(factor, int) or factor not in supported:
            raise SettingError("factor", f"{factor!r} is not supported by {where} (a {self.name} stage trained for "
                             f"x{', x'.join(map(str, supported))}); use one of those")
        return factor

    def frame_rate_factor(self, factor: int | None = None) -> int:
        """Output fps / input fps."""
        return 1

    def chunk_overlap(self) -> int:
        """Input frames that consecutive chunks of a long clip share when it is run chunk by chunk (an
        interpolation stage's keyframe, whose output frame is written once)."""
        return 0

    def output_size(self, info, size: tuple[int, int, int], factor: int | None = None,
                    where: str = "the stage") -> tuple[int, int, int]:
        """(frames, height, width) the stage makes from an input of `size`; ValueError when it does not fit."""
        raise ValueError(f"{where} is a {self.name!r} model, not a cascade stage (interpolation, tsr or ssr)")

    def has_start_estimate(self) -> bool:
        """Whether the stage makes a plain estimate of its output from its input, which `strength` < 1 starts
        from (a base model has no input)."""
        return False

    def start_estimate(self, latents: torch.Tensor, condition: torch.Tensor) -> torch.Tensor:
        """That estimate for a training clip `latents` from its `condition` (this stage's `condition()`), as
        sampling makes it from the stage's input: what a student for `strength` < 1 learns to start from."""
        raise ValueError(f"a {self.name!r} model makes no estimate of its output to start from")

    def check_noise_level(self, noise_level, where: str) -> int:
        raise ValueError(f"a noise level applies to ssr stages, but {where} is a {self.name!r} model")

    def sidecar(self, factor: int | None = None, noise_level: int | None = None, where: str = "") -> dict:
        """The stage settings a clip's JSON sidecar records."""
        return {}

    def run(self, pipe, video: torch.Tensor, prompts: list[str], *, generators, settings: dict, factor=None,
            noise_level=None, **draws) -> torch.Tensor:
        """The stage on `video` `(b, 3, n, h, w)` in [-1, 1]: `(b, 3, frames, H, W)` in [-1, 1]."""
        raise ValueError(f"this model is a {self.name!r} model, which makes clips from text; running it on a video "
                         "needs an interpolation, tsr or ssr stage")

    def check_extension(self, info, frames: int, num_frames: int, context_frames: int | None,
                        new_per_chunk: int | None = 1) -> int:
        """The context length of `extend`, after checking the stage can extend (torch-free)."""
        raise ValueError(f"extension needs an interpolation stage trained with future-prediction masks "
                         f"(stage.mask_modes with 'future'); this is a {self.name!r} model")

    def input_size(self, info) -> tuple[int, int] | None:
        """(height, width) of the inputs a folder of this stage was made for (None: the base takes no video).
        Sampling runs at any size the U-Net takes; another size is outside what the stage learned."""
        return None

    def window(self, info) -> int:
        """The stage's sampling window: the clip length it was trained on."""
        return int(info.defaults.num_frames)

    # -------------------------------------------------------------------------------- shared objective
    def loss(self, unet, scheduler, latents: torch.Tensor, encoder_hidden_states: torch.Tensor,
             *, generator: torch.Generator | None = None, extra: dict | None = None) -> torch.Tensor:
        """Diffusion loss for clean `latents` `(b, c, f, h, w)` and text embeddings `(b, L, D)`; a scalar.

        `scheduler` is a diffusers DDPM-family scheduler (its `alphas_cumprod`, `add_noise`, `get_velocity`).
        Noise and timesteps come from `generator` (or the global RNG). `extra`: more U-Net keyword arguments of
        this batch (a ControlNet run's `control_images`).
        """
        b = latents.shape[0]
        noise = torch.randn(latents.shape, generator=generator, device=latents.device, dtype=latents.dtype)
        if self.noise_offset:
            # Offset noise: a per-video, per-channel constant shift lets the model change mean brightness.
            noise = noise + self.noise_offset * torch.randn((b, latents.shape[1], 1, 1, 1), generator=generator,
                                                            device=latents.device, dtype=latents.dtype)
        num_train_timesteps = scheduler.config.num_train_timesteps
        timesteps = torch.randint(0, num_train_timesteps, (b,), generator=generator, device=latents.device)
        if self.noisy_fraction:
            noisy = torch.randint(round(num_train_timesteps * self.noisy_from), num_train_timesteps, (b,),
                                  generator=generator, device=latents.device)
            pick = torch.rand(b, generator=generator, device=latents.device) < self.noisy_fraction
            timesteps = torch.where(pick, noisy, timesteps)
        noisy = scheduler.add_noise(latents, noise, timesteps)

        if self.prediction_type == "epsilon":
            target = noise
        else:
            target = scheduler.get_velocity(latents, noise, timesteps)

        model_input = noisy
        cond, unet_kwargs = self.condition(latents, generator)
        if cond is not None:
            model_input = torch.cat([noisy, cond.to(noisy.dtype)], dim=1)  # (b, c + cond, f, h, w)
        pred = unet(model_input, timesteps, encoder_hidden_states, **unet_kwargs, **(extra or {}))

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
