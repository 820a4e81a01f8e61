"""The vidiff pipeline folder: read, write, and make one by inflating a Stable Diffusion pipeline.

Layout (what `vidiff inflate` and `vidiff train` write, `vidiff generate` / `edit` read):

    vidiff.json      kind, stage, conditioning, factors, default sampling settings (see `make_info`)
    unet/            VideoUNet.save_pretrained (config.json + diffusion_pytorch_model.safetensors)
    vae/             diffusers AutoencoderKL (absent for pixel-space models)
    text_encoder/    transformers CLIPTextModel
    tokenizer/       transformers CLIPTokenizer
    scheduler/       the base model's diffusers scheduler config (the noise schedule; the sampler is chosen
                     by name at sampling time, vidiff.pipelines.schedulers)

`read_info` only reads JSON, so the CLI can validate a request against a model before importing torch.
"""
from __future__ import annotations

import json
import math
import os
from pathlib import Path

INFO_NAME = "vidiff.json"
KIND = "text-to-video"
CROSS_FRAME_MODES = ("none", "first", "sparse-causal")
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
COMPONENTS = ("unet", "vae", "text_encoder", "tokenizer", "scheduler")
SD_SUFFIXES = (".safetensors", ".ckpt", ".pt", ".pth", ".bin")


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
    if not (path / "unet" / "config.json").is_file():
        raise FileNotFoundError(f"{path} has no unet/config.json: the pipeline folder is incomplete")
    return info


def spatial_factor(info: dict) -> int:
    """Pixel sizes must be multiples of this: the VAE's downsampling times the U-Net's."""
    return int(info["vae_scale_factor"]) * int(info["unet_spatial_factor"])


def make_info(unet, vae, text_encoder, tokenizer, scheduler_config: dict, *, stage: str = "base",
              defaults: dict | None = None, source: str | None = None) -> dict:
    """The vidiff.json content for these components (factors measured from them, defaults filled in)."""
    import vidiff

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
    from vidiff.utils import atomic_dir, check_replaceable

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
        (tmp / INFO_NAME).write_text(json.dumps(info, indent=2, sort_keys=True) + "\n")
    return path


# ---------------------------------------------------------------------------------------------------------------
# Reading the components of a base Stable Diffusion model
# ---------------------------------------------------------------------------------------------------------------
def read_scheduler_config(folder: Path) -> dict:
    file = folder / "scheduler_config.json"
    if not file.is_file():
        raise FileNotFoundError(f"{folder} has no scheduler_config.json")
    return json.loads(file.read_text())


def _is_hub_id(text: str) -> bool:
    parts = text.split("/")
    return (len(parts) == 2 and all(parts) and not text.startswith((".", "~")) and "\\" not in text
            and not text.endswith(SD_SUFFIXES))


def _download_base(repo_id: str) -> Path:
    """Fetch the parts of a hub SD pipeline that inflation needs (safetensors preferred over .bin)."""
    import socket
    from urllib.parse import urlparse

    from huggingface_hub import constants

    if constants.HF_HUB_OFFLINE:
        raise FileNotFoundError(f"--base {repo_id!r} is not a local folder and HF_HUB_OFFLINE is set; pass a local "
                                "diffusers SD pipeline folder")
    host = urlparse(constants.ENDPOINT).hostname or "huggingface.co"
    try:  # fail at once when offline, instead of the hub client's retries
        socket.getaddrinfo(host, 443)
    except OSError as e:
        raise FileNotFoundError(f"--base {repo_id!r} is not a local folder and the hub ({host}) cannot be reached "
                                f"({e}); pass a local diffusers SD pipeline folder") from None
    try:
        from huggingface_hub import list_repo_files, snapshot_download

        files = list_repo_files(repo_id)
        wanted = [f for f in files if f.split("/")[0] in COMPONENTS or f == "model_index.json"]
        if not wanted:
            raise ValueError(f"hub repo {repo_id!r} is not a diffusers SD pipeline (no unet/, vae/, ... folders)")
        skip = ["*.fp16.*", "*.non_ema.*", "*.ckpt", "*.msgpack", "*.onnx", "*.pb", "*.h5"]
        if any(f.endswith(".safetensors") for f in wanted):
            skip.append("*.bin")
        return Path(snapshot_download(repo_id, allow_patterns=[f"{c}/*" for c in COMPONENTS] + ["model_index.json"],
                                      ignore_patterns=skip))
    except ValueError:
        raise
    except Exception as e:  # offline, unknown repo, gated repo, ...
        raise FileNotFoundError(f"--base {repo_id!r} is neither a local folder nor a downloadable hub model "
                                f"({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}); pass a local "
                                "diffusers SD pipeline folder") from None


def load_component(directory: Path, name: str, cls, fix: str = "re-create it with `vidiff inflate`"):
    """`cls.from_pretrained(directory / name)`, with a missing or damaged component reported as one clear error
    (transformers and diffusers raise OSError / ValueError with multi-line messages) ending with `fix`."""
    folder = Path(directory) / name
    if not folder.is_dir():
        raise FileNotFoundError(f"{directory} has no {name}/ folder: the pipeline folder is incomplete; {fix}")
    if name == "tokenizer" and not ((folder / "tokenizer.json").is_file()
                                    or ((folder / "vocab.json").is_file() and (folder / "merges.txt").is_file())):
        # transformers builds an empty-vocabulary tokenizer from tokenizer_config.json alone, without a word.
        raise FileNotFoundError(f"{folder} has no vocabulary (tokenizer.json, or vocab.json + merges.txt); the "
                                f"pipeline folder is damaged: {fix}")
    try:
        return cls.from_pretrained(str(folder))
    except (OSError, ValueError, KeyError, TypeError) as e:
        reason = " ".join(str(e).split())[:300]
        raise ValueError(f"cannot load {folder} ({type(e).__name__}: {reason}); the pipeline folder is damaged: "
                         f"{fix}") from None


def _check_sd_folder(folder: Path) -> None:
    missing = [c for c in ("unet", "text_encoder", "tokenizer", "scheduler") if not (folder / c).is_dir()]
    if missing:
        raise FileNotFoundError(f"{folder} is not a diffusers Stable Diffusion pipeline folder (missing "
                                f"{', '.join(c + '/' for c in missing)}); expected the layout "
                                "StableDiffusionPipeline.save_pretrained writes")


def load_base_components(base: str | os.PathLike, *, config: str | os.PathLike | None = None,
                         **unet_options) -> dict:
    """Load an SD base for inflation: `{unet (inflated VideoUNet), vae or None, text_encoder, tokenizer,
    scheduler_config, source}`.

    base: a diffusers SD pipeline folder, a hub id (when online), or a single-file LDM checkpoint
    (.safetensors / .ckpt) with `config` a local diffusers SD pipeline folder holding the component configs
    (the weights there are not used). A folder without `vae/` is a pixel-space model.
    """
    text = str(base)
    path = Path(base).expanduser()
    if path.is_file() or path.suffix in SD_SUFFIXES:
        return _load_single_file(path, config, **unet_options)
    if not path.exists():
        if not _is_hub_id(text):
            raise FileNotFoundError(f"--base {text!r} does not exist (give a diffusers SD pipeline folder, a hub id "
                                    "like owner/name, or a .safetensors/.ckpt file with --config)")
        path = _download_base(text)
    _check_sd_folder(path)
    from diffusers import AutoencoderKL
    from transformers import CLIPTextModel, CLIPTokenizer

    from vidiff.models.unet import VideoUNet

    unet = VideoUNet.from_2d(path, "unet", **unet_options)
    fix = "give a complete diffusers SD pipeline folder (as StableDiffusionPipeline.save_pretrained writes it)"
    vae = load_component(path, "vae", AutoencoderKL, fix) if (path / "vae").is_dir() else None
    return {
        "unet": unet,
        "vae": vae,
        "text_encoder": load_component(path, "text_encoder", CLIPTextModel, fix),
        "tokenizer": load_component(path, "tokenizer", CLIPTokenizer, fix),
        "scheduler_config": read_scheduler_config(path / "scheduler"),
        "source": text,
    }


def _load_single_file(path: Path, config, **unet_options) -> dict:
    """A single-file SD checkpoint: U-Net through VideoUNet.from_2d, the rest through diffusers' converter."""
    if not path.is_file():
        raise FileNotFoundError(f"--base checkpoint {str(path)!r} does not exist")
    if config is None:
        raise ValueError(f"--base {path.name} is a single-file checkpoint: pass --config with a local diffusers "
                         "SD pipeline folder for its architecture (e.g. the config files of "
                         "stable-diffusion-v1-5; weights there are not needed)")
    config = Path(config).expanduser()
    if not config.is_dir():
        raise FileNotFoundError(f"--config {str(config)!r} is not a folder; give a diffusers SD pipeline folder "
                                "with unet/, vae/, text_encoder/, tokenizer/, scheduler/ configs")
    _check_sd_folder(config)
    from diffusers import StableDiffusionPipeline

    from vidiff.models.unet import VideoUNet

    unet = VideoUNet.from_2d(path, config=config / "unet", **unet_options)
    try:
        pipe = StableDiffusionPipeline.from_single_file(str(path), config=str(config), local_files_only=True,
                                                        safety_checker=None, requires_safety_checker=False)
    except Exception as e:
        raise ValueError(f"could not read the VAE / text encoder of {path.name} with diffusers' single-file "
                         f"loader and the configs in {config} ({type(e).__name__}: "
                         f"{str(e).splitlines()[0] if str(e) else ''})") from None
    return {
        "unet": unet,
        "vae": pipe.vae,
        "text_encoder": pipe.text_encoder,
        "tokenizer": pipe.tokenizer,
        "scheduler_config": read_scheduler_config(config / "scheduler"),
        "source": str(path),
    }


def inflate_pipeline(base: str | os.PathLike, out: str | os.PathLike, *, cross_frame: str = "none",
                     temporal_conv: bool = True, temporal_attention: bool = True,
                     config: str | os.PathLike | None = None, defaults: dict | None = None,
                     seed: int = 0) -> Path:
    """Inflate an SD pipeline (folder, hub id or single file + `config`) into a vidiff pipeline folder at `out`.

    The U-Net gains temporal layers that start as the identity, so the result samples each frame as the
    image model would until it is trained. VAE, text encoder, tokenizer and noise schedule are kept as they are.
    `defaults` override vidiff.json's sampling defaults (`num_frames`, `height`, `fps`, ...). `seed` fixes the
    random parts of the temporal layers' initialisation, so the same base always gives the same folder.
    Returns `out`.
    """
    import torch

    if cross_frame not in CROSS_FRAME_MODES:
        raise ValueError(f"unknown cross-frame mode {cross_frame!r}; use one of {', '.join(CROSS_FRAME_MODES)}")
    with torch.random.fork_rng(devices=[]):  # seed the inflation without touching the caller's random state
        torch.manual_seed(seed)
        parts = load_base_components(base, config=config, cross_frame=cross_frame, temporal_conv=temporal_conv,
                                     temporal_attention=temporal_attention)
    info = make_info(parts["unet"], parts["vae"], parts["text_encoder"], parts["tokenizer"],
                     parts["scheduler_config"], defaults=defaults, source=parts["source"])
    return write_pipeline_folder(out, unet=parts["unet"], vae=parts["vae"], text_encoder=parts["text_encoder"],
                                 tokenizer=parts["tokenizer"], scheduler_config=parts["scheduler_config"], info=info)
