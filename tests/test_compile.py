"""--compile: torch.compile of the VideoUNet (vidiff.models.compile) against eager mode on tiny models (CPU).

The tests compile with a counting "aot_eager" backend (dynamo's tracing and AOT autograd's graphs without
generating code) and `fullgraph=True`, so a graph break fails them; the inductor tests (generated C++ kernels)
compare the real thing. Tracing the tiny U-Net takes 5-10 s on an idle 2-core CPU (25-50 s when other jobs share
it), so generate --compile and the training run are the compiling tests that run by default; the others are
marked slow (`make test-all`).
"""
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file
from torch._dynamo.testing import CompileCounterWithBackend

import vidiff.pipelines.text_to_video as text_to_video
import vidiff.training.trainer as trainer
from vidiff.cli import main
from vidiff.config import ConfigError, load_config
from vidiff.models.compile import CompileError, check_compile, compile_unet, is_compiled
from vidiff.models.unet import VideoUNet
from vidiff.pipelines import VideoPipeline
from vidiff.testing import make_tiny_video_pipeline
from vidiff.training.checkpoints import list_checkpoints
from vidiff.training.trainer import train

REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.usefixtures("one_thread")  # (tests/conftest.py)


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return make_tiny_video_pipeline(tmp_path_factory.mktemp("compile") / "video")


@pytest.fixture(scope="module")
def animatediff_model(tmp_path_factory):
    return make_tiny_video_pipeline(tmp_path_factory.mktemp("compile-ad") / "video", temporal_layout="animatediff",
                                    motion={"num_attention_heads": 2, "max_seq_length": 16})


@pytest.fixture
def counted(monkeypatch):
    """Every compile_unet in the pipeline and the trainer compiles with a counting aot_eager backend, whole-graph;
    returns the counter (`frame_count`: graphs compiled)."""
    counter = CompileCounterWithBackend("aot_eager")

    def fast(unet, mode=None, backend=None):
        return compile_unet(unet, backend=counter, fullgraph=True)

    monkeypatch.setattr(text_to_video, "compile_unet", fast)
    monkeypatch.setattr(trainer, "compile_unet", fast)
    torch._dynamo.reset()
    yield counter
    torch._dynamo.reset()


def run(capsys, *argv):
    code = main([str(a) for a in argv])
    return code, capsys.readouterr()


def png_frames(folder: Path) -> np.ndarray:
    return np.stack([np.asarray(Image.open(p)) for p in sorted(folder.glob("*.png"))]).astype(int)


# ---------------------------------------------------------------------------------------------------------------
# in place, names kept, bad requests refused before anything loads (no compiling here)
# ---------------------------------------------------------------------------------------------------------------
def test_compiled_in_place_keeps_weight_names_and_saves_plain_folders(model, tmp_path):
    pipe = VideoPipeline.from_pretrained(model, device="cpu", dtype="fp32")
    keys = list(pipe.unet.state_dict())
    assert pipe.compile_unet() is pipe and is_compiled(pipe.unet) and pipe.unet.attention_backend == "sdpa"
    assert list(pipe.unet.state_dict()) == keys and not any("_orig_mod" in k for k in keys)
    pipe.save_pretrained(tmp_path / "saved")
    loaded = VideoUNet.from_pretrained(tmp_path / "saved" / "unet")
    assert not is_compiled(loaded)
    assert all(torch.equal(v, loaded.state_dict()[k]) for k, v in pipe.unet.state_dict().items())


def test_compile_refusals_are_one_line(model, tmp_path, capsys, monkeypatch):
    unet = VideoPipeline.from_pretrained(model, device="cpu", dtype="fp32").unet
    with pytest.raises(CompileError, match="compile mode must be one of default, reduce-overhead"):
        compile_unet(unet, mode="fastest")
    with pytest.raises(CompileError, match="'xformers' does not trace under torch.compile.*use 'sdpa' or 'auto'"):
        check_compile("cpu", "xformers")
    assert not is_compiled(unet)
    check_compile("cpu", "math", backend="aot_eager")  # (no C++ compiler needed without inductor)

    monkeypatch.setenv("CXX", "/nonexistent/g++")
    with pytest.raises(CompileError, match=r"finds no compiler \(/nonexistent/g\+\+\); install one"):
        check_compile("cpu")
    loads, _ = [], capsys.readouterr()
    monkeypatch.setattr(VideoPipeline, "from_pretrained", lambda *a, **k: loads.append(a))
    code, out = run(capsys, "generate", "--model", model, "--prompt", "a red circle", "--compile", "--device", "cpu",
                    "--out", tmp_path / "clip.mp4")
    assert code == 2 and not loads and not (tmp_path / "clip.mp4").exists()
    lines = out.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("vidiff generate: error: --compile: torch.compile's inductor")

    cfg = load_config(REPO / "configs" / "train" / "tiny.yaml", [f"model.pretrained={model}", "train.compile=true",
                      f"data.manifest={tmp_path}", f"output_dir={tmp_path / 'run'}"])
    with pytest.raises(ConfigError, match="train.compile: torch.compile's inductor builds C"):
        train(cfg)
    assert not (tmp_path / "run").exists()


# ---------------------------------------------------------------------------------------------------------------
# sampling: compiled == eager, one graph for the whole loop
# ---------------------------------------------------------------------------------------------------------------
def test_generate_compile_equals_eager_with_one_graph(model, tmp_path, capsys, counted):
    common = ["generate", "--model", model, "--prompt", "a red circle moving right", "--seed", "3", "--steps", "4",
              "--guidance", "3", "--quiet", "--device", "cpu"]
    assert run(capsys, *common, "--out", tmp_path / "eager")[0] == 0
    assert counted.frame_count == 0
    code, out = run(capsys, *common, "--compile", "--out", tmp_path / "compiled")
    assert code == 0, out.err
    # 4 guided steps, a new timestep each: compiled once (fullgraph: no graph breaks either)
    assert counted.frame_count == 1 and counted.op_count > 100
    eager, compiled = png_frames(tmp_path / "eager"), png_frames(tmp_path / "compiled")
    assert eager.shape == compiled.shape == (4, 16, 16, 3)
    assert np.abs(eager - compiled).max() <= 1
    assert '"compile": true' in (tmp_path / "compiled.json").read_text()


@pytest.mark.slow  # (two compiles of ~30-50 s each on the shared 2-core CPU)
def test_no_recompiles_across_steps_calls_and_windows(animatediff_model, counted):
    """AnimateDiff's layout in temporal windows: compiled at the first step, then every step, window, timestep
    and seed reuses the graph; latents as eager's. A sampler with float timesteps (Euler) compiles once more."""
    pipe = VideoPipeline.from_pretrained(animatediff_model, device="cpu", dtype="fp32")
    request = dict(num_frames=6, window_size=4, window_stride=2, guidance_scale=2.0, output_type="latent",
                   progress=False)
    eager = pipe("a blue square", num_inference_steps=3, seed=1, **request)
    pipe.compile_unet()
    steps_seen = []
    compiled = pipe("a blue square", num_inference_steps=3, seed=1, callback=lambda i, t, x: steps_seen.append(
        counted.frame_count), **request)
    assert steps_seen == [1, 1, 1]  # compiled at the first step (window 1 of 2), never again
    torch.testing.assert_close(compiled, eager, rtol=1e-4, atol=1e-5)
    pipe("a red circle", num_inference_steps=5, seed=2, **request)
    assert counted.frame_count == 1
    pipe("a red circle", num_inference_steps=2, seed=2, scheduler="euler", **request)
    assert counted.frame_count == 2


@pytest.mark.slow  # (two graphs: ~40 s)
def test_edit_compile_equals_eager(model, tmp_path, capsys, counted):
    from vidiff.data.video_io import write_video

    rng = np.random.default_rng(0)
    video = write_video(tmp_path / "in.mp4", rng.integers(0, 255, (4, 16, 16, 3), dtype=np.uint8), fps=8)
    common = ["edit", "--model", model, "--video", video, "--prompt", "a blue square", "--source-prompt", "a red circle",
              "--inversion", "--steps", "3", "--guidance", "2", "--seed", "1", "--contact-sheet", "--quiet",
              "--device", "cpu"]
    assert run(capsys, *common, "--out", tmp_path / "eager.mp4")[0] == 0
    code, out = run(capsys, *common, "--compile", "--out", tmp_path / "compiled.mp4")
    assert code == 0, out.err
    assert counted.frame_count == 2  # DDIM inversion (unguided batch) and guided sampling: one graph each
    eager, compiled = (np.asarray(Image.open(tmp_path / f"{name}.png")).astype(int) for name in ("eager", "compiled"))
    assert eager.shape == compiled.shape and np.abs(eager - compiled).max() <= 1


# ---------------------------------------------------------------------------------------------------------------
# training: the same losses, plain checkpoints and exports, resume
# ---------------------------------------------------------------------------------------------------------------
def test_training_compiled_matches_eager_and_resumes(model, tmp_path, counted):
    from vidiff.data.synthetic import write_shapes_dataset

    shapes = write_shapes_dataset(tmp_path / "shapes", 2, num_frames=2, size=16, seed=0)

    def cfg(out, *overrides):
        return load_config(REPO / "configs" / "train" / "tiny.yaml", [
            f"model.pretrained={model}", f"data.manifest={shapes}", f"output_dir={out}", "train.max_steps=4",
            "train.checkpoint_every=2", "train.trainable=all", *overrides])

    losses = {}
    for name, flag in (("eager", "false"), ("compiled", "true")):
        rows = []
        result = train(cfg(tmp_path / name, f"train.compile={flag}"), on_step=lambda s, v: rows.append(v["loss"]),
                       log=lambda message: None)
        assert result.status == "finished"
        losses[name] = rows
    assert counted.frame_count == 1  # forward + backward of every step: one graph
    np.testing.assert_allclose(losses["compiled"], losses["eager"], rtol=1e-4)

    checkpoint = list_checkpoints(tmp_path / "compiled" / "checkpoints")[-1] / "model.safetensors"
    weights = load_file(str(checkpoint))
    assert not any("_orig_mod" in k for k in weights)
    plain = VideoUNet.from_pretrained(tmp_path / "compiled" / "pipeline" / "unet")  # exported: loads uncompiled
    assert plain.state_dict().keys() == weights.keys()
    assert all(torch.allclose(plain.state_dict()[k], v) for k, v in weights.items())

    out = tmp_path / "resumed"
    stopped = train(cfg(out, "train.compile=true"), on_step=lambda step, row: step == 2, log=lambda m: None)
    assert stopped.status == "interrupted" and stopped.step == 2
    resumed = train(cfg(out, "train.compile=true"), resume="auto", log=lambda m: None)
    assert resumed.status == "finished" and resumed.step == 4
    again = load_file(str(list_checkpoints(out / "checkpoints")[-1] / "model.safetensors"))
    assert all(torch.allclose(again[k], v, rtol=1e-4, atol=1e-6) for k, v in weights.items())


# ---------------------------------------------------------------------------------------------------------------
# inductor (generated kernels): slow
# ---------------------------------------------------------------------------------------------------------------
@pytest.mark.slow
@pytest.mark.parametrize("layout", ["vidiff", "animatediff"])
def test_inductor_unet_equals_eager(model, animatediff_model, layout):
    pipe = VideoPipeline.from_pretrained(model if layout == "vidiff" else animatediff_model, device="cpu",
                                         dtype="fp32")
    torch._dynamo.reset()
    generator = torch.Generator().manual_seed(0)
    x, text = torch.randn(2, 4, 3, 8, 8, generator=generator), torch.randn(2, 77, 32, generator=generator)
    with torch.no_grad():
        pipe.unet.set_cross_frame("sparse-causal")
        eager = [pipe.unet(x, torch.tensor(t), text) for t in (999, 500, 1)]
        pipe.compile_unet()
        compiled = [pipe.unet(x, torch.tensor(t), text) for t in (999, 500, 1)]
    for a, b in zip(compiled, eager):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
    # against a float64 recomputation: the compiled U-Net is no further from it than eager fp32
    reference = VideoPipeline.from_pretrained(model if layout == "vidiff" else animatediff_model, device="cpu",
                                              dtype="fp32").unet.double()
    reference.set_cross_frame("sparse-causal")
    with torch.no_grad():
        exact = reference(x.double(), torch.tensor(500), text.double())
    assert (compiled[1].double() - exact).abs().max() <= 4 * (eager[1].double() - exact).abs().max() + 1e-6
    torch._dynamo.reset()


@pytest.mark.slow
def test_inductor_generate_equals_eager(model, tmp_path, capsys):
    torch._dynamo.reset()
    common = ["generate", "--model", model, "--prompt", "a green triangle", "--seed", "0", "--steps", "3",
              "--quiet", "--device", "cpu"]
    assert run(capsys, *common, "--out", tmp_path / "eager")[0] == 0
    assert run(capsys, *common, "--compile", "--out", tmp_path / "compiled")[0] == 0
    assert np.abs(png_frames(tmp_path / "eager") - png_frames(tmp_path / "compiled")).max() <= 1
    torch._dynamo.reset()
