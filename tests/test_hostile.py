"""Hostile and careless input (issue 24): requests too large to finish, files others cannot read, forged scheduler
configs and inversion caches, and every error one line that names the right thing, before any model loads."""
import json
import logging
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from vidiff import spec
from vidiff.cli import main
from vidiff.pipelines import editing
from vidiff.pipelines.text_to_video import VideoPipeline
from vidiff.spec import RequestTooLarge, check_request_size, read_scheduler_config

REPO = Path(__file__).resolve().parents[1]
TINY = REPO / "configs" / "train" / "tiny.yaml"
SMALL = {"num_frames": 4, "height": 16, "width": 16, "num_inference_steps": 2, "fps": 8}
NO_SPACE = "Error while serializing: I/O error: No space left on device (os error 28)"  # safetensors' own words

pytestmark = pytest.mark.usefixtures("one_thread")  # (tests/conftest.py)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A tiny SD folder; a base, interpolation (x2) and ssr (x2) stage of it with 4-frame 16 px defaults, as a
    cascade folder; a 5-frame 16 px clip."""
    from vidiff.data.video_io import write_video
    from vidiff.models.folder import inflate_pipeline
    from vidiff.stages.folder import inflate_stage
    from vidiff.testing import make_tiny_sd_pipeline

    root = tmp_path_factory.mktemp("hostile")
    sd = make_tiny_sd_pipeline(root / "sd")
    cascade = root / "cascade"
    inflate_pipeline(sd, cascade / "base", defaults=SMALL)
    inflate_stage(sd, cascade / "interpolation", "interpolation", factor=2, defaults=SMALL)
    inflate_stage(sd, cascade / "ssr", "ssr", factor=2, defaults=SMALL)
    (cascade / "cascade.yaml").write_text(yaml.safe_dump({"stages": [
        {"model": "base"}, {"model": "interpolation", "factor": 2}, {"model": "ssr"}]}))
    clip = np.random.default_rng(0).integers(0, 255, (5, 16, 16, 3), dtype=np.uint8)
    return {"root": root, "sd": sd, "base": cascade / "base", "interpolation": cascade / "interpolation",
            "ssr": cascade / "ssr", "cascade": cascade, "video": write_video(root / "clip.mp4", clip, fps=8)}


@pytest.fixture
def no_loading(monkeypatch):
    """Fail when a model loads or a video is decoded: every refusal here comes first."""
    from vidiff.cli import stage_io
    from vidiff.stages import folder as stage_folder

    def refuse(*args, **kwargs):
        raise AssertionError("a model was loaded (or a video decoded) before the refusal")

    monkeypatch.setattr(VideoPipeline, "from_pretrained", classmethod(refuse))
    monkeypatch.setattr(stage_folder, "load_base_components", refuse)
    monkeypatch.setattr(stage_io, "read_video", refuse)


def one_line(capsys, argv, code=2) -> str:
    """`vidiff ARGV`'s stderr, checked to be one line without a traceback and the exit status `code`."""
    status = main([str(a) for a in argv])
    err = capsys.readouterr().err.strip().splitlines()
    assert status == code and len(err) == 1 and "Traceback" not in err[0], (status, err)
    return err[0]


# ---------------------------------------------------------------------------------------------------------------
# Unbounded work: refused from the request (and the input's header) before anything loads or decodes
# ---------------------------------------------------------------------------------------------------------------
def test_the_size_check_counts_frames_pixels_and_memory(monkeypatch):
    monkeypatch.setattr(spec, "physical_memory", lambda: 64 * 2**30)
    assert check_request_size([("a", 16, 512, 512), ("b", 31, 512, 512, 2)]) == (16 + 62) * 512 * 512 * 16
    cases = [([("the clip", 4, 2048, 2048)], "the clip: 4 frames of 2048x2048 pixels, over the limit of 1,048,576"),
             ([("the clip", 18_000, 16, 16)], "the clip: 18,000 frames, over the limit of 4,096 frames a clip"),
             ([("the clips", 4096, 512, 512, 2)], "about 32.0 GiB of video at once (the clips: 2 x 4096 frames of "
                                                  "512x512), over the 8 GiB limit")]
    for clips, message in cases:
        with pytest.raises(RequestTooLarge, match="pass allow_large=True") as info:
            check_request_size(clips)
        assert message in str(info.value) and info.value.for_flags().endswith("pass --allow-large to run it anyway")
        check_request_size(clips, allow_large=True)
    # what no flag lifts: a side beyond MAX_SIDE, more than this machine's memory
    for clips, message in [([("ssr", 4, 8192, 8192)], "8192x8192 pixels, beyond the 4096-pixel limit of a side"),
                           ([("x", 4096, 1024, 1024, 2)], "more than this machine's 64.0 GiB of memory")]:
        with pytest.raises(RequestTooLarge, match=message) as info:
            check_request_size(clips, allow_large=True)
        assert "allow" not in str(info.value)


def test_huge_inputs_are_refused_from_the_header(tiny, tmp_path, capsys, no_loading):
    """Found in QA (issue 24): a 2048 px input to a tiny stage and a 10-minute (18,000-frame) clip to interpolate
    or upscale were decoded whole and sampled for minutes. Now one line, from the header, before decoding."""
    from vidiff.data.video_io import write_video

    big = write_video(tmp_path / "big.mp4", np.zeros((2, 2048, 2048, 3), np.uint8), fps=8)
    long = write_video(tmp_path / "long.mp4", np.zeros((18_000, 16, 16, 3), np.uint8), fps=30)
    out = tmp_path / "out.mp4"
    line = one_line(capsys, ["interpolate", "--model", tiny["interpolation"], "--video", big, "--out", out])
    assert "--video: 2 frames of 2048x2048 pixels, over the limit of 1,048,576 pixels a frame" in line
    assert line.endswith("pass --allow-large to run it anyway")
    for command, model in (("interpolate", "interpolation"), ("upscale", "ssr")):
        line = one_line(capsys, [command, "--model", tiny[model], "--video", long, "--out", out])
        assert "--video: 18,000 frames, over the limit of 4,096 frames a clip" in line and "--allow-large" in line
    # --allow-large lifts the limit: the command goes on to decode the clip (refused here by `no_loading`)
    with pytest.raises(AssertionError, match="before the refusal"):
        main([str(a) for a in ["upscale", "--model", tiny["ssr"], "--video", long, "--out", out, "--allow-large"]])
    assert not out.exists()


def test_huge_extensions_and_cascades_are_refused_before_loading(tiny, tmp_path, capsys, no_loading, monkeypatch):
    """`extend --frames 100000000`, `generate --cascade --num-frames 4096` (8,191 frames after interpolation) and a
    4096x4096 cascade (SSR to 8192: a MemoryError after 70 s) ran on or died late."""
    monkeypatch.setattr(spec, "physical_memory", lambda: 64 * 2**30)
    out = tmp_path / "out.mp4"
    extend = ["extend", "--model", tiny["interpolation"], "--video", tiny["video"], "--out", out, "--frames"]
    assert "--frames must be between 1 and 1000000 new frames, got 100000000" in one_line(capsys, extend + [10**8])
    assert "the extended clip: 100,005 frames, over the limit of 4,096" in one_line(capsys, extend + [10**5])
    cascade = ["generate", "--cascade", tiny["cascade"] / "cascade.yaml", "--prompt", "x", "--out", out]
    line = one_line(capsys, cascade + ["--num-frames", 4096])
    assert "the output of stage 1 (interpolation): 8,191 frames, over the limit of 4,096" in line
    line = one_line(capsys, cascade + ["--height", 4096, "--width", 4096])
    assert "stage 0 (base): 4 frames of 4096x4096 pixels" in line and "--allow-large" in line
    line = one_line(capsys, cascade + ["--height", 4096, "--width", 4096, "--allow-large"])
    assert "stage 2 (ssr): 8192x8192 pixels, beyond the 4096-pixel limit of a side" in line
    line = one_line(capsys, ["generate", "--model", tiny["base"], "--prompt", "x", "--out", out, "--num-frames", 4096,
                             "--height", 512, "--width", 512, "--num-videos", 2])
    assert "about 32.0 GiB of video at once (the clips: 2 x 4096 frames of 512x512), over the 8 GiB limit" in line
    line = one_line(capsys, ["edit", "--model", tiny["base"], "--prompt", "x", "--video", tiny["video"], "--out", out,
                             "--num-frames", 2, "--height", 2048, "--width", 2048])
    assert "the clip: 2 frames of 2048x2048 pixels, over the limit" in line
    assert not out.exists()


def test_the_python_api_refuses_before_sampling(tiny, monkeypatch):
    from vidiff.pipelines.cascade import CascadePipeline, extend_video, run_stage

    pipe = VideoPipeline.from_pretrained(tiny["interpolation"], device="cpu")
    monkeypatch.setattr(VideoPipeline, "__call__", lambda *a, **k: pytest.fail("sampling started"))
    long = np.zeros((5000, 16, 16, 3), np.uint8)
    with pytest.raises(RequestTooLarge, match="the input: 5,000 frames.*pass allow_large=True"):
        run_stage(pipe, long, "x")
    with pytest.raises(RequestTooLarge, match="the extended clip: 10,005 frames"):
        extend_video(pipe, long[:5], "x", num_frames=10_000)
    cascade = CascadePipeline.from_pretrained(tiny["cascade"], device="cpu")
    with pytest.raises(RequestTooLarge, match="stage 1 \\(interpolation\\): 8,191 frames"):
        cascade("x", num_frames=4096)


# ---------------------------------------------------------------------------------------------------------------
# Files written unreadable to others
# ---------------------------------------------------------------------------------------------------------------
def test_written_model_files_follow_the_umask(tiny, tmp_path):
    """Found in QA (issue 24): inflated weights were 0600 under umask 022 (transformers' and diffusers'
    save_pretrained write through private temporary files)."""
    from vidiff.models.folder import inflate_pipeline

    old = os.umask(0o022)
    try:
        out = inflate_pipeline(tiny["sd"], tmp_path / "video")
    finally:
        os.umask(old)
    modes = {str(p.relative_to(out)): p.stat().st_mode & 0o777 for p in [out, *out.rglob("*")]}
    assert modes["text_encoder/model.safetensors"] == 0o644 and modes["vae/diffusion_pytorch_model.safetensors"] \
        == 0o644
    assert {mode for name, mode in modes.items() if (out / name).is_file()} == {0o644}
    assert {mode for name, mode in modes.items() if (out / name).is_dir()} == {0o755}


# ---------------------------------------------------------------------------------------------------------------
# Scheduler configs are data, checked like every other file
# ---------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("key, value, message", [
    ("beta_schedule", "!!python/object/apply:os.system ['echo hi']", "beta_schedule must be one of \"linear\""),
    ("num_train_timesteps", 1e12, "num_train_timesteps must be an integer in [1, 100000], got 1000000000000.0"),
    ("num_train_timesteps", 0, "num_train_timesteps must be an integer in [1, 100000], got 0"),
    ("num_train_timesteps", -1, "num_train_timesteps must be an integer in [1, 100000], got -1"),
    ("beta_start", float("nan"), "beta_start must be a number in (0, 1], got NaN"),
    ("beta_end", "0.012", "beta_end must be a number"),
    ("steps_offset", 999, "steps_offset must be at most num_train_timesteps - 2 (998)"),
    ("trained_betas", [0.1, float("inf")], "trained_betas must be null or a list of betas in (0, 1)"),
    ("clip_sample", "no", "clip_sample must be true or false"),
    ("some_option", {"deep": [1, float("inf")]}, "some_option must be plain JSON"),
])
def test_scheduler_configs_are_checked(tiny, tmp_path, key, value, message):
    """Found in QA (issue 24): a `!!python/object` string ended in a diffusers traceback, 1e12 training steps
    allocated 4 TB, a NaN beta sampled blank clips silently, 0 training steps blamed --steps."""
    folder = tmp_path / "scheduler"
    shutil.copytree(tiny["base"] / "scheduler", folder)
    config = json.loads((folder / "scheduler_config.json").read_text())
    (folder / "scheduler_config.json").write_text(json.dumps(dict(config, **{key: value})))
    with pytest.raises(ValueError) as info:
        read_scheduler_config(folder)
    assert message in str(info.value) and str(folder / "scheduler_config.json") in str(info.value)
    assert "\n" not in str(info.value)


def test_a_damaged_schedule_is_named_not_the_steps(tiny, tmp_path, capsys, no_loading):
    model = tmp_path / "model"
    shutil.copytree(tiny["base"], model)
    file = model / "scheduler" / "scheduler_config.json"
    file.write_text(json.dumps(dict(json.loads(file.read_text()), num_train_timesteps=0)))
    line = one_line(capsys, ["generate", "--model", model, "--prompt", "x", "--out", tmp_path / "o.mp4"])
    assert f"{file}: num_train_timesteps must be an integer in [1, 100000], got 0" in line and "--steps" not in line


# ---------------------------------------------------------------------------------------------------------------
# Forged inversion caches
# ---------------------------------------------------------------------------------------------------------------
def test_a_forged_inversion_cache_is_recomputed_with_one_warning(tiny, tmp_path, monkeypatch):
    """Found in QA (issue 24): NaN latents under an intact key gave a blank clip, latents of another shape 2 frames
    of 6x6 instead of 4 of 16x16, both silently. Cached tensors are checked (shape, dtype, finite)."""
    from safetensors.torch import load_file

    from vidiff.utils import save_safetensors_atomic

    pipe = VideoPipeline.from_pretrained(tiny["base"], device="cpu")
    frames = np.random.default_rng(1).integers(0, 255, (4, 16, 16, 3), dtype=np.uint8)
    cache = editing.InversionCache.beside(tmp_path / "edit.mp4")
    calls = []
    real = editing.ddim_invert
    monkeypatch.setattr(editing, "ddim_invert", lambda *a, **k: calls.append(1) or real(*a, **k))

    def edit():
        return editing.edit_video(pipe, frames, ["a cat"], num_inference_steps=2, cache=cache,
                                  cache_key={"clip": "c"}, progress=False)

    edit()
    assert len(calls) == 1 and edit().inversion_cached and len(calls) == 1  # an intact cache is reused
    latents = load_file(str(cache.path))["latents"]
    metadata = {"key": json.dumps(json.loads(cache.key_path.read_text()), sort_keys=True)}
    for forged, problem in ((torch.full_like(latents, float("nan")), "holds NaN or infinite latents"),
                            (latents[:, :, :2, :3, :3].contiguous(), "holds float32 latents of shape [1, 4, 2, 3, 3], "
                                                                     "but its key says float32 of shape [1, 4, 4, 8, 8]"),
                            (latents.double(), "holds float64 latents of shape")):
        save_safetensors_atomic({"latents": forged}, cache.path, metadata=metadata)  # the key left intact
        with pytest.warns(UserWarning, match=re.escape(problem)) as caught:
            result = edit()
        assert len([w for w in caught if "inversion cache" in str(w.message)]) == 1
        assert not result.inversion_cached and result.videos[0].shape == (1, 3, 4, 16, 16)
        assert bool(torch.isfinite(result.videos[0]).all())
    assert len(calls) == 4


# ---------------------------------------------------------------------------------------------------------------
# Tracebacks left, and messages that blame the wrong thing
# ---------------------------------------------------------------------------------------------------------------
def full_disk(monkeypatch):
    """safetensors' writes fail as on a full disk (a SafetensorError, not an OSError)."""
    import safetensors.torch
    from safetensors import SafetensorError

    def no_space(*args, **kwargs):
        raise SafetensorError(NO_SPACE)

    monkeypatch.setattr(safetensors.torch, "save_file", no_space)


def test_a_full_disk_while_inflating_is_one_line(tiny, tmp_path, capsys, monkeypatch):
    full_disk(monkeypatch)
    out = tmp_path / "video"
    line = one_line(capsys, ["inflate", "--base", tiny["sd"], "--out", out], code=1)
    assert line.startswith(f"vidiff inflate: error: {out}/") and "No space left on device" in line
    assert list(tmp_path.iterdir()) == []  # no half-written folder, no temporary one


def test_a_full_disk_while_saving_a_tuned_model_is_one_line(tiny, tmp_path, capsys, monkeypatch):
    full_disk(monkeypatch)
    saved = tmp_path / "tuned"
    line = one_line(capsys, ["edit", "--model", tiny["base"], "--video", tiny["video"], "--prompt", "a cat",
                             "--num-frames", 4, "--steps", 2, "--method", "tune", "--tune-steps", 1, "--quiet",
                             "--save-tuned", saved, "--out", tmp_path / "e.mp4"], code=1)
    assert line.startswith(f"vidiff edit: error: {saved}/") and "No space left on device" in line
    assert not saved.exists()


@pytest.mark.parametrize("argv, message", [
    (["edit", "--fps", "1e308"], "--fps must be between 0.1 and 1000 frames per second, got 1e+308"),
    (["edit", "--fps", "1e-300"], "--fps must be between 0.1 and 1000 frames per second, got 1e-300"),
    (["edit", "--seed", "-1"], "--seed must be between 0 and 9223372036854775807, got -1"),
    (["edit", "--seed", str(2**70)], f"--seed must be between 0 and 9223372036854775807, got {2**70}"),
    (["interpolate", "--seed", str(2**70)], f"--seed must be between 0 and 9223372036854775807, got {2**70}"),
    (["eval", "shapes", "--seeds", f"1,{2**70}"], f"--seeds must be between 0 and 9223372036854775807, got {2**70}"),
    (["eval", "shapes", "--seeds", "-5"], "--seeds must be between 0 and 9223372036854775807, got -5"),
    (["inflate", "--stage", "tsr", "--factor", "0"], "--factor must be between 2 and 64, got 0"),
    (["inflate", "--stage", "interpolation", "--factor", "0"], "--factor must be between 2 and 64, got 0"),
    (["inflate", "--stage", "ssr", "--factor", "0"], "--factor must be between 2 and 64, got 0"),
])
def test_bad_numbers_are_one_line_before_loading(tiny, tmp_path, capsys, no_loading, argv, message):
    """Found in QA (issue 24): `inflate --factor 0` and `eval shapes --seeds 2**70` were accepted; seeds are
    0..2**63-1 everywhere (one SETTINGS row), fps one range."""
    out = tmp_path / "o.mp4"
    rest = {"edit": ["--model", tiny["base"], "--video", tiny["video"], "--prompt", "x", "--out", out],
            "interpolate": ["--model", tiny["interpolation"], "--video", tiny["video"], "--out", out],
            "eval": ["--model", tiny["base"], "--limit", "1"],
            "inflate": ["--base", tiny["sd"], "--out", tmp_path / "stage"]}[argv[0]]
    assert one_line(capsys, argv + rest).endswith(message)
    assert list(tmp_path.iterdir()) == []


def test_eval_into_a_read_only_folder_names_the_users_path(tiny, tmp_path, capsys, no_loading):
    """Found in QA (issue 24): `eval --out` into a read-only folder named the temporary file and exited 1 after
    the evaluation; now one line naming --out, exit 2, before anything loads."""
    if os.geteuid() == 0:  # (root writes through chmod: /sys is read-only to everyone)
        folder = Path("/sys")
    else:
        folder = tmp_path / "ro"
        folder.mkdir(mode=0o555)
    line = one_line(capsys, ["eval", "shapes", "--model", tiny["base"], "--seeds", "1", "--out", folder / "r.json"])
    assert f"--out {folder / 'r.json'}: cannot write in {folder}" in line and ".tmp" not in line


def test_a_temporary_name_never_reaches_the_message(tmp_path, monkeypatch):
    """The atomic writers name the user's path when the temporary file cannot be made or written."""
    from vidiff.utils import atomic_dir, atomic_path

    def denied(*args, **kwargs):
        raise PermissionError(13, "Permission denied", str(tmp_path / ".r.abc123.json.tmp.json"))

    with monkeypatch.context() as patch:
        patch.setattr("tempfile.mkstemp", denied)
        with pytest.raises(PermissionError) as info:
            with atomic_path(tmp_path / "r.json"):
                pass
    assert info.value.filename == str(tmp_path / "r.json")
    with pytest.raises(OSError) as info:
        with atomic_dir(tmp_path / "model") as tmp:
            raise OSError(28, "No space left on device", str(tmp / "unet" / "config.json"))
    assert info.value.filename == str(tmp_path / "model" / "unet" / "config.json")
    assert list(tmp_path.iterdir()) == []


def test_a_pickled_vidiff_json_is_named(tiny, tmp_path, capsys, no_loading):
    import pickle

    model = tmp_path / "model"
    shutil.copytree(tiny["base"], model)
    (model / "vidiff.json").write_bytes(pickle.dumps({"stage": "base"}))
    line = one_line(capsys, ["generate", "--model", model, "--prompt", "x", "--out", tmp_path / "o.mp4"])
    assert f"{model / 'vidiff.json'} is not a readable JSON file" in line


def test_a_train_config_yaml_error_is_one_line(tmp_path, capsys):
    config = tmp_path / "bad.yaml"
    config.write_text("output_dir: run\nmodel:\n  pretrained: [sd\ndata: {\n")
    line = one_line(capsys, ["train", config])
    assert line.endswith(f"{config} is not valid YAML: expected ',' or ']', but got ':' at line 4, column 5")


def pickled_vae_sd(tiny, folder: Path) -> Path:
    """The tiny SD with its VAE weights replaced by a pickle (only a .bin, no safetensors)."""
    import pickle

    shutil.copytree(tiny["sd"], folder)
    (folder / "vae" / "diffusion_pytorch_model.safetensors").unlink()
    (folder / "vae" / "diffusion_pytorch_model.bin").write_bytes(pickle.dumps({"a": 1}))
    return folder


@pytest.mark.parametrize("existing", [False, True])
def test_a_refused_training_run_writes_nothing(tiny, tmp_path, capfd, existing):
    """Found in QA (issue 24): `train` refusing a pickle in vae/ left run/config.json and run/vidiff-run.json, and
    diffusers printed "Defaulting to unsafe serialization" (false: the load was weights-only) before the error."""
    from vidiff.data.synthetic import write_shapes_dataset

    sd = pickled_vae_sd(tiny, tmp_path / "sd")
    manifest = write_shapes_dataset(tmp_path / "shapes", 2, num_frames=4, size=16)
    run = tmp_path / "run"
    if existing:
        run.mkdir()
    code = main(["train", str(TINY), f"model.pretrained={sd}", f"data.manifest={manifest}", f"output_dir={run}"])
    err = capfd.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "could not be read as plain tensors" in err[0], err
    assert (list(run.iterdir()) == []) if existing else not run.exists()


def test_library_notes_are_silenced_around_loads_only(tiny, capfd, caplog):
    """diffusers' "modules in AutoencoderKL that should be kept in float32: []" on a bf16 load; the loggers'
    levels are restored afterwards (no global state left for other code)."""
    loggers = [logging.getLogger(name) for name in ("diffusers", "transformers")]
    before = [logger.level for logger in loggers]
    with caplog.at_level(logging.INFO):
        VideoPipeline.from_pretrained(tiny["base"], device="cpu", dtype="bf16")
    assert "float32" not in capfd.readouterr().err and not [r for r in caplog.records if "float32" in r.message]
    assert [logger.level for logger in loggers] == before
    logging.getLogger("diffusers.models.modeling_utils").warning("a note after the load")
    assert [r.message for r in caplog.records] == ["a note after the load"]


def test_a_refused_single_file_is_one_line(tiny, tmp_path):
    """transformers' "requires torchvision" notes (as diffusers' single-file loader imports) and torch's "Detected
    pickle protocol 4" came before the one correct line. A fresh process: transformers says its notes once."""
    import pickle

    checkpoint = tmp_path / "model.ckpt"
    checkpoint.write_bytes(pickle.dumps({"state_dict": object}))
    done = subprocess.run([sys.executable, "-m", "vidiff", "inflate", "--base", str(checkpoint), "--config",
                           str(tiny["sd"]), "--out", str(tmp_path / "out")], capture_output=True, text=True,
                          env=dict(os.environ, PYTHONPATH=str(REPO)), timeout=300)
    err = done.stderr.strip().splitlines()
    assert done.returncode == 2 and len(err) == 1 and "model.ckpt" in err[0], err
