"""Training a ControlNet for a video U-Net (train.trainable=controlnet, the config's `control:` section).

    vidiff train configs/train/controlnet.yaml            (configs/train/demo-controlnet.yaml: the demo's)

The model's U-Net stays frozen; a ControlNet beside it (ControlNet's recipe: a copy of the U-Net's encoder, with
zero-initialised output convolutions and a small encoder of the control image, so step 0 *is* the model without
control) reads each training clip's control images, made from the clip itself by `control.extractor` (canny edges,
a dot on the object's track, or the frames as they are), and its residuals are added to the U-Net's skips. The
diffusion loss is the stage's own; only the ControlNet's parameters get gradients, the optimiser, the EMA and the
checkpoints (vidiff.training.trainer's TrainableWeights, as a LoRA run's). The run exports output_dir/controlnet, a
diffusers ControlNetModel folder (config.json + diffusion_pytorch_model.safetensors; diffusers, ComfyUI's loaders
and `vidiff generate --controlnet` read it) with a vidiff-controlnet.json beside it saying how its control images
are made and which model it steers.

The ControlNet runs per frame (vidiff.control.VideoControlNet), with the text embedding repeated per frame and its
spatial self-attention as `control.cross_frame` says, exactly as it runs at sampling.

References: Zhang, Rao & Agrawala 2023 (ControlNet).
"""
from __future__ import annotations

import inspect
import json
from pathlib import Path

import torch
import torch.nn as nn
from diffusers import ControlNetModel

from vidiff.control import RECORD_NAME, VideoControlNet, check_fits, read_controlnet
from vidiff.models.unet import ARCHITECTURE_OPTIONS, is_temporal_parameter
from vidiff.utils import atomic_dir, quiet_libraries

# the ControlNet's control-image encoder: SD's widths, as many as the VAE's factor needs (8x: all four, pixel
# space: the first alone, no downsampling)
EMBEDDING_CHANNELS = (16, 32, 96, 256)


def controlnet_from_unet(unet, vae_scale_factor: int, conditioning_channels: int = 3) -> ControlNetModel:
    """A ControlNetModel initialised from a VideoUNet's spatial encoder (conv_in, time / added embeddings, down and
    mid blocks: diffusers' names, which VideoUNet keeps), its zero convolutions at zero; the control images it
    reads are `vae_scale_factor` times the latents' size."""
    if unet.conditioning_channels:
        raise ValueError("a ControlNet steers a base (text-to-video) U-Net; this one is a cascade stage's")
    depth = max(vae_scale_factor, 1).bit_length()  # 8 -> 4 widths (three 2x downsamplings), 1 -> 1
    if 2 ** (depth - 1) != vae_scale_factor or depth > len(EMBEDDING_CHANNELS):
        raise ValueError(f"no ControlNet control-image encoder shrinks images {vae_scale_factor}x (1, 2, 4 or 8)")
    names = inspect.signature(ControlNetModel.__init__).parameters
    config = {k: v for k, v in unet.config.items()  # (the 2D config: not VideoUNet's own options)
              if k in names and k not in ARCHITECTURE_OPTIONS and not k.startswith("_")}
    with quiet_libraries():
        controlnet = ControlNetModel(**config, conditioning_channels=conditioning_channels,
                                     conditioning_embedding_out_channels=EMBEDDING_CHANNELS[:depth])
    spatial = {k: v for k, v in unet.state_dict().items() if not is_temporal_parameter(k)}
    own = controlnet.state_dict()
    copied = {k: v for k, v in spatial.items() if k in own and own[k].shape == v.shape}
    missing = [k for k in own if k not in copied and not k.startswith(("controlnet_", "controlnet_cond_embedding."))]
    if missing:
        raise ValueError(f"the U-Net has no weights for the ControlNet's {missing[:3]}: its config does not describe "
                         "an SD-style encoder")
    controlnet.load_state_dict(copied, strict=False)
    return controlnet


class ControlledUNet(nn.Module):
    """A frozen VideoUNet and the ControlNet training beside it, called as the U-Net is: the trainer's model.

    `forward(sample, timestep, encoder_hidden_states, control_images=None, **kwargs)`: the ControlNet's residuals
    for `control_images` `(b, 3, f, H, W)` in [0, 1] (None: black images, what the trainer's probe passes) are
    added to the U-Net's. Parameter names: `unet.*` and `controlnet.controlnet.*`."""

    def __init__(self, unet, controlnet: ControlNetModel, cross_frame: str = "none"):
        super().__init__()
        self.unet = unet.requires_grad_(False)
        self.controlnet = VideoControlNet(controlnet, cross_frame=cross_frame)
        self.in_channels, self.conditioning_channels = unet.in_channels, unet.conditioning_channels
        self.spatial_factor = unet.spatial_factor

    def enable_gradient_checkpointing(self) -> None:
        self.unet.enable_gradient_checkpointing()
        self.controlnet.controlnet.enable_gradient_checkpointing()

    def forward(self, sample, timestep, encoder_hidden_states, control_images=None, **kwargs):
        if control_images is None:
            b, _, f, h, w = sample.shape
            k = self.controlnet.spatial_factor
            control_images = sample.new_zeros(b, 3, f, h * k, w * k)
        residuals = self.controlnet(sample, timestep, encoder_hidden_states, control_images)
        return self.unet(sample, timestep, encoder_hidden_states, **residuals, **kwargs)


def attach_controlnet(config, pipe, device) -> ControlledUNet:
    """The run's model: `pipe.unet` frozen beside a ControlNet (control.controlnet, or a copy of the U-Net's
    encoder), all of it on `device` in training mode."""
    c = config.control
    if c.controlnet is None:
        controlnet = controlnet_from_unet(pipe.unet, pipe.vae_scale_factor)
    else:
        controlnet = read_controlnet(c.controlnet)
        check_fits(controlnet.config, pipe.unet.config, c.controlnet, pipe.vae_scale_factor)
    model = ControlledUNet(pipe.unet, controlnet, cross_frame=c.cross_frame).to(device)
    model.controlnet.requires_grad_(True)
    return model.train()


def controlnet_parameters(model: ControlledUNet) -> dict[str, torch.nn.Parameter]:
    """What a ControlNet run trains: every ControlNet parameter, by its name in the model."""
    return {name: p for name, p in model.named_parameters() if name.startswith("controlnet.")}


def save_controlnet(model: ControlledUNet, out: Path, record: dict) -> Path:
    """The ControlNet as a diffusers ControlNetModel folder at `out` (safetensors; replaced whole, atomically)
    with `record` (extractor, model, cross_frame, trained_on) in vidiff-controlnet.json."""
    with atomic_dir(out) as tmp:
        model.controlnet.controlnet.save_pretrained(str(tmp), safe_serialization=True)
        (tmp / RECORD_NAME).write_text(json.dumps(record, indent=2) + "\n")
    return out
