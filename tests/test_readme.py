"""The README's commands run on a fresh clone (issue 18).

Every command of the README's ```bash blocks and every ```python block is classified by the rules below, in
document order, and run in one temporary folder laid out like a fresh clone (`configs/`, `tools/` and `vidiff/`
linked from this checkout, nothing else), so later commands see the files earlier ones wrote, as a reader's
shell would:

- `vidiff ...` runs in-process through `vidiff.cli.main(argv)` (the `vidiff` word dropped): exit status 0, and
  the file or folder named by `--out` (or `output_dir=` for `vidiff train`) exists afterwards.
- A ```python block is executed as it stands.
- Skipped, each for a stated reason (pytest -rs lists them):
  * the programs in SKIP_PROGRAMS: `pip` installs (network), `make` (the whole test suite, or `make demo`, which
    CI runs and whose `vidiff generate` line tests/test_demo.py runs), `accelerate` / `torchrun` (multi-process
    launchers);
  * any command or block naming one of USER_FILES: Stable Diffusion hub ids (downloads), the folders made from
    them (`models/sd15-video`, `runs/ft`) and files only a user's machine has (their videos, manifests, a
    tuned model).
- Marked slow (run by `make test-all`, not `make test`): the built-in demo cascade itself (`vidiff generate`
  without `--model`, ~20 s of the 2-core CPU, more than all the rest together). The fast suite runs the same
  path through `make demo`'s line in tests/test_demo.py; every later command here uses the base's clip.
- `python tools/NAME.py ...` (benchmarks and the demo's training take minutes to hours) is checked statically,
  wherever the README names one (also in headings): the script exists and defines every `--flag` used.
- Anything else fails test_every_command_has_a_rule: a new README command must be run or skipped by a rule.

test_enough_commands_run makes sure the rules cannot skip everything: at least MIN_RUN commands run.
"""
from __future__ import annotations

import contextlib
import os
import re
import shlex
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"

pytestmark = pytest.mark.usefixtures("one_thread")

SKIP_PROGRAMS = {
    "pip": "installs packages (network)",
    "make": "make runs the whole suite / the demo (CI's .ci/run; tests/test_demo.py runs make demo's vidiff line)",
    "accelerate": "multi-process launcher (accelerate launch)",
    "torchrun": "multi-process launcher",
}
USER_FILES = {
    "stable-diffusion-v1-5/": "a Stable Diffusion hub id (download)",
    "stabilityai/": "a Stable Diffusion hub id (download)",
    "models/sd15-video": "made by `vidiff inflate` from a Stable Diffusion hub download",
    "runs/ft": "made by fine-tuning the Stable Diffusion video model",
    "runs/animatediff": "made by training motion modules on a user's clips",
    "models/ad": "made by `vidiff inflate` from a Stable Diffusion and a motion-adapter hub download",
    "clips/": "a user's folder of videos",
    "webvid.csv": "a user's dataset manifest",
    "car-turn.mp4": "a user's video",
    "swan.mp4": "a user's video",
    "in.mp4": "a user's video",
    "tuned/": "a model tuned on a user's video",
    "prompts.txt": "a user's prompt file",
    ".safetensors": "a user's checkpoint file",
    ".ckpt": "a user's checkpoint file",
}
MIN_RUN = 12  # vidiff commands + python blocks that must run without the slow mark (16 today)


# ------------------------------------------------------------------------------------------------ extraction
def _blocks(text: str) -> list[tuple[str, str]]:
    """(language, body) of every fenced block, in order."""
    return [(m.group(1), m.group(2)) for m in re.finditer(r"^```(\w*)\n(.*?)^```", text, re.M | re.S)]


def _bash_commands(body: str) -> list[list[str]]:
    """argv of each command of a bash block: backslash continuations joined, comments dropped."""
    commands = []
    for line in re.sub(r"\\\n", " ", body).splitlines():
        argv = shlex.split(line, comments=True)
        if argv:
            commands.append(argv)
    return commands


def _slow(argv: list[str]) -> bool:
    """The whole demo cascade (no --model): base, interpolation and 15 frames of 64x64 super-resolution."""
    return argv[:2] == ["vidiff", "generate"] and "--model" not in argv and "--cascade" not in argv


def _user_file(text: str) -> str | None:
    return next((marker for marker in USER_FILES if marker in text), None)


def _steps() -> list[dict]:
    """Every README command / python block with its rule: run, skip (with reason) or unclassified."""
    steps = []
    for number, (language, body) in enumerate(_blocks(README.read_text(encoding="utf-8")), 1):
        if language == "python":
            marker = _user_file(body)
            steps.append({"kind": "python", "code": body, "id": f"python-block-{number}", "slow": False,
                          "skip": marker and f"names {marker!r}: {USER_FILES[marker]}"})
        elif language == "bash":
            for argv in _bash_commands(body):
                step = {"kind": "other", "argv": argv, "id": shlex.join(argv)[:80], "skip": None,
                        "slow": _slow(argv)}
                marker = _user_file(" ".join(argv))
                if argv[0] in SKIP_PROGRAMS:
                    step.update(kind="skip", skip=f"{argv[0]}: {SKIP_PROGRAMS[argv[0]]}")
                elif marker:
                    step.update(kind="skip", skip=f"names {marker!r}: {USER_FILES[marker]}")
                elif argv[:2] == ["vidiff", "app"]:
                    step.update(kind="skip", skip="serves a page until stopped (tests/test_app_browser.py runs it)")
                elif argv[0] == "vidiff":
                    step["kind"] = "vidiff"
                elif argv[:2] == ["python", argv[1]] and argv[1].startswith("tools/"):
                    step.update(kind="tool", skip="a tools/ script: checked by test_tool_commands_exist")
                steps.append(step)
    return steps


STEPS = _steps()


def _tool_commands() -> list[list[str]]:
    """`python tools/NAME.py ...` anywhere in the README: bash blocks and inline code (the benchmark headings)."""
    text = README.read_text(encoding="utf-8")
    inline = [shlex.split(m) for m in re.findall(r"`(python tools/[^`]+)`", text)]
    blocks = [s["argv"] for s in STEPS if s["kind"] == "tool"]
    return inline + blocks


# ------------------------------------------------------------------------------------------------ the rules
def test_every_command_has_a_rule():
    unclassified = [shlex.join(s["argv"]) for s in STEPS if s["kind"] == "other"]
    assert unclassified == [], f"README commands with no rule in tests/test_readme.py: {unclassified}"


def test_enough_commands_run():
    runnable = [s for s in STEPS if s["kind"] in ("vidiff", "python") and not s["skip"]]
    assert len([s for s in runnable if not s["slow"]]) >= MIN_RUN, [s["id"] for s in runnable]
    assert any(s["slow"] for s in runnable)  # the built-in demo cascade itself, under make test-all


def test_tool_commands_exist():
    commands = _tool_commands()
    assert len(commands) >= 6  # the Performance section's benchmarks
    for argv in commands:
        script = ROOT / argv[1]
        assert script.is_file(), argv[1]
        source = script.read_text(encoding="utf-8")
        for flag in (a.split("=")[0] for a in argv[2:] if a.startswith("--")):
            assert f'"{flag}"' in source, f"{argv[1]} defines no {flag}"


# ------------------------------------------------------------------------------------------------ running them
@pytest.fixture(scope="module")
def clone(tmp_path_factory):
    """An empty folder laid out like a fresh clone's root; the commands write only here."""
    folder = tmp_path_factory.mktemp("readme")
    for name in ("configs", "tools", "vidiff"):
        (folder / name).symlink_to(ROOT / name, target_is_directory=True)
    return folder


@contextlib.contextmanager
def _cwd(path: Path):
    before = os.getcwd()
    os.chdir(path)
    try:
        yield
    finally:
        os.chdir(before)


def _outputs(argv: list[str]) -> list[str]:
    outs = [argv[i + 1] for i, a in enumerate(argv[:-1]) if a == "--out"]
    if argv[1] == "train":
        outs += [a.split("=", 1)[1] for a in argv if a.startswith("output_dir=")]
    return outs


@pytest.mark.parametrize("step", [pytest.param(s, id=s["id"], marks=[pytest.mark.slow] if s["slow"] else [])
                                  for s in STEPS])
def test_readme_command(step, clone):
    if step["skip"]:
        pytest.skip(step["skip"])
    if step["kind"] == "other":
        pytest.fail("no rule for this command (test_every_command_has_a_rule)")
    with _cwd(clone):
        if step["kind"] == "python":
            exec(compile(step["code"], f"README.md ({step['id']})", "exec"), {"__name__": "readme"})
            return
        from vidiff.cli import main

        try:
            rc = main(step["argv"][1:])
        except SystemExit as e:  # --help, --version
            rc = e.code
        assert rc in (0, None), f"exit status {rc}"
        for out in _outputs(step["argv"]):
            assert Path(out).exists(), f"{out} was not written"
