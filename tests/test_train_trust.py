"""`vidiff train` trust (issue 8): nothing run from a checkpoint, damaged checkpoints, the user's files in
output_dir, checkpoint saves and pruning, the exit status of an interrupted run. Tiny CPU runs."""
import os
import pickle
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from vidiff.cli import main
from vidiff.config import load_config
from vidiff.training.checkpoints import clean_stale, list_checkpoints, prune_checkpoints, save_checkpoint
from vidiff.training.state import check_checkpoint
from vidiff.training.trainer import train
from vidiff.testing import FakeAccelerator

REPO = Path(__file__).resolve().parents[1]
TINY = REPO / "configs" / "train" / "tiny.yaml"
SUBPROCESS_ENV = dict(os.environ, OMP_NUM_THREADS="1")
SUBPROCESS_ENV.pop("VIDIFF_DEBUG", None)


pytestmark = pytest.mark.usefixtures("one_thread")  # (tests/conftest.py)


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    from vidiff.data.synthetic import write_shapes_dataset
    from vidiff.testing import make_tiny_video_pipeline

    root = tmp_path_factory.mktemp("trust-assets")
    video = make_tiny_video_pipeline(root / "video")
    shapes = root / "shapes"
    write_shapes_dataset(shapes, 3, num_frames=3, size=16, seed=0)
    return {"root": root, "video": video, "shapes": shapes}


def overrides(assets, out, *extra) -> list[str]:
    return [f"model.pretrained={assets['video']}", f"data.manifest={assets['shapes']}", f"output_dir={out}", *extra]


def config(assets, out, *extra):
    return load_config(TINY, overrides(assets, out, *extra))


def weights(checkpoint: Path) -> dict:
    # copies: load_file maps the file, and some tests damage it afterwards
    return {k: v.clone() for k, v in load_file(str(checkpoint / "model.safetensors")).items()}


def assert_same(a: dict, b: dict):
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a), [k for k in a if not torch.equal(a[k], b[k])][:3]


def cli(capsys, monkeypatch, *args) -> tuple[int, str, str]:
    monkeypatch.delenv("VIDIFF_DEBUG", raising=False)
    code = main([str(a) for a in args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


class Payload:
    """Unpickling this creates `marker`: proof that code from the checkpoint ran."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


# ---------------------------------------------------------------------------------------------------------------
# nothing in a checkpoint is unpickled
# ---------------------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def ema_run(assets):
    """Two steps with EMA (the case that ran a planted `__reduce__` through accelerate's load_state)."""
    out = assets["root"] / "ema-run"
    result = train(config(assets, out, "train.max_steps=2", "train.checkpoint_every=0", "train.ema=true"))
    assert result.status == "finished"
    return out, list_checkpoints(out / "checkpoints")[-1]


def test_planted_pickle_in_any_checkpoint_file_is_refused_by_the_cli(assets, ema_run, tmp_path, capsys, monkeypatch):
    out, checkpoint = ema_run
    names = sorted(p.name for p in checkpoint.iterdir())
    assert {"ema.safetensors", "ema.json", "optimizer.safetensors", "scheduler.json", "random_states_0.json"} <= set(names)
    marker = tmp_path / "pwned"
    for name in [*names, "custom_checkpoint_0.pkl", "optimizer.bin"]:  # and accelerate's old pickle files
        path = checkpoint / name
        original = path.read_bytes() if path.exists() else None
        path.write_bytes(pickle.dumps(Payload(marker)))
        try:
            code, stdout, stderr = cli(capsys, monkeypatch, "train", TINY, *overrides(assets, out, "train.ema=true"),
                                       "--resume", "auto")
        finally:
            path.write_bytes(original) if original is not None else path.unlink()
        assert code == 2, (name, stdout, stderr)
        assert stderr.count("\n") == 1 and str(path) in stderr and "pickle" in stderr, stderr
        assert "Traceback" not in stderr + stdout
        assert not marker.exists(), f"code planted in {name} ran"
    check_checkpoint(checkpoint)  # restored intact


def test_planted_ema_pickle_in_a_real_process(assets, ema_run, tmp_path):
    """The reported attack end to end: `vidiff train --resume auto` in its own process, exit 2, one line."""
    out, checkpoint = ema_run
    run = tmp_path / "run"
    shutil.copytree(out, run)
    planted = list_checkpoints(run / "checkpoints")[-1] / "ema.safetensors"
    marker = tmp_path / "pwned"
    planted.write_bytes(pickle.dumps(Payload(marker)))
    proc = subprocess.run([sys.executable, "-m", "vidiff", "train", str(TINY), *overrides(assets, run, "train.ema=true"),
                           "--resume", "auto"], capture_output=True, text=True, env=SUBPROCESS_ENV, cwd=REPO,
                          timeout=300)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert proc.stderr.count("\n") == 1 and str(planted) in proc.stderr and "Traceback" not in proc.stderr
    assert not marker.exists()


# ---------------------------------------------------------------------------------------------------------------
# damaged checkpoints, leftovers of killed saves and prunes
# ---------------------------------------------------------------------------------------------------------------
def test_damaged_latest_checkpoint_falls_back_to_the_previous(assets, tmp_path):
    out = tmp_path / "run"
    steps = ["train.max_steps=4", "train.checkpoint_every=2", "train.keep_checkpoints=2"]
    train(config(assets, out, *steps))
    first, latest = list_checkpoints(out / "checkpoints")
    straight = weights(latest)
    data = (latest / "model.safetensors").read_bytes()
    (latest / "model.safetensors").write_bytes(data[: len(data) // 3])  # a full disk, a copy cut short
    # Leftovers of a killed save / prune, and a half-deleted folder from before prune-by-rename.
    (out / "checkpoints" / ".checkpoint-00000009.trash").mkdir()
    (out / "checkpoints" / ".checkpoint-00000008.tmp").mkdir()
    (out / "checkpoints" / "checkpoint-00000007").mkdir()

    lines = []
    result = train(config(assets, out, *steps), resume="auto", log=lines.append)
    text = "\n".join(map(str, lines))
    assert f"{latest.name} is damaged" in text and str(latest / "model.safetensors") in text, text
    assert f"resuming from {first.name}" in text and f"resumed from {first}" in text, text
    assert result.status == "finished" and result.step == 4
    # Resumed from step 2, the run redid steps 3-4 exactly, and replaced the damaged checkpoint (not skipped).
    check_checkpoint(latest)
    assert_same(weights(latest), straight)
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == [first.name, latest.name]

    # Every checkpoint damaged: a one-line error, not a silent restart from step 0.
    for checkpoint in (first, latest):
        (checkpoint / "scheduler.json").write_text('{"last_epoch": ')
    with pytest.raises(ValueError, match="every checkpoint under .* is damaged.*scheduler.json"):
        train(config(assets, out, *steps), resume="auto")


class Killed(BaseException):
    """Stands for SIGKILL: nothing after it runs."""


def test_a_kill_while_pruning_leaves_nothing_that_is_never_cleaned(tmp_path, monkeypatch):
    import vidiff.training.checkpoints as checkpoints

    root = tmp_path / "checkpoints"
    for step in (2, 4, 6):
        folder = root / f"checkpoint-{step:08d}"
        folder.mkdir(parents=True)
        for name in ("model.safetensors", "optimizer.json", "trainer_state.json"):
            (folder / name).write_text("{}")

    def killed_rmtree(path, ignore_errors=False):
        files = sorted(Path(path).iterdir()) if Path(path).is_dir() else []
        if files:
            files[-1].unlink()  # trainer_state.json goes, the rest stays: killed halfway through the delete
            raise Killed

    monkeypatch.setattr(checkpoints.shutil, "rmtree", killed_rmtree)
    with pytest.raises(Killed):
        prune_checkpoints(root, keep=2)
    monkeypatch.undo()
    # No half-deleted folder under a checkpoint's name (list_checkpoints would ignore it forever)...
    assert sorted(p.name for p in root.iterdir() if p.name.startswith("checkpoint-")) == sorted(
        p.name for p in list_checkpoints(root))
    # ... only a hidden name, which the next run's start removes.
    assert clean_stale(root) == [root / ".checkpoint-00000002.trash"]
    assert sorted(p.name for p in root.iterdir()) == ["checkpoint-00000004", "checkpoint-00000006"]


def test_a_save_replaces_an_existing_checkpoint_of_the_same_step(tmp_path):
    model = torch.nn.Linear(3, 2)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    objects = dict(model=model, optimizer=optimizer,
                   lr_scheduler=torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 1.0))
    first = save_checkpoint(FakeAccelerator(), tmp_path, 5, {"step": 5}, keep=2, **objects)
    with torch.no_grad():
        model.weight.add_(1.0)
    second = save_checkpoint(FakeAccelerator(), tmp_path, 5, {"step": 5}, keep=2, **objects)
    assert second == first
    assert torch.equal(weights(second)["weight"], model.weight.detach())
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["checkpoint-00000005"]


# ---------------------------------------------------------------------------------------------------------------
# output_dir: the user's files, an earlier run's checkpoints
# ---------------------------------------------------------------------------------------------------------------
def test_a_users_folder_is_never_written_into(assets, tmp_path, capsys, monkeypatch):
    project = tmp_path / "myproject"
    project.mkdir()
    mine = {"config.json": b'{"my": "settings"}', "train_log.csv": b"day,km\n1,5\n", "loss.png": b"my plot"}
    for name, data in mine.items():
        (project / name).write_bytes(data)
    for extra in ([], ["--overwrite"]):  # not even with --overwrite: it replaces only what vidiff wrote
        code, _, stderr = cli(capsys, monkeypatch, "train", TINY, *overrides(assets, project), *extra)
        assert code == 2 and stderr.count("\n") == 1 and str(project) in stderr and "output_dir" in stderr, stderr
    assert {p.name: p.read_bytes() for p in project.iterdir()} == mine
    notes = tmp_path / "notes.txt"  # a file where output_dir should be
    notes.write_text("mine")
    with pytest.raises(FileExistsError, match="is a file that is not a vidiff run folder"):
        train(config(assets, notes))
    assert notes.read_text() == "mine"


def test_an_earlier_runs_checkpoints_need_resume_or_overwrite(assets, tmp_path, capsys, monkeypatch):
    out = tmp_path / "run"
    # The earlier run: another learning rate, checkpoints at steps 2 and 4.
    train(config(assets, out, "train.max_steps=4", "train.checkpoint_every=2", "train.learning_rate=3e-3"))
    assert (out / "vidiff-run.json").is_file() and len(list_checkpoints(out / "checkpoints")) == 2
    fresh = ["train.max_steps=2", "train.checkpoint_every=2"]
    code, _, stderr = cli(capsys, monkeypatch, "train", TINY, *overrides(assets, out, *fresh))
    assert code == 2 and "checkpoint-00000004" in stderr and "--resume auto" in stderr and "--overwrite" in stderr
    code, _, stderr = cli(capsys, monkeypatch, "train", TINY, *overrides(assets, out, *fresh), "--overwrite",
                          "--resume", "auto")
    assert code == 2 and "contradict" in stderr

    # --overwrite: the new run's step-2 checkpoint is saved (not skipped as "already there") and the earlier
    # run's are gone, so a later --resume auto continues the new run. Reference: the same run in a new folder.
    code, _, stderr = cli(capsys, monkeypatch, "train", TINY, *overrides(assets, out, *fresh), "--overwrite")
    assert code == 0, stderr
    reference = tmp_path / "reference"
    train(config(assets, reference, *fresh))
    assert [p.name for p in list_checkpoints(out / "checkpoints")] == ["checkpoint-00000002"]
    assert_same(weights(out / "checkpoints" / "checkpoint-00000002"),
                weights(reference / "checkpoints" / "checkpoint-00000002"))


# ---------------------------------------------------------------------------------------------------------------
# interrupted runs exit 130 / 143 after their clean save
# ---------------------------------------------------------------------------------------------------------------
def test_sigint_saves_and_exits_130(assets, tmp_path):
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "vidiff", "train", str(TINY), *overrides(assets, out, "train.max_steps=100000",
                                                                          "train.checkpoint_every=0")]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=REPO,
                            env=SUBPROCESS_ENV)
    log = out / "train_log.csv"
    deadline = time.time() + 180
    while not (log.is_file() and len(log.read_text().splitlines()) > 1):
        assert proc.poll() is None, proc.communicate()[0][-3000:]
        assert time.time() < deadline, "training did not log in time"
        time.sleep(0.2)
    proc.send_signal(signal.SIGINT)
    output = proc.communicate(timeout=120)[0]
    assert proc.returncode == 130, output[-3000:]
    assert "SIGINT" in output and "stopped at step" in output and "Traceback" not in output
    (checkpoint,) = list_checkpoints(out / "checkpoints")
    check_checkpoint(checkpoint)
