"""Training config: YAML + dotted overrides into typed dataclasses; every bad key or value names itself."""
from pathlib import Path

import pytest

from vidiff.cli import main
from vidiff.config import Config, ConfigError, apply_override, config_from_dict, load_config

REPO = Path(__file__).resolve().parents[1]
CONFIGS = Path(__file__).resolve().parents[1] / "configs" / "train"
REQUIRED = ["model.pretrained=sd", "data.manifest=clips"]


def write(tmp_path, text: str) -> Path:
    path = tmp_path / "cfg.yaml"
    path.write_text(text)
    return path


def test_defaults_and_yaml_values(tmp_path):
    path = write(tmp_path, """
output_dir: runs/x
model: {pretrained: sd, cross_frame: first}
data: {manifest: clips, num_frames: 4, fps: 12}
train: {learning_rate: 3e-5, max_grad_norm: 2, trainable: temporal+attn-q, debug_nan_steps: [1, 2]}
validation: {prompts: ["a cat", "a dog"]}
""")
    cfg = load_config(path)
    assert isinstance(cfg, Config)
    assert cfg.output_dir == "runs/x"
    assert cfg.model.cross_frame == "first"
    assert cfg.data.num_frames == 4 and cfg.data.height == 256  # given / default
    assert cfg.data.fps == 12.0 and isinstance(cfg.data.fps, float)  # int accepted for a float field
    assert cfg.train.learning_rate == 3e-5  # PyYAML reads "3e-5" as a string: numeric strings are floats
    assert cfg.train.max_grad_norm == 2.0 and isinstance(cfg.train.max_grad_norm, float)
    assert cfg.train.debug_nan_steps == [1, 2]
    assert cfg.validation.prompts == ["a cat", "a dog"]
    assert cfg.train.batch_size == Config().train.batch_size


@pytest.mark.parametrize("text, key", [
    ("train: {max_step: 5}", "train.max_step"),
    ("trian: {max_steps: 5}", "trian"),
    ("model: {pretrained: sd, bogus: 1}", "model.bogus"),
])
def test_unknown_keys_name_key_and_file(tmp_path, text, key):
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as e:
        load_config(path, REQUIRED)
    assert repr(key) in str(e.value) and str(path) in str(e.value)


@pytest.mark.parametrize("text, key", [
    ("train: {max_steps: 5.5}", "train.max_steps"),
    ("train: {max_steps: true}", "train.max_steps"),       # bools are not ints
    ("train: {ema: 1}", "train.ema"),                        # ints are not bools
    ("train: {learning_rate: fast}", "train.learning_rate"),
    ("data: {num_frames: [4]}", "data.num_frames"),
    ("validation: {prompts: a cat}", "validation.prompts"),  # a list is required
    ("train: {debug_nan_steps: [1, x]}", "train.debug_nan_steps[1]"),
    ("data: 5", "data"),
])
def test_wrong_types_name_key_and_file(tmp_path, text, key):
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as e:
        load_config(path, REQUIRED)
    assert key in str(e.value) and str(path) in str(e.value)


def test_overrides_parse_as_yaml():
    cfg = load_config(None, REQUIRED + ["train.max_steps=7", "train.ema=true", "data.fps=null", "data.fps=8",
                                        "train.learning_rate=1e-3", 'validation.prompts=["a b", "c"]',
                                        "output_dir=runs/a=b", "train.snr_gamma=5"])
    assert cfg.train.max_steps == 7 and cfg.train.ema is True
    assert cfg.data.fps == 8.0 and cfg.train.learning_rate == 1e-3 and cfg.train.snr_gamma == 5.0
    assert cfg.validation.prompts == ["a b", "c"]
    assert cfg.output_dir == "runs/a=b"  # only the first '=' splits
    cfg = load_config(None, REQUIRED + ["data.fps=null", "model.pretrained=2024-01-01"])
    assert cfg.data.fps is None
    assert cfg.model.pretrained == "2024-01-01"  # YAML would make a date: kept as the text typed
    # String fields take override text as typed: YAML 1.1 would turn `no` into False.
    cfg = load_config(None, REQUIRED + ["train.mixed_precision=no", "model.cross_frame=null", "data.cache=on"])
    assert cfg.train.mixed_precision == "no" and cfg.model.cross_frame is None and cfg.data.cache == "on"


def test_unquoted_yaml_boolean_for_a_string_gets_a_hint(tmp_path):
    with pytest.raises(ConfigError, match="train.mixed_precision.*quote the value"):
        load_config(write(tmp_path, "train: {mixed_precision: no}"), REQUIRED)


@pytest.mark.parametrize("override, message", [
    ("train.max_steps", "key=value"),
    ("train.nope=1", "'train.nope'"),
    ("train.max_steps=many", "train.max_steps"),
    ("train..max_steps=1", "empty key"),
    ("train=3", "train"),
])
def test_bad_overrides(override, message):
    cfg = Config()
    with pytest.raises(ConfigError) as e:
        apply_override(cfg, override)
    assert message in str(e.value) and override in str(e.value)


@pytest.mark.parametrize("override, message", [
    ("train.trainable=spatial", "train.trainable"),
    ("train.mixed_precision=fp8", "train.mixed_precision"),
    ("train.max_steps=0", "train.max_steps"),
    ("train.ema_decay=1.0", "train.ema_decay"),
    ("train.prediction_type=sample", "train.prediction_type"),
    ("train.noisy_fraction=1.5", "train.noisy_fraction must be in [0, 1]"),
    ("train.noisy_from=1", "train.noisy_from must be in [0, 1)"),
    ("data.num_frames=0", "data.num_frames"),
    ("data.image_batch_size=2", "data.image_manifest"),
    ("model.pretrained=", "model.pretrained"),
    ("model.cross_frame=sparse", "model.cross_frame must be null (keep the model's) or one of none, first"),
    ("model.attention_backend=flash", "model.attention_backend must be one of auto, sdpa, xformers, math"),
    ("train.stage=upscale", "train.stage must be one of base, interpolation, tsr, ssr"),
    ("train.lr_floor=1.5", "train.lr_floor must be in [0, 1)"),
    ("train.lr_floor=-0.1", "train.lr_floor must be in [0, 1)"),
    ("train.lr_floor=0.1", "train.lr_floor=0.1 applies to train.lr_scheduler=cosine_floor, not to 'constant'"),
    ("train.export_sd=true", "train.export_sd writes a text-to-image SD folder: it needs train.stage=base, "
                             "model.temporal_conv=false"),
    ("data.resize=bicubic", "data.resize must be one of cover, area, crop"),
    ("train.export_defaults=trained", "train.export_defaults must be one of data, pretrained"),
])
def test_range_checks(override, message, tmp_path):
    with pytest.raises(ConfigError) as e:
        load_config(None, REQUIRED + [override])
    assert message in str(e.value) and "\n" not in str(e.value)
    # From a file: the message names the file too.
    import yaml

    key, value = override.split("=", 1)
    section, name = key.split(".")
    path = write(tmp_path, yaml.safe_dump({section: {name: yaml.safe_load(value) if value else ""}}))
    with pytest.raises(ConfigError) as e:
        load_config(path, [r for r in REQUIRED if not r.startswith(key + "=")])
    assert message in str(e.value) and str(path) in str(e.value)


def test_missing_file_and_bad_yaml(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.yaml"):
        load_config(tmp_path / "nope.yaml")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(write(tmp_path, "train: {max_steps: [1,"))


@pytest.mark.parametrize("name", ["finetune", "tune-a-video", "full", "tiny", "demo-finetune"])
def test_shipped_configs_load(name):
    overrides = {"tiny": REQUIRED, "demo-finetune": ["data.manifest=clips"]}.get(name, [])
    cfg = load_config(CONFIGS / f"{name}.yaml", overrides)
    expected = {"finetune": "temporal", "tune-a-video": "temporal+attn-q", "full": "all", "tiny": "temporal",
                "demo-finetune": "temporal"}
    assert cfg.train.trainable == expected[name]
    if name == "demo-finetune":  # (issue 24) the built-in demo base, at its own clip: runs on a fresh clone
        from vidiff.demo import model_dir
        from vidiff.spec import read_info

        d = read_info(REPO / cfg.model.pretrained).defaults
        assert (REPO / cfg.model.pretrained).resolve() == model_dir("base").resolve()
        assert (cfg.data.num_frames, cfg.data.height, cfg.data.width) == (d.num_frames, d.height, d.width)
    # The stored dict form (checkpoints keep it) rebuilds the same config.
    assert config_from_dict(cfg.to_dict()) == cfg


def test_cli_errors_are_one_line(tmp_path, capsys):
    path = write(tmp_path, "train: {max_stepz: 3}")
    assert main(["train", str(path)] + REQUIRED) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("vidiff train: error:") and "'train.max_stepz'" in err and "\n" not in err
    assert main(["train", str(CONFIGS / "tiny.yaml"), "train.max_steps"] + REQUIRED) == 2
    assert "KEY=VALUE" in capsys.readouterr().err
    assert main(["train", str(CONFIGS / "tiny.yaml")] + REQUIRED + ["--print-config"]) == 0
    assert "trainable: temporal" in capsys.readouterr().out


@pytest.mark.parametrize("overrides, message", [
    (["train.train_text_encoder=true", "data.cache=latents"], "train.train_text_encoder needs captions, not data.cache"),
    (["data.resize=area", "data.cache=latents"], "data.resize='area' reads videos; data.cache holds fixed latents"),
    (["train.export_sd=true", "model.temporal_conv=false", "model.temporal_attention=false", "train.stage=ssr"],
     "train.export_sd writes a text-to-image SD folder: it needs train.stage=base"),
])
def test_new_training_options_combine_or_fail_in_one_line(overrides, message):
    """train.train_text_encoder, data.resize and train.export_sd: the combinations that cannot work are one line
    naming the keys; the ones the demo uses load."""
    with pytest.raises(ConfigError) as e:
        load_config(None, REQUIRED + overrides)
    assert message in str(e.value) and "\n" not in str(e.value)
    cfg = load_config(None, REQUIRED + ["train.lr_scheduler=cosine_floor", "train.lr_floor=0.1", "data.resize=crop",
                                        "train.export_sd=true", "model.temporal_conv=false",
                                        "model.temporal_attention=false", "train.train_text_encoder=true"])
    assert (cfg.train.lr_floor, cfg.data.resize, cfg.train.export_sd) == (0.1, "crop", True)


@pytest.mark.parametrize("name", ["t2i", "base", "base-finish", "interpolation", "ssr"])
def test_demo_stage_configs_load(name):
    """configs/demo's `vidiff train` configs are valid as they ship (tools/train_demo.py runs them)."""
    cfg = load_config(CONFIGS.parent / "demo" / f"{name}.yaml")
    assert cfg.train.lr_scheduler == "cosine_floor" and cfg.train.lr_floor == 0.1 and cfg.train.ema
    assert cfg.train.export_sd == (name == "t2i") and not cfg.train.train_text_encoder


def test_print_config_needs_no_data(capsys):
    """`--print-config` shows a config whose data is not set yet; a run of it is refused in one line."""
    assert main(["train", str(CONFIGS / "tiny.yaml"), "model.pretrained=sd", "--print-config"]) == 0
    assert "manifest: ''" in capsys.readouterr().out
    with pytest.raises(ConfigError, match="data.manifest is empty"):
        load_config(CONFIGS / "tiny.yaml", ["model.pretrained=sd"])


def test_validation_clips_sample_with_the_models_defaults(tmp_path, monkeypatch):
    """Unset validation.steps / guidance_scale reach the pipeline as None (its vidiff.json defaults fill them:
    the demo base samples at guidance 1.5, where a fixed 7.5 gave noise); set ones are passed through."""
    import torch

    from vidiff.training import logs

    seen = []

    def pipe(prompt, **kwargs):
        seen.append(kwargs)
        return torch.zeros(1, 3, 2, 8, 8)

    pipe.unet = torch.nn.Linear(1, 1)
    monkeypatch.setattr(logs, "write_video", lambda *a, **k: None)
    monkeypatch.setattr(logs, "write_contact_sheet", lambda *a, **k: None)
    cfg = load_config(None, REQUIRED + ["validation.prompts=[a red circle]"])
    logs.render_validation(pipe, cfg, tmp_path, "cpu")
    assert seen[-1]["num_inference_steps"] is None and seen[-1]["guidance_scale"] is None
    cfg = load_config(CONFIGS / "tiny.yaml", REQUIRED + ["validation.prompts=[a red circle]", "validation.steps=3",
                                                         "validation.guidance_scale=2.0"])
    logs.render_validation(pipe, cfg, tmp_path, "cpu")
    assert seen[-1]["num_inference_steps"] == 3 and seen[-1]["guidance_scale"] == 2.0
