"""Distillation (vidiff.training.distill, `vidiff distill`) on tiny models: the schedule arithmetic against diffusers'
DDIM, what each objective learns, exact resume, the student folder, and the one-line errors before loading."""
import json
from pathlib import Path

import pytest
import torch
from diffusers import DDIMScheduler
from safetensors.torch import load_file

from vidiff.cli import main
from vidiff.config import Config, load_config
from vidiff.pipelines.text_to_video import VideoPipeline
from vidiff.spec import read_info
from vidiff.stages import make_stage
from vidiff.training.checkpoints import list_checkpoints
from vidiff.training.distill import ProgressiveDistillation, Schedule, boundary_scalings, make_student, prepare_distillation
from vidiff.training.trainer import fit, train

REPO = Path(__file__).resolve().parents[1]
TINY = REPO / "configs" / "train" / "tiny.yaml"

pytestmark = pytest.mark.usefixtures("one_thread")  # (tests/conftest.py)


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    from vidiff.data.synthetic import write_shapes_dataset
    from vidiff.testing import make_tiny_video_pipeline

    root = tmp_path_factory.mktemp("distill-assets")
    video = make_tiny_video_pipeline(root / "video", defaults={"guidance_scale": 3.0})
    shapes = root / "shapes"
    write_shapes_dataset(shapes, 4, num_frames=4, size=16, seed=0)
    return {"root": root, "video": video, "shapes": shapes}


def objective(folder, method: str, stage=None, **distill):
    """A distillation objective on the tiny pipeline at `folder` (its U-Net the teacher, `pipe.unet` the student)
    for `stage` (default: a base model)."""
    pipe = VideoPipeline.from_pretrained(folder, device="cpu", dtype="fp32")
    config = Config()
    config.model.pretrained = str(folder)
    config.distill.method = method
    for key, value in distill.items():
        setattr(config.distill, key, value)
    stage = stage or make_stage("base", latent_channels=4, prediction_type=pipe.info.prediction_type)
    teacher_steps = distill.get("teacher_steps") or 50
    return pipe, prepare_distillation(config, pipe, stage, teacher_steps, "cpu")


def batch(pipe, seed: int = 0, size: int = 2):
    """A fixed training batch: random latents of 2 frames of 8 x 8 and the embeddings of two captions."""
    latents = torch.randn(size, 4, 2, 8, 8, generator=torch.Generator().manual_seed(seed))
    text = pipe.encode_prompt(["a red circle moving right", "a blue square moving up"][:size])
    return {"latents": latents, "encoder_hidden_states": text}


# ---------------------------------------------------------------------------------------------------------------
# the arithmetic, against diffusers' DDIM
# ---------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("prediction_type, clip", [("epsilon", False), ("v_prediction", True)])
def test_schedule_ddim_step_matches_diffusers(prediction_type, clip):
    config = dict(num_train_timesteps=1000, beta_schedule="squaredcos_cap_v2", prediction_type=prediction_type,
                  clip_sample=clip, timestep_spacing="trailing")
    schedule = Schedule(config, latent=not clip)
    ddim = DDIMScheduler.from_config(config)
    ddim.set_timesteps(10)
    g = torch.Generator().manual_seed(0)
    x, output = torch.randn(1, 3, 2, 4, 4, generator=g), torch.randn(1, 3, 2, 4, 4, generator=g)
    for t in (999, 499, 99):  # (99 -> the end: the final alpha)
        expected = ddim.step(output, t, x).prev_sample
        x0, eps = schedule.x0_eps(output, x, torch.tensor([t]), clip=True)
        got = schedule.ddim_step(x0, eps, torch.tensor([t - 100]))
        torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


def test_step_target_is_the_x0_one_ddim_step_inverts():
    """x~ of Salimans & Ho: one DDIM step from (x_t, t) with x0 = x~ lands on x_prev (float64 recomputation)."""
    schedule = Schedule(dict(num_train_timesteps=1000, beta_schedule="scaled_linear", beta_start=0.00085,
                             beta_end=0.012), latent=True)
    g = torch.Generator().manual_seed(1)
    x_t, x_prev = torch.randn(2, 4, 2, 4, 4, generator=g), torch.randn(2, 4, 2, 4, 4, generator=g)
    t, t_prev = torch.tensor([800, 300]), torch.tensor([600, -1])
    x0 = schedule.step_target(x_t, t, x_prev, t_prev).double()
    a = schedule.alphas_cumprod.double()
    a_t, a_p = a[t].view(-1, 1, 1, 1, 1), torch.tensor([a[600], 1.0], dtype=torch.float64).view(-1, 1, 1, 1, 1)
    eps = (x_t.double() - a_t.sqrt() * x0) / (1 - a_t).sqrt()
    torch.testing.assert_close(a_p.sqrt() * x0 + (1 - a_p).sqrt() * eps, x_prev.double(), rtol=1e-4, atol=1e-4)
    c_skip, c_out = boundary_scalings(torch.tensor([0, 999]))
    assert c_skip.flatten().tolist()[0] == 1.0 and c_out.flatten().tolist()[0] == 0.0
    assert c_skip.flatten()[1] < 1e-6 and c_out.flatten()[1] > 0.999999


def test_guidance_embedding_starts_as_the_conditional_teacher(assets):
    pipe = VideoPipeline.from_pretrained(assets["video"], device="cpu", dtype="fp32")
    student = make_student(pipe.unet, guidance_embedding=True)
    b = batch(pipe)
    t = torch.tensor([500, 20])
    with torch.no_grad():
        reference = pipe.unet(b["latents"], t, b["encoder_hidden_states"])
        for scale in (1.0, 4.0, torch.tensor([2.0, 7.5])):
            torch.testing.assert_close(student(b["latents"], t, b["encoder_hidden_states"], guidance_scale=scale),
                                       reference, rtol=0, atol=0)
    assert student.config["guidance_embedding"] and not pipe.unet.config["guidance_embedding"]
    with pytest.raises(ValueError, match="guidance-distilled U-Net"):
        pipe.unet(b["latents"], t, b["encoder_hidden_states"], guidance_scale=2.0)


# ---------------------------------------------------------------------------------------------------------------
# what the objectives learn (tiny models, a fixed batch)
# ---------------------------------------------------------------------------------------------------------------
def teacher_two_steps_vs_student_one(pipe, obj, b, scale):
    """|| one student DDIM step - two teacher DDIM steps || / || two teacher steps - x_t || over the student's
    timesteps, run with diffusers' DDIMScheduler (the sampler the student is used with)."""
    student_ddim, teacher_ddim = pipe.make_scheduler("ddim"), pipe.make_scheduler("ddim")
    student_ddim.set_timesteps(2)
    teacher_ddim.set_timesteps(4)
    g = torch.Generator().manual_seed(123)
    errors = []
    with torch.no_grad():
        for t in student_ddim.timesteps:
            x_t = pipe.make_scheduler("ddpm").add_noise(b["latents"], torch.randn(b["latents"].shape, generator=g),
                                                        t.reshape(1))
            text, w = b["encoder_hidden_states"], torch.full((len(x_t),), scale)
            x = x_t
            for sub in (t, t - 250):
                if sub < 0:  # (the last student step: one teacher step reaches the end)
                    break
                x0, eps = obj.teacher_x0_eps(x, sub.reshape(1).expand(len(x)), text, None, {}, w)
                x = obj.schedule.ddim_step(x0, eps, (sub - 250).reshape(1).expand(len(x)))
            out = pipe.unet(x_t, t, text, guidance_scale=w)
            one = student_ddim.step(out, t, x_t).prev_sample
            errors.append(float((one - x).norm() / (x - x_t).norm()))
    return sum(errors) / len(errors)


def fixed_loss(pipe, obj, b, draws: int = 8) -> float:
    """The objective's loss on `b` averaged over the same `draws` seeds of noise and timesteps."""
    with torch.no_grad():
        return sum(float(obj.loss(pipe.unet, pipe.make_scheduler("ddpm"), b["latents"], b["encoder_hidden_states"],
                                  generator=torch.Generator().manual_seed(seed))) for seed in range(draws)) / draws


def test_progressive_student_step_reproduces_two_teacher_steps(assets):
    pipe, obj = objective(assets["video"], "progressive", steps=2, teacher_steps=4, guidance=True,
                          guidance_min=3.0, guidance_max=3.0)
    b = batch(pipe)
    before, loss_before = teacher_two_steps_vs_student_one(pipe, obj, b, 3.0), fixed_loss(pipe, obj, b)
    fit(pipe.unet, obj, b, steps=100, learning_rate=3e-4, noise_scheduler=pipe.make_scheduler("ddpm"),
        trainable="all", generator=torch.Generator().manual_seed(0), progress=False)
    after, loss_after = teacher_two_steps_vs_student_one(pipe, obj, b, 3.0), fixed_loss(pipe, obj, b)
    assert loss_after < 0.5 * loss_before, (loss_before, loss_after)
    assert after < 0.6 * before, (before, after)  # measured: 0.264 -> 0.125


@pytest.mark.parametrize("spacing, teacher_steps", [("trailing", 8), ("trailing", 16), ("trailing", 32),
                                                    ("leading", 8), ("leading", 20)])
def test_progressive_teacher_steps_lie_on_the_teachers_ddim_grid(spacing, teacher_steps):
    """Each student step's two teacher steps (t -> halfway -> t') visit the teacher's own DDIM timesteps at twice
    the student's steps: exactly where 1000 / n is whole, within a timestep where it is not (16, 32 trailing)."""
    ddim = DDIMScheduler(num_train_timesteps=1000, timestep_spacing=spacing)
    ddim.set_timesteps(teacher_steps // 2)
    student = torch.cat([ddim.timesteps, torch.tensor([-1])])
    ddim.set_timesteps(teacher_steps)
    teacher = set(ddim.timesteps.tolist()) | {-1}
    path = ProgressiveDistillation.teacher_path(student[:-1], student[1:], halve=True)
    assert torch.equal(path[0], student[:-1]) and torch.equal(path[2], student[1:])
    visited = torch.cat(path).tolist()
    off = [min(abs(t - g) for g in teacher) for t in visited]
    assert max(off) <= (0 if 1000 % teacher_steps == 0 else 1), (visited, sorted(teacher))
    assert ProgressiveDistillation.teacher_path(student[:-1], student[1:], halve=False)[1].equal(student[1:])


@pytest.fixture(scope="module")
def interpolation_teacher(assets):
    """A tiny interpolation-stage folder: its U-Net takes the noisy latents, the masked clip and the mask."""
    from vidiff.testing import make_tiny_video_pipeline

    return make_tiny_video_pipeline(assets["root"] / "interpolation", unet_kwargs={"in_channels": 9, "out_channels": 4})


@pytest.mark.parametrize("strength, trained", [(1.0, 4), (0.5, 2), (0.25, 1), (0.1, 1)])
def test_progressive_strength_trains_only_the_grid_steps_a_start_from_the_estimate_runs(interpolation_teacher,
                                                                                       strength, trained):
    """distill.strength: the student learns the last `strength` share of its DDIM grid (the steps that
    `timesteps_for_strength` runs) at the inputs sampling meets there: the stage's estimate noised to the first
    of them, then the teacher's DDIM steps on from it; it records the strength, so it samples so by default."""
    from vidiff.pipelines.text_to_video import timesteps_for_strength
    from vidiff.spec import resolve_sampling
    from vidiff.stages.conditions import blend_known_frames

    stage = make_stage("interpolation", latent_channels=4, mask_factors=[2], mask_modes=["interpolate"])
    pipe, obj = objective(interpolation_teacher, "progressive", stage=stage, steps=4, teacher_steps=8,
                          strength=strength)
    calls, student, teacher = [], pipe.unet, obj.round_teacher

    def record(who, model):
        return lambda inp, t, *a, **k: (calls.append((who, inp, t)), model(inp, t, *a, **k))[1]

    obj.round_teacher = record("teacher", teacher)
    latents = torch.randn(2, 4, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    text = pipe.encode_prompt(["a red circle moving right", "a blue square moving up"])
    ddpm, ddim = pipe.make_scheduler("ddpm"), pipe.make_scheduler("ddim")
    runs = timesteps_for_strength(ddim, 4, strength).tolist()
    seen = set()
    for seed in range(12):
        calls.clear()
        obj.loss(record("student", student), ddpm, latents, text, generator=torch.Generator().manual_seed(seed))
        (_, inp, t), = [c for c in calls if c[0] == "student"]
        seen |= set(t.tolist())
        if strength == 1:
            continue
        # Each video's input: the keyframes' blend noised to the first step that runs, then (past it) the
        # teacher's own DDIM steps, two a student step, through the grid to its t.
        g = torch.Generator().manual_seed(seed)
        cond, _ = stage.condition(latents, g)
        noise = torch.randn(latents.shape, generator=g)
        start = ddpm.add_noise(blend_known_frames(cond), noise, torch.tensor([runs[0]] * 2))
        teacher_calls = [c for c in calls if c[0] == "teacher"]
        for v in range(2):
            if int(t[v]) == runs[0]:
                torch.testing.assert_close(inp[v, :4], start[v], rtol=0, atol=1e-6)
            else:
                first_ahead = teacher_calls[0][1][v, :4]
                torch.testing.assert_close(first_ahead, start[v], rtol=0, atol=1e-6)  # (the rollout starts there)
                assert not torch.allclose(inp[v, :4], start[v])
        assert torch.equal(inp[:, 4:], cond)
    assert len(runs) == trained and seen == set(runs), (sorted(seen), runs)
    assert pipe.info.distilled.strength == strength
    assert resolve_sampling(pipe.info).strength == strength        # the student's default start
    assert resolve_sampling(pipe.info, strength=1.0).strength == 1.0  # a request still chooses


@pytest.mark.parametrize("value", [0, 1.5, "half", True])
def test_damaged_distilled_strength_is_a_one_line_error(student_folder, value):
    info = json.loads((student_folder / "vidiff.json").read_text())
    info["distilled"]["strength"] = value
    (student_folder / "vidiff.json").write_text(json.dumps(info))
    with pytest.raises(ValueError, match=r"distilled must hold .* strength \(in \(0, 1\]\)"):
        read_info(student_folder)


def test_guidance_embedding_learns_the_teachers_cfg(assets):
    """Guidance distillation alone (progressive with the teacher's steps): the one-pass student at scale s is the
    teacher's two-pass CFG at s, to a fraction of the distance between CFG and the conditional branch."""
    scale = 3.0
    pipe, obj = objective(assets["video"], "progressive", steps=4, teacher_steps=4, guidance=True,
                          guidance_min=scale, guidance_max=scale)
    b = batch(pipe, seed=3)
    t = torch.tensor([751, 501])  # (two of the 4 DDIM timesteps it learns at)
    x = pipe.make_scheduler("ddpm").add_noise(b["latents"], torch.randn(b["latents"].shape,
                                                                        generator=torch.Generator().manual_seed(2)), t)
    text, w = b["encoder_hidden_states"], torch.full((2,), scale)

    def relative_error():
        with torch.no_grad():
            cfg, _ = obj.teacher_x0_eps(x, t, text, None, {}, w)
            conditional, _ = obj.teacher_x0_eps(x, t, text, None, {}, torch.ones(2))
            student, _ = obj.schedule.x0_eps(pipe.unet(x, t, text, guidance_scale=w), x, t, clip=True)
        return float((student - cfg).norm() / (conditional - cfg).norm())

    assert relative_error() == pytest.approx(1.0, abs=1e-4)  # the untrained student: the conditional branch
    fit(pipe.unet, obj, b, steps=40, learning_rate=1e-4, noise_scheduler=pipe.make_scheduler("ddpm"),
        trainable="all", generator=torch.Generator().manual_seed(0), progress=False)
    assert relative_error() < 0.6  # measured: 0.43


def test_consistency_student_is_self_consistent(assets):
    """After consistency distillation the one-step output f(x_t, t) from a noisier point of a teacher ODE
    trajectory and from a less noisy one agree far better than the teacher's own x0 predictions do."""
    pipe, obj = objective(assets["video"], "consistency", steps=2, teacher_steps=10, guidance=True,
                          guidance_min=3.0, guidance_max=3.0)
    b = batch(pipe, seed=5)
    text, w = b["encoder_hidden_states"], torch.full((2,), 3.0)
    start = torch.full((2,), 699)
    x = pipe.make_scheduler("ddpm").add_noise(b["latents"], torch.randn(b["latents"].shape,
                                                                        generator=torch.Generator().manual_seed(9)),
                                              start)
    trajectory = [(x, start)]
    with torch.no_grad():  # the teacher's ODE, three grid steps down (k = 100)
        for _ in range(3):
            x0, eps = obj.teacher_x0_eps(x, start, text, None, {}, w)
            x, start = obj.schedule.ddim_step(x0, eps, start - 100), start - 100
            trajectory.append((x, start))

    def disagreement():
        with torch.no_grad():
            ends = [obj.consistency_function(pipe.unet, xi, ti, text, None, {"guidance_scale": w})
                    for xi, ti in trajectory]
        return float((ends[0] - ends[-1]).norm() / ends[-1].norm())

    before = disagreement()
    fit(pipe.unet, obj, b, steps=60, learning_rate=1e-4, noise_scheduler=pipe.make_scheduler("ddpm"),
        trainable="all", generator=torch.Generator().manual_seed(0), progress=False)
    after = disagreement()
    assert after < 0.65 * before, (before, after)  # measured: 0.101 -> 0.056


def test_consistency_target_network_is_the_ema(assets):
    """distill.target=ema: the target is computed by a frozen copy holding the EMA's weights (LCM's target
    network), not by the online student; without an EMA it is the online student (stop-gradient)."""
    from vidiff.training.ema import EMA

    pipe, obj = objective(assets["video"], "consistency", steps=2, teacher_steps=10)
    b, scheduler = batch(pipe), pipe.make_scheduler("ddpm")
    ema = EMA(dict(pipe.unet.named_parameters()), 0.95)           # (its shadow: the student as it starts)
    with torch.no_grad():
        for p in pipe.unet.parameters():
            p.add_(0.02 * torch.randn(p.shape, generator=torch.Generator().manual_seed(p.numel())))
    assert obj.target_network(pipe.unet) is pipe.unet

    def loss():
        with torch.no_grad():
            return float(obj.loss(pipe.unet, scheduler, b["latents"], b["encoder_hidden_states"],
                                  generator=torch.Generator().manual_seed(4)))

    online = loss()
    obj.use_target_network(ema)
    target = obj.target_network(pipe.unet)
    assert target is not pipe.unet and not any(p.requires_grad for p in target.parameters())
    teacher = dict(obj.teacher.named_parameters())
    assert all(torch.equal(p, teacher[name]) for name, p in target.named_parameters())  # the EMA's weights
    with_ema = loss()
    assert with_ema != pytest.approx(online, rel=1e-3), (online, with_ema)
    ema.update(dict(pipe.unet.named_parameters()))                # the next step's target follows the EMA
    name, p = next(iter(pipe.unet.named_parameters()))
    torch.testing.assert_close(dict(obj.target_network(pipe.unet).named_parameters())[name], ema.shadow[name])


@pytest.mark.parametrize("overrides, message", [
    (["train.ema=false"], r"distill.target=ema makes the run's EMA the consistency target network: set train.ema"),
    (["distill.target=frozen"], r"distill.target must be one of ema, online, got 'frozen'"),
])
def test_bad_consistency_target_is_a_config_error(assets, tmp_path, overrides, message):
    with pytest.raises(ValueError, match=message):
        load_config(TINY, [f"model.pretrained={assets['video']}", f"data.manifest={assets['shapes']}",
                           f"output_dir={tmp_path}", "distill.method=consistency", *overrides])
    cfg = load_config(TINY, [f"model.pretrained={assets['video']}", f"data.manifest={assets['shapes']}",
                             f"output_dir={tmp_path}", "distill.method=consistency", "train.ema=false",
                             "distill.target=online"])
    assert cfg.distill.target == "online"


# ---------------------------------------------------------------------------------------------------------------
# whole runs: resume, the student folder
# ---------------------------------------------------------------------------------------------------------------
def distill_config(assets, out, *overrides):
    return load_config(TINY, [f"model.pretrained={assets['video']}", f"data.manifest={assets['shapes']}",
                              f"output_dir={out}", "train.trainable=all", "train.ema=true", *overrides])


RUNS = {"progressive": ["distill.method=progressive", "distill.teacher_steps=8", "distill.steps=2",
                        "distill.guidance=true", "train.max_steps=8", "train.checkpoint_every=3"],
        "consistency": ["distill.method=consistency", "distill.teacher_steps=10", "distill.steps=2",
                        "train.caption_dropout=0.3", "train.max_steps=6", "train.checkpoint_every=3"]}


@pytest.mark.parametrize("method, stop_at", [("progressive", 6), ("consistency", 3)])
def test_resume_of_a_distillation_run_is_exact(assets, tmp_path, method, stop_at):
    """N steps + resume + M steps == N + M straight (the progressive run resumes in its second round, whose
    teacher is the file written when the round began); the checkpoint holds the student alone."""
    straight = train(distill_config(assets, tmp_path / "straight", *RUNS[method]))
    out = tmp_path / "resumed"
    cfg = distill_config(assets, out, *RUNS[method])
    assert train(cfg, on_step=lambda step, row: step == stop_at).step == stop_at
    resumed = train(cfg, resume="auto")
    assert straight.step == resumed.step and resumed.status == "finished"
    weights = [load_file(str(list_checkpoints(run / "checkpoints")[-1] / "model.safetensors"))
               for run in (tmp_path / "straight", out)]
    assert weights[0].keys() == weights[1].keys()
    assert all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0])
    exported = load_file(str(out / "pipeline" / "unet" / "diffusion_pytorch_model.safetensors"))
    assert weights[0].keys() == exported.keys()  # the student's U-Net, no teacher beside it
    if method == "progressive":
        assert (out / "distill" / "teacher-round-1.safetensors").is_file()
        assert any(k.startswith("guidance_embedding.") for k in exported)


def test_student_folder_generates_with_no_flags(assets, tmp_path, capsys):
    out = tmp_path / "run"
    train(distill_config(assets, out, *RUNS["consistency"][:-2], "distill.guidance=true", "train.max_steps=2"))
    student = out / "pipeline"
    info = read_info(student)
    assert (info.distilled.method, info.distilled.steps, info.distilled.guidance_embedded) == ("consistency", 2, True)
    assert (info.defaults.num_inference_steps, info.defaults.scheduler) == (2, "lcm")
    assert VideoPipeline.from_pretrained(student, device="cpu").make_scheduler().config.original_inference_steps == 10
    clip = tmp_path / "clip.mp4"
    assert main(["generate", "--model", str(student), "--prompt", "a red circle", "--seed", "0", "--quiet",
                 "--out", str(clip)]) == 0
    sidecar = json.loads(clip.with_suffix(".json").read_text())
    assert (sidecar["num_inference_steps"], sidecar["scheduler"], sidecar["guidance_distilled"]) == (2, "lcm", True)
    assert sidecar["guidance_scale"] == 3.0 and sidecar["unet_evaluations"] == 2  # one pass a step
    teacher_clip = tmp_path / "teacher.mp4"
    assert main(["generate", "--model", str(assets["video"]), "--prompt", "a red circle", "--seed", "0", "--quiet",
                 "--out", str(teacher_clip)]) == 0
    teacher = json.loads(teacher_clip.with_suffix(".json").read_text())
    assert (teacher["guidance_distilled"], teacher["unet_evaluations"]) == (False, 8)  # 4 steps x 2 passes
    assert "distilled" not in read_info(assets["video"]).to_json()  # a folder that is no student: as before


# ---------------------------------------------------------------------------------------------------------------
# bad inputs: one line, before anything loads
# ---------------------------------------------------------------------------------------------------------------
@pytest.fixture
def student_folder(assets, tmp_path_factory):
    path = tmp_path_factory.mktemp("student") / "student"
    import shutil
    shutil.copytree(assets["video"], path)
    info = json.loads((path / "vidiff.json").read_text())
    info["distilled"] = {"method": "consistency", "steps": 4, "teacher_steps": 50, "guidance_embedded": False,
                         "teacher": str(assets["video"]), "timesteps": []}
    (path / "vidiff.json").write_text(json.dumps(info))
    return path


@pytest.mark.parametrize("flags, message", [
    (["--method", "guided"], r"distill.method must be null or one of consistency, progressive, got 'guided'"),
    (["--method", "progressive", "--steps", "3"], r"distill.steps=3 does not divide the teacher's 4 DDIM steps"),
    (["--method", "progressive", "--steps", "4"], r"nothing to distil"),
    (["--method", "consistency", "--teacher-steps", "30"], r"must divide the noise schedule's 1000"),
    (["--method", "consistency", "--steps", "60"], r"at most the consistency solver grid"),
    (["--method", "consistency", "--guidance-range", "1,3"], r"--guidance-range applies with --guidance-distill"),
    (["--method", "consistency", "--strength", "0.5"], r"distill.strength=0.5 is for progressive distillation"),
    (["--method", "progressive", "--steps", "2", "--strength", "1.5"], r"distill.strength must be in \(0, 1\]"),
    (["--method", "progressive", "--steps", "2", "--strength", "nan"], r"distill.strength must be in \(0, 1\]"),
    (["--method", "progressive", "--steps", "2", "--strength", "0.5"], r"which a base model does not make"),
])
def test_bad_distill_requests_are_one_line_errors_before_loading(assets, tmp_path, capsys, monkeypatch, flags,
                                                                 message):
    monkeypatch.setattr(VideoPipeline, "from_pretrained", lambda *a, **k: pytest.fail("a model was loaded"))
    code = main(["distill", "--model", str(assets["video"]), "--data", str(assets["shapes"]), "--out",
                 str(tmp_path / "run"), *flags])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and err.startswith("vidiff distill: error: "), err
    assert __import__("re").search(message, err), err
    assert not (tmp_path / "run").exists()


def test_a_student_is_no_teacher(assets, student_folder, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(VideoPipeline, "from_pretrained", lambda *a, **k: pytest.fail("a model was loaded"))
    code = main(["distill", "--model", str(student_folder), "--method", "consistency", "--data",
                 str(assets["shapes"]), "--out", str(tmp_path / "run")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and "is itself a student" in err, err
    cfg = distill_config(assets, tmp_path / "run2", "distill.method=consistency", f"model.pretrained={student_folder}")
    with pytest.raises(ValueError, match=r"is itself a student \(consistency-distilled to 4 steps"):
        train(cfg)
    code = main(["distill", "--model", str(assets["video"]), "--method", "consistency", "--out", str(tmp_path / "r")])
    assert code == 2 and "does not record the clips it was trained on: pass --data" in capsys.readouterr().err


def test_damaged_distilled_record_is_a_one_line_error(student_folder):
    info = json.loads((student_folder / "vidiff.json").read_text())
    info["distilled"]["steps"] = "four"
    (student_folder / "vidiff.json").write_text(json.dumps(info))
    with pytest.raises(ValueError, match=r"distilled must hold method, steps and teacher_steps"):
        read_info(student_folder)


def test_lcm_steps_are_bounded_by_the_consistency_grid(assets):
    from vidiff.spec import SettingError, resolve_sampling

    info = read_info(assets["video"])
    assert resolve_sampling(info, max_steps=998, scheduler="lcm", num_inference_steps=50).num_inference_steps == 50
    with pytest.raises(SettingError, match="num_inference_steps must be between 1 and 50, got 51"):
        resolve_sampling(info, max_steps=998, scheduler="lcm", num_inference_steps=51)
