"""VideoPipeline: text prompt -> CLIP embedding -> denoised video latents -> decoded frames.

Sampling is the latent-diffusion recipe of Stable Diffusion applied to a whole clip at once: the latents are
`(b, c, f, h, w)` and the VideoUNet denoises all frames jointly. Pixel-space models (no VAE) use the same loop on
pixels in [-1, 1].

Long videos (more frames than the model was trained on) are denoised in overlapping temporal windows whose noise
predictions are averaged at every step, so neighbouring windows agree where they overlap and the clip has no
seams (Gen-L-Video, Wang et al. 2023; FreeNoise, Qiu et al. 2023).

References: Rombach et al. 2022 (latent diffusion); Ho & Salimans 2022 (classifier-free guidance);
Song et al. 2021 (DDIM).
"""
from __future__ import annotations

import inspect
import math
import os
import time
import warnings
from pathlib import Path

import numpy as np
import torch
from einops import rearrange
from tqdm.auto import tqdm

from vidiff.pipelines.folder import (CROSS_FRAME_MODES, load_component, make_info, read_info, spatial_factor,
                                     write_pipeline_folder)
from vidiff.pipelines.schedulers import check_scheduler_name, make_scheduler, max_inference_steps

OUTPUT_TYPES = ("uint8", "pt", "latent")
LONG_VIDEO_NOISE = ("independent", "freenoise")


# ---------------------------------------------------------------------------------------------------------------
# Helpers
# ---------------------------------------------------------------------------------------------------------------
def temporal_windows(num_frames: int, window_size: int, stride: int) -> list[tuple[int, int]]:
    """Start/end frame pairs of overlapping windows covering `num_frames`; the last window ends at the clip end.

    A clip no longer than the window is one window. Example: 40 frames, window 16, stride 8 ->
    (0, 16), (8, 24), (16, 32), (24, 40).
    """
    if window_size < 1 or stride < 1:
        raise ValueError(f"window_size and window_stride must be >= 1, got {window_size} and {stride}")
    if stride > window_size:
        raise ValueError(f"window_stride ({stride}) must not exceed window_size ({window_size}): windows would "
                         "leave frames uncovered")
    if num_frames <= window_size:
        return [(0, num_frames)]
    starts = list(range(0, num_frames - window_size + 1, stride))
    if starts[-1] + window_size < num_frames:
        starts.append(num_frames - window_size)
    return [(s, s + window_size) for s in starts]


def window_weights(window_size: int) -> torch.Tensor:
    """Per-frame weights of a window's prediction when averaging overlaps: a tent, highest in the middle.

    Frames near a window's edge have seen the least temporal context in that window, so the neighbour that holds
    them nearer its middle gets the larger say; this removes the visible step a flat average leaves where a
    window starts or ends. Frames covered by one window only get that window's prediction unchanged.
    """
    ramp = torch.arange(window_size, dtype=torch.float64)
    return (torch.minimum(ramp + 1, window_size - ramp) / ((window_size + 1) // 2)).float()


def reschedule_noise(noise: torch.Tensor, window_size: int, stride: int, generator: torch.Generator) -> torch.Tensor:
    """FreeNoise's noise rescheduling (Qiu et al. 2023) for one video's noise `(c, f, h, w)`: frames past the
    first window reuse the noise of the frames one window earlier, shuffled within each stride-long segment, so
    every window starts from a permutation of the same noise and distant windows stay alike (same content,
    same colours) instead of drifting apart."""
    noise = noise.clone()
    num_frames = noise.shape[1]
    for start in range(window_size, num_frames, stride):
        length = min(stride, num_frames - start)
        order = torch.randperm(length, generator=generator) + start - window_size
        noise[:, start:start + length] = noise[:, order]
    return noise


def make_generators(num_videos: int, generator=None, seed: int | None = None) -> list[torch.Generator]:
    """One CPU generator per video, so each video's noise depends only on its own seed, not the batch.

    `seed` gives video i the seed `seed + i`; a list of generators is used as is; a single generator is used
    for a single video, or draws one seed per video otherwise; nothing gives fresh random seeds.
    """
    if isinstance(generator, (list, tuple)):
        if len(generator) != num_videos:
            raise ValueError(f"got {len(generator)} generators for {num_videos} videos; pass one per video")
        return list(generator)
    if generator is not None:
        if num_videos == 1:
            return [generator]
        seeds = torch.randint(0, 2**62, (num_videos,), generator=generator).tolist()
    elif seed is not None:
        seeds = [int(seed) + i for i in range(num_videos)]
    else:
        seeds = torch.randint(0, 2**62, (num_videos,)).tolist()
    return [torch.Generator("cpu").manual_seed(s) for s in seeds]


def to_uint8(video: torch.Tensor) -> np.ndarray:
    """`(c, f, h, w)` in [-1, 1] -> uint8 `(f, h, w, 3)` (rounded, not truncated)."""
    video = ((video.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return rearrange(video, "c f h w -> f h w c").cpu().numpy()


# ---------------------------------------------------------------------------------------------------------------
# The pipeline
# ---------------------------------------------------------------------------------------------------------------
class VideoPipeline:
    """Text-to-video sampling with a VideoUNet (public: `vidiff.VideoPipeline`).

    Build with `VideoPipeline.from_pretrained(dir)` on a folder written by `vidiff inflate` / `vidiff train`,
    then call with a prompt. The sampler is chosen per call by name (`scheduler=`), built from the folder's noise
    schedule (`pipe.make_scheduler(name)`). `pipe.timings` holds the seconds spent per part in the last call
    (text, unet, sampler, vae).
    """

    def __init__(self, unet, text_encoder, tokenizer, scheduler_config: dict, vae=None, info: dict | None = None):
        self.unet = unet.eval()
        self.text_encoder = text_encoder.eval()
        self.tokenizer = tokenizer
        self.vae = vae.eval() if vae is not None else None
        self.scheduler_config = dict(scheduler_config)
        self.info = info if info is not None else make_info(unet, vae, text_encoder, tokenizer, scheduler_config)
        make_scheduler(self.defaults["scheduler"], self.scheduler_config, latent=self.latent)  # fail early if bad
        self.timings: dict[str, float] = {}

    # ----------------------------------------------------------------------------------------------- files
    @classmethod
    def from_pretrained(cls, directory: str | os.PathLike, device=None, dtype=None) -> "VideoPipeline":
        """Load a pipeline folder. device: "cuda" | "mps" | "cpu" (default: the best available);
        dtype: "fp32" | "fp16" | "bf16" or a torch dtype (default: fp16 on CUDA, fp32 elsewhere)."""
        from transformers import CLIPTextModel, CLIPTokenizer

        from vidiff.models.unet import VideoUNet
        from vidiff.pipelines.folder import read_scheduler_config

        directory = Path(directory)
        info = read_info(directory)
        if info["kind"] != "text-to-video":
            raise ValueError(f"{directory} holds a {info['kind']!r} model; VideoPipeline needs 'text-to-video'")
        unet = VideoUNet.from_pretrained(directory / "unet")
        vae = None
        if (directory / "vae").is_dir():
            from diffusers import AutoencoderKL

            vae = load_component(directory, "vae", AutoencoderKL)
        elif info.get("latent", False):
            raise FileNotFoundError(f"{directory} is a latent model but has no vae/ folder")
        pipe = cls(unet, load_component(directory, "text_encoder", CLIPTextModel),
                   load_component(directory, "tokenizer", CLIPTokenizer),
                   read_scheduler_config(directory / "scheduler"), vae=vae, info=info)
        return pipe.to(device, dtype)

    def save_pretrained(self, directory: str | os.PathLike) -> Path:
        """Write this pipeline as a pipeline folder (atomically)."""
        return write_pipeline_folder(directory, unet=self.unet, vae=self.vae, text_encoder=self.text_encoder,
                                     tokenizer=self.tokenizer, scheduler_config=self.scheduler_config, info=self.info)

    def to(self, device=None, dtype=None) -> "VideoPipeline":
        from vidiff.utils import default_device, parse_dtype

        device = torch.device(device or default_device())
        if dtype is None:
            dtype = torch.float16 if device.type == "cuda" else torch.float32
        dtype = parse_dtype(dtype)
        if device.type == "cpu" and dtype == torch.float16:
            warnings.warn("fp16 on the CPU is slow and poorly supported; prefer fp32 or bf16", stacklevel=2)
        for module in (self.unet, self.text_encoder, self.vae):
            if module is None:
                continue
            module.to(device)
            if next(module.parameters()).dtype != dtype:  # (diffusers warns on any .to(dtype=...), even a no-op)
                module.to(dtype=dtype)
        return self

    # ----------------------------------------------------------------------------------------------- properties
    @property
    def device(self) -> torch.device:
        return self.unet.device

    @property
    def dtype(self) -> torch.dtype:
        return self.unet.dtype

    @property
    def defaults(self) -> dict:
        return self.info["defaults"]

    @property
    def latent(self) -> bool:
        return self.vae is not None

    @property
    def vae_scale_factor(self) -> int:
        return int(self.info["vae_scale_factor"]) if self.latent else 1

    @property
    def spatial_factor(self) -> int:
        """Heights and widths in pixels must be multiples of this."""
        return self.vae_scale_factor * int(self.unet.spatial_factor)

    def make_scheduler(self, name: str | None = None):
        """A fresh diffusers scheduler `name` (default: the folder's) on this model's noise schedule."""
        return make_scheduler(name or self.defaults["scheduler"], self.scheduler_config, latent=self.latent)

    # ----------------------------------------------------------------------------------------------- inputs
    def resolve_settings(self, **settings) -> dict:
        """Fill unset (None) settings from vidiff.json's defaults and validate them all; raises ValueError."""
        return resolve_settings(self.info, **settings)

    @torch.no_grad()
    def encode_prompt(self, prompts: list[str]) -> torch.Tensor:
        """CLIP text encoder's last hidden state for each prompt, `(n, L, D)` (SD's conditioning).

        Prompts longer than the tokenizer's limit (77 tokens for CLIP) are cut, with a warning naming the
        part that was dropped.
        """
        max_length = self.tokenizer.model_max_length
        tokens = self.tokenizer(prompts, padding="max_length", max_length=max_length, truncation=True,
                                return_tensors="pt")
        for prompt in prompts:
            full = self.tokenizer(prompt, truncation=False, verbose=False)["input_ids"]
            if len(full) > max_length:
                # The kept ids are the first max_length - 1 plus the end token: decode what fell off.
                dropped = self.tokenizer.decode(full[max_length - 1:-1])
                warnings.warn(f"prompt is longer than the text encoder's {max_length} tokens; dropped: {dropped!r}",
                              stacklevel=3)
        ids = tokens["input_ids"].to(self.text_encoder.device)
        return self.text_encoder(ids)[0].to(self.dtype)

    # ----------------------------------------------------------------------------------------------- sampling
    @torch.no_grad()
    def __call__(self, prompt: str | list[str], num_frames: int | None = None, height: int | None = None,
                 width: int | None = None, num_inference_steps: int | None = None,
                 guidance_scale: float | None = None, negative_prompt: str | list[str] | None = None,
                 generator: torch.Generator | list[torch.Generator] | None = None, seed: int | None = None,
                 num_videos_per_prompt: int = 1, eta: float = 0.0, scheduler: str | None = None,
                 cross_frame: str | None = None, window_size: int | None = None, window_stride: int | None = None,
                 long_video_noise: str = "independent", decode_chunk_size: int | None = 8, condition: torch.Tensor | None = None,
                 latents: torch.Tensor | None = None, output_type: str = "uint8", progress: bool = True,
                 callback=None):
        """Generate videos from text.

        Args:
            prompt: one prompt or a list; each gives `num_videos_per_prompt` videos.
            num_frames, height, width, num_inference_steps, guidance_scale, scheduler, cross_frame:
                None takes the folder's default (vidiff.json). Height / width in pixels, multiples of
                `pipe.spatial_factor`. guidance_scale <= 1 turns classifier-free guidance off.
            negative_prompt: what to steer away from (one, or one per prompt); default "" (unconditional).
            generator / seed: one generator per video (a list), or a seed (video i gets seed + i), or a single
                generator. The same seed gives the same frames on the same device and dtype.
            eta: DDIM's noise level (0 = deterministic DDIM, 1 = DDPM-like); ignored by other samplers.
            window_size, window_stride: temporal windows for clips longer than the model's trained length
                (default: the folder's num_frames, and half of it).
            long_video_noise: initial noise of frames past the first window: "independent" (fresh noise) or
                "freenoise" (the earlier window's noise reshuffled, FreeNoise: steadier content over long clips).
            decode_chunk_size: frames per VAE decoder call (bounds memory); None decodes all frames at once.
            condition: `(b, conditioning_channels, f, h, w)` concatenated to the latents along channels at every
                step, for conditioned cascade stages; b = number of videos.
            latents: starting noise `(b, c, f, h, w)` instead of drawing it (scaled by the sampler's initial sigma).
            output_type: "uint8" (numpy `(f, h, w, 3)` per video), "pt" (one tensor `(b, 3, f, h, w)` in [-1, 1])
                or "latent" (the final latents `(b, c, f, h, w)`).
            progress: show a tqdm bar over steps. callback: called as `callback(step, timestep, latents)`.

        Returns:
            For "uint8": one array for one prompt and one video, else a list of arrays (prompt-major order).
        """
        prompts = [prompt] if isinstance(prompt, str) else list(prompt) if isinstance(prompt, (list, tuple)) else None
        if not prompts or not all(isinstance(p, str) for p in prompts):
            raise ValueError(f"prompt must be a string or a non-empty list of strings, got {prompt!r}")
        s = self.resolve_settings(max_steps=max_inference_steps(self.scheduler_config),
                                  num_frames=num_frames, height=height, width=width,
                                  num_inference_steps=num_inference_steps, guidance_scale=guidance_scale,
                                  scheduler=scheduler, cross_frame=cross_frame, window_size=window_size,
                                  window_stride=window_stride, num_videos_per_prompt=num_videos_per_prompt,
                                  decode_chunk_size=decode_chunk_size)
        if not (math.isfinite(eta) and eta >= 0):
            raise ValueError(f"eta must be a finite number >= 0 (0 = deterministic DDIM), got {eta}")
        if long_video_noise not in LONG_VIDEO_NOISE:
            raise ValueError(f"unknown long_video_noise {long_video_noise!r}; use one of {', '.join(LONG_VIDEO_NOISE)}")
        if output_type not in OUTPUT_TYPES:
            raise ValueError(f"unknown output_type {output_type!r}; use one of {', '.join(OUTPUT_TYPES)}")
        if negative_prompt is None:
            negative_prompts = [""] * len(prompts)
        elif isinstance(negative_prompt, str):
            negative_prompts = [negative_prompt] * len(prompts)
        else:
            negative_prompts = list(negative_prompt)
            if len(negative_prompts) != len(prompts):
                raise ValueError(f"got {len(negative_prompts)} negative prompts for {len(prompts)} prompts")
        num_videos = len(prompts) * num_videos_per_prompt
        generators = make_generators(num_videos, generator, seed)
        device, dtype = self.device, self.dtype
        f, h, w = s["num_frames"], s["height"] // self.vae_scale_factor, s["width"] // self.vae_scale_factor
        if condition is not None:
            expected = (num_videos, self.unet.conditioning_channels, f, h, w)
            if tuple(condition.shape) != expected:
                raise ValueError(f"condition must have shape {expected}, got {tuple(condition.shape)}")
            condition = condition.to(device, dtype)
        elif self.unet.conditioning_channels:
            raise ValueError(f"this U-Net takes {self.unet.conditioning_channels} conditioning channels: "
                             "pass condition= (b, channels, frames, h, w)")
        self.timings = {"text": 0.0, "unet": 0.0, "sampler": 0.0, "vae": 0.0}
        scheduler_obj = self.make_scheduler(s["scheduler"])
        step_kwargs = {"eta": eta} if "eta" in inspect.signature(scheduler_obj.step).parameters else {}
        if "generator" in inspect.signature(scheduler_obj.step).parameters:
            step_kwargs["generator"] = generators

        # 1. Text conditioning: one embedding per video (prompt-major), unconditional ones first for CFG.
        start = self._tick()
        do_cfg = s["guidance_scale"] > 1.0
        text = self.encode_prompt(prompts).repeat_interleave(num_videos_per_prompt, dim=0)      # (b, L, D)
        if do_cfg:
            uncond = self.encode_prompt(negative_prompts).repeat_interleave(num_videos_per_prompt, dim=0)
            text = torch.cat([uncond, text])                                                    # (2b, L, D)
        self.timings["text"] += self._tick() - start

        # 2. Initial noise x_T ~ N(0, sigma_T^2 I), drawn per video from that video's generator (on the CPU, so
        #    a seed gives the same clip on every device).
        scheduler_obj.set_timesteps(s["num_inference_steps"], device=device)
        shape = (num_videos, self.unet.in_channels, f, h, w)
        if latents is None:
            latents = torch.stack([torch.randn(shape[1:], generator=g, dtype=torch.float32) for g in generators])
            if long_video_noise == "freenoise" and f > s["window_size"]:
                latents = torch.stack([reschedule_noise(x, s["window_size"], s["window_stride"], g)
                                       for x, g in zip(latents, generators)])
        elif tuple(latents.shape) != shape:
            raise ValueError(f"latents must have shape {shape}, got {tuple(latents.shape)}")
        latents = latents.to(device, torch.float32) * scheduler_obj.init_noise_sigma

        windows = temporal_windows(f, s["window_size"], s["window_stride"])
        weights = window_weights(min(f, s["window_size"])).to(device)

        # 3. Reverse diffusion. At each step t:
        #      eps_c, eps_u = unet(x_t, t, text), unet(x_t, t, negative text)            (one batched call)
        #      eps = eps_u + g (eps_c - eps_u)                                            (classifier-free guidance)
        #    and for clips longer than the window, eps is computed on every temporal window and the windows'
        #    predictions are averaged frame by frame with tent weights (Gen-L-Video / FreeNoise co-denoising);
        #    then x_{t-1} = sampler_step(eps, t, x_t) (DDIM, DPM-Solver++, ... from diffusers).
        # The latents stay fp32 between steps (the sampler's arithmetic); the U-Net runs in the pipeline dtype.
        previous_cross_frame = self.unet.config.get("cross_frame", "none")
        self.unet.set_cross_frame(s["cross_frame"])
        try:
            for i, t in enumerate(tqdm(scheduler_obj.timesteps, desc="sampling", disable=not progress,
                                       leave=False)):
                start = self._tick()
                eps = torch.zeros_like(latents)
                total_weight = torch.zeros(f, device=device)
                for begin, end in windows:
                    window = latents[:, :, begin:end]
                    model_input = torch.cat([window] * 2) if do_cfg else window
                    model_input = scheduler_obj.scale_model_input(model_input, t)
                    if condition is not None:
                        cond = condition[:, :, begin:end]
                        model_input = torch.cat([model_input, torch.cat([cond] * 2) if do_cfg else cond], dim=1)
                    out = self.unet(model_input.to(dtype), t, text).float()                 # (b or 2b, c, f, h, w)
                    if do_cfg:
                        out_uncond, out_text = out.chunk(2)
                        out = out_uncond + s["guidance_scale"] * (out_text - out_uncond)
                    weight = weights[: end - begin] if len(windows) > 1 else torch.ones(end - begin, device=device)
                    eps[:, :, begin:end] += out * weight.view(1, 1, -1, 1, 1)
                    total_weight[begin:end] += weight
                eps = eps / total_weight.view(1, 1, -1, 1, 1)
                unet_done = self._tick()
                self.timings["unet"] += unet_done - start
                latents = scheduler_obj.step(eps, t, latents, **step_kwargs).prev_sample
                self.timings["sampler"] += self._tick() - unet_done
                if callback is not None:
                    callback(i, t, latents)
        finally:
            self.unet.set_cross_frame(previous_cross_frame)

        if output_type == "latent":
            return latents

        # 4. Decode: latents / scaling factor -> VAE decoder, a chunk of frames at a time (bounded memory).
        start = self._tick()
        video = self.decode_latents(latents, s["decode_chunk_size"])                          # (b, 3, f, H, W)
        self.timings["vae"] += self._tick() - start
        if output_type == "pt":
            return video
        videos = [to_uint8(v) for v in video]
        return videos[0] if num_videos == 1 else videos

    @torch.no_grad()
    def decode_latents(self, latents: torch.Tensor, chunk_size: int | None = 8) -> torch.Tensor:
        """`(b, c, f, h, w)` latents -> `(b, 3, f, H, W)` pixels in [-1, 1], float32. Pixel-space models pass
        through. Frames are independent for SD's VAE, so decoding in chunks gives the same result."""
        if not self.latent:
            return latents.float().clamp(-1, 1)
        b = latents.shape[0]
        frames = rearrange(latents, "b c f h w -> (b f) c h w") / float(self.info.get("scaling_factor", 1.0))
        frames = frames.to(self.vae.device, self.vae.dtype)
        chunk_size = chunk_size or frames.shape[0]
        decoded = [self.vae.decode(frames[i:i + chunk_size]).sample.float()
                   for i in range(0, frames.shape[0], chunk_size)]
        return rearrange(torch.cat(decoded), "(b f) c h w -> b c f h w", b=b).clamp(-1, 1)

    def _tick(self) -> float:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        return time.perf_counter()


# ---------------------------------------------------------------------------------------------------------------
# Settings (torch-free; the CLI checks a request against vidiff.json before loading anything)
# ---------------------------------------------------------------------------------------------------------------
def _check_int(name: str, value) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise ValueError(f"{name} must be an integer, got {value!r} ({type(value).__name__})")


def resolve_settings(info: dict, *, num_frames=None, height=None, width=None, num_inference_steps=None,
                     guidance_scale=None, scheduler=None, cross_frame=None, window_size=None, window_stride=None,
                     num_videos_per_prompt=1, decode_chunk_size=8, max_steps: int | None = None) -> dict:
    """Settings for one call: None takes vidiff.json's default; every value is checked (ValueError).
    `max_steps` (`schedulers.max_inference_steps` of the noise schedule, when known) bounds the sampling steps."""
    for name, value in (("num_frames", num_frames), ("height", height), ("width", width),
                        ("num_inference_steps", num_inference_steps), ("window_size", window_size),
                        ("window_stride", window_stride), ("num_videos_per_prompt", num_videos_per_prompt),
                        ("decode_chunk_size", decode_chunk_size)):
        if value is not None:
            _check_int(name, value)
    defaults = info["defaults"]
    s = {
        "num_frames": num_frames if num_frames is not None else defaults["num_frames"],
        "height": height if height is not None else defaults["height"],
        "width": width if width is not None else defaults["width"],
        "num_inference_steps": (num_inference_steps if num_inference_steps is not None
                                else defaults["num_inference_steps"]),
        "guidance_scale": guidance_scale if guidance_scale is not None else defaults["guidance_scale"],
        "scheduler": scheduler or defaults["scheduler"],
        "cross_frame": cross_frame or defaults.get("cross_frame", "none"),
        "decode_chunk_size": decode_chunk_size,
    }
    factor = spatial_factor(info)
    if int(s["num_frames"]) != s["num_frames"] or s["num_frames"] < 1:
        raise ValueError(f"num_frames must be an integer >= 1, got {s['num_frames']}")
    for key in ("height", "width"):
        if s[key] < factor or s[key] % factor:
            raise ValueError(f"{key} must be a positive multiple of {factor} for this model (VAE factor "
                             f"{info['vae_scale_factor']} x U-Net factor {info['unet_spatial_factor']}), got {s[key]}")
    if s["num_inference_steps"] < 1:
        raise ValueError(f"num_inference_steps must be >= 1, got {s['num_inference_steps']}")
    if max_steps is not None and s["num_inference_steps"] > max_steps:
        raise ValueError(f"num_inference_steps must be at most {max_steps} for this model's noise schedule, "
                         f"got {s['num_inference_steps']}")
    if not (math.isfinite(s["guidance_scale"]) and s["guidance_scale"] >= 0):
        raise ValueError(f"guidance_scale must be a finite number >= 0, got {s['guidance_scale']}")
    if num_videos_per_prompt < 1:
        raise ValueError(f"num_videos_per_prompt must be >= 1, got {num_videos_per_prompt}")
    if decode_chunk_size is not None and decode_chunk_size < 1:
        raise ValueError(f"decode_chunk_size must be >= 1 or None, got {decode_chunk_size}")
    check_scheduler_name(s["scheduler"])
    if s["cross_frame"] not in CROSS_FRAME_MODES:
        raise ValueError(f"unknown cross-frame mode {s['cross_frame']!r}; use one of {', '.join(CROSS_FRAME_MODES)}")
    # Long clips: windows of the trained length, overlapping by half (FreeNoise uses a quarter: smoother,
    # twice the U-Net calls).
    s["window_size"] = int(window_size if window_size is not None else defaults["num_frames"])
    s["window_stride"] = int(window_stride if window_stride is not None else max(1, s["window_size"] // 2))
    temporal_windows(s["num_frames"], s["window_size"], s["window_stride"])  # validates the pair
    return s
