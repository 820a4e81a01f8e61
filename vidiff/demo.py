"""The built-in demo models: a small pixel-space cascade trained on the synthetic "shapes" data.

A fresh install cannot download Stable Diffusion, so vidiff ships its own tiny models (trained by
`tools/train_demo.py`, configs in `configs/demo/`) under `vidiff/assets/demo/`:

    base/           text-to-video, 8 frames of 32x32 pixels (inflated from a text-to-image model)
    interpolation/  x2 frames (8 -> 15), Make-A-Video masked interpolation        (when trained)
    ssr/            x2 size (32 -> 64), noise-augmented spatial super-resolution  (when trained)
    base-fast/      the base's consistency-distilled student (configs/train/demo-distill-base.yaml): 4 lcm steps
                    of one pass each (4 U-Net evaluations a clip, the base's 40), `--model .../base-fast`
    i2v/            image-to-video: 8 frames from a first frame (an interpolation stage with first-frame masks,
                    started from the base; `generate --image` runs it, then the cascade's stages after the base)
    controlnet-track/  a trajectory ControlNet for the base (configs/train/demo-controlnet.yaml): `--control track`
                    images of a control clip (a dot on its shape's path) make the shape go that way
    cascade.yaml    the stages in order: this folder is a cascade folder (`--model` of a cascade). With base-fast
                    installed it is the fast cascade (`FAST_STAGES`: the distilled base, then the stages started
                    from their input's estimate: 4 + 4 + 2 U-Net passes a clip, the full cascade's 40 + 10 + 20)
    cascade-full.yaml  the full-schedule cascade (base, interpolation, ssr at their vidiff.json defaults)
    checksums.json  sha256 of every weight file, checked by the tests

The text encoder is a small random (seeded, frozen) CLIP text model whose tokenizer spells each word of the
shapes vocabulary as one token, so the models know exactly the words of the shapes captions
("a red circle moving right"); `unknown_words` finds the others, and `warn_unknown_words` says so in one line.
"""
from __future__ import annotations

import hashlib
import json
import re
import warnings
from pathlib import Path

import yaml

from vidiff.data.synthetic import COLORS, MOTIONS, SHAPES
from vidiff.spec import read_info
from vidiff.utils import write_json_atomic

DEMO_DIR = Path(__file__).resolve().parent / "assets" / "demo"
STAGES = ("base", "interpolation", "ssr")  # cascade order
IMAGE_TO_VIDEO = "i2v"  # the image-to-video stage (`generate --image`), beside the cascade, not in it
EXTENSION = "extend"  # the extension stage (`vidiff extend`), beside the cascade: an interpolation stage trained on
                      # future-prediction masks alone (the cascade's interpolation stage extends less well)
SIDE_STAGES = (IMAGE_TO_VIDEO, EXTENSION)
FAST_BASE = "base-fast"  # the base's consistency-distilled student: the default cascade's first stage when installed
# The stages after the base in the fast cascade: started from their input's plain estimate noised to `strength`
# (docs/quality.md, "Fast stages without a student"): 8 x 0.5 = 4 and 8 x 0.25 = 2 U-Net passes
FAST_STAGES = {"interpolation": {"steps": 8, "strength": 0.5}, "ssr": {"steps": 8, "strength": 0.25}}
FULL_CASCADE = "cascade-full.yaml"
CONTROLNET = "controlnet-track"  # the base's trajectory ControlNet (`--controlnet`), a diffusers ControlNet folder
CHECKSUMS = "checksums.json"
EXAMPLE_PROMPT = "a red circle moving right"


def vocabulary() -> list[str]:
    """Every word of the shapes captions, in a stable order: "a", the colours, shapes and motion words."""
    words = ["a", *COLORS, *SHAPES]
    for motion in MOTIONS:
        words.extend(w for w in motion.split() if w not in words)
    return words


def prompt_words(prompt: str) -> list[str]:
    """The words of a prompt as CLIP's tokenizer sees them (lower case; letters, digits and apostrophes)."""
    return re.findall(r"[a-z0-9']+", prompt.lower())


def unknown_words(prompts: str | list[str]) -> list[str]:
    """Words of `prompts` (one or several) the demo models were never trained on, in order, without repeats."""
    known = set(vocabulary())
    out: list[str] = []
    for prompt in [prompts] if isinstance(prompts, str) else prompts:
        for word in prompt_words(prompt):
            if word not in known and word not in out:
                out.append(word)
    return out


def unknown_words_message(prompts: str | list[str]) -> str | None:
    """One line naming the unknown words of `prompts` and listing the known ones; None if all are known."""
    unknown = unknown_words(prompts)
    if not unknown:
        return None
    return (f"the demo model has never seen {', '.join(repr(w) for w in unknown)}; it knows only: "
            f"{' '.join(vocabulary())} (e.g. {EXAMPLE_PROMPT!r})")


def warn_unknown_words(prompts: str | list[str]) -> str | None:
    """Warn (one line) if `prompts` have words the demo models do not know; returns the message or None."""
    message = unknown_words_message(prompts)
    if message:
        warnings.warn(message, UserWarning, stacklevel=2)
    return message


def model_dir(stage: str = "base") -> Path:
    """The folder of the demo model for `stage` ("base", "interpolation", "ssr", "i2v", "extend" or "base-fast")."""
    names = (*STAGES, *SIDE_STAGES, FAST_BASE)
    if stage not in names:
        raise ValueError(f"unknown demo stage {stage!r}; use one of {', '.join(names)}")
    return DEMO_DIR / stage


def installed(stage: str) -> Path | None:
    """The demo model folder for `stage` when this install has it (a complete pipeline folder), else None."""
    path = model_dir(stage)
    return path if (path / "vidiff.json").is_file() else None


def extension_model() -> str:
    """The demo stage `vidiff extend` runs without --model: the extension stage, or the cascade's interpolation
    stage (which extends too) when this install lacks it."""
    return EXTENSION if installed(EXTENSION) else "interpolation"


def input_size() -> tuple[int, int]:
    """(height, width) of the demo base's clips: what the demo interpolation and ssr stages were trained on."""
    defaults = read_info(model_dir("base")).defaults
    return defaults.height, defaults.width


def largest_clip() -> tuple[int, int]:
    """(height, width) of the largest clips the demo makes (the cascade's output, the ssr stage's size): the
    largest input the demo stages take (a 512 px clip would run for many minutes on what they never saw)."""
    sizes = [(d.height, d.width) for d in (read_info(model_dir(s)).defaults for s in available_stages())]
    return max(sizes, key=lambda size: size[0] * size[1])


def available_stages() -> list[str]:
    """The demo stages shipped with this install (each a complete pipeline folder), in cascade order."""
    return [s for s in STAGES if installed(s)]


def default_model() -> Path:
    """The demo model `generate` uses without --model: the cascade folder (base -> interpolation -> ssr, see
    its cascade.yaml) when this install has the stages, else the base alone; a clear error if it has neither."""
    if (DEMO_DIR / "cascade.yaml").is_file():
        return DEMO_DIR
    path = model_dir("base")
    if not (path / "vidiff.json").is_file():
        raise FileNotFoundError(f"no demo model at {path}: this install lacks vidiff/assets/demo (reinstall vidiff, "
                                "or run tools/train_demo.py), or pass --model DIR")
    return path


def write_cascade(root: str | Path = DEMO_DIR) -> Path | None:
    """Write `root/cascade.yaml`, the default cascade, and `root/cascade-full.yaml`, listing the demo stages
    present under `root` in cascade order (None, and no files, when only the base is there: the base folder is
    then the default model). With `root/base-fast` the default is the fast cascade (`FAST_STAGES`)."""
    root = Path(root)
    stages = [s for s in STAGES if (root / s / "vidiff.json").is_file()]
    path, full = root / "cascade.yaml", root / FULL_CASCADE
    if stages[:1] != ["base"] or len(stages) < 2:
        path.unlink(missing_ok=True)
        full.unlink(missing_ok=True)
        return None
    full_text = _cascade_yaml("The built-in demo cascade at full schedules (vidiff/demo.py); each stage's "
                              "steps / guidance: its vidiff.json defaults", [(s, {}) for s in stages])
    full.write_text(full_text)
    if not (root / FAST_BASE / "vidiff.json").is_file():
        path.write_text(full_text)
        return path
    fast = [(FAST_BASE, {})] + [(s, FAST_STAGES[s]) for s in stages[1:]]
    path.write_text(_cascade_yaml(f"The built-in demo cascade, fast (vidiff/demo.py): the distilled base, then each "
                                  f"stage from its input's estimate; {FULL_CASCADE}: the full schedules", fast))
    return path


def _cascade_yaml(comment: str, stages: list[tuple[str, dict]]) -> str:
    lines = [f"# {comment}", "stages:"]
    for name, settings in stages:
        lines.append(f"  - model: {name}")
        lines.extend(f"    {key}: {value}" for key, value in settings.items())
    return "\n".join(lines) + "\n"


def default_is_fast(root: str | Path = DEMO_DIR) -> bool:
    """Whether the default demo cascade under `root` is the fast one (its first stage the distilled base)."""
    path = Path(root) / "cascade.yaml"
    return path.is_file() and yaml.safe_load(path.read_text())["stages"][0]["model"] == FAST_BASE


def sha256(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        for chunk in iter(lambda: file.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def weight_files(root: str | Path = DEMO_DIR) -> list[Path]:
    """Every weight file (*.safetensors) under `root`, sorted."""
    return sorted(Path(root).rglob("*.safetensors"))


def write_checksums(root: str | Path = DEMO_DIR) -> Path:
    """Record the sha256 of every weight file under `root` in `root/checksums.json` (paths relative to root)."""
    root = Path(root)
    table = {p.relative_to(root).as_posix(): sha256(p) for p in weight_files(root)}
    path = root / CHECKSUMS
    write_json_atomic(path, table)
    return path


def verify_checksums(root: str | Path = DEMO_DIR) -> list[str]:
    """Problems with the shipped weights (a missing, changed or unrecorded file), as lines; [] if all match."""
    root = Path(root)
    recorded = json.loads((root / CHECKSUMS).read_text())
    found = {p.relative_to(root).as_posix() for p in weight_files(root)}
    problems = [f"{name}: missing" for name in sorted(set(recorded) - found)]
    problems += [f"{name}: not in {CHECKSUMS}" for name in sorted(found - set(recorded))]
    problems += [f"{name}: sha256 differs from {CHECKSUMS}" for name in sorted(found & set(recorded))
                 if sha256(root / name) != recorded[name]]
    return problems
