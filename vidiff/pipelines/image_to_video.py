"""Image-to-video: a given image is frame 0 of the clip, the rest follows the prompt (`image_to_video`).

The image goes through the masked-frame conditioning vidiff's interpolation stage is trained with (Make-A-Video's
masked video input, MCVD's "future" masks): its latent is the one known frame of a first-frame-only mask and
the stage generates the frames after it. A clip longer than the stage's window grows chunk by chunk as
`vidiff extend` grows clips, the later chunks knowing the last half window. With a cascade, the first stage that
extends makes the clip and the stages after it (SSR, TSR) run on it as they do in `generate --cascade`.

Frame 0 of the output is the image's own pixels (fitted to the output size: resized to cover it, aspect kept,
then centre-cropped), in pixel-space and latent models alike: the model is conditioned on the image's latent
(its VAE round trip, in latent models), and the known frame's generated value is replaced by the image.

References: Singer et al. 2022 (Make-A-Video, masked frame conditioning); Voleti et al. 2022 (MCVD).
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
from einops import rearrange

from vidiff.data.video_io import IMAGE_SUFFIXES, VideoReadError, read_image, read_video
from vidiff.pipelines.cascade import CascadePipeline, run_stage
from vidiff.pipelines.editing import fit_frames
from vidiff.pipelines.text_to_video import make_generators
from vidiff.spec import check_request_size, check_setting
from vidiff.stages import stage_for
from vidiff.stages.cascade import check_pixels, check_stage_settings
from vidiff.stages.conditions import spatial_downsample


# ---------------------------------------------------------------------------------------------------------------
# The image
# ---------------------------------------------------------------------------------------------------------------
def read_first_frame(path: str | os.PathLike) -> np.ndarray:
    """uint8 `(h, w, 3)` of an image file (png / jpg / webp / bmp) or a video's first frame; VideoReadError
    (a ValueError naming the file and the reason) when it cannot be read."""
    path = Path(path)
    if path.suffix.lower() in IMAGE_SUFFIXES:
        return read_image(path)[0]
    try:
        return read_video(path, indices=[0]).frames[0]
    except VideoReadError:
        if path.suffix:  # a named video format that failed: its own reason
            raise
    return read_image(path)[0]  # (no suffix: try it as an image)


def as_image(image) -> np.ndarray:
    """uint8 `(h, w, 3)` from a path, a PIL image, a uint8 array `(h, w, 3)` or a tensor `(3, h, w)` in [-1, 1]."""
    if isinstance(image, (str, os.PathLike)):
        return read_first_frame(image)
    if hasattr(image, "convert") and hasattr(image, "size"):  # a PIL image
        return np.asarray(image.convert("RGB"), dtype=np.uint8).copy()
    if isinstance(image, torch.Tensor):
        if image.ndim != 3 or image.shape[0] != 3:
            raise ValueError(f"an image tensor must be (3, h, w) in [-1, 1], got {tuple(image.shape)}")
        pixels = ((image.detach().float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
        return pixels.permute(1, 2, 0).cpu().numpy()
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[-1] != 3 or image.dtype != np.uint8:
        raise ValueError(f"an image must be uint8 (h, w, 3) (or a path / PIL image), got {image.dtype} "
                         f"{image.shape}")
    return np.array(image)  # (a copy: PIL's arrays are read-only)


def fit_image(image, height: int, width: int) -> np.ndarray:
    """uint8 `(height, width, 3)`: the image resized to cover the size (aspect kept, antialiased), centre-cropped
    (the rule `vidiff edit` fits clips by and the datasets' evaluation transform)."""
    return fit_frames(as_image(image)[None], height, width)[0]


# ---------------------------------------------------------------------------------------------------------------
# Which stage, and the checks before sampling (torch-free on the folder's vidiff.json)
# ---------------------------------------------------------------------------------------------------------------
def check_first_frame_stage(stage, info, num_frames: int, where: str) -> None:
    """The stage can make `num_frames` frames from one known first frame (an interpolation stage trained with
    future-prediction masks); ValueError naming `where` and the fix otherwise."""
    check_setting("num_frames", num_frames)
    if num_frames < 2:
        raise ValueError(f"image-to-video makes at least 2 frames (the image and one more), got {num_frames}")
    window = stage.window(info)
    try:  # the first window from the image alone, then (a longer clip) extension's chunks
        stage.check_extension(info, 1, min(num_frames, window) - 1, 1, None)
        if num_frames > window:
            stage.check_extension(info, window, num_frames - window, None, None)
    except ValueError as e:
        raise ValueError(f"{where} cannot start a clip from an image: {e}") from None


def first_frame_stage(specs) -> int:
    """Index of the first cascade stage (`StageSpec`s) that can start a clip from an image; ValueError if none."""
    for i, spec in enumerate(specs):
        try:
            check_first_frame_stage(spec.stage, spec.info, 2, spec.where(i))
            return i
        except ValueError:
            continue
    raise ValueError("no stage of this cascade can start a clip from an image: image-to-video needs an "
                     "interpolation stage trained with first-frame or future-prediction masks (stage.mask_modes "
                     "with 'first' or 'future')")


# ---------------------------------------------------------------------------------------------------------------
# Sampling
# ---------------------------------------------------------------------------------------------------------------
def _prompts(prompt, count: int) -> list[str]:
    prompts = [prompt] * count if isinstance(prompt, str) else list(prompt)
    if len(prompts) != count or not all(isinstance(p, str) for p in prompts):
        raise ValueError(f"give one prompt, or one per image ({count}), got {prompt!r}")
    return prompts


def _first_frames(images, height: int, width: int, device) -> torch.Tensor:
    """`(b, 3, 1, height, width)` in [-1, 1] from one image or a list of them, each fitted to the size."""
    images = images if isinstance(images, (list, tuple)) else [images]
    if not images:
        raise ValueError("give at least one image")
    frames = torch.from_numpy(np.stack([fit_image(image, height, width) for image in images]))
    return (rearrange(frames, "b h w c -> b c 1 h w").float() / 127.5 - 1).to(device)


def grow_from_frame(pipe, first: torch.Tensor, prompts: list[str], *, num_frames: int, generators,
                    settings: dict) -> torch.Tensor:
    """`(b, 3, num_frames, h, w)` from first frames `(b, 3, 1, h, w)` with the stage of `pipe`: its window after a
    first-frame-only mask, then (past the window) `extend`'s chunks, each knowing the last half window."""
    stage = stage_for(pipe.info)
    window = stage.window(pipe.info)
    first_chunk = min(window - 1, num_frames - 1)
    video = stage.extend(pipe, first, prompts, num_frames=first_chunk, context_frames=1, new_per_chunk=None,
                         generators=generators, settings=settings)
    if num_frames > video.shape[2]:
        video = stage.extend(pipe, video, prompts, num_frames=num_frames - video.shape[2], context_frames=None,
                             new_per_chunk=None, generators=generators, settings=settings)
    return video


@torch.no_grad()
def image_to_video(pipe, image, prompt, *, num_frames: int | None = None, height: int | None = None,
                   width: int | None = None, generator=None, seed: int | None = None, allow_large: bool = False,
                   **settings) -> torch.Tensor:
    """A clip whose frame 0 is `image` and whose other frames follow `prompt`.

    `pipe`: a `VideoPipeline` of an interpolation stage trained with future-prediction masks, or a
    `CascadePipeline` (its first such stage makes the clip, the stages after it run on it). `image`: a path (an
    image, or a video's first frame), a PIL image, uint8 `(h, w, 3)`, a tensor `(3, h, w)` in [-1, 1], or a list
    of them (one clip each; `prompt` then one string or one per image). `num_frames` / `height` / `width` are the
    stage's (default: its window and its folder's size; a cascade's later stages scale them); the image is fitted
    to the output size (cover, centre crop) and is frame 0 of the output exactly. `settings`: steps, guidance,
    scheduler, negative_prompt, progress. Returns `(b, 3, frames, H, W)` in [-1, 1]."""
    check_stage_settings(settings)
    if isinstance(pipe, CascadePipeline):
        return _cascade_from_image(pipe, image, prompt, num_frames=num_frames, height=height, width=width,
                                   generator=generator, seed=seed, allow_large=allow_large, **settings)
    stage, d = stage_for(pipe.info), pipe.defaults
    num_frames, height, width = num_frames or stage.window(pipe.info), height or d.height, width or d.width
    check_first_frame_stage(stage, pipe.info, num_frames, "this model")
    check_pixels(pipe.info, height, width, "this model", what="the clip")
    first = _first_frames(image, height, width, pipe.device)                                  # (b, 3, 1, h, w)
    b = first.shape[0]
    check_request_size([("the clip", num_frames, height, width, b)], allow_large)
    return grow_from_frame(pipe, first, _prompts(prompt, b), num_frames=num_frames,
                           generators=make_generators(b, generator, seed), settings=settings)


def _cascade_from_image(cascade, image, prompt, *, num_frames, height, width, generator, seed, allow_large,
                        **settings) -> torch.Tensor:
    """The cascade's first extending stage from the image (fitted to the cascade's output size, reduced by area
    to that stage's size), then every later stage; frame 0 of the output is the fitted image."""
    specs, index = cascade.specs, first_frame_stage(cascade.specs)
    spec, pipe = specs[index], cascade.pipelines[index]
    d = pipe.defaults
    num_frames, height, width = num_frames or spec.stage.window(spec.info), height or d.height, width or d.width
    check_first_frame_stage(spec.stage, spec.info, num_frames, spec.where(index))
    sizes = [(num_frames, height, width)]
    for i, later in enumerate(specs[index + 1:], index + 1):
        sizes.append(later.stage.output_size(later.info, sizes[-1], later.factor, later.where(i)))
    scale = sizes[-1][1] // height
    if (sizes[-1][1], sizes[-1][2]) != (height * scale, width * scale):
        raise ValueError(f"the stages after {spec.where(index)} scale height and width differently")
    exact = _first_frames(image, height * scale, width * scale, pipe.device)                   # (b, 3, 1, H, W)
    b = exact.shape[0]
    check_request_size([(f"the output of stage {index + i}", *size, b) for i, size in enumerate(sizes)], allow_large)
    first = spatial_downsample(exact, scale) if scale > 1 else exact  # (what an SSR stage learned low-res is)
    prompts = _prompts(prompt, b)
    video = grow_from_frame(pipe, first, prompts, num_frames=num_frames,
                            generators=make_generators(b, generator, seed), settings=settings)
    for later, later_pipe in zip(specs[index + 1:], cascade.pipelines[index + 1:]):
        video = run_stage(later_pipe, video, prompts, factor=later.factor, noise_level=later.noise_level,
                          generator=make_generators(b, generator, seed), steps=later.steps, guidance=later.guidance,
                          scheduler=later.scheduler, negative_prompt=settings.get("negative_prompt"),
                          progress=settings.get("progress", True), allow_large=True)
    video[:, :, :1] = exact.to(video.device, video.dtype)  # frame 0 is the image, not its trip through the stages
    return video
