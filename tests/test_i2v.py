"""Image-to-video (vidiff.pipelines.image_to_video, `vidiff generate --image`) on tiny models (CPU): frame 0 is the
image in pixel-space and latent models at odd image sizes, the first-frame mask, the cascade route, the command
line's clip and sidecar, the Python API giving the CLI's clip, and every bad input refused before loading."""
import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import yaml
from PIL import Image

from vidiff.stages import make_stage
from vidiff.stages.conditions import prefix_mask, sample_frame_masks

pytestmark = pytest.mark.usefixtures("one_thread")  # (tests/conftest.py)

SMALL = {"num_frames": 4, "height": 16, "width": 16, "num_inference_steps": 2, "fps": 8}


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """Interpolation stages of a tiny latent SD and a tiny pixel-space one (4-frame windows), one trained only for
    keyframes (no first-frame masks), a base, and a cascade folder (base, interpolation, ssr)."""
    from vidiff.models.folder import inflate_pipeline
    from vidiff.spec import read_info
    from vidiff.stages.folder import inflate_stage
    from vidiff.testing import make_tiny_sd_pipeline
    from vidiff.utils import write_json_atomic

    root = tmp_path_factory.mktemp("i2v")
    sd, pixel = make_tiny_sd_pipeline(root / "sd"), make_tiny_sd_pipeline(root / "pixel-sd", vae=False)
    cascade = root / "cascade"
    inflate_pipeline(sd, cascade / "base", defaults=SMALL)
    inflate_stage(sd, cascade / "interpolation", "interpolation", factor=2, defaults=SMALL)
    inflate_stage(sd, cascade / "ssr", "ssr", factor=2, defaults=SMALL)
    (cascade / "cascade.yaml").write_text(yaml.safe_dump({"stages": [
        {"model": "base"}, {"model": "interpolation"}, {"model": "ssr", "noise_level": 20}]}))
    inflate_stage(pixel, root / "pixel", "interpolation", factor=2, defaults=SMALL)
    keyframes = root / "keyframes"
    inflate_stage(sd, keyframes, "interpolation", factor=2, defaults=SMALL)
    info = read_info(keyframes)
    info_json = info.to_json()
    info_json["stage_options"] = {"mask_factors": [2], "mask_modes": ["interpolate"]}
    write_json_atomic(keyframes / "vidiff.json", info_json)
    image = root / "odd.png"
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (23, 37, 3), dtype=np.uint8)).save(image)
    return {"root": root, "latent": cascade / "interpolation", "pixel": root / "pixel", "cascade": cascade,
            "base": cascade / "base", "keyframes": keyframes, "image": image}


def load(path):
    from vidiff.pipelines.text_to_video import VideoPipeline

    return VideoPipeline.from_pretrained(path, device="cpu", dtype="fp32")


def reference_fit(image: np.ndarray, height: int, width: int) -> np.ndarray:
    """Cover (aspect kept, antialiased bilinear) then centre crop, written out with torch for the test."""
    h, w, _ = image.shape
    scale = max(height / h, width / w)
    new_h, new_w = max(height, round(h * scale)), max(width, round(w * scale))
    x = torch.from_numpy(image).permute(2, 0, 1)[None].float()
    x = F.interpolate(x, size=(new_h, new_w), mode="bilinear", antialias=True, align_corners=False)
    x = x.round().clamp(0, 255).to(torch.uint8)[0].permute(1, 2, 0).numpy()
    top, left = (new_h - height) // 2, (new_w - width) // 2
    return x[top:top + height, left:left + width]


# ---------------------------------------------------------------------------------------------------------------
# the first-frame mask and the stage's checks
# ---------------------------------------------------------------------------------------------------------------
def test_first_frame_masks_and_the_stage_checks():
    masks = sample_frame_masks(64, 6, factors=[2], modes=["first", "interpolate"],
                               generator=torch.Generator().manual_seed(0))
    first = [m for m in masks if torch.equal(m, prefix_mask(6, 1))]
    assert 20 <= len(first) <= 44  # about half, the rest keyframes (which never equal a one-frame mask at x2)
    stage = make_stage("interpolation", mask_factors=[2], mask_modes=["first"])
    info = type("Info", (), {"defaults": type("D", (), {"num_frames": 6})()})()
    assert stage.check_extension(info, 1, 5, 1) == 1  # one known frame: what "first" masks train
    with pytest.raises(ValueError, match="future-prediction masks"):
        stage.check_extension(info, 3, 3, 2)  # a longer known past needs "future" masks
    with pytest.raises(ValueError, match="mask_modes"):
        make_stage("interpolation", mask_modes=["first", "sideways"])


# ---------------------------------------------------------------------------------------------------------------
# the Python API
# ---------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["pixel", "latent"])
def test_frame_0_is_the_image_at_odd_sizes(models, kind):
    from vidiff.pipelines.image_to_video import fit_image, image_to_video
    from vidiff.pipelines.text_to_video import to_uint8

    pipe = load(models[kind])
    image = np.asarray(Image.open(models["image"]))  # 23 x 37: resized to cover, centre-cropped
    fitted = fit_image(image, 16, 24)
    assert np.array_equal(fitted, reference_fit(image, 16, 24))
    video = image_to_video(pipe, image, "a red circle moving right", height=16, width=24, seed=1, steps=2,
                           progress=False)
    assert video.shape == (1, 3, 4, 16, 24)  # the stage's window
    frames = to_uint8(video[0])
    assert np.array_equal(frames[0], fitted)  # exactly the image's pixels (a latent model decodes frames 1..)
    assert not np.array_equal(frames[1], frames[0])
    again = image_to_video(pipe, models["image"], "a red circle moving right", height=16, width=24, seed=1, steps=2,
                           progress=False)
    assert torch.equal(video, again)  # a path reads the same image; the seed fixes the rest
    longer = image_to_video(pipe, [image, fitted], ["a", "b"], num_frames=6, height=16, width=24, seed=1, steps=2,
                            progress=False)  # past the window: extension's chunks
    assert longer.shape == (2, 3, 6, 16, 24)
    assert np.array_equal(to_uint8(longer[0])[0], fitted) and np.array_equal(to_uint8(longer[1])[0], fitted)


def test_a_cascade_runs_its_later_stages_on_the_clip(models):
    from vidiff.pipelines.cascade import CascadePipeline
    from vidiff.pipelines.image_to_video import fit_image, image_to_video
    from vidiff.pipelines.text_to_video import to_uint8

    cascade = CascadePipeline.from_pretrained(models["cascade"], device="cpu", dtype="fp32")
    video = image_to_video(cascade, models["image"], "a", seed=0, steps=2, progress=False)
    assert video.shape == (1, 3, 4, 32, 32)  # the interpolation stage's 4 frames of 16 px, then ssr x2
    frame0 = fit_image(np.asarray(Image.open(models["image"])), 32, 32)
    assert np.array_equal(to_uint8(video[0])[0], frame0)


# ---------------------------------------------------------------------------------------------------------------
# the command line
# ---------------------------------------------------------------------------------------------------------------
def run_cli(capsys, *argv):
    from vidiff.cli import main

    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_cli_writes_the_clip_and_sidecar_and_matches_the_api(models, tmp_path, capsys):
    from vidiff.pipelines.image_to_video import fit_image, image_to_video
    from vidiff.pipelines.text_to_video import to_uint8

    out = tmp_path / "clip.mp4"
    code, printed, err = run_cli(capsys, "generate", "--model", models["pixel"], "--image", models["image"],
                                 "--prompt", "a blue square moving up", "--seed", 5, "--steps", 2, "--width", 24,
                                 "--frames-dir", "--out", out, "--quiet")
    assert code == 0, err
    assert "wrote" in printed and out.is_file()
    sidecar = json.loads(out.with_suffix(".json").read_text())
    assert sidecar["image"] == str(models["image"].resolve())
    assert (sidecar["image_height"], sidecar["image_width"]) == (23, 37)
    assert (sidecar["num_frames"], sidecar["height"], sidecar["width"], sidecar["seed"]) == (4, 16, 24, 5)
    assert sidecar["stages"][0]["stage"] == "interpolation" and sidecar["fps"] == 8
    frames = np.stack([np.asarray(Image.open(p)) for p in sorted((tmp_path / "clip_frames").glob("*.png"))])
    api = to_uint8(image_to_video(load(models["pixel"]), models["image"], "a blue square moving up", width=24, seed=5,
                                  steps=2, progress=False)[0])
    assert np.array_equal(frames, api)  # the PNG frames are lossless: the CLI's clip is the API's
    assert np.array_equal(frames[0], fit_image(np.asarray(Image.open(models["image"])), 16, 24))


def test_cli_cascade_folder_as_model(models, tmp_path, capsys):
    out = tmp_path / "c.png"
    code, _, err = run_cli(capsys, "generate", "--model", models["cascade"], "--image", models["image"], "--prompt",
                           "a", "--seed", 0, "--out", out, "--quiet")
    assert code == 0, err
    sidecar = json.loads(out.with_suffix(".json").read_text())
    assert [s["stage"] for s in sidecar["stages"]] == ["interpolation", "ssr"]
    assert (sidecar["num_frames"], sidecar["height"], sidecar["width"]) == (4, 32, 32)


@pytest.mark.parametrize("case", ["missing", "folder", "unreadable", "base-model", "keyframes-only", "zero-shot",
                                  "lora", "one-frame", "size", "travel", "both"])
def test_bad_inputs_are_one_line_before_loading(models, tmp_path, capsys, monkeypatch, case):
    from vidiff.pipelines.text_to_video import VideoPipeline

    def no_loading(*args, **kwargs):
        raise AssertionError("a model was loaded before the input was checked")

    monkeypatch.setattr(VideoPipeline, "from_pretrained", no_loading)
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"not a png at all")
    lora = tmp_path / "style.safetensors"
    lora.write_bytes(b"x")
    base = ["generate", "--model", models["pixel"], "--image", models["image"], "--prompt", "a", "--out",
            tmp_path / "o.mp4"]
    argv, message = {
        "missing": (base[:3] + ["--image", tmp_path / "nope.png"] + base[5:], "--image .*nope.png' does not exist"),
        "folder": (base[:3] + ["--image", tmp_path] + base[5:], "is a folder, not an image"),
        "unreadable": (base[:3] + ["--image", broken] + base[5:], "broken.png' is not readable .*give a png"),
        "base-model": (["generate", "--model", models["base"]] + base[3:],
                       "cannot start a clip from an image: .*this is a 'base' model"),
        "keyframes-only": (["generate", "--model", models["keyframes"]] + base[3:],
                           "cannot start a clip from an image: .*mask_modes \\['interpolate'\\]"),
        "zero-shot": (base + ["--zero-shot"], "--zero-shot does not apply to --image"),
        "lora": (base + ["--lora", lora], "--lora does not apply to --image"),
        "one-frame": (base + ["--num-frames", 1], "at least 2 frames"),
        "size": (base + ["--height", 17], "--height .*multiple"),
        "travel": (["generate", "--model", models["pixel"], "--image", models["image"], "--prompt", "0: a",
                    "--prompt", "2: b", "--out", tmp_path / "o.mp4"], "prompt travel .* does not apply to --image"),
        "both": (base + ["--cascade", models["cascade"] / "cascade.yaml"], "give --model or --cascade, not both"),
    }[case]
    code, _, err = run_cli(capsys, *argv)
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and lines[0].startswith("vidiff generate: error: "), err
    assert re.search(message, lines[0]), lines[0]
    assert not (tmp_path / "o.mp4").exists()


def test_the_shipped_candidate_starts_clips_from_an_image_and_the_keyframe_stage_does_not(models):
    from vidiff.pipelines.image_to_video import check_first_frame_stage
    from vidiff.spec import read_info
    from vidiff.stages import stage_for

    folder = Path(__file__).resolve().parents[1] / "vidiff" / "assets" / "demo" / "i2v"
    info = read_info(folder)
    assert info.stage_options["mask_modes"].count("first") == 3
    check_first_frame_stage(stage_for(info), info, info.defaults.num_frames, "demo-i2v")  # no error
    check_first_frame_stage(stage_for(info), info, 2 * info.defaults.num_frames, "demo-i2v")  # extension chunks
    keyframes = read_info(models["keyframes"])
    with pytest.raises(ValueError, match="cannot start a clip from an image"):
        check_first_frame_stage(stage_for(keyframes), keyframes, 4, "keyframes")
