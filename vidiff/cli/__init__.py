"""The `vidiff` command line: one module per subcommand, each with `add_parser(subparsers)` and `run(args) -> int`.

A subcommand is one line of `SUBCOMMANDS` (its name and its line in `vidiff --help`). The subcommand modules
import torch at the top, so the top-level parser lists them from that table and only the chosen one is imported:
`vidiff --help` stays instant. Bad input exits 2 with a one-line `vidiff <cmd>: error: ...` (set VIDIFF_DEBUG=1
for the traceback).
"""
from __future__ import annotations

import argparse
import importlib
import os
import sys
from importlib.metadata import PackageNotFoundError, version

import vidiff
from vidiff.cli.common import CLIError, quiet_weight_bars, restored_library_bars

__all__ = ["CLIError", "SUBCOMMANDS", "USER_ERRORS", "build_parser", "main"]

# vidiff.cli.<name> -> its line in `vidiff --help`, in the order the help lists them.
SUBCOMMANDS = {
    "inflate": "turn a Stable Diffusion checkpoint into a vidiff video pipeline folder",
    "generate": "generate video clips from text prompts",
    "train": "fine-tune a video model (also under `accelerate launch -m vidiff train`)",
    "distill": "distil a model into a few-step student (consistency / progressive, guidance as an input)",
    "data": "datasets: synthetic shapes, latent caches, tar shards",
    "eval": "measure quality: the synthetic shapes prompts; FVD, CLIP score, VBench-style checks of clips",
    "interpolate": "raise a clip's frame rate with an interpolation or TSR stage",
    "extend": "add frames after a clip with an interpolation stage",
    "upscale": "raise a clip's resolution with a spatial super-resolution (SSR) stage",
    "edit": "edit a video to new text prompts (Tune-A-Video / Text2Video-Zero)",
    "export": "write temporal weights or LoRAs for other tools (diffusers, AnimateDiff, ComfyUI)",
    "app": "a web page (Gradio) to generate, edit, interpolate and upscale clips",
}

# A command's failures that are the user's to fix: one line, exit 2 (the web app shows the same line)
USER_ERRORS = (CLIError, ValueError, FileNotFoundError, NotADirectoryError, FileExistsError, KeyError)


class Parser(argparse.ArgumentParser):
    """No abbreviated long options (`--num-frame 8` is an error, not `--num-frames`): a typo must not silently
    pick a flag. Subparsers inherit the class, so every parser of the command line gets it."""

    def __init__(self, *args, allow_abbrev: bool = False, **kwargs):
        super().__init__(*args, allow_abbrev=allow_abbrev, **kwargs)


def _version() -> str:
    try:
        return version("vidiff")
    except PackageNotFoundError:  # a source checkout on PYTHONPATH
        return vidiff.__version__


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The command line's parser; `command`'s own flags are added (its module imported) when it is named, the
    other subcommands are listed by name and help only."""
    parser = Parser(prog="vidiff", description="vidiff: video diffusion from Stable Diffusion.",
                    formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"vidiff {_version()}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, help_text in SUBCOMMANDS.items():
        if name == command:
            # imported only when chosen: the subcommand modules load torch, which `vidiff --help` does not need
            module = importlib.import_module(f"vidiff.cli.{name}")
            module.add_parser(sub, help_text).set_defaults(_run=module.run)
        else:
            sub.add_parser(name, help=help_text)
    return parser


def _command(argv: list[str]) -> str | None:
    """The subcommand `argv` names: its first word (the top-level parser takes only --help and --version)."""
    return next((arg for arg in argv if not arg.startswith("-")), None)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = build_parser(_command(argv))
    # Known flags anywhere; what is left is KEY=VALUE overrides for a command that takes them (`vidiff train CONFIG
    # --resume auto train.max_steps=6`: argparse alone stops collecting positionals at the first flag).
    args, extras = parser.parse_known_args(argv)
    if getattr(args, "_run", None) is None:
        parser.print_help()
        return 2
    if extras:
        unknown = [item for item in extras if item.startswith("-") or not hasattr(args, "overrides")]
        if unknown:
            print(f"vidiff {args.command}: error: unrecognized arguments: {' '.join(unknown)} (see vidiff "
                  f"{args.command} --help)", file=sys.stderr)
            return 2
        args.overrides = list(args.overrides) + extras  # command-line order: later overrides win
    with restored_library_bars():
        if (args.command, getattr(args, "data_command", None)) != ("data", "shapes"):
            quiet_weight_bars()
        return _run(args)


def _run(args) -> int:
    """Run the parsed command; its known failures become one `vidiff CMD: error: ...` line."""
    try:
        return int(args._run(args) or 0)
    except USER_ERRORS as e:
        if os.environ.get("VIDIFF_DEBUG"):
            raise
        msg = e.args[0] if isinstance(e, KeyError) and e.args else e
        print(f"vidiff {args.command}: error: {msg}", file=sys.stderr)
        return 2
    except RuntimeError as e:  # an attention backend this machine cannot run (xformers missing, bad GPU, ...)
        attention = sys.modules.get("vidiff.models.attention")
        if os.environ.get("VIDIFF_DEBUG") or attention is None or not isinstance(e, attention.AttentionBackendError):
            raise
        print(f"vidiff {args.command}: error: {e}", file=sys.stderr)
        return 2
    except OSError as e:  # e.g. a folder that turned read-only or a disk that filled up during the work
        if os.environ.get("VIDIFF_DEBUG"):
            raise
        where = f"{e.filename}: " if getattr(e, "filename", None) else ""
        print(f"vidiff {args.command}: error: {where}{e.strerror or e} (set VIDIFF_DEBUG=1 for the traceback)",
              file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"vidiff {args.command}: interrupted", file=sys.stderr)
        return 130
