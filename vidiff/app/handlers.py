"""What the web app's buttons do, without gradio: each request becomes the argument list of the `vidiff` command
that makes it (`generate`, `edit`, `interpolate`, `upscale`), parsed by that command's own parser and run by its
own `run`. So the page checks every value exactly as the command line does (before any model loads), and writes
exactly what `vidiff generate --gif --contact-sheet` writes: the clip, its extras and the JSON sidecar.

Every request writes under one folder (`--out-dir`), to a fresh name (`generate-20250101-120000-1a2b3c.mp4`)
that no file holds yet; `--overwrite` is never passed, so a file that appears meanwhile is not replaced either.
A user's mistake is one `AppError` line that names the page's field ("Guidance must be between 0 and 100 ...");
uploads are refused beyond the size limit, and a file that is not a video says so.
"""
from __future__ import annotations

import contextlib
import io
import json
import re
import secrets
import time
from dataclasses import dataclass
from pathlib import Path

from vidiff import demo
from vidiff.cli import USER_ERRORS, build_parser
from vidiff.cli.common import CLIError, check_writable, output_paths, quiet_weight_bars, restored_library_bars
from vidiff.cli.resolve import read_model
from vidiff.pipelines.cascade import is_cascade, read_cascade
from vidiff.spec import Defaults, read_info

# The page's name of each flag the app passes, so a message names the field the user sees
LABELS = {"--prompt": "Prompt", "--negative": "Negative prompt", "--num-frames": "Frames", "--height": "Height",
          "--width": "Width", "--steps": "Steps", "--guidance": "Guidance", "--seed": "Seed",
          "--scheduler": "Scheduler", "--video": "Video", "--source-prompt": "Source prompt", "--method": "Method",
          "--strength": "Strength", "--tune-steps": "Tuning steps", "--factor": "Factor",
          "--noise-level": "Noise level"}
FLAG = re.compile(r"(?<![\w-])--[a-z][a-z-]*")
NOT_A_NUMBER = re.compile(r"^argument (.+?): invalid (int|float) value: (.+)$")  # argparse's type errors
MB = 1024 * 1024


class AppError(ValueError):
    """A request the page refuses: one line, shown in the page."""


@dataclass(frozen=True)
class AppModels:
    """The models the page runs; None is the command's own default (the built-in demo)."""

    cascade: str | None          # the cascade of "generate" (YAML or folder); None without one
    base: str | None             # the text-to-video base: "generate" without the cascade, and "edit"
    interpolation: str | None    # the stage of "interpolate" (an interpolation or TSR stage folder)
    ssr: str | None              # the stage of "upscale"
    demo: bool                   # the built-in demo (no --model / --cascade)

    @classmethod
    def resolve(cls, model: str | None = None, cascade: str | None = None) -> "AppModels":
        """`vidiff app`'s --model (a base or a cascade folder) or --cascade (a YAML), checked now (JSON only, no
        model loads): a cascade's first stage is the base, its first interpolation / TSR and SSR stages serve
        interpolate and upscale (the demo's when it has none). CLIError for every problem."""
        if model is not None and cascade is not None:
            raise CLIError("give --model or --cascade, not both")
        if model is None and cascade is None:
            source = demo.default_model()
            return cls(cascade=str(source) if is_cascade(source) else None, base=str(demo.model_dir("base")),
                       interpolation=None, ssr=None, demo=True)
        if cascade is None and not is_cascade(model):
            read_model(model, "generate")  # a text-to-video base, or one line saying what it is instead
            return cls(cascade=None, base=str(model), interpolation=None, ssr=None, demo=False)
        try:
            specs = read_cascade(cascade or model)
        except (ValueError, FileNotFoundError) as e:
            raise CLIError(str(e)) from None
        stage = {command: next((str(s.model) for s in specs[1:] if s.stage.command == command), None)
                 for command in ("interpolate", "upscale")}
        return cls(cascade=str(cascade or model), base=str(specs[0].model), interpolation=stage["interpolate"],
                   ssr=stage["upscale"], demo=False)

    def generate_choices(self) -> dict[str, list[str]]:
        """The page's model choices for "generate": label -> the command's model flags."""
        choices = {}
        if self.cascade is not None:
            # the demo cascade is `vidiff generate`'s own default: no flag, so its messages read as the CLI's
            choices["cascade (base, then every stage)"] = [] if self.demo else [f"--cascade={self.cascade}"]
        choices["base model only"] = [f"--model={self.base}"]
        return choices

    def base_defaults(self) -> Defaults:
        """The base's sampling defaults (vidiff.json), shown as the page's placeholders."""
        return read_info(self.base).defaults


@dataclass(frozen=True)
class Result:
    """What one request wrote: the clip, its extras and its sidecar, and a one-line summary."""

    clip: Path
    gif: Path | None
    contact_sheet: Path | None
    sidecar: Path
    settings: dict               # the sidecar's contents
    message: str

    @property
    def files(self) -> list[Path]:
        """Every file written, the clip first (the page's downloads)."""
        return [self.clip, *(p for p in (self.gif, self.contact_sheet) if p is not None), self.sidecar]


def check_out_dir(out_dir: str | Path) -> Path:
    """`--out-dir` made if missing and probed for writing (a read-only or full disk is one line now)."""
    out_dir = Path(out_dir).expanduser().absolute()
    if out_dir.exists() and not out_dir.is_dir():
        raise CLIError(f"--out-dir {str(out_dir)!r} is a file; give a folder for the app's outputs")
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise CLIError(f"--out-dir {str(out_dir)!r}: cannot make it ({e.strerror or e}); choose another") from None
    check_writable(out_dir / "clip.mp4", "--out-dir")  # (probes the folder the clips go to)
    return out_dir


def fresh_path(out_dir: Path, command: str) -> Path:
    """A clip name in `out_dir` none of whose outputs (clip, GIF, contact sheet, sidecar) exists yet."""
    while True:
        path = out_dir / f"{command}-{time.strftime('%Y%m%d-%H%M%S')}-{secrets.token_hex(3)}.mp4"
        if not any(p.exists() for p in output_paths(path, gif=True, contact_sheet=True)):
            return path


def check_upload(path, max_mb: float) -> str:
    """An uploaded video's path, within `max_mb` (Gradio's own limit refuses larger uploads before they arrive;
    this holds for direct calls too)."""
    if not path:
        raise AppError("no video: upload a clip (mp4, gif, webm, ...) first")
    size = Path(path).stat().st_size
    if size > max_mb * MB:
        raise AppError(f"the video {Path(path).name!r} is {size / MB:.1f} MB; the app takes uploads up to "
                       f"{max_mb:g} MB (start it with a larger --max-upload-mb)")
    return str(path)


def flags(**values) -> list[str]:
    """`--name=value` for each set value (None or "" stays the command's default); `=` keeps a value that
    starts with '-' a value. Integral floats (from number fields) are written as integers."""
    out = []
    for name, value in values.items():
        if value is None or (isinstance(value, str) and not value.strip()):
            continue
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        elif isinstance(value, str):
            value = value.strip()
        out.append(f"--{name.replace('_', '-')}={value}")
    return out


def page_message(error, uploads=()) -> str:
    """An error as one line of the page: flags named by their fields (LABELS), uploads by their file names
    (not the server's temporary paths)."""
    text = str(error.args[0] if isinstance(error, KeyError) and error.args else error)
    for upload in uploads:
        text = text.replace(str(upload), Path(upload).name)
    text = FLAG.sub(lambda m: LABELS.get(m.group(0), m.group(0)), text)
    text = NOT_A_NUMBER.sub(lambda m: f"{m[1]} must be {'a whole number' if m[2] == 'int' else 'a number'}, "
                                      f"got {m[3]}", text)
    return " ".join(text.split())


def run_command(command: str, argv: list[str], uploads=()) -> None:
    """`vidiff COMMAND ARGV...` in this process: parsed by the command's parser, run by its `run`; a user's
    mistake (the CLI's exit-2 errors, an argparse complaint) is one AppError line."""
    parser = build_parser(command)
    stderr = io.StringIO()
    try:
        with contextlib.redirect_stderr(stderr):  # argparse prints its usage before exiting
            args = parser.parse_args([command, *argv])
    except SystemExit:
        line = (stderr.getvalue().strip().splitlines() or ["invalid request"])[-1]
        raise AppError(page_message(line.split(": error: ", 1)[-1], uploads)) from None
    try:
        with restored_library_bars():
            quiet_weight_bars()
            args._run(args)
    except USER_ERRORS as e:
        raise AppError(page_message(e, uploads)) from None


def read_result(clip: Path, seconds: float) -> Result:
    """The files a command wrote for `clip` (its sidecar lists them) and a summary line."""
    sidecar = clip.with_suffix(".json")
    settings = json.loads(sidecar.read_text(encoding="utf-8"))
    written = [clip.with_name(name) for name in settings.get("files", [])]

    def extra(suffix):
        return next((p for p in written if p.suffix == suffix), None)

    message = (f"wrote {clip.name} ({settings.get('num_frames')} frames, {settings.get('width')}x"
               f"{settings.get('height')}, {settings.get('fps'):g} fps, seed {settings.get('seed')}) in "
               f"{seconds:.1f} s")
    return Result(clip=clip, gif=extra(".gif"), contact_sheet=extra(".png"), sidecar=sidecar, settings=settings,
                  message=message)


def _run_and_read(command: str, argv: list[str], clip: Path, uploads=()) -> Result:
    start = time.perf_counter()
    run_command(command, [*argv, f"--out={clip}"], uploads)
    return read_result(clip, time.perf_counter() - start)


def generate(models: AppModels, out_dir: Path, *, prompt: str, negative: str | None = None,
             model: str | None = None, num_frames=None, height=None, width=None, steps=None, guidance=None,
             seed=None, scheduler: str | None = None) -> Result:
    """`vidiff generate --gif --contact-sheet` with the page's values (`model`: a `generate_choices` label,
    default the first); None leaves a value to the model's default."""
    if not (prompt or "").strip():
        raise AppError("no prompt: type what the video should show (e.g. 'a red circle moving right')")
    choices = models.generate_choices()
    if model is not None and model not in choices:
        raise AppError(f"unknown model {model!r}; choose one of: {', '.join(choices)}")
    argv = [*choices[model or next(iter(choices))], f"--prompt={prompt}", "--gif", "--contact-sheet",
            *flags(negative=negative, num_frames=num_frames, height=height, width=width, steps=steps,
                   guidance=guidance, seed=seed, scheduler=scheduler)]
    return _run_and_read("generate", argv, fresh_path(out_dir, "generate"))


def edit(models: AppModels, out_dir: Path, *, video, prompt: str, source_prompt: str | None = None,
         negative: str | None = None, method: str | None = None, strength=None, num_frames=None, steps=None,
         guidance=None, seed=None, tune_steps=None, max_upload_mb: float = 200) -> Result:
    """`vidiff edit --contact-sheet` of the uploaded `video` to `prompt` with the base model (`num_frames` of the
    clip's first frames; default the model's)."""
    video = check_upload(video, max_upload_mb)
    if not (prompt or "").strip():
        raise AppError("no prompt: type what the edited video should show")
    argv = [*([] if models.demo else [f"--model={models.base}"]), f"--video={video}", f"--prompt={prompt}",
            "--contact-sheet",
            *flags(source_prompt=source_prompt, negative=negative, method=method, strength=strength,
                   num_frames=num_frames, steps=steps, guidance=guidance, seed=seed,
                   tune_steps=tune_steps if method == "tune" else None)]
    return _run_and_read("edit", argv, fresh_path(out_dir, "edit"), uploads=[video])


def run_stage(models: AppModels, out_dir: Path, command: str, *, video, prompt: str | None = None, steps=None,
              guidance=None, seed=None, factor=None, noise_level=None, max_upload_mb: float = 200) -> Result:
    """`vidiff interpolate` or `vidiff upscale` (`command`) on the uploaded `video`, with a GIF and a contact
    sheet; the stage is the cascade's (the demo's without one)."""
    if command not in ("interpolate", "upscale"):
        raise AppError(f"unknown operation {command!r}; choose interpolate or upscale")
    video = check_upload(video, max_upload_mb)
    stage = models.interpolation if command == "interpolate" else models.ssr
    option = flags(factor=factor) if command == "interpolate" else flags(noise_level=noise_level)
    argv = [*([f"--model={stage}"] if stage else []), f"--video={video}", "--gif", "--contact-sheet", *option,
            *flags(prompt=prompt, steps=steps, guidance=guidance, seed=seed)]
    return _run_and_read(command, argv, fresh_path(out_dir, command), uploads=[video])
