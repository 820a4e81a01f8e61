"""The one way a `vidiff` subcommand finds its model and settings: `--model` (or, without it, the built-in demo),
its vidiff.json, its stage (which must be one the command runs), and the sampling flags resolved against it
(`vidiff.spec.resolve_sampling`: the folder's defaults filled in, every value checked once, the message naming
the flag). Everything here reads JSON only: no model loads.
"""
from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from pathlib import Path

import torch

from vidiff import demo
from vidiff.cli.common import CLIError
from vidiff.pipelines.cascade import is_cascade
from vidiff.spec import (PipelineInfo, SamplingSettings, SettingError, max_inference_steps, read_info,
                         read_scheduler_config, resolve_sampling)
from vidiff.stages import STAGES, Stage, stage_for


@dataclass(frozen=True)
class Model:
    """The model a command runs, checked, and its settings for this request."""

    path: str                       # the pipeline folder (the demo's without --model)
    info: PipelineInfo
    stage: Stage                    # what the folder's stage accepts (vidiff.stages)
    settings: SamplingSettings
    demo: bool                      # the built-in demo model (no --model given)


def resolve_model(args, command: str, *, demo_stage: str | None = "base", runs=None, prompts=(),
                  **request) -> Model:
    """`args.model` (None: the built-in demo `demo_stage` model, see `demo_model`), which must hold a stage that
    `vidiff {command}` runs (`runs`: the stage's `command`, or a tuple of them; None for a text-to-video base),
    with the sampling `request` (resolve_sampling's arguments) resolved against it. CLIError for every problem."""
    is_demo = args.model is None
    path = demo_model(demo_stage, prompts) if is_demo else args.model
    info, stage = read_model(path, command, runs)
    if (request.get("strength") or 1) < 1 and not stage.has_start_estimate():
        raise CLIError(f"--strength {request['strength']}: {path} ({info.stage}) makes no estimate of its output to "
                       "start from (an SD x4 upscaler's condition is pixels); leave --strength out")
    return Model(path=str(path), info=info, stage=stage, settings=resolve_settings(path, info, **request),
                 demo=is_demo)


def demo_model(stage: str | None = "base", prompts=()) -> str:
    """The built-in demo model (vidiff.demo, trained on the shapes data) for `stage`, or with None the demo's
    default (its cascade when shipped, else the base); says so on stderr and warns of words in `prompts` the
    demo never saw. CLIError when this install lacks it."""
    if stage is None:
        try:
            path = demo.default_model()
        except FileNotFoundError as e:
            raise CLIError(str(e)) from None
    elif demo.installed(stage):
        path = demo.model_dir(stage)
    else:
        raise CLIError(f"no --model given and the built-in demo model is not installed ({demo.model_dir(stage)} "
                       "is missing): pass --model DIR (make one with `vidiff inflate --base SD_PIPELINE --out DIR`)")
    print(f"using the built-in demo {stage + ' ' if stage else ''}model {path} (pass --model DIR for another)",
          file=sys.stderr)
    if stage is None and demo.default_is_fast(path):
        print(f"the demo cascade is the fast one: the distilled base (4 U-Net passes), then each stage from its "
              f"input (4 + 2); --cascade {Path(path) / demo.FULL_CASCADE} for the full schedules (40 + 10 + 20, 7x "
              "slower, steadier)", file=sys.stderr)
    message = demo.unknown_words_message([p for p in prompts if p])
    if message:
        print(f"warning: {message}", file=sys.stderr)
    if "OMP_NUM_THREADS" not in os.environ:
        # The demo models are tiny: one thread is about as fast, while two spin-wait on a busy 2-core machine
        # (measured: the demo clip took 12 s of CPU with one thread, 90 s with two, under load).
        torch.set_num_threads(1)
    return str(path)


def read_model(path, command: str, runs=None) -> tuple[PipelineInfo, Stage]:
    """vidiff.json of the pipeline folder `path` and its stage, which `vidiff {command}` must run: a
    text-to-video base (`runs` None) or a stage whose `command` is `runs` (or one of the tuple `runs`)."""
    runs = runs if isinstance(runs, tuple) else (runs,)
    wanted = [name for name, cls in STAGES.items() if cls.command in runs]  # the stages `command` takes
    if runs != (None,) and Path(path).is_dir() and is_cascade(path):
        raise CLIError(f"--model {str(path)!r} is a whole cascade; give the folder of its {' or '.join(wanted)} "
                       "stage")
    info = read_info(path)
    stage = stage_for(info)
    if stage.command in runs:
        return info, stage
    if runs == (None,):
        raise CLIError(f"--model {str(path)!r} is a {info.stage} stage, which needs a video to work on: use "
                       f"`vidiff {stage.command} --model {path} --video IN`, or list it in a cascade (--cascade)")
    fix = (f"use `vidiff {stage.command}`" if stage.command else
           f"make one with `vidiff inflate --stage {wanted[0]}` and train it")
    raise CLIError(f"--model {str(path)!r} is a {info.stage!r} model; `vidiff {command}` needs a "
                   f"{' or '.join(repr(name) for name in wanted)} stage ({fix})")


def resolve_settings(path, info: PipelineInfo, prefix: str = "--", **request) -> SamplingSettings:
    """`resolve_sampling` on the folder `path` (its noise schedule bounds the steps), the message naming the
    flag (`prefix` replaces its "--", e.g. "stage 1 " for a cascade stage)."""
    try:  # (the message names the file, the key and the fix)
        schedule = read_scheduler_config(Path(path) / "scheduler")
    except (FileNotFoundError, ValueError) as e:
        raise CLIError(str(e)) from None
    try:
        return resolve_sampling(info, max_steps=max_inference_steps(schedule), **request)
    except SettingError as e:
        raise CLIError(e.for_flags(prefix)) from None
