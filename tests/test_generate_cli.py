"""`vidiff inflate` -> `vidiff generate` end to end through the CLI, outputs decoded back; every error case."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from vidiff.cli import main
from vidiff.data import read_video
from vidiff.testing import make_tiny_sd_pipeline


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    root = tmp_path_factory.mktemp("gen")
    sd = make_tiny_sd_pipeline(root / "sd", seed=2)
    assert main(["inflate", "--base", str(sd), "--out", str(root / "video"), "--num-frames", "4"]) == 0
    return root / "video"


def run(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def png_frames(folder: Path) -> np.ndarray:
    from PIL import Image

    return np.stack([np.asarray(Image.open(p)) for p in sorted(folder.glob("*.png"))])


def test_generate_end_to_end(model, tmp_path, capsys):
    out = tmp_path / "clip.mp4"
    code, stdout, _ = run(capsys, "generate", "--model", model, "--prompt", "a red circle", "--num-frames", 5,
                          "--height", 24, "--width", 16, "--steps", 2, "--fps", 10, "--seed", 3, "--gif",
                          "--contact-sheet", "--frames-dir", "--quiet", "--out", out)
    assert code == 0
    assert f"wrote {out}" in stdout and "seed 3" in stdout
    clip = read_video(out)
    assert clip.frames.shape == (5, 24, 16, 3) and clip.fps == pytest.approx(10)
    gif = read_video(tmp_path / "clip.gif")
    assert gif.frames.shape == (5, 24, 16, 3)
    frames = png_frames(tmp_path / "clip_frames")
    assert frames.shape == (5, 24, 16, 3)
    # H.264 (yuv420) blurs a random tiny clip's detail away; each frame's average colour survives.
    np.testing.assert_allclose(clip.frames.mean(axis=(1, 2)), frames.mean(axis=(1, 2)), atol=4)
    assert (tmp_path / "clip.png").is_file()
    sidecar = json.loads((tmp_path / "clip.json").read_text())
    assert sidecar["prompt"] == "a red circle" and sidecar["seed"] == 3 and sidecar["num_inference_steps"] == 2
    assert sidecar["model"] == str(model.resolve()) and sidecar["fps"] == 10 and sidecar["num_frames"] == 5
    assert sidecar["guidance_scale"] == 7.5 and sidecar["scheduler"] == "ddim"
    assert sidecar["files"] == ["clip.mp4", "clip.gif", "clip.png", "clip_frames"]


def test_generate_is_deterministic_and_numbers_several_videos(model, tmp_path, capsys):
    common = ["generate", "--model", model, "--steps", 2, "--num-frames", 2, "--quiet", "--scheduler", "euler-ancestral"]
    # Output without a suffix: a folder of PNG frames, lossless, so frames compare exactly.
    code, _, err = run(capsys, *common, "--prompt", "blue square", "--seed", 5, "--out", tmp_path / "a")
    assert code == 0 and "Loading" not in err and "%|" not in err  # --quiet: no bars, not even transformers'
    assert run(capsys, *common, "--prompt", "blue square", "--seed", 5, "--out", tmp_path / "b")[0] == 0
    np.testing.assert_array_equal(png_frames(tmp_path / "a"), png_frames(tmp_path / "b"))

    prompts = tmp_path / "prompts.txt"
    prompts.write_text("# prompts\nblue square\n\nred circle\n")
    code, stdout, _ = run(capsys, *common, "--prompts-file", prompts, "--num-videos", 2, "--seed", 4,
                          "--out", tmp_path / "many")
    assert code == 0 and stdout.count("wrote") == 4
    sidecars = [json.loads((tmp_path / f"many-{i:03d}.json").read_text()) for i in range(4)]
    assert [s["seed"] for s in sidecars] == [4, 5, 6, 7]
    assert [s["prompt"] for s in sidecars] == ["blue square", "blue square", "red circle", "red circle"]
    # Video 1 of the batch (seed 4 + 1) is the clip that seed 5 makes alone.
    diff = np.abs(png_frames(tmp_path / "many-001").astype(int) - png_frames(tmp_path / "a"))
    assert diff.max() <= 1  # batched vs single float rounding may move a pixel value by one


def test_generate_pixel_space_model(tmp_path, capsys):
    base = make_tiny_sd_pipeline(tmp_path / "sd", vae=False)
    assert main(["inflate", "--base", str(base), "--out", str(tmp_path / "pix"), "--num-frames", "3"]) == 0
    capsys.readouterr()
    code, _, _ = run(capsys, "generate", "--model", tmp_path / "pix", "--prompt", "x", "--steps", 1, "--quiet",
                     "--out", tmp_path / "clip.gif")
    assert code == 0 and read_video(tmp_path / "clip.gif").frames.shape == (3, 8, 8, 3)


@pytest.mark.parametrize("case", ["no-model", "missing-model", "sd-folder", "height", "width", "frames", "steps",
                                  "scheduler", "no-prompt", "prompts-file", "out-suffix", "num-videos", "fps",
                                  "window", "device", "fps-nan", "guidance-nan", "eta", "window-zero",
                                  "stride-zero", "out-empty", "out-under-file", "out-folder-of-files",
                                  "frames-dir-clash", "prompts-file-folder", "steps-over-schedule",
                                  "truncated-scheduler", "prompts-file-binary", "nan-default", "missing-default",
                                  "device-index", "height-huge", "fps-huge", "fps-tiny", "seed-negative",
                                  "frames-huge", "guidance-huge", "cuda-on-cpu", "sidecar-exists", "gif-exists"])
def test_generate_errors_before_any_work(model, tmp_path, capsys, monkeypatch, case):
    from vidiff.pipelines.text_to_video import VideoPipeline

    def no_loading(*args, **kwargs):
        raise AssertionError("the model was loaded before the input was checked")

    monkeypatch.setattr(VideoPipeline, "from_pretrained", no_loading)
    if case == "no-model":  # an install without the built-in demo models (vidiff/assets/demo)
        from vidiff import demo

        monkeypatch.setattr(demo, "DEMO_DIR", tmp_path / "no-demo")
    sd = tmp_path / "sd"
    sd.mkdir()
    (sd / "model_index.json").write_text("{}")
    args = {
        "no-model": (["--model", None], "pass --model"),
        "missing-model": (["--model", tmp_path / "nope"], "does not exist"),
        "sd-folder": (["--model", sd], "vidiff inflate"),
        "height": (["--height", 18], "--height must be a positive multiple of 4"),
        "width": (["--width", 2], "--width must be a positive multiple of 4"),
        "frames": (["--num-frames", 0], "--num-frames must be between 1 and 4096, got 0"),
        "steps": (["--steps", 0], "--steps must be between 1 and 998, got 0"),
        "scheduler": (["--scheduler", "heun"], "--scheduler must be one of ddim, dpm-solver++, euler, euler-ancestral, ddpm, unipc, lcm, got 'heun'"),
        "no-prompt": (["--prompt", None], "no prompt"),
        "prompts-file": (["--prompts-file", tmp_path / "nope.txt"], "--prompts-file"),
        "out-suffix": (["--out", tmp_path / "clip.avi"], "cannot tell the video format"),
        "num-videos": (["--num-videos", 0], "--num-videos must be between 1 and 10000, got 0"),
        "fps": (["--fps", 0], "--fps must be between 0.1 and 1000 frames per second, got 0"),
        "window": (["--num-frames", 9, "--window-size", 4, "--window-stride", 6], "--window-stride must not exceed the window size (4), got 6"),
        "device": (["--device", "tpu"], "unknown --device"),
        "device-index": (["--device", "cuda:x"], "unknown --device 'cuda:x'"),  # torch's RuntimeError on a GPU
        # Found in QA: these passed the checks and failed (or silently misbehaved) after sampling.
        "fps-nan": (["--fps", "nan"], "--fps must be between 0.1 and 1000 frames per second, got nan"),
        "guidance-nan": (["--guidance", "nan"], "--guidance must be between 0 and 100 (1 = off), got nan"),
        "eta": (["--eta", -1], "--eta must be between 0 and 1 (0 = deterministic DDIM, 1 = DDPM-like), got -1"),
        "window-zero": (["--window-size", 0], "--window-size must be between 1 and 4096, got 0"),
        "stride-zero": (["--window-stride", 0], "--window-stride must be between 1 and 4096, got 0"),
        "out-empty": (["--out", ""], "--out '' is empty"),
        "out-under-file": (["--out", tmp_path / "notes.txt" / "clip.mp4"], "is a file, not a folder"),
        # A suffix-less --out is a folder of PNG frames: it must never replace a folder of other things.
        "out-folder-of-files": (["--out", tmp_path / "keep"], "a folder holding other files"),
        "frames-dir-clash": (["--frames-dir", "", "--out", tmp_path / "keep.mp4"], "a folder holding other files"),
        "prompts-file-folder": (["--prompts-file", tmp_path / "keep"], "is a folder, not a text file"),
        # 1000 DDIM steps on SD's schedule (steps_offset 1) index timestep 1000: an IndexError after sampling.
        "steps-over-schedule": (["--steps", 1000], "--steps must be between 1 and 998, got 1000"),
        "truncated-scheduler": (["--model", tmp_path / "damaged"], "scheduler_config.json is not a readable JSON file"),
        "prompts-file-binary": (["--prompts-file", tmp_path / "binary.txt"], "binary.txt' is not UTF-8 text"),
        # `vidiff inflate --fps nan` used to write NaN into vidiff.json; generate then failed after sampling.
        "nan-default": (["--model", tmp_path / "damaged"], "defaults.fps must be a finite"),
        "missing-default": (["--model", tmp_path / "damaged"], "defaults lack num_frames"),  # was: "'num_frames'"
        # Found in QA (issue 8): out-of-range numbers failed after sampling (OverflowError) or were silently
        # replaced (--fps 1e-9 wrote a 24 fps file while the sidecar said 1e-09).
        "height-huge": (["--height", 65536], "--height must be between 1 and 4096 pixels, got 65536"),
        "fps-huge": (["--fps", "1e308"], "--fps must be between 0.1 and 1000 frames per second, got 1e+308"),
        "fps-tiny": (["--fps", "1e-9"], "--fps must be between 0.1 and 1000 frames per second, got 1e-09"),
        "seed-negative": (["--seed", -1], "--seed must be between 0 and"),
        "frames-huge": (["--num-frames", 100000], "--num-frames must be between 1 and 4096, got 100000"),
        "guidance-huge": (["--guidance", "1e9"], "--guidance must be between 0 and 100 (1 = off), got 1e+09"),
        # Found in QA: from_pretrained(device="cuda") on a CPU build was torch's AssertionError after loading.
        "cuda-on-cpu": (["--device", "cuda"], "--device 'cuda' asked for, but no CUDA device is available"),
        # Found in QA (issue 8): an existing clip's sidecar / GIF was replaced without asking.
        "sidecar-exists": ([], "clip.json already exists; pass --overwrite to replace it"),
        "gif-exists": (["--gif", ""], "clip.gif already exists; pass --overwrite to replace it"),
    }
    if case == "cuda-on-cpu":
        import torch

        monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    if case in ("sidecar-exists", "gif-exists"):
        (tmp_path / ("clip.json" if case == "sidecar-exists" else "clip.gif")).write_text("the user's\n")
    if case in ("truncated-scheduler", "nan-default", "missing-default"):
        import shutil

        shutil.copytree(model, tmp_path / "damaged")
        if case == "truncated-scheduler":
            (tmp_path / "damaged" / "scheduler" / "scheduler_config.json").write_text('{"beta_')
        else:
            info = json.loads((tmp_path / "damaged" / "vidiff.json").read_text())
            if case == "nan-default":
                info["defaults"]["fps"] = float("nan")
            else:
                del info["defaults"]["num_frames"]
            (tmp_path / "damaged" / "vidiff.json").write_text(json.dumps(info))
    (tmp_path / "notes.txt").write_text("not a folder\n")
    (tmp_path / "binary.txt").write_bytes(b"\xff\xfe\x00a red circle")
    (tmp_path / "keep").mkdir()
    (tmp_path / "keep" / "data.txt").write_text("precious\n")
    (tmp_path / "keep_frames").mkdir()
    (tmp_path / "keep_frames" / "data.txt").write_text("precious\n")
    extra, match = args[case]
    argv = {"--model": model, "--prompt": "a red circle", "--out": tmp_path / "clip.mp4"}
    for flag, value in zip(extra[::2], extra[1::2]):
        argv[flag] = value
    flat = ["generate"]
    for flag, value in argv.items():  # None: leave the flag out; "" after a switch such as --frames-dir: no value
        if value is not None:
            flat += [flag] if value == "" and flag != "--out" else [flag, str(value)]
    code = main(flat)
    out, err = capsys.readouterr()
    assert code == 2, err
    assert match in err and err.startswith("vidiff generate: error:")
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert not (tmp_path / "clip.mp4").exists() and not (tmp_path / "keep.mp4").exists()
    assert (tmp_path / "keep" / "data.txt").read_text() == "precious\n"
    assert (tmp_path / "keep_frames" / "data.txt").read_text() == "precious\n"


def test_help_has_examples(capsys):
    for command in ("generate", "inflate"):
        with pytest.raises(SystemExit):
            main([command, "--help"])
        assert "examples:" in capsys.readouterr().out


def test_generate_cuda_index_beyond_the_devices(model, tmp_path, capsys, monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    code, _, err = run(capsys, "generate", "--model", model, "--prompt", "x", "--device", "cuda:3",
                       "--out", tmp_path / "clip.mp4")
    assert code == 2 and "there are 1 CUDA devices (cuda:0 .. cuda:0)" in err and not (tmp_path / "clip.mp4").exists()


def test_generate_replaces_outputs_only_with_overwrite(model, tmp_path, capsys):
    """Found in QA (issue 8): a second run to the same --out replaced the clip and its sidecar without asking."""
    out = tmp_path / "holiday.mp4"
    common = ["generate", "--model", model, "--prompt", "x", "--steps", 1, "--num-frames", 2, "--quiet", "--gif",
              "--out", out]
    assert run(capsys, *common, "--seed", 1)[0] == 0
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    assert sorted(before) == ["holiday.gif", "holiday.json", "holiday.mp4"]
    code, _, err = run(capsys, *common, "--seed", 2)
    assert code == 2 and "holiday.mp4 already exists (and 2 more of this run's outputs)" in err
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before
    code, _, err = run(capsys, *common, "--seed", 2, "--overwrite")
    assert code == 0, err
    assert json.loads((tmp_path / "holiday.json").read_text())["seed"] == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(before)  # no lock or staging leftovers
    assert (tmp_path / "holiday.mp4").read_bytes() != before["holiday.mp4"]


def test_a_png_after_an_mp4_of_the_same_name_says_the_sidecar_is_shared(model, tmp_path, capsys):
    """Issue 24: clip.png after clip.mp4 would replace clip.mp4's sidecar (clip.json): refused, naming clip.mp4,
    and with --overwrite a warning says clip.mp4 is left without one."""
    common = ["generate", "--model", model, "--prompt", "x", "--steps", 1, "--num-frames", 2, "--quiet", "--seed", 1]
    assert run(capsys, *common, "--out", tmp_path / "clip.mp4")[0] == 0
    code, _, err = run(capsys, *common, "--out", tmp_path / "clip.png")
    assert code == 2 and f"its sidecar {tmp_path / 'clip.json'} is the sidecar of {tmp_path / 'clip.mp4'}" in err
    assert "clip-png.png" in err and not (tmp_path / "clip.png").exists()
    code, _, err = run(capsys, *common, "--out", tmp_path / "clip.png", "--overwrite")
    assert code == 0 and err.count("\n") == 1
    assert err.startswith(f"warning: --out {tmp_path / 'clip.png'} replaces {tmp_path / 'clip.json'}, the sidecar "
                          f"of {tmp_path / 'clip.mp4'}")
    assert json.loads((tmp_path / "clip.json").read_text())["files"] == ["clip.png"]
    assert run(capsys, *common, "--out", tmp_path / "clip.png", "--overwrite")[2] == ""  # (its own sidecar: quiet)


def test_generate_write_error_is_one_line_and_leaves_nothing(model, tmp_path, capsys, monkeypatch):
    """A disk that fills up while the clip is written: one line naming the file, no partial outputs."""
    import errno

    from vidiff.data import video_io

    write = video_io.VideoWriter.write

    def full_disk(writer, frames):
        if writer.kind != "gif":
            return write(writer, frames)
        writer.path.write_bytes(b"partial")
        raise OSError(errno.ENOSPC, "No space left on device", str(writer.path))

    monkeypatch.setattr(video_io.VideoWriter, "write", full_disk)
    code, _, err = run(capsys, "generate", "--model", model, "--prompt", "x", "--steps", 1, "--num-frames", 2,
                       "--quiet", "--gif", "--out", tmp_path / "clip.mp4")
    assert code == 1 and "No space left on device" in err and err.startswith("vidiff generate: error:")
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert list(tmp_path.iterdir()) == []  # not the mp4 without its gif and sidecar, nor temporary files


def test_concurrent_writes_to_one_name_never_mix(tmp_path):
    """Found in QA (issue 8): two runs writing the same --out at once could leave the mp4 of one and the JSON
    of the other. Each run's clip is a flat grey that says which run it is; the sidecar must agree."""
    import threading

    from vidiff.cli.common import write_outputs

    out = tmp_path / "clip.mp4"
    errors = []

    def writer(run_id: int):
        frames = np.full((2, 16, 16, 3), 40 + 170 * run_id, np.uint8)
        try:
            for attempt in range(12):
                write_outputs(out, frames, 8, {"run": run_id, "attempt": attempt}, gif=True, overwrite=True)
        except Exception as e:  # pragma: no cover - reported below
            errors.append(e)

    def check():
        sidecar = json.loads((tmp_path / "clip.json").read_text())
        for clip in (out, tmp_path / "clip.gif"):
            level = read_video(clip, backend="pyav").frames.mean()
            assert abs(level - (40 + 170 * sidecar["run"])) < 8, (clip.name, level, sidecar)

    threads = [threading.Thread(target=writer, args=(i,)) for i in (0, 1)]
    for thread in threads:
        thread.start()
    while any(thread.is_alive() for thread in threads):
        if out.exists():
            from vidiff.cli.common import name_lock

            with name_lock(out):  # a reader takes the lock too: it sees one run's files
                check()
    for thread in threads:
        thread.join()
    assert not errors, errors
    check()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["clip.gif", "clip.json", "clip.mp4"]


def test_name_lock_holds_off_a_publisher(tmp_path):
    """While one holder has the clip's lock, another run's files are staged but not moved into place."""
    import threading
    import time

    from vidiff.cli.common import name_lock, write_outputs

    out = tmp_path / "clip.mp4"
    frames = np.zeros((2, 16, 16, 3), np.uint8)
    with name_lock(out):
        writer = threading.Thread(target=write_outputs, args=(out, frames, 8, {"run": 1}))
        writer.start()
        time.sleep(1.0)
        assert not out.exists() and not (tmp_path / "clip.json").exists() and writer.is_alive()
    writer.join(30)
    assert out.is_file() and json.loads((tmp_path / "clip.json").read_text())["run"] == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["clip.json", "clip.mp4"]


def test_out_names_clips_by_prompt_and_seed(model, tmp_path, capsys, monkeypatch):
    """Issue 24: {prompt} / {seed} in --out: one file per clip named by its prompt's slug (and seed); prompts
    sharing a slug are numbered, never written over each other; an existing name is refused before sampling;
    an unknown field is one line."""
    from vidiff.cli.common import clip_paths, prompt_slug

    assert prompt_slug("  A Red Circle, moving LEFT! ") == "a-red-circle-moving-left"
    assert prompt_slug("Café / ../../etc/passwd") == "cafe-etcpasswd" and prompt_slug("日本") == "prompt"
    long = prompt_slug(" ".join(["word"] * 40))
    assert len(long) <= 60 and long.endswith("word")
    assert clip_paths("c.mp4", ["a", "b"], 1, 0) == [Path("c-000.mp4"), Path("c-001.mp4")]  # no field: as before
    common = ["generate", "--model", model, "--steps", 2, "--num-frames", 2, "--quiet", "--seed", 7]
    out = tmp_path / "clips" / "{prompt}-{seed}.png"
    code, stdout, err = run(capsys, *common, "--prompt", "Red circle!", "--prompt", "blue square", "--out", out)
    assert code == 0, err
    assert sorted(p.name for p in (tmp_path / "clips").iterdir()) == [
        "blue-square-8.json", "blue-square-8.png", "red-circle-7.json", "red-circle-7.png"]
    assert json.loads((tmp_path / "clips" / "blue-square-8.json").read_text())["prompt"] == "blue square"
    # two prompts with one slug, and two videos of one prompt, without {seed}: numbered, four files
    code, _, err = run(capsys, *common, "--prompt", "a cat", "--prompt", "A CAT", "--out", tmp_path / "{prompt}.png")
    assert code == 0 and {json.loads((tmp_path / f"a-cat-00{i}.json").read_text())["prompt"] for i in (0, 1)} == {
        "a cat", "A CAT"}
    # the same run again: the existing names are refused before any model loads
    from vidiff.pipelines.text_to_video import VideoPipeline

    monkeypatch.setattr(VideoPipeline, "from_pretrained", lambda *a, **k: pytest.fail("loaded the model"))
    code, _, err = run(capsys, *common, "--prompt", "Red circle!", "--prompt", "blue square", "--out", out)
    assert code == 2 and "red-circle-7.png already exists" in err and "--overwrite" in err and err.count("\n") == 1
    code, _, err = run(capsys, *common, "--prompt", "x", "--out", tmp_path / "{name}.mp4")
    assert code == 2 and "unknown field {name}; --out takes {prompt} and {seed}" in err and err.count("\n") == 1
