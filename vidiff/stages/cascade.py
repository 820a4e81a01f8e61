"""The cascade stages, each in one place: what it feeds the U-Net in training, which options it takes, what a
folder of it accepts, and how it runs on a video when sampling.

    interpolation  + masked video latents + mask; keyframes -> (n - 1) k + 1 frames; extends   (Make-A-Video, MCVD)
    tsr            + the low-fps video repeated along time; n -> n k frames                  (Imagen Video TSR)
    ssr            + the low-res video upsampled, noise-augmented; h x w -> kh x kw         (Imagen, SD x4 upscaler)

Sampling reuses the functions training uses (vidiff.stages.conditions) and the pipeline's shared loop: a stage
gets the pipeline (`encode_video`, `decode`, `__call__` with `condition=`), the video as a tensor and one
generator per video, so this module imports nothing from vidiff.pipelines.

References: Singer et al. 2022 (Make-A-Video); Voleti et al. 2022 (MCVD); Ho et al. 2022 (Imagen Video;
cascaded diffusion and noise conditioning augmentation); Saharia et al. 2022 (Imagen).
"""
from __future__ import annotations

import torch
from diffusers.models.embeddings import TimestepEmbedding

from vidiff.spec import SettingError, check_choice, check_setting
from vidiff.stages.base import Stage
from vidiff.stages.conditions import (AUGMENTATION_SCHEDULE, DEFAULT_MASK_MODES, MASK_MODES, MAX_NOISE_LEVEL,
                                      SAMPLING_NOISE_LEVEL, SSR_CONDITIONS, SSR_FACTORS, augmentation_alphas,
                                      blend_known_frames, keyframe_mask, masked_video_condition, noise_augment,
                                      prefix_mask, repeat_frames, sample_frame_masks, spatial_upsample,
                                      ssr_condition, tsr_condition)


def check_pixels(info, height: int, width: int, where: str, what: str = "the input") -> None:
    """Pixel sizes that fit the model: multiples of its VAE factor x U-Net factor."""
    factor = info.spatial_factor
    if height % factor or width % factor or height < factor or width < factor:
        raise ValueError(f"{what} is {height}x{width} pixels, but {where} needs multiples of {factor} "
                         "(VAE factor x U-Net factor); resize or crop the video")


def add_level_embedding(unet) -> None:
    """Give a VideoUNet without one a class embedding for the SSR condition's noise level: an MLP on the
    level's sinusoidal embedding (diffusers' `class_embed_type="timestep"`, recorded in the U-Net config so the
    saved stage rebuilds it) whose output layer is zero, so the U-Net computes what it did before."""
    if unet.class_embedding is not None:
        return
    embedding = TimestepEmbedding(unet.time_embedding.linear_1.in_features, unet.time_embedding.linear_2.out_features,
                                  act_fn=unet.config.get("act_fn", "silu"))
    with torch.no_grad():  # ControlNet-style zero output layer: the level adds nothing until trained
        embedding.linear_2.weight.zero_()
        embedding.linear_2.bias.zero_()
    unet.class_embedding = embedding.to(unet.device, unet.dtype)
    unet.class_embed_type = unet.config["class_embed_type"] = "timestep"


# what a stage run's `settings` may hold (pipelines.cascade.run_stage / extend_video refuse anything else)
STAGE_SETTINGS = ("steps", "guidance", "scheduler", "negative_prompt", "progress", "strength")


def check_stage_settings(settings: dict) -> None:
    """Refuse a setting a stage run would not use (a misspelt `num_inference_steps=` must not be dropped)."""
    unknown = sorted(set(settings) - set(STAGE_SETTINGS))
    if unknown:
        raise TypeError(f"unknown stage setting(s) {', '.join(unknown)}; a stage run takes {', '.join(STAGE_SETTINGS)}")


def sample_stage(pipe, prompts, condition, size, settings: dict, generators, start=None, **extra) -> torch.Tensor:
    """The stage's U-Net sampled through the pipeline's shared loop: final latents `(b, c, f, h, w)`.
    `settings`: steps, guidance, scheduler, negative_prompt, progress, strength (unset: the folder's defaults;
    strength: 1). `start`: the stage's plain estimate of its output from its input (latents), where a strength
    below 1 begins (SDEdit): the steps that remain are few, as the estimate is already close."""
    frames, height, width = size
    return pipe(prompts, num_frames=frames, height=height, width=width, condition=condition,
                strength=settings.get("strength"), start=start,
                num_inference_steps=settings.get("steps"), guidance_scale=settings.get("guidance"),
                scheduler=settings.get("scheduler"), negative_prompt=settings.get("negative_prompt"),
                generator=generators, progress=settings.get("progress", True), output_type="latent", **extra)


class _CascadeStage(Stage):
    """A stage whose condition enters through extra zero-initialised `conv_in` channels (and, for SSR, a class
    embedding): those must train whatever `train.trainable` says, or the condition would never be used."""

    trainable_extra = ("conv_in.weight",)
    sampling_keys = ("factor",)
    takes_video = True

    def is_trainable_extra(self, name: str) -> bool:
        return name.startswith(self.trainable_extra)

    @classmethod
    def fresh(cls, factor: int | None = None, latent_channels: int = 4) -> "_CascadeStage":
        """The stage an untrained stage folder (`vidiff inflate --stage`) describes, for `factor` (None: the
        stage's default)."""
        check_setting("factor", factor)  # (0 is no factor: it must not read as "unset")
        return cls(latent_channels=latent_channels, factor=2 if factor is None else factor)

    def check_window(self, num_frames: int) -> None:
        """The sampling window (a folder's num_frames) suits the stage."""

    def prepare_unet(self, unet) -> None:
        """Stage-specific parts a freshly widened U-Net needs (the SSR stage's noise-level embedding)."""

    def sidecar(self, factor=None, noise_level=None, where: str = "") -> dict:
        return {"factor": self.check_factor(factor, where)}

    def input_size(self, info) -> tuple[int, int]:
        return info.defaults.height, info.defaults.width  # (the clip it was trained on, as training exports it)

    def has_start_estimate(self) -> bool:
        return True


class _TemporalStage(_CascadeStage):
    """A stage that raises the frame rate by its factor (what `vidiff interpolate` runs)."""

    command = "interpolate"

    def frame_rate_factor(self, factor=None) -> int:
        return self.check_factor(factor, "this stage")


class InterpolationStage(_TemporalStage):
    """Make-A-Video masked frame interpolation (Singer et al. 2022) with MCVD masking (Voleti et al. 2022):
    input = noisy latents + masked video latents + mask; the same model interpolates and extends clips."""

    name = "interpolation"
    config_fields = ("mask_factors", "mask_modes")

    def __init__(self, *, mask_factors=(2, 4), mask_modes=DEFAULT_MASK_MODES, **base):
        super().__init__(**base)
        mask_factors, mask_modes = [int(k) for k in mask_factors], list(mask_modes)
        if not mask_factors or any(k < 2 for k in mask_factors):
            raise ValueError(f"stage.mask_factors must be a non-empty list of factors >= 2, got {mask_factors}")
        if not mask_modes:
            raise ValueError(f"stage.mask_modes must not be empty; choose from {', '.join(MASK_MODES)}")
        for mode in mask_modes:
            check_choice("stage.mask_modes entries", mode, MASK_MODES)
        self.mask_factors, self.mask_modes = mask_factors, mask_modes
        self.conditioning_channels = self.latent_channels + 1

    @classmethod
    def fresh(cls, factor=None, latent_channels=4):
        check_setting("factor", factor)
        return cls(latent_channels=latent_channels, mask_factors=[2, 4] if factor is None else [factor],
                   mask_modes=list(DEFAULT_MASK_MODES))

    def condition(self, latents, generator=None):
        masks = sample_frame_masks(latents.shape[0], latents.shape[2], factors=self.mask_factors,
                                   modes=self.mask_modes, generator=generator)
        return masked_video_condition(latents, masks), {}

    def start_estimate(self, latents, condition):
        return blend_known_frames(condition)  # (the known frames blended in time, the last one held)

    def options(self) -> dict:
        return {"mask_factors": self.mask_factors, "mask_modes": self.mask_modes}

    # -------------------------------------------------------------------------------- sampling
    def factors(self) -> list[int]:
        return list(self.mask_factors)

    def chunk_overlap(self) -> int:
        return 1  # the keyframe between two chunks ends one and starts the next

    def output_size(self, info, size, factor=None, where="the stage"):
        frames, height, width = size
        k = self.check_factor(factor, where)
        check_pixels(info, height, width, where)
        if frames < 2:
            raise ValueError(f"interpolation needs at least 2 frames (keyframes), got {frames}")
        return (frames - 1) * k + 1, height, width

    def run(self, pipe, video, prompts, *, generators, settings, factor=None, noise_level=None, **draws):
        """n keyframes -> (n - 1) k + 1 frames, keyframe i at frame i k, copied exactly from the input."""
        b, _, n, h, w = video.shape
        k = self.check_factor(factor, "this model")
        frames = self.output_size(pipe.info, (n, h, w), k, "this model")[0]
        known = pipe.encode_video(video)                                                     # (b, c, n, h', w')
        placed = known.new_zeros(b, known.shape[1], frames, *known.shape[3:])
        placed[:, :, ::k] = known
        condition = masked_video_condition(placed, keyframe_mask(frames, k)[None].expand(b, frames))
        window = min(self.window(pipe.info), frames)  # a clip shorter than the trained window is one window
        blended = self.start_estimate(placed, condition)  # (the keyframes blended linearly in time)
        latents = sample_stage(pipe, prompts, condition, (frames, h, w), settings, generators, start=blended,
                               window_size=window, window_stride=max(1, window // 2))
        latents[:, :, ::k] = known  # the keyframes are given, not generated
        out = pipe.decode(latents)
        out[:, :, ::k] = video.to(out.device, out.dtype)  # exactly the input frames, not their VAE round trip
        return out

    def check_extension(self, info, frames: int, num_frames: int, context_frames: int | None,
                        new_per_chunk: int | None = 1) -> int:
        """The (most) known frames per chunk of `extend`, after checking the stage can extend (torch-free).
        `new_per_chunk` new frames per chunk (default 1); None: the rest of the window after a fixed context."""
        # one known frame is image-to-video's mask: "first" masks train it alone, "future" ones among other lengths
        if "future" not in self.mask_modes and not (context_frames == 1 and "first" in self.mask_modes):
            raise ValueError(f"extension needs an interpolation stage trained with future-prediction masks "
                             f"(stage.mask_modes with 'future'; one known frame: 'first' too); this one has "
                             f"mask_modes {self.mask_modes}")
        check_setting("new_frames", num_frames)
        window = self.window(info)
        if window < 2:
            raise ValueError(f"this stage's window is {window} frame(s); extension needs at least 2")
        if new_per_chunk is None:  # a fixed context of the input's last frames, the rest of each window new
            context = context_frames if context_frames is not None else min(frames, max(1, window // 2))
            if not 1 <= context <= min(frames, window - 1):
                raise SettingError("context_frames", f"must be in [1, {min(frames, window - 1)}] (the input has "
                                   f"{frames} frames, the stage's window {window}), got {context}")
            return context
        check_setting("new_per_chunk", new_per_chunk)
        if new_per_chunk > window - 1:
            raise SettingError("new_per_chunk", f"must be in [1, {window - 1}] (the stage's window {window} less one "
                               f"known frame), got {new_per_chunk}")
        context = context_frames if context_frames is not None else window - new_per_chunk
        if not 1 <= context <= window - new_per_chunk:
            raise SettingError("context_frames", f"must be in [1, {window - new_per_chunk}] (the stage's window "
                               f"{window} less {new_per_chunk} new frame(s) per chunk), got {context}")
        return context

    def extend(self, pipe, video, prompts, *, num_frames: int, context_frames: int | None, generators,
               settings, new_per_chunk: int | None = 1) -> torch.Tensor:
        """Future prediction chunk by chunk (MCVD): the last frames, up to `context_frames` of them (default: as
        many as the window holds), are the known past and `new_per_chunk` new frames (default 1) follow, until
        `num_frames` new frames exist; the known past grows from the input's frames to the context. One new frame
        a chunk keeps every new frame next to known ones: on the demo it keeps colour, shape and motion where
        five new frames a window lost the motion (docs/quality.md). `new_per_chunk=None`: a fixed context and
        the rest of each window new. The input frames come out as given."""
        b, _, n, h, w = video.shape
        window = self.window(pipe.info)
        context = self.check_extension(pipe.info, n, num_frames, context_frames, new_per_chunk)
        check_pixels(pipe.info, h, w, "this model")
        latents = pipe.encode_video(video)
        made = 0
        while made < num_frames:
            known = min(context, latents.shape[2])
            new = min(window - known if new_per_chunk is None else new_per_chunk, num_frames - made)
            past = latents[:, :, -known:]
            placed = torch.cat([past, past.new_zeros(*past.shape[:2], new, *past.shape[3:])], dim=2)
            condition = masked_video_condition(placed, prefix_mask(known + new, known)[None].expand(b, -1))
            held = self.start_estimate(placed, condition)  # (the last frame held)
            chunk = sample_stage(pipe, prompts, condition, (known + new, h, w), settings, generators, start=held)
            latents = torch.cat([latents, chunk[:, :, known:]], dim=2)
            made += new
        out = pipe.decode(latents[:, :, n:])
        return torch.cat([video.to(out.device, out.dtype), out], dim=2)


class TSRStage(_TemporalStage):
    """Imagen Video temporal super-resolution (Ho et al. 2022): input = noisy latents + the low-frame-rate video
    (every `factor`-th frame) repeated along time."""

    name = "tsr"
    config_fields = ("factor",)

    def __init__(self, *, factor: int = 2, **base):
        super().__init__(**base)
        if int(factor) < 2:
            raise ValueError(f"stage.factor of a tsr stage must be >= 2, got {factor}")
        self.factor = int(factor)
        self.conditioning_channels = self.latent_channels

    def check_clip(self, num_frames: int) -> None:
        if num_frames % self.factor:
            raise ValueError(f"data.num_frames ({num_frames}) must be a multiple of stage.factor ({self.factor}) "
                             "for a tsr stage")

    def condition(self, latents, generator=None):
        self.check_clip(latents.shape[2])
        return tsr_condition(latents, self.factor), {}

    def start_estimate(self, latents, condition):
        return condition  # (each low-frame-rate frame repeated)

    def options(self) -> dict:
        return {"factor": self.factor}

    def check_window(self, num_frames: int) -> None:
        # the window of a TSR stage holds whole groups of repeated frames, as in training
        if num_frames % self.factor:
            raise ValueError(f"a tsr x{self.factor} stage needs num_frames (its window) a multiple of "
                             f"{self.factor}, got {num_frames}")

    # -------------------------------------------------------------------------------- sampling
    def factors(self) -> list[int]:
        return [self.factor]

    def output_size(self, info, size, factor=None, where="the stage"):
        frames, height, width = size
        k = self.check_factor(factor, where)
        check_pixels(info, height, width, where)
        return frames * k, height, width

    def run(self, pipe, video, prompts, *, generators, settings, factor=None, noise_level=None, **draws):
        """n frames -> n k frames; windows start at multiples of k, where the repeated groups start."""
        b, _, n, h, w = video.shape
        k = self.check_factor(factor, "this model")
        frames = n * k
        condition = repeat_frames(pipe.encode_video(video), k)
        window = min(self.window(pipe.info), frames)  # a clip shorter than the trained window is one window
        stride = min(k * max(1, window // (2 * k)), window)
        latents = sample_stage(pipe, prompts, condition, (frames, h, w), settings, generators, start=condition,
                               window_size=window, window_stride=stride)  # (each frame repeated: its estimate)
        return pipe.decode(latents)


class SSRStage(_CascadeStage):
    """Spatial super-resolution x2 / x4 (Imagen; SD x4 upscaler): input = noisy latents + the low-resolution
    video upsampled to the target size, noise-augmented to a random level that the U-Net sees as `class_labels`.
    `noise_level` is the level sampling augments the condition to by default."""

    name = "ssr"
    trainable_extra = ("conv_in.weight", "class_embedding.")
    config_fields = ("factor", "max_noise_level")
    sampling_keys = ("noise_level",)
    command = "upscale"

    def __init__(self, *, factor: int = 2, max_noise_level: int = MAX_NOISE_LEVEL,
                 augmentation_schedule: dict | None = None, condition: str = "latent",
                 noise_level: int = SAMPLING_NOISE_LEVEL, **base):
        super().__init__(**base)
        check_choice("stage.factor of an ssr stage", int(factor), SSR_FACTORS)
        check_choice("the ssr condition", condition, SSR_CONDITIONS)
        self.augmentation_schedule = dict(augmentation_schedule or AUGMENTATION_SCHEDULE)
        levels = int(self.augmentation_schedule["num_train_timesteps"])
        if not 0 <= int(max_noise_level) < levels:
            raise ValueError(f"stage.max_noise_level must be in [0, {levels - 1}], got {max_noise_level}")
        self.factor, self.max_noise_level, self.condition_space = int(factor), int(max_noise_level), condition
        self.noise_level = int(noise_level)
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
                "augmentation_schedule": self.augmentation_schedule, "noise_level": self.noise_level}

    def prepare_unet(self, unet) -> None:
        add_level_embedding(unet)

    def has_start_estimate(self) -> bool:
        return self.condition_space != "pixels"  # the SD x4 upscaler's condition is pixels, not its latents

    def start_estimate(self, latents, condition):
        return ssr_condition(latents, self.factor)  # (the clip reduced and enlarged, before noise augmentation)

    # -------------------------------------------------------------------------------- sampling
    def factors(self) -> list[int]:
        return [self.factor]

    def check_noise_level(self, noise_level, where: str) -> int:
        """The condition's augmentation level: `noise_level` (None: the stage's default), within training's."""
        level = self.noise_level if noise_level is None else noise_level
        if isinstance(level, bool) or not isinstance(level, int) or not 0 <= level <= self.max_noise_level:
            raise SettingError("noise_level", f"must be an integer in [0, {self.max_noise_level}] for {where} (the "
                                              f"levels it was trained on), got {level!r}")
        return level

    def sidecar(self, factor=None, noise_level=None, where: str = "") -> dict:
        return {"factor": self.check_factor(factor, where), "noise_level": self.check_noise_level(noise_level, where)}

    def input_size(self, info) -> tuple[int, int]:
        return info.defaults.height // self.factor, info.defaults.width // self.factor  # (its defaults: the output)

    def output_size(self, info, size, factor=None, where="the stage"):
        frames, height, width = size
        k = self.check_factor(factor, where)
        check_pixels(info, height * k, width * k, where, what=f"the x{k} output")
        if self.condition_space == "pixels":  # x4 upscaler: low-res pixels at the latent size
            unet_factor = info.unet_spatial_factor
            if height % unet_factor or width % unet_factor:
                raise ValueError(f"{where} needs input sizes that are multiples of {unet_factor}, got "
                                 f"{height}x{width}")
        return frames, height * k, width * k

    def run(self, pipe, video, prompts, *, generators, settings, factor=None, noise_level=None, latents=None,
            condition_noise=None):
        """h x w -> kh x kw: the video upsampled (its latents reduced and enlarged as in training, or for an SD x4
        upscaler the low-res pixels themselves), noise-augmented to `noise_level`, given with the level as
        `class_labels`. `latents` / `condition_noise` replace the random draws (the condition's noise first)."""
        b, _, n, h, w = video.shape
        level = self.check_noise_level(noise_level, "this model")
        _, height, width = self.output_size(pipe.info, (n, h, w), where="this model")
        if self.condition_space == "pixels":  # SD x4 upscaler: the low-res pixels are the condition
            clean = video
        elif not pipe.latent:  # pixel space: the low-res frames are what training reduced the clip to, enlarged
            clean = spatial_upsample(video, (height, width))  # (reducing them again would blur the condition)
        else:
            clean = ssr_condition(pipe.encode_video(spatial_upsample(video, (height, width))), self.factor)
        if condition_noise is None:
            condition_noise = torch.stack([torch.randn(clean.shape[1:], generator=g) for g in generators])
        levels = torch.full((b,), level, dtype=torch.long)
        condition = noise_augment(clean.float(), levels, self.alphas_cumprod, condition_noise.to(clean.device))
        window = min(self.window(pipe.info), n)
        estimate = clean if self.has_start_estimate() else None  # (the x4 upscaler's condition is in pixels)
        out = sample_stage(pipe, prompts, condition, (n, height, width), settings, generators, class_labels=levels,
                           latents=latents, start=estimate, window_size=window, window_stride=max(1, window // 2))
        return pipe.decode(out)
