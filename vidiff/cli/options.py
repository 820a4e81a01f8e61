"""The option groups several `vidiff` subcommands share, each flag defined once: sampling (sizes, steps, guidance,
sampler, seed), the device (and --compile, with its check), and the outputs. A subcommand adds the groups it takes
and then its own flags.

Unset sampling flags (None) take the model's defaults from its vidiff.json; every value is range-checked once,
by vidiff.spec (`resolve_sampling` / `check_setting`), not by argparse.
"""
from __future__ import annotations

import argparse

from vidiff.cli.common import CLIError
from vidiff.models.compile import CompileError, check_compile
from vidiff.spec import LONG_VIDEO, SCHEDULER_NAMES
from vidiff.utils import DTYPES, check_device


def add_size_options(p, frames_help: str = "frames per clip (default: the model's)") -> None:
    """--num-frames, --height, --width."""
    options = group(p, "sampling")
    options.add_argument("--num-frames", type=int, default=None, help=frames_help)
    options.add_argument("--height", type=int, default=None,
                       help="pixels, a multiple of the model's factor (default: the model's)")
    options.add_argument("--width", type=int, default=None,
                       help="pixels, a multiple of the model's factor (default: the model's)")


def add_sampler_options(p, *, scheduler: bool = True, steps_help: str = "sampling steps (default: the model's)",
                        guidance_help: str = "classifier-free guidance scale, 1 = off (default: the model's)") -> None:
    """--steps, --guidance and (with `scheduler`) --scheduler."""
    options = group(p, "sampling")
    options.add_argument("--steps", type=int, default=None, help=steps_help)
    options.add_argument("--guidance", type=float, default=None, help=guidance_help)
    if scheduler:
        options.add_argument("--scheduler", default=None, metavar="NAME",
                           help=f"{' | '.join(SCHEDULER_NAMES)} (default: the model's)")


def add_seed_option(p, help_text: str = "random seed (default: random, recorded in the sidecar)") -> None:
    group(p, "sampling").add_argument("--seed", type=int, default=None, help=help_text)


def add_allow_large_option(p) -> None:
    """--allow-large: lift the size limits (vidiff.spec.check_request_size) for one run."""
    group(p, "sampling").add_argument(
        "--allow-large", action="store_true",
        help="run requests beyond the size limits (over 4096 frames a clip, 1024x1024 pixels a frame or 8 GiB of "
             "video in memory), which otherwise are refused before anything loads; never beyond 4096 pixels a "
             "side or this machine's memory")


def add_device_options(p, *, dtype_default: str | None = None,
                       dtype_help: str = "default: fp16 on CUDA, else fp32") -> None:
    """--device, --dtype."""
    options = group(p, "device")
    options.add_argument("--device", default=None, help="cuda | cuda:N | mps | cpu (default: the best available)")
    options.add_argument("--dtype", default=dtype_default, choices=DTYPES, help=dtype_help)


def add_compile_option(p) -> None:
    """--compile: torch.compile the U-Net (vidiff.models.compile)."""
    group(p, "device").add_argument(
        "--compile", action="store_true",
        help="torch.compile the U-Net (inductor): the first step at a clip size compiles it (a minute or more), "
             "later steps run faster, outputs equal to float tolerance; needs a C++ compiler on the CPU, triton "
             "on CUDA (default: off)")


def check_compile_flag(args, device: str | None) -> None:
    """--compile, where a command has it, can run on `device` (a checked --device; None: the best available):
    CLIError naming the flag otherwise, before anything loads."""
    if not getattr(args, "compile", False):
        return
    try:
        check_compile(check_device(device))
    except CompileError as e:
        raise CLIError(f"--compile: {e}") from None


# The extra formats every command that writes a clip offers (generate, interpolate, extend, upscale)
CLIP_EXTRAS = ("gif", "frames-dir", "contact-sheet")


def add_output_options(p, *, out_help: str = "output clip, e.g. clip.mp4 (.mp4, .gif, .png sheet, or a folder)",
                       required: bool = True, metavar: str = "PATH", extras: tuple[str, ...] = (),
                       overwrite_help: str = "replace existing outputs of the same names (and their sidecars)",
                       quiet_help: str = "no progress bar") -> None:
    """--out, --overwrite, --quiet and the clip `extras` asked for: "gif", "frames-dir", "contact-sheet"."""
    options = group(p, "output")
    options.add_argument("--out", required=required, default=None, metavar=metavar, help=out_help)
    options.add_argument("--overwrite", action="store_true", help=overwrite_help)
    extra_help = {"gif": "also write a .gif beside each clip",
                  "frames-dir": "also write a folder of PNG frames (<stem>_frames/)",
                  "contact-sheet": "also write a .png contact sheet of the frames"}
    for name in extras:
        options.add_argument(f"--{name}", action="store_true", help=extra_help[name])
    options.add_argument("--quiet", action="store_true", help=quiet_help)


def group(p: argparse.ArgumentParser, title: str):
    """The parser's argument group `title` (sampling, device, output), made on first use, so a subcommand adds
    its own flags to a shared group and each group shows once in --help."""
    for existing in p._action_groups:
        if existing.title == title:
            return existing
    return p.add_argument_group(title)


def add_long_video_option(p) -> None:
    """--long-video: how a cascade's base makes a clip longer than its window (vidiff.spec.LONG_VIDEO)."""
    p.add_argument("--long-video", choices=LONG_VIDEO, default="auto",
                   help="a cascade's base clip longer than the base's window: its window of keyframes over the "
                        "whole clip, filled in by the interpolation stage, or temporal windows (default: auto = "
                        "keyframes when the cascade has an interpolation stage)")
