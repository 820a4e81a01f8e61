"""Helpers shared by the `vidiff` subcommands: the one-line user error, the checks every command makes before
any heavy work (a setting in range, a usable device, a writable output location), and where clips are written.

One video goes to `--out` as given (`clip.mp4`); several go to numbered names beside it (`clip-000.mp4`,
`clip-001.mp4`, ... in prompt-major order); `generate --out "clips/{prompt}-{seed}.mp4"` names each clip by its
prompt (a filesystem-safe slug) and seed instead (`clip_paths`). Each main output gets a sidecar `clip.json` (or `clip-000.json`) and,
on request, extra formats with the same stem: `clip.gif`, `clip.png` (contact sheet), `clip_frames/` (PNGs).
An existing file among them is replaced only with `--overwrite`. A clip's files are written under temporary names
first and published together under a lock on the clip's name, so two runs writing the same `--out` at once leave
one run's files, never a mix. Torch-free (`vidiff --help` imports this module).
"""
from __future__ import annotations

import contextlib
import importlib
import json
import os
import re
import secrets
import string
import shutil
import sys
import tempfile
import unicodedata
from pathlib import Path

from vidiff.data.video_io import VideoReadError, VideoWriter, check_write_target, probe_video, video_format
from vidiff.spec import MAX_SEED, RequestTooLarge, SettingError, check_request_size, check_setting, is_hub_id
from vidiff.utils import check_device as check_torch_device
from vidiff.utils import write_json_atomic

LIBRARY_LOGGING = ("transformers.utils.logging", "diffusers.utils.logging")


def quiet_loading(quiet: bool = True) -> None:
    """--quiet: switch off the progress bars transformers and diffusers draw while loading weights (`main`
    switches them back on when the command ends)."""
    if quiet:
        for name in LIBRARY_LOGGING:  # by name: imported here, when a command asks (each takes a second)
            importlib.import_module(name).disable_progress_bar()


def quiet_weight_bars() -> None:
    """transformers draws a progress bar for every weight file it loads or writes, even a tiny one; the commands
    show their own progress. Hub download bars stay (they are hf_hub's, switched separately)."""
    try:  # imported when a command runs, not for `vidiff --help` (transformers takes a second to import)
        transformers_logging = importlib.import_module("transformers.utils.logging")
    except ImportError:
        return
    transformers_logging._tqdm_active = False


@contextlib.contextmanager
def restored_library_bars():
    """Put transformers' and diffusers' progress-bar switches back as they were when the command ends, so a
    command run in-process (tests, notebooks) leaves no global state behind. A library first imported during the
    command goes back to its default (bars on)."""
    def state(name):
        module = sys.modules.get(name)
        return None if module is None else (module.is_progress_bar_enabled(), getattr(module, "_tqdm_active", None))

    before = {name: state(name) for name in LIBRARY_LOGGING}
    try:
        yield
    finally:
        for name, saved in before.items():
            module = sys.modules.get(name)
            if module is None:
                continue
            enabled, active = saved if saved is not None else (True, True)
            (module.enable_progress_bar if enabled else module.disable_progress_bar)()
            if active is not None and hasattr(module, "_tqdm_active"):
                module._tqdm_active = active


class CLIError(Exception):
    """A user error: printed as one line, exit status 2."""


def flag_error(error: ValueError, prefix: str = "--") -> CLIError:
    """A Python-API error as the command line says it: a SettingError names the flag (vidiff.spec.SETTINGS'
    `flag`; `prefix` replaces its "--", e.g. "stage 1 " for a cascade stage's setting), other errors read as
    they are (so does a SettingError named by a phrase, such as "stage.factor of an ssr stage")."""
    if isinstance(error, SettingError) and error.name.isidentifier():
        return CLIError(error.for_flags(prefix))
    if isinstance(error, RequestTooLarge):
        return CLIError(error.for_flags())
    return CLIError(str(error))


def check_size(clips, allow_large: bool, held: float = 1.0) -> None:
    """`vidiff.spec.check_request_size` (the one size check: frames, pixels a frame, memory; `held`: the part of
    each clip in memory at once) on the clips a command reads and makes, before anything loads; the message
    names --allow-large where it lifts the limit."""
    try:
        check_request_size(clips, allow_large, held)
    except RequestTooLarge as e:
        raise CLIError(e.for_flags()) from None


def check_flag(name: str, value, flag: str | None = None, **limits):
    """`value` of the setting `name` checked by `vidiff.spec.check_setting` (the one range check; `limits`:
    low / high), its message naming the flag (`flag` where this command spells it differently from
    SETTINGS); returns the value."""
    try:
        return check_setting(name, value, **limits)
    except SettingError as e:
        raise CLIError(f"{flag} {e.problem}" if flag else e.for_flags()) from None


def seed_or_random(seed: int | None, count: int = 1) -> int:
    """`--seed` (checked: video i of `count` uses seed + i), or a fresh random one when it is unset (the sidecar
    records it, so the run can be repeated)."""
    if seed is None:
        return secrets.randbelow(2**31)
    return check_flag("seed", seed, high=MAX_SEED - (count - 1))


def probe_video_arg(path: str | os.PathLike, flag: str = "--video"):
    """The header of the input video `flag` names (frame count, fps, size; no decoding), or a CLIError when it
    is missing, a folder, or not a readable video."""
    if not Path(path).is_file():
        what = "is a folder, not a video file" if Path(path).is_dir() else "does not exist"
        raise CLIError(f"{flag} {str(path)!r} {what}")
    try:
        return probe_video(path)
    except VideoReadError as e:
        raise CLIError(f"{flag} {str(path)!r} is not readable ({e.reason}); give a video file PyAV can open") from None


def check_source(source: str | None, flag: str) -> None:
    """A model or weights argument (`flag`) that must be a local path or a hub id (owner/name): CLIError for a
    path that does not exist, before anything loads. None passes."""
    if source is not None and not Path(source).expanduser().exists() and not is_hub_id(source):
        raise CLIError(f"{flag} {source!r} does not exist; give a local folder or file, or a hub id (owner/name)")


def check_device(device: str | None) -> str | None:
    """`--device` (None = the best available) checked by `vidiff.utils.check_device` (the one device check),
    its message naming the flag; CLIError otherwise."""
    if device is None:
        return None
    try:
        check_torch_device(device)
    except ValueError as e:
        raise CLIError(re.sub(r"\bdevice\b", "--device", str(e), count=1)) from None
    return device


def check_writable(target: str | os.PathLike, flag: str = "--out") -> Path:
    """Create and delete a small probe file where `target` will be written (its nearest existing folder), so a
    read-only or full location is one line now rather than an OSError after the work. Returns that folder."""
    target = Path(target).absolute()
    folder = next((p for p in (target.parent, *target.parent.parents) if p.exists()), Path("/"))
    if not folder.is_dir():
        raise CLIError(f"{flag} {target}: {folder} is a file, not a folder; choose another {flag}")
    try:
        fd, probe = tempfile.mkstemp(prefix=".vidiff-probe-", dir=folder)
        try:
            os.write(fd, bytes(64 * 1024))  # a full disk may still take an empty file, not data
        finally:
            os.close(fd)
            os.unlink(probe)
    except OSError as e:
        raise CLIError(f"{flag} {target}: cannot write in {folder} ({e.strerror or e}); choose a writable "
                       f"location with free space") from None
    return folder


def check_file_target(path: str | None, flag: str, suffix: str, overwrite: bool):
    """A results file: the right suffix, not a folder, not an existing file unless --overwrite."""
    if path is None:
        return None
    target = Path(path)
    if target.suffix.lower() != suffix:
        raise CLIError(f"{flag} {path!r} must end in {suffix}")
    if target.is_dir():
        raise CLIError(f"{flag} {path!r} is a folder; give a file name such as results{suffix}")
    if target.exists() and not overwrite:
        raise CLIError(f"{flag} {path!r} exists; pass --overwrite to replace it or choose another name")
    parent = target.resolve().parent
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir():
        raise CLIError(f"{flag} {path!r}: {parent} is a file, not a folder")
    check_writable(target, flag)  # a read-only or full folder: one line now, not after the evaluation
    return target


def check_output_path(out: str | os.PathLike, count: int = 1, *, gif: bool = False, frames_dir: bool = False,
                      contact_sheet: bool = False, overwrite: bool = False, paths: list[Path] | None = None) -> Path:
    """Validate `--out` and every file `write_outputs` will write for `count` videos (at `paths`, default
    `numbered_paths(out, count)`) with these extras (a known video suffix; nothing that would replace a folder,
    or a folder of other files; no file where a parent folder should be; no existing output unless `overwrite`;
    a writable location), so a bad name fails before the model loads. Returns `out`."""
    if str(out) in ("", "."):
        raise ValueError(f"--out {str(out)!r} is empty; give a file name such as clip.mp4")
    out = Path(out)
    kind = video_format(out)  # ValueError for unknown suffixes
    if kind != "frames" and out.is_dir():
        raise ValueError(f"--out {str(out)!r} is an existing folder; give a file name such as clip.mp4")
    if out.suffix.lower() == ".json":
        raise ValueError(f"--out {str(out)!r}: .json is the sidecar's suffix; give a video name such as clip.mp4")
    existing = []
    for path in numbered_paths(out, count) if paths is None else paths:
        if video_format(path) != kind:  # (a {prompt} pattern in the suffix)
            raise ValueError(f"--out {str(out)!r} makes {path}, not a {kind} name; keep {{prompt}} out of the suffix")
        for target, target_kind in _targets(path, gif, frames_dir, contact_sheet):
            try:
                check_write_target(target, target_kind)
            except ValueError as e:
                raise ValueError(f"--out: {e}") from None
        sidecar = _sidecar_path(path)
        if sidecar.is_dir():
            raise ValueError(f"--out: the sidecar {sidecar} would replace a folder; choose another --out")
        _check_sidecar_owner(path, sidecar, output_paths(path, gif, frames_dir, contact_sheet), overwrite)
        existing += [p for p in output_paths(path, gif, frames_dir, contact_sheet) if p.exists()]
    if existing and not overwrite:
        more = f" (and {len(existing) - 1} more of this run's outputs)" if len(existing) > 1 else ""
        raise CLIError(f"--out: {existing[0]} already exists{more}; pass --overwrite to replace it or choose "
                       "another --out")
    check_writable(out)
    return out


def _check_sidecar_owner(path: Path, sidecar: Path, ours: list[Path], overwrite: bool) -> None:
    """A sidecar is shared by every output of one stem (`clip.mp4` and `clip.png` both write `clip.json`): when
    the existing one belongs to another clip still on disk, refuse (without `overwrite`) or warn that that clip
    loses its sidecar, naming it, rather than replacing its record silently."""
    try:
        files = json.loads(sidecar.read_text(encoding="utf-8")).get("files") or []
    except (OSError, ValueError, AttributeError):  # no sidecar, or not one of ours
        return
    names = {p.name for p in ours}
    others = [sidecar.with_name(f) for f in files if isinstance(f, str) and f not in names
              and sidecar.with_name(f).exists()]
    if not others:
        return
    if not overwrite:
        other_name = path.with_name(f"{path.stem}-{path.suffix[1:] or 'frames'}{path.suffix}")
        raise CLIError(f"--out {path}: its sidecar {sidecar} is the sidecar of {others[0]} (an output of the same "
                       f"name); choose another --out name (e.g. {other_name}), or pass --overwrite to replace that "
                       "record")
    print(f"warning: --out {path} replaces {sidecar}, the sidecar of {others[0]}, which keeps none", file=sys.stderr)


def check_video_output(out: str | os.PathLike, video: str | os.PathLike, count: int = 1, **extras) -> Path:
    """`--out` of a command that reads `--video`: never the input itself (said before any 'already exists'),
    then every `check_output_path` rule (`extras`: gif, frames_dir, contact_sheet, overwrite). Returns `out`."""
    if str(out) and Path(video).resolve() == Path(out).resolve():
        raise CLIError("--out must differ from --video")
    try:
        return check_output_path(out, count, **extras)
    except ValueError as e:  # e.g. video_format's "cannot tell the video format from ...": name the flag
        raise CLIError(str(e) if str(e).startswith("--out") else f"--out {str(out)!r}: {e}") from None


def output_paths(path: Path, gif: bool = False, frames_dir: bool = False, contact_sheet: bool = False) -> list[Path]:
    """Every path `write_outputs(path, ...)` writes: the clip, the requested extras, the sidecar."""
    return [target for target, _ in _targets(path, gif, frames_dir, contact_sheet)] + [_sidecar_path(path)]


def numbered_paths(out: str | os.PathLike, count: int) -> list[Path]:
    """`clip.mp4` for one video; `clip-000.mp4`, `clip-001.mp4`, ... for several."""
    out = Path(out)
    if count == 1:
        return [out]
    digits = max(3, len(str(count - 1)))
    return [out.with_name(f"{out.stem}-{i:0{digits}d}{out.suffix}") for i in range(count)]


SLUG_LENGTH = 60  # characters of a prompt in a file name: enough to tell prompts apart, short of any OS's limit
NAME_FIELDS = ("prompt", "seed")


def prompt_slug(prompt: str) -> str:
    """A prompt as a file name part: ASCII (accents dropped), lower case, spaces to '-', anything but letters,
    digits, '-' and '_' left out, at most SLUG_LENGTH characters (cut at a word); "prompt" when nothing is left."""
    text = unicodedata.normalize("NFKD", prompt).encode("ascii", "ignore").decode().lower()
    slug = re.sub(r"-{2,}", "-", re.sub(r"[^a-z0-9_-]", "", re.sub(r"\s+", "-", text.strip()))).strip("-_")
    if len(slug) > SLUG_LENGTH:
        cut = slug[:SLUG_LENGTH + 1]
        slug = (cut.rsplit("-", 1)[0] if "-" in cut[SLUG_LENGTH // 2:] else cut[:SLUG_LENGTH]).strip("-_")
    return slug or "prompt"


def name_fields(out: str | os.PathLike) -> set[str]:
    """The {fields} in `--out`; CLIError for an unknown or malformed one (literal braces are written {{ }})."""
    try:
        fields = {name for _, name, _, _ in string.Formatter().parse(str(out)) if name is not None}
    except ValueError as e:
        raise CLIError(f"--out {str(out)!r}: {e}; write a literal brace as {{{{ or }}}}") from None
    unknown = sorted(fields - set(NAME_FIELDS))
    if unknown:
        raise CLIError(f"--out {str(out)!r}: unknown field {{{unknown[0]}}}; --out takes {{prompt}} and {{seed}}")
    return fields


def clip_paths(out: str | os.PathLike, prompts: list[str], num_videos: int, seed: int) -> list[Path]:
    """Where `generate` writes its prompts x `num_videos` clips (prompt-major; video i has seed + i): `--out`
    numbered (`numbered_paths`), or, when it holds {prompt} / {seed}, that pattern filled in per clip ({prompt}:
    `prompt_slug`). Clips whose filled names agree (one prompt's several videos without {seed}, or two prompts
    with one slug) are numbered -000, -001, ... in their order, so none replaces another."""
    prompts = [p for p in prompts for _ in range(num_videos)]
    if not name_fields(out):
        return numbered_paths(out, len(prompts))
    names = [str(out).format(prompt=prompt_slug(p), seed=seed + i) for i, p in enumerate(prompts)]
    shared = {name: numbered_paths(name, names.count(name)) for name in set(names)}
    paths = [shared[name].pop(0) for name in names]
    if len(set(paths)) < len(paths):  # a numbered name that another clip's filled name already is
        raise CLIError(f"--out {str(out)!r} gives two clips the same name; add {{seed}} to it")
    return paths


def write_outputs(path: Path, frames, fps: float, sidecar: dict, *, gif: bool = False, frames_dir: bool = False,
                  contact_sheet: bool = False, overwrite: bool = False) -> list[Path]:
    """Write one clip to `path` (format from its suffix), the requested extras and its sidecar; returns the paths
    (`ClipOutputs` with the whole clip as its one chunk)."""
    with ClipOutputs(path, fps, gif=gif, frames_dir=frames_dir, contact_sheet=contact_sheet, overwrite=overwrite,
                     total=len(frames)) as outputs:
        outputs.write(frames)
        return outputs.publish(sidecar)


class ClipOutputs:
    """One clip, its extras and its sidecar, written chunk by chunk (`write`) and published together (`publish`).

    Everything is written into a private folder beside `path` first, then moved into place under an exclusive
    lock on the clip's name: another run publishing the same names waits, so the mp4, the extras and the JSON
    always come from one run. Without `overwrite`, a file that appeared meanwhile is not replaced (CLIError).
    Leaving the `with` block without `publish` (an error) leaves nothing behind. `total`: the frames expected
    (a long clip's contact sheet shows a spaced subset)."""

    def __init__(self, path, fps: float, *, gif: bool = False, frames_dir: bool = False, contact_sheet: bool = False,
                 overwrite: bool = False, total: int | None = None):
        self.path, self.overwrite = Path(path), overwrite
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.staging = Path(tempfile.mkdtemp(prefix=f".{self.path.name}.", suffix=".tmp", dir=self.path.parent))
        self.targets = _targets(self.path, gif, frames_dir, contact_sheet)
        self.writers = [VideoWriter(self.staging / target.name, fps, format=kind, total=total)
                        for target, kind in self.targets]

    def __enter__(self) -> "ClipOutputs":
        return self

    def __exit__(self, kind, error, trace) -> None:
        if kind is not None:  # (releases the files still open)
            for writer in self.writers:
                writer.__exit__(kind, error, trace)
        shutil.rmtree(self.staging, ignore_errors=True)

    def write(self, frames) -> None:
        for writer in self.writers:
            writer.write(frames)

    def publish(self, sidecar: dict) -> list[Path]:
        """Finish every file, write the sidecar (`files`: the names written) and move them into place."""
        for writer in self.writers:
            writer.close()
        staged = [(writer.path, target) for writer, (target, _) in zip(self.writers, self.targets)]
        sidecar_path = _sidecar_path(self.path)
        write_json_atomic(self.staging / sidecar_path.name, dict(sidecar, files=[target.name for _, target in staged]))
        staged.append((self.staging / sidecar_path.name, sidecar_path))
        with name_lock(self.path):
            _publish(staged, self.overwrite)
        return [target for _, target in staged]


def _publish(staged: list[tuple[Path, Path]], overwrite: bool) -> None:
    """Move each staged file (or frames folder) onto its target; called under the clip's lock."""
    existing = [target for _, target in staged if target.exists()]
    if existing and not overwrite:
        raise CLIError(f"--out: {existing[0]} appeared while this run was sampling (another run?) and is not "
                       "replaced; pass --overwrite to replace it or choose another --out")
    for source, target in staged:
        if source.is_dir():  # a frames folder: only a frames folder may be replaced (checked again: time passed)
            check_write_target(target, "frames")
            old = target.with_name(f".{target.name}.old-{os.getpid()}")
            if target.exists():
                os.replace(target, old)
            os.replace(source, target)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(source, target)


@contextlib.contextmanager
def name_lock(path: Path):
    """An exclusive advisory lock (flock) on `path`'s name, held in `.<name>.lock` beside it and removed after.

    A waiter that wakes up on a lock file already removed (and perhaps recreated by a third run) retries on the
    current one, so two holders never overlap. Without fcntl (Windows) this is no lock.
    """
    try:
        import fcntl  # POSIX only: imported here so that Windows, without it, runs unlocked
    except ImportError:
        yield
        return
    lock = path.with_name(f".{path.name}.lock")
    while True:
        fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            if os.path.samestat(os.fstat(fd), os.stat(lock)):
                break
        except FileNotFoundError:  # removed by the holder we waited for
            pass
        except BaseException:
            os.close(fd)
            raise
        os.close(fd)
    try:
        yield
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(lock)  # before the unlock: a waiter then sees the file is gone and retries
        os.close(fd)


def _targets(path: Path, gif: bool, frames_dir: bool, contact_sheet: bool) -> list[tuple[Path, str]]:
    """(path, format) of the main output and the requested extras."""
    main_kind = video_format(path)
    targets = [(path, main_kind)]
    if gif and main_kind != "gif":
        targets.append((path.with_suffix(".gif"), "gif"))
    if contact_sheet and main_kind != "contact-sheet":
        targets.append((path.with_suffix(".png"), "contact-sheet"))
    if frames_dir and main_kind != "frames":
        targets.append((path.with_name(f"{path.stem}_frames"), "frames"))
    return targets


def _sidecar_path(path: Path) -> Path:
    return path.with_suffix(".json") if path.suffix else path.with_name(path.name + ".json")


SIDECAR_MAX_BYTES = 1 << 20  # a vidiff sidecar is a few KB; anything larger is not one


def input_sidecar_prompt(video: str | Path) -> tuple[Path, str] | None:
    """(sidecar, prompt) when `video` has a vidiff sidecar beside it (`clip.json` of `clip.mp4`, as every vidiff
    command writes) recording one non-empty prompt; None otherwise (no file, not a vidiff sidecar, unreadable:
    it is only a default, so nothing here is an error)."""
    sidecar = _sidecar_path(Path(video))
    try:
        if not sidecar.is_file() or sidecar.stat().st_size > SIDECAR_MAX_BYTES:
            return None
        record = json.loads(sidecar.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(record, dict) or "vidiff_version" not in record:
        return None
    prompt = record.get("prompt")
    return (sidecar, prompt) if isinstance(prompt, str) and prompt.strip() else None
