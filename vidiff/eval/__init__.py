"""Evaluation: prompt-following metrics on the synthetic shapes world, PSNR / SSIM and stage baselines.

    vidiff.eval.shapes   colour, shape, motion and temporal consistency of a clip, measured from its pixels
    vidiff.eval.video    PSNR, SSIM (Wang et al. 2004), and the baselines: linear blending, bicubic, repeat-last
    vidiff.eval.suite    the fixed prompt x held-out-seed set, generation, summary table, contact sheet
    vidiff.eval.stages   cascade stages scored against the drawn truth (interpolation, ssr, extend)
    vidiff.eval.edits    editing: the colour (or shape) changed to the target with the motion kept
    vidiff.eval.i3d      InceptionI3d (pytorch-i3d's key names), loaded from safetensors
    vidiff.eval.fvd      FVD: StyleGAN-V's clip protocol, I3D logits, the Fréchet distance in float64
    vidiff.eval.clip_score  CLIP score (CLIPSIM) with a transformers CLIP
    vidiff.eval.vbench   VBench-style dimensions without downloaded weights
    vidiff.eval.clips    folders / manifests of clips and their captions, probed before models load
"""
from __future__ import annotations

from vidiff.utils import lazy_exports

_LAZY = {
    "measure_clip": "vidiff.eval.shapes",
    "score_clip": "vidiff.eval.shapes",
    "trajectory": "vidiff.eval.shapes",
    "trajectory_correlation": "vidiff.eval.shapes",
    "score_edit": "vidiff.eval.shapes",
    "psnr": "vidiff.eval.video",
    "ssim": "vidiff.eval.video",
    "EVAL_SEEDS": "vidiff.eval.suite",
    "frechet_distance": "vidiff.eval.fvd",
    "ClipScorer": "vidiff.eval.clip_score",
}

__all__ = list(_LAZY)

__getattr__ = lazy_exports(__name__, _LAZY)
