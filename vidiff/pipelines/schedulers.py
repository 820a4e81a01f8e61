"""Sampling schedulers by name: diffusers' schedulers, built from a pipeline folder's `scheduler/` config.

The pipeline folder keeps the base model's noise schedule (betas, number of training steps, prediction type);
the sampler is picked at sampling time by a string, so one folder works with every sampler:

    ddim             DDIM (Song et al. 2021), deterministic for eta = 0; the default
    dpm-solver++     DPM-Solver++ multistep, 2nd order (Lu et al. 2022): good clips in 20-25 steps
    euler            Euler on the probability-flow ODE in sigma space (Karras et al. 2022)
    euler-ancestral  Euler with ancestral noise (stochastic)
    ddpm             the ancestral DDPM sampler (Ho et al. 2020; stochastic; wants many steps)
    unipc            UniPC multistep predictor-corrector (Zhao et al. 2023)
    lcm              multi-step consistency sampling (Song et al. 2023; Luo et al. 2023, LCM): for students
                     distilled with vidiff distill --method consistency, on LCM's skipping-step timesteps

The names are vidiff.spec.SCHEDULER_NAMES (checked there, with every other setting).
"""
from __future__ import annotations

import diffusers

from vidiff.spec import SCHEDULER_NAMES, check_choice

# name -> (diffusers class name, extra config entries for that sampler)
SCHEDULERS: dict[str, tuple[str, dict]] = {
    "ddim": ("DDIMScheduler", {}),
    "dpm-solver++": ("DPMSolverMultistepScheduler", {"algorithm_type": "dpmsolver++", "solver_order": 2}),
    "euler": ("EulerDiscreteScheduler", {}),
    "euler-ancestral": ("EulerAncestralDiscreteScheduler", {}),
    "ddpm": ("DDPMScheduler", {}),
    "unipc": ("UniPCMultistepScheduler", {}),
    "lcm": ("LCMScheduler", {}),
}
assert tuple(SCHEDULERS) == SCHEDULER_NAMES, "vidiff.spec.SCHEDULER_NAMES names every sampler here"


def make_scheduler(name: str, config: dict, *, latent: bool = True, consistency_grid: int | None = None):
    """Build the sampler `name` from a diffusers scheduler config (any scheduler class's config).

    `latent` tells whether the model works on latents: there the sample must not be clipped to [-1, 1]
    (a DDIM/DDPM default meant for pixel-space models), so clipping is off unless the config asks for it.
    `consistency_grid`: "lcm"'s skipping-step grid, the solver steps a consistency student was distilled on (its
    vidiff.json `distilled.teacher_steps`; LCM's 50 by default).
    """
    class_name, extra = SCHEDULERS[check_choice("scheduler", name, SCHEDULER_NAMES)]
    config = {k: v for k, v in dict(config).items() if not k.startswith("_")}
    config.setdefault("clip_sample", not latent)
    config.update(extra)
    if name == "lcm" and consistency_grid is not None:
        config["original_inference_steps"] = consistency_grid
    if name in ("dpm-solver++", "unipc") and config.get("timestep_spacing", "leading") == "leading":
        # diffusers' multistep solvers space "leading" steps by T // (n + 1), so with SD's configs (which say
        # "leading") they start well below the noisiest timestep: t = 951 at 25 steps, 801 at 200, 501 at 500,
        # leaving noise in the clip. "linspace" (their own default) starts at T - 1 for every step count.
        config["timestep_spacing"] = "linspace"
    return getattr(diffusers, class_name).from_config(config)
