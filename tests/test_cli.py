"""The `vidiff` command line as a whole: one module per subcommand, no abbreviated flags, --version, fast --help."""
import subprocess
import sys
from importlib.metadata import PackageNotFoundError, version

import pytest

import vidiff
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
    with pytest.raises(SystemExit) as exit_:
        main(argv)
    assert exit_.value.code == 2
    assert "unrecognized arguments" in capsys.readouterr().err


def test_every_parser_refuses_abbreviations():
    import argparse

    parsers, seen = [build_parser()], 0
    while parsers:
        parser = parsers.pop()
        seen += 1
        assert parser.allow_abbrev is False, parser.prog
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                parsers += list(action.choices.values())
    assert seen >= len(SUBCOMMANDS) + 3  # the top parser, each subcommand, data's shapes and cache


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
    code = "import sys, vidiff.cli as c; c.build_parser(); print(sorted(m for m in ('torch', 'diffusers') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_python_dash_m_vidiff():
    done = subprocess.run([sys.executable, "-m", "vidiff", "--version"], capture_output=True, text=True)
    assert done.returncode == 0 and done.stdout.startswith("vidiff ")
