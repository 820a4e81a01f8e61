"""Each user setting is range-checked in one place (vidiff.spec's `check_setting` / `resolve_sampling`, or the
stage's own check in vidiff.stages): the same bad value through a `vidiff` flag and through the Python API gives
the same one-line message, the flag's name in the one and the Python field's in the other, and the command
fails before any model loads."""
from __future__ import annotations

import numpy as np
import pytest

from vidiff.cli import main
from vidiff.pipelines.cascade import extend_video, run_stage
from vidiff.pipelines.editing import edit_video
from vidiff.pipelines.text_to_video import VideoPipeline
from vidiff.spec import SETTINGS, SettingError, check_setting, read_info, resolve_sampling
from vidiff.training.tune import tune_and_edit

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """A tiny pixel-space base, interpolation and ssr stage, each loaded once, and a clip each accepts."""
    from vidiff.data.video_io import write_video
    from vidiff.stages.folder import inflate_stage
    from vidiff.testing import make_tiny_sd_pipeline, make_tiny_video_pipeline

    root = tmp_path_factory.mktemp("settings")
    sd = make_tiny_sd_pipeline(root / "sd", seed=0, vae=False)
    small = {"num_frames": 4, "height": 16, "width": 16, "num_inference_steps": 2}
    paths = {"base": make_tiny_video_pipeline(root / "base", seed=0, vae=False, defaults=small),
             "interpolation": inflate_stage(sd, root / "interpolation", "interpolation", factor=2, defaults=small),
             "ssr": inflate_stage(sd, root / "ssr", "ssr", factor=2, defaults=dict(small, height=32, width=32))}
    clip = np.random.default_rng(0).integers(0, 255, (4, 16, 16, 3), dtype=np.uint8)
    video = write_video(root / "clip.mp4", clip, fps=8)
    pipes = {name: VideoPipeline.from_pretrained(path, device="cpu", dtype="fp32") for name, path in paths.items()}
    return {"paths": paths, "pipes": pipes, "clip": clip, "video": video, "root": root}


def cli_line(world, capsys, monkeypatch, argv) -> str:
    """What `vidiff ARGV` says (one line, exit status 2, no model loaded), after "vidiff CMD: error: "."""
    monkeypatch.setattr(VideoPipeline, "from_pretrained", classmethod(lambda *a, **k: pytest.fail("model loaded")))
    values = {"BASE": world["paths"]["base"], "INTERP": world["paths"]["interpolation"],
              "SSR": world["paths"]["ssr"], "VIDEO": world["video"], "OUT": world["root"] / "out" / "o.mp4"}
    code = main([str(values.get(a, a)) for a in argv])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1, err
    prefix = f"vidiff {argv[0]}: error: "
    assert err[0].startswith(prefix), err
    return err[0][len(prefix):]


def api_error(call) -> ValueError:
    with pytest.raises(ValueError) as info:
        call()
    return info.value


GENERATE = ["generate", "--model", "BASE", "--prompt", "a red circle", "--out", "OUT"]
INTERPOLATE = ["interpolate", "--model", "INTERP", "--video", "VIDEO", "--out", "OUT"]
EXTEND = ["extend", "--model", "INTERP", "--video", "VIDEO", "--out", "OUT"]
UPSCALE = ["upscale", "--model", "SSR", "--video", "VIDEO", "--out", "OUT"]
EDIT = ["edit", "--model", "BASE", "--video", "VIDEO", "--prompt", "a cat", "--out", "OUT"]


def base_call(**kwargs):
    return lambda w: w["pipes"]["base"]("a red circle", progress=False, **kwargs)


def resolve(**kwargs):
    return lambda w: resolve_sampling(read_info(w["paths"]["base"]), max_steps=998, **kwargs)


def stage_call(stage: str, **kwargs):
    return lambda w: run_stage(w["pipes"][stage], w["clip"], "a red circle", seed=0, progress=False, **kwargs)


def edit_call(**kwargs):
    return lambda w: edit_video(w["pipes"]["base"], w["clip"], ["a cat"], progress=False, **kwargs)


# (flag argv, Python API call): the same bad value through both doors
CASES = {
    "num_frames": (GENERATE + ["--num-frames", "0"], base_call(num_frames=0)),
    "num_frames-huge": (GENERATE + ["--num-frames", "100000"], resolve(num_frames=100000)),
    "height": (GENERATE + ["--height", "65536"], base_call(height=65536)),
    "height-multiple": (GENERATE + ["--height", "17"], base_call(height=17)),
    "width": (GENERATE + ["--width", "0"], resolve(width=0)),
    "steps": (GENERATE + ["--steps", "0"], base_call(num_inference_steps=0)),
    "steps-schedule": (GENERATE + ["--steps", "999"], base_call(num_inference_steps=999)),
    "guidance": (GENERATE + ["--guidance", "-1"], base_call(guidance_scale=-1.0)),
    "guidance-nan": (GENERATE + ["--guidance", "nan"], base_call(guidance_scale=float("nan"))),
    "eta": (GENERATE + ["--eta", "2"], base_call(eta=2.0)),
    "scheduler": (GENERATE + ["--scheduler", "heun"], base_call(scheduler="heun")),
    "window_size": (GENERATE + ["--window-size", "0"], base_call(window_size=0)),
    "window_stride": (GENERATE + ["--window-stride", "0"], base_call(window_stride=0)),
    "window-cover": (GENERATE + ["--window-size", "4", "--window-stride", "6"],
                     base_call(window_size=4, window_stride=6)),
    "decode_chunk_size": (GENERATE + ["--decode-chunk-size", "0"], base_call(decode_chunk_size=0)),
    "num_videos": (GENERATE + ["--num-videos", "0"], base_call(num_videos_per_prompt=0)),
    # the seed and the frame rate of written clips: the CLI's settings alone (the pipeline takes any generator)
    "seed": (GENERATE + ["--seed", "-1"], lambda w: check_setting("seed", -1)),
    "fps": (GENERATE + ["--fps", "0"], lambda w: check_setting("fps", 0.0)),
    "fps-inflate": (["inflate", "--base", "BASE", "--out", "OUT", "--fps", "1e308"],
                    lambda w: check_setting("fps", 1e308)),
    "edit-steps": (EDIT + ["--steps", "0"], edit_call(num_inference_steps=0)),
    "edit-guidance": (EDIT + ["--guidance", "101"], edit_call(guidance_scale=101.0)),
    "strength": (EDIT + ["--strength", "1.5"], edit_call(strength=1.5)),
    "tune_steps": (EDIT + ["--method", "tune", "--tune-steps", "0"],
                   lambda w: tune_and_edit(w["pipes"]["base"], w["clip"], ["a cat"], tune_steps=0)),
    "tune_lr": (EDIT + ["--method", "tune", "--tune-lr", "-1"],
                lambda w: tune_and_edit(w["pipes"]["base"], w["clip"], ["a cat"], tune_steps=1, tune_lr=-1.0)),
    "stage-steps": (INTERPOLATE + ["--steps", "0"], stage_call("interpolation", steps=0)),
    "stage-guidance": (UPSCALE + ["--guidance", "-2"], stage_call("ssr", guidance=-2.0)),
    "stage-scheduler": (INTERPOLATE + ["--scheduler", "heun"], stage_call("interpolation", scheduler="heun")),
    "factor": (INTERPOLATE + ["--factor", "3"], stage_call("interpolation", factor=3)),
    "noise_level": (UPSCALE + ["--noise-level", "999"], stage_call("ssr", noise_level=999)),
    "noise_level-negative": (UPSCALE + ["--noise-level", "-1"], stage_call("ssr", noise_level=-1)),
    "new-frames": (EXTEND + ["--frames", "0"],
                   lambda w: extend_video(w["pipes"]["interpolation"], w["clip"], "x", num_frames=0)),
    "context_frames": (EXTEND + ["--frames", "2", "--context-frames", "9"],
                       lambda w: extend_video(w["pipes"]["interpolation"], w["clip"], "x", num_frames=2,
                                              context_frames=9)),
    "new_per_chunk": (EXTEND + ["--frames", "2", "--new-frames-per-chunk", "0"],
                      lambda w: extend_video(w["pipes"]["interpolation"], w["clip"], "x", num_frames=2,
                                             new_per_chunk=0)),
    "new_per_chunk-window": (EXTEND + ["--frames", "2", "--new-frames-per-chunk", "64"],
                             lambda w: extend_video(w["pipes"]["interpolation"], w["clip"], "x", num_frames=2,
                                                    new_per_chunk=64)),
}


@pytest.mark.parametrize("case", list(CASES))
def test_a_bad_value_reads_the_same_from_the_cli_and_the_python_api(world, capsys, monkeypatch, case):
    argv, call = CASES[case]
    error = api_error(lambda: call(world))
    line = cli_line(world, capsys, monkeypatch, argv)
    assert "\n" not in str(error)
    # a stage's own check (its factors, noise levels, extension) names the model: the CLI the folder it was given,
    # the API "this model"
    path = {"INTERP": world["paths"]["interpolation"], "SSR": world["paths"]["ssr"]}.get(argv[2])
    line = line.replace(f"--model {path}", "this model") if path else line
    if isinstance(error, SettingError):
        # the flag's name in the one, the field's in the other, the same problem after it
        assert str(error) == f"{error.name} {error.problem}"
        assert line == error.for_flags() and line.endswith(error.problem)
        flag = SETTINGS[error.name].flag if error.name in SETTINGS else "--" + error.name.replace("_", "-")
        assert line.startswith(flag + " ") and flag in argv
    else:  # the number of new frames of an extension (`--frames`, `num_frames=` in Python)
        assert line == str(error)


@pytest.mark.parametrize("argv, name, value, flag", [
    (["data", "shapes", "--out", "OUT", "--count", "0"], "count", 0, "--count"),
    (["data", "shapes", "--out", "OUT", "--count", "2", "--size", "65536"], "size", 65536, "--size"),
    (["data", "shapes", "--out", "OUT", "--count", "2", "--frames", "0"], "num_frames", 0, "--frames"),
    (["data", "cache", "--model", "BASE", "--manifest", "VIDEO", "--out", "OUT", "--batch-size", "0"],
     "batch_size", 0, "--batch-size"),
    (["data", "cache", "--model", "BASE", "--manifest", "VIDEO", "--out", "OUT", "--shard-size", "0"],
     "shard_size", 0, "--shard-size"),
    (["data", "cache", "--model", "BASE", "--manifest", "VIDEO", "--out", "OUT", "--num-workers", "-1"],
     "num_workers", -1, "--num-workers"),
    (["data", "cache", "--model", "BASE", "--manifest", "VIDEO", "--out", "OUT", "--stride", "0"],
     "stride", 0, "--stride"),
    (EDIT + ["--start", "-1"], "start", -1, "--start"),
    (["eval", "shapes", "--model", "BASE", "--limit", "0"], "limit", 0, "--limit"),
    (["eval", "shapes", "--model", "BASE", "--batch-size", "0"], "batch_size", 0, "--batch-size"),
])
def test_the_cli_only_settings_use_the_same_table(world, capsys, monkeypatch, argv, name, value, flag):
    """Flags without a Python-API twin (datasets, batches, clip reading) are checked by the same
    `check_setting`, against the same SETTINGS row."""
    with pytest.raises(SettingError) as info:
        check_setting(name, value)
    assert cli_line(world, capsys, monkeypatch, argv) == f"{flag} {info.value.problem}"


def test_every_flag_of_the_table_names_a_real_flag():
    """Each SETTINGS row's flag is a flag of some `vidiff` command (so a message never names a flag that does
    not exist)."""
    import argparse

    from vidiff.cli import SUBCOMMANDS, build_parser

    flags = set()
    parsers = [build_parser(name) for name in SUBCOMMANDS]
    while parsers:
        parser = parsers.pop()
        for action in parser._actions:
            flags.update(action.option_strings)
            if isinstance(action, argparse._SubParsersAction):
                parsers += list(action.choices.values())
    assert {setting.flag for setting in SETTINGS.values()} - flags == set()
