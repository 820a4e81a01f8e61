"""The whole trainer state in a checkpoint folder, as safetensors and JSON only: nothing here unpickles.

accelerate's `save_state` writes the optimiser, LR schedule, RNG states and registered objects (the EMA) with
pickle, and `load_state` reads them back with full pickle, so a checkpoint folder could run code on `--resume`.
This module replaces it. A checkpoint folder holds exactly these files:

    model.safetensors                       the U-Net's weights (unwrapped model, main process; full, not sharded)
    ema.safetensors + ema.json              EMA shadow weights + decay / update count (when train.ema)
    optimizer.safetensors + optimizer.json  optimiser state tensors + the rest (param_groups, hyper-parameters)
    scheduler.json                          the LR schedule's counters (its lambdas are code, rebuilt from the config)
    scaler.json                             fp16 GradScaler state (when mixed_precision=fp16)
    random_states_<rank>.safetensors/.json  each rank's torch CPU / CUDA generator states (uint8 tensors) and
                                            python `random` / numpy states, accelerate's accumulation counter
    trainer_state.json                      step, data position, counters (written last by the trainer: it marks
                                            the folder complete)

Under DDP every rank holds the same weights and the same full optimiser state, so the main process writes
those once and every rank reads them; each rank writes and reads its own random states. Under FSDP2 the ranks
first gather the full weights, optimiser state and EMA to the main process, and each takes its shard back on
loading (training/parallel.py): the files are the same, so either kind of run resumes the other's checkpoints.

Nested state (an optimiser's state_dict) is split into a JSON tree and a safetensors file: a tensor becomes
`{"__tensor__": key}`, a tuple `{"__tuple__": [...]}`, a dict with non-string keys `{"__items__": [[k, v], ...]}`;
only None / bool / int / float / str / list / dict and those three tags exist, so reading one back is data, never
code. `check_checkpoint` validates every file (nothing unknown, no pickle, safetensors headers that cover the file,
JSON that parses into that tree) before anything is loaded, and names the offending file in one line.
"""
from __future__ import annotations

import json
import random
import re
from pathlib import Path

import numpy as np
import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file

from vidiff.training.parallel import (full_model_state, full_optimizer_state, is_sharded, load_full_model_state,
                                     load_full_optimizer_state)
from vidiff.utils import save_safetensors_atomic, write_json_atomic

MODEL = "model.safetensors"
TRAINER_STATE = "trainer_state.json"
PAIRS = ("ema", "optimizer")                    # tree state: <name>.json + <name>.safetensors
JSON_ONLY = ("scheduler.json", "scaler.json", TRAINER_STATE)
RNG_RE = re.compile(r"^random_states_(\d+)\.(json|safetensors)$")
REQUIRED = (MODEL, "optimizer.json", "optimizer.safetensors", "scheduler.json", "random_states_0.json",
            "random_states_0.safetensors", TRAINER_STATE)
TAGS = ("__tensor__", "__tuple__", "__items__")


class CheckpointError(ValueError):
    """A checkpoint that cannot be loaded into this run (a file that does not fit it); `path` is the file."""

    def __init__(self, path, reason: str):
        self.path = Path(path)
        super().__init__(f"{path}: {reason}")


class UnsafeCheckpointError(CheckpointError):
    """A pickle or an unknown file in a checkpoint folder: refused outright, never skipped over silently."""


class CorruptCheckpointError(CheckpointError):
    """A truncated or damaged safetensors / JSON file, or a required file missing: `--resume auto` may fall back
    to an earlier checkpoint."""


# ---------------------------------------------------------------------------------------------------------------
# nested state <-> (JSON tree, flat tensors)
# ---------------------------------------------------------------------------------------------------------------
def encode_tree(value, tensors: dict, path: str = "t"):
    """Replace tensors in `value` by `{"__tensor__": key}` (the tensor goes to `tensors[key]`), tuples and
    non-string-keyed dicts by their tags. Anything but plain data and tensors is an error (not silently lost)."""
    if torch.is_tensor(value):
        tensors[path] = value.detach().cpu().contiguous()
        return {"__tensor__": path}
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, tuple):
        return {"__tuple__": [encode_tree(v, tensors, f"{path}.{i}") for i, v in enumerate(value)]}
    if isinstance(value, list):
        return [encode_tree(v, tensors, f"{path}.{i}") for i, v in enumerate(value)]
    if isinstance(value, dict):
        if all(isinstance(k, str) for k in value):
            if any(k in TAGS for k in value):
                raise TypeError(f"state key {path}: reserved name among {sorted(value)}")
            return {k: encode_tree(v, tensors, f"{path}.{k}") for k, v in value.items()}
        if not all(isinstance(k, (int, str)) and not isinstance(k, bool) for k in value):
            raise TypeError(f"state {path}: dict keys must be str or int, got {sorted(map(repr, value))[:3]}")
        return {"__items__": [[k, encode_tree(v, tensors, f"{path}.{k}")] for k, v in value.items()]}
    raise TypeError(f"state {path}: cannot store a {type(value).__name__} in a checkpoint (safetensors / JSON only)")


def decode_tree(node, tensors: dict):
    """Inverse of `encode_tree`; raises ValueError on anything it did not write."""
    if node is None or isinstance(node, (bool, int, float, str)):
        return node
    if isinstance(node, list):
        return [decode_tree(v, tensors) for v in node]
    if not isinstance(node, dict):
        raise ValueError(f"unexpected JSON value of type {type(node).__name__}")
    tags = [k for k in node if k in TAGS]
    if not tags:
        return {k: decode_tree(v, tensors) for k, v in node.items()}
    if len(node) != 1:
        raise ValueError(f"a tagged node holds other keys: {sorted(node)[:4]}")
    tag, inner = tags[0], node[tags[0]]
    if tag == "__tensor__":
        if not isinstance(inner, str) or inner not in tensors:
            raise ValueError(f"refers to tensor {inner!r}, which its .safetensors file does not hold")
        return tensors[inner]
    if not isinstance(inner, list):
        raise ValueError(f"{tag} must hold a list")
    if tag == "__tuple__":
        return tuple(decode_tree(v, tensors) for v in inner)
    if not all(isinstance(kv, list) and len(kv) == 2 and isinstance(kv[0], (int, str)) for kv in inner):
        raise ValueError("__items__ must hold [key, value] pairs with int or str keys")
    return {k: decode_tree(v, tensors) for k, v in inner}


# ---------------------------------------------------------------------------------------------------------------
# reading and validating single files
# ---------------------------------------------------------------------------------------------------------------
def _sniff(path: Path) -> str | None:
    """'pickle' / 'torch.save zip' when the file starts like one (protocol 2+ pickles start with 0x80 and the
    protocol number; torch.save writes a zip whose members are pickles)."""
    with open(path, "rb") as f:
        head = f.read(4)
    if len(head) >= 2 and head[0] == 0x80 and 2 <= head[1] <= 5:
        return "pickle"
    if head == b"PK\x03\x04":
        return "torch.save (zip of pickles)"
    return None


def _refuse_pickle(path: Path) -> None:
    kind = _sniff(path)
    if kind is not None:
        raise UnsafeCheckpointError(path, f"is a {kind} file; vidiff never unpickles checkpoint files (loading one "
                                          "can run any code): it was not written by vidiff, delete this checkpoint "
                                          "or resume from another")


def read_json(path: Path):
    _refuse_pickle(path)
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CorruptCheckpointError(path, f"damaged JSON ({e}); the checkpoint is incomplete or corrupt") from None


def read_safetensors(path: Path, *, header_only: bool = False) -> dict:
    """All tensors of `path` (CPU), or with `header_only` just check that the header parses and covers the file."""
    _refuse_pickle(path)
    try:
        if header_only:
            with safe_open(str(path), framework="pt") as f:
                return {key: None for key in f.keys()}
        return load_file(str(path))
    except (SafetensorError, OSError) as e:
        raise CorruptCheckpointError(path, f"damaged safetensors file ({e}); the checkpoint is incomplete or "
                                           "corrupt") from None


def read_tree(folder: Path, stem: str, *, header_only: bool = False):
    """`<stem>.json` decoded against the tensors of `<stem>.safetensors`. The tensors are copies: safetensors
    may map the file, and optimiser state loaded as is would stay backed by the checkpoint file."""
    tensors = read_safetensors(folder / f"{stem}.safetensors", header_only=header_only)
    if not header_only:
        tensors = {key: value.clone() for key, value in tensors.items()}
    node = read_json(folder / f"{stem}.json")
    try:
        return decode_tree(node, tensors)
    except (ValueError, RecursionError) as e:
        raise CorruptCheckpointError(folder / f"{stem}.json", f"not a vidiff state file ({e})") from None


def write_tree(folder: Path, stem: str, state) -> None:
    tensors: dict = {}
    tree = encode_tree(state, tensors)
    save_safetensors_atomic(tensors, folder / f"{stem}.safetensors")
    write_json_atomic(folder / f"{stem}.json", tree)


def known_file(name: str) -> bool:
    if name == MODEL or name in JSON_ONLY or RNG_RE.match(name):
        return True
    stem, _, ext = name.partition(".")
    return stem in PAIRS and ext in ("json", "safetensors")


def check_checkpoint(folder) -> None:
    """Validate every file of a checkpoint folder before anything is loaded. Raises UnsafeCheckpointError for
    a pickle or any file this module does not write, CorruptCheckpointError for a missing, truncated or damaged
    one; both name the file."""
    folder = Path(folder)
    if not folder.is_dir():
        raise CorruptCheckpointError(folder, "is not a checkpoint folder")
    entries = sorted(folder.iterdir())
    for entry in entries:  # unknown entries first: a planted file is refused whatever else is wrong
        if not known_file(entry.name) or not entry.is_file() or entry.is_symlink():
            kind = _sniff(entry) if entry.is_file() else None
            what = f"a {kind} file" if kind else ("a folder" if entry.is_dir() else "a file")
            raise UnsafeCheckpointError(entry, f"is {what} that vidiff checkpoints do not contain (they hold only "
                                               "safetensors and JSON files it wrote); vidiff never loads it: delete "
                                               "it, or resume from another checkpoint")
    for name in REQUIRED:
        if not (folder / name).is_file():
            raise CorruptCheckpointError(folder / name, "is missing; the checkpoint is incomplete")
    for entry in entries:
        _refuse_pickle(entry)
    for entry in entries:
        if entry.suffix == ".safetensors" and not (entry.with_suffix(".json").exists() or entry.name == MODEL):
            raise CorruptCheckpointError(entry.with_suffix(".json"), "is missing; the checkpoint is incomplete")
        if entry.suffix == ".json":
            if entry.with_suffix(".safetensors").exists():
                read_tree(folder, entry.stem, header_only=True)
            else:
                read_json(entry)
        elif entry.name == MODEL:
            read_safetensors(entry, header_only=True)
    if not isinstance(read_json(folder / TRAINER_STATE), dict):
        raise CorruptCheckpointError(folder / TRAINER_STATE, "does not hold a JSON object")


# ---------------------------------------------------------------------------------------------------------------
# the pieces of trainer state
# ---------------------------------------------------------------------------------------------------------------
def rng_state() -> dict:
    """This process's python, numpy, torch CPU and CUDA generator states as plain data and uint8 tensors."""
    version, internal, gauss = random.getstate()
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state = {"python": [version, list(internal), gauss],
             "numpy": [kind, keys.tolist(), int(pos), int(has_gauss), float(cached)],
             "torch_cpu": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["torch_cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict, path: Path) -> None:
    try:
        version, internal, gauss = state["python"]
        random.setstate((version, tuple(internal), gauss))
        kind, keys, pos, has_gauss, cached = state["numpy"]
        np.random.set_state((kind, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached))
        torch.set_rng_state(state["torch_cpu"])
        cuda = state.get("torch_cuda")
        # The CUDA states restore only onto the same number of devices (a CPU resume of a GPU run keeps its own).
        if cuda and torch.cuda.is_available() and len(cuda) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(cuda)
    except (KeyError, TypeError, ValueError, RuntimeError) as e:
        raise CorruptCheckpointError(path, f"does not hold valid random states ({type(e).__name__}: {e})") from None


def scheduler_state(lr_scheduler) -> dict:
    """The LR schedule's counters. LambdaLR's `lr_lambdas` entries are the lambdas' attribute dicts (None for
    plain functions): code is not state, get_scheduler rebuilds the lambdas from the config."""
    state = dict(lr_scheduler.state_dict())
    if "lr_lambdas" in state:
        state["lr_lambdas"] = [entry if _plain(entry) else None for entry in state["lr_lambdas"]]
    return state


def _plain(value) -> bool:
    try:
        encode_tree(value, {})
    except TypeError:
        return False
    return True


def _scaler(accelerator):
    return getattr(accelerator, "scaler", None) if accelerator is not None else None


def check_supported(accelerator) -> None:
    """These checkpoints hold one full copy of the weights and optimiser state: one process, DDP, or FSDP2
    (whose shards are gathered into that copy: training/parallel.py). Checked when the run starts."""
    kind = str(getattr(getattr(accelerator, "distributed_type", None), "value", "NO")).upper()
    if kind == "DEEPSPEED":
        raise ValueError("accelerate distributed_type DEEPSPEED is not supported: its engine owns the optimiser and "
                         "saves it with pickle; shard with FSDP2 instead (configs/accelerate/1x8-fsdp2.yaml)")
    if kind in ("MEGATRON_LM", "XLA"):
        raise ValueError(f"accelerate distributed_type {kind} is not supported: vidiff checkpoints support one "
                         "process, DDP (MULTI_GPU / MULTI_CPU) or FSDP2; run `accelerate config` and choose one")
    plugin = getattr(getattr(accelerator, "state", None), "fsdp_plugin", None)
    if kind == "FSDP" and getattr(plugin, "fsdp_version", 2) != 2:
        raise ValueError("accelerate FSDP version 1 is not supported (its state dicts need a flat-parameter "
                         "layout); set fsdp_version: 2 in the accelerate config (configs/accelerate/1x8-fsdp2.yaml)")


def save_training_state(folder, *, model, optimizer, lr_scheduler, ema=None, accelerator=None) -> None:
    """Write the trainer state into `folder` (which exists). Call on every rank: the main process writes the
    shared files (under FSDP every rank first joins their gathering), every rank its random states. The caller
    writes trainer_state.json after a barrier."""
    folder = Path(folder)
    check_supported(accelerator)
    main = accelerator is None or accelerator.is_main_process
    rank = accelerator.process_index if accelerator is not None else 0
    if main or is_sharded(accelerator):
        weights = full_model_state(accelerator, model)
        optimizer_state = full_optimizer_state(accelerator, model, optimizer)
        ema_state = ema.state_dict() if ema is not None else None
    if main:
        save_safetensors_atomic(weights, folder / MODEL)
        write_tree(folder, "optimizer", optimizer_state)
        write_json_atomic(folder / "scheduler.json", encode_tree(scheduler_state(lr_scheduler), {}))
        if ema is not None:
            write_tree(folder, "ema", ema_state)
        scaler = _scaler(accelerator)
        if scaler is not None:
            write_json_atomic(folder / "scaler.json", encode_tree(scaler.state_dict(), {}))
    rng = rng_state()
    rng["accelerate_step"] = int(getattr(accelerator, "step", 0)) if accelerator is not None else 0
    write_tree(folder, f"random_states_{rank}", rng)


def load_training_state(folder, *, model, optimizer, lr_scheduler, ema=None, accelerator=None) -> None:
    """Validate `folder` (check_checkpoint) and restore what `save_training_state` wrote into the given objects.
    Every rank calls it. A file that does not fit this run raises CheckpointError naming it."""
    folder = Path(folder)
    check_supported(accelerator)
    check_checkpoint(folder)
    rank = accelerator.process_index if accelerator is not None else 0

    weights = read_safetensors(folder / MODEL)
    try:
        load_full_model_state(accelerator, model, weights)
    except (RuntimeError, KeyError, ValueError) as e:
        raise CheckpointError(folder / MODEL, f"does not fit this U-Net ({_first_line(e)})") from None
    optimizer_state = read_tree(folder, "optimizer")
    _load_into(lambda state: load_full_optimizer_state(accelerator, model, optimizer, state), optimizer_state,
               folder / "optimizer.json", "optimiser")
    scheduler = decode_tree(read_json(folder / "scheduler.json"), {})
    _load_into(lr_scheduler.load_state_dict, scheduler, folder / "scheduler.json", "LR schedule")
    if ema is not None:
        if not (folder / "ema.json").is_file():
            raise CorruptCheckpointError(folder / "ema.json", "is missing: the checkpoint has no EMA state "
                                                               "(was it trained with train.ema=false?)")
        _load_into(ema.load_state_dict, read_tree(folder, "ema"), folder / "ema.json", "EMA")
    scaler = _scaler(accelerator)
    if scaler is not None and (folder / "scaler.json").is_file():
        _load_into(scaler.load_state_dict, decode_tree(read_json(folder / "scaler.json"), {}), folder / "scaler.json",
                   "grad scaler")
    stem = f"random_states_{rank}"
    if (folder / f"{stem}.json").is_file():  # absent when resuming with more processes than before
        rng = read_tree(folder, stem)
        if not isinstance(rng, dict):
            raise CorruptCheckpointError(folder / f"{stem}.json", "does not hold random states")
        set_rng_state(rng, folder / f"{stem}.json")
        if accelerator is not None and isinstance(rng.get("accelerate_step"), int):
            accelerator.step = rng["accelerate_step"]


def _load_into(load, state, path: Path, what: str) -> None:
    try:
        load(state)
    except (KeyError, TypeError, ValueError, RuntimeError, IndexError) as e:
        raise CheckpointError(path, f"does not fit this run's {what} ({type(e).__name__}: {_first_line(e)})") from None


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__
