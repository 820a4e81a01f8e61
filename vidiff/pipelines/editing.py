"""Text-driven video editing and training-free text-to-video, on the shared `VideoPipeline` steps.

Editing (`vidiff edit`) takes a clip and a new prompt and returns the clip redrawn to the prompt, keeping its
layout and motion. The clip's latents are mapped back to noise by DDIM inversion with the source prompt, then
each target prompt is sampled from that noise through the pipeline's own `denoise`:

    zero-shot  no training; spatial self-attention reads frame 0 ("first") or frames 0 and i - 1
               ("sparse-causal") while inverting and sampling, which keeps the frames' appearance consistent
               (Text2Video-Zero, Khachatryan et al. 2023)
    tune       Tune-A-Video (Wu et al. 2023): sample a model fitted to the clip first (its temporal layers and
               attention query projections, with the source prompt and sparse-causal attention: the trainer's
               `fit`, run by vidiff.training.tune.tune_and_edit); several prompts share one inversion

`strength` is the lighter alternative to inversion: SDEdit (Meng et al. 2022) noises the clip's latents to the
timestep a fraction `strength` up the schedule and denoises from there (0 returns the clip, 1 is plain generation
from the seed). Inverted latents can be cached next to the output and are reused when the same clip, model and
settings come back (`InversionCache`).

Training-free text-to-video (`zero_shot_generate`, `vidiff generate --zero-shot`) makes a clip with an inflated
image model whose temporal layers are untrained: frame 0's latent is denoised alone down to an intermediate
timestep t', copied to every frame k translated by k * (dx, dy) (the motion field), and all frames are then
denoised together with cross-frame attention on frame 0 (Text2Video-Zero's motion dynamics in latent codes).

References: Song et al. 2021 (DDIM, its deterministic ODE and its inversion); Mokady et al. 2023 (DDIM inversion
with guidance 1 for editing); Wu et al. 2023 (Tune-A-Video); Khachatryan et al. 2023 (Text2Video-Zero); Meng et
al. 2022 (SDEdit).
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import time
import warnings
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from einops import rearrange, repeat
from safetensors import safe_open

from vidiff.data.datasets import cover_size, crop_offsets
from vidiff.pipelines.text_to_video import make_generators, timesteps_for_strength
from vidiff.progress import ProgressBar
from vidiff.spec import check_choice, check_cross_frame, check_setting
from vidiff.utils import save_safetensors_atomic, write_json_atomic

EDIT_METHODS = ("zero-shot", "tune")
# The cross-frame attention each method samples with unless told otherwise.
DEFAULT_CROSS_FRAME = {"zero-shot": "first", "tune": "sparse-causal"}
# Text2Video-Zero warps frame 0 at T' = 881 of 1000 training steps (its paper, section 3.3): late enough for
# frame 0's layout to have formed, early enough for the warped frames to be redrawn consistently.
MOTION_TIMESTEP_FRACTION = 0.881
INVERSION_FORMAT = "vidiff-inversion-1"


# ---------------------------------------------------------------------------------------------------------------
# Helpers: the clip at the model's size, its fingerprint, the eps of a prediction
# ---------------------------------------------------------------------------------------------------------------
def fit_frames(frames: np.ndarray, height: int, width: int) -> np.ndarray:
    """uint8 `(f, h, w, 3)` resized (aspect kept, antialiased) to cover `height x width`, then centre-cropped.

    The same cover-then-centre-crop rule as the datasets' evaluation transform, so a clip is seen as training
    saw clips."""
    f, h, w, _ = frames.shape
    if (h, w) != (height, width):
        new_h, new_w = cover_size(h, w, height, width)
        if (new_h, new_w) != (h, w):
            video = rearrange(torch.from_numpy(np.ascontiguousarray(frames)), "f h w c -> f c h w").float()
            video = F.interpolate(video, size=(new_h, new_w), mode="bilinear", antialias=True, align_corners=False)
            frames = rearrange(video.round().clamp(0, 255).to(torch.uint8), "f c h w -> f h w c").numpy()
        top, left = crop_offsets(new_h, new_w, height, width, None)
        frames = frames[:, top:top + height, left:left + width]
    return np.ascontiguousarray(frames)


def clip_hash(frames: np.ndarray) -> str:
    """sha256 of a clip's pixels and shape: the inversion cache's key for "the same clip"."""
    frames = np.ascontiguousarray(frames)
    digest = hashlib.sha256(repr((frames.shape, str(frames.dtype))).encode())
    digest.update(frames.tobytes())
    return digest.hexdigest()


def model_fingerprint(directory: str | os.PathLike) -> dict:
    """What identifies a pipeline folder's weights without reading them: its path, vidiff.json, and the
    size and modification time of every U-Net, VAE and text-encoder file (a retrained model changes them)."""
    directory = Path(directory).resolve()
    files = {}
    for part in ("unet", "vae", "text_encoder"):
        for path in sorted((directory / part).glob("*")) if (directory / part).is_dir() else []:
            stat = path.stat()
            files[f"{part}/{path.name}"] = [stat.st_size, stat.st_mtime_ns]
    info = directory / "vidiff.json"
    info_hash = hashlib.sha256(info.read_bytes()).hexdigest() if info.is_file() else None
    return {"path": str(directory), "vidiff_json": info_hash, "files": files}


def to_epsilon(output: torch.Tensor, sample: torch.Tensor, alpha_prod: float, prediction_type: str) -> torch.Tensor:
    """The noise a model output stands for, at a noise level alpha_prod (epsilon, v or x0 prediction)."""
    if prediction_type == "epsilon":
        return output
    if prediction_type == "v_prediction":  # v = sqrt(a) eps - sqrt(1 - a) x0  (Salimans & Ho 2022)
        return math.sqrt(alpha_prod) * output + math.sqrt(1 - alpha_prod) * sample
    if prediction_type == "sample":
        return (sample - math.sqrt(alpha_prod) * output) / math.sqrt(1 - alpha_prod)
    raise ValueError(f"unknown prediction_type {prediction_type!r}")


# ---------------------------------------------------------------------------------------------------------------
# DDIM inversion
# ---------------------------------------------------------------------------------------------------------------
def inverse_ddim_step(eps: torch.Tensor, sample: torch.Tensor, alpha_from: float, alpha_to: float) -> torch.Tensor:
    """One inverse DDIM step (Song et al. 2021, eq. 13 run upwards): from x at noise level alpha_from to the
    higher level alpha_to < alpha_from, along the deterministic ODE, with the noise estimate `eps`:

        x0   = (x - sqrt(1 - a_from) eps) / sqrt(a_from)
        x_to = sqrt(a_to) x0 + sqrt(1 - a_to) eps
    """
    x0 = (sample - math.sqrt(1 - alpha_from) * eps) / math.sqrt(alpha_from)
    return math.sqrt(alpha_to) * x0 + math.sqrt(1 - alpha_to) * eps


def inversion_levels(sampler, num_inference_steps: int) -> list[tuple[int, float, float]]:
    """(timestep, alpha_from, alpha_to) of each inverse step, lowest noise first: the exact reverse of the DDIM
    sampler's steps, so DDIM sampling from the result retraces them. DDIM steps from t to t - T // n, and its last
    step lands on `final_alpha_cumprod`; the inversion starts there and climbs to each sampling timestep."""
    sampler.set_timesteps(num_inference_steps)
    alphas = sampler.alphas_cumprod
    step = sampler.config.num_train_timesteps // num_inference_steps
    levels = []
    for t in reversed(sampler.timesteps.tolist()):
        previous = t - step
        alpha_from = float(alphas[previous]) if previous >= 0 else float(sampler.final_alpha_cumprod)
        levels.append((int(t), alpha_from, float(alphas[t])))
    return levels


@torch.no_grad()
def ddim_invert(pipe, latents: torch.Tensor, embeddings: torch.Tensor, num_inference_steps: int, *,
                progress: bool = True) -> torch.Tensor:
    """DDIM inversion: clean latents `(b, c, f, h, w)` -> the noise x_T that deterministic DDIM sampling with
    `num_inference_steps` steps maps back to them (exactly, up to the model's eps changing between neighbouring
    levels: the error falls as the steps grow).

    Guidance is 1 while inverting (the conditional prediction only, `embeddings`: the source prompt's or the
    empty prompt's), as in Mokady et al. 2023: guided inversion amplifies its own error step after step. The
    U-Net runs with its current cross-frame attention mode; invert and sample with the same one.
    """
    sampler = pipe.make_scheduler("ddim")
    prediction_type = sampler.config.prediction_type
    x = latents.to(pipe.device, torch.float32)
    text = embeddings.to(pipe.device, pipe.dtype)
    for t, alpha_from, alpha_to in ProgressBar(inversion_levels(sampler, num_inference_steps), desc="inverting",
                                        disable=not progress):
        timestep = torch.tensor(t, device=pipe.device)
        output = pipe.unet(x.to(pipe.dtype), timestep, text).float()
        # The eps is estimated at the level we start from but the model is told t (the level we go to): the
        # standard approximation, which is why the inversion needs enough steps to be close.
        eps = to_epsilon(output, x, alpha_to, prediction_type)
        x = inverse_ddim_step(eps, x, alpha_from, alpha_to)
    return x


# ---------------------------------------------------------------------------------------------------------------
# SDEdit: partial noising as the light alternative to inversion
# ---------------------------------------------------------------------------------------------------------------
def sdedit_start(pipe, latents: torch.Tensor, strength: float, num_inference_steps: int, *,
                 generators: list[torch.Generator]):
    """(x_t, timesteps, sampler) to `denoise` from for SDEdit at `strength` (Meng et al. 2022): the clip's
    latents noised to the first of the last `strength` part of the DDIM timesteps with the seed's noise.

    strength 0 returns the latents with no timesteps (nothing to denoise); strength 1 starts from the seed's pure
    noise, exactly as plain generation does (x_T ~ N(0, I), the input forgotten)."""
    strength = float(check_setting("strength", strength))
    sampler = pipe.make_scheduler("ddim")
    b, _, f, h, w = latents.shape
    k = pipe.vae_scale_factor
    noise = pipe.prepare_latents(b, f, h * k, w * k, generators=generators)  # the seed's draw, as generation's
    if strength == 0:
        sampler.set_timesteps(num_inference_steps, device=pipe.device)
        return latents.to(pipe.device, torch.float32), sampler.timesteps[:0], sampler
    timesteps = timesteps_for_strength(sampler, num_inference_steps, strength, device=pipe.device)
    if strength == 1:
        return noise * sampler.init_noise_sigma, timesteps, sampler
    start = sampler.add_noise(latents.to(pipe.device, torch.float32), noise, timesteps[:1])
    return start, timesteps, sampler


# ---------------------------------------------------------------------------------------------------------------
# Tune-A-Video: keeping a tuned model (the tuning itself: vidiff.training.tune)
# ---------------------------------------------------------------------------------------------------------------
def save_tuned(pipe, directory: str | os.PathLike, record: dict) -> Path:
    """Keep a tuned model as a pipeline folder (sparse-causal by default, the tuning recorded in vidiff.json)."""
    info = pipe.info.with_defaults(cross_frame="sparse-causal")
    info = replace(info, extra={**info.extra, "tuned_on": record})
    previous, pipe.info = pipe.info, info
    try:
        with pipe.temporary_cross_frame("sparse-causal"):
            return pipe.save_pretrained(directory)
    finally:
        pipe.info = previous


# ---------------------------------------------------------------------------------------------------------------
# The inversion cache
# ---------------------------------------------------------------------------------------------------------------
@dataclass
class InversionCache:
    """Inverted latents kept next to an output: `<stem>.inversion.safetensors` (the latents, the key in its
    metadata) and `<stem>.inversion.json` (the key, readable). The key names the clip (pixel hash), the model
    (`model_fingerprint`) and every setting the inversion depends on; a file is reused only when both copies of
    the key equal the wanted one, so a crash between the two writes can never pair new latents with an old key."""

    path: Path          # the .safetensors file
    loads: int = 0      # how often `load` found a match (tests count reuse with this)

    @classmethod
    def beside(cls, out: str | os.PathLike) -> "InversionCache":
        out = Path(out)
        return cls(out.with_name(f"{out.stem}.inversion.safetensors"))

    @property
    def key_path(self) -> Path:
        return self.path.with_suffix(".json")

    def check_writable(self) -> None:
        """Refuse to replace a file vidiff did not write (utils.check_replaceable's rule, for files)."""
        for path in (self.path, self.key_path):
            if path.is_dir():
                raise ValueError(f"the inversion cache {path} would replace a folder; move it or choose another --out")
        if self.key_path.exists() and self._stored_key() is None:
            raise ValueError(f"{self.key_path} exists and is not a vidiff inversion key; move it or choose "
                             "another --out")

    def _stored_key(self) -> dict | None:
        try:
            data = json.loads(self.key_path.read_text())
        except (OSError, ValueError):
            return None
        return data if isinstance(data, dict) and data.get("format") == INVERSION_FORMAT else None

    def load(self, key: dict) -> torch.Tensor | None:
        """The cached latents for `key`, or None (no file, another key; a damaged file or latents that are not
        what the key says, float32 of its `shape` and finite, are recomputed with a warning, never used)."""
        wanted = dict(key, format=INVERSION_FORMAT)
        if self._stored_key() != wanted or not self.path.is_file():
            return None
        try:
            with safe_open(str(self.path), framework="pt") as handle:
                if json.loads((handle.metadata() or {}).get("key", "null")) != wanted:
                    return None
                latents = handle.get_tensor("latents")
        except Exception as e:  # a damaged cache is recomputed, never trusted
            return self._refuse(f"is unreadable ({type(e).__name__})")
        shape = list(key.get("shape") or latents.shape)
        if list(latents.shape) != shape or latents.dtype != torch.float32:
            return self._refuse(f"holds {str(latents.dtype).replace('torch.', '')} latents of shape "
                                f"{list(latents.shape)}, but its key says float32 of shape {shape}")
        if not bool(torch.isfinite(latents).all()):
            return self._refuse("holds NaN or infinite latents")
        self.loads += 1
        return latents

    def _refuse(self, problem: str) -> None:
        warnings.warn(f"the inversion cache {self.path} {problem}; inverting the clip again (it will be "
                      "replaced)", stacklevel=3)
        return None

    def save(self, key: dict, latents: torch.Tensor) -> None:
        wanted = dict(key, format=INVERSION_FORMAT)
        save_safetensors_atomic({"latents": latents.detach().float().cpu().contiguous()}, self.path,
                                metadata={"key": json.dumps(wanted, sort_keys=True)})
        write_json_atomic(self.key_path, wanted)


# ---------------------------------------------------------------------------------------------------------------
# Editing
# ---------------------------------------------------------------------------------------------------------------
@dataclass
class EditResult:
    videos: list[torch.Tensor]                      # one (1, 3, f, h, w) in [-1, 1] per target prompt
    latents: torch.Tensor                           # the clip's latents (1, c, f, h', w')
    start: torch.Tensor | None = None               # what sampling started from (inverted or SDEdit-noised)
    tune_losses: list[float] = field(default_factory=list)
    reconstruction_loss: tuple[float, float] | None = None  # (before, after) tuning
    inversion_cached: bool = False                  # the inversion came from the cache
    timings: dict = field(default_factory=dict)     # seconds: encode, tune, tune_loss, invert, sample, decode


def check_edit_options(method: str, cross_frame: str | None) -> str:
    """The cross-frame mode for `method` (its default when None); ValueError for unknown names."""
    check_choice("method", method, EDIT_METHODS)
    return check_cross_frame(cross_frame or DEFAULT_CROSS_FRAME[method])


@contextlib.contextmanager
def _timed(timings: dict, part: str):
    start = time.perf_counter()
    try:
        yield
    finally:
        timings[part] = timings.get(part, 0.0) + time.perf_counter() - start


def edit_video(pipe, frames, prompts: list[str] | str, *, source_prompt: str = "", method: str = "zero-shot",
               cross_frame: str | None = None, num_inference_steps: int | None = None,
               guidance_scale: float | None = None, negative_prompt: str | None = None, seed: int = 0,
               strength: float | None = None, cache: InversionCache | None = None, cache_key: dict | None = None,
               latents: torch.Tensor | None = None, progress: bool = True, control=None) -> EditResult:
    """Edit one clip to each of `prompts`.

    frames: uint8 `(f, h, w, 3)` at a size the model takes (`fit_frames`), or pixels `(1, 3, f, h, w)` in [-1, 1]
        (`latents`: the clip already encoded).
    method: "zero-shot", or "tune" for a model tuned on the clip (vidiff.training.tune.tune_and_edit tunes and
        then calls this; a `--tuned` folder is one). cross_frame: attention while inverting and sampling (default
        "first" for zero-shot, "sparse-causal" for tune).
    strength: None inverts the clip (DDIM inversion, guidance 1, `source_prompt` or "" for the empty prompt);
        a number in [0, 1] noises it instead (SDEdit).
    cache / cache_key: reuse or store the inverted latents (the key must name the clip, the model and anything
        else that changes them, e.g. the tuning; the inversion settings are added here).
    Sampling is deterministic DDIM with `guidance_scale` (default: the model's).
    control: a `vidiff.control.Control` steering the sampling (not the inversion): a ControlNet on control images
        `(1, 3, f, H, W)` of the clip's size, e.g. the clip's own edges or track (Gen-1's edit: the source's
        structure, the prompt's content).
    """
    prompts = [prompts] if isinstance(prompts, str) else list(prompts)
    if not prompts or not all(isinstance(p, str) for p in prompts):
        raise ValueError(f"prompts must be a non-empty list of strings, got {prompts!r}")
    cross_frame = check_edit_options(method, cross_frame)
    check_setting("strength", strength)
    settings = pipe.resolve_settings(num_inference_steps=num_inference_steps, guidance_scale=guidance_scale)
    timings: dict[str, float] = {}
    with _timed(timings, "encode"):
        latents = pipe.encode_video(frames) if latents is None else latents                # (1, c, f, h', w')
        source = pipe.encode_prompt([source_prompt])
    with pipe.temporary_cross_frame(cross_frame):
        start, cached = None, False
        if strength is None:
            key = dict(cache_key or {}, source_prompt=source_prompt, steps=settings.num_inference_steps,
                       cross_frame=cross_frame, method=method, seed=seed, shape=list(latents.shape))
            start, cached = _inverted(pipe, latents, source, settings.num_inference_steps, cache, key, timings,
                                      progress)
        if control is not None:
            k = pipe.vae_scale_factor
            control = control.fitted(1, latents.shape[2], latents.shape[3] * k, latents.shape[4] * k)
        videos = [_edit_one(pipe, latents, start, prompt, settings, strength=strength, seed=seed,
                            negative_prompt=negative_prompt, timings=timings, progress=progress, control=control)
                  for prompt in prompts]
    return EditResult(videos=videos, latents=latents, start=start, inversion_cached=cached, timings=timings)


def _inverted(pipe, latents, source, steps: int, cache, key: dict, timings: dict, progress: bool):
    """(the clip's DDIM inversion, whether it came from `cache`); computed and stored when not cached."""
    start = cache.load(key) if cache is not None else None
    if start is not None:
        return start.to(pipe.device, torch.float32), True
    with _timed(timings, "invert"):
        start = ddim_invert(pipe, latents, source, steps, progress=progress)
    if cache is not None:
        cache.save(key, start)
    return start.to(pipe.device, torch.float32), False


def _edit_one(pipe, latents, inverted, prompt: str, settings, *, strength, seed: int, negative_prompt, timings,
              progress: bool, control=None) -> torch.Tensor:
    """One target prompt: DDIM from the inverted noise, or SDEdit from the noised clip (the noise drawn per
    prompt from the same seed: each edit alike). Returns pixels `(1, 3, f, h, w)`."""
    steps = settings.num_inference_steps
    generators = make_generators(1, seed=seed)
    if strength is not None:
        start, timesteps, sampler = sdedit_start(pipe, latents, strength, steps,
                                                 generators=make_generators(1, seed=seed))
    else:
        sampler = pipe.make_scheduler("ddim")  # a fresh run of the sampler the inversion reverses
        start, timesteps = inverted, timesteps_for_strength(sampler, steps, 1.0, device=pipe.device)
    with _timed(timings, "sample"):
        text = pipe.encode_prompt([prompt])
        negative = pipe.encode_prompt([negative_prompt or ""]) if settings.guided else None
        edited = pipe.denoise(start, text, timesteps, guidance_scale=settings.guidance_scale,
                              negative_embeddings=negative, scheduler=sampler, generators=generators,
                              progress=progress, control=control)
    with _timed(timings, "decode"):
        return pipe.decode(edited)


# ---------------------------------------------------------------------------------------------------------------
# Training-free text-to-video (Text2Video-Zero)
# ---------------------------------------------------------------------------------------------------------------
def parse_motion_field(text: str) -> tuple[float, float]:
    """"dx,dy" (pixels per frame, x to the right, y down) -> (dx, dy); ValueError naming the value."""
    parts = str(text).split(",")
    try:
        if len(parts) != 2:
            raise ValueError
        dx, dy = (float(p) for p in parts)
    except ValueError:
        raise ValueError(f"motion field must be two numbers 'dx,dy' (pixels per frame, e.g. 8,0), got {text!r}") \
            from None
    if not (math.isfinite(dx) and math.isfinite(dy)):
        raise ValueError(f"motion field must be finite, got {text!r}")
    return dx, dy


def translate_frames(first: torch.Tensor, num_frames: int, shift: tuple[float, float]) -> torch.Tensor:
    """`(b, c, h, w)` -> `(b, c, f, h, w)`: frame k is `first` translated by k * shift (dx, dy in cells of the
    grid, right and down), sampled bilinearly; cells that come from outside the grid mirror the inside
    (reflection padding: the latents keep their statistics, no constant border)."""
    b, c, h, w = first.shape
    k = torch.arange(num_frames, dtype=torch.float32, device=first.device)
    ys, xs = torch.meshgrid(torch.arange(h, dtype=torch.float32, device=first.device),
                            torch.arange(w, dtype=torch.float32, device=first.device), indexing="ij")
    # Frame k at (x, y) shows the first frame at (x - k dx, y - k dy): the content moves by +k (dx, dy).
    src_x = xs[None] - k[:, None, None] * shift[0]                                             # (f, h, w)
    src_y = ys[None] - k[:, None, None] * shift[1]
    grid = torch.stack([2 * src_x / max(w - 1, 1) - 1, 2 * src_y / max(h - 1, 1) - 1], dim=-1)   # (f, h, w, 2)
    frames = repeat(first.float(), "b c h w -> (b f) c h w", f=num_frames)
    grid = repeat(grid, "f h w two -> (b f) h w two", b=b)
    warped = F.grid_sample(frames, grid, mode="bilinear", padding_mode="reflection", align_corners=True)
    return rearrange(warped, "(b f) c h w -> b c f h w", b=b).to(first.dtype)


def motion_split(timesteps: torch.Tensor, num_train_timesteps: int, motion_timestep: int | None) -> int:
    """How many of the (descending) `timesteps` frame 0 is denoised alone: those above t' (`motion_timestep`,
    default Text2Video-Zero's 0.881 T)."""
    t_prime = round(MOTION_TIMESTEP_FRACTION * num_train_timesteps) if motion_timestep is None else motion_timestep
    if isinstance(t_prime, bool) or not isinstance(t_prime, int) or not 0 <= t_prime < num_train_timesteps:
        raise ValueError(f"motion_timestep must be an integer in [0, {num_train_timesteps}), got {t_prime!r}")
    return int((timesteps > t_prime).sum())


@torch.no_grad()
def zero_shot_generate(pipe, prompt: str, *, motion_field: tuple[float, float] = (8.0, 0.0),
                       num_frames: int | None = None, height: int | None = None, width: int | None = None,
                       num_inference_steps: int | None = None, guidance_scale: float | None = None,
                       negative_prompt: str | None = None, seed: int = 0, cross_frame: str = "first",
                       motion_timestep: int | None = None, progress: bool = True, callback=None) -> torch.Tensor:
    """Text2Video-Zero (Khachatryan et al. 2023): a clip from an image model without video training.

    1. x_T for frame 0 from the seed; DDIM-denoise frame 0 alone down to t' (`motion_timestep`).
    2. Frame k's latent = frame 0's at t' translated by k * `motion_field` (dx, dy pixels per frame, converted
       to latent cells): global motion written into the latent codes.
    3. Denoise all frames from t' together, spatial self-attention reading frame 0's keys and values
       (`cross_frame="first"`), so every frame keeps frame 0's appearance.
    Returns pixels `(1, 3, f, H, W)` in [-1, 1]. `callback(stage, latents)` sees the latents after steps 1 and 2
    ("first", "warped") and at the end ("final").
    """
    s = pipe.resolve_settings(num_frames=num_frames, height=height, width=width,
                              num_inference_steps=num_inference_steps, guidance_scale=guidance_scale,
                              cross_frame=cross_frame)
    dx, dy = motion_field
    generators = make_generators(1, seed=seed)
    text = pipe.encode_prompt([prompt])
    negative = pipe.encode_prompt([negative_prompt or ""]) if s.guided else None
    sampler = pipe.make_scheduler("ddim")
    timesteps = timesteps_for_strength(sampler, s.num_inference_steps, 1.0, device=pipe.device)
    split = motion_split(timesteps, sampler.config.num_train_timesteps, motion_timestep)

    # 1. Frame 0 alone from T to t'.
    first = pipe.prepare_latents(1, 1, s.height, s.width, generators=generators, scheduler=sampler)
    first = pipe.denoise(first, text, timesteps[:split], guidance_scale=s.guidance_scale,
                         negative_embeddings=negative, scheduler=sampler, progress=progress)
    if callback is not None:
        callback("first", first)
    # 2. Motion dynamics: translate frame 0's latent by k * (dx, dy) for frame k.
    cells = pipe.vae_scale_factor
    latents = translate_frames(first[:, :, 0], s.num_frames, (dx / cells, dy / cells))
    if callback is not None:
        callback("warped", latents)
    # 3. All frames from t' with cross-frame attention on frame 0 (a fresh sampler told where the run begins).
    sampler = pipe.make_scheduler("ddim")
    remaining = timesteps_for_strength(sampler, s.num_inference_steps, 1.0, device=pipe.device)[split:]
    with pipe.temporary_cross_frame(s.cross_frame):
        latents = pipe.denoise(latents, text, remaining, guidance_scale=s.guidance_scale,
                               negative_embeddings=negative, scheduler=sampler, progress=progress,
                               window_size=s.window_size, window_stride=s.window_stride)
    if callback is not None:
        callback("final", latents)
    return pipe.decode(latents, s.decode_chunk_size)
