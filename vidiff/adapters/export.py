"""A LoRA in another format, without sampling anything: what `vidiff export` calls.

    export_lora("runs/ft/pipeline", "style.safetensors", "comfyui")     # a trained pipeline's adapter
    export_lora("style.safetensors", "style-diffusers.safetensors", "diffusers", model="runs/ft/pipeline")

A trained pipeline folder keeps its adapter as `unet/lora.safetensors` (diffusers keys, beside the unfused base
weights); a file is read in any format `vidiff.adapters.formats` knows. Kohya names lose the dots of module
paths, so a kohya file with vidiff's own temporal layers needs `model=` (a pipeline folder or VideoUNet folder
whose module names resolve them); diffusers' key conversion covers the SD names without one.
"""
from __future__ import annotations

import os
from pathlib import Path

from accelerate import init_empty_weights

from vidiff.adapters.formats import FORMATS
from vidiff.adapters.lora import LORA_NAME, _targets_of, adaptable_modules, read_lora, read_lora_metadata, write_lora
from vidiff.models.unet import ARCHITECTURE_OPTIONS, VideoUNet
from vidiff.models.weights import migrate_video_unet_config, read_video_unet_config


def _unet_folder(path: Path) -> Path:
    return path / "unet" if (path / "unet").is_dir() else path


def module_skeleton(folder) -> dict:
    """The adaptable layers of the VideoUNet saved in `folder` (a pipeline or U-Net folder), built on the meta
    device from its config alone (no weights read)."""
    directory = _unet_folder(Path(folder))
    config = migrate_video_unet_config(read_video_unet_config(directory), directory / "config.json")
    options = {k: config.pop(k) for k in ARCHITECTURE_OPTIONS if k in config}
    with init_empty_weights():
        return adaptable_modules(VideoUNet(config, **options))


def lora_file_of(source) -> Path:
    """The LoRA file `source` names: itself, or a pipeline folder's unet/lora.safetensors."""
    source = Path(source).expanduser()
    if source.is_dir():
        path = _unet_folder(source) / LORA_NAME
        if not path.is_file():
            raise FileNotFoundError(f"{source} holds no LoRA adapter ({path.relative_to(source)} is missing); "
                                    "only a pipeline trained with train.trainable=lora has one")
        return path
    if not source.is_file():
        raise FileNotFoundError(f"LoRA file {source} does not exist")
    return source


def export_lora(source: str | os.PathLike, out: str | os.PathLike, format: str = "diffusers", *,
                model: str | os.PathLike | None = None) -> Path:
    """Write the LoRA of `source` (a trained pipeline folder or a LoRA file) to `out` in `format` ("diffusers" or
    "comfyui"), atomically, with its rank / alpha / targets in the metadata. Errors are one line (LoadingError,
    FileNotFoundError, ValueError) before anything is written. Returns `out`."""
    if format not in FORMATS:
        raise ValueError(f"LoRA format must be one of {', '.join(FORMATS)}, got {format!r}")
    path = lora_file_of(source)
    folder = model if model is not None else (source if Path(source).is_dir() else None)
    modules = module_skeleton(folder) if folder is not None else None
    weights = read_lora(path, modules)
    metadata = read_lora_metadata(path)
    extra = {k: metadata[k] for k in ("dropout",) if k in metadata}
    return write_lora(weights, out, format, metadata.get("targets") or _targets_of(weights.down), extra)
