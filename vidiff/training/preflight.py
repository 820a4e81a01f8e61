"""What a training run checks before it loads anything: every mistake in the config costs seconds, not the
minutes (and gigabytes) of inflating an SD model first.

    check_run(config) -> Preflight   the config's values, the model source, the data, the output location

Each problem is one ConfigError line naming the config key, the value and the fix.
"""
from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from diffusers.optimization import SchedulerType
from transformers import AutoTokenizer

from vidiff.adapters.embeddings import check_new_words
from vidiff.control import read_controlnet_config
from vidiff.config import FLOOR_SCHEDULES, Config, ConfigError, check_distill_steps, validate
from vidiff.models.attention import AttentionBackendError, check_backend
from vidiff.models.compile import CompileError, check_compile
from vidiff.data.video_io import probe_video
from vidiff.models.loading import is_hub_id
from vidiff.spec import INFO_NAME, read_info, read_scheduler_config
from vidiff.utils import default_device
from vidiff.training.data import check_cache_geometry, make_dataset

# A run writes at least config.json, the CSV and a checkpoint before anything else; with less free space than this
# the output location is as good as full.
MIN_FREE_BYTES = 64 * 2 ** 20
SD_PARTS = ("unet", "text_encoder", "tokenizer", "scheduler")


@dataclass
class Preflight:
    dataset: object                # the training dataset (built once, here)
    image_dataset: object | None   # joint image + video training
    model_kind: str                # "vidiff" (a pipeline folder) | "sd" (an SD folder to inflate) | "hub"
    info: dict | None              # vidiff.json of a vidiff folder


def check_run(config: Config) -> Preflight:
    """Check `config` against this machine before any model is loaded; returns the datasets it built."""
    validate(config)
    check_options(config)
    kind, info = check_model_source(config)
    check_new_tokens(config, kind)
    check_teacher(config, kind, info)
    check_control(config)
    check_output_location(Path(config.output_dir))
    dataset, image_dataset = check_data(config, info)
    return Preflight(dataset=dataset, image_dataset=image_dataset, model_kind=kind, info=info)


def check_options(config: Config) -> None:
    """Options whose check needs a library or this machine (not possible in config.validate)."""
    names = [s.value for s in SchedulerType] + list(FLOOR_SCHEDULES)
    if config.train.lr_scheduler not in names:
        raise ConfigError(f"train.lr_scheduler={config.train.lr_scheduler!r} is not a schedule; choose one of "
                          f"{', '.join(names)}")
    try:
        check_backend(config.model.attention_backend)
    except AttentionBackendError as e:
        raise ConfigError(f"model.attention_backend: {e}") from None
    if config.train.compile:
        try:  # (the device accelerate will pick: a GPU when there is one)
            check_compile(default_device(), config.model.attention_backend)
        except CompileError as e:
            raise ConfigError(f"train.compile: {e}") from None


def check_control(config: Config) -> None:
    """A ControlNet run's files: control.controlnet's config (a local folder) and control.validation_video,
    readable with the validation clip's frames."""
    c = config.control
    if config.train.trainable != "controlnet":
        return
    if c.controlnet is not None and not is_hub_id(c.controlnet):
        try:
            read_controlnet_config(c.controlnet)
        except (OSError, ValueError) as e:
            raise ConfigError(f"control.controlnet: {e}") from None
    if c.validation_video is not None and config.validation.prompts:
        frames = config.validation.num_frames or config.data.num_frames
        try:
            info = probe_video(c.validation_video)
        except (OSError, ValueError) as e:
            raise ConfigError(f"control.validation_video: {e}") from None
        if info.num_frames < frames:
            raise ConfigError(f"control.validation_video={c.validation_video} has {info.num_frames} frames, the "
                              f"validation clips {frames}; give a longer video or set validation.num_frames")


def check_new_tokens(config: Config, kind: str) -> None:
    """train.new_tokens against the model's tokenizer (loaded alone: seconds, not the model's minutes)."""
    words = config.train.new_tokens
    folder = Path(config.model.pretrained).expanduser() / "tokenizer"
    if not words or kind == "hub" or not folder.is_dir():
        return  # (a hub model's tokenizer is checked when it loads)
    try:
        check_new_words(AutoTokenizer.from_pretrained(str(folder)), words)
    except ValueError as e:
        raise ConfigError(str(e)) from None


def check_model_source(config: Config) -> tuple[str, dict | None]:
    """model.pretrained must be a vidiff pipeline folder (of the stage being trained), a diffusers SD pipeline
    folder, or a hub id; returns ("vidiff" | "sd" | "hub", vidiff.json or None)."""
    text = config.model.pretrained
    path = Path(text).expanduser()
    key = f"model.pretrained={text!r}"
    if (path / INFO_NAME).is_file():
        try:
            info = read_info(path)
        except (OSError, ValueError) as e:
            raise ConfigError(f"{key}: {e}") from None
        check_stage_matches(info, config.train.stage, path)
        return "vidiff", info
    if path.is_file():
        raise ConfigError(f"{key} is a single-file checkpoint: inflate it first (vidiff inflate --base {text} "
                          "--config SD_PIPELINE_FOLDER --out DIR) and set model.pretrained=DIR")
    if path.is_dir():
        missing = [part + "/" for part in SD_PARTS if not (path / part).is_dir()]
        if missing:
            raise ConfigError(f"{key} is neither a vidiff pipeline folder (no {INFO_NAME}) nor a diffusers SD "
                              f"pipeline folder (missing {', '.join(missing)}); give one of those")
        return "sd", None
    if is_hub_id(text):
        return "hub", None
    raise ConfigError(f"{key} does not exist; give an SD pipeline folder (or hub id owner/name) to inflate, or a "
                      "vidiff pipeline folder (with vidiff.json)")


def teacher_steps(config: Config, info) -> int:
    """distill.teacher_steps, or its default: the teacher's sampling steps (progressive), LCM's 50 (consistency)."""
    x = config.distill
    if x.teacher_steps is not None:
        return x.teacher_steps
    return info.defaults.num_inference_steps if x.method == "progressive" else 50


def check_teacher(config: Config, kind: str, info) -> None:
    """A distillation run's teacher (model.pretrained): a vidiff pipeline folder that is no student itself, whose
    noise schedule the student's steps divide (distill.*)."""
    x = config.distill
    if x.method is None:
        return
    key = f"model.pretrained={config.model.pretrained!r}"
    if kind != "vidiff":
        raise ConfigError(f"{key}: distillation needs a vidiff pipeline folder as the teacher (inflate and train "
                          "the model first)")
    if info.distilled is not None:
        raise ConfigError(f"{key} is itself a student ({info.distilled.method}-distilled to {info.distilled.steps} "
                          f"steps from {info.distilled.teacher or 'a teacher'}); distil its teacher instead")
    steps = teacher_steps(config, info)

    def check(ok: bool, message: str) -> None:
        if not ok:
            raise ConfigError(f"{message} (teacher {config.model.pretrained})")

    check_distill_steps(x.method, x.steps, steps, x.guidance, check)
    schedule = read_scheduler_config(Path(config.model.pretrained).expanduser() / "scheduler")
    train_steps = int(schedule.get("num_train_timesteps", 1000))
    if x.method == "consistency":
        check(train_steps % steps == 0, f"distill.teacher_steps={steps} must divide the noise schedule's "
                                        f"{train_steps} training steps (the solver grid's skip is then whole)")


def check_stage_matches(info, stage: str, source) -> None:
    """A vidiff folder (its vidiff.spec.PipelineInfo) trains as the stage it was made for."""
    held = info.stage
    if held != stage:
        raise ConfigError(f"train.stage={stage!r} but {source} holds a {held!r} model; set train.stage={held!r} "
                          "or start from an SD pipeline or a matching folder")


def check_output_location(output_dir: Path) -> None:
    """output_dir (or the folder it will be made in) must be a writable folder with room to write. (Whether
    an existing output_dir may be written into at all is run_folder.check_output_dir's rule.)"""
    existing = output_dir if output_dir.is_dir() else output_dir.parent
    while not existing.exists() and existing.parent != existing:
        existing = existing.parent
    if not existing.is_dir():
        raise ConfigError(f"output_dir={str(output_dir)!r}: {existing} is a file, not a folder; choose another "
                          "output_dir")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise ConfigError(f"output_dir={str(output_dir)!r} cannot be written ({existing} is read-only for this "
                          "user); choose a writable output_dir")
    free = shutil.disk_usage(existing).free
    if free < MIN_FREE_BYTES:
        raise ConfigError(f"output_dir={str(output_dir)!r}: the disk holding {existing} is full "
                          f"({free / 2 ** 20:.1f} MiB free); free some space or choose another output_dir")


def check_data(config: Config, info: dict | None):
    """Build the training datasets (they read the manifests and check the files exist); a latent cache must
    hold clips of the configured geometry for this model."""
    d = config.data
    key = (f"data.cache={d.cache!r}" if d.cache else f"data.shards={d.shards!r}" if d.shards
           else f"data.manifest={d.manifest!r}")
    try:
        dataset = make_dataset(config)
    except (OSError, ValueError) as e:
        raise ConfigError(f"{key}: {e}") from None
    geometry = model_geometry(config, info)
    if d.cache and geometry is not None:
        check_cache_geometry(dataset, config, geometry[0], geometry[1])
    if geometry is not None:
        factor = geometry[1] * geometry[2]
        for name in ("height", "width"):
            if getattr(d, name) % factor:
                raise ConfigError(f"data.{name}={getattr(d, name)} must be a multiple of {factor} for this model "
                                  f"(VAE factor x U-Net factor)")
        for i, (_, height, width) in enumerate(d.buckets or []):
            if height % factor or width % factor:
                raise ConfigError(f"data.buckets[{i}] is {width}x{height}: height and width must be multiples of "
                                  f"{factor} for this model (VAE factor x U-Net factor)")
    image_dataset = None
    if d.image_batch_size:
        try:
            image_dataset = make_dataset(config, images=True)
        except (OSError, ValueError) as e:
            raise ConfigError(f"data.image_manifest={d.image_manifest!r}: {e}") from None
    return dataset, image_dataset


def model_geometry(config: Config, info: dict | None) -> tuple[int, int, int] | None:
    """(latent channels, VAE factor, U-Net factor) from the model's JSON files without loading it; None when
    they cannot be told (a hub id)."""
    if info is not None:
        return info.in_channels, info.vae_scale_factor, info.unet_spatial_factor
    path = Path(config.model.pretrained).expanduser()
    try:
        unet = json.loads((path / "unet" / "config.json").read_text())
        vae_file = path / "vae" / "config.json"
        vae = json.loads(vae_file.read_text()) if vae_file.is_file() else None
    except (OSError, ValueError):
        return None
    vae_factor = 2 ** (len(vae["block_out_channels"]) - 1) if vae is not None else 1
    unet_factor = 2 ** (len(unet.get("block_out_channels", [0])) - 1)
    channels = int(vae["latent_channels"]) if vae is not None else int(unet.get("in_channels", 3))
    return channels, vae_factor, unet_factor
