"""The checks every `vidiff` subcommand shares (vidiff.cli.common): input video, output next to an input,
flag names in settings errors, the seed."""
from __future__ import annotations

import json

import numpy as np
import pytest

from vidiff.cli.common import (SETTING_FLAGS, CLIError, check_video_output, in_flag_names, probe_video_arg,
                               seed_or_random)


def test_probe_video_arg(tmp_path):
    from vidiff.data.video_io import write_video

    clip = tmp_path / "in.mp4"
    write_video(clip, np.zeros((3, 16, 16, 3), np.uint8), fps=4)
    info = probe_video_arg(clip)
    assert (info.num_frames, info.height, info.width, info.fps) == (3, 16, 16, 4)
    with pytest.raises(CLIError, match=r"^--video '.*nope.mp4' does not exist$"):
        probe_video_arg(tmp_path / "nope.mp4")
    with pytest.raises(CLIError, match=r"^--video '.*' is a folder, not a video file$"):
        probe_video_arg(tmp_path)
    (tmp_path / "bad.mp4").write_bytes(b"not a video")
    with pytest.raises(CLIError, match=r"^--input '.*bad.mp4' is not readable \(.*\); give a video file"):
        probe_video_arg(tmp_path / "bad.mp4", flag="--input")


def test_check_video_output(tmp_path):
    video = tmp_path / "in.mp4"
    video.write_bytes(b"")
    with pytest.raises(CLIError, match="^--out must differ from --video$"):
        check_video_output(video, video)
    with pytest.raises(CLIError, match=r"^--out '.*out.avi': cannot tell the video format"):
        check_video_output(tmp_path / "out.avi", video)
    out = tmp_path / "out.mp4"
    assert check_video_output(out, video) == out
    (tmp_path / "out.json").write_text(json.dumps({}))  # an earlier run's sidecar counts as an output
    with pytest.raises(CLIError, match=r"out.json already exists; pass --overwrite"):
        check_video_output(out, video)
    assert check_video_output(out, video, overwrite=True) == out
    with pytest.raises(CLIError, match=r"out-000.png already exists"):
        (tmp_path / "out-000.png").write_bytes(b"")
        check_video_output(out, video, 2, contact_sheet=True, overwrite=False)


def test_in_flag_names_and_seed():
    message = "num_inference_steps must be at most 10, got 20; guidance_scale must be >= 0"
    assert in_flag_names(message, ("num_inference_steps", "guidance_scale")) == \
        "--steps must be at most 10, got 20; --guidance must be >= 0"
    assert in_flag_names(message, ("num_inference_steps",), "stage 1 ") == \
        "stage 1 steps must be at most 10, got 20; guidance_scale must be >= 0"
    assert in_flag_names(message, ()) == message
    assert set(SETTING_FLAGS.values()) >= {"--steps", "--guidance", "--num-frames", "--scheduler"}
    assert seed_or_random(7) == 7 and seed_or_random(0) == 0
    seeds = {seed_or_random(None) for _ in range(8)}
    assert len(seeds) > 1 and all(0 <= s < 2**31 for s in seeds)


# imported here, not under a test's capsys: diffusers' log handler keeps the stderr it first sees, and a test's
# captured stream is closed when the test ends ("--- Logging error ---" in every later test)
import diffusers.utils.logging as diffusers_logging  # noqa: E402
import transformers.utils.logging as transformers_logging  # noqa: E402


def test_commands_leave_the_library_progress_bars_as_they_found_them(tmp_path, capsys):
    """`main` switches transformers' weight bars off (and, with --quiet, diffusers' bars too) only while a
    command runs: run in-process (tests, notebooks) it leaves no global state behind."""
    from vidiff.cli import main
    from vidiff.cli.common import quiet_loading, restored_library_bars

    assert transformers_logging.is_progress_bar_enabled() and diffusers_logging.is_progress_bar_enabled()
    with restored_library_bars():
        quiet_loading()
        assert not transformers_logging.is_progress_bar_enabled() and not diffusers_logging.is_progress_bar_enabled()
    assert transformers_logging.is_progress_bar_enabled() and diffusers_logging.is_progress_bar_enabled()
    # a real command that fails after switching the bars off (--quiet, then a missing model folder)
    code = main(["generate", "--model", str(tmp_path / "nope"), "--prompt", "x", "--out", str(tmp_path / "a.mp4"),
                 "--quiet"])
    assert code == 2 and "nope" in capsys.readouterr().err
    assert transformers_logging.is_progress_bar_enabled() and diffusers_logging.is_progress_bar_enabled()
    assert transformers_logging._tqdm_active
