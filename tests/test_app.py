"""`vidiff app` without a browser: the page's handlers (vidiff.app.handlers) write what the CLI writes, under the
out dir, never over a file; bad values and bad uploads are the CLI's one line naming the page's field; the page
builds offline; `vidiff app` checks its flags before anything loads. The browser test is tests/test_app_browser.py.
"""
from __future__ import annotations

import json
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from vidiff import demo
from vidiff.app import handlers
from vidiff.app.handlers import AppError, AppModels
from vidiff.cli import main
from vidiff.cli.common import CLIError
from vidiff.data import read_video
from vidiff.pipelines.text_to_video import VideoPipeline

pytestmark = pytest.mark.usefixtures("one_thread")

BASE = str(demo.model_dir("base"))
BASE_ONLY = "base model only"
QUICK = dict(model=BASE_ONLY, steps=2, num_frames=4, seed=3)  # the demo base, 4 frames, 2 steps: ~1 s


@pytest.fixture(scope="module")
def models():
    return AppModels.resolve()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def cli_error(capsys, argv) -> str:
    """The one line `vidiff ARGV` prints for a user error (exit 2), without its `vidiff CMD: error: ` prefix."""
    try:
        code = main([str(a) for a in argv])
    except SystemExit as e:  # argparse's own complaints (a flag's type)
        code = e.code
    assert code == 2
    lines = [line for line in capsys.readouterr().err.splitlines() if ": error: " in line]
    assert len(lines) == 1, lines
    return lines[0].split(": error: ", 1)[1]


def no_loading(monkeypatch):
    """Any model load fails the test: the checks must come first."""
    def refuse(*args, **kwargs):
        raise AssertionError("a model loaded before the request was checked")
    monkeypatch.setattr(VideoPipeline, "from_pretrained", refuse)


def test_generate_writes_what_vidiff_generate_writes(models, tmp_path, capsys):
    """Clip, GIF, contact sheet and sidecar under the out dir; the clip's frames are the CLI's for the same seed."""
    out_dir = handlers.check_out_dir(tmp_path / "app")
    result = handlers.generate(models, out_dir, prompt="a red circle moving right", **QUICK)
    assert result.clip.parent == out_dir and result.clip.name.startswith("generate-")
    assert [p.suffix for p in result.files] == [".mp4", ".gif", ".png", ".json"]
    assert all(p.is_file() and p.parent == out_dir for p in result.files)
    assert sorted(out_dir.iterdir()) == sorted(result.files)  # nothing else (no staging left behind)
    settings = json.loads(result.sidecar.read_text())
    assert result.settings == settings
    assert (settings["prompt"], settings["seed"], settings["num_inference_steps"], settings["num_frames"]) == \
        ("a red circle moving right", 3, 2, 4)
    assert settings["model"] == str(Path(BASE).resolve())
    assert result.message.startswith(f"wrote {result.clip.name} (4 frames, 32x32, 4 fps, seed 3) in ")

    cli_clip = tmp_path / "cli" / "clip.mp4"
    assert main(["generate", "--model", BASE, "--prompt", "a red circle moving right", "--steps", "2",
                 "--num-frames", "4", "--seed", "3", "--gif", "--contact-sheet", "--quiet", "--out",
                 str(cli_clip)]) == 0
    capsys.readouterr()
    np.testing.assert_array_equal(read_video(result.clip).frames, read_video(cli_clip).frames)
    np.testing.assert_array_equal(read_video(result.gif).frames, read_video(cli_clip.with_suffix(".gif")).frames)
    cli_settings = json.loads(cli_clip.with_suffix(".json").read_text())
    differ = {"files", "seconds"}
    assert {k: v for k, v in settings.items() if k not in differ} == \
        {k: v for k, v in cli_settings.items() if k not in differ}


def test_each_request_gets_a_fresh_name_and_no_file_is_replaced(models, tmp_path, monkeypatch):
    out_dir = handlers.check_out_dir(tmp_path)
    first = handlers.generate(models, out_dir, prompt="a blue square moving up", **QUICK)
    before = {p: p.read_bytes() for p in first.files}
    second = handlers.generate(models, out_dir, prompt="a blue square moving up", **QUICK)
    assert second.clip != first.clip and not set(second.files) & set(before)
    assert {p: p.read_bytes() for p in first.files} == before

    # a name is fresh only if none of its outputs exists (here only the GIF does)
    tokens = iter(["aaaaaa", "aaaaaa", "bbbbbb"])
    monkeypatch.setattr(handlers.secrets, "token_hex", lambda n: next(tokens))
    monkeypatch.setattr(handlers.time, "strftime", lambda fmt: "T")
    (out_dir / "generate-T-aaaaaa.gif").write_bytes(b"the user's")
    assert handlers.fresh_path(out_dir, "generate") == out_dir / "generate-T-bbbbbb.mp4"

    # a file that appears at the chosen name meanwhile is not replaced either (no --overwrite, ever)
    user_file = out_dir / "mine.mp4"
    user_file.write_bytes(b"the user's clip")
    monkeypatch.setattr(handlers, "fresh_path", lambda folder, command: user_file)
    with pytest.raises(AppError, match="mine.mp4 already exists"):
        handlers.generate(models, out_dir, prompt="a blue square moving up", **QUICK)
    assert user_file.read_bytes() == b"the user's clip"


@pytest.mark.parametrize("values, flag_argv, message", [
    (dict(guidance=-1), ["--guidance", "-1"], "Guidance must be between 0 and 100 (1 = off), got -1"),
    (dict(guidance="abc"), ["--guidance", "abc"], "Guidance must be a number, got 'abc'"),
    (dict(num_frames="8.5"), ["--num-frames", "8.5"], "Frames must be a whole number, got '8.5'"),
    (dict(height=33), ["--height", "33"], "Height must be a positive multiple of 4"),
    (dict(steps=0), ["--steps", "0"], "Steps must be between 1 and"),
    (dict(scheduler="fast"), ["--scheduler", "fast"], "Scheduler must be one of ddim, "),
    (dict(seed=-2), ["--seed", "-2"], "Seed must be between 0 and"),
])
def test_bad_values_are_the_clis_line_naming_the_field(models, tmp_path, capsys, monkeypatch, values, flag_argv,
                                                       message):
    """Checked by the command itself, before any model loads: the CLI's message, the flag read as the field."""
    no_loading(monkeypatch)
    request = {**QUICK, **values}
    with pytest.raises(AppError) as error:
        handlers.generate(models, tmp_path, prompt="a red circle", **request)
    text = str(error.value)
    assert text.startswith(message) and "\n" not in text and "--" not in text
    assert list(tmp_path.iterdir()) == []
    line = cli_error(capsys, ["generate", "--model", BASE, "--prompt", "a red circle", "--out",
                              tmp_path / "cli.mp4", *flag_argv])
    assert handlers.page_message(line) == text


@pytest.mark.parametrize("request_, message", [
    (dict(prompt="  "), "no prompt: type what the video should show"),
    (dict(prompt="a red circle", model="sd15"), "unknown model 'sd15'; choose one of: cascade"),
    (dict(prompt="a red circle", model=None, scheduler="euler"), "Scheduler does not apply to a cascade"),
])
def test_requests_the_page_refuses(models, tmp_path, monkeypatch, request_, message):
    no_loading(monkeypatch)
    with pytest.raises(AppError, match=message):
        handlers.generate(models, tmp_path, **request_)


def test_a_bad_upload_is_one_line_naming_the_file(models, tmp_path, monkeypatch):
    no_loading(monkeypatch)
    upload = tmp_path / "gradio-upload-0123" / "holiday.mp4"
    upload.parent.mkdir()
    upload.write_text("this is not a video")
    calls = [lambda **kw: handlers.edit(models, tmp_path, prompt="a blue circle", **kw),
             lambda **kw: handlers.run_stage(models, tmp_path, "interpolate", **kw),
             lambda **kw: handlers.run_stage(models, tmp_path, "upscale", **kw)]
    for call in calls:
        with pytest.raises(AppError) as error:
            call(video=str(upload))
        text = str(error.value)
        assert text.startswith("Video 'holiday.mp4' is not readable (") and "gradio-upload" not in text
        assert text.endswith("give a video file PyAV can open") and "\n" not in text
        with pytest.raises(AppError, match=r"is 2\.0 MB; the app takes uploads up to 1 MB"):
            upload.write_bytes(bytes(2 * handlers.MB))
            call(video=str(upload), max_upload_mb=1)
        upload.write_text("this is not a video")
        with pytest.raises(AppError, match="no video: upload a clip"):
            call(video=None)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["gradio-upload-0123"]  # nothing written


def test_edit_and_upscale_run_on_an_uploaded_clip(models, tmp_path):
    clip = handlers.generate(models, tmp_path, prompt="a green triangle moving left", **QUICK).clip
    edited = handlers.edit(models, tmp_path, video=str(clip), prompt="a red triangle moving left", num_frames=4,
                           steps=2, seed=1)
    assert edited.clip.name.startswith("edit-") and edited.gif is None and edited.contact_sheet.is_file()
    assert edited.settings["method"] == "zero-shot" and edited.settings["input"] == str(clip.resolve())
    assert read_video(edited.clip).frames.shape == (4, 32, 32, 3)
    upscaled = handlers.run_stage(models, tmp_path, "upscale", video=str(clip), steps=2, seed=1)
    assert upscaled.settings["command"] == "upscale" and upscaled.gif.is_file()
    assert read_video(upscaled.clip).frames.shape == (4, 64, 64, 3)
    with pytest.raises(AppError, match="unknown operation 'extend'"):
        handlers.run_stage(models, tmp_path, "extend", video=str(clip))


def test_models_from_the_apps_flags(tmp_path):
    assert AppModels.resolve() == AppModels(cascade=str(demo.DEMO_DIR), base=BASE, interpolation=None, ssr=None,
                                            demo=True)
    assert list(AppModels.resolve().generate_choices()) == ["cascade (base, then every stage)", BASE_ONLY]
    base = AppModels.resolve(model=BASE)
    assert (base.cascade, base.base, base.demo) == (None, BASE, False)
    assert base.generate_choices() == {BASE_ONLY: [f"--model={BASE}"]}
    yaml = tmp_path / "cascade.yaml"
    yaml.write_text(f"stages:\n  - model: {BASE}\n  - model: {demo.model_dir('ssr')}\n")
    cascade = AppModels.resolve(cascade=str(yaml))
    assert (cascade.base, cascade.interpolation, cascade.ssr) == (BASE, None, str(demo.model_dir("ssr")))
    assert cascade.generate_choices()["cascade (base, then every stage)"] == [f"--cascade={yaml}"]
    with pytest.raises(CLIError, match="give --model or --cascade, not both"):
        AppModels.resolve(model=BASE, cascade=str(yaml))
    with pytest.raises(CLIError, match="is a ssr stage, which needs a video"):
        AppModels.resolve(model=str(demo.model_dir("ssr")))
    with pytest.raises(CLIError, match="does not exist"):
        AppModels.resolve(cascade=str(tmp_path / "missing.yaml"))


def test_page_message_names_fields_and_uploads():
    assert handlers.page_message("--steps must be between 1 and 999, got 0 (see --allow-large)") == \
        "Steps must be between 1 and 999, got 0 (see --allow-large)"
    assert handlers.page_message("--video '/tmp/x/y/a b.mp4' is\nnot readable", uploads=["/tmp/x/y/a b.mp4"]) == \
        "Video 'a b.mp4' is not readable"
    assert handlers.page_message(KeyError("unknown key 'x'")) == "unknown key 'x'"
    assert handlers.flags(num_frames=8.0, guidance=" 2.5 ", seed=None, negative="", prompt="-x") == \
        ["--num-frames=8", "--guidance=2.5", "--prompt=-x"]


@pytest.mark.parametrize("argv, message", [
    (["--port", "0"], "--port must be between 1 and 65535, got 0"),
    (["--max-upload-mb", "0"], "--max-upload-mb must be between 0.01 and 1e+06 MB, got 0"),
    (["--model", "/no/such/model"], "model folder '/no/such/model' does not exist"),
    (["--host", "256.0.0.1"], "cannot listen on 256.0.0.1:"),
])
def test_vidiff_app_checks_its_flags_first(tmp_path, capsys, argv, message):
    assert cli_error(capsys, ["app", "--out-dir", tmp_path / "out", "--port", free_port(), *argv]).startswith(message)


def test_vidiff_app_refuses_a_busy_port_and_a_file_as_out_dir(tmp_path, capsys):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        assert cli_error(capsys, ["app", "--port", port, "--out-dir", tmp_path]).startswith(
            f"cannot listen on 127.0.0.1:{port} (")
    (tmp_path / "file").write_text("x")
    assert cli_error(capsys, ["app", "--port", free_port(), "--out-dir", tmp_path / "file"]) == \
        f"--out-dir '{tmp_path / 'file'}' is a file; give a folder for the app's outputs"


def test_vidiff_app_without_gradio_says_how_to_install_it(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "gradio", None)  # `import gradio` fails as if not installed
    monkeypatch.delitem(sys.modules, "vidiff.app.page", raising=False)
    assert cli_error(capsys, ["app", "--port", free_port(), "--out-dir", tmp_path]) == \
        "vidiff app needs gradio: pip install 'vidiff[app]'"


def test_the_help_imports_no_gradio():
    code = ("import sys; from vidiff.cli import build_parser; build_parser(); assert 'torch' not in sys.modules; "
            "build_parser('app'); assert 'gradio' not in sys.modules, 'gradio imported'")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=Path(__file__).parents[1])


def test_the_page_builds_offline_and_shows_errors_as_one_line(models, tmp_path):
    pytest.importorskip("gradio", reason="the app extra: pip install -e '.[app]'")
    from vidiff.app import page

    app = page.build_app(models, tmp_path, max_upload_mb=5)
    assert app.analytics_enabled is False
    ids = {block.elem_id for block in app.blocks.values() if getattr(block, "elem_id", None)}
    assert {"generate-prompt", "generate-button", "generate-video", "edit-upload", "edit-status", "stage-upload",
            "stage-button"} <= ids
    assert len(app.fns) == 3  # generate, edit, run a stage
    error = page._respond(lambda: (_ for _ in ()).throw(AppError("Steps must be between 1 and 999, got 0")))
    assert error == ("error: Steps must be between 1 and 999, got 0",) + (None,) * 5
    crash = page._respond(lambda: (_ for _ in ()).throw(RuntimeError("boom\nline two")))
    assert crash[0] == "internal error (RuntimeError: boom line two); the server's log has the traceback"
