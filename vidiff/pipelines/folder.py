"""The vidiff pipeline folder: read, write, and make one by inflating a Stable Diffusion pipeline.

Layout (what `vidiff inflate` and `vidiff train` write, `vidiff generate` / `edit` read):

    vidiff.json      kind, stage, conditioning, factors, default sampling settings (see `make_info`)
    unet/            VideoUNet.save_pretrained (config.json + diffusion_pytorch_model.safetensors)
    vae/             diffusers AutoencoderKL (absent for pixel-space models)
    text_encoder/    transformers CLIPTextModel
    tokenizer/       transformers CLIPTokenizer
    scheduler/       the base model's diffusers scheduler config (the noise schedule; the sampler is chosen
                     by name at sampling time, vidiff.pipelines.schedulers)

`read_info` reads only JSON (torch-free), so the CLI can validate a request against a model before
loading any of it.
"""
from __future__ import annotations

import json
import math
import os
from pathlib import Path

from vidiff.spec import STAGE_NAMES, check_cross_frame

INFO_NAME = "vidiff.json"
KIND = "text-to-video"
# Sampling defaults written into vidiff.json when nothing else is known. height / width default to the base
# U-Net's trained size (sample_size x VAE factor: 512 for SD 1.5, 768 for SD 2.x-v).
DEFAULT_SETTINGS = {
    "num_frames": 16,            # frames per clip; also the temporal window the model was trained on
    "fps": 8,                    # frame rate of written clips
    "num_inference_steps": 25,   # sampler steps
    "guidance_scale": 7.5,       # classifier-free guidance weight (1 = off)
    "scheduler": "ddim",         # sampler name (vidiff.pipelines.schedulers.SCHEDULERS)
    "cross_frame": "none",       # spatial self-attention across frames: none | first | sparse-causal
}
_SETTING_TYPES = {"num_frames": int, "fps": (int, float), "num_inference_steps": int, "guidance_scale": (int, float),
                  "scheduler": str, "cross_frame": str, "height": int, "width": int}


# ---------------------------------------------------------------------------------------------------------------
# vidiff.json
# ---------------------------------------------------------------------------------------------------------------
def read_info(path: str | os.PathLike) -> dict:
    """Read and check `path/vidiff.json`; raises FileNotFoundError / ValueError naming the problem and the fix."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"model folder {str(path)!r} does not exist (make one with "
                                f"`vidiff inflate --base SD_PIPELINE --out {path}`)")
    if not path.is_dir():
        raise NotADirectoryError(f"model {str(path)!r} is a file, not a vidiff pipeline folder (make one with "
                                 "`vidiff inflate --base SD_PIPELINE --out DIR`)")
    info_file = path / INFO_NAME
    if not info_file.is_file():
        hint = (" (it looks like a diffusers Stable Diffusion folder: inflate it first with "
                f"`vidiff inflate --base {path} --out DIR`)") if (path / "model_index.json").is_file() else ""
        raise FileNotFoundError(f"{str(path)!r} is not a vidiff pipeline folder: {INFO_NAME} is missing{hint}")
    try:
        info = json.loads(info_file.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{info_file} is not valid JSON ({e}); re-create the folder with `vidiff inflate`") from None
    for key in ("kind", "stage", "defaults", "vae_scale_factor", "unet_spatial_factor"):
        if key not in info:
            raise ValueError(f"{info_file} lacks the key {key!r}; re-create the folder with `vidiff inflate`")
    if not isinstance(info["defaults"], dict):
        raise ValueError(f"{info_file}: defaults must be an object, got {info['defaults']!r}; re-create the folder "
                         "with `vidiff inflate`")
    missing = [key for key in _SETTING_TYPES if key not in info["defaults"] and key != "cross_frame"]
    if missing:
        raise ValueError(f"{info_file}: defaults lack {', '.join(missing)}; add them or re-create the folder with "
                         "`vidiff inflate`")
    for key, value in info["defaults"].items():
        if key in _SETTING_TYPES and (not isinstance(value, _SETTING_TYPES[key]) or isinstance(value, bool)
                                      or (isinstance(value, float) and not math.isfinite(value))):
            raise ValueError(f"{info_file}: defaults.{key} must be a finite {_SETTING_TYPES[key]}, got {value!r}; "
                             "fix the value or re-create the folder with `vidiff inflate`")
    check_stage(info["stage"], f" in {info_file} (fix it or re-create the folder with `vidiff inflate`)")
    if not (path / "unet" / "config.json").is_file():
        raise FileNotFoundError(f"{path} has no unet/config.json: the pipeline folder is incomplete")
    return info


def check_stage(stage: str, context: str = "") -> str:
    """`stage` if it is a known stage name (vidiff.spec.STAGE_NAMES), else a ValueError."""
    if not isinstance(stage, str) or stage not in STAGE_NAMES:
        raise ValueError(f"unknown stage {stage!r}{context}; use one of {', '.join(STAGE_NAMES)}")
    return stage


def spatial_factor(info: dict) -> int:
    """Pixel sizes must be multiples of this: the VAE's downsampling times the U-Net's."""
    return int(info["vae_scale_factor"]) * int(info["unet_spatial_factor"])


def make_info(unet, vae, text_encoder, tokenizer, scheduler_config: dict, *, stage: str | None = None,
              defaults: dict | None = None, source: str | None = None) -> dict:
    """The vidiff.json content for these components (factors measured from them, defaults filled in).
    `stage` defaults to the one the U-Net's config records ("base" when it records none)."""
    import vidiff

    stage = check_stage(stage if stage is not None else unet.config.get("stage", "base"))

    vae_factor = 2 ** (len(vae.config.block_out_channels) - 1) if vae is not None else 1
    sample_size = unet.config.get("sample_size") or 64
    if isinstance(sample_size, (list, tuple)):
        sample_size = sample_size[0]
    settings = dict(DEFAULT_SETTINGS, height=int(sample_size) * vae_factor, width=int(sample_size) * vae_factor,
                    cross_frame=unet.config.get("cross_frame", "none"))
    unknown = set(defaults or {}) - set(settings)
    if unknown:
        raise ValueError(f"unknown default setting(s) {sorted(unknown)}; choose from {sorted(settings)}")
    settings.update(defaults or {})
    return {
        "kind": KIND,
        "stage": stage,
        "vidiff_version": vidiff.__version__,
        "source": source,
        "conditioning": {
            "type": "text",
            "text_encoder": type(text_encoder).__name__,
            "max_length": int(tokenizer.model_max_length),
            "hidden_size": int(text_encoder.config.hidden_size),
            "conditioning_channels": int(unet.conditioning_channels),
        },
        "latent": vae is not None,
        "in_channels": int(unet.in_channels),
        "vae_scale_factor": vae_factor,
        "scaling_factor": float(vae.config.scaling_factor) if vae is not None else 1.0,
        "unet_spatial_factor": int(unet.spatial_factor),
        "prediction_type": scheduler_config.get("prediction_type", "epsilon"),
        "defaults": settings,
    }


# ---------------------------------------------------------------------------------------------------------------
# Writing
# ---------------------------------------------------------------------------------------------------------------
def write_pipeline_folder(path: str | os.PathLike, *, unet, text_encoder, tokenizer, scheduler_config: dict,
                          vae=None, info: dict) -> Path:
    """Write a complete pipeline folder atomically (a crash leaves any old folder at `path` untouched). An
    existing `path` is replaced only if it is an earlier pipeline folder (has vidiff.json) or empty."""
    from vidiff.utils import atomic_dir, check_replaceable, write_json_atomic

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
        write_json_atomic(tmp / INFO_NAME, info)
    return path


# ---------------------------------------------------------------------------------------------------------------
# Reading and inflating (the SD base's components are read by vidiff.models.loading.load_base_components)
# ---------------------------------------------------------------------------------------------------------------
def read_scheduler_config(folder: str | os.PathLike) -> dict:
    """The noise schedule of a pipeline: the diffusers scheduler config `folder/scheduler_config.json`
    (torch-free: the CLI checks the step count against it before loading anything)."""
    file = Path(folder) / "scheduler_config.json"
    if not file.is_file():
        raise FileNotFoundError(f"{folder} has no scheduler_config.json")
    try:
        config = json.loads(file.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"{file} is not a readable JSON file ({type(e).__name__}: {' '.join(str(e).split())[:200]}"
                         "); the folder is damaged: re-create it") from None
    if not isinstance(config, dict):
        raise ValueError(f"{file} holds a JSON {type(config).__name__}, not a scheduler config object; the folder "
                         "is damaged: re-create it")
    return config


def inflate_pipeline(base: str | os.PathLike, out: str | os.PathLike, *, cross_frame: str = "none",
                     temporal_conv: bool = True, temporal_attention: bool = True, stage: str = "base",
                     conditioning_channels: int = 0, temporal_position: str = "qk", frame_embedding: bool = False,
                     coordinate_embedding: bool = False, config: str | os.PathLike | None = None,
                     defaults: dict | None = None, seed: int = 0) -> Path:
    """Inflate an SD pipeline (folder, hub id or single file + `config`) into a vidiff pipeline folder at `out`.

    The U-Net gains temporal layers that start as the identity, so the result samples each frame as the
    image model would until it is trained. VAE, text encoder, tokenizer and noise schedule are kept as they are.
    `stage` (vidiff.spec.STAGE_NAMES) is recorded in vidiff.json and the U-Net config; a cascade
    stage's `conditioning_channels` extra input channels are created zero-initialised, so the stage starts out
    as its base. `temporal_position` (vidiff.spec.TEMPORAL_POSITIONS) is where temporal attention adds
    its frame position encoding; `frame_embedding` adds each frame's index to its timestep embedding, `coordinate_embedding`
    each pixel's position to its features. `defaults` override vidiff.json's sampling defaults (`num_frames`, `height`, `fps`, ...).
    `seed` fixes the random parts of the temporal layers' initialisation, so the same base always gives the
    same folder. Returns `out`.
    """
    import torch

    from vidiff.models.loading import load_base_components

    check_cross_frame(cross_frame)
    check_stage(stage)
    if isinstance(conditioning_channels, bool) or not isinstance(conditioning_channels, int) \
            or conditioning_channels < 0:
        raise ValueError(f"conditioning_channels must be an integer >= 0, got {conditioning_channels!r}")
    with torch.random.fork_rng(devices=[]):  # seed the inflation without touching the caller's random state
        torch.manual_seed(seed)
        parts = load_base_components(base, config=config, cross_frame=cross_frame, temporal_conv=temporal_conv,
                                     temporal_attention=temporal_attention, stage=stage,
                                     conditioning_channels=conditioning_channels,
                                     temporal_position=temporal_position, frame_embedding=frame_embedding,
                                     coordinate_embedding=coordinate_embedding)
    info = make_info(parts["unet"], parts["vae"], parts["text_encoder"], parts["tokenizer"],
                     parts["scheduler_config"], stage=stage, defaults=defaults, source=parts["source"])
    return write_pipeline_folder(out, unet=parts["unet"], vae=parts["vae"], text_encoder=parts["text_encoder"],
                                 tokenizer=parts["tokenizer"], scheduler_config=parts["scheduler_config"], info=info)
