"""What each training stage feeds the U-Net, and the diffusion objective they share.

A stage turns a batch of clean latents into the U-Net's input: the noisy latents, plus (for cascade stages)
a condition concatenated along channels, derived on the fly from the same video. The trainer never branches
on the stage; it calls `stage.loss(...)`.

    base           noisy latents                                  (text-to-video)
    interpolation  + masked video latents + mask                  (Make-A-Video, MCVD masks)
    tsr            + the low-fps video repeated along time        (Imagen Video TSR)
    ssr            + the low-res video upsampled, noise-augmented (Imagen / SD x4 upscaler)

References: DDPM (Ho et al. 2020) epsilon objective; v-prediction (Salimans & Ho 2022); min-SNR-gamma
weighting (Hang et al. 2023); offset noise (Guttenberg 2023); Singer et al. 2022 (Make-A-Video); Voleti et al. 2022 (MCVD); Ho et al. 2022
(Imagen Video; cascaded diffusion and noise conditioning augmentation); Saharia et al. 2022 (Imagen).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from einops import rearrange

from vidiff.spec import STAGE_NAMES  # noqa: F401  (re-exported: the names are defined once, torch-free)


class Stage:
    """The base (text-to-video) stage; cascade stages subclass it and override `condition`."""

    name = "base"

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

    def is_trainable_extra(self, name: str) -> bool:
        """U-Net parameters this stage must train whatever `train.trainable` says (a cascade stage's widened
        `conv_in`, whose zero-initialised condition channels would otherwise never learn)."""
        return False

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
        pred = unet(model_input, timesteps, encoder_hidden_states, **unet_kwargs)

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


# ---------------------------------------------------------------------------------------------------------------
# cascade stages: condition builders (pure functions, shared with sampling in vidiff.pipelines.cascade)
# ---------------------------------------------------------------------------------------------------------------
MASK_MODES = ("interpolate", "future", "past")
SSR_FACTORS = (2, 4)
SSR_CONDITIONS = ("latent", "pixels")
# The noise-augmentation schedule of the SD x4 upscaler's low-res images (its `low_res_scheduler`): LDM's
# "linear" schedule (sqrt-spaced betas 1e-4 -> 2e-2 over 1000 levels, diffusers' "scaled_linear"), with levels up
# to 350 seen in training and 20 its usual sampling level.
AUGMENTATION_SCHEDULE = {"num_train_timesteps": 1000, "beta_start": 0.0001, "beta_end": 0.02,
                         "beta_schedule": "scaled_linear"}
MAX_NOISE_LEVEL = 350
SAMPLING_NOISE_LEVEL = 20


def keyframe_mask(num_frames: int, factor: int, phase: int = 0) -> torch.Tensor:
    """`(f,)` 1.0 at frames phase, phase + factor, ... (the known keyframes of x`factor` interpolation), else 0."""
    index = torch.arange(num_frames)
    return ((index - phase) % factor == 0).float() * (index >= phase).float()


def prefix_mask(num_frames: int, count: int) -> torch.Tensor:
    """`(f,)` 1.0 at the first `count` frames: the known past of future prediction (clip extension)."""
    return (torch.arange(num_frames) < count).float()


def suffix_mask(num_frames: int, count: int) -> torch.Tensor:
    """`(f,)` 1.0 at the last `count` frames: the known future of past prediction."""
    return (torch.arange(num_frames) >= num_frames - count).float()


def sample_frame_masks(batch: int, num_frames: int, *, factors, modes, generator=None) -> torch.Tensor:
    """Random training masks `(b, f)` (1 = known frame), one per video, MCVD-style (Voleti et al. 2022):
    "interpolate" keeps every k-th frame (k drawn from `factors`, at a random phase so any window of a long clip
    looks like training), "future" keeps the first n frames, "past" the last n (n uniform in 1..f-1).
    Four uniforms per video from `generator`, so the masks of a step are a function of its seed."""
    device = generator.device if generator is not None else "cpu"
    draws = torch.rand((batch, 4), generator=generator, device=device).tolist()
    masks = []
    for u_mode, u_factor, u_phase, u_count in draws:
        mode = modes[int(u_mode * len(modes))]
        if mode == "interpolate" or num_frames < 2:
            factor = factors[int(u_factor * len(factors))]
            masks.append(keyframe_mask(num_frames, factor, int(u_phase * min(factor, num_frames))))
        else:
            count = 1 + int(u_count * (num_frames - 1))  # 1 .. f - 1 known frames
            masks.append(prefix_mask(num_frames, count) if mode == "future" else suffix_mask(num_frames, count))
    return torch.stack(masks)


def masked_video_condition(latents: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Make-A-Video's interpolation input: the known frames' latents (zeros elsewhere) and the mask as one more
    channel, `(b, c + 1, f, h, w)` from latents `(b, c, f, h, w)` and a frame mask `(b, f)`."""
    b, _, f, h, w = latents.shape
    m = mask.to(latents.device, latents.dtype)[:, None, :, None, None]   # (b, 1, f, 1, 1)
    return torch.cat([latents * m, m.expand(b, 1, f, h, w)], dim=1)


def repeat_frames(low: torch.Tensor, factor: int, num_frames: int | None = None) -> torch.Tensor:
    """Imagen Video's TSR condition: each frame of the low-frame-rate video `(b, c, n, h, w)` repeated `factor`
    times along time, `(b, c, n * factor, h, w)` (cut to `num_frames` when given)."""
    return low.repeat_interleave(factor, dim=2)[:, :, :num_frames]


def tsr_condition(latents: torch.Tensor, factor: int) -> torch.Tensor:
    """Training condition of the TSR stage: frames 0, k, 2k, ... of the clip, repeated k times `(b, c, f, h, w)`."""
    return repeat_frames(latents[:, :, ::factor], factor, latents.shape[2])


def spatial_downsample(video: torch.Tensor, factor: int) -> torch.Tensor:
    """`(b, c, f, h, w)` -> `(b, c, f, h / factor, w / factor)` by area averaging (an anti-aliased reduction)."""
    b = video.shape[0]
    frames = rearrange(video, "b c f h w -> (b f) c h w")
    return rearrange(F.avg_pool2d(frames, factor), "(b f) c h w -> b c f h w", b=b)


def spatial_upsample(video: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """`(b, c, f, h, w)` resized to `size` = (H, W) per frame, bilinear (the "upsampled low-res video")."""
    b = video.shape[0]
    frames = rearrange(video, "b c f h w -> (b f) c h w")
    frames = F.interpolate(frames.float(), size=tuple(size), mode="bilinear", align_corners=False).to(video.dtype)
    return rearrange(frames, "(b f) c h w -> b c f h w", b=b)


def ssr_condition(video: torch.Tensor, factor: int) -> torch.Tensor:
    """The SSR stage's clean condition at the target size: `video` reduced by `factor` and upsampled back
    (what the stage sees of a high-resolution clip: its low-resolution version, at full size)."""
    b, c, f, h, w = video.shape
    if h % factor or w % factor:
        raise ValueError(f"an SSR x{factor} stage needs sizes divisible by {factor}, got {h} x {w}")
    return spatial_upsample(spatial_downsample(video, factor), (h, w))


def augmentation_alphas(schedule: dict | None = None) -> torch.Tensor:
    """alpha_bar per noise level of the condition's noise-augmentation schedule (diffusers DDPM arithmetic)."""
    from diffusers import DDPMScheduler

    return DDPMScheduler(**(schedule or AUGMENTATION_SCHEDULE)).alphas_cumprod.to(torch.float32)


def noise_augment(cond: torch.Tensor, levels: torch.Tensor, alphas_cumprod: torch.Tensor,
                  noise: torch.Tensor) -> torch.Tensor:
    """Noise conditioning augmentation (Imagen; Ho et al. 2022 cascades; SD x4 upscaler): the condition diffused
    to level L, sqrt(alpha_bar_L) cond + sqrt(1 - alpha_bar_L) noise, per video (`levels` `(b,)` integers)."""
    alpha_bar = alphas_cumprod.to(cond.device)[levels.to(cond.device).long()].view(-1, 1, 1, 1, 1)
    return (alpha_bar.sqrt() * cond.float() + (1 - alpha_bar).sqrt() * noise.float()).to(cond.dtype)


# ---------------------------------------------------------------------------------------------------------------
# cascade stages
# ---------------------------------------------------------------------------------------------------------------
def _check_choice(name: str, value, choices) -> None:
    if value not in choices:
        raise ValueError(f"{name} must be one of {', '.join(map(str, choices))}, got {value!r}")


class _CascadeStage(Stage):
    """A stage whose condition enters through extra zero-initialised `conv_in` channels (and, for SSR, a class
    embedding): those must train whatever `train.trainable` says, or the condition would never be used."""

    trainable_extra = ("conv_in.weight",)

    def is_trainable_extra(self, name: str) -> bool:
        return name.startswith(self.trainable_extra)

    def options(self) -> dict:
        """The stage's settings as recorded in vidiff.json's `stage_options`."""
        return {}


class InterpolationStage(_CascadeStage):
    """Make-A-Video masked frame interpolation (Singer et al. 2022) with MCVD masking (Voleti et al. 2022):
    input = noisy latents + masked video latents + mask; the same model interpolates and extends clips."""

    name = "interpolation"

    def __init__(self, *, mask_factors=(2, 4), mask_modes=MASK_MODES, **base):
        super().__init__(**base)
        mask_factors, mask_modes = [int(k) for k in mask_factors], list(mask_modes)
        if not mask_factors or any(k < 2 for k in mask_factors):
            raise ValueError(f"stage.mask_factors must be a non-empty list of factors >= 2, got {mask_factors}")
        if not mask_modes:
            raise ValueError(f"stage.mask_modes must not be empty; choose from {', '.join(MASK_MODES)}")
        for mode in mask_modes:
            _check_choice("stage.mask_modes entries", mode, MASK_MODES)
        self.mask_factors, self.mask_modes = mask_factors, mask_modes
        self.conditioning_channels = self.latent_channels + 1

    def condition(self, latents, generator=None):
        masks = sample_frame_masks(latents.shape[0], latents.shape[2], factors=self.mask_factors,
                                   modes=self.mask_modes, generator=generator)
        return masked_video_condition(latents, masks), {}

    def options(self) -> dict:
        return {"mask_factors": self.mask_factors, "mask_modes": self.mask_modes}


class TSRStage(_CascadeStage):
    """Imagen Video temporal super-resolution (Ho et al. 2022): input = noisy latents + the low-frame-rate video
    (every `factor`-th frame) repeated along time."""

    name = "tsr"

    def __init__(self, *, factor: int = 2, **base):
        super().__init__(**base)
        if int(factor) < 2:
            raise ValueError(f"stage.factor of a tsr stage must be >= 2, got {factor}")
        self.factor = int(factor)
        self.conditioning_channels = self.latent_channels

    def condition(self, latents, generator=None):
        if latents.shape[2] % self.factor:
            raise ValueError(f"a tsr x{self.factor} stage trains on clips whose length is a multiple of "
                             f"{self.factor}, got {latents.shape[2]} frames; set data.num_frames accordingly")
        return tsr_condition(latents, self.factor), {}

    def options(self) -> dict:
        return {"factor": self.factor}


class SSRStage(_CascadeStage):
    """Spatial super-resolution x2 / x4 (Imagen; SD x4 upscaler): input = noisy latents + the low-resolution
    video upsampled to the target size, noise-augmented to a random level that the U-Net sees as `class_labels`."""

    name = "ssr"
    trainable_extra = ("conv_in.weight", "class_embedding.")

    def __init__(self, *, factor: int = 2, max_noise_level: int = MAX_NOISE_LEVEL,
                 augmentation_schedule: dict | None = None, condition: str = "latent", **base):
        super().__init__(**base)
        _check_choice("stage.factor of an ssr stage", int(factor), SSR_FACTORS)
        _check_choice("the ssr condition", condition, SSR_CONDITIONS)
        self.augmentation_schedule = dict(augmentation_schedule or AUGMENTATION_SCHEDULE)
        levels = int(self.augmentation_schedule["num_train_timesteps"])
        if not 0 <= int(max_noise_level) < levels:
            raise ValueError(f"stage.max_noise_level must be in [0, {levels - 1}], got {max_noise_level}")
        self.factor, self.max_noise_level, self.condition_space = int(factor), int(max_noise_level), condition
        self.conditioning_channels = self.latent_channels if condition == "latent" else 3
        self.alphas_cumprod = augmentation_alphas(self.augmentation_schedule)

    def condition(self, latents, generator=None):
        if self.condition_space == "pixels":
            raise ValueError("this ssr stage (from an SD x4 upscaler) is conditioned on low-res pixels, which "
                             "training from latents cannot supply; train an ssr stage inflated from an SD base")
        device = generator.device if generator is not None else latents.device
        clean = ssr_condition(latents, self.factor)
        levels = torch.randint(0, self.max_noise_level + 1, (latents.shape[0],), generator=generator, device=device)
        noise = torch.randn(clean.shape, generator=generator, device=device, dtype=clean.dtype).to(latents.device)
        levels = levels.to(latents.device)
        return noise_augment(clean, levels, self.alphas_cumprod, noise), {"class_labels": levels}

    def options(self) -> dict:
        return {"factor": self.factor, "max_noise_level": self.max_noise_level, "condition": self.condition_space,
                "augmentation_schedule": self.augmentation_schedule}


STAGES = {"base": Stage, "interpolation": InterpolationStage, "tsr": TSRStage, "ssr": SSRStage}


# Which `stage:` config fields each stage takes (the others must stay null).
STAGE_CONFIG_FIELDS = {"base": (), "interpolation": ("mask_factors", "mask_modes"), "tsr": ("factor",),
                       "ssr": ("factor", "max_noise_level")}


def stage_options(name: str, saved: dict | None, requested: dict) -> dict:
    """Options of `make_stage(name, ...)` for training: the model folder's `stage_options` (vidiff.json), with
    the config's non-null `stage.*` fields on top. A field set for another stage is an error."""
    if name not in STAGES:
        raise ValueError(f"unknown train.stage {name!r}; choose from {', '.join(STAGE_NAMES)}")
    allowed = STAGE_CONFIG_FIELDS[name]
    for key, value in requested.items():
        if value is not None and key not in allowed:
            users = [stage for stage, fields in STAGE_CONFIG_FIELDS.items() if key in fields]
            raise ValueError(f"stage.{key}={value!r} applies to the {' / '.join(users)} stage, not to "
                             f"train.stage={name!r}; remove it")
    import inspect

    accepted = set(inspect.signature(STAGES[name].__init__).parameters) - {"self", "base", "options"}
    options = {k: v for k, v in (saved or {}).items() if k in accepted}
    options.update({k: v for k, v in requested.items() if v is not None and k in allowed})
    return options


def make_stage(name: str, **options) -> Stage:
    """The stage called `name` ("base", "interpolation", "tsr", "ssr") with its options."""
    if name not in STAGES:
        raise ValueError(f"unknown train.stage {name!r}; choose from {', '.join(STAGE_NAMES)}")
    return STAGES[name](**options)
