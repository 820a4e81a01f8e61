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

import contextlib
import dataclasses
import inspect
import os
import time
import warnings
from pathlib import Path

import numpy as np
import torch
from einops import rearrange

from diffusers import AutoencoderKL
from transformers import CLIPTextModel, CLIPTokenizer

from vidiff.adapters.lora import UNetWithAdapter, folder_record, has_lora, load_folder_lora
from vidiff.models.compile import compile_unet
from vidiff.models.encoding import encode_text, encode_video
from vidiff.models.folder import make_info, write_pipeline_folder
from vidiff.models.loading import load_component
from vidiff.models.unet import VideoUNet
from vidiff.pipelines.schedulers import make_scheduler
from vidiff.progress import ProgressBar
from vidiff.spec import (KIND, LONG_VIDEO_NOISE, MAX_SEED, PipelineInfo, PromptSchedule, SamplingSettings, check_choice,
                         check_scheduler_config, check_setting, guidance_on, max_inference_steps, read_info,
                         read_scheduler_config, resolve_sampling, steps_for_strength)
from vidiff.utils import check_device, parse_dtype, quiet_libraries

OUTPUT_TYPES = ("uint8", "pt", "latent")


# ---------------------------------------------------------------------------------------------------------------
# Helpers
# ---------------------------------------------------------------------------------------------------------------
def temporal_windows(num_frames: int, window_size: int, stride: int) -> list[tuple[int, int]]:
    """Start/end frame pairs of overlapping windows covering `num_frames`; the last window ends at the clip end.

    A clip no longer than the window is one window; 1 <= stride <= window_size (vidiff.spec.resolve_sampling
    checks a request's pair). Example: 40 frames, window 16, stride 8 ->
    (0, 16), (8, 24), (16, 32), (24, 40).
    """
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
        check_setting("seed", seed, high=MAX_SEED - (num_videos - 1))  # video i uses seed + i
        seeds = [int(seed) + i for i in range(num_videos)]
    else:
        seeds = torch.randint(0, 2**62, (num_videos,)).tolist()
    return [torch.Generator("cpu").manual_seed(s) for s in seeds]


def as_video(frames, device=None) -> torch.Tensor:
    """`(b, 3, f, h, w)` floats in [-1, 1] from such a tensor or one uint8 video `(f, h, w, 3)` (numpy or torch,
    as `vidiff.data.video_io` reads it); the inverse of `to_uint8`."""
    if isinstance(frames, np.ndarray):
        frames = torch.from_numpy(frames)
    if frames.dtype == torch.uint8:
        if frames.ndim != 4 or frames.shape[-1] != 3:
            raise ValueError(f"uint8 frames must have shape (f, h, w, 3), got {tuple(frames.shape)}")
        frames = rearrange(frames, "f h w c -> 1 c f h w").float() / 127.5 - 1
    if frames.ndim != 5 or frames.shape[1] != 3:
        raise ValueError(f"video must have shape (b, 3, f, h, w) in [-1, 1], got {tuple(frames.shape)}")
    return frames.float().to(device) if device is not None else frames.float()


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
    then call with a prompt. `__call__` checks the request once (`resolve_settings` -> SamplingSettings) and runs
    `sample`, the composition of public steps that the cascade stages and editing call on their own:
    `encode_prompt` -> `prepare_latents` -> `denoise` (from any timestep: `timesteps_for_strength`) -> `decode`,
    with `encode_video` the inverse of `decode`. The sampler is chosen per call by name (`scheduler=`), built
    from the folder's noise schedule (`pipe.make_scheduler(name)`). `pipe.timings` holds the seconds spent per
    part in the last call (text, unet, sampler, vae).
    """

    def __init__(self, unet, text_encoder, tokenizer, scheduler_config: dict, vae=None,
                 info: PipelineInfo | None = None):
        self.unet = unet.eval()
        self.text_encoder = text_encoder.eval()
        self.tokenizer = tokenizer
        self.vae = vae.eval() if vae is not None else None
        self.scheduler_config = dict(check_scheduler_config(scheduler_config, "scheduler_config"))
        self.info = info if info is not None else make_info(unet, vae, text_encoder, tokenizer, scheduler_config)
        make_scheduler(self.defaults.scheduler, self.scheduler_config, latent=self.latent)  # fail early if bad
        self.timings: dict[str, float] = {}

    # ----------------------------------------------------------------------------------------------- files
    @classmethod
    def from_pretrained(cls, directory: str | os.PathLike, device=None, dtype=None) -> "VideoPipeline":
        """Load a pipeline folder. device: "cuda" | "mps" | "cpu" (default: the best available);
        dtype: "fp32" | "fp16" | "bf16" or a torch dtype (default: fp16 on CUDA, fp32 elsewhere)."""
        device, dtype = check_device(device), parse_dtype(dtype) if dtype is not None else None  # before loading
        directory = Path(directory)
        info = read_info(directory)
        if info.kind != KIND:
            raise ValueError(f"{directory} holds a {info.kind!r} model; VideoPipeline needs {KIND!r}")
        # the U-Net starts in the folder's suggested cross-frame mode; a call's `cross_frame` overrides it
        unet = VideoUNet.from_pretrained(directory / "unet", cross_frame=info.defaults.cross_frame)
        load_folder_lora(unet, directory / "unet", info.extra.get("lora"))  # a LoRA run's adapter, at its scale
        vae = None
        if (directory / "vae").is_dir():
            vae = load_component(directory, "vae", AutoencoderKL)
        elif info.latent:
            raise FileNotFoundError(f"{directory} is a latent model but has no vae/ folder")
        pipe = cls(unet, load_component(directory, "text_encoder", CLIPTextModel),
                   load_component(directory, "tokenizer", CLIPTokenizer),
                   read_scheduler_config(directory / "scheduler"), vae=vae, info=info)
        return pipe.to(device, dtype)

    def save_pretrained(self, directory: str | os.PathLike) -> Path:
        """Write this pipeline as a pipeline folder (atomically). A U-Net with a LoRA adapter is written as its
        base weights plus unet/lora.safetensors, recorded in vidiff.json (`lora`), and loads back with it."""
        unet, info = self.unet, self.info
        if has_lora(unet):
            unet = UNetWithAdapter(self.unet)
            info = dataclasses.replace(info, extra={**info.extra, "lora": folder_record(self.unet)})
        return write_pipeline_folder(directory, unet=unet, vae=self.vae, text_encoder=self.text_encoder,
                                     tokenizer=self.tokenizer, scheduler_config=self.scheduler_config, info=info)

    def compile_unet(self, mode: str | None = None, backend="inductor") -> "VideoPipeline":
        """torch.compile the U-Net in place (`vidiff.models.compile.compile_unet`): the first call at a clip's
        shape compiles it (a minute or more on a CPU), later steps and calls at that shape run the compiled
        graph. Outputs equal eager mode's within float tolerance; weights and saved folders are unchanged.
        CompileError (one line) where it cannot run (no C++ compiler for inductor on a CPU, xformers attention)."""
        compile_unet(self.unet, mode=mode, backend=backend)
        return self

    def to(self, device=None, dtype=None) -> "VideoPipeline":
        device = check_device(device)
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
                with quiet_libraries():  # ("modules in AutoencoderKL that should be kept in float32: []")
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
    def defaults(self):
        """The folder's sampling defaults (vidiff.spec.Defaults)."""
        return self.info.defaults

    @property
    def latent(self) -> bool:
        return self.vae is not None

    @property
    def vae_scale_factor(self) -> int:
        return self.info.vae_scale_factor if self.latent else 1

    @property
    def spatial_factor(self) -> int:
        """Heights and widths in pixels must be multiples of this."""
        return self.vae_scale_factor * int(self.unet.spatial_factor)

    def make_scheduler(self, name: str | None = None):
        """A fresh diffusers scheduler `name` (default: the folder's) on this model's noise schedule (a
        consistency student's "lcm" on the grid it was distilled on)."""
        distilled = self.info.distilled
        grid = distilled.teacher_steps if distilled is not None and distilled.method == "consistency" else None
        return make_scheduler(name or self.defaults.scheduler, self.scheduler_config, latent=self.latent,
                              consistency_grid=grid)

    @property
    def guidance_distilled(self) -> bool:
        """The U-Net takes the guidance scale as an input (a guidance-distilled student): one pass per step."""
        return getattr(self.unet, "guidance_embedding", None) is not None

    # ----------------------------------------------------------------------------------------------- inputs
    def resolve_settings(self, **request) -> SamplingSettings:
        """One request's settings: unset (None) ones from vidiff.json's defaults, every value checked once
        (vidiff.spec.resolve_sampling, against this model's size factor and noise schedule)."""
        return resolve_sampling(self.info, max_steps=max_inference_steps(self.scheduler_config), **request)

    @torch.no_grad()
    def encode_prompt(self, prompts: str | list[str], negative_prompts: str | list[str] | None = None, *,
                      num_videos_per_prompt: int = 1):
        """Text embeddings `(n * num_videos_per_prompt, L, D)` in the pipeline's dtype (SD's conditioning: the
        CLIP text encoder's last hidden state, `encoding.encode_text`, which warns when a prompt is cut).

        With `negative_prompts` (one per prompt; "" is the unconditional prompt of classifier-free guidance)
        returns the pair `(embeddings, negative_embeddings)`. Embeddings repeat per video, prompt-major.
        """
        def encode(texts: list[str]) -> torch.Tensor:
            embeddings = encode_text(self.text_encoder, self.tokenizer, texts).to(self.dtype)
            return embeddings.repeat_interleave(num_videos_per_prompt, dim=0)

        prompts = [prompts] if isinstance(prompts, str) else list(prompts)
        if negative_prompts is None:
            return encode(prompts)
        if isinstance(negative_prompts, str):
            negative_prompts = [negative_prompts] * len(prompts)
        if len(negative_prompts) != len(prompts):
            raise ValueError(f"got {len(negative_prompts)} negative prompts for {len(prompts)} prompts")
        return encode(prompts), encode(negative_prompts)

    @torch.no_grad()
    def encode_prompts(self, prompts: list, negative_prompts: list[str] | None, num_frames: int, *,
                       num_videos_per_prompt: int = 1):
        """(embeddings, negative embeddings or None) of a request: `(n, L, D)` for plain prompts, or `(n, f, L, D)`
        (one per frame) when any prompt is a PromptSchedule (prompt travel: `schedule_embeddings`)."""
        if not any(isinstance(p, PromptSchedule) for p in prompts):
            encoded = self.encode_prompt(prompts, negative_prompts, num_videos_per_prompt=num_videos_per_prompt)
            return encoded if negative_prompts is not None else (encoded, None)
        per_video = []
        for prompt in prompts:
            if isinstance(prompt, PromptSchedule):
                prompt.check_frames(num_frames)
                keys = self.encode_prompt(prompt.prompts)
                per_video.append(schedule_embeddings(keys, [k for k, _ in prompt.keyframes], num_frames))
            else:
                per_video.append(self.encode_prompt([prompt]).expand(num_frames, -1, -1))
        text = torch.stack(per_video).repeat_interleave(num_videos_per_prompt, dim=0)          # (n, f, L, D)
        negative = None
        if negative_prompts is not None:
            negative = self.encode_prompt(negative_prompts, num_videos_per_prompt=num_videos_per_prompt)
        return text, negative

    @torch.no_grad()
    def encode_video(self, frames, chunk_size: int | None = 8) -> torch.Tensor:
        """Frames -> scaled VAE latents `(b, c, f, h / k, w / k)`, float32 on the pipeline's device (the pixels
        themselves for pixel-space models); the inverse of `decode`.

        frames: `(b, 3, f, h, w)` floats in [-1, 1], or one video as uint8 `(f, h, w, 3)` (numpy or torch), as
        `vidiff.data.video_io` reads it. The VAE's posterior mean is used (`encoding.encode_video` says why).
        """
        frames = as_video(frames)
        if frames.shape[-2] % self.vae_scale_factor or frames.shape[-1] % self.vae_scale_factor:
            raise ValueError(f"frame height and width must be multiples of the VAE's factor {self.vae_scale_factor}, "
                             f"got {frames.shape[-2]}x{frames.shape[-1]}")
        frames = frames.to(self.device, self.vae.dtype if self.latent else torch.float32)
        latents = encode_video(self.vae, frames, scaling_factor=self.info.scaling_factor,
                               chunk_size=chunk_size)
        return latents.float()

    @torch.no_grad()
    def prepare_latents(self, num_videos: int, num_frames: int, height: int, width: int, *,
                        generators: list[torch.Generator], scheduler=None, noise: str = "independent",
                        window_size: int | None = None, window_stride: int | None = None,
                        latents: torch.Tensor | None = None) -> torch.Tensor:
        """The starting point x_T `(num_videos, c, num_frames, height / k, width / k)`, float32 on the device.

        The noise is drawn per video from that video's generator, on the CPU, so a seed gives the same clip on
        every device and whatever else is in the batch. `noise="freenoise"` reshuffles the noise of frames past
        the first window from the window before (FreeNoise); "independent" draws it fresh. `latents` replaces
        the draw. With a `scheduler` the noise is scaled by its initial sigma (1 for DDIM, sigma_max for Euler).
        Heights and widths are in pixels.
        """
        check_choice("long_video_noise", noise, LONG_VIDEO_NOISE)
        shape = (num_videos, self.unet.in_channels, num_frames, height // self.vae_scale_factor,
                 width // self.vae_scale_factor)
        if latents is None:
            if len(generators) != num_videos:
                raise ValueError(f"got {len(generators)} generators for {num_videos} videos; pass one per video")
            latents = torch.stack([torch.randn(shape[1:], generator=g, dtype=torch.float32) for g in generators])
            window_size = window_size or num_frames
            if noise == "freenoise" and num_frames > window_size:
                stride = window_stride or max(1, window_size // 2)
                latents = torch.stack([reschedule_noise(x, window_size, stride, g)
                                       for x, g in zip(latents, generators)])
        elif tuple(latents.shape) != shape:
            raise ValueError(f"latents must have shape {shape}, got {tuple(latents.shape)}")
        latents = latents.to(self.device, torch.float32)
        return latents * scheduler.init_noise_sigma if scheduler is not None else latents

    # ----------------------------------------------------------------------------------------------- sampling
    @torch.no_grad()
    def __call__(self, prompt: str | list[str], num_frames: int | None = None, height: int | None = None,
                 width: int | None = None, num_inference_steps: int | None = None,
                 guidance_scale: float | None = None, negative_prompt: str | list[str] | None = None,
                 generator: torch.Generator | list[torch.Generator] | None = None, seed: int | None = None,
                 num_videos_per_prompt: int = 1, eta: float = 0.0, scheduler: str | None = None,
                 cross_frame: str | None = None, window_size: int | None = None, window_stride: int | None = None,
                 long_video_noise: str = "independent", decode_chunk_size: int | None = 8,
                 condition: torch.Tensor | None = None, class_labels=None, latents: torch.Tensor | None = None,
                 output_type: str = "uint8", progress: bool | str = True, callback=None, control=None,
                 strength: float | None = None, start: torch.Tensor | None = None):
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
            class_labels: the U-Net's class input, one per video or one for all (e.g. an SSR stage's noise level).
            latents: starting noise `(b, c, f, h, w)` instead of drawing it (scaled by the sampler's initial sigma).
            strength, start: begin from `start` (clean latents `(b, c, f, h, w)`: a cascade stage's estimate of
                its output from its input) noised to the last `strength` share of the schedule, and run only
                that share (SDEdit, Meng et al. 2022); strength None or 1 starts from pure noise.
            output_type: "uint8" (numpy `(f, h, w, 3)` per video), "pt" (one tensor `(b, 3, f, h, w)` in [-1, 1])
                or "latent" (the final latents `(b, c, f, h, w)`).
            progress: show a tqdm bar over steps (a string: the bar's name, "sampling" otherwise).
                callback: called as `callback(step, timestep, latents)`.
            control: a `vidiff.control.Control`: a ControlNet run per frame beside the U-Net, its control images
                `(1 or b, 3, f, height, width)` in [0, 1] and scale (`vidiff.control.control_images` makes them).

        Returns:
            For "uint8": one array for one prompt and one video, else a list of arrays (prompt-major order).
        """
        settings = self.resolve_settings(num_frames=num_frames, height=height, width=width,
                                         num_inference_steps=num_inference_steps, guidance_scale=guidance_scale,
                                         scheduler=scheduler, cross_frame=cross_frame, window_size=window_size,
                                         window_stride=window_stride, eta=eta, long_video_noise=long_video_noise,
                                         num_videos_per_prompt=num_videos_per_prompt,
                                         decode_chunk_size=decode_chunk_size, strength=strength)
        return self.sample(prompt, settings, negative_prompt=negative_prompt, generator=generator, seed=seed,
                           condition=condition, class_labels=class_labels, latents=latents, output_type=output_type,
                           progress=progress, callback=callback, control=control, start=start)

    @torch.no_grad()
    def sample(self, prompt: str | list[str], settings: SamplingSettings, *, negative_prompt=None, generator=None,
               seed: int | None = None, condition: torch.Tensor | None = None, class_labels=None,
               latents: torch.Tensor | None = None, output_type: str = "uint8", progress: bool | str = True,
               callback=None, control=None, start: torch.Tensor | None = None):
        """`__call__` with settings already resolved (`resolve_settings`; the CLI resolves them before loading
        the model): text -> x_T -> denoised latents -> frames. The arguments are `__call__`'s; `control` a
        `vidiff.control.Control` (a ControlNet and its images `(1 or b, 3, f, H, W)`), steering every U-Net call."""
        prompts, negative_prompts = _prompt_lists(prompt, negative_prompt)
        check_choice("output_type", output_type, OUTPUT_TYPES)
        s, num_videos = settings, len(prompts) * settings.num_videos_per_prompt
        generators = make_generators(num_videos, generator, seed)
        f, h, w = s.num_frames, s.height // self.vae_scale_factor, s.width // self.vae_scale_factor
        self._check_condition(condition, (num_videos, self.unet.in_channels, f, h, w))  # before any heavy work
        if s.strength < 1 and (start is None or tuple(start.shape) != (num_videos, self.unet.out_channels, f, h, w)):
            raise ValueError(f"strength {s.strength} < 1 starts from an estimate of the output: give `start` "
                             f"{(num_videos, self.unet.out_channels, f, h, w)} (cascade stages make theirs), got "
                             f"{None if start is None else tuple(start.shape)}")
        control = control.fitted(num_videos, f, s.height, s.width) if control is not None else None
        self.timings = {"text": 0.0, "unet": 0.0, "sampler": 0.0, "vae": 0.0}

        # 1. Text conditioning, one embedding per video; the negative prompts' only when guidance is on.
        with self._timed("text"):
            two_pass = s.guided and not self.guidance_distilled
            text, negative = self.encode_prompts(prompts, negative_prompts if two_pass else None, f,
                                                 num_videos_per_prompt=s.num_videos_per_prompt)

        # 2. Initial noise x_T ~ N(0, sigma_T^2 I), one generator per video.
        sampler = self.make_scheduler(s.scheduler)
        timesteps = timesteps_for_strength(sampler, s.num_inference_steps, s.strength, device=self.device)
        latents = self.prepare_latents(num_videos, f, s.height, s.width, generators=generators, scheduler=sampler,
                                       noise=s.long_video_noise, window_size=s.window_size,
                                       window_stride=s.window_stride, latents=latents)
        if s.strength < 1:  # SDEdit: the estimate noised to the first timestep that runs, with the same noise
            noise = latents / sampler.init_noise_sigma
            latents = sampler.add_noise(start.to(self.device, torch.float32), noise, timesteps[:1])

        # 3. Reverse diffusion x_T -> x_0 with classifier-free guidance over temporal windows.
        with self.temporary_cross_frame(s.cross_frame):
            latents = self.denoise(latents, text, timesteps, guidance_scale=s.guidance_scale,
                                   negative_embeddings=negative, condition=condition, class_labels=class_labels,
                                   window_size=s.window_size, window_stride=s.window_stride, eta=s.eta,
                                   scheduler=sampler, generators=generators, progress=progress, callback=callback,
                                   control=control)
        if output_type == "latent":
            return latents

        # 4. Decode: latents / scaling factor -> VAE decoder, a chunk of frames at a time (bounded memory).
        with self._timed("vae"):
            video = self.decode(latents, s.decode_chunk_size)                                   # (b, 3, f, H, W)
        if output_type == "pt":
            return video
        videos = [to_uint8(v) for v in video]
        return videos[0] if num_videos == 1 else videos

    @torch.no_grad()
    def denoise(self, latents: torch.Tensor, embeddings: torch.Tensor, timesteps, *, guidance_scale: float,
                negative_embeddings: torch.Tensor | None = None, condition: torch.Tensor | None = None,
                class_labels=None, window_size: int | None = None, window_stride: int | None = None,
                eta: float = 0.0, scheduler, generators: list[torch.Generator] | None = None,
                progress: bool | str = True, callback=None, control=None) -> torch.Tensor:
        """Reverse diffusion from x_t at `timesteps[0]` down to x_0: latents `(b, c, f, h, w)` -> float32 latents.

        `scheduler` is a sampler from `make_scheduler` on which `set_timesteps` was called; `timesteps` are its
        timesteps or their tail (`timesteps_for_strength`), so a run may start from any noise level: partial
        denoising for SDEdit-style editing (Meng et al. 2022) and noise-augmented cascade conditions. At each t:

            eps_u, eps_c = unet([x_t, condition], t, negative / text embeddings)    (one batched call)
            eps = eps_u + g (eps_c - eps_u)          classifier-free guidance (Ho & Salimans 2022), g > 1 only
            eps of a long clip = tent-weighted mean of its windows' eps, frame by frame (Gen-L-Video, FreeNoise)
            x_{t-1} = scheduler.step(eps, t, x_t)    DDIM (Song et al. 2021), DPM-Solver++, ... from diffusers

        embeddings / negative_embeddings: `(b, L, D)`, or `(b, f, L, D)` one per frame (prompt travel; negative
        default: the empty prompt's, the unconditional embedding SD was trained with). condition: `(b, conditioning_channels, f, h, w)`, concatenated along
        channels at every step and windowed with the latents. class_labels: one per video or one for all,
        passed to the U-Net (an SSR stage's noise level). window_size / window_stride: temporal windows (default:
        the whole clip; stride half the window). eta: DDIM's noise; generators: one per video, for stochastic
        samplers. The latents stay fp32 between steps (the sampler's arithmetic); the U-Net runs in its dtype.
        control: a `vidiff.control.Control` fitted to the clip (`Control.fitted`): its ControlNet runs on every
        U-Net input (both guidance halves, each window with its frames' control images) and adds its residuals.
        """
        b, _, f = latents.shape[:3]
        condition = self._check_condition(condition, tuple(latents.shape))
        do_cfg = guidance_on(guidance_scale) and not self.guidance_distilled  # (a distilled scale: one pass)
        if do_cfg and negative_embeddings is None:
            negative_embeddings = self.encode_prompt([""] * b)
        if do_cfg and embeddings.ndim == 4 and negative_embeddings.ndim == 3:  # prompt travel: one per frame
            negative_embeddings = negative_embeddings[:, None].expand(-1, f, -1, -1)
        text = torch.cat([negative_embeddings, embeddings]) if do_cfg else embeddings   # (2b or b, [f,] L, D)
        text = text.to(self.device, self.dtype)
        if class_labels is not None:
            class_labels = torch.as_tensor(class_labels, device=self.device).reshape(-1).expand(b)
            class_labels = torch.cat([class_labels] * 2) if do_cfg else class_labels
        window_size = window_size or f
        windows = temporal_windows(f, window_size, window_stride or max(1, window_size // 2))
        step_kwargs = _step_kwargs(scheduler, eta, generators)
        latents = latents.to(self.device, torch.float32)
        # the bar ends its line when done, so what is printed next (a log, or stdout and stderr in one file)
        # starts a line of its own; a string `progress` names the bar (a cascade's stage)
        bar = ProgressBar(timesteps, desc=progress if isinstance(progress, str) else "sampling", disable=not progress)
        for i, t in enumerate(bar):
            with self._timed("unet"):
                eps = self._windowed_noise(scheduler, latents, t, text, guidance_scale, condition, class_labels,
                                           windows, control)
            with self._timed("sampler"):
                latents = scheduler.step(eps, t, latents, **step_kwargs).prev_sample
            if callback is not None:
                callback(i, t, latents)
        return latents

    def _windowed_noise(self, scheduler, latents, t, text, guidance_scale, condition, class_labels, windows,
                        control=None):
        """The guided noise prediction for the whole clip at step t: one per window, overlaps averaged frame by
        frame with tent weights (`window_weights`); a clip within one window is predicted whole."""
        def predict(begin, end):
            cond = condition[:, :, begin:end] if condition is not None else None
            words = text[:, begin:end] if text.ndim == 4 else text  # prompt travel: the window's frames
            window_control = control.frames(begin, end) if control is not None else None
            return self._guided_noise(scheduler, latents[:, :, begin:end], t, words, guidance_scale, cond,
                                      class_labels, window_control)

        if len(windows) == 1:
            return predict(*windows[0])
        f = latents.shape[2]
        weights = window_weights(windows[0][1] - windows[0][0]).to(latents.device)
        eps = torch.zeros_like(latents)
        total_weight = torch.zeros(f, device=latents.device)
        for begin, end in windows:
            eps[:, :, begin:end] += predict(begin, end) * weights.view(1, 1, -1, 1, 1)
            total_weight[begin:end] += weights
        return eps / total_weight.view(1, 1, -1, 1, 1)

    def _guided_noise(self, scheduler, x, t, text, guidance_scale, condition, class_labels, control=None):
        """U-Net prediction for latents x `(b, c, f', h, w)` at t, with classifier-free guidance when it is on
        (`guidance_on`: text then holds the negative embeddings first, one batched U-Net call). A ControlNet
        sees the same batched input as the U-Net (diffusers' StableDiffusionControlNetPipeline without guess
        mode: both halves), before the condition channels are appended."""
        do_cfg = guidance_on(guidance_scale) and not self.guidance_distilled
        extra = {"guidance_scale": guidance_scale} if self.guidance_distilled else {}
        model_input = control_input = scheduler.scale_model_input(torch.cat([x] * 2) if do_cfg else x, t)
        if condition is not None:  # the condition is not scaled: it is clean data, not a noisy sample
            model_input = torch.cat([model_input, torch.cat([condition] * 2) if do_cfg else condition], dim=1)
        residuals = control.residuals(control_input.to(self.dtype), t, text) if control is not None else {}
        out = self.unet(model_input.to(self.dtype), t, text, class_labels=class_labels, **residuals, **extra).float()
        if not do_cfg:
            return out
        out_uncond, out_text = out.chunk(2)
        return out_uncond + guidance_scale * (out_text - out_uncond)

    @torch.no_grad()
    def decode(self, latents: torch.Tensor, chunk_size: int | None = 8) -> torch.Tensor:
        """`(b, c, f, h, w)` latents -> `(b, 3, f, H, W)` pixels in [-1, 1], float32. Pixel-space models pass
        through. Frames are independent for SD's VAE, so decoding in chunks gives the same result."""
        if chunk_size is not None and chunk_size < 1:
            raise ValueError(f"chunk_size must be >= 1 or None, got {chunk_size}")
        if not self.latent:
            return latents.float().clamp(-1, 1)
        b = latents.shape[0]
        frames = rearrange(latents, "b c f h w -> (b f) c h w") / self.info.scaling_factor
        frames = frames.to(self.vae.device, self.vae.dtype)
        chunk_size = chunk_size or frames.shape[0]
        decoded = [self.vae.decode(frames[i:i + chunk_size]).sample.float()
                   for i in range(0, frames.shape[0], chunk_size)]
        return rearrange(torch.cat(decoded), "(b f) c h w -> b c f h w", b=b).clamp(-1, 1)

    # ----------------------------------------------------------------------------------------------- helpers
    @contextlib.contextmanager
    def temporary_cross_frame(self, mode: str):
        """Use the cross-frame attention `mode` inside the block, then restore the model's own."""
        previous = self.unet.cross_frame
        self.unet.set_cross_frame(mode)
        try:
            yield
        finally:
            self.unet.set_cross_frame(previous)

    def _check_condition(self, condition, latents_shape: tuple) -> torch.Tensor | None:
        """The condition on the device in the U-Net's dtype, after checking it fits latents of `latents_shape`."""
        channels = self.unet.conditioning_channels
        if condition is None:
            if channels:
                raise ValueError(f"this U-Net takes {channels} conditioning channels: pass condition= "
                                 "(b, channels, frames, h, w)")
            return None
        b, _, f, h, w = latents_shape
        if tuple(condition.shape) != (b, channels, f, h, w):
            raise ValueError(f"condition must have shape {(b, channels, f, h, w)}, got {tuple(condition.shape)}")
        return condition.to(self.device, self.dtype)

    @contextlib.contextmanager
    def _timed(self, part: str):
        """Add the seconds spent in the block to `self.timings[part]` (CUDA synchronised)."""
        start = self._tick()
        try:
            yield
        finally:
            self.timings[part] = self.timings.get(part, 0.0) + self._tick() - start

    def _tick(self) -> float:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        return time.perf_counter()


def _prompt_lists(prompt, negative_prompt) -> tuple[list, list[str]]:
    """(prompts, one negative prompt per prompt) from `__call__`'s arguments; raises ValueError. A prompt is a
    string or a PromptSchedule (prompt travel)."""
    single = isinstance(prompt, (str, PromptSchedule))
    prompts = [prompt] if single else list(prompt) if isinstance(prompt, (list, tuple)) else None
    if not prompts or not all(isinstance(p, (str, PromptSchedule)) for p in prompts):
        raise ValueError(f"prompt must be a string, a PromptSchedule or a non-empty list of them, got {prompt!r}")
    if negative_prompt is None:
        return prompts, [""] * len(prompts)
    if isinstance(negative_prompt, str):
        return prompts, [negative_prompt] * len(prompts)
    negative_prompts = list(negative_prompt)
    if len(negative_prompts) != len(prompts):
        raise ValueError(f"got {len(negative_prompts)} negative prompts for {len(prompts)} prompts")
    return prompts, negative_prompts


def schedule_embeddings(keyframe_embeddings: torch.Tensor, frames, num_frames: int) -> torch.Tensor:
    """Prompt travel: text embeddings `(k, L, D)` at keyframe `frames` -> one per frame `(num_frames, L, D)`,
    linear between neighbouring keyframes (AnimateDiff's prompt travel), held before the first and after the last."""
    frames = torch.as_tensor(list(frames), dtype=torch.float64)
    t = torch.arange(num_frames, dtype=torch.float64)
    upper = torch.searchsorted(frames, t, right=True).clamp(1, len(frames) - 1)      # the keyframe after t
    lower = upper - 1
    if len(frames) == 1:
        return keyframe_embeddings[:1].expand(num_frames, -1, -1).clone()
    span = frames[upper] - frames[lower]
    weight = ((t - frames[lower]) / span).clamp(0, 1).to(keyframe_embeddings.dtype)[:, None, None]
    return torch.lerp(keyframe_embeddings[lower], keyframe_embeddings[upper], weight)


def _step_kwargs(scheduler, eta: float, generators) -> dict:
    """The extra arguments this sampler's `step` takes: DDIM's eta, the stochastic samplers' generators."""
    parameters = inspect.signature(scheduler.step).parameters
    kwargs = {"eta": eta} if "eta" in parameters else {}
    if "generator" in parameters and generators is not None:
        kwargs["generator"] = generators
    return kwargs


def timesteps_for_strength(scheduler, num_inference_steps: int, strength: float = 1.0, device=None) -> torch.Tensor:
    """Set `scheduler` to `num_inference_steps` steps and return the last `strength` part of its timesteps.

    strength 1 is the whole schedule (sampling from pure noise); strength s < 1 starts at the noise level a
    fraction s of the way up (SDEdit, Meng et al. 2022: noise the input to `timesteps[0]` with
    `scheduler.add_noise`, then `denoise` with these timesteps), at least one step. The scheduler is told where
    the run begins, so multistep and sigma-indexed samplers pick up at the right step.
    """
    if not (isinstance(strength, (int, float)) and 0 < strength <= 1):
        raise ValueError(f"strength must be in (0, 1] (1 = start from pure noise), got {strength!r}")
    scheduler.set_timesteps(num_inference_steps, device=device)
    count = steps_for_strength(num_inference_steps, strength)
    start = (num_inference_steps - count) * scheduler.order
    if hasattr(scheduler, "set_begin_index"):
        scheduler.set_begin_index(start)
    return scheduler.timesteps[start:]
