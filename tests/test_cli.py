"""The `vidiff` command line as a whole: one module per subcommand, no abbreviated flags, --version, fast --help."""
import os
import subprocess
import sys
from importlib.metadata import PackageNotFoundError, version

import pytest

import vidiff
from pathlib import Path

from vidiff.cli import SUBCOMMANDS, build_parser, main


def test_every_subcommand_is_registered_with_help_and_example(capsys):
    for name in SUBCOMMANDS:
        with pytest.raises(SystemExit) as exit_:
            main([name, "--help"])
        assert exit_.value.code == 0
        text = capsys.readouterr().out
        assert f"usage: vidiff {name}" in text and "example" in text


def test_help_lists_only_registered_commands(capsys):
    with pytest.raises(SystemExit):
        main(["--help"])
    text = capsys.readouterr().out
    for name in SUBCOMMANDS:
        assert f"    {name}" in text
    assert "    edit " in text  # registered by vidiff/cli/edit.py


@pytest.mark.parametrize("argv", [
    ["generate", "--model", "m", "--prompt", "p", "--out", "c.mp4", "--num-frame", "8"],
    ["inflate", "--base", "sd", "--out", "o", "--num-frame", "8"],
    ["data", "shapes", "--out", "d", "--count", "3", "--fram", "4"],
])
def test_abbreviated_flags_are_errors(argv, capsys):
    """Found in QA (issue 8): `--num-frame 8` was taken as --num-frames."""
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "unrecognized arguments: --" in err and len(err.strip().splitlines()) == 1


def test_every_parser_refuses_abbreviations():
    import argparse

    parsers, seen = [build_parser(name) for name in SUBCOMMANDS], 0
    while parsers:
        parser = parsers.pop()
        seen += 1
        assert parser.allow_abbrev is False, parser.prog
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                parsers += list(action.choices.values())
    assert seen >= 2 * len(SUBCOMMANDS) + 2  # the top parser and each subcommand, data's shapes and cache


def test_version(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["--version"])
    assert exit_.value.code == 0
    try:
        expected = version("vidiff")
    except PackageNotFoundError:
        expected = vidiff.__version__
    assert capsys.readouterr().out.strip() == f"vidiff {expected}"


def test_help_imports_no_torch():
    """The subcommand modules import torch at the top; `vidiff --help` lists them without importing any."""
    code = ("import sys, vidiff.cli as c; c.build_parser(); "
            "print(sorted(m for m in ('torch', 'diffusers', 'transformers') if m in sys.modules), "
            "sorted(m for m in sys.modules if m.startswith('vidiff.cli.')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[] ['vidiff.cli.common']"


def test_only_the_chosen_subcommand_is_imported():
    code = ("import sys, vidiff.cli as c; c.build_parser('upscale'); "
            "print(sorted(m for m in sys.modules if m.startswith('vidiff.cli.')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert "'vidiff.cli.upscale'" in out and "'vidiff.cli.generate'" not in out and "'vidiff.cli.eval'" not in out


def test_python_dash_m_vidiff():
    done = subprocess.run([sys.executable, "-m", "vidiff", "--version"], capture_output=True, text=True)
    assert done.returncode == 0 and done.stdout.startswith("vidiff ")


@pytest.fixture
def read_only_dir(tmp_path):
    """A folder no file can be created in (as root, chmod does not stop writes: /sys, where it is read-only)."""
    if os.geteuid() != 0:
        folder = tmp_path / "ro"
        folder.mkdir()
        folder.chmod(0o555)
        yield folder
        folder.chmod(0o755)
        return
    try:
        (Path("/sys") / ".vidiff-probe").write_text("")
    except OSError:
        yield Path("/sys")
        return
    pytest.skip("no read-only folder on this machine")


@pytest.mark.parametrize("command", [
    ["generate", "--model", "{model}", "--prompt", "x", "--out", "{ro}/clip.mp4"],
    ["inflate", "--base", "{model}", "--out", "{ro}/video"],
    ["data", "shapes", "--count", "2", "--out", "{ro}/shapes"],
    ["data", "cache", "--model", "{model}", "--manifest", "{model}", "--out", "{ro}/cache"],
])
def test_read_only_output_location_fails_before_any_work(command, read_only_dir, tmp_path, capsys, monkeypatch):
    """Found in QA (issue 8): a read-only (or full) output location ended in an OSError traceback after all the
    sampling / inflating / encoding. Now one line before anything is loaded."""
    from vidiff.cli import inflate
    from vidiff.data import synthetic
    from vidiff.testing import make_tiny_video_pipeline
    from vidiff.pipelines.text_to_video import VideoPipeline

    model = make_tiny_video_pipeline(tmp_path / "model", seed=0)
    capsys.readouterr()
    for module, name in ((VideoPipeline, "from_pretrained"), (inflate, "inflate_stage"),
                         (synthetic, "make_clip")):
        monkeypatch.setattr(module, name, lambda *a, **k: pytest.fail("work started before the check"))
    argv = [a.format(model=model, ro=read_only_dir) for a in command]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert f"cannot write in {read_only_dir}" in err and len(err.strip().splitlines()) == 1


@pytest.mark.parametrize("argv,match", [
    (["inflate", "--base", "sd", "--out", "o", "--fps", "1e308"], "--fps must be between 0.1 and 1000"),
    (["inflate", "--base", "sd", "--out", "o", "--num-frames", "100000"], "--num-frames must be between 1 and 4096"),
    (["data", "shapes", "--out", "d", "--count", "3", "--size", "65536"], "--size must be between 8 and 4096"),
    (["data", "shapes", "--out", "d", "--count", "3", "--fps", "1e-9"], "--fps must be between 0.1 and 1000"),
    (["data", "shapes", "--out", "d", "--count", "3", "--seed", "-1"], "--seed must be between 0 and"),
    (["data", "cache", "--model", "m", "--manifest", "x", "--out", "c", "--height", "65536"],
     "--height must be between 1 and 4096"),
    (["data", "cache", "--model", "m", "--manifest", "x", "--out", "c", "--fps", "inf"],
     "--fps must be between 0.1 and 1000"),
    (["data", "cache", "--model", "m", "--manifest", "x", "--out", "c", "--batch-size", "0"],
     "--batch-size must be between 1 and 4096"),
    (["data", "cache", "--model", "m", "--manifest", "x", "--out", "c", "--device", "cuda:x"], "unknown --device"),
])
def test_numbers_out_of_range_are_one_line(argv, match, tmp_path, capsys, monkeypatch):
    """Found in QA (issue 8): huge or tiny numbers passed the checks and failed (or were silently replaced) later."""
    monkeypatch.chdir(tmp_path)
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert match in err and len(err.strip().splitlines()) == 1
    assert list(tmp_path.iterdir()) == []


CONFIGS = Path(__file__).resolve().parents[1] / "configs" / "train"


def test_train_overrides_before_and_after_flags(tmp_path, capsys):
    """Found in QA (issue 9): `vidiff train CONFIG --resume auto train.max_steps=6` failed with 'unrecognized
    arguments': overrides work wherever they are typed, and a later override of a key wins."""
    argv = ["train", str(CONFIGS / "tiny.yaml"), "model.pretrained=sd", "train.max_steps=3", "--resume", "auto",
            "train.max_steps=6", "data.manifest=clips", "--print-config", "train.learning_rate=0.002"]
    assert main(argv) == 0
    import yaml

    config = yaml.safe_load(capsys.readouterr().out)
    assert config["train"]["max_steps"] == 6 and config["train"]["learning_rate"] == 0.002
    assert config["model"]["pretrained"] == "sd" and config["data"]["manifest"] == "clips"


@pytest.mark.parametrize("argv,unknown", [
    (["train", "CONFIG", "--resume", "auto", "--bogus", "train.max_steps=6"], "--bogus"),
    (["train", "CONFIG", "--print-confi"], "--print-confi"),  # no abbreviations either
    (["data", "shapes", "--out", "d", "--count", "2", "extra=1"], "extra=1"),  # only train takes overrides
])
def test_unknown_arguments_are_one_line(argv, unknown, capsys):
    argv = [str(CONFIGS / "tiny.yaml") if a == "CONFIG" else a for a in argv]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert f"error: unrecognized arguments: {unknown}" in err and len(err.strip().splitlines()) == 1


def test_attention_backend_errors_are_one_line(tmp_path, capsys, monkeypatch):
    """Found in QA (issue 9): an xformers failure (a RuntimeError from the attention module) reached the user as
    a traceback. Any AttentionBackendError is one line; other RuntimeErrors stay tracebacks (bugs)."""
    from vidiff.models.attention import AttentionBackendError
    from vidiff.pipelines.text_to_video import VideoPipeline
    from vidiff.testing import make_tiny_video_pipeline

    model = make_tiny_video_pipeline(tmp_path / "model", seed=0)
    capsys.readouterr()

    def refuse(*args, **kwargs):
        raise AttentionBackendError("attention backend 'xformers' cannot run on (2, 16, 1, 8) torch.float32 inputs "
                                    "(NotImplementedError: no kernel); use attention_backend='sdpa'")

    monkeypatch.setattr(VideoPipeline, "sample", refuse)
    argv = ["generate", "--model", str(model), "--prompt", "x", "--quiet", "--out", str(tmp_path / "c.mp4")]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("vidiff generate: error: attention backend 'xformers' cannot run")
    assert len(err.strip().splitlines()) == 1 and not (tmp_path / "c.mp4").exists()
    monkeypatch.setattr(VideoPipeline, "sample", lambda *a, **k: (_ for _ in ()).throw(RuntimeError("a bug")))
    with pytest.raises(RuntimeError, match="a bug"):
        main(argv)


ROOT = Path(__file__).resolve().parents[1]


def test_docs_and_configs_name_the_maintained_sd_repository():
    """Found in QA (issue 8): `runwayml/stable-diffusion-v1-5` was removed from the hub in 2024; the README,
    configs and help texts must name the maintained copy."""
    files = [ROOT / "README.md", *ROOT.glob("configs/**/*.yaml"), *ROOT.glob("vidiff/**/*.py")]
    stale = [str(f.relative_to(ROOT)) for f in files if "runwayml/" in f.read_text(encoding="utf-8")]
    assert stale == []
    assert "stable-diffusion-v1-5/stable-diffusion-v1-5" in (ROOT / "README.md").read_text()


def test_pyproject_license_is_an_spdx_string_and_readme_shows_the_cpu_index():
    """Found in QA (issue 8): the license table gave setuptools deprecation warnings; a plain `pip install` on
    Linux pulled the multi-GB CUDA torch."""
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert project["project"]["license"] == "Apache-2.0"
    requires = project["build-system"]["requires"]
    assert any(r.replace(" ", "").startswith("setuptools>=77") for r in requires)  # SPDX strings: setuptools 77
    assert "pip install torch --index-url https://download.pytorch.org/whl/cpu" in (ROOT / "README.md").read_text()
