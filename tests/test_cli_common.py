"""The checks every `vidiff` subcommand shares (vidiff.cli.common): input video, output next to an input,
settings errors in flag names, the seed."""
from __future__ import annotations

import json

import numpy as np
import pytest

from vidiff.cli.common import (CLIError, check_flag, check_video_output, flag_error, probe_video_arg,
                               seed_or_random)
from vidiff.spec import check_setting


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


def test_flag_names_and_seed():
    """A SettingError from vidiff.spec reads as the CLI flag (SETTINGS' table), other errors as they are."""
    from vidiff.spec import SettingError, check_choice

    with pytest.raises(SettingError) as info:
        check_setting("num_inference_steps", 20, high=10)
    assert str(flag_error(info.value)) == "--steps must be between 1 and 10, got 20"
    assert str(flag_error(info.value, "stage 1 ")) == "stage 1 steps must be between 1 and 10, got 20"
    with pytest.raises(SettingError) as info:
        check_choice("stage.factor of an ssr stage", 3, (2, 4))
    assert str(flag_error(info.value)) == "stage.factor of an ssr stage must be one of 2, 4, got 3"
    assert str(flag_error(ValueError("the input is 18x18 pixels"))) == "the input is 18x18 pixels"
    with pytest.raises(CLIError, match="^--guidance must be between 0 and 100 \\(1 = off\\), got -1$"):
        check_flag("guidance_scale", -1.0)
    with pytest.raises(CLIError, match="^--frames must be between 1 and 4096, got 0$"):
        check_flag("num_frames", 0, flag="--frames")
    assert check_flag("fps", None) is None and check_flag("fps", 8.0) == 8.0
    assert seed_or_random(7) == 7 and seed_or_random(0) == 0
    with pytest.raises(CLIError, match="^--seed must be between 0 and"):
        seed_or_random(-1)
    with pytest.raises(CLIError, match=f"^--seed must be between 0 and {2**63 - 2}, got {2**63 - 1}$"):
        seed_or_random(2**63 - 1, count=2)  # video 1 would use seed + 1
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
