"""Models built from files: one safe loader for a diffusers / transformers component folder (`load_component`) and
the components of a Stable Diffusion base, its U-Net inflated into a VideoUNet (`load_base_components`).

The files themselves (weights, configs, hub ids, `LoadingError`) are read and checked by vidiff.models.weights,
which imports no vidiff model; this module sits above vidiff.models.unet.
"""
from __future__ import annotations

import os
import pickle
import socket
from pathlib import Path
from urllib.parse import urlparse

from diffusers import AutoencoderKL
from huggingface_hub import constants, list_repo_files, snapshot_download
from safetensors import SafetensorError, safe_open
from transformers import CLIPTextModel, CLIPTokenizer

from vidiff.models.motion import read_motion_module
from vidiff.models.unet import VideoUNet
from vidiff.models.weights import WEIGHT_SUFFIXES, LoadingError, is_hub_id, one_line, unpickler_reason
# re-exported until pipelines/stage_folder.py imports it from vidiff.models.weights, its home
from vidiff.spec import read_json, read_scheduler_config
from vidiff.utils import quiet_libraries

# ----------------------------------------------------------------------------------------------------------------
# Stable Diffusion base pipelines: the components `vidiff inflate` reads, and one safe loader for a diffusers /
# transformers component folder.

SD_COMPONENTS = ("unet", "vae", "text_encoder", "tokenizer", "scheduler")
SD_FOLDER_FIX = "give a complete diffusers SD pipeline folder (as StableDiffusionPipeline.save_pretrained writes it)"


def _component_weights(folder: Path) -> list[Path]:
    """The weight files `from_pretrained` reads in a component folder: its safetensors files, else its .bin."""
    safetensors = sorted(folder.glob("*.safetensors"))
    return safetensors or sorted(folder.glob("*.bin"))


def _check_component_files(folder: Path, fix: str) -> None:
    """Every JSON file of a component parses and every safetensors file is whole (header and size; the tensors
    are not read), so a damaged file is named here instead of deep inside transformers / diffusers."""
    for path in sorted(folder.glob("*.json")):
        read_json(path, f"the folder is damaged; {fix}", LoadingError)
    for path in sorted(folder.glob("*.safetensors")):
        try:
            with safe_open(str(path), framework="pt"):
                pass
        except (SafetensorError, OSError) as error:
            raise LoadingError(f"{path} is damaged or truncated ({one_line(error)}): the folder is damaged; "
                               f"{fix}") from None


def _component_error(folder: Path, weights: list[Path], error: Exception, fix: str) -> LoadingError:
    """One line for a failed `from_pretrained`: names the weight file when there is one, and the refused pickle
    when torch's weights-only unpickler is what failed (the libraries wrap it in other errors)."""
    chain, cause = [], error
    while cause is not None and len(chain) < 10:
        chain.append(cause)
        cause = cause.__cause__ or cause.__context__
    where = weights[0] if len(weights) == 1 else folder
    refused = next((e for e in chain if isinstance(e, pickle.UnpicklingError)), None)
    if refused is not None:
        return LoadingError(f"{where} could not be read as plain tensors ({unpickler_reason(refused)}); vidiff loads "
                            "weights-only files, since unpickling arbitrary objects can run code: convert it to "
                            f"safetensors in an environment you trust, or {fix}")
    return LoadingError(f"cannot load {where} ({one_line(error)}): the folder is damaged; {fix}")


def load_component(directory: str | os.PathLike, name: str, cls, fix: str = "re-create it with `vidiff inflate`"):
    """`cls.from_pretrained(directory / name)` (a transformers / diffusers class) with safe formats only.

    Safetensors weights are required when present (`use_safetensors=True`, so a planted .bin beside them is never
    read); a folder with only .bin weights is read by the libraries' `torch.load(weights_only=True)`. A missing,
    damaged or unsafe component is one error naming the file (FileNotFoundError, or LoadingError, a ValueError),
    ending with `fix`.
    """
    folder = Path(directory) / name
    if not folder.is_dir():
        raise FileNotFoundError(f"{directory} has no {name}/ folder: the pipeline folder is incomplete; {fix}")
    if name == "tokenizer" and not ((folder / "tokenizer.json").is_file()
                                    or ((folder / "vocab.json").is_file() and (folder / "merges.txt").is_file())):
        # transformers builds an empty-vocabulary tokenizer from tokenizer_config.json alone, without a word.
        raise FileNotFoundError(f"{folder} has no vocabulary (tokenizer.json, or vocab.json + merges.txt); the "
                                f"pipeline folder is damaged: {fix}")
    _check_component_files(folder, fix)
    weights = _component_weights(folder)
    # Safetensors when there are any, else straight to the .bin (the libraries' torch.load is weights-only):
    # left to guess, diffusers logs a failed safetensors fetch and "Defaulting to unsafe serialization" first.
    options = {"use_safetensors": weights[0].suffix == ".safetensors"} if weights else {}
    try:
        with quiet_libraries():
            return cls.from_pretrained(str(folder), **options)
    except Exception as error:  # the libraries raise OSError, ValueError, SafetensorError, ... with long messages
        raise _component_error(folder, weights, error, fix) from error


def _download_base(repo_id: str) -> Path:
    """Fetch the parts of a hub SD pipeline that inflation needs (safetensors preferred over .bin)."""
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
        files = list_repo_files(repo_id)
        wanted = [f for f in files if f.split("/")[0] in SD_COMPONENTS or f == "model_index.json"]
        if not wanted:
            raise ValueError(f"hub repo {repo_id!r} is not a diffusers SD pipeline (no unet/, vae/, ... folders)")
        skip = ["*.fp16.*", "*.non_ema.*", "*.ckpt", "*.msgpack", "*.onnx", "*.pb", "*.h5"]
        if any(f.endswith(".safetensors") for f in wanted):
            skip.append("*.bin")
        return Path(snapshot_download(repo_id, allow_patterns=[f"{c}/*" for c in SD_COMPONENTS] + ["model_index.json"],
                                      ignore_patterns=skip))
    except ValueError:
        raise
    except Exception as e:  # offline, unknown repo, gated repo, ...
        raise FileNotFoundError(f"--base {repo_id!r} is neither a local folder nor a downloadable hub model "
                                f"({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}); pass a local "
                                "diffusers SD pipeline folder") from None


def _check_sd_folder(folder: Path) -> None:
    missing = [c for c in ("unet", "text_encoder", "tokenizer", "scheduler") if not (folder / c).is_dir()]
    if missing:
        raise FileNotFoundError(f"{folder} is not a diffusers Stable Diffusion pipeline folder (missing "
                                f"{', '.join(c + '/' for c in missing)}); expected the layout "
                                "StableDiffusionPipeline.save_pretrained writes")


def load_base_components(base: str | os.PathLike, *, config: str | os.PathLike | None = None,
                         motion_module: str | os.PathLike | None = None, **unet_options) -> dict:
    """Load an SD base for inflation: `{unet (inflated VideoUNet), vae or None, text_encoder, tokenizer,
    scheduler_config, source}`; `unet_options` go to `VideoUNet.from_2d`. `motion_module` (a diffusers
    MotionAdapter folder or hub id, or an original AnimateDiff file: vidiff.models.motion) gives the U-Net
    AnimateDiff's layout with those trained modules; it is read (and refused, if it must be) before the base.

    base: a diffusers SD pipeline folder, a hub id (when online), or a single-file LDM checkpoint
    (.safetensors / .ckpt) with `config` a local diffusers SD pipeline folder holding the component configs
    (the weights there are not used). A folder without `vae/` is a pixel-space model.
    """
    motion = None
    if motion_module is not None:
        settings, motion = read_motion_module(motion_module)
        unet_options.update(temporal_layout="animatediff", motion=settings.to_config())
    parts = _load_base(base, config, **unet_options)
    if motion is not None:
        parts["unet"].load_motion_module(motion)
    return parts


def _load_base(base: str | os.PathLike, config, **unet_options) -> dict:
    text = os.fspath(base)
    path = Path(base).expanduser()
    if path.is_file() or path.suffix in WEIGHT_SUFFIXES:
        return _load_sd_single_file(path, config, **unet_options)
    if not path.exists():
        if not is_hub_id(text):
            raise FileNotFoundError(f"--base {text!r} does not exist (give a diffusers SD pipeline folder, a hub id "
                                    "like owner/name, or a .safetensors/.ckpt file with --config)")
        path = _download_base(text)
    _check_sd_folder(path)
    unet = VideoUNet.from_2d(path, "unet", **unet_options)
    vae = load_component(path, "vae", AutoencoderKL, SD_FOLDER_FIX) if (path / "vae").is_dir() else None
    return {
        "unet": unet,
        "vae": vae,
        "text_encoder": load_component(path, "text_encoder", CLIPTextModel, SD_FOLDER_FIX),
        "tokenizer": load_component(path, "tokenizer", CLIPTokenizer, SD_FOLDER_FIX),
        "scheduler_config": read_scheduler_config(path / "scheduler"),
        "source": text,
    }


def _load_sd_single_file(path: Path, config, **unet_options) -> dict:
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
    with quiet_libraries():  # (transformers' "requires torchvision" notes as the pipelines package imports)
        # here, not at the top: diffusers' pipelines package costs seconds and only single files need it
        from diffusers import StableDiffusionPipeline

    unet = VideoUNet.from_2d(path, config=config / "unet", **unet_options)
    try:
        with quiet_libraries():
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
