"""Prompt travel: prompts at keyframes, text embeddings interpolated per frame, through the U-Net, the sampler's
temporal windows and `vidiff generate`."""
from __future__ import annotations

import json

import pytest
import torch

from vidiff.cli import main
from vidiff.pipelines.text_to_video import VideoPipeline, schedule_embeddings
from vidiff.spec import PromptSchedule, SettingError, parse_prompt_schedule
from vidiff.testing import make_tiny_video_pipeline

pytestmark = pytest.mark.usefixtures("one_thread")  # (tests/conftest.py)
RED, BLUE = "a red circle moving right", "a blue square moving left"


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return make_tiny_video_pipeline(tmp_path_factory.mktemp("travel") / "video", defaults={"num_frames": 4})


@pytest.fixture(scope="module")
def pipe(folder):
    return VideoPipeline.from_pretrained(folder, device="cpu")


def test_schedule_embeddings_interpolate_linearly_between_keyframes():
    keys = torch.randn(3, 5, 8, dtype=torch.float64)
    got = schedule_embeddings(keys, [2, 4, 8], 11)
    for t in range(11):
        if t <= 2:
            expected = keys[0]
        elif t >= 8:
            expected = keys[2]
        else:
            (a, fa), (b, fb) = ((0, 2), (1, 4)) if t < 4 else ((1, 4), (2, 8))
            w = (t - fa) / (fb - fa)
            expected = (1 - w) * keys[a] + w * keys[b]
        torch.testing.assert_close(got[t], expected, atol=1e-12, rtol=0)
    torch.testing.assert_close(schedule_embeddings(keys[:1], [3], 4), keys[:1].expand(4, -1, -1))


def test_schedule_parsing_and_errors():
    s = parse_prompt_schedule(["8: b", "0: a"])
    assert s.keyframes == ((0, "a"), (8, "b")) and str(s) == "0: a; 8: b"
    assert parse_prompt_schedule({0: "a", "4": "b"}).keyframes == ((0, "a"), (4, "b"))
    for bad in (["0: a", "0: b"], ["x: a"], ["3:  "], []):
        with pytest.raises(ValueError):
            parse_prompt_schedule(bad)
    with pytest.raises(SettingError, match="last prompt keyframe"):
        s.check_frames(8)


def test_each_frame_follows_its_keyframe_prompt_through_windows(pipe):
    """A fresh inflation runs every frame alone (temporal layers at identity), so under prompt travel frame t must
    equal the frame t of a clip sampled with the prompt its keyframes give it, here across 2-frame windows."""
    latents = torch.randn(1, 4, 4, 8, 8, generator=torch.Generator().manual_seed(2))
    kwargs = dict(num_frames=4, height=16, width=16, num_inference_steps=2, guidance_scale=3.0, latents=latents,
                  output_type="pt", progress=False, window_size=2, window_stride=1)
    travel = pipe(PromptSchedule(((0, RED), (1, RED), (2, BLUE))), **kwargs)
    red, blue = pipe(RED, **kwargs), pipe(BLUE, **kwargs)
    torch.testing.assert_close(travel[:, :, :2], red[:, :, :2], atol=1e-5, rtol=0)
    torch.testing.assert_close(travel[:, :, 2:], blue[:, :, 2:], atol=1e-5, rtol=0)
    assert (red - blue).abs().max() > 1e-2
    # one keyframe is the plain prompt
    torch.testing.assert_close(pipe(PromptSchedule(((0, RED),)), **kwargs), red, atol=1e-5, rtol=0)


def test_generate_cli_prompt_travel(folder, tmp_path, capsys):
    base = ["generate", "--model", str(folder), "--num-frames", "4", "--height", "16", "--width", "16",
            "--steps", "2", "--seed", "1", "--quiet"]
    assert main([*base, "--prompt", f"0: {RED}", "--prompt", f"3: {BLUE}", "--out", str(tmp_path / "t.mp4")]) == 0
    sidecar = json.loads((tmp_path / "t.json").read_text())
    assert sidecar["prompt_schedule"] == {"0": RED, "3": BLUE} and sidecar["prompt"] == f"0: {RED}; 3: {BLUE}"
    capsys.readouterr()
    for prompts, match in (([f"0: {RED}", BLUE], "every --prompt needs a frame"),
                           ([f"0: {RED}", f"4: {BLUE}"], "must exceed the last prompt keyframe"),
                           ([f"0: {RED}", f"0: {BLUE}"], "name a frame twice")):
        argv = [*base, *[x for p in prompts for x in ("--prompt", p)], "--out", str(tmp_path / "bad.mp4")]
        assert main(argv) == 2
        err = capsys.readouterr().err.strip()
        assert match in err and err.count("\n") == 0
    assert not (tmp_path / "bad.mp4").exists()


def test_a_schedule_file_is_prompt_travel(folder, tmp_path, capsys):
    """AnimateDiff's prompt-travel JSON ({"0": ..., "3": ...}) or the same mapping in YAML, as --prompts-file,
    is one clip's schedule; a bad file is one line before loading."""
    base = ["generate", "--model", str(folder), "--num-frames", "4", "--height", "16", "--width", "16",
            "--steps", "2", "--seed", "1", "--quiet"]
    (tmp_path / "s.json").write_text(json.dumps({"0": RED, "3": BLUE}))
    (tmp_path / "s.yaml").write_text(f"0: {RED}\n3: {BLUE}\n")
    for name in ("s.json", "s.yaml"):
        out = tmp_path / f"{name}.mp4"
        assert main([*base, "--prompts-file", str(tmp_path / name), "--out", str(out)]) == 0
        assert json.loads(out.with_suffix(".json").read_text())["prompt_schedule"] == {"0": RED, "3": BLUE}
    capsys.readouterr()
    (tmp_path / "list.json").write_text(json.dumps([RED, BLUE]))
    (tmp_path / "broken.yaml").write_text("0: [a\n")
    (tmp_path / "far.json").write_text(json.dumps({"0": RED, "9": BLUE}))
    for name, match in (("list.json", "must map frames to prompts"), ("broken.yaml", "is not valid JSON / YAML"),
                        ("far.json", "must exceed the last prompt keyframe (9)"), ("none.json", "does not exist")):
        assert main([*base, "--prompts-file", str(tmp_path / name), "--out", str(tmp_path / "bad.mp4")]) == 2
        err = capsys.readouterr().err.strip()
        assert match in err and err.count("\n") == 0, err
    assert main([*base, "--prompt", RED, "--prompts-file", str(tmp_path / "s.json"), "--out",
                 str(tmp_path / "bad.mp4")]) == 2
    assert "is a prompt schedule: give it or --prompt, not both" in capsys.readouterr().err
    assert not (tmp_path / "bad.mp4").exists()


def test_per_frame_text_equals_each_frame_alone_with_pooled_text(tmp_path):
    """(b, f, L, D) text on a U-Net with Imagen's pooled-text embedding (addition_embed_type "text", as the demo
    base): each frame equals the clip sampled with that frame's text for all frames (identity temporal layers)."""
    from vidiff.models.unet import VideoUNet
    from vidiff.testing import TINY_UNET

    torch.manual_seed(0)
    unet = VideoUNet(dict(TINY_UNET, addition_embed_type="text", encoder_hid_dim=32,
                          addition_embed_type_num_heads=4)).eval()
    g = torch.Generator().manual_seed(1)
    x, texts = torch.randn(1, 4, 3, 8, 8, generator=g), torch.randn(1, 3, 5, 32, generator=g)
    with torch.no_grad():
        got = unet(x, 10, texts)
        for frame in range(3):
            alone = unet(x, 10, texts[:, frame])
            torch.testing.assert_close(got[:, :, frame], alone[:, :, frame], atol=1e-5, rtol=0)
