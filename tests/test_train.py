"""`vidiff train` on tiny models (CPU): objective, trainable sets, resume, DDP, faults, export."""
import csv
import math
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from vidiff.config import load_config
from vidiff.training.ema import EMA
from vidiff.stages import make_stage, min_snr_weights
from vidiff.training import TrainingError
from vidiff.training.checkpoints import list_checkpoints, save_checkpoint
from vidiff.training.state import check_checkpoint
from vidiff.training.data import EndlessSampler
from vidiff.training.trainer import drop_unused_parameters, select_trainable, train
from vidiff.testing import FakeAccelerator

REPO = Path(__file__).resolve().parents[1]
TINY = REPO / "configs" / "train" / "tiny.yaml"
UNET_WEIGHTS = "unet/diffusion_pytorch_model.safetensors"


pytestmark = pytest.mark.usefixtures("one_thread")  # (tests/conftest.py)


SUBPROCESS_ENV = dict(os.environ, OMP_NUM_THREADS="1")


# ---------------------------------------------------------------------------------------------------------------
# fixtures: one tiny SD pipeline, its inflated vidiff folder, a shapes dataset (module-wide, built once)
# ---------------------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    from vidiff.data.synthetic import write_shapes_dataset
    from vidiff.testing import make_tiny_sd_pipeline, make_tiny_video_pipeline

    root = tmp_path_factory.mktemp("train-assets")
    sd = make_tiny_sd_pipeline(root / "sd")
    video = make_tiny_video_pipeline(root / "video")
    # Clips longer and larger than the training clip, so random starts and crops matter.
    shapes = root / "shapes"
    write_shapes_dataset(shapes, 4, num_frames=4, size=20, seed=0)
    return {"root": root, "sd": sd, "video": video, "shapes": shapes}


def config(out, model, manifest, *overrides):
    return load_config(TINY, [f"model.pretrained={model}", f"data.manifest={manifest}", f"output_dir={out}",
                              *overrides])


def read_csv(path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def unet_weights(folder) -> dict:
    return load_file(str(Path(folder) / UNET_WEIGHTS))


def checkpoint_weights(run_dir) -> dict:
    return load_file(str(list_checkpoints(Path(run_dir) / "checkpoints")[-1] / "model.safetensors"))


def assert_same(a: dict, b: dict):
    assert a.keys() == b.keys()
    different = [k for k in a if not torch.equal(a[k], b[k])]
    assert not different, f"{len(different)} tensors differ, e.g. {different[:3]}"


# ---------------------------------------------------------------------------------------------------------------
# the objective
# ---------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("prediction_type, snr_gamma, noise_offset", [
    ("epsilon", None, 0.0), ("epsilon", 5.0, 0.1), ("v_prediction", 5.0, 0.0), ("v_prediction", None, 0.05)])
def test_stage_loss_matches_float64_reference(prediction_type, snr_gamma, noise_offset):
    from diffusers import DDPMScheduler

    from vidiff.testing import SD_SCHEDULER

    scheduler = DDPMScheduler(**{k: v for k, v in SD_SCHEDULER.items() if k != "set_alpha_to_one"})
    stage = make_stage("base", prediction_type=prediction_type, snr_gamma=snr_gamma, noise_offset=noise_offset)
    latents = torch.randn(3, 4, 2, 4, 4, generator=torch.Generator().manual_seed(1))
    text = torch.zeros(3, 5, 8)
    seen = {}

    def fake_unet(sample, timesteps, context):
        seen["sample"], seen["t"] = sample, timesteps
        return 0.3 * sample - 0.1

    loss = stage.loss(fake_unet, scheduler, latents, text, generator=torch.Generator().manual_seed(7))

    # Replay the generator: noise, offset noise, timesteps, in that order.
    g = torch.Generator().manual_seed(7)
    noise = torch.randn(latents.shape, generator=g).double()
    if noise_offset:
        noise = noise + noise_offset * torch.randn((3, 4, 1, 1, 1), generator=g).double()
    t = torch.randint(0, 1000, (3,), generator=g)
    assert torch.equal(seen["t"], t)
    betas = torch.linspace(0.00085 ** 0.5, 0.012 ** 0.5, 1000, dtype=torch.float64) ** 2  # scaled_linear
    alpha_bar = torch.cumprod(1 - betas, 0)[t].view(-1, 1, 1, 1, 1)
    x0 = latents.double()
    noisy = alpha_bar.sqrt() * x0 + (1 - alpha_bar).sqrt() * noise
    torch.testing.assert_close(seen["sample"].double(), noisy, rtol=1e-5, atol=1e-5)
    target = noise if prediction_type == "epsilon" else alpha_bar.sqrt() * noise - (1 - alpha_bar).sqrt() * x0
    per_video = ((0.3 * noisy - 0.1 - target) ** 2).mean(dim=(1, 2, 3, 4))
    if snr_gamma is not None:
        snr = (alpha_bar / (1 - alpha_bar)).flatten()
        weight = snr.clamp(max=snr_gamma) / (snr if prediction_type == "epsilon" else snr + 1)
        per_video = per_video * weight
        torch.testing.assert_close(min_snr_weights(scheduler, t, snr_gamma, prediction_type).double(), weight,
                                   rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(loss.double(), per_video.mean(), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("noisy_from", [0.75, 0.9])
def test_noisy_fraction_draws_that_share_of_timesteps_from_the_noisiest_part(noisy_from):
    """noisy_fraction p: each timestep comes from [1000 noisy_from, 1000) with probability p (replayed from the
    generator), otherwise from the whole schedule; 0 draws exactly what it drew before the option existed."""
    from diffusers import DDPMScheduler

    scheduler = DDPMScheduler()
    latents, text = torch.zeros(64, 4, 1, 2, 2), torch.zeros(64, 5, 8)
    seen = []

    def fake_unet(sample, timesteps, context):
        seen.append(timesteps)
        return sample

    for fraction in (0.0, 0.5, 1.0):
        make_stage("base", noisy_fraction=fraction, noisy_from=noisy_from).loss(
            fake_unet, scheduler, latents, text, generator=torch.Generator().manual_seed(3))
        g = torch.Generator().manual_seed(3)
        torch.randn(latents.shape, generator=g)
        t = torch.randint(0, 1000, (64,), generator=g)
        if fraction:
            noisy = torch.randint(round(1000 * noisy_from), 1000, (64,), generator=g)
            t = torch.where(torch.rand(64, generator=g) < fraction, noisy, t)
        assert torch.equal(seen[-1], t)
    start = round(1000 * noisy_from)
    assert seen[-1].min() >= start and (seen[1] >= start).float().mean() > (seen[0] >= start).float().mean()
    with pytest.raises(ValueError, match="noisy_fraction must be in"):
        make_stage("base", noisy_fraction=1.5)
    with pytest.raises(ValueError, match="noisy_from must be in"):
        make_stage("base", noisy_fraction=0.5, noisy_from=1.0)


def test_unknown_stages():
    with pytest.raises(ValueError, match="unknown train.stage 'sr'"):
        make_stage("sr")
    with pytest.raises(ValueError, match="prediction_type"):
        make_stage("base", prediction_type="sample")
    with pytest.raises(ValueError, match="base stage takes no option.*factor"):
        make_stage("base", factor=2)


def test_stage_interface():
    """The base stage: no condition, no U-Net extras, and no random numbers drawn (so the noise and timesteps
    of a base run do not depend on the stage code); the channel count is the instance's."""
    from vidiff.stages import STAGES, Stage

    assert STAGES["base"] is Stage
    stage = make_stage("base", latent_channels=3)
    assert stage.conditioning_channels == 0 and "conditioning_channels" in vars(stage)
    g = torch.Generator().manual_seed(4)
    state = g.get_state()
    assert stage.condition(torch.zeros(2, 3, 2, 4, 4), g) == (None, {})
    assert torch.equal(g.get_state(), state)
    assert not stage.is_trainable_extra("conv_in.weight")


@pytest.mark.parametrize("trainable", ["temporal", "all"])
def test_loss_falls_on_a_fixed_batch(assets, trainable):
    """A fixed batch with fixed noise and timesteps: the loss must fall well below its start."""
    from diffusers import DDPMScheduler

    from vidiff.pipelines import VideoPipeline

    pipe = VideoPipeline.from_pretrained(assets["video"], device="cpu", dtype="fp32")
    unet = pipe.unet.train()
    stage = make_stage("base")
    params = select_trainable(unet, trainable, stage)
    scheduler = DDPMScheduler.from_config(pipe.scheduler_config)
    optimizer = torch.optim.AdamW(params.values(), lr=3e-3, weight_decay=0.0)
    g = torch.Generator().manual_seed(0)
    latents, text = torch.randn(1, 4, 2, 8, 8, generator=g), torch.randn(1, 6, 32, generator=g)
    losses = []
    for _ in range(15):
        loss = stage.loss(unet, scheduler, latents, text, generator=torch.Generator().manual_seed(3))  # same noise
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        losses.append(loss.item())
    assert losses[-1] < 0.7 * losses[0], losses


def test_fit_tunes_only_the_chosen_parameters(assets):
    """`fit` (editing's one-clip tuning, no config or output folder) runs train's step: the first loss is
    the stage's loss of the untouched U-Net for the same generator, the loss on the clip falls, and only the
    temporal layers and attention queries change."""
    import copy

    from diffusers import DDPMScheduler

    from vidiff.pipelines import VideoPipeline
    from vidiff.training import fit

    pipe = VideoPipeline.from_pretrained(assets["video"], device="cpu", dtype="fp32")
    unet = pipe.unet.eval()
    scheduler = DDPMScheduler.from_config(pipe.scheduler_config)
    stage = make_stage("base")
    g = torch.Generator().manual_seed(0)
    clip = {"latents": torch.randn(1, 4, 2, 8, 8, generator=g), "encoder_hidden_states": torch.randn(1, 6, 32, generator=g)}
    before = {k: v.clone() for k, v in unet.state_dict().items()}

    def held_out_loss(model):  # the same 8 noise / timestep draws before and after tuning
        with torch.no_grad():
            return sum(stage.loss(model, scheduler, clip["latents"], clip["encoder_hidden_states"],
                                  generator=torch.Generator().manual_seed(100 + i)).item() for i in range(8)) / 8

    reference = copy.deepcopy(unet).train()
    first = stage.loss(reference, scheduler, clip["latents"], clip["encoder_hidden_states"],
                       generator=torch.Generator().manual_seed(5)).item()
    start = held_out_loss(unet)
    with torch.no_grad():  # as a sampling caller would hold it: fit trains anyway
        losses = fit(unet, stage, clip, steps=25, learning_rate=1e-2, noise_scheduler=scheduler,
                     generator=torch.Generator().manual_seed(5), progress=False)
    assert len(losses) == 25 and all(math.isfinite(x) for x in losses)
    assert losses[0] == pytest.approx(first, rel=1e-6)
    assert held_out_loss(unet) < 0.9 * start, (start, losses)  # measured 0.82

    after = unet.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    chosen = {k for k in before if ".temporal_" in k or ".attn1.to_q." in k or ".attn2.to_q." in k}
    assert changed <= chosen, sorted(changed - chosen)[:5]
    assert len(changed) >= 0.9 * len(chosen), sorted(chosen - changed)[:5]
    assert not unet.training  # eval mode as before
    assert all(p.requires_grad for p in unet.parameters())  # as before: fit restores requires_grad
    with pytest.raises(ValueError, match="batches ran out after 1 steps of 2"):
        fit(unet, stage, [clip], steps=2, learning_rate=1e-3, noise_scheduler=scheduler, progress=False)


# ---------------------------------------------------------------------------------------------------------------
# pieces of the loop
# ---------------------------------------------------------------------------------------------------------------
def test_endless_sampler_resumes_mid_stream():
    it = iter(EndlessSampler(5, seed=3))
    straight = [next(it) for _ in range(17)]
    assert [p for _, p in straight] == list(range(17))
    for epoch in range(3):  # every epoch is a permutation, and epochs differ
        assert sorted(i for i, _ in straight[5 * epoch:5 * epoch + 5]) == list(range(5))
    assert [i for i, _ in straight[:5]] != [i for i, _ in straight[5:10]]
    it = iter(EndlessSampler(5, seed=3, start=7))
    assert [next(it) for _ in range(10)] == straight[7:17]
    other_seed = iter(EndlessSampler(5, seed=4))
    other = [next(other_seed)[0] for _ in range(5)]
    assert sorted(other) == list(range(5)) and other != [i for i, _ in straight[:5]]  # another seed, another order


def test_distinct_bad_files_across_ranks():
    """Bad files are counted once however often and on however many ranks they come up: ids of the paths, and
    their union over ranks through one padded all-gather (a fake second rank here)."""
    from vidiff.training.data import skipped_file_ids
    from vidiff.training.trainer import union_across_ranks

    batch = {"skipped_paths": [["/data/a.mp4", "/data/b.mp4"], [], ["/data/a.mp4"]]}
    ids = skipped_file_ids(batch)
    assert len(ids) == 2 and all(0 <= i < 2 ** 63 for i in ids)
    assert ids == skipped_file_ids({"skipped_paths": [["/data/b.mp4"], ["/data/a.mp4"]]}) and not skipped_file_ids(None)

    class TwoRanks:  # rank 0 here; rank 1 holds `other`
        num_processes, device = 2, torch.device("cpu")

        def __init__(self, other):
            self.other, self.calls = sorted(other), 0

        def gather(self, tensor):
            if self.calls == 0:  # the lengths
                theirs = torch.tensor([len(self.other)])
            else:  # the padded ids
                theirs = torch.full_like(tensor, -1)
                theirs[:len(self.other)] = torch.tensor(self.other)
            self.calls += 1
            return torch.cat([tensor, theirs])

    assert union_across_ranks(TwoRanks({5, 7, 9}), {1, 5}) == {1, 5, 7, 9}
    assert union_across_ranks(TwoRanks(set()), {3}) == {3}


def test_ema_matches_formula_and_round_trips():
    p = torch.nn.Parameter(torch.tensor([1.0, 2.0]))
    ema = EMA({"w": p}, decay=0.9)
    expected = p.detach().clone()
    for n in range(4):
        with torch.no_grad():
            p.add_(1.0)
        decay = min(0.9, (1 + n) / (10 + n))
        expected = decay * expected + (1 - decay) * p.detach()
        ema.update({"w": p})
    torch.testing.assert_close(ema.shadow["w"], expected)
    other = EMA({"w": torch.nn.Parameter(torch.zeros(2))}, decay=0.5)
    other.load_state_dict(ema.state_dict())
    assert other.num_updates == 4 and other.decay == 0.9 and torch.equal(other.shadow["w"], ema.shadow["w"])
    with ema.swapped_in({"w": p}):
        torch.testing.assert_close(p.detach(), expected)
    assert torch.equal(p.detach(), torch.tensor([5.0, 6.0]))
    with pytest.raises(ValueError, match="train.trainable"):
        EMA({"v": p}).load_state_dict(ema.state_dict())


def test_unused_trainable_parameters_are_frozen(assets):
    from vidiff.pipelines import VideoPipeline

    unet = VideoPipeline.from_pretrained(assets["video"], device="cpu", dtype="fp32").unet
    # A temporal-named parameter that the forward never touches (DDP would fail on it).
    unet.down_blocks[0].temporal_convs[0].register_parameter("spare", torch.nn.Parameter(torch.zeros(3)))
    stage = make_stage("base")
    trainable = select_trainable(unet, "temporal", stage)
    name = "down_blocks.0.temporal_convs.0.spare"
    assert name in trainable
    unused = drop_unused_parameters(unet, trainable, stage, text_dim=32, num_frames=2, device="cpu")
    assert unused == [name] and name not in trainable
    assert not dict(unet.named_parameters())[name].requires_grad
    assert all(p.grad is None for p in unet.parameters())


def tiny_training_objects():
    model = torch.nn.Linear(3, 2)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    return dict(model=model, optimizer=optimizer, lr_scheduler=torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 1))


def test_failed_save_keeps_previous_checkpoint(tmp_path, monkeypatch):
    import vidiff.training.state as state_module

    objects = tiny_training_objects()
    first = save_checkpoint(FakeAccelerator(), tmp_path, 3, {"step": 3}, keep=2, **objects)
    real_save = state_module.save_safetensors_atomic

    def disk_full(tensors, path, metadata=None):
        Path(path).write_bytes(b"x" * 100)  # half-written
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(state_module, "save_safetensors_atomic", disk_full)
    with pytest.raises(TrainingError, match="step 6 failed.*No space left.*checkpoint-00000003 is intact"):
        save_checkpoint(FakeAccelerator(), tmp_path, 6, {"step": 6}, keep=2, **objects)
    assert list_checkpoints(tmp_path / "checkpoints") == [first]
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["checkpoint-00000003"]
    # Pruning keeps the last K.
    monkeypatch.setattr(state_module, "save_safetensors_atomic", real_save)
    for step in (6, 9):
        save_checkpoint(FakeAccelerator(), tmp_path, step, {"step": step}, keep=2, **objects)
    assert [p.name for p in list_checkpoints(tmp_path / "checkpoints")] == ["checkpoint-00000006",
                                                                           "checkpoint-00000009"]


# ---------------------------------------------------------------------------------------------------------------
# whole runs
# ---------------------------------------------------------------------------------------------------------------
RESUME = ["train.max_steps=6", "train.checkpoint_every=3", "train.ema=true", "train.lr_scheduler=cosine",
          "train.lr_warmup_steps=2", "data.flip=true", "train.snr_gamma=5", "train.noise_offset=0.05",
          "train.caption_dropout=0.3", "train.noisy_fraction=0.5", "train.noisy_from=0.9"]


@pytest.fixture(scope="module")
def straight_run(assets):
    """6 steps from the SD folder (inflated on the fly), with validation clips every 3 steps."""
    out = assets["root"] / "straight"
    result = train(config(out, assets["sd"], assets["shapes"], *RESUME, 'validation.prompts=["a red circle"]',
                          "validation.every=3"))
    return out, result


def test_resume_gives_identical_weights(assets, straight_run, tmp_path):
    straight, result = straight_run
    assert result.status == "finished" and result.step == 6

    out = tmp_path / "resumed"
    cfg = config(out, assets["sd"], assets["shapes"], *RESUME)
    stopped = train(cfg, on_step=lambda step, row: step == 3)  # as if SIGTERM came during step 3
    assert stopped.status == "interrupted" and stopped.step == 3 and stopped.pipeline is None
    assert not (out / "pipeline").exists()
    resumed = train(cfg, resume="auto")
    assert resumed.status == "finished" and resumed.step == 6

    assert_same(checkpoint_weights(straight), checkpoint_weights(out))
    assert_same(unet_weights(straight / "pipeline"), unet_weights(out / "pipeline"))  # EMA weights
    rows_a, rows_b = read_csv(straight / "train_log.csv"), read_csv(out / "train_log.csv")
    assert [r["step"] for r in rows_b] == [str(i) for i in range(1, 7)]  # no duplicated rows after resume
    assert [(r["loss"], r["lr"], r["grad_norm"]) for r in rows_a] == [(r["loss"], r["lr"], r["grad_norm"]) for r in rows_b]
    # A checkpoint cannot be continued with another trainable set (optimiser and EMA state would not fit).
    with pytest.raises(ValueError, match="train.trainable='all' but .* was trained with 'temporal'"):
        train(config(out, assets["sd"], assets["shapes"], *RESUME, "train.trainable=all"), resume="auto")


def test_outputs_of_a_run(assets, straight_run):
    from vidiff.models.unet import VideoUNet
    from vidiff.pipelines import VideoPipeline

    out, result = straight_run
    assert [p.name for p in list_checkpoints(out / "checkpoints")] == ["checkpoint-00000003", "checkpoint-00000006"]
    rows = read_csv(out / "train_log.csv")
    assert set(rows[0]) >= {"step", "loss", "lr", "grad_norm", "samples_per_s", "skipped_files"}
    assert all(math.isfinite(float(r["loss"])) and float(r["samples_per_s"]) > 0 for r in rows)
    lrs = [float(r["lr"]) for r in rows]
    assert lrs[0] == pytest.approx(0.5e-3) and lrs[1] == pytest.approx(1e-3) and lrs[-1] < lrs[2]  # warmup, cosine
    assert (out / "loss.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert list((out / "logs").rglob("events.out.tfevents.*")), "no TensorBoard events"
    for step in ("step-00000003", "step-00000006"):
        assert (out / "validation" / step / "00-a-red-circle.mp4").stat().st_size > 0
        assert (out / "validation" / step / "00-a-red-circle.png").stat().st_size > 0

    # The exported pipeline generates, and carries the EMA weights (not the raw ones).
    pipe = VideoPipeline.from_pretrained(out / "pipeline", device="cpu", dtype="fp32")
    frames = pipe("a red circle moving left", num_frames=2, height=16, width=16, num_inference_steps=2,
                  generator=torch.Generator().manual_seed(0), progress=False)
    assert frames.shape == (2, 16, 16, 3) and frames.dtype == np.uint8
    exported, raw = unet_weights(out / "pipeline"), checkpoint_weights(out)
    temporal = [k for k in raw if ".temporal_" in k]
    assert any(not torch.equal(exported[k], raw[k]) for k in temporal)
    assert all(torch.equal(exported[k], raw[k]) for k in raw if ".temporal_" not in k)  # frozen: identical
    # The motion module alone: loads into a fresh inflated U-Net and reproduces the exported temporal weights.
    fresh = VideoUNet.from_pretrained(assets["video"] / "unet")
    fresh.load_temporal(out / "temporal.safetensors")
    assert all(torch.equal(fresh.state_dict()[k], exported[k]) for k in temporal)


@pytest.mark.parametrize("mode", ["temporal", "temporal+attn-q", "all"])
def test_only_the_chosen_parameters_change(assets, tmp_path, straight_run, mode):
    expected = {"temporal": lambda k: ".temporal_" in k,
                "temporal+attn-q": lambda k: ".temporal_" in k or ".attn1.to_q." in k or ".attn2.to_q." in k,
                "all": lambda k: True}[mode]
    if mode == "temporal":
        out = straight_run[0]
        before = unet_weights(out / "inflated")
    else:
        out = tmp_path / "run"
        extra = ["train.max_steps=2", f"train.trainable={mode}", "train.export_defaults=data"]
        if mode == "temporal+attn-q":  # also at a size other than the source folder's default (16 x 16)
            extra += ["data.height=24", "data.width=20"]
        if mode == "all":  # also joint image + video batches (one-frame images in their own batch)
            from PIL import Image

            images = tmp_path / "images"
            images.mkdir()
            for i, color in enumerate([(255, 0, 0), (0, 0, 255)]):
                Image.fromarray(np.full((20, 24, 3), color, np.uint8)).save(images / f"{i}.png")
                (images / f"{i}.txt").write_text("a red circle")
            extra += [f"data.image_manifest={images}", "data.image_batch_size=2"]
        train(config(out, assets["video"], assets["shapes"], *extra))
        before = unet_weights(assets["video"])
    after = checkpoint_weights(out)
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    wanted = {k for k in before if expected(k)}
    assert changed and changed <= wanted, sorted(changed - wanted)[:5]
    assert len(changed) >= 0.9 * len(wanted), sorted(wanted - changed)[:5]
    if mode == "temporal+attn-q":
        assert any(".attn1.to_q." in k for k in changed) and any(".attn2.to_q." in k for k in changed)
    # vidiff.json records the clip it was trained on; with train.export_defaults=data its defaults are that
    # clip (the source folders' are 16 or 4 frames, 16 x 16); tiny.yaml's own `pretrained` keeps the source's.
    from vidiff.spec import read_info

    trained = (2, 24, 20) if mode == "temporal+attn-q" else (2, 16, 16)
    info = read_info(out / "pipeline")
    defaults, source = info.defaults, read_info(out / "inflated" if mode == "temporal" else assets["video"]).defaults
    assert info.extra["trained_on"] == dict(zip(("num_frames", "height", "width"), trained))
    if mode == "temporal":  # (straight_run: configs/train/tiny.yaml as it stands)
        assert (defaults.num_frames, defaults.height, defaults.width) == (source.num_frames, 16, 16) != trained
    else:
        assert (defaults.num_frames, defaults.height, defaults.width) == trained
    if mode == "temporal+attn-q":  # and `generate` without sizes makes that clip
        from vidiff.pipelines import VideoPipeline

        pipe = VideoPipeline.from_pretrained(out / "pipeline", device="cpu", dtype="fp32")
        frames = pipe("a red circle", num_inference_steps=2, generator=torch.Generator().manual_seed(0), progress=False)
        assert frames.shape == (2, 24, 20, 3)
    # The VAE and text encoder are frozen in every mode.
    source = out / "inflated" if mode == "temporal" else assets["video"]
    for part in ("text_encoder/model.safetensors", "vae/diffusion_pytorch_model.safetensors"):
        assert_same(load_file(str(source / part)), load_file(str(out / "pipeline" / part)))


def test_nonfinite_losses_and_bad_files(assets, tmp_path):
    from vidiff.training.data import SeededItems, make_dataset

    # A manifest folder with two corrupt clips beside a good one: the stream meets them again and again.
    data = tmp_path / "data"
    data.mkdir()
    clip = sorted(assets["shapes"].glob("*.mp4"))[0]
    shutil.copy(clip, data)
    shutil.copy(clip.with_suffix(".txt"), data)
    for name in ("zz-corrupt-1", "zz-corrupt-2"):
        (data / f"{name}.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42" + os.urandom(2000))
        (data / f"{name}.txt").write_text("a broken clip")

    out = tmp_path / "nan"
    cfg = config(out, assets["video"], data, "train.max_steps=5", "train.debug_nan_steps=[1]")
    result = train(cfg)
    assert result.status == "finished" and result.nonfinite_steps == 1
    rows = read_csv(out / "train_log.csv")
    assert math.isnan(float(rows[1]["loss"])) and rows[1]["nonfinite_steps"] == "1" and rows[-1]["step"] == "5"
    assert all(torch.isfinite(v).all() for v in checkpoint_weights(out).values())
    # Distinct bad files and encounters, against the same sample stream replayed through a fresh dataset.
    items, sampler = SeededItems(make_dataset(cfg), seed=0), iter(EndlessSampler(3, seed=0))
    samples = [items[next(sampler)] for _ in range(5)]
    encounters = sum(s["num_skipped"] for s in samples)
    assert {Path(p).name for s in samples for p in s["skipped_paths"]} == {"zz-corrupt-1.mp4", "zz-corrupt-2.mp4"}
    assert encounters > 2  # the test means something: files were met more than once
    assert (result.skipped_files, result.skipped_encounters) == (2, encounters)
    assert (rows[-1]["skipped_files"], rows[-1]["skipped_encounters"]) == ("2", str(encounters))

    out = tmp_path / "nan-stop"
    with pytest.raises(TrainingError, match="2 non-finite losses in a row at step 2.*checkpoint-00000002"):
        train(config(out, assets["video"], assets["shapes"], "train.max_steps=6", "train.debug_nan_steps=[0, 1]",
                     "train.max_nonfinite=2"))
    # Nothing was applied: the saved weights are the initial ones.
    assert_same(checkpoint_weights(out), unet_weights(assets["video"]))


def _wait_for_rows(csv_path: Path, count: int, proc, timeout: float = 180) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"training exited early:\n{proc.communicate()[0][-3000:]}")
        if csv_path.is_file() and len(csv_path.read_text().splitlines()) > count:
            return
        time.sleep(0.2)
    proc.kill()
    raise AssertionError("training did not log in time")


def test_sigterm_saves_a_loadable_checkpoint(assets, tmp_path):
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "vidiff", "train", str(TINY), f"model.pretrained={assets['video']}",
           f"data.manifest={assets['shapes']}", f"output_dir={out}", "train.max_steps=100000",
           "train.checkpoint_every=0"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=REPO,
                            env=SUBPROCESS_ENV)
    _wait_for_rows(out / "train_log.csv", 2, proc)
    proc.send_signal(signal.SIGTERM)
    output = proc.communicate(timeout=120)[0]
    assert proc.returncode == 143, output[-3000:]  # saved cleanly, but a script can tell it was stopped
    assert "SIGTERM" in output and "stopped at step" in output
    (checkpoint,) = list_checkpoints(out / "checkpoints")
    assert not list((out / "checkpoints").glob(".*tmp"))
    step = int(checkpoint.name.split("-")[1])
    assert step >= 2
    # Loadable: the weights file is complete, and the run continues from it.
    assert set(load_file(str(checkpoint / "model.safetensors"))) == set(unet_weights(assets["video"]))
    result = train(config(out, assets["video"], assets["shapes"], f"train.max_steps={step + 1}"), resume="auto")
    assert result.status == "finished" and result.step == step + 1


def test_two_process_ddp_run(assets, tmp_path):
    out = tmp_path / "ddp"
    env = dict(SUBPROCESS_ENV, ACCELERATE_USE_CPU="true")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port",
           str(29500 + os.getpid() % 1000), "-m", "vidiff", "train", str(TINY), f"model.pretrained={assets['video']}",
           f"data.manifest={assets['shapes']}", f"output_dir={out}", "train.max_steps=2",
           "train.trainable=temporal+attn-q", "train.gradient_accumulation_steps=2", "train.gradient_checkpointing=true",
           "train.ema=true"]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=REPO, timeout=300)
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, output[-4000:]
    assert "2 process(es)" in output
    assert "ranks agree: 2 processes hold identical trainable weights" in output  # the trainer's cross-rank check
    assert "unused parameters" not in output and "finished reduction" not in output
    rows = read_csv(out / "train_log.csv")
    assert [r["step"] for r in rows] == ["1", "2"]
    assert (out / "pipeline" / "vidiff.json").is_file()
    # One copy of the weights and optimiser state (main process), each rank's random states, nothing pickled.
    (checkpoint,) = list_checkpoints(out / "checkpoints")
    names = {p.name for p in checkpoint.iterdir()}
    assert {"random_states_0.safetensors", "random_states_1.safetensors", "optimizer.safetensors"} <= names
    check_checkpoint(checkpoint)


def test_training_from_a_latent_cache(assets, tmp_path):
    from vidiff.data.cache import build_latent_cache

    cache = tmp_path / "cache"
    build_latent_cache(assets["video"], assets["shapes"], cache, num_frames=2, height=16, width=16, device="cpu",
                       progress=False)
    out = tmp_path / "run"
    result = train(config(out, assets["video"], assets["shapes"], f"data.cache={cache}", "train.max_steps=2",
                          "data.num_workers=1"))
    assert result.status == "finished"
    before, after = unet_weights(assets["video"]), checkpoint_weights(out)
    assert any(not torch.equal(before[k], after[k]) for k in before if ".temporal_" in k)
    with pytest.raises(ValueError, match="rebuild the cache"):
        train(config(tmp_path / "bad", assets["video"], assets["shapes"], f"data.cache={cache}", "data.num_frames=3"))


# ---------------------------------------------------------------------------------------------------------------
# user errors: one line naming the config key, before any model is loaded or inflated
# ---------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("override, message", [
    ("data.manifest={missing}", "data.manifest='{missing}'"),
    ("model.pretrained={missing}", "model.pretrained='{missing}' does not exist"),
    ("model.pretrained={not_sd}", "model.pretrained='{not_sd}' is neither a vidiff pipeline folder"),
    ("model.pretrained={single_file}", "model.pretrained='{single_file}' is a single-file checkpoint"),
    ("train.lr_scheduler=cosine_annealing", "train.lr_scheduler='cosine_annealing' is not a schedule"),
    ("model.attention_backend=xformers", "model.attention_backend: attention backend 'xformers'"),
    ("data.height=18", "data.height=18 must be a multiple of 4"),
])
def test_bad_options_fail_before_loading(assets, tmp_path, monkeypatch, override, message):
    """Every mistake is found before inflating (the SD folder is the model source here): nothing is written."""
    import vidiff.training.trainer
    from vidiff.config import ConfigError

    if "xformers" in override and torch.cuda.is_available():
        pytest.skip("xformers may run on this machine")

    def no_loading(*args, **kwargs):
        raise AssertionError("a model was loaded before the config was checked")

    monkeypatch.setattr(vidiff.training.trainer, "inflate_stage", no_loading)
    not_sd = tmp_path / "not-sd"
    (not_sd / "unet").mkdir(parents=True)
    single_file = tmp_path / "model.safetensors"
    single_file.write_bytes(b"x")
    names = dict(missing=str(tmp_path / "nope"), not_sd=str(not_sd), single_file=str(single_file))
    out = tmp_path / "run"
    with pytest.raises(ConfigError) as e:
        train(config(out, assets["sd"], assets["shapes"], override.format(**names)))
    assert message.format(**names) in str(e.value) and "\n" not in str(e.value)
    assert "--base '" not in str(e.value)  # (the loaders' wording for `vidiff inflate --base`)
    assert not out.exists()


def test_output_location_checked_first(assets, tmp_path, monkeypatch):
    import vidiff.training.preflight as preflight
    from vidiff.config import ConfigError

    out = tmp_path / "run"
    monkeypatch.setattr(preflight.os, "access", lambda path, mode: False)  # (tests run as root: chmod won't do)
    with pytest.raises(ConfigError, match=r"output_dir='.*run' cannot be written \(.* is read-only"):
        train(config(out, assets["sd"], assets["shapes"]))
    monkeypatch.undo()
    Usage = type("Usage", (), {"free": 5 * 2 ** 20})
    monkeypatch.setattr(preflight.shutil, "disk_usage", lambda path: Usage)
    with pytest.raises(ConfigError, match=r"the disk holding .* is full \(5.0 MiB free\)"):
        train(config(out, assets["sd"], assets["shapes"]))
    assert not out.exists()


def test_hub_errors_name_the_config_key(assets, tmp_path, monkeypatch):
    """An unreachable hub id is reported as model.pretrained (the loaders speak of `inflate --base`)."""
    from huggingface_hub import constants

    from vidiff.config import ConfigError

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(ConfigError, match=r"^model.pretrained='someone/some-model' is not a local folder and "
                                          "HF_HUB_OFFLINE is set"):
        train(config(tmp_path / "run", "someone/some-model", assets["shapes"]))


def test_cli_train_errors_are_one_line(assets, tmp_path, capsys):
    from vidiff.cli import main

    out = tmp_path / "run"
    code = main(["train", str(TINY), f"model.pretrained={assets['sd']}", f"data.manifest={tmp_path / 'nope'}",
                 f"output_dir={out}"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and err.startswith("vidiff train: error: data.manifest=") and "\n" not in err
    assert not out.exists()


def test_full_disk_at_export_is_one_line_and_resumable(assets, tmp_path, monkeypatch):
    """The final export hits a full disk: one line, the last checkpoint kept, and --resume auto only exports."""
    from vidiff.pipelines import VideoPipeline

    def full(self, path):
        raise OSError(28, "No space left on device")

    out = tmp_path / "run"
    cfg = config(out, assets["video"], assets["shapes"], "train.max_steps=2", "train.checkpoint_every=0")
    monkeypatch.setattr(VideoPipeline, "save_pretrained", full)
    with pytest.raises(TrainingError, match=r"^writing .*pipeline failed \(No space left on device\); the trained "
                                            r"weights are in the last checkpoint.*--resume auto$"):
        train(cfg)
    assert [p.name for p in list_checkpoints(out / "checkpoints")] == ["checkpoint-00000002"]
    monkeypatch.undo()
    result = train(cfg, resume="auto")
    assert result.status == "finished" and result.step == 2 and (out / "pipeline" / "vidiff.json").is_file()
    assert_same(unet_weights(out / "pipeline"), checkpoint_weights(out))


# ---------------------------------------------------------------------------------------------------------------
# the options the demo needs: LR floor, a trainable text encoder, a text-to-image model on single frames
# ---------------------------------------------------------------------------------------------------------------
def old_demo_lr(step: int, peak: float, warmup: int, steps: int) -> float:
    """tools/train_demo.py's own schedule before it ran `vidiff train` (step 1-based), verbatim."""
    lr = peak * min(1.0, step / max(1, warmup))
    lr *= 0.5 * (1 + math.cos(math.pi * step / steps)) * 0.9 + 0.1  # cosine decay to 10%
    return lr


@pytest.mark.parametrize("warmup, num_processes", [(0, 1), (7, 1), (7, 2)])
def test_cosine_floor_is_the_old_demo_schedule_and_ends_at_the_floor(warmup, num_processes):
    from vidiff.config import TrainConfig
    from vidiff.training.trainer import make_optimizer

    t = TrainConfig(learning_rate=1e-3, lr_scheduler="cosine_floor", lr_floor=0.1, lr_warmup_steps=warmup,
                    max_steps=40)
    param = torch.nn.Parameter(torch.zeros(1))
    optimizer, schedule = make_optimizer([param], t, num_processes)
    used = []
    for _ in range(t.max_steps):  # the LR each optimiser step runs with; accelerate steps the schedule per process
        used.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        for _ in range(num_processes):
            schedule.step()
    old = [old_demo_lr(step, 1e-3, warmup, t.max_steps) for step in range(1, t.max_steps + 1)]
    assert used == pytest.approx(old, rel=1e-12, abs=0)
    assert used[warmup:] == old[warmup:]  # after the warm-up: the same floats
    assert used[-1] == pytest.approx(1e-4, rel=1e-12)  # the floor, at the last step


def test_cosine_floor_run_logs_its_schedule(assets, tmp_path):
    out = tmp_path / "floor"
    train(config(out, assets["video"], assets["shapes"], "train.lr_scheduler=cosine_floor", "train.lr_floor=0.2",
                 "train.max_steps=4", "train.lr_warmup_steps=0"))
    lrs = [float(r["lr"]) for r in read_csv(out / "train_log.csv")]
    # (the CSV logs the LR after the step: that of the next step; the floor is that of step 4)
    assert lrs[:3] == sorted(lrs[:3], reverse=True) and lrs[2] == pytest.approx(1e-3 * 0.2, rel=1e-5)


@pytest.mark.parametrize("trainable", [False, True])
def test_text_encoder_trains_only_when_asked_and_resumes_exactly(assets, tmp_path, trainable):
    start = load_file(str(assets["video"] / "text_encoder" / "model.safetensors"))
    overrides = [f"train.train_text_encoder={str(trainable).lower()}", "train.ema=true", "train.max_steps=4",
                 "train.checkpoint_every=2", "train.learning_rate=1e-2"]
    straight = tmp_path / "straight"
    train(config(straight, assets["video"], assets["shapes"], *overrides))
    exported = load_file(str(straight / "pipeline" / "text_encoder" / "model.safetensors"))
    changed = [k for k in start if not torch.equal(start[k], exported[k])]
    assert bool(changed) == trainable and (not trainable or len(changed) > len(start) // 2)
    if not trainable:
        return
    checkpoint = checkpoint_weights(straight)
    assert any(k.startswith("text_encoder.") for k in checkpoint) and any(k.startswith("unet.") for k in checkpoint)
    resumed = tmp_path / "resumed"
    cfg = config(resumed, assets["video"], assets["shapes"], *overrides)
    assert train(cfg, on_step=lambda step, row: step == 2).status == "interrupted"
    assert train(cfg, resume="auto").step == 4
    assert_same(checkpoint, checkpoint_weights(resumed))
    assert_same(exported, load_file(str(resumed / "pipeline" / "text_encoder" / "model.safetensors")))  # EMA


def test_single_frame_text_to_image_run_exports_an_sd_folder(assets, tmp_path):
    """model.temporal_conv / temporal_attention off, data.num_frames=1, train.export_sd: a text-to-image U-Net
    trained by `vidiff train`, written as a diffusers SD folder whose UNet2DConditionModel gives the trained
    VideoUNet's output, and which `vidiff inflate` takes as a base."""
    from diffusers import UNet2DConditionModel

    from vidiff.models.unet import VideoUNet
    from vidiff.models.folder import inflate_pipeline

    out = tmp_path / "t2i"
    train(config(out, assets["sd"], assets["shapes"], "model.temporal_conv=false", "model.temporal_attention=false",
                 "train.trainable=all", "train.export_sd=true", "data.num_frames=1", "train.ema=true",
                 "train.max_steps=3", "data.resize=crop"))
    image_unet = UNet2DConditionModel.from_pretrained(str(out / "sd" / "unet")).eval()
    video_unet = VideoUNet.from_pretrained(out / "pipeline" / "unet").eval()
    assert not any(True for _ in video_unet.temporal_parameters())
    start = UNet2DConditionModel.from_pretrained(str(assets["sd"] / "unet"))
    assert any(not torch.equal(a, b) for a, b in zip(image_unet.state_dict().values(), start.state_dict().values()))
    g = torch.Generator().manual_seed(0)
    sample, context = torch.randn(1, 4, 16, 16, generator=g), torch.randn(1, 77, image_unet.config.cross_attention_dim, generator=g)
    with torch.no_grad():
        expected = image_unet(sample, 10, context).sample
        got = video_unet(sample[:, :, None], torch.tensor([10]), context)[:, :, 0]
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5)
    assert (inflate_pipeline(out / "sd", tmp_path / "video") / "vidiff.json").is_file()
    with pytest.raises(Exception, match="train.export_sd"):  # a video U-Net is not a text-to-image model
        train(config(tmp_path / "bad", assets["video"], assets["shapes"], "train.export_sd=true",
                     "model.temporal_conv=false", "model.temporal_attention=false", "train.trainable=all"))


def test_tiny_config_exports_defaults_to_generate_at(assets, tmp_path):
    """Issue 24: the README's smoke run (configs/train/tiny.yaml from the built-in demo base) used to export
    2 frames of 16x16 as the folder's defaults, so `generate --model runs/tiny/pipeline` made a useless clip. The
    export keeps the demo base's sampling defaults and records the training clip beside them."""
    from vidiff.demo import DEMO_DIR
    from vidiff.spec import read_info

    base = DEMO_DIR / "base"
    out = tmp_path / "tiny"
    train(config(out, base, assets["shapes"], "train.max_steps=1", "train.checkpoint_every=0"))
    info, source = read_info(out / "pipeline"), read_info(base)
    assert info.defaults == source.defaults and (source.defaults.num_frames, source.defaults.height) == (8, 32)
    assert info.extra["trained_on"] == {"num_frames": 2, "height": 16, "width": 16}
