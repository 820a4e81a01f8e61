"""The vidiff pipeline folder: describe, write, and make one by inflating a Stable Diffusion pipeline.

Layout (what `vidiff inflate` and `vidiff train` write, `vidiff generate` / `edit` read):

    vidiff.json      kind, stage, conditioning, factors, default sampling settings (vidiff.spec.PipelineInfo)
    unet/            VideoUNet.save_pretrained (config.json + diffusion_pytorch_model.safetensors)
    vae/             diffusers AutoencoderKL (absent for pixel-space models)
    text_encoder/    transformers CLIPTextModel
    tokenizer/       transformers CLIPTokenizer
    scheduler/       the base model's diffusers scheduler config (the noise schedule; the sampler is chosen
                     by name at sampling time, vidiff.pipelines.schedulers)

Reading vidiff.json is torch-free (vidiff.spec.read_info); this module makes and writes folders.
"""
from __future__ import annotations

import json
import os
from dataclasses import fields
from pathlib import Path

import torch

import vidiff
from vidiff.models.loading import load_base_components
from vidiff.spec import INFO_NAME, Defaults, PipelineInfo, check_cross_frame, check_setting
from vidiff.utils import atomic_dir, check_replaceable, write_json_atomic

DEFAULT_NAMES = tuple(f.name for f in fields(Defaults))


def make_info(unet, vae, text_encoder, tokenizer, scheduler_config: dict, *, stage: str | None = None,
              defaults: dict | None = None, source: str | None = None, stage_options: dict | None = None
              ) -> PipelineInfo:
    """The vidiff.json description of these components (factors measured from them, defaults filled in;
    height / width default to the U-Net's trained size). `stage` defaults to the one the U-Net records."""
    unknown = set(defaults or {}) - set(DEFAULT_NAMES)
    if unknown:
        raise ValueError(f"unknown default setting(s) {sorted(unknown)}; choose from {sorted(DEFAULT_NAMES)}")
    vae_factor = 2 ** (len(vae.config.block_out_channels) - 1) if vae is not None else 1
    sample_size = unet.config.get("sample_size") or 64
    if isinstance(sample_size, (list, tuple)):
        sample_size = sample_size[0]
    settings = {"height": int(sample_size) * vae_factor, "width": int(sample_size) * vae_factor, **(defaults or {})}
    for name in ("num_frames", "height", "width", "num_inference_steps", "fps"):
        check_setting(name, settings.get(name))
    check_cross_frame(settings.get("cross_frame", "none"))
    return PipelineInfo(
        stage=stage if stage is not None else unet.config.get("stage", "base"),
        latent=vae is not None,
        in_channels=int(unet.in_channels),
        vae_scale_factor=vae_factor,
        scaling_factor=float(vae.config.scaling_factor) if vae is not None else 1.0,
        unet_spatial_factor=int(unet.spatial_factor),
        prediction_type=scheduler_config.get("prediction_type", "epsilon"),
        max_window=unet.motion.max_seq_length if unet.motion is not None else None,
        defaults=Defaults(**settings),
        stage_options=dict(stage_options or {}),
        conditioning={"type": "text", "text_encoder": type(text_encoder).__name__,
                      "max_length": int(tokenizer.model_max_length),
                      "hidden_size": int(text_encoder.config.hidden_size),
                      "conditioning_channels": int(unet.conditioning_channels)},
        source=source,
        vidiff_version=vidiff.__version__,
    ).checked()


def write_pipeline_folder(path: str | os.PathLike, *, unet, text_encoder, tokenizer, scheduler_config: dict,
                          vae=None, info: PipelineInfo) -> Path:
    """Write a complete pipeline folder atomically (a crash leaves any old folder at `path` untouched). An
    existing `path` is replaced only if it is an earlier pipeline folder (has vidiff.json) or empty."""
    path = Path(path)
    check_replaceable(path, lambda p: (p / INFO_NAME).is_file(), f"a vidiff pipeline folder (no {INFO_NAME})",
                      "choose a new folder")
    with atomic_dir(path) as tmp:
        unet.save_pretrained(tmp / "unet")
        if vae is not None:
            vae.save_pretrained(str(tmp / "vae"))
        text_encoder.save_pretrained(str(tmp / "text_encoder"))
        tokenizer.save_pretrained(str(tmp / "tokenizer"))
        (tmp / "scheduler").mkdir()
        (tmp / "scheduler" / "scheduler_config.json").write_text(json.dumps(scheduler_config, indent=2) + "\n")
        write_json_atomic(tmp / INFO_NAME, info.to_json())
    return path


def inflate_pipeline(base: str | os.PathLike, out: str | os.PathLike, *, cross_frame: str = "none",
                     stage: str = "base", conditioning_channels: int = 0, config: str | os.PathLike | None = None,
                     motion_module: str | os.PathLike | None = None, defaults: dict | None = None, seed: int = 0,
                     **unet_options) -> Path:
    """Inflate an SD pipeline (folder, hub id or single file + `config`) into a vidiff pipeline folder at `out`.

    The U-Net gains temporal layers that start as the identity, so the result samples each frame as the
    image model would until it is trained. VAE, text encoder, tokenizer and noise schedule are kept as they are.
    `stage` (vidiff.spec.STAGE_NAMES) is recorded in vidiff.json and the U-Net config; `conditioning_channels`
    extra input channels are created zero-initialised, so the stage starts out as its base (cascade stages with
    their options: vidiff.stages.folder.inflate_stage). `unet_options` are VideoUNet's architecture options:
    `temporal_layout` ("vidiff" or "animatediff"), `temporal_conv` / `temporal_attention`, `temporal_position`
    (where temporal attention adds its frame position encoding), `frame_embedding`, `coordinate_embedding`,
    `motion` (motion-module settings). `motion_module` loads trained AnimateDiff motion modules (a diffusers
    MotionAdapter folder or hub id, or an original mm_*.ckpt / .safetensors) in AnimateDiff's layout. `cross_frame` is the
    sampling default recorded in vidiff.json (the U-Net does not keep it). `defaults` override vidiff.json's
    sampling defaults (`num_frames`, `height`, `fps`, ...). `seed` fixes the random parts of the temporal layers'
    initialisation, so the same base always gives the same folder. Returns `out`.
    """
    check_cross_frame(cross_frame)
    PipelineInfo(stage=stage).checked("the request")
    if isinstance(conditioning_channels, bool) or not isinstance(conditioning_channels, int) \
            or conditioning_channels < 0:
        raise ValueError(f"conditioning_channels must be an integer >= 0, got {conditioning_channels!r}")
    with torch.random.fork_rng(devices=[]):  # seed the inflation without touching the caller's random state
        torch.manual_seed(seed)
        parts = load_base_components(base, config=config, motion_module=motion_module, stage=stage,
                                     conditioning_channels=conditioning_channels, **unet_options)
    info = make_info(parts["unet"], parts["vae"], parts["text_encoder"], parts["tokenizer"],
                     parts["scheduler_config"], stage=stage, defaults={"cross_frame": cross_frame, **(defaults or {})},
                     source=parts["source"])
    return write_pipeline_folder(out, unet=parts["unet"], vae=parts["vae"], text_encoder=parts["text_encoder"],
                                 tokenizer=parts["tokenizer"], scheduler_config=parts["scheduler_config"], info=info)
