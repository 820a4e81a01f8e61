"""The stages by name: build one for training (`make_stage`, `stage_options`) or for a pipeline folder
(`stage_for`: what its vidiff.json says it is)."""
from __future__ import annotations

import inspect

from vidiff.spec import STAGE_NAMES, PipelineInfo
from vidiff.stages.base import Stage
from vidiff.stages.cascade import InterpolationStage, SSRStage, TSRStage

STAGES: dict[str, type[Stage]] = {"base": Stage, "interpolation": InterpolationStage, "tsr": TSRStage,
                                  "ssr": SSRStage}
assert tuple(STAGES) == STAGE_NAMES, "vidiff.spec.STAGE_NAMES names every stage of this registry"


def make_stage(name: str, **options) -> Stage:
    """The stage called `name` ("base", "interpolation", "tsr", "ssr") with its options."""
    if name not in STAGES:
        raise ValueError(f"unknown train.stage {name!r}; choose from {', '.join(STAGE_NAMES)}")
    return STAGES[name](**options)


def _accepted(cls: type[Stage]) -> set[str]:
    """The stage-specific keyword options of `cls` (its constructor's, without the shared ones)."""
    return set(inspect.signature(cls.__init__).parameters) - {"self", "base", "options"}


def check_stage_fields(name: str, requested: dict) -> None:
    """A training config's non-null `stage.*` fields all belong to the stage `name`; ValueError otherwise."""
    if name not in STAGES:
        raise ValueError(f"train.stage must be one of {', '.join(STAGE_NAMES)}, got {name!r}")
    for key, value in requested.items():
        if value is not None and key not in STAGES[name].config_fields:
            users = [stage for stage, cls in STAGES.items() if key in cls.config_fields]
            raise ValueError(f"stage.{key}={value!r} applies to the {' / '.join(users)} stage, not to "
                             f"train.stage={name!r}; remove it")


def stage_options(name: str, saved: dict | None, requested: dict) -> dict:
    """Options of `make_stage(name, ...)` for training: the model folder's `stage_options` (vidiff.json), with
    the config's non-null `stage.*` fields on top. A field set for another stage is an error."""
    check_stage_fields(name, requested)
    accepted = _accepted(STAGES[name])
    options = {k: v for k, v in (saved or {}).items() if k in accepted}
    options.update({k: v for k, v in requested.items() if v is not None and k in STAGES[name].config_fields})
    return options


def stage_for(info: PipelineInfo, **overrides) -> Stage:
    """The stage a pipeline folder holds, built from its vidiff.json (its latent channels, prediction type and
    `stage_options`); `overrides` replace saved options (training's `stage.*` fields)."""
    cls = STAGES[info.stage]
    options = {k: v for k, v in info.stage_options.items() if k in _accepted(cls)}
    try:
        return cls(latent_channels=info.in_channels, prediction_type=info.prediction_type, **options, **overrides)
    except (TypeError, ValueError) as e:
        raise ValueError(f"the {info.stage} stage's stage_options in vidiff.json are not usable ({e}); re-create "
                         "the stage folder with `vidiff inflate --stage` or `vidiff train`") from None
