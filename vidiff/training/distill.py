"""Few-step students by distillation: training objectives the ordinary trainer runs in place of a stage's loss.

    vidiff distill --model runs/base/pipeline --method consistency --guidance-distill --steps 4 --out runs/fast
    vidiff train configs/train/demo-distill-base.yaml         (the same run from a config's `distill:` section)

`model.pretrained` is the teacher, frozen; the student starts as its copy (plus a zero-initialised guidance
embedding with `distill.guidance`) and is what `train` optimises, checkpoints, averages and exports. The objective
wraps the run's `Stage`, so a cascade stage's student sees the condition its teacher sees (built from the clean
clip as in training), and it answers the trainer as a stage does (`loss`, `condition`, `is_trainable_extra`).
The teacher is never part of a checkpoint: it is the folder's (or, in a later progressive round, a file written
into output_dir/distill/ at the round's first step), so a resumed run is exact.

    consistency   latent consistency distillation (Song et al. 2023; Luo et al. 2023, LCM; AnimateLCM for video):
                  x_{t+k} -> one DDIM step of the teacher (with classifier-free guidance at w) -> x_t; the student's
                  f(x, t) = c_skip(t) x + c_out(t) x0(x, t) (LCM's boundary scalings) at x_{t+k} is pulled to the
                  same function at x_t computed by the target network without gradient: LCM's EMA of the student
                  (`distill.target: ema`, the run's train.ema at train.ema_decay, 0.95 as in LCM; it is in every
                  checkpoint, so resume stays exact) or the online student itself (`online`, the stop-gradient
                  target of improved consistency training, Song & Dhariwal 2023: measured to drift and collapse
                  on the demo), on LCM's skipping-step grid of `teacher_steps` (50) DDIM timesteps. Samples with
                  diffusers' LCMScheduler.
    progressive   progressive distillation (Salimans & Ho 2022): in round r the student learns, in one DDIM step,
                  two steps of the round's teacher (the previous round's student), halving the steps each round;
                  the target is the x0 that makes one DDIM step land where the teacher's two did, the loss its
                  squared error weighted by max(SNR, 1) ("truncated SNR"). Samples with DDIM at `steps`.
                  `distill.strength` S < 1 (a cascade stage): it learns only the last S share of its grid, the
                  steps a start from the stage's input estimate runs (`--strength`), and samples so by default.
    guidance      guidance distillation (Meng et al. 2023), with either: the teacher's target runs classifier-free
                  guidance at a scale w drawn from [guidance_min, guidance_max], the student gets w as an input
                  (VideoUNet's GuidanceEmbedding) and makes one pass. Without it the student learns the unguided
                  teacher (each caption and, through caption dropout, the empty one) and samples with two-pass CFG.
"""
from __future__ import annotations

import copy
import dataclasses
from pathlib import Path

import torch
import torch.nn.functional as F
from diffusers import DDIMScheduler

from vidiff.models.encoding import encode_text
from vidiff.models.unet import GuidanceEmbedding
from vidiff.models.weights import read_state_dict
from vidiff.spec import Distilled, PipelineInfo, steps_for_strength
from vidiff.stages import Stage
from vidiff.utils import save_safetensors_atomic

SIGMA_DATA = 0.5           # LCM's boundary scalings: c_skip = s^2 / ((10 t)^2 + s^2), c_out = 10 t / sqrt(...)
TIMESTEP_SCALING = 10.0    # (diffusers' LCMScheduler defaults, which the student samples with)


# ---------------------------------------------------------------------------------------------------------------
# the noise schedule's arithmetic (float32, per video)
# ---------------------------------------------------------------------------------------------------------------
class Schedule:
    """The teacher's noise schedule as its DDIM sampler reads it: alpha_bar(t) (t < 0: the final alpha), the
    prediction type, x0 clipping, and the conversions between a U-Net output, x0 and eps."""

    def __init__(self, scheduler_config: dict, *, latent: bool):
        config = {k: v for k, v in scheduler_config.items() if not k.startswith("_")}
        config.setdefault("clip_sample", not latent)  # as vidiff.pipelines.schedulers.make_scheduler
        ddim = DDIMScheduler.from_config(config)
        self.num_train_timesteps = int(ddim.config.num_train_timesteps)
        self.alphas_cumprod = ddim.alphas_cumprod.float()
        self.final_alpha = float(ddim.final_alpha_cumprod)
        self.prediction_type = ddim.config.prediction_type
        self.clip = float(ddim.config.clip_sample_range) if ddim.config.clip_sample else None
        self.ddim = ddim

    def alpha_bar(self, t: torch.Tensor) -> torch.Tensor:
        """alpha_bar at integer timesteps `t` `(b,)`, as `(b, 1, 1, 1, 1)`; t < 0 is DDIM's end (final alpha)."""
        table = self.alphas_cumprod.to(t.device)
        value = torch.where(t >= 0, table[t.clamp(min=0)], torch.full_like(table[:1], self.final_alpha))
        return value.view(-1, 1, 1, 1, 1)

    def x0_eps(self, output: torch.Tensor, x: torch.Tensor, t: torch.Tensor, clip: bool = False):
        """(x0, eps) from a U-Net output at (x, t); `clip`: x0 clipped as the DDIM sampler clips it (its eps is
        the unclipped one, as in diffusers' DDIMScheduler.step)."""
        a = self.alpha_bar(t)
        if self.prediction_type == "epsilon":
            eps = output
            x0 = (x - (1 - a).sqrt() * eps) / a.sqrt()
        elif self.prediction_type == "v_prediction":
            x0 = a.sqrt() * x - (1 - a).sqrt() * output
            eps = a.sqrt() * output + (1 - a).sqrt() * x
        else:  # "sample"
            x0 = output
            eps = (x - a.sqrt() * x0) / (1 - a).sqrt()
        if clip and self.clip is not None:
            x0 = x0.clamp(-self.clip, self.clip)
        return x0, eps

    def ddim_step(self, x0: torch.Tensor, eps: torch.Tensor, t_prev: torch.Tensor) -> torch.Tensor:
        """Deterministic DDIM (Song et al. 2021, eta = 0): x_{t_prev} = sqrt(a') x0 + sqrt(1 - a') eps."""
        a = self.alpha_bar(t_prev)
        return a.sqrt() * x0 + (1 - a).sqrt() * eps

    def step_target(self, x_t, t, x_prev, t_prev) -> torch.Tensor:
        """The x0 whose one DDIM step from (x_t, t) lands on x_prev at t_prev (Salimans & Ho 2022, Algorithm 2):
        (x_prev - (s'/s) x_t) / (a' - (s'/s) a), alpha a = sqrt(alpha_bar), sigma s = sqrt(1 - alpha_bar)."""
        a, a_prev = self.alpha_bar(t), self.alpha_bar(t_prev)
        ratio = (1 - a_prev).sqrt() / (1 - a).sqrt()
        return (x_prev - ratio * x_t) / (a_prev.sqrt() - ratio * a.sqrt())

    def snr(self, t: torch.Tensor) -> torch.Tensor:
        a = self.alpha_bar(t)
        return a / (1 - a)

    def sampler_timesteps(self, steps: int) -> torch.Tensor:
        """The DDIM sampler's timesteps at `steps` steps on this schedule (its spacing), highest first."""
        self.ddim.set_timesteps(steps)
        return self.ddim.timesteps.clone()


def boundary_scalings(t: torch.Tensor):
    """LCM's (c_skip, c_out) at timesteps `t`, `(b, 1, 1, 1, 1)`: f(x, 0) = x, f = x0 almost everywhere else."""
    scaled = TIMESTEP_SCALING * t.float().view(-1, 1, 1, 1, 1)
    c_skip = SIGMA_DATA ** 2 / (scaled ** 2 + SIGMA_DATA ** 2)
    c_out = scaled / (scaled ** 2 + SIGMA_DATA ** 2) ** 0.5
    return c_skip, c_out


# ---------------------------------------------------------------------------------------------------------------
# the objectives
# ---------------------------------------------------------------------------------------------------------------
class Distillation:
    """What consistency and progressive distillation share: the wrapped stage, the frozen teacher, its guided
    predictions, the guidance scales drawn for the student."""

    method = ""

    def __init__(self, stage: Stage, teacher, schedule: Schedule, uncond: torch.Tensor, *, steps: int,
                 teacher_steps: int, guidance: tuple[float, float] | None = None, max_steps: int = 1,
                 strength: float = 1.0):
        self.stage, self.teacher, self.schedule = stage, teacher.requires_grad_(False).eval(), schedule
        self.uncond = uncond            # (1, L, D): the empty prompt's embedding, for the teacher's guidance
        self.steps, self.teacher_steps = steps, teacher_steps
        self.guidance = guidance        # (low, high) when guidance is distilled, else None
        self.max_steps = max_steps
        self.strength = strength        # progressive: the last share of the grid it learns (a stage's start)

    # ------------------------------------------------------------------------- as the trainer sees a stage
    @property
    def name(self) -> str:
        return self.stage.name

    @property
    def conditioning_channels(self) -> int:
        return self.stage.conditioning_channels

    @property
    def factor(self) -> int:
        return getattr(self.stage, "factor", 1)

    def options(self) -> dict:
        return self.stage.options()

    def is_trainable_extra(self, name: str) -> bool:
        return self.stage.is_trainable_extra(name) or name.startswith("guidance_embedding.")

    def condition(self, latents: torch.Tensor, generator=None):
        """The stage's condition, and (guidance distillation) a scale for the student's embedding."""
        cond, kwargs = self.stage.condition(latents, generator)
        if self.guidance is not None:
            kwargs = dict(kwargs, guidance_scale=torch.full((latents.shape[0],), self.guidance[1],
                                                            device=latents.device))
        return cond, kwargs

    def before_step(self, step: int, student, output_dir: Path) -> None:
        """Called by the trainer before optimiser step `step` (0-based); progressive rounds switch teachers."""

    def describe(self, info: PipelineInfo, teacher: str) -> PipelineInfo:
        """The student's vidiff.json: `distilled`, and sampling defaults of its steps and sampler."""
        distilled = Distilled(method=self.method, steps=self.steps, teacher_steps=self.teacher_steps,
                              guidance_embedded=self.guidance is not None, teacher=str(teacher),
                              timesteps=self.recorded_timesteps(), strength=self.strength)
        return dataclasses.replace(info, distilled=distilled).with_defaults(num_inference_steps=self.steps,
                                                                           scheduler=distilled.scheduler)

    def recorded_timesteps(self) -> tuple[int, ...]:
        return ()

    # ------------------------------------------------------------------------- shared pieces
    def draw_guidance(self, batch: int, generator, device) -> torch.Tensor:
        """The guidance scale of each video `(b,)`: uniform in the range when distilled, else 1 (unguided)."""
        if self.guidance is None:
            return torch.ones(batch, device=device)
        low, high = self.guidance
        return low + (high - low) * torch.rand(batch, generator=generator, device=device)

    def model_input(self, x: torch.Tensor, cond: torch.Tensor | None) -> torch.Tensor:
        return x if cond is None else torch.cat([x, cond.to(x.dtype)], dim=1)  # (b, c + cond, f, h, w)

    def student_kwargs(self, kwargs: dict, w: torch.Tensor) -> dict:
        return dict(kwargs, guidance_scale=w) if self.guidance is not None else dict(kwargs)

    @torch.no_grad()
    def teacher_x0_eps(self, x, t, text, cond, kwargs, w, teacher=None):
        """The teacher's guided (x0, eps) at (x, t): u + w (c - u) of its two passes (Ho & Salimans 2022), one
        pass where w = 1 for every video, or one pass with w as the input of a guidance-distilled teacher."""
        teacher = teacher or self.teacher
        inp = self.model_input(x, cond)
        if getattr(teacher, "guidance_embedding", None) is not None:
            out = teacher(inp, t, text, **kwargs, guidance_scale=w).float()
        elif bool((w == 1).all()):
            out = teacher(inp, t, text, **kwargs).float()
        else:
            b = x.shape[0]
            uncond = self.uncond.to(text.dtype).expand(b, *text.shape[1:])
            doubled = {k: torch.cat([v] * 2) if torch.is_tensor(v) and v.ndim and v.shape[0] == b else v
                       for k, v in kwargs.items()}
            out_u, out_c = teacher(torch.cat([inp] * 2), torch.cat([t] * 2), torch.cat([uncond, text]),
                                   **doubled).float().chunk(2)
            out = out_u + w.view(-1, 1, 1, 1, 1) * (out_c - out_u)
        return self.schedule.x0_eps(out, x.float(), t, clip=True)


class ConsistencyDistillation(Distillation):
    """Latent consistency distillation (LCM, Luo et al. 2023) with an EMA (or stop-gradient) target; see the
    module."""

    method = "consistency"
    target_ema = None       # the run's EMA of the student (use_target_network); None: the online student
    target_unet = None      # (the module the EMA's weights are loaded into for the target's pass)

    def use_target_network(self, ema) -> None:
        """Make the EMA `ema` (vidiff.training.ema.EMA of the student's trainable weights) the target network."""
        self.target_ema = ema

    def target_network(self, unet):
        """The U-Net the target is computed with: a frozen copy of the student holding the EMA's current weights,
        or the online student itself when there is no EMA."""
        if self.target_ema is None:
            return unet
        if self.target_unet is None:
            self.target_unet = copy.deepcopy(getattr(unet, "module", unet)).requires_grad_(False)
        named = dict(self.target_unet.named_parameters())
        self.target_ema.copy_to({name: named[name] for name in self.target_ema.shadow})
        return self.target_unet

    def loss(self, unet, scheduler, latents: torch.Tensor, encoder_hidden_states: torch.Tensor, *,
             generator: torch.Generator | None = None) -> torch.Tensor:
        """|| f(x_{t+k}, t+k) - sg f(DDIM_teacher(x_{t+k} -> t), t) ||^2, t+k on LCM's grid of `teacher_steps`
        DDIM timesteps (k = T / teacher_steps); noise, timesteps, w and the stage's condition from `generator`."""
        b, device, s = latents.shape[0], latents.device, self.schedule
        k = s.num_train_timesteps // self.teacher_steps
        cond, kwargs = self.stage.condition(latents, generator)
        noise = torch.randn(latents.shape, generator=generator, device=device, dtype=latents.dtype)
        index = torch.randint(0, self.teacher_steps, (b,), generator=generator, device=device)
        start = (index + 1) * k - 1                                    # LCM's grid: k - 1, 2k - 1, ..., T - 1
        end = (start - k).clamp(min=0)
        w = self.draw_guidance(b, generator, device)
        x_start = scheduler.add_noise(latents, noise, start)
        student = self.student_kwargs(kwargs, w)
        with torch.no_grad():
            x0, eps = self.teacher_x0_eps(x_start, start, encoder_hidden_states, cond, kwargs, w)
            x_end = s.ddim_step(x0, eps, end).to(latents.dtype)        # one teacher ODE step, t+k -> t
            target = self.consistency_function(self.target_network(unet), x_end, end, encoder_hidden_states,
                                               cond, student)
        prediction = self.consistency_function(unet, x_start, start, encoder_hidden_states, cond, student)
        return F.mse_loss(prediction, target)

    def consistency_function(self, unet, x, t, text, cond, kwargs) -> torch.Tensor:
        """f(x, t) = c_skip(t) x + c_out(t) x0(x, t), x0 from the U-Net's output (LCMScheduler.step's)."""
        out = unet(self.model_input(x, cond), t, text, **kwargs).float()
        x0, _ = self.schedule.x0_eps(out, x.float(), t)
        c_skip, c_out = boundary_scalings(t)
        return c_skip * x.float() + c_out * x0


class ProgressiveDistillation(Distillation):
    """Progressive distillation (Salimans & Ho 2022) in rounds that halve the DDIM steps; see the module."""

    method = "progressive"

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.rounds = max(1, (self.teacher_steps // self.steps).bit_length() - 1)  # log2 (1: guidance alone)
        self.round = 0
        self.round_teacher = self.teacher       # round r's teacher: the student after round r - 1

    def round_of(self, step: int) -> int:
        return min(self.rounds - 1, step * self.rounds // max(1, self.max_steps))

    def round_steps(self, round_index: int) -> tuple[int, int]:
        """(the round's teacher steps, its student steps); a guidance-only run keeps the steps."""
        halvings = 0 if self.teacher_steps == self.steps else 1
        teacher = self.teacher_steps >> round_index
        return teacher, teacher >> halvings

    def recorded_timesteps(self) -> tuple[int, ...]:
        return tuple(int(t) for t in self.schedule.sampler_timesteps(self.steps))

    def round_start(self, round_index: int) -> int:
        """The first optimiser step of round `round_index` (the rounds share train.max_steps evenly)."""
        return -(-round_index * self.max_steps // self.rounds)

    def before_step(self, step: int, student, output_dir: Path) -> None:
        """At the first step of round r > 0 the round's teacher becomes the student as it is then, saved as
        output_dir/distill/teacher-round-r.safetensors; a run resumed later in the round reads that file."""
        wanted = self.round_of(step)
        if wanted == self.round:
            return
        teacher = copy.deepcopy(student).requires_grad_(False).eval()
        path = Path(output_dir) / "distill" / f"teacher-round-{wanted}.safetensors"
        if step == self.round_start(wanted):
            path.parent.mkdir(parents=True, exist_ok=True)
            save_safetensors_atomic({k: v.detach().contiguous() for k, v in teacher.state_dict().items()}, path)
        else:
            teacher.load_state_dict(read_state_dict(path))
        self.round, self.round_teacher = wanted, teacher

    @staticmethod
    def teacher_path(t: torch.Tensor, t_next: torch.Tensor, halve: bool) -> list[torch.Tensor]:
        """The timesteps of the teacher's DDIM steps over the student's one (t -> t'): halfway and on, which is
        the teacher's own DDIM grid at twice the steps for trailing and leading spacing (within a timestep where
        the steps do not divide the schedule); t -> t' for guidance distillation alone. t' = -1: the end."""
        return [t, torch.div(t + t_next, 2, rounding_mode="floor"), t_next] if halve else [t, t_next]

    def loss(self, unet, scheduler, latents: torch.Tensor, encoder_hidden_states: torch.Tensor, *,
             generator: torch.Generator | None = None) -> torch.Tensor:
        """max(SNR, 1) || x0_student(x_t, t) - x~ ||^2, x~ the x0 whose one DDIM step (t -> t') lands where the
        round's teacher's two DDIM steps (t -> t'' -> t') do; t, t' neighbours on the student's n-step DDIM grid,
        t'' halfway between them. x_t: the clip noised to t; with `strength` < 1 (a cascade stage) t is one of
        the grid's last steps, those a start from the stage's input estimate runs, and x_t is where sampling
        is there: the estimate noised to the first of them, taken on by the teacher's steps (the student
        learns the inputs it will meet, not the clean clip's)."""
        b, device, s = latents.shape[0], latents.device, self.schedule
        teacher_steps, student_steps = self.round_steps(self.round)
        halve = teacher_steps > student_steps
        cond, kwargs = self.stage.condition(latents, generator)
        noise = torch.randn(latents.shape, generator=generator, device=device, dtype=latents.dtype)
        grid = torch.cat([s.sampler_timesteps(student_steps), torch.tensor([-1])]).to(device)  # -1: the end
        first = student_steps - steps_for_strength(student_steps, self.strength)  # (strength 1: the whole grid)
        index = torch.randint(first, student_steps, (b,), generator=generator, device=device)
        t, t_next = grid[index], grid[index + 1]
        w = self.draw_guidance(b, generator, device)

        def teacher(x, path):
            return self.teacher_steps_along(x, path, encoder_hidden_states, cond, kwargs, w, latents.dtype)

        with torch.no_grad():
            if self.strength < 1:
                start = self.stage.start_estimate(latents, cond)
                x_t = scheduler.add_noise(start, noise, grid[first].expand(b)).float()
                for j in range(first, int(index.max())):      # on along the teacher's path to each video's t
                    ahead = teacher(x_t, self.teacher_path(grid[j].expand(b), grid[j + 1].expand(b), halve))
                    x_t = torch.where((index > j).view(-1, 1, 1, 1, 1), ahead, x_t)
                x_t = x_t.to(latents.dtype)
            else:
                x_t = scheduler.add_noise(latents, noise, t)
            x = teacher(x_t.float(), self.teacher_path(t, t_next, halve))
            target = s.step_target(x_t.float(), t, x, t_next)
        out = unet(self.model_input(x_t, cond), t, encoder_hidden_states, **self.student_kwargs(kwargs, w)).float()
        x0_student, _ = s.x0_eps(out, x_t.float(), t)
        per_video = F.mse_loss(x0_student, target, reduction="none").mean(dim=(1, 2, 3, 4))
        return (per_video * s.snr(t).flatten().clamp(min=1.0)).mean()

    @torch.no_grad()
    def teacher_steps_along(self, x, path, text, cond, kwargs, w, dtype) -> torch.Tensor:
        """The round's teacher's DDIM steps from `x` (float32) at path[0] through the timesteps of `path`, its
        inputs in `dtype` (the batch's)."""
        for now, then in zip(path, path[1:]):
            x0, eps = self.teacher_x0_eps(x.to(dtype), now.clamp(min=0), text, cond, kwargs, w,
                                          teacher=self.round_teacher)
            active = (now >= 0).view(-1, 1, 1, 1, 1)                # (past the schedule's end: done)
            x = torch.where(active, self.schedule.ddim_step(x0, eps, then), x)
        return x


OBJECTIVES = {"consistency": ConsistencyDistillation, "progressive": ProgressiveDistillation}


# ---------------------------------------------------------------------------------------------------------------
# building a run's objective
# ---------------------------------------------------------------------------------------------------------------
def make_student(teacher, guidance_embedding: bool):
    """The student: a copy of the teacher U-Net, with a zero-initialised guidance embedding when asked (so it
    starts as the teacher's conditional branch)."""
    student = copy.deepcopy(teacher)
    if guidance_embedding and student.guidance_embedding is None:
        dim = student.time_embedding.linear_2.out_features
        student.guidance_embedding = GuidanceEmbedding(dim).to(next(teacher.parameters()).device)
        student.config = dict(student.config, guidance_embedding=True)
    return student


def guidance_range(config, info: PipelineInfo) -> tuple[float, float] | None:
    """distill.guidance's scales: [guidance_min, guidance_max or twice the teacher's default (at least 2)]."""
    x = config.distill
    if not x.guidance:
        return None
    high = x.guidance_max if x.guidance_max is not None else max(2.0, 2 * info.defaults.guidance_scale)
    return float(x.guidance_min), float(high)


def attach_target(config, objective, ema) -> None:
    """distill.target = ema: the run's EMA (train.ema) becomes a consistency objective's target network."""
    if ema is not None and config.distill.target == "ema" and hasattr(objective, "use_target_network"):
        objective.use_target_network(ema)


def prepare_distillation(config, pipe, stage: Stage, teacher_steps: int, device) -> Distillation:
    """Make `pipe.unet` (the teacher, as loaded) the frozen teacher of the returned objective and put a student
    in its place; `pipe.info` becomes the student's (vidiff.json `distilled`, sampling defaults)."""
    x = config.distill
    teacher = pipe.unet.to(device)
    student = make_student(teacher, x.guidance)
    uncond = encode_text(pipe.text_encoder.to(device), pipe.tokenizer, [""]).detach()
    schedule = Schedule(pipe.scheduler_config, latent=pipe.latent)
    objective = OBJECTIVES[x.method](stage, teacher, schedule, uncond, steps=x.steps, teacher_steps=teacher_steps,
                                     guidance=guidance_range(config, pipe.info), max_steps=config.train.max_steps,
                                     strength=x.strength)
    pipe.unet = student
    pipe.info = objective.describe(pipe.info, config.model.pretrained)
    return objective
