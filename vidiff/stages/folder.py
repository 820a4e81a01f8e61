"""Cascade stage folders: make an untrained interpolation / TSR / SSR stage from a Stable Diffusion pipeline.

A stage folder is a vidiff pipeline folder (vidiff.models.folder) whose U-Net takes extra input channels, with
`vidiff.json` naming the stage and recording its `stage_options` (factors, noise augmentation):

    interpolation  conv_in + (latent channels + 1): masked video latents and the mask      (Make-A-Video)
    tsr            conv_in + latent channels: the low-frame-rate video repeated in time    (Imagen Video)
    ssr            conv_in + latent channels: the low-res video upsampled, noise-augmented, (Imagen, SD x4)
                   and a class embedding of the augmentation level

The new `conv_in` columns and the new class embedding's output layer start at zero, so a fresh stage computes
exactly what its base model computes, whatever the condition: training teaches it to use the condition.

A trained vidiff text-to-video folder (a `base` stage: `vidiff inflate --base runs/base/pipeline --stage
interpolation`) becomes a stage the same way: its VideoUNet (temporal layers, frame embeddings and all) is widened,
so the stage starts as that video model (how the demo's image-to-video stage starts from the demo base).

An SD x4 upscaler pipeline (diffusers `StableDiffusionUpscalePipeline`: a 7-channel U-Net = 4 latent + 3 pixel
channels, a noise-level class embedding, its own VAE and `low_res_scheduler`) becomes an SSR stage that keeps
its pretrained conditioning: the low-resolution *pixels* (at the latent size) are its condition.

References: Singer et al. 2022 (Make-A-Video); Ho et al. 2022 (Imagen Video); Saharia et al. 2022 (Imagen);
Rombach et al. 2022 (the SD x4 upscaler, diffusers' StableDiffusionUpscalePipeline).
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from diffusers import AutoencoderKL
from transformers import CLIPTextModel, CLIPTokenizer

from vidiff.models.folder import inflate_pipeline, make_info, write_pipeline_folder
from vidiff.models.loading import load_base_components, load_component
from vidiff.models.unet import OPTIONS, VideoUNet
from vidiff.models.weights import load_unet_2d
from vidiff.spec import CASCADE_STAGES, check_cross_frame, read_info, read_scheduler_config
from vidiff.stages.cascade import SSRStage, _CascadeStage
from vidiff.stages.conditions import AUGMENTATION_SCHEDULE, MAX_NOISE_LEVEL, SAMPLING_NOISE_LEVEL
from vidiff.stages.registry import STAGES


def fresh_stage(stage: str, factor: int | None = None, latent_channels: int = 4) -> _CascadeStage:
    """The stage a fresh stage folder describes: its options are the folder's `stage_options`, its
    `conditioning_channels` the U-Net's extra input channels."""
    if stage not in CASCADE_STAGES:
        raise ValueError(f"unknown stage {stage!r}; choose from {', '.join(CASCADE_STAGES)}")
    return STAGES[stage].fresh(factor, latent_channels)


def widen_unet(unet, conditioning_channels: int, *, stage: str):
    """A copy of `unet` (a freshly inflated VideoUNet without condition channels, its latent channel count
    known only once loaded) taking `conditioning_channels` input channels through zero-initialised `conv_in`
    columns, recorded as a `stage` U-Net: the copy computes exactly what `unet` computes, whatever the condition.
    The widening is `VideoUNet.from_2d_weights`'s, the one `inflate_pipeline(conditioning_channels=)` uses."""
    if unet.conditioning_channels:
        raise ValueError(f"widen_unet takes a U-Net without condition channels, got one with "
                         f"{unet.conditioning_channels}")
    config = {k: v for k, v in unet.config.items() if k not in OPTIONS}
    options = {k: unet.config[k] for k in OPTIONS if k in unet.config} | {"cross_frame": unet.cross_frame}
    options.update(conditioning_channels=conditioning_channels, stage=stage)
    return VideoUNet.from_2d_weights(config, unet.state_dict(), source=f"the inflated {stage} U-Net", **options)


def is_upscaler_folder(path) -> bool:
    """A diffusers SD x4 upscaler pipeline folder (has `low_res_scheduler/`, as StableDiffusionUpscalePipeline
    saves it)."""
    path = Path(path)
    return path.is_dir() and (path / "low_res_scheduler").is_dir() and (path / "unet").is_dir()


def load_upscaler_components(folder: Path, **unet_options) -> dict:
    """The parts of an SD x4 upscaler pipeline folder, its U-Net inflated into an SSR VideoUNet that keeps the
    pretrained pixel condition (3 channels) and noise-level embedding."""
    fix = "give a diffusers SD x4 upscaler folder (as StableDiffusionUpscalePipeline.save_pretrained writes it)"
    for name in ("vae", "text_encoder", "tokenizer", "scheduler"):
        if not (folder / name).is_dir():
            raise FileNotFoundError(f"{folder} has no {name}/ folder: {fix}")
    vae = load_component(folder, "vae", AutoencoderKL, fix)
    unet_config, state_dict = load_unet_2d(folder, "unet")
    latent_channels = int(vae.config.latent_channels)
    condition_channels = int(unet_config.get("in_channels", 7)) - latent_channels
    if condition_channels != 3 or unet_config.get("num_class_embeds") is None:
        raise ValueError(f"{folder} is not an SD x4 upscaler: its U-Net should take {latent_channels} latent + 3 "
                         f"pixel channels and embed the noise level (num_class_embeds); got in_channels="
                         f"{unet_config.get('in_channels')}, num_class_embeds={unet_config.get('num_class_embeds')}")
    # conv_in keeps its 7 pretrained input columns: 4 latent + 3 condition
    unet = VideoUNet.from_2d_weights(dict(unet_config, in_channels=latent_channels), state_dict,
                                     conditioning_channels=3, stage="ssr", source=str(folder / "unet"), **unet_options)
    low_res = read_scheduler_config(folder / "low_res_scheduler")
    index = json.loads((folder / "model_index.json").read_text()) if (folder / "model_index.json").is_file() else {}
    schedule = {k: low_res.get(k, v) for k, v in AUGMENTATION_SCHEDULE.items()}
    stage = SSRStage(latent_channels=latent_channels, factor=2 ** (len(vae.config.block_out_channels) - 1),
                     condition="pixels", max_noise_level=int(index.get("max_noise_level", MAX_NOISE_LEVEL)),
                     augmentation_schedule=schedule, noise_level=SAMPLING_NOISE_LEVEL)
    return {"unet": unet, "vae": vae, "text_encoder": load_component(folder, "text_encoder", CLIPTextModel, fix),
            "tokenizer": load_component(folder, "tokenizer", CLIPTokenizer, fix),
            "scheduler_config": read_scheduler_config(folder / "scheduler"), "source": str(folder), "stage": stage}


def is_video_base_folder(path) -> bool:
    """A vidiff pipeline folder of a text-to-video base (its vidiff.json says stage "base")."""
    return (Path(path) / "vidiff.json").is_file() and read_info(path).stage == "base"


def load_video_base_components(folder: Path) -> dict:
    """A trained vidiff text-to-video folder's parts, as `load_base_components` gives an SD base's: its U-Net is
    already a VideoUNet, whose architecture its config fixes (the inflation options do not apply to it)."""
    info = read_info(folder)
    vae = load_component(folder, "vae", AutoencoderKL) if info.latent else None
    return {"unet": VideoUNet.from_pretrained(folder / "unet").float(), "vae": vae,
            "text_encoder": load_component(folder, "text_encoder", CLIPTextModel),
            "tokenizer": load_component(folder, "tokenizer", CLIPTokenizer),
            "scheduler_config": read_scheduler_config(folder / "scheduler"), "source": str(folder.resolve()),
            # its sampling settings (steps, guidance, sampler) suit the stage too, which starts as this model
            "defaults": {k: getattr(info.defaults, k) for k in ("num_inference_steps", "guidance_scale", "scheduler")}}


def check_inflate_stage(base, stage: str, factor: int | None) -> bool:
    """What `inflate_stage` checks before loading anything (a bad stage or factor); True for an SD x4 upscaler."""
    if stage not in CASCADE_STAGES:
        raise ValueError(f"unknown stage {stage!r}; choose from {', '.join(CASCADE_STAGES)}")
    upscaler = is_upscaler_folder(base)
    if upscaler and stage != "ssr":
        raise ValueError(f"{base} is an SD x4 upscaler: it can only become an ssr stage (--stage ssr)")
    if upscaler and factor not in (None, 4):
        raise ValueError(f"{base} is an SD x4 upscaler: its factor is 4, got --factor {factor}")
    if not upscaler:
        fresh_stage(stage, factor)  # a bad factor fails here
    return upscaler


def inflate_stage(base: str | os.PathLike, out: str | os.PathLike, stage: str, *, factor: int | None = None,
                  cross_frame: str = "none", config: str | os.PathLike | None = None,
                  motion_module: str | os.PathLike | None = None, defaults: dict | None = None, seed: int = 0,
                  **unet_options) -> Path:
    """Make an untrained cascade stage folder at `out` from an SD pipeline `base` (folder, hub id, or single file
    with `config`; for `stage="ssr"` also an SD x4 upscaler folder). `factor`: interpolation: the one mask factor
    it trains on (default 2 and 4); tsr: the frame-rate factor; ssr: 2 or 4 (an x4 upscaler fixes its own).
    `unet_options` and `motion_module` as for `inflate_pipeline`. The stage equals its base model until trained;
    `stage="base"` is `inflate_pipeline`. Returns `out`."""
    if not STAGES.get(stage, _CascadeStage).takes_video:  # the base: no condition channels, no stage options
        return inflate_pipeline(base, out, cross_frame=cross_frame, config=config, defaults=defaults, seed=seed,
                                motion_module=motion_module, **unet_options)
    check_cross_frame(cross_frame)
    upscaler = check_inflate_stage(base, stage, factor)
    with torch.random.fork_rng(devices=[]):  # seeded: the same base always gives the same folder
        torch.manual_seed(seed)
        if upscaler:
            if motion_module is not None:
                raise ValueError("motion modules (--motion-module) go on an SD base, not an SD x4 upscaler")
            parts = load_upscaler_components(Path(base), **unet_options)
        else:
            if is_video_base_folder(base) and config is None and motion_module is None:
                parts = load_video_base_components(Path(base))
            else:
                parts = load_base_components(base, config=config, motion_module=motion_module, **unet_options)
            parts["stage"] = fresh_stage(stage, factor, parts["unet"].in_channels)
            parts["unet"] = widen_unet(parts["unet"], parts["stage"].conditioning_channels, stage=stage)
            parts["stage"].prepare_unet(parts["unet"])
    info = make_info(parts["unet"], parts["vae"], parts["text_encoder"], parts["tokenizer"],
                     parts["scheduler_config"], stage=stage,
                     defaults={**parts.get("defaults", {}), "cross_frame": cross_frame, **(defaults or {})},
                     source=parts["source"], stage_options=parts["stage"].options())
    parts["stage"].check_window(info.defaults.num_frames)
    return write_pipeline_folder(out, unet=parts["unet"], vae=parts["vae"], text_encoder=parts["text_encoder"],
                                 tokenizer=parts["tokenizer"], scheduler_config=parts["scheduler_config"], info=info)
