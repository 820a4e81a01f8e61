"""Cascade stage folders: make an untrained interpolation / TSR / SSR stage from a Stable Diffusion pipeline.

A stage folder is a vidiff pipeline folder (vidiff.folder) whose U-Net takes extra input channels, with
`vidiff.json` naming the stage and recording its `stage_options` (factors, noise augmentation):

    interpolation  conv_in + (latent channels + 1): masked video latents and the mask      (Make-A-Video)
    tsr            conv_in + latent channels: the low-frame-rate video repeated in time    (Imagen Video)
    ssr            conv_in + latent channels: the low-res video upsampled, noise-augmented, (Imagen, SD x4)
                   and a class embedding of the augmentation level

The new `conv_in` columns and the new class embedding's output layer start at zero, so a fresh stage computes
exactly what its base model computes, whatever the condition: training teaches it to use the condition.

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

from vidiff.spec import CASCADE_STAGES, check_cross_frame
from vidiff.pipelines.folder import make_info, read_scheduler_config, write_pipeline_folder

# What `vidiff inflate --stage NAME` records when no factor is given.
DEFAULT_FACTOR = {"interpolation": 2, "tsr": 2, "ssr": 2}


def fresh_stage(stage: str, factor: int | None = None, latent_channels: int = 4):
    """The training stage (vidiff.training.stages) a fresh stage folder describes: its options are the folder's
    `stage_options`, its `conditioning_channels` the U-Net's extra input channels."""
    from vidiff.training.stages import MASK_MODES, make_stage

    if stage not in CASCADE_STAGES:
        raise ValueError(f"unknown stage {stage!r}; choose from {', '.join(CASCADE_STAGES)}")
    if factor is not None and (isinstance(factor, bool) or not isinstance(factor, int)):
        raise ValueError(f"--factor must be an integer, got {factor!r}")
    if stage == "interpolation":
        options = {"mask_factors": [factor] if factor else [2, 4], "mask_modes": list(MASK_MODES)}
    else:
        options = {"factor": factor or DEFAULT_FACTOR[stage]}
    return make_stage(stage, latent_channels=latent_channels, **options)


def default_stage_options(stage: str, factor: int | None = None, latent_channels: int = 4) -> dict:
    """`stage_options` of a fresh stage (checked by building the training stage from them)."""
    from vidiff.training.stages import SAMPLING_NOISE_LEVEL

    options = fresh_stage(stage, factor, latent_channels).options()
    if stage == "ssr":
        options["noise_level"] = SAMPLING_NOISE_LEVEL  # sampling default of the condition's augmentation level
    return options


def widen_unet(unet, conditioning_channels: int, *, stage: str):
    """A copy of `unet` (a freshly inflated VideoUNet without condition channels, its latent channel count
    known only once loaded) taking `conditioning_channels` input channels through zero-initialised `conv_in`
    columns, recorded as a `stage` U-Net: the copy computes exactly what `unet` computes, whatever the condition.
    The widening is `VideoUNet.from_2d_weights`'s, the one `inflate_pipeline(conditioning_channels=)` uses."""
    from vidiff.models.unet import OPTIONS, VideoUNet

    if unet.conditioning_channels:
        raise ValueError(f"widen_unet takes a U-Net without condition channels, got one with "
                         f"{unet.conditioning_channels}")
    config = {k: v for k, v in unet.config.items() if k not in OPTIONS}
    options = {k: unet.config[k] for k in OPTIONS if k in unet.config}
    options.update(conditioning_channels=conditioning_channels, stage=stage)
    return VideoUNet.from_2d_weights(config, unet.state_dict(), source=f"the inflated {stage} U-Net", **options)


def add_level_embedding(unet) -> None:
    """Give a VideoUNet without one a class embedding for the SSR condition's noise level: an MLP on the
    level's sinusoidal embedding (diffusers' `class_embed_type="timestep"`, recorded in the U-Net config so the
    saved stage rebuilds it) whose output layer is zero, so the U-Net computes what it did before."""
    import torch
    from diffusers.models.embeddings import TimestepEmbedding

    if unet.class_embedding is not None:
        return
    embedding = TimestepEmbedding(unet.time_embedding.linear_1.in_features, unet.time_embedding.linear_2.out_features,
                                  act_fn=unet.config.get("act_fn", "silu"))
    with torch.no_grad():  # ControlNet-style zero output layer: the level adds nothing until trained
        embedding.linear_2.weight.zero_()
        embedding.linear_2.bias.zero_()
    unet.class_embedding = embedding.to(unet.device, unet.dtype)
    unet.class_embed_type = unet.config["class_embed_type"] = "timestep"


def is_upscaler_folder(path) -> bool:
    """A diffusers SD x4 upscaler pipeline folder (has `low_res_scheduler/`, as StableDiffusionUpscalePipeline
    saves it)."""
    path = Path(path)
    return path.is_dir() and (path / "low_res_scheduler").is_dir() and (path / "unet").is_dir()


def load_upscaler_components(folder: Path, **unet_options) -> dict:
    """The parts of an SD x4 upscaler pipeline folder, its U-Net inflated into an SSR VideoUNet that keeps the
    pretrained pixel condition (3 channels) and noise-level embedding."""
    from diffusers import AutoencoderKL
    from transformers import CLIPTextModel, CLIPTokenizer

    from vidiff.models.loading import load_component, load_unet_2d
    from vidiff.models.unet import VideoUNet

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
    from vidiff.training.stages import AUGMENTATION_SCHEDULE, MAX_NOISE_LEVEL, SAMPLING_NOISE_LEVEL

    schedule = {k: low_res.get(k, v) for k, v in AUGMENTATION_SCHEDULE.items()}
    options = {"factor": 2 ** (len(vae.config.block_out_channels) - 1), "condition": "pixels",
               "max_noise_level": int(index.get("max_noise_level", MAX_NOISE_LEVEL)),
               "augmentation_schedule": schedule, "noise_level": SAMPLING_NOISE_LEVEL}
    return {"unet": unet, "vae": vae, "text_encoder": load_component(folder, "text_encoder", CLIPTextModel, fix),
            "tokenizer": load_component(folder, "tokenizer", CLIPTokenizer, fix),
            "scheduler_config": read_scheduler_config(folder / "scheduler"), "source": str(folder),
            "stage_options": options}


def inflate_stage(base: str | os.PathLike, out: str | os.PathLike, stage: str, *, factor: int | None = None,
                  cross_frame: str = "none", temporal_conv: bool = True, temporal_attention: bool = True,
                  temporal_position: str = "qk", frame_embedding: bool = False,
                  coordinate_embedding: bool = False, config: str | os.PathLike | None = None,
                  defaults: dict | None = None, seed: int = 0) -> Path:
    """Make an untrained cascade stage folder at `out` from an SD pipeline `base` (folder, hub id, or single file
    with `config`; for `stage="ssr"` also an SD x4 upscaler folder). `factor`: interpolation: the one mask factor
    it trains on (default 2 and 4); tsr: the frame-rate factor; ssr: 2 or 4 (an x4 upscaler fixes its own).
    The stage equals its base model until trained. Returns `out`."""
    import torch

    from vidiff.models.loading import load_base_components

    if stage not in CASCADE_STAGES:
        raise ValueError(f"unknown stage {stage!r}; choose from {', '.join(CASCADE_STAGES)}")
    check_cross_frame(cross_frame)
    upscaler = is_upscaler_folder(base)
    if upscaler and stage != "ssr":
        raise ValueError(f"{base} is an SD x4 upscaler: it can only become an ssr stage (--stage ssr)")
    if upscaler and factor not in (None, 4):
        raise ValueError(f"{base} is an SD x4 upscaler: its factor is 4, got --factor {factor}")
    if not upscaler:
        default_stage_options(stage, factor)  # a bad factor fails here, before any loading
    unet_options = dict(cross_frame=cross_frame, temporal_conv=temporal_conv, temporal_attention=temporal_attention,
                        temporal_position=temporal_position, frame_embedding=frame_embedding,
                        coordinate_embedding=coordinate_embedding)
    with torch.random.fork_rng(devices=[]):  # seeded: the same base always gives the same folder
        torch.manual_seed(seed)
        if upscaler:
            parts = load_upscaler_components(Path(base), **unet_options)
            options = parts["stage_options"]
        else:
            parts = load_base_components(base, config=config, **unet_options)
            latent_channels = parts["unet"].in_channels
            options = default_stage_options(stage, factor, latent_channels)
            extra = fresh_stage(stage, factor, latent_channels).conditioning_channels  # the Stage says how many
            parts["unet"] = widen_unet(parts["unet"], extra, stage=stage)
            if stage == "ssr":
                add_level_embedding(parts["unet"])
    info = make_info(parts["unet"], parts["vae"], parts["text_encoder"], parts["tokenizer"],
                     parts["scheduler_config"], stage=stage, defaults=defaults, source=parts["source"])
    num_frames = info["defaults"]["num_frames"]
    if stage == "tsr" and num_frames % options["factor"]:
        # the window of a TSR stage holds whole groups of repeated frames (see vidiff.pipelines.cascade)
        raise ValueError(f"a tsr x{options['factor']} stage needs num_frames (its window) a multiple of "
                         f"{options['factor']}, got {num_frames}")
    info["stage_options"] = options
    return write_pipeline_folder(out, unet=parts["unet"], vae=parts["vae"], text_encoder=parts["text_encoder"],
                                 tokenizer=parts["tokenizer"], scheduler_config=parts["scheduler_config"], info=info)
