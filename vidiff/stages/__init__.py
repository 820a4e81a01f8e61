"""Stages: what a U-Net is trained for and conditioned on, one home each, for training and for sampling.

    base           noisy latents                                  (text-to-video)
    interpolation  + masked video latents + mask                  (Make-A-Video, MCVD masks)
    tsr            + the low-fps video repeated along time        (Imagen Video TSR)
    ssr            + the low-res video upsampled, noise-augmented (Imagen / SD x4 upscaler)

Modules: `conditions` (the condition tensors, pure functions), `base` (`Stage`: the diffusion objective and the
sampling interface), `cascade` (the three cascade stages), `registry` (`STAGES`, `make_stage`, `stage_for`),
`folder` (untrained stage folders: `inflate_stage`). Pipelines and training both import down to this package;
nothing outside it tests a stage's name.
"""
from __future__ import annotations

from vidiff.stages.base import Stage, min_snr_weights
from vidiff.stages.cascade import InterpolationStage, SSRStage, TSRStage
from vidiff.stages.registry import STAGES, check_stage_fields, make_stage, stage_for, stage_options

__all__ = ["STAGES", "InterpolationStage", "SSRStage", "Stage", "TSRStage", "check_stage_fields", "make_stage",
           "min_snr_weights", "stage_for", "stage_options"]
