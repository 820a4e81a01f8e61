"""The `vidiff` command line: one parser-builder and one function per subcommand.

Heavy imports (torch, diffusers) happen inside the subcommand functions, so `vidiff --help` is instant.
Bad input exits non-zero with a one-line `vidiff <cmd>: error: ...` (set VIDIFF_DEBUG=1 for the traceback).
"""
from __future__ import annotations

import argparse
import os
import sys


class CLIError(Exception):
    """A user error: printed as one line, exit status 2."""


# ---------------------------------------------------------------------------------------------------------------
# vidiff inflate  (owner: pipeline)
# ---------------------------------------------------------------------------------------------------------------
def _add_inflate(sub):
    p = sub.add_parser("inflate", help="turn a Stable Diffusion checkpoint into a vidiff video pipeline folder")
    return p


def cmd_inflate(args) -> int:
    raise CLIError("inflate is not implemented yet")


# ---------------------------------------------------------------------------------------------------------------
# vidiff generate  (owner: pipeline)
# ---------------------------------------------------------------------------------------------------------------
def _add_generate(sub):
    p = sub.add_parser("generate", help="generate video clips from text prompts")
    return p


def cmd_generate(args) -> int:
    raise CLIError("generate is not implemented yet")


# ---------------------------------------------------------------------------------------------------------------
# vidiff train  (owner: training)
# ---------------------------------------------------------------------------------------------------------------
def _add_train(sub):
    p = sub.add_parser("train", help="fine-tune a video model (also under `accelerate launch -m vidiff train`)")
    return p


def cmd_train(args) -> int:
    raise CLIError("train is not implemented yet")


# ---------------------------------------------------------------------------------------------------------------
# vidiff data  (owner: data)
# ---------------------------------------------------------------------------------------------------------------
def _add_data(sub):
    p = sub.add_parser("data", help="datasets: synthetic shapes, latent caches")
    return p


def cmd_data(args) -> int:
    raise CLIError("data is not implemented yet")


# ---------------------------------------------------------------------------------------------------------------
COMMANDS = {
    "inflate": (_add_inflate, cmd_inflate),
    "generate": (_add_generate, cmd_generate),
    "train": (_add_train, cmd_train),
    "data": (_add_data, cmd_data),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="vidiff",
        description="vidiff: video diffusion from Stable Diffusion (inflate, generate, train, edit).",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for add, run in COMMANDS.values():
        sp = add(sub)
        sp.set_defaults(_run=run)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "_run", None) is None:
        parser.print_help()
        return 2
    try:
        return int(args._run(args) or 0)
    except (CLIError, ValueError, FileNotFoundError, NotADirectoryError, FileExistsError, KeyError) as e:
        if os.environ.get("VIDIFF_DEBUG"):
            raise
        msg = e.args[0] if isinstance(e, KeyError) and e.args else e
        print(f"vidiff {args.command}: error: {msg}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"vidiff {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
