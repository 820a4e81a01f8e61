"""FSDP2 training: full views of sharded weights, optimiser and EMA (in process, a gloo world of one), and
2-process CPU runs (accelerate launch with configs/accelerate/cpu-fsdp2-2proc.yaml): 3 steps + resume + 3 steps
is the 6-step run exactly, and the 6-step run equals DDP's to fp tolerance, for trainable all and LoRA."""
import csv
import os
import shutil
import subprocess
import sys
import types
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
from safetensors.torch import load_file
from torch.distributed.fsdp import fully_shard
from torch.distributed.tensor import DTensor

from vidiff.training.ema import EMA
from vidiff.training.parallel import (check_sharding, empty_copy, full_model_state, full_optimizer_state,
                                      load_full_model_state, load_full_optimizer_state, unit_classes,
                                      unsharded_copy)
from vidiff.training.checkpoints import list_checkpoints
from vidiff.training.state import check_checkpoint, check_supported

REPO = Path(__file__).resolve().parents[1]
TINY = REPO / "configs" / "train" / "tiny.yaml"
FSDP_CONFIG = REPO / "configs" / "accelerate" / "cpu-fsdp2-2proc.yaml"
ENV = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO))

pytestmark = pytest.mark.usefixtures("one_thread")  # (tests/conftest.py)


# ---------------------------------------------------------------------------------------------------------------
# in process: one gloo rank, real DTensor shards
# ---------------------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def gloo(tmp_path_factory):
    if dist.is_initialized():
        pytest.skip("a process group is already initialised in this process")
    store = tmp_path_factory.mktemp("gloo") / "store"
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=0, world_size=1)
    yield
    dist.destroy_process_group()


def _model(seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(6, 8), torch.nn.GELU(), torch.nn.Linear(8, 3))


def _train(model, optimizer, steps: int = 2):
    for step in range(steps):
        x = torch.randn(5, 6, generator=torch.Generator().manual_seed(step))
        model(x).square().mean().backward()
        optimizer.step()
        optimizer.zero_grad()


def _sharded(seed: int = 0):
    model = _model(seed)
    for layer in (model[0], model[2]):
        fully_shard(layer)
    fully_shard(model)
    return model


def _assert_tree_equal(a, b):
    if torch.is_tensor(a):
        assert torch.is_tensor(b) and not isinstance(b, DTensor)
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    elif isinstance(a, dict):
        assert a.keys() == b.keys()
        for key in a:
            _assert_tree_equal(a[key], b[key])
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b)
        for x, y in zip(a, b):
            _assert_tree_equal(x, y)
    else:
        assert a == b


def test_full_states_of_a_sharded_model_are_the_plain_model_states(gloo):
    plain, sharded = _model(), _sharded()
    assert isinstance(next(sharded.parameters()), DTensor)
    plain_opt, sharded_opt = torch.optim.AdamW(plain.parameters()), torch.optim.AdamW(sharded.parameters())
    _train(plain, plain_opt)
    _train(sharded, sharded_opt)
    # Gathered: the plain model's weights and torch's own (index-keyed) optimiser state_dict.
    _assert_tree_equal(plain.state_dict(), full_model_state(None, sharded))
    _assert_tree_equal(plain_opt.state_dict(), full_optimizer_state(None, sharded, sharded_opt))

    # Loaded into a fresh sharded model: the same states, and the same next step as the plain model.
    fresh = _sharded(seed=1)
    fresh_opt = torch.optim.AdamW(fresh.parameters())
    load_full_model_state(None, fresh, plain.state_dict())
    load_full_optimizer_state(None, fresh, fresh_opt, plain_opt.state_dict())
    _assert_tree_equal(plain_opt.state_dict(), full_optimizer_state(None, fresh, fresh_opt))
    _train(plain, plain_opt, 1)
    _train(fresh, fresh_opt, 1)
    _assert_tree_equal(plain.state_dict(), full_model_state(None, fresh))


def test_ema_of_shards_is_the_ema_of_the_full_weights(gloo):
    plain, sharded = _model(), _sharded()
    ema_plain, ema_sharded = EMA(dict(plain.named_parameters()), 0.9), EMA(dict(sharded.named_parameters()), 0.9)
    assert all(isinstance(v, DTensor) for v in ema_sharded.shadow.values())
    for model, ema in ((plain, ema_plain), (sharded, ema_sharded)):
        optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
        for _ in range(3):
            _train(model, optimizer, 1)
            ema.update(dict(model.named_parameters()))
    _assert_tree_equal(ema_plain.state_dict(), ema_sharded.state_dict())
    _assert_tree_equal(ema_plain.state_dict()["shadow"], ema_sharded.unsharded().shadow)
    restored = EMA(dict(_sharded(seed=2).named_parameters()), 0.5)
    restored.load_state_dict(ema_plain.state_dict())
    assert all(isinstance(v, DTensor) for v in restored.shadow.values())
    _assert_tree_equal(ema_plain.state_dict(), restored.state_dict())


def test_unsharded_copy_from_an_empty_template(gloo):
    plain = _model()
    template = empty_copy(_model(seed=3))
    assert all(p.is_meta for p in template.parameters())
    sharded = _sharded()
    accelerator = types.SimpleNamespace(is_main_process=True, device=torch.device("cpu"))
    copy = unsharded_copy(accelerator, sharded, template)
    assert not any(isinstance(p, DTensor) for p in copy.parameters())
    _assert_tree_equal(plain.state_dict(), copy.state_dict())
    x = torch.randn(2, 6)
    torch.testing.assert_close(copy(x), plain(x), rtol=0, atol=0)


def test_units_are_the_layers_videounet_calls():
    from vidiff.models.unet import VideoUNet
    from vidiff.testing import TINY_UNET

    unet = VideoUNet(dict(TINY_UNET))
    classes = set(unit_classes(unet))
    assert {"ResnetBlock2D", "Transformer2DModel", "TemporalConv", "TemporalAttention"} <= classes
    assert not classes & {type(b).__name__ for b in unet.blocks()}  # blocks' forwards are never called
    in_units = {name for name, module in unet.named_modules() if type(module).__name__ in classes}
    outside = [name for name, _ in unet.named_parameters() if not any(name.startswith(u + ".") for u in in_units)]
    assert outside and all(name.split(".")[0] in ("conv_in", "time_embedding", "conv_norm_out", "conv_out")
                           for name in outside), outside


def test_deepspeed_and_fsdp1_are_refused_fsdp2_is_not():
    from accelerate.utils import DistributedType

    def accelerator(kind, version=2):
        return types.SimpleNamespace(distributed_type=kind,
                                     state=types.SimpleNamespace(fsdp_plugin=types.SimpleNamespace(fsdp_version=version)))

    with pytest.raises(ValueError, match="DEEPSPEED is not supported: its engine .* pickle; shard with FSDP2"):
        check_supported(accelerator(DistributedType.DEEPSPEED))
    with pytest.raises(ValueError, match="FSDP version 1 is not supported.*fsdp_version: 2"):
        check_supported(accelerator(DistributedType.FSDP, 1))
    check_supported(accelerator(DistributedType.FSDP))
    check_supported(accelerator(DistributedType.MULTI_GPU))
    with pytest.raises(ValueError, match="train.train_text_encoder / train.new_tokens are not supported under FSDP"):
        check_sharding(accelerator(DistributedType.FSDP), types.SimpleNamespace(trainable="all", trains_text=True))
    check_sharding(accelerator(DistributedType.MULTI_GPU), types.SimpleNamespace(trainable="all", trains_text=True))
    with pytest.raises(ValueError, match="train.trainable=controlnet is not supported under FSDP"):
        check_sharding(accelerator(DistributedType.FSDP), types.SimpleNamespace(trainable="controlnet", trains_text=False))


# ---------------------------------------------------------------------------------------------------------------
# 2 CPU processes: FSDP2 (accelerate launch) against itself resumed, and against DDP (torchrun)
# ---------------------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    from vidiff.data.synthetic import write_shapes_dataset
    from vidiff.testing import make_tiny_video_pipeline

    root = tmp_path_factory.mktemp("fsdp-assets")
    video = make_tiny_video_pipeline(root / "video")
    write_shapes_dataset(root / "shapes", 4, num_frames=4, size=20, seed=0)
    return {"video": video, "shapes": root / "shapes"}


def _launch(kind: str, out: Path, assets, *overrides, port: int) -> str:
    train = ["-m", "vidiff", "train", str(TINY), f"model.pretrained={assets['video']}",
             f"data.manifest={assets['shapes']}", f"output_dir={out}", "train.ema=true", *overrides]
    env = dict(ENV)
    if kind == "fsdp":
        cmd = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(FSDP_CONFIG),
               "--main_process_port", str(port), *train]
    else:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(port),
               *train]
        env["ACCELERATE_USE_CPU"] = "true"
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=REPO, timeout=600)
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, output[-4000:]
    assert "2 process(es)" in output
    return output


def _losses(run: Path) -> list[float]:
    with open(run / "train_log.csv", newline="") as f:
        return [float(row["loss"]) for row in csv.DictReader(f)]


def _state(run: Path, step: int) -> dict:
    folder = run / "checkpoints" / f"checkpoint-{step:08d}"
    return {name: load_file(str(folder / f"{name}.safetensors")) for name in ("model", "optimizer", "ema")}


@pytest.mark.slow
@pytest.mark.parametrize("trainable", ["all", "lora"])
def test_fsdp_resumes_exactly_and_matches_ddp(assets, tmp_path, trainable):
    port = 29400 + os.getpid() % 500 + (50 if trainable == "lora" else 0)
    straight, resumed, ddp = tmp_path / "fsdp", tmp_path / "fsdp-resumed", tmp_path / "ddp"
    output = _launch("fsdp", straight, assets, f"train.trainable={trainable}", port=port)
    assert "ranks agree" not in output  # (the DDP check: under FSDP each rank holds a shard)
    for checkpoint in list_checkpoints(straight / "checkpoints"):
        check_checkpoint(checkpoint)  # safetensors + JSON only, one full copy
    assert (straight / "pipeline" / "vidiff.json").is_file()

    # 3 steps + resume + 3 steps: the step-3 checkpoint of the straight run, continued in a copy of it.
    shutil.copytree(straight, resumed)
    shutil.rmtree(resumed / "checkpoints" / "checkpoint-00000006")
    shutil.rmtree(resumed / "pipeline")
    output = _launch("fsdp", resumed, assets, f"train.trainable={trainable}", "--resume", "auto", port=port + 1)
    assert "resumed from" in output and "at step 3" in output
    assert _losses(resumed) == _losses(straight)
    for name, tensors in _state(straight, 6).items():
        _assert_tree_equal(tensors, _state(resumed, 6)[name])

    _launch("ddp", ddp, assets, f"train.trainable={trainable}", port=port + 2)
    assert _losses(ddp) == pytest.approx(_losses(straight), rel=1e-5)
    fsdp_state, ddp_state = _state(straight, 6), _state(ddp, 6)
    for name in fsdp_state:
        assert fsdp_state[name].keys() == ddp_state[name].keys()
        for key, value in fsdp_state[name].items():
            torch.testing.assert_close(value, ddp_state[name][key], rtol=1e-4, atol=1e-5, msg=f"{name} {key}")
    before = load_file(str(assets["video"] / "unet" / "diffusion_pytorch_model.safetensors"))
    changed = [k for k, v in fsdp_state["model"].items() if k in before and not torch.equal(v, before[k])]
    assert changed if trainable == "all" else set(fsdp_state["model"]) <= {k for k in fsdp_state["model"]
                                                                          if "lora" in k}
