"""ControlNets run per frame beside a VideoUNet: diffusers' `ControlNetModel` on `(b f) c h w`.

A ControlNet is a trainable copy of an SD U-Net's encoder that reads a control image (edges, depth, pose) and
returns one residual per skip connection plus one for the mid block; the U-Net adds them where its own skips and
mid-block output are (`VideoUNet.forward(..., down_block_additional_residuals=, mid_block_additional_residual=)`).
For video the ControlNet sees every frame as an image, with the text embedding repeated per frame; its spatial
self-attention may read frame 0's keys and values instead (`cross_frame="first"`, as Text2Video-Zero does), so the
frames' residuals agree with each other.

    read_controlnet    a diffusers ControlNet folder, a hub id, or a single file (+ a local config folder)
    check_fits         the ControlNet's config against the U-Net's: a one-line LoadingError when it does not fit
    VideoControlNet    the ControlNet on video tensors, returning the U-Net's residual keyword arguments
    Control            a ControlNet, its control images and scale: what `VideoPipeline.sample(control=)` takes

    read_record        vidiff-controlnet.json of a ControlNet vidiff trained (how its control images are made)

Any SD 1.x / 2.x ControlNet in diffusers' format (or the original single-file layout) is used as it is; vidiff
trains its own with `vidiff train` (train.trainable=controlnet: vidiff.training.control), saved in that format.

References: Zhang, Rao & Agrawala 2023 (ControlNet); Khachatryan et al. 2023 (Text2Video-Zero).
"""
from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Mapping

import torch
import torch.nn as nn
from diffusers import ControlNetModel
from diffusers.loaders.single_file_utils import convert_controlnet_checkpoint
from einops import rearrange
from huggingface_hub import snapshot_download

from vidiff.models.attention import VideoAttnProcessor
from vidiff.models.loading import load_component
from vidiff.models.weights import (LoadingError, WEIGHT_SUFFIXES, check_state_dict, one_line, read_json,
                                   read_state_dict)
from vidiff.spec import check_cross_frame, check_setting, is_hub_id
from vidiff.utils import quiet_libraries

CLASS_NAME = "ControlNetModel"
# what must agree between a ControlNet and the U-Net it steers: the residuals' count, widths and the text size
FIT_KEYS = ("in_channels", "block_out_channels", "layers_per_block", "cross_attention_dim")
FIX = "give a diffusers ControlNetModel folder (config.json + diffusion_pytorch_model.safetensors)"
# written beside a ControlNet vidiff trained: its extractor, cross-frame mode, the model it steers, its clip size
RECORD_NAME = "vidiff-controlnet.json"


# ------------------------------------------------------------------------------------------------ files
def _config_file(folder: Path) -> Path | None:
    """The ControlNet config.json of a folder: its own, or a pipeline-style `controlnet/config.json`."""
    for candidate in (folder / "config.json", folder / "controlnet" / "config.json"):
        if candidate.is_file():
            return candidate
    return None


def read_controlnet_config(source: str | os.PathLike, config: str | os.PathLike | None = None) -> dict | None:
    """The ControlNet config of a local `source` (a folder, or a single file with `config=` a config.json or the
    folder holding it), read without building a model, or None for a hub id (known once it is fetched).
    FileNotFoundError / LoadingError (one line) for a missing or wrong config."""
    path = Path(source).expanduser()
    if not path.exists():
        if is_hub_id(str(source)):
            return None
        raise FileNotFoundError(f"ControlNet {str(source)!r} does not exist; give a diffusers ControlNet folder, a "
                                "hub id (owner/name) or a single file with its config")
    if path.is_file():
        if config is None:
            raise ValueError(f"{path} is a single-file ControlNet without a config; pass its diffusers "
                             "ControlNetModel config (a config.json or the folder holding it, e.g. a downloaded "
                             "lllyasviel/sd-controlnet-canny folder)")
        if not path.name.lower().endswith(WEIGHT_SUFFIXES):
            raise ValueError(f"{path} is not a weight file ({', '.join(WEIGHT_SUFFIXES)})")
        path = Path(config).expanduser()
    file = path if path.is_file() else _config_file(path)
    if file is None:
        raise FileNotFoundError(f"{path} has no config.json (nor controlnet/config.json); {FIX}")
    data = read_json(file, "a diffusers ControlNetModel config")
    if data.get("_class_name", CLASS_NAME) != CLASS_NAME:
        raise LoadingError(f"{file} describes a {data['_class_name']}, not a {CLASS_NAME}; {FIX}")
    return data


def read_record(source: str | os.PathLike) -> dict:
    """The vidiff-controlnet.json of a local ControlNet folder vidiff trained ({} for any other ControlNet, a
    single file or a hub id); ValueError (one line) when it is not JSON."""
    path = Path(source).expanduser() / RECORD_NAME
    return read_json(path, "a vidiff ControlNet record") if path.is_file() else {}


def _as_tuple(value):
    return tuple(value) if isinstance(value, (list, tuple)) else value


def check_fits(controlnet_config: Mapping, unet_config: Mapping, source: str,
               vae_scale_factor: int | None = None) -> None:
    """LoadingError (one line) unless the ControlNet's residuals fit the U-Net (FIT_KEYS agree; `unet_config`'s
    `in_channels` counts the latent channels) and, given the VAE's factor, its control-image encoder shrinks
    pixels to the latents' size."""
    for key in FIT_KEYS:
        mine, theirs = _as_tuple(controlnet_config.get(key)), _as_tuple(unet_config.get(key))
        if mine != theirs:
            raise LoadingError(f"the ControlNet {source} does not fit this model's U-Net: its {key} is {mine}, the "
                               f"U-Net's {theirs}; use a ControlNet made for the model's base (e.g. an SD 1.5 "
                               "ControlNet for an SD 1.5 model)")
    embedding = controlnet_config.get("conditioning_embedding_out_channels", (16, 32, 96, 256))
    factor = 2 ** (len(embedding) - 1)
    if vae_scale_factor is not None and factor != vae_scale_factor:
        raise LoadingError(f"the ControlNet {source} shrinks control images {factor}x, this model's VAE "
                           f"{vae_scale_factor}x; use a ControlNet made for the model's base")


def _download(repo_id: str) -> Path:
    """Fetch a hub ControlNet's config and weights (safetensors, else .bin: read weights-only)."""
    def fetch(name: str) -> Path:
        try:
            return Path(snapshot_download(repo_id, allow_patterns=["config.json", name]))
        except Exception as error:  # offline, unknown repo, gated repo, network: all end the same way
            raise FileNotFoundError(f"ControlNet {repo_id!r} is not a local path and could not be downloaded from "
                                    f"the Hugging Face Hub ({one_line(error)}); check the id and the connection, "
                                    "or pass a local diffusers ControlNet folder") from None

    root = fetch("diffusion_pytorch_model.safetensors")
    if not (root / "diffusion_pytorch_model.safetensors").is_file():
        root = fetch("diffusion_pytorch_model.bin")
    return root


def _read_single_file(path: Path, config: dict) -> ControlNetModel:
    """A ControlNet in one file (diffusers keys, or the original `control_model.*` layout converted by
    diffusers' own converter), built from its diffusers config."""
    state_dict = read_state_dict(path)
    try:
        state_dict = convert_controlnet_checkpoint(state_dict, config)
    except (KeyError, IndexError) as error:
        raise LoadingError(f"{path} does not match its config ({one_line(error)}); pass the config of the "
                           "ControlNet this file holds") from None
    state_dict = {key: value for key, value in state_dict.items() if value is not None}
    with quiet_libraries():
        model = ControlNetModel.from_config({k: v for k, v in config.items() if not k.startswith("_")})
    check_state_dict(model, state_dict, source=str(path))
    model.load_state_dict(state_dict)
    return model


def read_controlnet(source: str | os.PathLike, *, config: str | os.PathLike | None = None) -> ControlNetModel:
    """A diffusers `ControlNetModel` from a folder (config.json + weights, or a folder with `controlnet/`), a hub
    id, or a single `.safetensors` / weights-only `.ckpt` file with `config=` a local config (nothing unpickled).
    FileNotFoundError / LoadingError, one line naming the file, otherwise."""
    model_config = read_controlnet_config(source, config)
    path = Path(source).expanduser()
    if path.is_file():
        return _read_single_file(path, model_config)
    folder = _download(str(source)) if model_config is None else _config_file(path).parent
    if model_config is None:
        read_controlnet_config(folder)  # a hub repo holding another kind of model
    return load_component(folder.parent, folder.name, ControlNetModel, fix=FIX)


# ------------------------------------------------------------------------------------------------ the model
class VideoControlNet(nn.Module):
    """A diffusers ControlNetModel on video: every frame is one image of the batch.

    Args:
        controlnet: the `ControlNetModel`.
        cross_frame: its spatial self-attention: "none" (per frame), "first" (frame 0's keys and values, as
            Text2Video-Zero), "sparse-causal"; the ControlNet's attention runs through vidiff's
            `VideoAttnProcessor`, numerically diffusers' own.
        attention_backend: "auto" | "sdpa" | "xformers" | "math".
    """

    def __init__(self, controlnet: ControlNetModel, *, cross_frame: str = "none", attention_backend: str = "auto"):
        super().__init__()
        self.controlnet = controlnet.eval()
        self.controlnet.set_attn_processor(VideoAttnProcessor(attention_backend))  # one processor, shared
        self.set_cross_frame(cross_frame)

    @property
    def config(self):
        return self.controlnet.config

    @property
    def dtype(self) -> torch.dtype:
        return self.controlnet.dtype

    @property
    def spatial_factor(self) -> int:
        """Pixels per latent of its control-image encoder."""
        return 2 ** (len(self.config.conditioning_embedding_out_channels) - 1)

    def set_cross_frame(self, mode: str) -> None:
        self.cross_frame = check_cross_frame(mode)
        for processor in self.controlnet.attn_processors.values():
            processor.cross_frame = mode  # (cross-attention reads the text, never frames: it ignores this)

    def forward(self, sample, timestep, encoder_hidden_states, images, scale: float = 1.0):
        """sample `(b, c, f, h, w)` (the U-Net's noisy input), timestep scalar or `(b,)`, encoder_hidden_states
        `(b, L, D)`, images `(b, 3, f, H, W)` in [0, 1] at pixel size -> the U-Net's keyword arguments
        `down_block_additional_residuals` (a tuple of `(b f) c h w`) and `mid_block_additional_residual`,
        multiplied by `scale` (diffusers' `conditioning_scale`)."""
        b, _, f, h, w = sample.shape
        self.set_cross_frame(self.cross_frame)  # another VideoControlNet on the same ControlNet may have set it
        k = self.spatial_factor
        if tuple(images.shape) != (b, 3, f, h * k, w * k):
            raise ValueError(f"control images must have shape {(b, 3, f, h * k, w * k)} (b, 3, f, H, W) for "
                             f"latents {tuple(sample.shape)}, got {tuple(images.shape)}")
        t = timestep if torch.is_tensor(timestep) else torch.tensor(timestep, device=sample.device)
        if t.numel() > 1:  # one per video -> one per frame
            t = t.reshape(-1).repeat_interleave(f)
        down, mid = self.controlnet(
            rearrange(sample, "b c f h w -> (b f) c h w"), t, _per_frame(encoder_hidden_states, f),
            controlnet_cond=rearrange(images, "b c f h w -> (b f) c h w").to(sample.device, self.dtype),
            conditioning_scale=scale, cross_attention_kwargs={"num_frames": f}, return_dict=False)
        return {"down_block_additional_residuals": tuple(down), "mid_block_additional_residual": mid}


@dataclasses.dataclass(frozen=True)
class Control:
    """What one sampling call is steered by: a VideoControlNet, the control images `(b, 3, f, H, W)` in [0, 1]
    (batch 1: the same images for every video) and the residuals' scale."""

    controlnet: VideoControlNet
    images: torch.Tensor
    scale: float = 1.0

    def __post_init__(self):
        check_setting("control_scale", self.scale)
        if self.images.ndim != 5 or self.images.shape[1] != 3:
            raise ValueError(f"control images must have shape (b, 3, f, H, W) in [0, 1], got "
                             f"{tuple(self.images.shape)}")

    def fitted(self, num_videos: int, num_frames: int, height: int, width: int) -> "Control":
        """This control for `num_videos` clips of `num_frames` x `height` x `width` pixels (ValueError if its
        images are not that size); images of batch 1 serve every video."""
        b, _, f, h, w = self.images.shape
        if (f, h, w) != (num_frames, height, width) or b not in (1, num_videos):
            raise ValueError(f"control images must have shape {(num_videos, 3, num_frames, height, width)} "
                             f"(or batch 1), got {tuple(self.images.shape)}")
        return dataclasses.replace(self, images=self.images.expand(num_videos, -1, -1, -1, -1))

    def frames(self, begin: int, end: int) -> "Control":
        """The control of frames begin..end (a temporal window)."""
        return dataclasses.replace(self, images=self.images[:, :, begin:end])

    def residuals(self, sample, timestep, encoder_hidden_states) -> dict:
        """The U-Net's residual keyword arguments for `sample` (a batch of whole copies of the videos: with
        classifier-free guidance the unconditional and the conditional half, each given the same images)."""
        copies = sample.shape[0] // self.images.shape[0]
        images = torch.cat([self.images] * copies) if copies > 1 else self.images
        return self.controlnet(sample, timestep, encoder_hidden_states, images, self.scale)


def _per_frame(encoder_hidden_states, num_frames: int):
    """Text embeddings `(b, L, D)` (one per video) or `(b, f, L, D)` (prompt travel) -> `((b f), L, D)`."""
    if encoder_hidden_states.ndim == 4:
        return rearrange(encoder_hidden_states, "b f l d -> (b f) l d")
    return encoder_hidden_states.repeat_interleave(num_frames, dim=0)
