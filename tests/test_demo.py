"""The built-in demo models (vidiff/assets/demo, vidiff.demo): vocabulary and tokenizer, recorded checksums,
generation with the shipped weights, `vidiff generate` without --model, and the command `make demo` runs."""
from __future__ import annotations

import dataclasses
import importlib.util
import itertools
import json
import shlex
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from vidiff import demo
from vidiff.data.synthetic import COLORS, MOTIONS, SHAPES, caption

ROOT = Path(__file__).resolve().parents[1]
CAPTIONS = [caption(c, s, m) for c, s, m in itertools.product(COLORS, SHAPES, MOTIONS)]


def _load_tool(name: str):
    """tools/NAME.py as a module (tools/ is not a package)."""
    spec = importlib.util.spec_from_file_location(name, ROOT / "tools" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# ------------------------------------------------------------------------------------------------ vocabulary
def test_vocabulary_is_exactly_the_caption_words():
    words = {w for c in CAPTIONS for w in c.split()}
    assert sorted(demo.vocabulary()) == sorted(words)
    assert all(demo.unknown_words(c) == [] for c in CAPTIONS)


def test_unknown_words_message_is_one_line_listing_the_known_words():
    message = demo.unknown_words_message(["A Purple circle moving sideways", "a purple square"])
    assert demo.unknown_words(["A Purple circle moving sideways", "a purple square"]) == ["purple", "sideways"]
    assert "'purple', 'sideways'" in message and "\n" not in message
    assert all(f" {w}" in message for w in demo.vocabulary())
    assert demo.unknown_words_message("a RED circle moving right") is None


def test_tokenizer_spells_every_word_as_one_token(tmp_path):
    tokenizer = _load_tool("train_demo").write_tokenizer(tmp_path, 16)
    for word in demo.vocabulary():
        ids = tokenizer(word, add_special_tokens=False)["input_ids"]
        assert tokenizer.convert_ids_to_tokens(ids) == [word + "</w>"]
    # an unknown word becomes letter pieces (no unknown-token ids) and round-trips
    ids = tokenizer("a purple circle", add_special_tokens=False)["input_ids"]
    assert tokenizer.unk_token_id not in ids[1:-1] and tokenizer.decode(ids) == "a purple circle"


def test_learned_merges_rebuild_each_word():
    words = ["moving", "more", "red", "right"]
    merges = _load_tool("train_demo").learn_merges(words)
    for word in words:  # replay the merges in order, as BPE does, on each word's letters
        pieces = [*word[:-1], word[-1] + "</w>"]
        for a, b in merges:
            i = 0
            while i < len(pieces) - 1:
                if (pieces[i], pieces[i + 1]) == (a, b):
                    pieces[i:i + 2] = [a + b]
                i += 1
        assert pieces == [word + "</w>"]


# ------------------------------------------------------------------------------------------------ shipped models
def test_shipped_tokenizer_gives_whole_words_for_every_caption():
    from transformers import CLIPTokenizer

    tokenizer = CLIPTokenizer.from_pretrained(str(demo.model_dir("base") / "tokenizer"))
    for text in CAPTIONS:
        ids = tokenizer(text)["input_ids"]
        tokens = tokenizer.convert_ids_to_tokens(ids)
        assert tokens == ["<|startoftext|>", *(w + "</w>" for w in text.split()), "<|endoftext|>"]


def test_shipped_weights_match_their_checksums_and_stay_small():
    files = demo.weight_files()
    assert any("base/unet" in p.as_posix() for p in files)
    recorded = json.loads((demo.DEMO_DIR / demo.CHECKSUMS).read_text())
    assert sorted(recorded) == sorted(p.relative_to(demo.DEMO_DIR).as_posix() for p in files)
    assert demo.verify_checksums() == []
    assert sum(p.stat().st_size for p in files) <= 24e6  # (seven small models: the cascade is 7.8 MB of it)


def test_checksums_catch_changed_missing_and_extra_files(tmp_path):
    shutil.copytree(demo.model_dir("base") / "unet", tmp_path / "base" / "unet")
    demo.write_checksums(tmp_path)
    assert demo.verify_checksums(tmp_path) == []
    weights = tmp_path / "base" / "unet" / "diffusion_pytorch_model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 1
    weights.write_bytes(bytes(data))
    assert demo.verify_checksums(tmp_path) == [f"base/unet/{weights.name}: sha256 differs from checksums.json"]
    (tmp_path / "extra.safetensors").write_bytes(b"x")
    weights.unlink()
    assert demo.verify_checksums(tmp_path) == [f"base/unet/{weights.name}: missing",
                                               "extra.safetensors: not in checksums.json"]


def test_demo_base_makes_a_clip_of_its_size():
    from vidiff.pipelines.text_to_video import VideoPipeline

    pipe = VideoPipeline.from_pretrained(demo.model_dir("base"), device="cpu")
    assert pipe.latent is False and pipe.defaults.num_frames == 8 and pipe.defaults.height == 32
    video = pipe("a red circle moving right", num_inference_steps=2, seed=0, progress=False)
    assert video.dtype == np.uint8 and video.shape == (8, 32, 32, 3)
    assert video.std() > 0  # an image, not a constant


def test_demo_cascade_makes_15_frames_of_64_pixels():
    from vidiff.pipelines.cascade import CascadePipeline

    assert demo.default_model() == demo.DEMO_DIR and demo.available_stages() == list(demo.STAGES)
    pipe = CascadePipeline.from_pretrained(demo.DEMO_DIR, device="cpu")
    pipe.specs = [dataclasses.replace(spec, steps=2) for spec in pipe.specs]  # every stage runs, quickly
    video = pipe("a blue square moving up", seed=0, progress=False)
    assert video.dtype == np.uint8 and video.shape == (15, 64, 64, 3)


def test_the_default_cascade_is_the_fast_one_where_the_distilled_base_is_installed(tmp_path):
    import yaml

    def stages(name):
        return [(e["model"], e.get("steps"), e.get("strength"))
                for e in yaml.safe_load((tmp_path / name).read_text())["stages"]]

    full = [("base", None, None), ("interpolation", None, None), ("ssr", None, None)]
    for stage in demo.STAGES:
        (tmp_path / stage).mkdir()
        (tmp_path / stage / "vidiff.json").write_text("{}")
    demo.write_cascade(tmp_path)
    assert stages("cascade.yaml") == stages(demo.FULL_CASCADE) == full and not demo.default_is_fast(tmp_path)
    (tmp_path / demo.FAST_BASE).mkdir()
    (tmp_path / demo.FAST_BASE / "vidiff.json").write_text("{}")
    demo.write_cascade(tmp_path)
    assert stages(demo.FULL_CASCADE) == full and demo.default_is_fast(tmp_path)
    assert stages("cascade.yaml") == [("base-fast", None, None), ("interpolation", 8, 0.5), ("ssr", 8, 0.25)]
    for name in ("cascade.yaml", demo.FULL_CASCADE):  # the shipped files are what the publish step writes
        assert (demo.DEMO_DIR / name).read_text() == (tmp_path / name).read_text()


# ------------------------------------------------------------------------------------------------ CLI / make demo
def test_generate_without_model_warns_once_about_unknown_words(capsys):
    from vidiff.cli import main

    code = main(["generate", "--prompt", "a purple circle moving sideways", "--out", "clip.unknown-suffix"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    warnings = [line for line in err if line.startswith("warning:")]
    assert len(warnings) == 1 and "'purple', 'sideways'" in warnings[0] and "moving" in warnings[0]
    assert any("built-in demo model" in line for line in err)
    assert any("the fast one" in line and str(demo.DEMO_DIR / demo.FULL_CASCADE) in line for line in err)


def _make_demo_command(out_dir: Path) -> list[str]:
    """The `vidiff generate ...` line of `make demo` (from `make -n`), as CLI arguments."""
    if shutil.which("make") is None:
        pytest.fail("`make` is needed to read the demo recipe")
    printed = subprocess.run(["make", "-s", "-n", "demo", "STAMP=", f"DEMO_OUT={out_dir}"], cwd=ROOT,
                             capture_output=True, text=True, check=True).stdout
    lines = [shlex.split(line) for line in printed.splitlines() if " generate " in line]
    assert len(lines) == 1, printed
    assert Path(lines[0][0]).name == "vidiff"
    return lines[0][1:]


def test_make_demo_command_writes_clip_gif_and_contact_sheet(tmp_path, capsys):
    from vidiff.cli import main
    from vidiff.data.video_io import probe_video, read_video

    argv = _make_demo_command(tmp_path)
    assert "--model" not in argv and "--cascade" not in argv  # the demo needs nothing but the install
    assert main(argv) == 0
    captured = capsys.readouterr()
    assert "warning:" not in captured.err
    sidecar = json.loads((tmp_path / "clip.json").read_text())
    assert sidecar["prompt"] == "a red circle moving right"
    frames, fps = read_video(tmp_path / "clip.mp4")
    assert frames.shape == (15, 64, 64, 3) and fps == sidecar["fps"]
    assert probe_video(tmp_path / "clip.gif").num_frames == 15
    assert (tmp_path / "clip.png").stat().st_size > 0


@pytest.mark.parametrize("command, stage", [("interpolate", "interpolation"), ("extend", demo.EXTENSION),
                                            ("upscale", "ssr")])
def test_stage_commands_default_to_the_demo_stage(command, stage, tmp_path, capsys):
    from vidiff.cli import main

    argv = [command, "--video", str(tmp_path / "missing.mp4"), "--out", str(tmp_path / "out.mp4")]
    if command == "extend":
        argv += ["--frames", "4"]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[0] == (f"using the built-in demo {stage} model {demo.model_dir(stage)} "
                      "(pass --model DIR for another)")
    assert "missing.mp4' does not exist" in err[-1] and len(err) == 2


def test_extend_falls_back_to_the_interpolation_stage_without_the_extension_stage(monkeypatch):
    assert demo.installed(demo.EXTENSION) == demo.model_dir(demo.EXTENSION) and demo.extension_model() == "extend"
    monkeypatch.setattr(demo, "installed", lambda stage: None if stage == demo.EXTENSION else demo.model_dir(stage))
    assert demo.extension_model() == "interpolation"


@pytest.mark.parametrize("command", ["interpolate", "extend", "upscale"])
def test_demo_stages_take_what_generate_writes(command, tmp_path, capsys):
    """Issue 24: the demo cascade's own output (64x64) goes into every demo stage, at its size, with one warning
    line saying the stage was trained on 32x32 shapes clips (the error told users to make one with generate)."""
    import numpy as np

    from vidiff.cli import main
    from vidiff.data.video_io import read_video, write_video

    from vidiff.data.synthetic import make_clip

    write_video(tmp_path / "clip.mp4", make_clip("red", "circle", "moving right", num_frames=2, size=64), fps=8)
    argv = [command, "--video", str(tmp_path / "clip.mp4"), "--steps", "2", "--seed", "0", "--quiet",
            "--out", str(tmp_path / "out.mp4")] + (["--frames", "1"] if command == "extend" else [])
    assert main(argv) == 0
    err = capsys.readouterr().err.strip().splitlines()
    if command == "extend":  # extended at the stage's 32x32, the new frames enlarged by the demo's SSR stage
        assert len(err) == 2 and "the demo stage extends it at its own 32x32 and the demo's SSR stage" in err[1]
        record = json.loads((tmp_path / "out.json").read_text())
        assert record["upscaled_by"] == str(demo.model_dir("ssr"))
    else:
        assert len(err) == 2 and err[1].startswith("warning: --video") and "is 64x64" in err[1]
        assert "trained on shapes clips of 32x32" in err[1]
    size = {"interpolate": (3, 64, 64), "extend": (3, 64, 64), "upscale": (2, 128, 128)}[command]
    out = read_video(tmp_path / "out.mp4").frames
    assert out.shape[:3] == size
    if command == "extend":  # the input's frames come out as given (up to the mp4 round trip)
        given = read_video(tmp_path / "clip.mp4").frames
        assert np.abs(out[:2].astype(int) - given.astype(int)).mean() < 3


@pytest.mark.parametrize("command", ["interpolate", "extend", "upscale"])
def test_demo_stages_say_when_a_clip_is_not_from_their_world(command, tmp_path, capsys):
    """Issue 24: a real clip (here a textured bright one) downscaled for a demo stage came back as garbage with
    no word; now one warning line says the stage never saw such clips. A shapes clip at the trained size gets
    none."""
    import numpy as np

    from vidiff.cli import main
    from vidiff.data.synthetic import make_clip
    from vidiff.data.video_io import write_video

    rng = np.random.default_rng(0)
    real = np.clip(150 + 60 * rng.standard_normal((2, 32, 32, 3)), 0, 255).astype(np.uint8)
    write_video(tmp_path / "real.mp4", real, fps=8)
    write_video(tmp_path / "shapes.mp4", make_clip("blue", "square", "moving up", num_frames=2, size=32), fps=8)
    warnings = {}
    for name in ("real", "shapes"):
        argv = [command, "--video", str(tmp_path / f"{name}.mp4"), "--steps", "2", "--seed", "0", "--quiet",
                "--out", str(tmp_path / f"{name}-out.mp4")] + (["--frames", "1"] if command == "extend" else [])
        assert main(argv) == 0
        warnings[name] = [line for line in capsys.readouterr().err.splitlines() if line.startswith("warning")]
    assert len(warnings["real"]) == 1 and "does not look like the shapes clips" in warnings["real"][0]
    assert "% of its pixels are their plain dark background" in warnings["real"][0]
    assert warnings["shapes"] == []


def test_background_share_separates_shapes_clips_from_real_ones():
    import numpy as np

    from vidiff.data.synthetic import SHAPES_BACKGROUND_SHARE, background_share, make_clip

    for size in (32, 64):
        assert background_share(make_clip("yellow", "triangle", "moving left", num_frames=8, size=size)) > 0.9
    bright = np.full((4, 32, 32, 3), 200, np.uint8)
    assert background_share(bright) == 0.0 < SHAPES_BACKGROUND_SHARE


@pytest.mark.parametrize("command", ["interpolate", "extend", "upscale"])
def test_demo_stages_refuse_a_clip_of_another_size_before_loading(command, tmp_path, capsys, monkeypatch):
    """The demo stages take clips up to the demo's largest (64x64); a 128x96 video is one line before any model
    loads (a 512 px one ran for many minutes)."""
    import numpy as np

    from vidiff.cli import main
    from vidiff.data.video_io import write_video
    from vidiff.pipelines import text_to_video

    write_video(tmp_path / "big.mp4", np.zeros((4, 96, 128, 3), np.uint8), fps=8)
    monkeypatch.setattr(text_to_video.VideoPipeline, "from_pretrained",
                        classmethod(lambda *a, **k: pytest.fail("model loaded")))
    argv = [command, "--video", str(tmp_path / "big.mp4"), "--out", str(tmp_path / "out.mp4")]
    if command == "extend":
        argv += ["--frames", "4"]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2 and "is 128x96; the built-in demo stages take clips up to the demo's 64x64" in err[-1]
    assert "vidiff generate" not in err[-1]  # (the fix is a resize, not a loop back to generate)
    assert not (tmp_path / "out.mp4").exists()


# ------------------------------------------------------------------------------------------------ reproduction
def test_text_pretraining_makes_every_attribute_readable(tmp_path):
    """The `text` step's pretraining: after it, colour, shape and motion each move the caption embedding by a
    comparable amount (a random text model barely separates some words once trained along with a U-Net)."""
    import torch
    import yaml
    from transformers import CLIPTextModel, CLIPTokenizer

    td = _load_tool("train_demo")
    cfg = yaml.safe_load((ROOT / "configs" / "demo" / "demo.yaml").read_text())
    cfg["text"]["pretrain_steps"] = 150
    td.build_text(cfg, tmp_path / "text", 0)
    encoder = CLIPTextModel.from_pretrained(tmp_path / "text" / "text_encoder")
    tokenizer = CLIPTokenizer.from_pretrained(tmp_path / "text" / "tokenizer")
    embedded = td.encode(encoder, tokenizer, td.captions(), "cpu").mean(1)                   # (48, d)
    grid = embedded.reshape(len(COLORS), len(SHAPES), len(MOTIONS), -1)
    # a nearest-centroid read-out of each attribute from the pooled embedding is right for every caption
    for axis in range(3):
        centroids = grid.mean(dim=[a for a in range(3) if a != axis])                         # (n, d)
        labels = torch.arange(grid.shape[axis]).reshape([-1 if a == axis else 1 for a in range(3)]).expand(grid.shape[:3])
        nearest = torch.cdist(embedded, centroids).argmin(1)
        assert torch.equal(nearest, labels.reshape(-1)), axis


def test_noise_shift_divides_every_signal_to_noise_ratio():
    """base.noise_shift s: the demo schedule with every SNR divided by s**2, as betas a diffusers sampler takes."""
    import torch
    import yaml
    from diffusers import DDIMScheduler

    td = _load_tool("train_demo")
    cfg = yaml.safe_load((ROOT / "configs" / "demo" / "demo.yaml").read_text())
    assert "trained_betas" not in td.scheduler_config(cfg) and "trained_betas" not in td.scheduler_config(cfg, 1)

    def snr(config):
        alphas = DDIMScheduler.from_config(config).alphas_cumprod.double()
        return alphas / (1 - alphas)

    plain, shifted = snr(td.scheduler_config(cfg)), snr(td.scheduler_config(cfg, 4))
    ratio = (shifted / plain)[:990]  # the last betas are capped at 0.999 like the plain schedule's
    torch.testing.assert_close(ratio, torch.full_like(ratio, 1 / 16), rtol=1e-3, atol=0)
    assert shifted[-1] <= plain[-1]


def _tiny_demo_configs(tmp_path) -> Path:
    """configs/demo copied with 48 clips and a few steps per stage; returns the copy's demo.yaml."""
    import yaml

    configs = tmp_path / "configs"
    shutil.copytree(ROOT / "configs" / "demo", configs)
    cfg = yaml.safe_load((configs / "demo.yaml").read_text())
    cfg["data"]["count"] = 48
    cfg["text"]["pretrain_steps"] = 5
    cfg["ablation"]["budgets"] = [0.5, 1.0]
    (configs / "demo.yaml").write_text(yaml.safe_dump(cfg))
    for name, steps in (("t2i", 4), ("base", 4), ("base-finish", 2), ("interpolation", 4), ("ssr", 4)):
        stage = yaml.safe_load((configs / f"{name}.yaml").read_text())
        stage["train"].update(max_steps=steps, batch_size=2, checkpoint_every=2, lr_warmup_steps=1, log_every=1)
        (configs / f"{name}.yaml").write_text(yaml.safe_dump(stage))
    return configs / "demo.yaml"


def _last_steps(*logs: Path) -> list[str]:
    return [log.read_text().split()[-1].split(",")[0] for log in logs]


def test_train_demo_reproduces_a_cascade_end_to_end_and_resumes(tmp_path, capsys):
    """tools/train_demo.py at a tiny scale: every stage is a `vidiff train` run (its run folder, checkpoints and
    logs), each writes what the next needs, the published cascade loads and generates, the text model stays the
    text step's everywhere, the finishing phase continues from the first phase's pipeline, the ablation trains
    the whole recipe (both phases) at each budget from both starts (the base is its inflated run of the whole
    recipe), a finished step is skipped on rerun, an unfinished one resumes from its checkpoint, and
    tools/eval_ablation.py scores every run."""
    import torch
    from safetensors.torch import load_file

    from vidiff.pipelines.cascade import CascadePipeline

    config = _tiny_demo_configs(tmp_path)
    work, out = tmp_path / "work", tmp_path / "out"
    td = _load_tool("train_demo")
    args = ["--config", str(config), "--work", str(work), "--out", str(out), "--device", "cpu"]
    assert td.main(args + ["--steps", "text,data,t2i,base,ablation,interpolation,ssr,publish"]) == 0

    def text_model(folder):
        return load_file(str(folder / "text_encoder" / "model.safetensors"))

    text = text_model(work / "text")
    for folder in (work / "t2i" / "train" / "sd", out / "base", out / "interpolation", out / "ssr"):
        assert all(torch.equal(text[k], v) for k, v in text_model(folder).items())  # frozen everywhere
    for run in ("t2i/train", "base/train", "base/finish", "interpolation/train", "ssr/train"):
        folder = work / run
        assert (folder / "vidiff-run.json").is_file() and (folder / "loss.png").is_file()
        assert (folder / "checkpoints").is_dir() and (folder / "pipeline" / "vidiff.json").is_file()
    finish_config = json.loads((work / "base" / "finish" / "config.json").read_text())
    assert finish_config["model"]["pretrained"] == str(work / "base" / "train" / "pipeline")
    assert finish_config["train"]["noisy_from"] == 0.9 and finish_config["train"]["max_steps"] == 2
    assert (out / "base" / "finish_train_log.csv").read_text() == (work / "base" / "finish" / "train_log.csv").read_text()
    assert json.loads((out / "base" / "vidiff.json").read_text())["source"] == td.SOURCE
    # the ablation's runs: half the steps of each phase (2 + 1) from both starts, the whole recipe from scratch
    assert sorted(p.name for p in (work / "ablation").iterdir()) == ["inflated-3", "scratch-3", "scratch-6",
                                                                     "scratch-start"]
    for run, steps in (("inflated-3", ["2", "1"]), ("scratch-3", ["2", "1"]), ("scratch-6", ["4", "2"])):
        folder = work / "ablation" / run
        assert _last_steps(folder / "train" / "train_log.csv", folder / "finish" / "train_log.csv") == steps
        assert (td.final_model(folder) / "vidiff.json").is_file()
    assert demo.verify_checksums(out) == []
    pipe = CascadePipeline.from_pretrained(out, device="cpu")
    clip = pipe("a red circle moving right", generator=torch.Generator().manual_seed(0), num_inference_steps=2,
                progress=False)
    assert clip.shape == (15, 64, 64, 3) and clip.dtype == np.uint8

    weights = work / "base" / "finish" / "pipeline" / "unet" / "diffusion_pytorch_model.safetensors"
    before = weights.stat().st_mtime_ns
    assert td.main(args + ["--steps", "base"]) == 0  # done: skipped
    assert weights.stat().st_mtime_ns == before
    shutil.rmtree(work / "ssr" / "train" / "pipeline")  # as if stopped after its last checkpoint
    capsys.readouterr()
    assert td.main(args + ["--steps", "ssr"]) == 0
    assert "resumed from" in capsys.readouterr().out and (work / "ssr" / "train" / "pipeline" / "vidiff.json").is_file()

    ablation = _load_tool("eval_ablation")
    assert ablation.main(["--config", str(config), "--demo-work", str(work), "--out", str(tmp_path / "ablation"),
                          "--seeds", "9001", "--sample-steps", "1", "--device", "cpu"]) == 0
    results = json.loads((tmp_path / "ablation" / "ablation.json").read_text())
    assert sorted(results["evaluations"]["inflated"]) == sorted(results["evaluations"]["scratch"]) == ["3", "6"]
    assert results["runs"]["inflated"]["6"] == str(work / "base" / "finish" / "pipeline") and results["total_steps"] == 6
    assert set(results["headline"]) >= {"scratch_final_all", "inflated_steps_to_scratch_final"}
    assert (tmp_path / "ablation" / "ablation.png").is_file()


def test_demo_data_decodes_to_the_in_memory_recipes_pixels(tmp_path):
    """The data step's FFV1 clips, read by `vidiff train`'s dataset with each stage config, are exactly the pixels
    the in-memory recipe trained on: the 32x32 stages the 2x2 area averages (the same floats), the ssr exact
    32x32 patches of the 64x64 frames, each caption its clip's."""
    import torch
    import torch.nn.functional as F
    import yaml

    from vidiff.config import load_config
    from vidiff.training.data import make_dataset

    td = _load_tool("train_demo")
    cfg = yaml.safe_load((ROOT / "configs" / "demo" / "demo.yaml").read_text())
    cfg["data"]["count"] = 3
    manifest = td.write_data(cfg, tmp_path / "shapes", 0)
    clips, texts = td.make_clips(cfg, 0)
    full = torch.from_numpy(clips).permute(0, 4, 1, 2, 3).float() / 127.5 - 1.0        # b c f h w, in [-1, 1]
    b, c, f, h, w = full.shape
    # the in-memory recipe's area downsampling (train_demo's to_pixels), verbatim
    small = F.interpolate(full.reshape(b, c * f, h, w), size=(32, 32), mode="area").reshape(b, c, f, 32, 32)
    for name in ("t2i", "base", "interpolation", "ssr"):
        config = load_config(ROOT / "configs" / "demo" / f"{name}.yaml", [f"data.manifest={manifest}"])
        d = config.data
        dataset = make_dataset(config)
        for i in range(len(dataset)):
            item = dataset[i]
            assert item["prompt"] == texts[i]
            video = item["pixel_values"]
            assert video.shape == (3, d.num_frames, 32, 32)
            span = (d.num_frames - 1) * d.stride + 1
            windows = [(small if d.resize == "area" else full)[i, :, s:s + span:d.stride] for s in range(f - span + 1)]
            if d.resize == "area":
                assert any(torch.equal(video, window) for window in windows), name
            else:  # crop: a 32x32 patch somewhere in a window
                assert any(torch.equal(video, window[:, :, y:y + 32, x:x + 32])
                           for window in windows for y in range(33) for x in range(33)), name


def test_caption_sensitivity_measures_what_each_word_changes(tmp_path, monkeypatch):
    """tools/caption_sensitivity.py: every attribute moves a model that reads its caption; a text model that gives
    every caption the same embedding moves nothing (0 for each attribute); the JSON holds the printed numbers."""
    import torch

    from vidiff.pipelines.text_to_video import VideoPipeline
    from vidiff.testing import make_tiny_video_pipeline

    tool = _load_tool("caption_sensitivity")
    model = make_tiny_video_pipeline(tmp_path / "model", seed=3, vae=False,
                                     defaults={"num_frames": 2, "height": 16, "width": 16, "num_inference_steps": 2})
    pipe = VideoPipeline.from_pretrained(model, device="cpu")
    numbers = tool.sensitivity(pipe, [999, 500])
    assert set(numbers) == {"color", "shape", "motion"}
    assert all(0 < v < float("inf") for per_t in numbers.values() for v in per_t.values()), numbers

    deaf = pipe.encode_prompt
    monkeypatch.setattr(pipe, "encode_prompt", lambda prompts: deaf(["a red circle moving left"] * len(prompts)))
    assert all(v == 0 for per_t in tool.sensitivity(pipe, [999]).values() for v in per_t.values())

    out = tmp_path / "sensitivity.json"
    assert tool.main([str(model), "--timesteps", "999,500", "--out", str(out)]) == 0
    written = json.loads(out.read_text())["models"][str(model)]
    assert {a: {int(t): v for t, v in per_t.items()} for a, per_t in written.items()} == numbers
    assert set(json.loads(out.read_text())["pure_noise_direction"][str(model)]) == {"right_way", "pixels"}
    with pytest.raises(SystemExit):
        tool.main([str(tmp_path), "--timesteps", "999"])  # not a pipeline folder: a one-line usage error


def test_pure_noise_direction_reads_the_direction_of_travel():
    """direction_score: true shapes clips move their caption's way (100%, about the distance they travel); the
    same clips played backwards move the other way (0%, the same distance negative); a still clip does not move."""
    import numpy as np
    import torch

    from vidiff.data.synthetic import make_clip
    from vidiff.eval.suite import make_cases

    tool = _load_tool("caption_sensitivity")
    cases = make_cases(seeds=[5])
    clips = torch.from_numpy(np.stack([make_clip(c.color, c.shape, c.motion, 8, 32, seed=c.index) for c in cases]))
    clips = clips.permute(0, 4, 1, 2, 3).float() / 127.5 - 1  # b c f h w
    motions = [c.motion for c in cases]
    forward, backward = tool.direction_score(clips, motions), tool.direction_score(clips.flip(2), motions)
    assert forward["right_way"] == 1.0 and forward["pixels"] > 8, forward
    assert backward["right_way"] == 0.0 and backward["pixels"] == pytest.approx(-forward["pixels"], rel=1e-4)
    still = tool.direction_score(clips[:, :, :1].expand(-1, -1, 8, -1, -1), motions)
    assert still == {"right_way": 0.0, "pixels": 0.0}


@pytest.mark.parametrize("flags, message", [
    (["--budgets", "0.5,0"], "--budgets must be fractions in (0, 1]"),
    (["--budgets", "1.5"], "--budgets must be fractions in (0, 1]"),
    (["--budgets", "half"], "--budgets must be comma-separated numbers"),
    (["--starts", "inflated,random"], "--starts must be inflated, scratch or both"),
    (["--steps", "scratch"], "unknown step(s) ['scratch']"),
])
def test_train_demo_refuses_bad_ablation_flags_in_one_line(flags, message, capsys):
    """train_demo's ablation flags: a bad value is one usage line naming it, before anything is built."""
    td = _load_tool("train_demo")
    with pytest.raises(SystemExit) as exc:
        td.parse_args(flags)
    assert exc.value.code == 2
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert message in error


def test_ablation_runs_scale_both_phases_and_reuse_the_base(tmp_path):
    """The ablation's runs: each budget scales the first phase and the finishing phase alike (rounded), names its
    folder by the steps in all, and the inflated run of the whole recipe is the base itself."""
    import yaml

    from vidiff.config import load_config

    td = _load_tool("train_demo")
    configs = ROOT / "configs" / "demo"
    cfg = yaml.safe_load((configs / "demo.yaml").read_text())
    run = td.DemoRun(cfg, configs, tmp_path, "auto", 1.0, "cpu")
    first, finish = (load_config(configs / f"{name}.yaml").train.max_steps for name in ("base", "base-finish"))
    runs = td.ablation_runs(run, budgets=[0.5, 1.0])
    assert [(start, budget, steps) for start, budget, steps, _ in runs] == [
        ("inflated", 0.5, round(first / 2) + round(finish / 2)), ("scratch", 0.5, round(first / 2) + round(finish / 2)),
        ("inflated", 1.0, first + finish), ("scratch", 1.0, first + finish)]
    assert runs[2][3] == tmp_path / "base" and runs[3][3] == tmp_path / "ablation" / f"scratch-{first + finish}"
    assert (run.steps("base", 0.5), run.steps("base-finish", 0.5)) == (round(first / 2), round(finish / 2))
    assert td.DemoRun(cfg, configs, tmp_path, "auto", 0.01, "cpu").steps("base-finish") == max(1, round(finish * 0.01))


def test_demo_controlnet_fits_the_base_and_steers_it():
    """The shipped trajectory ControlNet is a diffusers ControlNet folder for the demo base; its record names the
    track extractor, and with it the base draws a different clip than without (the dot leads the shape)."""
    import torch
    from diffusers import ControlNetModel

    from vidiff.control import Control, VideoControlNet, check_fits, control_images, read_controlnet, read_record
    from vidiff.data.synthetic import make_clip
    from vidiff.pipelines.text_to_video import VideoPipeline

    folder = demo.DEMO_DIR / demo.CONTROLNET
    assert read_record(folder)["extractor"] == "track"
    controlnet = read_controlnet(folder)
    assert isinstance(ControlNetModel.from_pretrained(str(folder)), ControlNetModel)
    pipe = VideoPipeline.from_pretrained(demo.model_dir("base"), device="cpu")
    check_fits(controlnet.config, pipe.unet.config, str(folder), pipe.vae_scale_factor)
    images = control_images(make_clip("red", "circle", "moving down", num_frames=8, size=32, seed=1), "track", 32, 32)
    plain = pipe("a blue square moving down", num_inference_steps=2, seed=0, output_type="pt", progress=False)
    steered = pipe("a blue square moving down", num_inference_steps=2, seed=0, output_type="pt", progress=False,
                   control=Control(VideoControlNet(controlnet), images))
    assert steered.shape == plain.shape == (1, 3, 8, 32, 32) and not torch.allclose(plain, steered, atol=1e-3)
