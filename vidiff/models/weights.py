"""Weight and config files, read and checked without building a model: the low level of vidiff.models.

    2D Stable Diffusion U-Nets   diffusers folders, hub ids and single-file LDM checkpoints (`load_unet_2d`), all
                                 returned as the diffusers `UNet2DConditionModel` config dict and a state dict in
                                 diffusers' key layout, so `VideoUNet.from_2d` loads SD weights by their own names
    VideoUNet folders            what `VideoUNet.save_pretrained` writes (`read_video_unet_config`, which also
                                 migrates configs of older versions), and `save_temporal` files
    checks                       `check_state_dict` (keys and shapes), `check_unet_config` (the SD family)

Only safe formats are read: safetensors, or `.bin` / `.ckpt` / `.pt` / `.pth` through `torch.load(weights_only=True)`;
a pickle that would run code is refused. A damaged, truncated or unsafe file ends in one `LoadingError` line naming
the file; `is_hub_id` is the one test that tells a hub id from a local path. Nothing here imports a vidiff model
(vidiff.models.unet imports this module; vidiff.models.loading builds models from it).

References: diffusers' folder layout (`config.json` + `diffusion_pytorch_model.safetensors`, sharded with an
`*.index.json` weight map) and the original latent-diffusion key layout (`model.diffusion_model.input_blocks...`),
converted with diffusers' own `convert_ldm_unet_checkpoint`.
"""
from __future__ import annotations

import inspect
import os
import pickle
import re
import warnings
from pathlib import Path
from typing import Callable, Mapping

import torch
from diffusers import UNet2DConditionModel
from diffusers.loaders.single_file_utils import convert_ldm_unet_checkpoint
from huggingface_hub import snapshot_download
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file

from vidiff import spec
from vidiff.spec import RUNTIME_OPTIONS, is_hub_id
from vidiff.utils import quiet_libraries

LDM_UNET_PREFIX = "model.diffusion_model."
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".ckpt", ".pt", ".pth")

# Weight files of a diffusers model folder, in order of preference (safetensors first: no pickle at all).
DIFFUSERS_WEIGHT_NAMES = (
    "diffusion_pytorch_model.safetensors",
    "diffusion_pytorch_model.safetensors.index.json",
    "diffusion_pytorch_model.bin",
    "diffusion_pytorch_model.bin.index.json",
)

class LoadingError(ValueError):
    """A file vidiff was asked to load is damaged, truncated, unsafe (a pickle that would run code) or not what it
    should be. The message is one line naming the file, so the CLI can print it as it is."""


def one_line(error: BaseException, limit: int = 200) -> str:
    """`Type: message` of an exception from a library, squeezed onto one line (many span a page)."""
    text = " ".join(str(error).split())
    return f"{type(error).__name__}: {text[:limit]}{'...' if len(text) > limit else ''}" if text else type(error).__name__


def read_json(path: str | os.PathLike, what: str) -> dict:
    """A JSON object from `path`; LoadingError naming the file when it is unreadable, not JSON, or not an object."""
    path = Path(path)
    data = spec.read_json(path, f"it should be {what}: the file is damaged, restore or re-create it", LoadingError)
    if not isinstance(data, dict):
        raise LoadingError(f"{path} holds a JSON {type(data).__name__}, not an object; it should be {what}")
    return data


# ----------------------------------------------------------------------------------------------------------------
# Reading tensors


def unpickler_reason(error: Exception) -> str:
    """The line of torch's weights-only error that says what failed (the rest of its message is boilerplate)."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    telling = [line for line in lines if line.startswith(("Trying to load unsupported", "Unsupported"))
               or "GLOBAL" in line]
    return (telling or lines or ["unknown error"])[0][:200]


def _read_pickle(path: Path) -> dict:
    try:
        with quiet_libraries():  # (torch's "Detected pickle protocol 4" before its own refusal)
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        if "GLOBAL" not in str(error):  # not a refused object: the bytes are no pickle torch can read
            raise LoadingError(f"{path} is not a PyTorch checkpoint (it could not be unpickled: "
                             f"{unpickler_reason(error)}); pass a .safetensors file or a torch.save'd state dict"
                             ) from None
        raise LoadingError(
            f"{path} contains pickled Python objects beyond plain tensors; vidiff only loads weights-only "
            "checkpoints (torch.load(weights_only=True)), since unpickling arbitrary objects can run code; "
            f"convert it to safetensors in an environment you trust, then pass the .safetensors file "
            f"(torch said: {unpickler_reason(error)})"
        ) from None
    except (RuntimeError, EOFError, OSError, ValueError) as error:  # truncated zip, torn write, unreadable
        raise LoadingError(f"could not read {path} as a PyTorch checkpoint ({one_line(error)}); the file is "
                           "damaged or truncated: download or save it again") from error
    if not isinstance(obj, Mapping):
        raise LoadingError(f"{path} holds a {type(obj).__name__}, not a dict of tensors")
    return dict(obj)


def _read_sharded(index_path: Path) -> dict[str, torch.Tensor]:
    """Diffusers/transformers sharding: `{"weight_map": {key: shard file name}}` next to the shards."""
    weight_map = read_json(index_path, "a shard index with a 'weight_map'").get("weight_map")
    if not isinstance(weight_map, dict) or not all(isinstance(v, str) for v in weight_map.values()):
        raise LoadingError(f"{index_path} is not a shard index: it has no 'weight_map' of key -> shard file name")
    state_dict: dict[str, torch.Tensor] = {}
    for shard in sorted(set(weight_map.values())):
        shard_path = index_path.parent / shard
        if not shard_path.is_file():
            raise FileNotFoundError(f"shard {shard} listed in {index_path} is missing from {index_path.parent}")
        state_dict.update(read_state_dict(shard_path))
    absent = [key for key in weight_map if key not in state_dict]
    if absent:
        raise LoadingError(f"{len(absent)} keys listed in {index_path} are in none of its shards "
                         f"({', '.join(absent[:5])}{', ...' if len(absent) > 5 else ''})")
    return state_dict


def read_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Read a weight file into a flat `{name: tensor}` dict on the CPU.

    `.safetensors` through safetensors; `.bin` / `.ckpt` / `.pt` / `.pth` through `torch.load(weights_only=True)`
    only; `*.index.json` reads every shard it lists. A top-level `"state_dict"` entry (LDM / Lightning `.ckpt`)
    is unwrapped.
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"weight file {path} does not exist")
    name = path.name.lower()
    if name.endswith(".index.json"):
        return _read_sharded(path)
    if name.endswith(".safetensors"):
        try:
            return load_file(str(path), device="cpu")
        except (SafetensorError, OSError, ValueError, RuntimeError) as error:
            raise LoadingError(f"could not read {path} as safetensors ({one_line(error)}); the file is damaged or "
                               "truncated: download or save it again") from error
    if not name.endswith(WEIGHT_SUFFIXES):
        raise ValueError(f"unsupported weight file {path}: expected one of {', '.join(WEIGHT_SUFFIXES)} "
                         "or a *.index.json shard index")
    state_dict = _read_pickle(path)
    if isinstance(state_dict.get("state_dict"), Mapping):
        state_dict = dict(state_dict["state_dict"])
    not_tensors = [key for key, value in state_dict.items() if not isinstance(value, torch.Tensor)]
    if not_tensors:
        raise LoadingError(f"{path} is not a flat dict of tensors: {len(not_tensors)} entries are not tensors "
                         f"({', '.join(map(str, not_tensors[:5]))})")
    return state_dict


# ----------------------------------------------------------------------------------------------------------------
# Checking a state dict against a model


def _shape(size) -> str:
    return str(tuple(size))


def _names(keys: list[str], limit: int = 5) -> str:
    return ", ".join(keys[:limit]) + (", ..." if len(keys) > limit else "")


def check_state_dict(
    expected: Mapping[str, torch.Size] | torch.nn.Module,
    state_dict: Mapping[str, torch.Tensor],
    *,
    allow_missing: Callable[[str], bool] = lambda key: False,
    source: str = "the checkpoint",
) -> None:
    """Raise `ValueError` unless `state_dict` has exactly the keys and shapes of `expected`.

    `expected` maps names to shapes (or is the module itself). Keys for which `allow_missing(key)` is true
    (e.g. new temporal layers) may be absent. The message names the first few keys of each kind and counts them.
    """
    if isinstance(expected, torch.nn.Module):
        expected = {key: value.shape for key, value in expected.state_dict().items()}
    missing = [key for key in expected if key not in state_dict and not allow_missing(key)]
    unexpected = [key for key in state_dict if key not in expected]
    mismatched = [key for key in expected if key in state_dict
                  and tuple(state_dict[key].shape) != tuple(expected[key])]
    if not (missing or unexpected or mismatched):
        return
    problems = []
    if missing:
        problems.append(f"{len(missing)} missing key{'s' * (len(missing) != 1)} ({_names(missing)})")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected key{'s' * (len(unexpected) != 1)} ({_names(unexpected)})")
    if mismatched:
        shown = [f"{key}: checkpoint {_shape(state_dict[key].shape)} vs model {_shape(expected[key])}"
                 for key in mismatched[:5]]
        problems.append(f"{len(mismatched)} shape mismatch{'es' * (len(mismatched) != 1)} "
                        f"({', '.join(shown)}{', ...' if len(mismatched) > 5 else ''})")
    raise LoadingError(f"weights in {source} do not fit the model: {', '.join(problems)}; "
                     "check that the config matches the checkpoint (in_channels, block_out_channels, "
                     "layers_per_block, cross_attention_dim, use_linear_projection)")


# ----------------------------------------------------------------------------------------------------------------
# Configs


def _read_config(config: str | os.PathLike | Mapping) -> dict:
    """A diffusers U-Net config: a dict, a config.json, or a folder holding config.json (or unet/config.json)."""
    if isinstance(config, Mapping):
        data, where = dict(config), "the config dict"
    else:
        where = Path(config).expanduser()
        if where.is_dir():
            for candidate in (where / "config.json", where / "unet" / "config.json"):
                if candidate.is_file():
                    where = candidate
                    break
            else:
                raise FileNotFoundError(f"config folder {where} has no config.json (nor unet/config.json); "
                                        "pass the diffusers U-Net's config.json or its folder")
        if not where.is_file():
            raise FileNotFoundError(f"U-Net config {where} does not exist; pass a diffusers UNet2DConditionModel "
                                    "config.json or the folder that holds it")
        data = read_json(where, "a diffusers UNet2DConditionModel config")
    class_name = data.get("_class_name", "UNet2DConditionModel")
    if class_name != "UNet2DConditionModel":
        raise LoadingError(f"{where} describes a {class_name}, not a UNet2DConditionModel; pass the config of "
                         "a Stable Diffusion U-Net (the unet/ folder of an SD pipeline)")
    return data


def _with_defaults(config: dict) -> dict:
    """The config with UNet2DConditionModel's defaults filled in (old SD configs omit some keys)."""
    parameters = inspect.signature(UNet2DConditionModel.__init__).parameters
    defaults = {name: p.default for name, p in parameters.items()
                if p.default is not inspect.Parameter.empty and name != "self"}
    return {**defaults, **config}


# ----------------------------------------------------------------------------------------------------------------
# Single-file LDM checkpoints


def ldm_to_diffusers(state_dict: Mapping[str, torch.Tensor], config: Mapping, source: str = "the checkpoint"
                     ) -> dict[str, torch.Tensor]:
    """Convert an original latent-diffusion U-Net state dict to diffusers keys with diffusers' own converter.

    Accepts a whole SD checkpoint (`model.diffusion_model.*`, other models' keys ignored), a bare LDM U-Net
    (`input_blocks.*`), or weights already in diffusers layout (returned as they are). U-Net keys the converter
    does not use are kept under their LDM names, so `check_state_dict` reports them as unexpected.
    """
    if "conv_in.weight" in state_dict or "time_embedding.linear_1.weight" in state_dict:
        return dict(state_dict)
    if not any(key.startswith(LDM_UNET_PREFIX) for key in state_dict):
        if "input_blocks.0.0.weight" not in state_dict:
            raise LoadingError(f"{source} holds no Stable Diffusion U-Net: no '{LDM_UNET_PREFIX}*' (LDM) nor "
                             f"'conv_in.weight' (diffusers) keys; its first keys are {_names(list(state_dict), 3)}")
        state_dict = {LDM_UNET_PREFIX + key: value for key, value in state_dict.items()}
    try:
        converted = convert_ldm_unet_checkpoint(dict(state_dict), _with_defaults(dict(config)))
    except KeyError as error:
        raise LoadingError(f"{source} lacks {error.args[0]!r}, which the config needs (its class embedding "
                         "settings); check that the config belongs to this checkpoint") from error
    converted = {key: value for key, value in converted.items() if value is not None}
    used = {id(value) for value in converted.values()}
    leftover = {key[len(LDM_UNET_PREFIX):]: value for key, value in state_dict.items()
                if key.startswith(LDM_UNET_PREFIX) and id(value) not in used}
    return {**converted, **leftover}


def _load_single_file(path: Path, config) -> tuple[dict, dict[str, torch.Tensor]]:
    if path.name.endswith(".json") and not path.name.endswith(".index.json"):
        raise ValueError(f"{path} is a JSON file, not weights; pass the weights (a folder, a .safetensors or "
                         ".ckpt file) and give the config with config=")
    state_dict = read_state_dict(path)
    if config is None:
        sibling = path.parent / "config.json"
        is_diffusers = "conv_in.weight" in state_dict
        if not (is_diffusers and sibling.is_file()):
            raise ValueError(f"{path} is a single-file checkpoint without a U-Net config; pass config= a local "
                             "diffusers UNet2DConditionModel config.json (or the SD pipeline / unet folder holding "
                             "it) that matches the checkpoint, e.g. the unet/config.json of the SD version it "
                             "was trained from")
        config = sibling
    config = _read_config(config)
    return config, ldm_to_diffusers(state_dict, config, source=str(path))


# ----------------------------------------------------------------------------------------------------------------
# Diffusers folders and the hub


def _unet_folder(root: Path, subfolder: str | None) -> Path:
    """The folder holding the U-Net's config.json: `root/subfolder`, `root`, or an SD pipeline's `root/unet`."""
    if subfolder:
        folder = root / subfolder
        if not (folder / "config.json").is_file():
            raise FileNotFoundError(f"{folder} has no config.json; is {subfolder!r} the right subfolder of {root}?")
        return folder
    if (root / "config.json").is_file():
        return root
    if (root / "unet" / "config.json").is_file():
        return root / "unet"
    raise FileNotFoundError(f"{root} has neither config.json nor unet/config.json; pass a diffusers U-Net folder, "
                            "an SD pipeline folder (with unet/), or a single-file checkpoint with config=")


def _weights_in(folder: Path) -> Path:
    for name in DIFFUSERS_WEIGHT_NAMES:
        if (folder / name).is_file():
            return folder / name
    found = sorted(p.name for p in folder.iterdir() if p.name.endswith(WEIGHT_SUFFIXES + (".json",)))
    raise FileNotFoundError(f"{folder} has no U-Net weights (looked for {', '.join(DIFFUSERS_WEIGHT_NAMES)}; "
                            f"found {', '.join(found) or 'nothing'}); variant files such as *.fp16.safetensors "
                            "are not picked automatically: rename one to diffusion_pytorch_model.safetensors")


def _hub_patterns(subfolder: str | None, formats: tuple[str, ...]) -> list[str]:
    prefixes = [f"{subfolder.strip('/')}/"] if subfolder else ["", "unet/"]
    patterns = []
    for prefix in prefixes:
        patterns.append(f"{prefix}config.json")
        for ext in formats:
            patterns += [f"{prefix}diffusion_pytorch_model.{ext}", f"{prefix}diffusion_pytorch_model.{ext}.index.json",
                         f"{prefix}diffusion_pytorch_model-*.{ext}"]
    return patterns


def _download(repo_id: str, subfolder: str | None) -> Path:
    """Fetch only the U-Net's config and weights of a hub repo (safetensors, else .bin)."""
    def fetch(formats):
        try:
            return Path(snapshot_download(repo_id, allow_patterns=_hub_patterns(subfolder, formats)))
        except Exception as error:  # offline, unknown repo, gated repo, network: all end the same way
            raise FileNotFoundError(
                f"{repo_id!r} is not a local path and could not be downloaded from the Hugging Face Hub "
                f"({type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}); check the id and "
                "the connection, or pass a local diffusers folder (or a single-file checkpoint with config=)"
            ) from error

    root = fetch(("safetensors",))
    folder = _unet_folder(root, subfolder)
    if not any((folder / name).is_file() for name in DIFFUSERS_WEIGHT_NAMES[:2]):
        root = fetch(("bin",))
    return _unet_folder(root, subfolder)


def load_unet_2d(path_or_id: str | os.PathLike, subfolder: str | None = None, *, config=None
                 ) -> tuple[dict, dict[str, torch.Tensor]]:
    """Load a 2D SD U-Net's config and weights in diffusers' key layout.

    `path_or_id` is (a) a diffusers U-Net folder (`config.json` + `diffusion_pytorch_model.*`) or an SD pipeline
    folder (its `unet/` is used; or name it with `subfolder="unet"`), (b) a hub id, fetched when not a local path,
    or (c) a single-file checkpoint (`.safetensors` / `.ckpt`, original LDM layout) with `config=` a local diffusers
    U-Net config.json, the folder holding it, or a dict. For folders, `config=` replaces their config.json.
    Returns `(config, state_dict)`; check the state dict against the model with `check_state_dict`.
    """
    text = os.fspath(path_or_id)
    path = Path(text).expanduser()
    if path.is_file():
        return _load_single_file(path, config)
    if path.is_dir():
        folder = _unet_folder(path, subfolder)
    elif not is_hub_id(text):
        raise FileNotFoundError(f"{text} does not exist; pass a diffusers U-Net or SD pipeline folder, a hub id, "
                                "or a single-file checkpoint (.safetensors / .ckpt) with config=")
    else:
        folder = _download(text, subfolder)
    unet_config = _read_config(folder / "config.json" if config is None else config)
    weights = _weights_in(folder)
    return unet_config, read_state_dict(weights)


# ----------------------------------------------------------------------------------------------------------------
# The SD family VideoUNet inflates

# The SD 1.x / 2.x / x4-upscaler block types: what VideoUNet's forward pass knows how to walk.
DOWN_BLOCKS = ("CrossAttnDownBlock2D", "DownBlock2D")
UP_BLOCKS = ("CrossAttnUpBlock2D", "UpBlock2D")
MID_BLOCKS = ("UNetMidBlock2DCrossAttn", None)
# config keys that must keep diffusers' defaults (features outside the SD family)
UNSUPPORTED = {
    "encoder_hid_dim_type": None, "time_embedding_type": "positional",
    "time_cond_proj_dim": None, "attention_type": "default", "dual_cross_attention": False,
    "class_embeddings_concat": False, "time_embedding_act_fn": None, "num_attention_heads": None,
}


def check_unet_config(config: dict) -> dict:
    """Validate a diffusers UNet2DConditionModel config for inflation; returns a clean copy."""
    config = {k: v for k, v in config.items() if not k.startswith("_")}
    for key in ("down_block_types", "up_block_types"):
        allowed = DOWN_BLOCKS if key.startswith("down") else UP_BLOCKS
        for block in config.get(key, ()):
            if block not in allowed:
                raise ValueError(f"VideoUNet supports {key} from {allowed}, got {block!r}")
    if config.get("mid_block_type", "UNetMidBlock2DCrossAttn") not in MID_BLOCKS:
        raise ValueError(f"VideoUNet supports mid_block_type from {MID_BLOCKS}, got {config['mid_block_type']!r}")
    for key, default in UNSUPPORTED.items():
        if config.get(key, default) != default:
            raise ValueError(f"VideoUNet does not support {key}={config[key]!r} (SD 1.x/2.x configs only)")
    if config.get("class_embed_type") not in (None, "timestep"):
        raise ValueError(f"VideoUNet supports class_embed_type None or 'timestep', got {config['class_embed_type']!r}")
    if config.get("addition_embed_type") not in (None, "text"):
        raise ValueError("VideoUNet supports addition_embed_type None or 'text' (Imagen's pooled text embedding "
                         f"added to the timestep embedding), got {config['addition_embed_type']!r}")
    return config


# ----------------------------------------------------------------------------------------------------------------
# VideoUNet folders and temporal-layer files

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "diffusion_pytorch_model.safetensors"
TEMPORAL_FORMAT = "temporal"  # the "vidiff" metadata entry of a save_temporal file

# Per-run VideoUNet options, never written into a saved config: the attention backend (vidiff.spec.RUNTIME_OPTIONS)
# and the cross-frame mode (a sampling setting; a pipeline folder suggests one in vidiff.json defaults.cross_frame).
UNET_RUNTIME_OPTIONS = RUNTIME_OPTIONS



def read_video_unet_config(directory: str | os.PathLike) -> dict:
    """The config.json of a folder written by `VideoUNet.save_pretrained`, as saved (`migrate_video_unet_config`
    brings it to this version): FileNotFoundError if there is none, LoadingError (one line naming the file) if it
    is damaged or belongs to another kind of model."""
    config_file = Path(directory) / CONFIG_NAME
    if not config_file.is_file():
        raise FileNotFoundError(f"no VideoUNet at {directory}: {CONFIG_NAME} is missing "
                                "(use VideoUNet.from_2d for a Stable Diffusion U-Net)")
    config = read_json(config_file, "a VideoUNet config")
    if config.get("_class_name") != "VideoUNet":
        raise LoadingError(f"{config_file} is not a VideoUNet config (found {config.get('_class_name')!r}); "
                           "use VideoUNet.from_2d to inflate a 2D U-Net")
    return config


def migrate_video_unet_config(config: dict, config_file: Path, overrides: Mapping = {}) -> dict:
    """A saved config without the runtime options older versions wrote into it, so the model loads anywhere:
    `cross_frame` (the mode it was made with) is dropped silently, the pipeline folder's vidiff.json
    `defaults.cross_frame` carrying the folder's suggested mode; an attention backend other than "auto" (e.g.
    "xformers" from a CUDA machine) is dropped with one warning, unless the caller chooses one."""
    config = dict(config)
    config.pop("cross_frame", None)
    for key in RUNTIME_OPTIONS:
        saved = config.pop(key, "auto")
        if saved != "auto" and key not in overrides:
            warnings.warn(f"{config_file} records {key}={saved!r} from the machine that saved it; runtime options "
                          f"are not part of a saved model, so 'auto' is used (pass {key}= to choose)", stacklevel=3)
    return config


def is_video_unet_folder(path) -> bool:
    """True for a folder `VideoUNet.save_pretrained` wrote (its config.json names the class)."""
    try:
        return read_video_unet_config(Path(path)) is not None
    except (OSError, ValueError):
        return False


def holds_only_a_video_unet(path: Path) -> bool:
    """A folder save_pretrained may replace (vidiff.utils.check_replaceable): a VideoUNet's, with no file of the
    user's beside it."""
    return is_video_unet_folder(path) and {p.name for p in Path(path).iterdir()} <= {CONFIG_NAME, WEIGHTS_NAME}


def is_temporal_file(path) -> bool:
    """True for a file `VideoUNet.save_temporal` wrote: safetensors whose metadata marks vidiff temporal layers."""
    try:
        with safe_open(str(path), framework="pt") as handle:
            return (handle.metadata() or {}).get("vidiff") == TEMPORAL_FORMAT
    except Exception:  # not safetensors at all (SafetensorError, OSError, ...): not ours
        return False
