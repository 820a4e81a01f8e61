"""VideoUNet: a Stable Diffusion U-Net inflated into a pseudo-3D video U-Net.

The spatial layers are diffusers' own 2D building blocks, built from the SD `UNet2DConditionModel` config and
kept under their diffusers names, so SD weights load as they are and the numerics match diffusers exactly.
The assembly is ours: the forward pass below walks each block's resnets and transformers on `(b f) c h w`
and interleaves the temporal layers (vidiff.models.temporal), stored beside them in the same block:

    down_blocks.i.resnets.j             -> down_blocks.i.temporal_convs.j        (TemporalConv, Dirac init)
    down_blocks.i.attentions.j          -> down_blocks.i.temporal_attentions.j   (TemporalAttention, zero-init out)
    (likewise in mid_block and up_blocks)

Extra input channels for cascade stages (`conditioning_channels`) widen `conv_in` with zero-initialised
weights, so a stage starts out as its base model; the config records the `stage` and its channels.

The saved config is the model's identity (architecture, stage). Runtime choices (attention backend, cross-frame
mode, gradient checkpointing) are never saved, so a model loads on any machine and samples in any mode. The files
are read and checked by vidiff.models.weights; the methods here only call it.

References: Ho et al. 2022 (Video Diffusion Models); Singer et al. 2022 (Make-A-Video); Wu et al. 2023
(Tune-A-Video); Rombach et al. 2022 (Stable Diffusion).
"""
from __future__ import annotations

import contextlib
import contextvars
import json
import math
import re
from pathlib import Path

import torch
import torch.nn as nn
from accelerate import init_empty_weights
from diffusers import UNet2DConditionModel
from einops import rearrange
from torch.utils.checkpoint import checkpoint

import vidiff
from vidiff.models.attention import VideoAttnProcessor, check_backend
from vidiff.models.motion import MotionSettings, build_motion_adapter, read_motion_module
from vidiff.models.temporal import CoordinateEmbedding, FrameEmbedding, TemporalAttention, TemporalConv
from vidiff.models.weights import (CONFIG_NAME, TEMPORAL_FORMAT, UNET_RUNTIME_OPTIONS, WEIGHTS_NAME, LoadingError,
                                   check_state_dict, check_unet_config, holds_only_a_video_unet, is_temporal_file,
                                   load_unet_2d, migrate_video_unet_config, read_state_dict, read_video_unet_config)
from vidiff.spec import TEMPORAL_LAYOUTS, TEMPORAL_POSITIONS, check_cross_frame
from vidiff.utils import atomic_dir, check_replaceable, save_safetensors_atomic, write_json_atomic

# What a VideoUNet adds to its 2D config, saved with it: the model's identity.
ARCHITECTURE_OPTIONS = ("temporal_layout", "temporal_conv", "temporal_attention", "motion",
                        "conditioning_channels", "stage", "temporal_position", "frame_embedding",
                        "coordinate_embedding", "guidance_embedding")
# Accepted by the constructor, from_2d and from_pretrained, never saved: the attention backend and the cross-frame
# mode (weights.UNET_RUNTIME_OPTIONS).
OPTIONS = ARCHITECTURE_OPTIONS + UNET_RUNTIME_OPTIONS

# Set while a loader builds a model whose spatial weights come from a checkpoint: the 2D modules are then created
# on the meta device (no random init: ~25 s for SD 1.5 on a CPU) and filled by `_load_spatial`.
_SPATIAL_FROM_CHECKPOINT = contextvars.ContextVar("vidiff_spatial_from_checkpoint", default=False)


@contextlib.contextmanager
def _spatial_from_checkpoint():
    token = _SPATIAL_FROM_CHECKPOINT.set(True)
    try:
        yield
    finally:
        _SPATIAL_FROM_CHECKPOINT.reset(token)


def is_temporal_parameter(name: str) -> bool:
    """True for the parameters (and state-dict keys) of the temporal layers the inflation adds, e.g.
    `down_blocks.0.temporal_convs.1.weight`: the one test behind `temporal_parameters`, `freeze_spatial`,
    `save_temporal` and the trainer's `trainable` modes."""
    return (".temporal_convs." in name or ".temporal_attentions." in name or ".motion_modules." in name
            or name.startswith(("frame_embedding.", "coordinate_embedding.")))


def _add_residuals(features: list, residuals, num_frames: int, name: str = "down_block_additional_residuals") -> list:
    """`features[i] + residuals[i]` on `(b f) c h w`; a residual may also be `(b, c, f, h, w)` (folded here)."""
    if len(residuals) != len(features):
        raise ValueError(f"{name}: got {len(residuals)} tensors for this U-Net's {len(features)} skip connections")
    out = []
    for feature, residual in zip(features, residuals):
        if residual.ndim == 5:
            residual = rearrange(residual, "b c f h w -> (b f) c h w")
        if residual.shape != feature.shape:
            raise ValueError(f"{name}: a tensor of shape {tuple(residual.shape)} for features of shape "
                             f"{tuple(feature.shape)} ((b f) c h w, {num_frames} frames)")
        out.append(feature + residual)
    return out


def check_options(**options) -> None:
    """Validate VideoUNet options (any subset of OPTIONS) before anything is loaded: ValueError naming the option,
    AttentionBackendError for a backend this machine cannot run."""
    unknown = set(options) - set(OPTIONS)
    if unknown:
        raise ValueError(f"unknown VideoUNet option(s) {sorted(unknown)}; choose from {', '.join(OPTIONS)}")
    if "cross_frame" in options:
        check_cross_frame(options["cross_frame"])
    if "attention_backend" in options:
        check_backend(options["attention_backend"])
    channels = options.get("conditioning_channels", 0)
    if isinstance(channels, bool) or not isinstance(channels, int) or channels < 0:
        raise ValueError(f"conditioning_channels must be an integer >= 0, got {channels!r}")
    stage = options.get("stage", "base")
    if not isinstance(stage, str) or not re.fullmatch(r"[a-z0-9][a-z0-9_-]*", stage):
        raise ValueError(f"stage must be a lower-case stage name such as 'base' or 'ssr', got {stage!r}")
    layout = options.get("temporal_layout", "vidiff")
    if layout not in TEMPORAL_LAYOUTS:
        raise ValueError(f"temporal_layout must be one of {', '.join(TEMPORAL_LAYOUTS)}, got {layout!r}")
    if layout == "animatediff" and (options.get("temporal_conv") or options.get("temporal_attention")):
        raise ValueError("temporal_layout 'animatediff' has motion modules in place of temporal_conv and "
                         "temporal_attention: leave those unset (or false)")
    if options.get("motion") is not None:
        if layout != "animatediff":
            raise ValueError("motion (motion-module settings) needs temporal_layout='animatediff'")
        MotionSettings.from_config(options["motion"])
    if options.get("temporal_position", "qk") not in TEMPORAL_POSITIONS:
        raise ValueError(f"temporal_position must be one of {', '.join(TEMPORAL_POSITIONS)}, got "
                         f"{options['temporal_position']!r}")
    for key in ("temporal_conv", "temporal_attention", "frame_embedding", "coordinate_embedding", "guidance_embedding"):
        if options.get(key) is not None and not isinstance(options[key], bool):
            raise ValueError(f"{key} must be true or false, got {options[key]!r}")


class GuidanceEmbedding(nn.Module):
    """The classifier-free guidance scale as an input (guidance distillation, Meng et al. 2023): sinusoids of
    1000 (g - 1), as LCM embeds its w = g - 1, through a zero-initialised linear layer added to the timestep
    embedding, so the untrained student is the teacher's conditional branch and one pass per step replaces CFG's
    two."""

    def __init__(self, embed_dim: int, channels: int = 64):
        super().__init__()
        self.channels = channels
        self.proj = nn.Linear(channels, embed_dim)
        nn.init.zeros_(self.proj.weight)
        nn.init.zeros_(self.proj.bias)

    def forward(self, guidance_scale, batch: int, dtype=None) -> torch.Tensor:
        """`(batch, embed_dim)` for one scale (a number) or one per video `(batch,)`."""
        device = self.proj.weight.device
        g = torch.as_tensor(guidance_scale, device=device, dtype=torch.float32).reshape(-1).expand(batch)
        half = self.channels // 2
        freqs = torch.exp(-math.log(10000.0) * torch.arange(half, device=device, dtype=torch.float32) / half)
        angles = (1000.0 * (g - 1.0))[:, None] * freqs[None]
        code = torch.cat([angles.sin(), angles.cos()], dim=-1).to(self.proj.weight.dtype)
        return self.proj(code).to(dtype or self.proj.weight.dtype)


class VideoUNet(nn.Module):
    """Pseudo-3D U-Net on `(b, c, f, h, w)` built from a Stable Diffusion U-Net config.

    Args:
        unet_config: a diffusers `UNet2DConditionModel` config (SD 1.x / 2.x / x4 upscaler family).
        temporal_layout: "vidiff" (temporal conv + temporal attention, below) or "animatediff" (AnimateDiff motion
            modules after every resnet / attention pair: vidiff.models.motion).
        temporal_conv: add a temporal convolution after every resnet block (layout "vidiff"; default on).
        temporal_attention: add a temporal attention layer after every spatial transformer (layout "vidiff";
            default on).
        motion: layout "animatediff": the motion modules' `MotionSettings` as a dict (default AnimateDiff v2's).
        cross_frame: spatial self-attention mode, "none" | "first" | "sparse-causal"; a runtime choice, not saved.
        conditioning_channels: extra zero-initialised input channels (cascade stages concatenate their
            condition to `sample` along channels).
        stage: the cascade stage this U-Net serves ("base", "interpolation", "tsr", "ssr", ...), recorded in
            its config so a saved stage says what its conditioning channels hold.
        temporal_position: "qk" (default; configs saved without it mean this) or "qkv": where temporal attention
            adds its frame position encoding (vidiff.spec.TEMPORAL_POSITIONS).
        frame_embedding: add each frame's index to its timestep embedding (temporal.FrameEmbedding, zero
            initialised; configs saved without it mean False).
        coordinate_embedding: add each pixel's position to the features after conv_in (temporal.CoordinateEmbedding,
            zero initialised; configs saved without it mean False).
        guidance_embedding: take the guidance scale as an input (`GuidanceEmbedding`, zero initialised: a
            guidance-distilled student; `forward(guidance_scale=)`; configs saved without it mean False).
        attention_backend: "auto" | "sdpa" | "xformers" | "math"; a runtime choice, not saved with the model.
    """

    def __init__(self, unet_config: dict, *, temporal_layout: str = "vidiff", temporal_conv: bool | None = None,
                 temporal_attention: bool | None = None, motion: dict | None = None,
                 cross_frame: str = "none", conditioning_channels: int = 0, stage: str = "base",
                 temporal_position: str = "qk", frame_embedding: bool = False, coordinate_embedding: bool = False,
                 guidance_embedding: bool = False, attention_backend: str = "auto"):
        super().__init__()
        unet_config = check_unet_config(unet_config)
        check_options(temporal_layout=temporal_layout, temporal_conv=temporal_conv,
                      temporal_attention=temporal_attention, motion=motion, cross_frame=cross_frame,
                      conditioning_channels=conditioning_channels, stage=stage, attention_backend=attention_backend,
                      temporal_position=temporal_position, frame_embedding=frame_embedding,
                      coordinate_embedding=coordinate_embedding, guidance_embedding=guidance_embedding)
        own_layout = temporal_layout == "vidiff"
        temporal_conv = own_layout if temporal_conv is None else temporal_conv
        temporal_attention = own_layout if temporal_attention is None else temporal_attention
        motion = None if own_layout else MotionSettings.from_config(motion)
        self.config = dict(unet_config, temporal_layout=temporal_layout, temporal_conv=temporal_conv,
                           temporal_attention=temporal_attention,
                           motion=motion.to_config() if motion else None,
                           conditioning_channels=conditioning_channels, stage=stage,
                           temporal_position=temporal_position, frame_embedding=frame_embedding,
                           coordinate_embedding=coordinate_embedding, guidance_embedding=guidance_embedding)
        self.motion = motion
        self.attention_backend = attention_backend
        self.cross_frame = cross_frame

        # Build diffusers' 2D U-Net once and adopt its modules under the same names.
        empty = init_empty_weights() if _SPATIAL_FROM_CHECKPOINT.get() else contextlib.nullcontext()
        with empty:
            base = UNet2DConditionModel(**dict(unet_config, in_channels=unet_config.get("in_channels", 4)
                                               + conditioning_channels))
        self.in_channels = base.config.in_channels - conditioning_channels
        self.out_channels = base.config.out_channels
        self.conditioning_channels = conditioning_channels
        self.spatial_factor = 2 ** base.num_upsamplers
        self.center_input_sample = base.config.center_input_sample
        self.class_embed_type = base.config.class_embed_type
        # None, or the pooled-text embedding of addition_embed_type "text" (diffusers sets it only then)
        self.add_embedding = getattr(base, "add_embedding", None)
        for name in ("conv_in", "time_proj", "time_embedding", "class_embedding", "down_blocks", "mid_block",
                     "up_blocks", "conv_norm_out", "conv_act", "conv_out"):
            setattr(self, name, getattr(base, name))
        if conditioning_channels:
            with torch.no_grad():  # the condition enters through zero weights: the stage starts as its base
                self.conv_in.weight[:, self.in_channels:].zero_()

        self._add_temporal_layers(unet_config, temporal_conv, temporal_attention, temporal_position, motion)
        self.frame_embedding = FrameEmbedding(base.time_embedding.linear_2.out_features) if frame_embedding else None
        self.coordinate_embedding = CoordinateEmbedding(self.conv_in.out_channels) if coordinate_embedding else None
        embed_dim = base.time_embedding.linear_2.out_features
        self.guidance_embedding = GuidanceEmbedding(embed_dim) if guidance_embedding else None
        self.gradient_checkpointing = False
        self.set_attention_backend(attention_backend)
        self.set_cross_frame(cross_frame)

    # ----------------------------------------------------------------------------------------------- helpers
    def blocks(self):
        return [*self.down_blocks, *([self.mid_block] if self.mid_block is not None else []), *self.up_blocks]

    @property
    def dtype(self) -> torch.dtype:
        return self.conv_in.weight.dtype

    @property
    def device(self) -> torch.device:
        return self.conv_in.weight.device

    def _add_temporal_layers(self, unet_config, temporal_conv, temporal_attention, temporal_position, motion):
        """vidiff's layout (a temporal conv per resnet, a temporal attention per transformer) or AnimateDiff's
        motion modules; all start as the identity."""
        for block in self.blocks():
            if temporal_conv:
                block.temporal_convs = nn.ModuleList(TemporalConv(r.out_channels) for r in block.resnets)
            if temporal_attention and hasattr(block, "attentions"):
                block.temporal_attentions = nn.ModuleList(
                    TemporalAttention(a.config.in_channels, a.transformer_blocks[0].attn1.heads, "auto",
                                      temporal_position)
                    for a in block.attentions)
        if motion is not None:  # real weights (zero output projections) even when the rest comes from a file
            self._adopt_motion_modules(build_motion_adapter(unet_config, motion))

    def _adopt_motion_modules(self, adapter) -> None:
        """Take a diffusers MotionAdapter's modules into the blocks, under the adapter's own names."""
        for block, modules in zip(self.down_blocks, adapter.down_blocks):
            block.motion_modules = modules.motion_modules
        if adapter.mid_block is not None:
            self.mid_block.motion_modules = adapter.mid_block.motion_modules
        for block, modules in zip(self.up_blocks, adapter.up_blocks):
            block.motion_modules = modules.motion_modules

    def _attention_modules(self):
        for block in self.blocks():
            for transformer in getattr(block, "attentions", []):
                for tb in transformer.transformer_blocks:
                    yield tb.attn1, tb.attn2

    def _motion_attention_modules(self):
        for block in self.blocks():
            for module in getattr(block, "motion_modules", []):
                for tb in module.transformer_blocks:
                    yield from (tb.attn1, tb.attn2)

    def set_cross_frame(self, mode: str) -> None:
        """Spatial self-attention: "none" (per frame), "first" (frame 0's keys/values), "sparse-causal"."""
        self.cross_frame = check_cross_frame(mode)
        for attn1, _ in self._attention_modules():
            attn1.processor.cross_frame = mode

    def set_attention_backend(self, name: str) -> None:
        """"auto" (xformers on CUDA when it runs, else SDPA) | "sdpa" | "xformers" | "math". A runtime choice:
        it is not saved with the model. Raises AttentionBackendError where `name` cannot run."""
        self.attention_backend = check_backend(name)
        for attn1, attn2 in self._attention_modules():
            attn1.set_processor(VideoAttnProcessor(name, self.cross_frame))
            if attn2 is not None:
                attn2.set_processor(VideoAttnProcessor(name))
        for attn in self._motion_attention_modules():  # frame-wise self-attention: never cross-frame
            attn.set_processor(VideoAttnProcessor(name))
        for module in self.modules():
            if isinstance(module, TemporalAttention):
                module.backend = name

    def enable_gradient_checkpointing(self) -> None:
        self.gradient_checkpointing = True

    def disable_gradient_checkpointing(self) -> None:
        self.gradient_checkpointing = False

    def temporal_parameters(self):
        """The temporal layers' parameters (what AnimateDiff-style motion training updates)."""
        return (p for name, p in self.named_parameters() if is_temporal_parameter(name))

    def freeze_spatial(self) -> None:
        """requires_grad only for the temporal layers; the 2D (spatial) weights stay as the image model's."""
        for name, p in self.named_parameters():
            p.requires_grad_(is_temporal_parameter(name))

    # ----------------------------------------------------------------------------------------------- forward
    def _run(self, fn, *args):
        if self.gradient_checkpointing and torch.is_grad_enabled():
            return checkpoint(fn, *args, use_reentrant=False)
        return fn(*args)

    def _resnet(self, block, j, x, emb, num_frames):
        def fn(x, emb):
            x = block.resnets[j](x, emb)
            if hasattr(block, "temporal_convs"):
                x = block.temporal_convs[j](x, num_frames)
            return x
        return self._run(fn, x, emb)

    def _transformer(self, block, j, x, context, num_frames):
        def fn(x, context):
            x = block.attentions[j](x, encoder_hidden_states=context, return_dict=False,
                                    cross_attention_kwargs={"num_frames": num_frames})[0]
            if hasattr(block, "temporal_attentions"):
                x = block.temporal_attentions[j](x, num_frames)
            return x
        return self._run(fn, x, context)

    def _motion(self, block, j, x, num_frames):
        """AnimateDiff layout: the motion module after the j-th resnet / attention pair (x as it is otherwise)."""
        if not hasattr(block, "motion_modules"):
            return x
        return self._run(lambda x: block.motion_modules[j](x, num_frames=num_frames), x)

    def _embed(self, timestep, class_labels, encoder_hidden_states, batch: int, dtype):
        """Timestep (+ class, + pooled text) embedding per video, as diffusers computes it, `(b, d)`."""
        t = timestep if torch.is_tensor(timestep) else torch.tensor([timestep], device=self.device)
        t = t.to(self.device).reshape(-1).expand(batch) if t.numel() == 1 else t.to(self.device).reshape(-1)
        if t.shape[0] != batch:
            raise ValueError(f"timestep has {t.shape[0]} entries for a batch of {batch} videos")
        emb = self.time_embedding(self.time_proj(t).to(dtype))  # Timesteps returns float32; cast as diffusers
        if self.class_embedding is not None:
            if class_labels is None:
                raise ValueError("this U-Net has a class embedding (e.g. the x4 upscaler's noise level): "
                                 "pass class_labels=")
            class_labels = torch.as_tensor(class_labels, device=self.device).reshape(-1).expand(batch)
            if self.class_embed_type == "timestep":
                class_labels = self.time_proj(class_labels).to(dtype)
            emb = emb + self.class_embedding(class_labels).to(dtype)
        if self.add_embedding is not None and encoder_hidden_states is not None:
            emb = emb + self.add_embedding(encoder_hidden_states).to(dtype)
        return emb

    def _conditioning(self, timestep, class_labels, text, b: int, f: int, dtype, guidance_scale=None):
        """The timestep embedding `((b f), d)` and the text `((b f), L, D)` of every frame: one text per video
        `(b, L, D)` repeated, or one per frame `(b, f, L, D)` (prompt travel, each frame's pooled text too)."""
        per_frame = text.ndim == 4
        context = rearrange(text, "b f l d -> (b f) l d") if per_frame else text.repeat_interleave(f, dim=0)
        emb = self._embed(timestep, class_labels, None if per_frame else text, b, dtype)
        if self.guidance_embedding is not None:  # (no scale given: 1, the conditional model alone)
            emb = emb + self.guidance_embedding(1.0 if guidance_scale is None else guidance_scale, b, dtype)
        emb = emb.repeat_interleave(f, dim=0)
        if per_frame and self.add_embedding is not None:
            emb = emb + self.add_embedding(context).to(dtype)
        if self.frame_embedding is not None:
            emb = emb + self.frame_embedding(f, emb.dtype).repeat(b, 1)
        return emb, context

    def _check_inputs(self, sample, encoder_hidden_states) -> None:
        if sample.ndim != 5:
            raise ValueError(f"VideoUNet expects sample of shape (b, c, f, h, w), got {tuple(sample.shape)}")
        b, c, f = sample.shape[:3]
        if c != self.in_channels + self.conditioning_channels:
            raise ValueError(f"sample has {c} channels; this U-Net takes {self.in_channels} latent channels "
                             f"+ {self.conditioning_channels} conditioning channels")
        if encoder_hidden_states.shape[0] != b:
            raise ValueError(f"encoder_hidden_states has batch {encoder_hidden_states.shape[0]}, sample has {b}")
        if encoder_hidden_states.ndim == 4 and encoder_hidden_states.shape[1] != f:
            raise ValueError(f"per-frame encoder_hidden_states (b, f, L, D) must have f={f} frames, got "
                             f"{encoder_hidden_states.shape[1]}")
        if self.motion is not None and f > self.motion.max_seq_length:
            raise ValueError(f"this U-Net's motion modules take at most {self.motion.max_seq_length} frames (their "
                             f"position table's length), got {f}; sample longer clips in temporal windows")

    def forward(self, sample, timestep, encoder_hidden_states, class_labels=None,
                down_block_additional_residuals=None, mid_block_additional_residual=None, guidance_scale=None):
        """sample `(b, c, f, h, w)`, timestep scalar or `(b,)`, encoder_hidden_states `(b, L, D)` (one per
        video) or `(b, f, L, D)` (one per frame: prompt travel) -> noise / v prediction `(b, out_channels, f, h, w)`.

        `down_block_additional_residuals` (one per skip connection) and `mid_block_additional_residual`, as
        `(b f) c h w` or `(b, c, f, h, w)` tensors, are a ControlNet's outputs (vidiff.control): added to the
        skips after the down blocks and to the mid block's output, where diffusers' UNet2DConditionModel adds them.
        `guidance_scale` (a number or one per video) is the input of a guidance-distilled U-Net
        (`guidance_embedding`); other U-Nets refuse it.
        """
        self._check_inputs(sample, encoder_hidden_states)
        if guidance_scale is not None and self.guidance_embedding is None:
            raise ValueError("guidance_scale= is the input of a guidance-distilled U-Net (guidance_embedding); this "
                             "one runs classifier-free guidance as two passes")
        b, c, f, h, w = sample.shape
        # 2D blocks run on every frame: fold frames into the batch; the embeddings repeat per frame.
        emb, context = self._conditioning(timestep, class_labels, encoder_hidden_states, b, f, sample.dtype,
                                          guidance_scale)
        x = rearrange(sample, "b c f h w -> (b f) c h w")
        if self.center_input_sample:
            x = 2 * x - 1.0

        x = self.conv_in(x)
        if self.coordinate_embedding is not None:
            x = x + self.coordinate_embedding(h, w).to(x.dtype)
        x, skips = self._down(x, emb, context, f)
        if down_block_additional_residuals is not None:
            skips = _add_residuals(skips, down_block_additional_residuals, f)
        if self.mid_block is not None:
            x = self._mid(x, emb, context, f)
        if mid_block_additional_residual is not None:
            x = _add_residuals([x], [mid_block_additional_residual], f, "mid_block_additional_residual")[0]
        x = self._up(x, skips, emb, context, f, odd_size=h % self.spatial_factor or w % self.spatial_factor)

        if self.conv_norm_out is not None:
            x = self.conv_act(self.conv_norm_out(x))
        x = self.conv_out(x)
        return rearrange(x, "(b f) c h w -> b c f h w", f=f)

    def _down(self, x, emb, context, f):
        """The down blocks on `(b f) c h w`: the features and every skip connection (conv_in's output first)."""
        skips = [x]
        for block in self.down_blocks:
            for j in range(len(block.resnets)):
                x = self._resnet(block, j, x, emb, f)
                if hasattr(block, "attentions"):
                    x = self._transformer(block, j, x, context, f)
                x = self._motion(block, j, x, f)
                skips.append(x)
            if block.downsamplers is not None:
                x = block.downsamplers[0](x)
                skips.append(x)
        return x, skips

    def _mid(self, x, emb, context, f):
        x = self._resnet(self.mid_block, 0, x, emb, f)
        for j in range(len(self.mid_block.attentions)):
            x = self._transformer(self.mid_block, j, x, context, f)
            x = self._motion(self.mid_block, j, x, f)
            x = self._resnet(self.mid_block, j + 1, x, emb, f)
        return x

    def _up(self, x, skips, emb, context, f, odd_size):
        """The up blocks, each resnet taking the last skip; `skips` is used up."""
        upsample_size = None
        for block in self.up_blocks:
            for j in range(len(block.resnets)):
                x = torch.cat([x, skips.pop()], dim=1)
                x = self._resnet(block, j, x, emb, f)
                if hasattr(block, "attentions"):
                    x = self._transformer(block, j, x, context, f)
                x = self._motion(block, j, x, f)
            if block.upsamplers is not None:
                if odd_size:  # sizes that are not multiples of the U-Net factor upsample to the skip's size
                    upsample_size = skips[-1].shape[2:]
                x = block.upsamplers[0](x, upsample_size)
        return x

    # ----------------------------------------------------------------------------------------------- files
    def save_pretrained(self, directory) -> None:
        """`config.json` + `diffusion_pytorch_model.safetensors`, written atomically as one folder. An existing
        `directory` is replaced only if it is an earlier VideoUNet folder or empty (FileExistsError otherwise)."""
        check_replaceable(directory, holds_only_a_video_unet, "a VideoUNet folder holding only what "
                          f"save_pretrained writes ({CONFIG_NAME}, {WEIGHTS_NAME})",
                          "choose a new or empty folder (save_pretrained replaces the whole folder)")
        with atomic_dir(directory) as tmp:
            config = dict(self.config, _class_name="VideoUNet", _vidiff_version=vidiff.__version__)
            write_json_atomic(tmp / CONFIG_NAME, config)
            save_safetensors_atomic(self.state_dict(), tmp / WEIGHTS_NAME, metadata={"format": "pt"})

    @classmethod
    def from_pretrained(cls, directory, subfolder: str | None = None, **overrides) -> "VideoUNet":
        """Load a U-Net written by `save_pretrained`. `overrides` may set the runtime options `cross_frame` (default
        "none") and `attention_backend` (default "auto"); the architecture is fixed by the saved config (one saved
        by an older version loads too: `weights.migrate_video_unet_config`). A damaged folder raises LoadingError,
        one line naming the file."""
        directory = Path(directory) / (subfolder or "")
        config_file = directory / CONFIG_NAME
        for key in overrides:
            if key not in UNET_RUNTIME_OPTIONS:
                raise ValueError(f"from_pretrained cannot change {key!r}; it is fixed by {config_file}")
        check_options(**overrides)  # the caller's mistakes, before the file's
        config = migrate_video_unet_config(read_video_unet_config(directory), config_file, overrides)
        options = {k: config.pop(k) for k in ARCHITECTURE_OPTIONS if k in config}
        try:
            with _spatial_from_checkpoint():
                model = cls(config, **options, **overrides)
        except (TypeError, ValueError, KeyError) as error:  # a config edited by hand, or from another version
            raise LoadingError(f"{config_file} does not describe a VideoUNet this vidiff can build "
                               f"({type(error).__name__}: {' '.join(str(error).split())[:300]})") from None
        state_dict = read_state_dict(directory / WEIGHTS_NAME)
        check_state_dict({k: v.shape for k, v in model.state_dict().items()}, state_dict,
                         source=str(directory / WEIGHTS_NAME))
        model._load_spatial(state_dict)
        return model

    @classmethod
    def from_2d(cls, path_or_id, subfolder: str | None = None, *, config=None, **options) -> "VideoUNet":
        """Inflate a 2D Stable Diffusion U-Net: a diffusers folder (or SD pipeline folder), a hub id, or a
        single-file LDM checkpoint (.safetensors / .ckpt) with `config=` a local diffusers U-Net config.

        Spatial weights load by their diffusers names; temporal layers and conditioning channels keep their
        identity / zero initialisation, so the result equals the 2D model on every frame.
        """
        check_options(**options)  # before the weights are read (or downloaded)
        unet_config, state_dict = load_unet_2d(path_or_id, subfolder, config=config)
        return cls.from_2d_weights(unet_config, state_dict, source=str(path_or_id), **options)

    @classmethod
    def from_2d_weights(cls, unet_config: dict, state_dict, *, source: str = "the checkpoint", **options
                        ) -> "VideoUNet":
        """Inflate a 2D U-Net given as its diffusers config and state dict (what `from_2d` does after reading them).

        With `conditioning_channels=k`, the config's `in_channels` counts the latent channels only, and the
        state dict's `conv_in.weight` either has just those columns (the k new ones start at zero: the stage
        starts as its base) or already has k more (an image model that takes the condition itself, e.g. the SD
        x4 upscaler's 3 low-resolution pixel channels: kept as trained).
        """
        check_options(**options)
        with _spatial_from_checkpoint():
            model = cls(unet_config, **options)
        weight = state_dict.get("conv_in.weight")
        if model.conditioning_channels and weight is not None and weight.shape[1] == model.in_channels:
            extra = weight.new_zeros(weight.shape[0], model.conditioning_channels, *weight.shape[2:])
            state_dict = dict(state_dict, **{"conv_in.weight": torch.cat([weight, extra], dim=1)})
        expected = {k: v.shape for k, v in model.state_dict().items()}
        check_state_dict(expected, state_dict, allow_missing=is_temporal_parameter, source=source)
        model._load_spatial(state_dict)
        return model

    def _load_spatial(self, state_dict) -> None:
        """Load checked weights; spatial modules built on the meta device take the tensors (as float32, the
        master dtype; `.to(dtype)` afterwards for half precision), temporal layers keep their init if absent."""
        # fresh copies: tensors read from a file may sit at unaligned offsets, and CPU kernels then take other
        # code paths (bitwise-different sums) than for the freshly allocated weights of a saved model
        floats = {k: v.to(torch.float32 if v.is_floating_point() else v.dtype, copy=True)
                  for k, v in state_dict.items()}
        self.load_state_dict(floats, strict=False, assign=True)
        still_empty = [name for name, p in self.named_parameters() if p.is_meta]
        if still_empty:  # check_state_dict allows only temporal keys to be missing, so this is a bug
            raise RuntimeError(f"weights left unset after loading: {still_empty[:5]}")

    def load_spatial_from(self, path_or_id, subfolder: str | None = None) -> None:
        """Replace the spatial (2D) weights with another Stable Diffusion U-Net's of the same architecture (a
        DreamBooth / community fine-tune of the base: a diffusers folder, hub id, or single-file checkpoint, read
        with this U-Net's own config), keeping the temporal layers: AnimateDiff's "personalised T2I + motion
        module". A stage keeps its condition's conv_in columns. LoadingError (one line) when it does not fit."""
        own_config = {k: v for k, v in self.config.items() if k not in OPTIONS}
        own_config["in_channels"] = self.in_channels
        source = str(path_or_id)
        _, state_dict = load_unet_2d(path_or_id, subfolder, config=own_config)
        spatial = {k: v for k, v in self.state_dict().items() if not is_temporal_parameter(k)}
        weight = state_dict.get("conv_in.weight")
        if self.conditioning_channels and weight is not None and weight.shape[1] == self.in_channels:
            state_dict = dict(state_dict, **{"conv_in.weight": torch.cat(
                [weight, spatial["conv_in.weight"][:, self.in_channels:]], dim=1)})
        check_state_dict({k: v.shape for k, v in spatial.items()}, state_dict, source=source)
        self.load_state_dict({k: v.to(spatial[k].dtype) for k, v in state_dict.items()}, strict=False)

    def save_temporal(self, path) -> None:
        """The temporal layers alone, one safetensors file (a shareable motion module). An existing file at
        `path` is replaced only if it is an earlier one (its metadata says so); FileExistsError otherwise."""
        tensors = {k: v for k, v in self.state_dict().items() if is_temporal_parameter(k)}
        if not tensors:
            raise ValueError("this VideoUNet has no temporal layers to save")
        if Path(path).is_dir():  # even an empty one: a file cannot replace it
            raise FileExistsError(f"{path} is a folder; save_temporal writes one .safetensors file: give a file path")
        if not (Path(path).is_file() and not Path(path).is_symlink() and is_temporal_file(path)):
            check_replaceable(path, lambda folder: False, "a vidiff temporal-layers file (save_temporal's "
                              ".safetensors)", "give a new file path")
        metadata = {"vidiff": TEMPORAL_FORMAT,
                    "config": json.dumps({k: self.config[k] for k in ARCHITECTURE_OPTIONS})}
        save_safetensors_atomic(tensors, path, metadata=metadata)

    def load_temporal(self, path) -> None:
        """Load a `save_temporal` file into this model's temporal layers (keys and shapes checked)."""
        tensors = read_state_dict(path)
        expected = {k: v.shape for k, v in self.state_dict().items() if is_temporal_parameter(k)}
        check_state_dict(expected, tensors, source=str(path))
        self.load_state_dict(tensors, strict=False)

    # ----------------------------------------------------------------------------------------------- motion modules
    def motion_module_state_dict(self) -> dict[str, torch.Tensor]:
        """The motion modules' weights in diffusers MotionAdapter keys (`down_blocks.0.motion_modules.0...`)."""
        if self.motion is None:
            raise ValueError("this VideoUNet has vidiff's temporal layout, not AnimateDiff motion modules; inflate "
                             "with temporal_layout='animatediff' (vidiff inflate --temporal-layout animatediff)")
        return {k: v for k, v in self.state_dict().items() if ".motion_modules." in k}

    def motion_adapter_config(self) -> dict:
        """The diffusers MotionAdapter config of this U-Net's motion modules."""
        if self.motion is None:
            self.motion_module_state_dict()  # the one error
        return self.motion.adapter_config(self.config)

    def load_motion_module(self, source) -> None:
        """Load AnimateDiff motion modules: a diffusers MotionAdapter folder or hub id, an original AnimateDiff file
        (mm_sd_v15*.ckpt / .safetensors: v1, v2, v3), or a state dict in MotionAdapter keys. Their shape must be
        this U-Net's (`VideoUNet.from_2d(..., temporal_layout="animatediff", motion=settings)` builds one to fit);
        LoadingError otherwise."""
        if isinstance(source, dict):
            settings, tensors, where = None, source, "the motion-module state dict"
        else:
            (settings, tensors), where = read_motion_module(source), str(source)
        if self.motion is None or (settings is not None and settings != self.motion):
            raise LoadingError(f"the motion modules in {where} ({settings}) do not fit this U-Net "
                               f"({self.motion or 'vidiff temporal layout'}); build it with "
                               "vidiff.models.folder.inflate_pipeline(..., motion_module=SOURCE)")
        expected = {k: v.shape for k, v in self.state_dict().items() if ".motion_modules." in k}
        # the sinusoidal tables are recomputed, not learnt: files converted by diffusers leave them out
        check_state_dict(expected, tensors, allow_missing=lambda key: key.endswith("pos_embed.pe"), source=where)
        self.load_state_dict(tensors, strict=False)
