"""Pickle-free trainer state (vidiff.training.state): bit-identical round trip, planted pickles, damaged files."""
import json
import pickle
import random
from pathlib import Path

import numpy as np
import pytest
import torch

from vidiff.training.ema import EMA
from vidiff.training.state import (CheckpointError, CorruptCheckpointError, UnsafeCheckpointError, check_checkpoint,
                                   check_supported, decode_tree, encode_tree, load_training_state,
                                   save_training_state)


class Run:
    """A tiny model with AdamW, a warm-up + cosine diffusers schedule and an EMA; each step draws from the
    torch, numpy and python RNGs, so a resume is bit-identical only if every piece of state comes back."""

    def __init__(self, seed: int):
        from diffusers.optimization import get_scheduler

        torch.manual_seed(seed)
        self.model = torch.nn.Sequential(torch.nn.Linear(6, 8), torch.nn.Dropout(0.3), torch.nn.Linear(8, 3))
        self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=1e-2, betas=(0.8, 0.95), weight_decay=0.1)
        self.scheduler = get_scheduler("cosine", self.optimizer, num_warmup_steps=2, num_training_steps=10)
        self.ema = EMA(dict(self.model.named_parameters()), decay=0.9)

    def step(self) -> float:
        x = torch.randn(5, 6)
        x = x + float(np.random.rand()) + random.random()
        loss = self.model(x).square().mean()
        loss.backward()
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.ema.update(dict(self.model.named_parameters()))
        return loss.item()

    def snapshot(self) -> dict:
        out = {f"w.{k}": v.clone() for k, v in self.model.state_dict().items()}
        out.update({f"ema.{k}": v.clone() for k, v in self.ema.shadow.items()})
        for pid, s in self.optimizer.state_dict()["state"].items():
            out.update({f"opt.{pid}.{k}": v.clone() for k, v in s.items()})
        out["lr"] = torch.tensor(self.scheduler.get_last_lr(), dtype=torch.float64)
        return out

    def save(self, folder: Path) -> Path:
        folder.mkdir()
        save_training_state(folder, model=self.model, optimizer=self.optimizer, lr_scheduler=self.scheduler,
                            ema=self.ema)
        (folder / "trainer_state.json").write_text(json.dumps({"step": 3}))
        return folder

    def load(self, folder: Path) -> None:
        load_training_state(folder, model=self.model, optimizer=self.optimizer, lr_scheduler=self.scheduler,
                            ema=self.ema)


def seed_all(seed: int) -> None:
    torch.manual_seed(seed)
    np.random.seed(seed)
    random.seed(seed)


@pytest.fixture
def checkpoint(tmp_path) -> Path:
    seed_all(0)
    run = Run(0)
    for _ in range(3):
        run.step()
    return run.save(tmp_path / "checkpoint")


def test_round_trip_continues_bit_identically(tmp_path):
    seed_all(0)
    straight = Run(0)
    for _ in range(3):
        straight.step()
    folder = straight.save(tmp_path / "checkpoint")
    losses = [straight.step() for _ in range(3)]
    expected = straight.snapshot()

    seed_all(123)  # a different process: other RNG states, other initial weights
    resumed = Run(1)
    resumed.load(folder)
    assert [resumed.step() for _ in range(3)] == losses
    got = resumed.snapshot()
    assert got.keys() == expected.keys()
    different = [k for k in expected if not torch.equal(got[k], expected[k])]
    assert not different, different
    assert resumed.ema.num_updates == 6 and resumed.scheduler.last_epoch == 6
    # The restored param_groups keep their Python types (betas a tuple), as a fresh optimiser has them.
    assert resumed.optimizer.param_groups[0]["betas"] == (0.8, 0.95)

    # Without the saved RNG states the same weights and optimiser would give other losses: the test can fail.
    seed_all(123)
    no_rng = Run(1)
    no_rng.load(folder)
    seed_all(5)
    assert [no_rng.step() for _ in range(3)] != losses


def test_only_safetensors_and_json_are_written(checkpoint):
    names = sorted(p.name for p in checkpoint.iterdir())
    assert names == ["ema.json", "ema.safetensors", "model.safetensors", "optimizer.json", "optimizer.safetensors",
                     "random_states_0.json", "random_states_0.safetensors", "scheduler.json", "trainer_state.json"]
    for path in checkpoint.glob("*.json"):
        json.loads(path.read_text())
    check_checkpoint(checkpoint)


class Payload:
    """Unpickling this creates `marker`: proof that code from the checkpoint ran."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def one_line_naming(error: Exception, path: Path) -> str:
    text = str(error)
    assert "\n" not in text and str(path) in text, text
    return text


@pytest.mark.parametrize("name", ["model.safetensors", "ema.safetensors", "ema.json", "optimizer.safetensors",
                                  "optimizer.json", "scheduler.json", "random_states_0.safetensors",
                                  "random_states_0.json", "trainer_state.json"])
def test_planted_pickle_is_refused_naming_the_file(checkpoint, tmp_path, name):
    marker = tmp_path / "pwned"
    (checkpoint / name).write_bytes(pickle.dumps(Payload(marker)))
    with pytest.raises(UnsafeCheckpointError) as info:
        Run(1).load(checkpoint)
    assert "pickle" in one_line_naming(info.value, checkpoint / name)
    assert not marker.exists()


@pytest.mark.parametrize("name", ["custom_checkpoint_0.pkl", "optimizer.bin", "random_states_0.pkl", "scaler.pt"])
def test_accelerate_pickle_files_are_refused(checkpoint, tmp_path, name):
    marker = tmp_path / "pwned"
    if name.endswith(".pt"):
        torch.save({"x": Payload(marker)}, checkpoint / name)
    else:
        (checkpoint / name).write_bytes(pickle.dumps(Payload(marker)))
    with pytest.raises(UnsafeCheckpointError) as info:
        check_checkpoint(checkpoint)
    text = one_line_naming(info.value, checkpoint / name)
    assert ("torch.save" if name.endswith(".pt") else "pickle") in text
    assert not marker.exists()


@pytest.mark.parametrize("name", ["model.safetensors", "ema.safetensors", "optimizer.safetensors", "optimizer.json",
                                  "scheduler.json", "random_states_0.safetensors", "random_states_0.json",
                                  "trainer_state.json"])
def test_truncated_file_is_refused_naming_the_file(checkpoint, name):
    data = (checkpoint / name).read_bytes()
    (checkpoint / name).write_bytes(data[: len(data) // 2])
    with pytest.raises(CorruptCheckpointError) as info:
        Run(1).load(checkpoint)
    one_line_naming(info.value, checkpoint / name)


def test_missing_and_misfitting_files(checkpoint):
    (checkpoint / "optimizer.json").unlink()
    with pytest.raises(CorruptCheckpointError, match="optimizer.json: is missing"):
        check_checkpoint(checkpoint)

    # Another optimiser shape: one line naming the file, not torch's multi-line error.
    seed_all(0)
    run = Run(0)
    run.step()
    folder = run.save(checkpoint.parent / "other")
    seed_all(0)
    other = Run(0)
    other.model[2] = torch.nn.Linear(8, 4)
    with pytest.raises(CheckpointError) as info:
        other.load(folder)
    one_line_naming(info.value, folder / "model.safetensors")


def test_tree_encoding_is_data_only():
    tensors = {}
    state = {"state": {0: {"step": torch.tensor(3.0)}}, "groups": [{"betas": (0.9, 0.99), "params": [0]}]}
    tree = encode_tree(state, tensors)
    json.dumps(tree)  # plain JSON
    back = decode_tree(json.loads(json.dumps(tree)), tensors)
    assert back["groups"][0]["betas"] == (0.9, 0.99) and torch.equal(back["state"][0]["step"], torch.tensor(3.0))
    with pytest.raises(TypeError, match="cannot store a function"):
        encode_tree({"fn": lambda x: x}, {})
    with pytest.raises(ValueError, match="does not hold"):
        decode_tree({"__tensor__": "missing"}, {})
    with pytest.raises(ValueError, match="tagged node"):
        decode_tree({"__tuple__": [], "other": 1}, {})


def test_deepspeed_is_refused_up_front():
    from accelerate.utils import DistributedType

    class Sharded:
        distributed_type = DistributedType.DEEPSPEED

    with pytest.raises(ValueError, match="DEEPSPEED is not supported.*FSDP2"):
        check_supported(Sharded())
    Sharded.distributed_type = DistributedType.MULTI_GPU
    check_supported(Sharded())  # (FSDP: tests/test_fsdp.py)
