"""Small shared helpers: atomic file writes, seeding, device/dtype parsing.

Torch-free at import (the CLI imports this module for `vidiff --help`): the few helpers that need torch or
safetensors import it when called.

Every file that matters (checkpoints, exported models, outputs) is written to a temporary name beside its
target and renamed into place, so a crash or a full disk never leaves a half-written file behind.
"""
from __future__ import annotations

import contextlib
import importlib
import json
import logging
import os
import re
import shutil
import tempfile
import warnings
from pathlib import Path
from typing import Iterator


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _publish(path: Path, directory: bool) -> None:
    """mkstemp / mkdtemp create private (0600 / 0700) entries: give the result the usual umask permissions."""
    os.chmod(path, (0o777 if directory else 0o666) & ~_umask())


def _publish_tree(root: Path) -> None:
    """Every folder and file under `root` (itself included) with the umask's permissions, as `cp` or any editor
    would leave them: the libraries writing into a temporary folder (transformers' and diffusers'
    `save_pretrained`) go through private temporary files too, which left weights 0600 under umask 022. Files
    keep their execute bits (none in a model folder) and links are left alone."""
    mask = _umask()
    for folder, dirs, files in os.walk(root):
        os.chmod(folder, 0o777 & ~mask)
        for name in files:
            file = Path(folder, name)
            if not file.is_symlink():
                executable = file.stat().st_mode & 0o111
                os.chmod(file, (0o777 if executable else 0o666) & ~mask)


def _as_os_error(error: BaseException, tmp: Path, path: Path) -> BaseException:
    """A failed write (into `tmp`, published as `path`) as the OSError it is, naming the user's path rather than
    the temporary one: an OSError on a file under `tmp` names the same file under `path`, and safetensors'
    `SafetensorError: ... No space left on device (os error 28)` (a full disk, no file named) becomes that
    OSError on `path`. Anything else is returned as it is."""
    if isinstance(error, OSError) and error.filename is not None:
        try:
            inside = Path(os.fsdecode(error.filename)).relative_to(tmp)
        except ValueError:
            return error
        return type(error)(error.errno, error.strerror, str(path / inside if inside.parts else path))
    code = re.search(r"os error (\d+)", str(error))
    if type(error).__name__ == "SafetensorError" and code:
        return OSError(int(code.group(1)), os.strerror(int(code.group(1))), str(path))
    return error


def _reraise(error: BaseException, tmp: Path, path: Path):
    translated = _as_os_error(error, tmp, path)
    if translated is error:
        raise error
    raise translated from error


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary file path beside `path`; on success rename it onto `path`, on failure delete it.

    The temporary name keeps the suffix of `path`, so writers that pick a format by extension still work.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=f"{path.suffix}.tmp{path.suffix}",
                                   dir=path.parent)
    except OSError as e:  # (it names the temporary file)
        raise type(e)(e.errno, e.strerror, str(path)) from e
    os.close(fd)
    tmp = Path(tmp)
    try:
        yield tmp
        if tmp.is_dir():  # (a writer may replace the file by a folder, e.g. PNG frames)
            _publish_tree(tmp)
        else:
            _publish(tmp, directory=False)
        os.replace(tmp, path)
    except BaseException as e:
        if tmp.is_dir():
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            tmp.unlink(missing_ok=True)
        _reraise(e, tmp, path)


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary folder beside `path`; on success it replaces `path` (an old folder is removed
    only after the new one is complete), on failure it is deleted and `path` is left as it was."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    except OSError as e:  # (it names the temporary folder)
        raise type(e)(e.errno, e.strerror, str(path)) from e
    try:
        yield tmp
    except BaseException as e:
        shutil.rmtree(tmp, ignore_errors=True)
        _reraise(e, tmp, path)
    publish_dir(tmp, path)


def publish_dir(tmp: str | os.PathLike, path: str | os.PathLike) -> None:
    """Rename the complete folder `tmp` onto `path` (an old folder is removed only after the new one is in
    place); on failure `path` is left as it was and `tmp` is deleted. atomic_dir's last step, for writers whose
    temporary folder several processes fill (the ranks of `vidiff data cache`)."""
    tmp, path = Path(tmp), Path(path)
    old = None
    try:
        _publish_tree(tmp)
        if path.exists():
            old = path.parent / f".{path.name}.old-{os.getpid()}"
            os.replace(path, old)
        os.replace(tmp, path)
    except BaseException:  # e.g. `path` is busy or on another device: put the old entry back, drop the new one
        if old is not None and not path.exists():
            os.replace(old, path)
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if old is not None:
        if old.is_dir() and not old.is_symlink():
            shutil.rmtree(old, ignore_errors=True)
        else:  # a file (or link) was replaced by the folder
            old.unlink(missing_ok=True)


def check_replaceable(path: str | os.PathLike, is_own, what: str, fix: str = "choose a new path") -> None:
    """The one rule for every writer that replaces a folder (or file) at `path`: only something vidiff wrote
    (`is_own(path)` is True: an earlier pipeline folder, cache, dataset, ...) or an empty folder may be replaced.
    Anything else is the user's, and raises FileExistsError naming `path`, `what` was expected, and `fix`."""
    path = Path(path)
    if not path.exists() and not path.is_symlink():
        return
    if path.is_dir() and not path.is_symlink() and (not any(path.iterdir()) or is_own(path)):
        return
    kind = "a folder" if path.is_dir() else "a file"
    raise FileExistsError(f"{path} exists and is {kind} that is not {what}; vidiff replaces only what it wrote "
                          f"(or an empty folder): {fix}")


# What the libraries print while vidiff loads, converts or moves a model, said better (or wrongly) by vidiff itself:
# diffusers' "Defaulting to unsafe serialization" (the load was weights-only, and refused), its "modules in
# AutoencoderKL that should be kept in float32: []" on every `.to(dtype)`, transformers' "requires torchvision"
# notes when the single-file loader imports its image processors, torch's "Detected pickle protocol 4" from the
# weights-only unpickler. Their errors still raise, and the CLI prints those as one line.
LIBRARY_LOGGERS = ("diffusers", "transformers")
LIBRARY_WARNINGS = (r"Detected pickle protocol",)


@contextlib.contextmanager
def quiet_libraries() -> Iterator[None]:
    """Silence diffusers' and transformers' loggers and torch's unpickler notes inside the block, then put them
    back as they were (scoped: a caller's own logging setup and other code's warnings are left alone)."""
    loggers = [logging.getLogger(name) for name in LIBRARY_LOGGERS]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.CRITICAL + 1)
    try:
        with warnings.catch_warnings():
            for message in LIBRARY_WARNINGS:
                warnings.filterwarnings("ignore", message=message)
            yield
    finally:
        for logger, level in zip(loggers, levels):
            logger.setLevel(level)


def yaml_error_line(error: Exception) -> str:
    """A PyYAML error as one line: the problem and where ("expected ',' or ']', but got ':' at line 4, column 5"),
    without the quoted source lines and carets PyYAML's own message spreads over four."""
    mark = getattr(error, "problem_mark", None)
    problem = getattr(error, "problem", None) or str(error)
    where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
    return " ".join(f"{problem}{where}".split())


def lazy_exports(module_name: str, table: dict[str, str]):
    """A module `__getattr__` (PEP 562) that imports each public name's module on first use, so importing a
    package does not pull in torch or diffusers until something needs them."""

    def __getattr__(name):
        if name in table:
            return getattr(importlib.import_module(table[name]), name)
        raise AttributeError(f"module {module_name!r} has no attribute {name!r}")

    return __getattr__


def write_json_atomic(path: str | os.PathLike, data) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")


def save_safetensors_atomic(tensors: dict, path: str | os.PathLike, metadata: dict | None = None) -> None:
    from safetensors.torch import save_file  # here: the CLI imports utils for `--help`, which must not load torch

    tensors = {k: v.detach().contiguous().cpu() for k, v in tensors.items()}
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata=metadata)


# The precision names the CLI and the pipelines accept (parse_dtype also takes torch's spellings).
DTYPES = ("fp32", "fp16", "bf16")


def parse_dtype(name: str):
    """'fp32' | 'fp16' | 'bf16' (or torch spellings) -> torch.dtype."""
    import torch  # here, like every torch import in this module: the CLI imports utils for `--help`

    table = {"fp32": torch.float32, "float32": torch.float32, "fp16": torch.float16, "float16": torch.float16,
             "half": torch.float16, "bf16": torch.bfloat16, "bfloat16": torch.bfloat16}
    if isinstance(name, torch.dtype):
        return name
    if name not in table:
        raise ValueError(f"unknown dtype {name!r}; use one of {', '.join(DTYPES)}")
    return table[name]


def default_device() -> str:
    import torch  # (torch-free at import: see parse_dtype)

    if torch.cuda.is_available():
        return "cuda"
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return "mps"
    return "cpu"


def check_device(device=None):
    """`device` ("cpu", "cuda", "cuda:N", "mps", a torch.device, or None for the best available) as a
    torch.device, after checking this machine has it: a ValueError naming the device and the fix, instead of
    torch's AssertionError ("Torch not compiled with CUDA enabled") after a model has been loaded."""
    import torch  # (torch-free at import: see parse_dtype)

    if device is None:
        return torch.device(default_device())
    try:
        resolved = torch.device(device)
    except (RuntimeError, TypeError, ValueError):
        raise ValueError(f"unknown device {device!r}; use cuda, cuda:N, mps or cpu") from None
    if resolved.type == "cuda":
        if not torch.cuda.is_available():
            why = "this torch build has no CUDA" if torch.version.cuda is None else "no CUDA GPU is visible"
            raise ValueError(f"device {str(device)!r} asked for, but no CUDA device is available ({why}); use 'cpu'")
        count = torch.cuda.device_count()
        if resolved.index is not None and resolved.index >= count:
            raise ValueError(f"device {str(device)!r}: there are {count} CUDA devices (cuda:0 .. cuda:{count - 1})")
    elif resolved.type == "mps":
        if getattr(torch.backends, "mps", None) is None or not torch.backends.mps.is_available():
            raise ValueError(f"device {str(device)!r} asked for, but MPS is not available; use 'cpu'")
    elif resolved.type != "cpu":
        raise ValueError(f"unsupported device {str(device)!r}; use cuda, cuda:N, mps or cpu")
    return resolved


def plural(n: int, noun: str) -> str:
    """"1 frame", "3 frames": a number with its noun in the right number."""
    return f"{n} {noun}{'s' * (n != 1)}"
