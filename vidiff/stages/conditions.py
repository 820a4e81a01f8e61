"""The conditions cascade stages feed their U-Net, as pure tensor functions: training derives them from a clean
clip, sampling from the previous stage's output, with the same code.

    masks                  keyframes (interpolation), a known past (extension) or future, the first frame alone
                           (image-to-video): MCVD (Voleti et al. 2022)
    masked_video_condition the known frames' latents and the mask (Make-A-Video, Singer et al. 2022);
                           blend_known_frames: its plain estimate (where `strength` < 1 starts)
    repeat_frames          the low-frame-rate video repeated in time (Imagen Video TSR, Ho et al. 2022)
    ssr_condition          the low-resolution video at full size; noise_augment: noise conditioning augmentation
                           (Imagen, Saharia et al. 2022; cascaded diffusion models; the SD x4 upscaler)
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from diffusers import DDPMScheduler
from einops import rearrange

# ---------------------------------------------------------------------------------------------------------------
MASK_MODES = ("interpolate", "future", "past", "first")
DEFAULT_MASK_MODES = ("interpolate", "future", "past")  # a fresh interpolation stage's ("first": image-to-video)
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
    looks like training), "future" keeps the first n frames, "past" the last n (n uniform in 1..f-1), "first" the
    first frame alone (image-to-video: one known frame, the rest from the caption).
    Four uniforms per video from `generator`, so the masks of a step are a function of its seed."""
    device = generator.device if generator is not None else "cpu"
    draws = torch.rand((batch, 4), generator=generator, device=device).tolist()
    masks = []
    for u_mode, u_factor, u_phase, u_count in draws:
        mode = modes[int(u_mode * len(modes))]
        if mode == "first" and num_frames >= 2:
            masks.append(prefix_mask(num_frames, 1))
        elif mode == "interpolate" or num_frames < 2:
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


def blend_known_frames(condition: torch.Tensor) -> torch.Tensor:
    """The plain estimate of a masked clip from its `masked_video_condition` `(b, c + 1, f, h, w)`: each frame
    linearly blended in time from the nearest known frames before and after it, the nearest one held where only
    one side is known (a future to predict). For keyframes at 0, k, 2k, ... this is the trilinear blend that
    sampling starts interpolation from; for a known past, the held last frame that extension starts from."""
    latents, mask = condition[:, :-1], condition[:, -1, :, 0, 0] > 0.5           # (b, c, f, h, w), (b, f)
    f = mask.shape[1]
    position = torch.arange(f, device=mask.device).expand_as(mask)
    before = torch.where(mask, position, -1).cummax(dim=1).values
    after = torch.where(mask, position, f).flip(1).cummin(dim=1).values.flip(1)
    before, after = torch.where(before < 0, after, before), torch.where(after >= f, before, after)
    span = after - before                                                        # (0: a known or held frame)
    weight = torch.where(span > 0, (position - before) / span.clamp(min=1), 0.0).to(latents.dtype)
    weight = weight[:, None, :, None, None]
    pick = lambda index: latents.gather(2, index[:, None, :, None, None].expand_as(latents))  # noqa: E731
    return pick(before) * (1 - weight) + pick(after) * weight


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
    return DDPMScheduler(**(schedule or AUGMENTATION_SCHEDULE)).alphas_cumprod.to(torch.float32)


def noise_augment(cond: torch.Tensor, levels: torch.Tensor, alphas_cumprod: torch.Tensor,
                  noise: torch.Tensor) -> torch.Tensor:
    """Noise conditioning augmentation (Imagen; Ho et al. 2022 cascades; SD x4 upscaler): the condition diffused
    to level L, sqrt(alpha_bar_L) cond + sqrt(1 - alpha_bar_L) noise, per video (`levels` `(b,)` integers)."""
    alpha_bar = alphas_cumprod.to(cond.device)[levels.to(cond.device).long()].view(-1, 1, 1, 1, 1)
    return (alpha_bar.sqrt() * cond.float() + (1 - alpha_bar).sqrt() * noise.float()).to(cond.dtype)
