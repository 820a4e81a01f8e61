"""The bottom layer (vidiff.spec, torch-free) and the stage home (vidiff.stages): one check per setting, the
pipeline folder's description as a type, each stage answering for itself."""
from __future__ import annotations

import ast
import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import pytest

from vidiff.spec import (SETTINGS, Defaults, PipelineInfo, SamplingSettings, SettingError, check_setting, guidance_on,
                         read_info, resolve_sampling)

REPO = Path(__file__).resolve().parents[1]
PACKAGE = REPO / "vidiff"


def info(**changes) -> PipelineInfo:
    """A pixel-space 32x32 model's description (spatial factor 4), 8 frames by default."""
    return PipelineInfo(latent=False, in_channels=3, vae_scale_factor=1, unet_spatial_factor=4, scaling_factor=1.0,
                        defaults=Defaults(num_frames=8, height=32, width=32, num_inference_steps=20,
                                          guidance_scale=1.5), **changes)


# ---------------------------------------------------------------------------------------------------------------
# Settings
# ---------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", sorted(SETTINGS))
def test_every_setting_refuses_out_of_range_wrong_type_and_non_finite(name):
    spec = SETTINGS[name]
    assert check_setting(name, None) is None
    assert check_setting(name, spec.kind(spec.low)) == spec.low and check_setting(name, spec.kind(spec.high))
    below = spec.low - 1 if spec.kind is int else spec.low - abs(spec.low) - 1e-3
    for bad in (below, spec.high + 1, float("nan"), True, "3"):
        with pytest.raises(SettingError) as error:
            check_setting(name, bad)
        assert error.value.name == name and str(error.value).startswith(f"{name} ")
        assert error.value.for_flags().startswith(spec.flag + " ") and "\n" not in str(error.value)
    if spec.kind is int:
        with pytest.raises(SettingError, match="must be an integer"):
            check_setting(name, spec.low + 0.5)


def test_a_setting_range_can_be_narrowed_by_the_model():
    assert check_setting("num_inference_steps", 998, high=998) == 998
    with pytest.raises(SettingError, match="between 1 and 998, got 999"):
        check_setting("num_inference_steps", 999, high=998)


def test_resolve_sampling_fills_defaults_and_checks_the_model():
    s = resolve_sampling(info(), num_frames=20, max_steps=998)
    assert isinstance(s, SamplingSettings) and s.num_frames == 20 and s.height == 32
    assert (s.window_size, s.window_stride) == (8, 4) and s.guidance_scale == 1.5 and s.guided
    assert not resolve_sampling(info(), guidance_scale=1.0).guided and not guidance_on(0.5)
    for request, match in (({"height": 30}, "height must be a positive multiple of 4"),
                           ({"num_inference_steps": 999}, "num_inference_steps must be between 1 and 998"),
                           ({"window_size": 4, "window_stride": 6},
                            "window_stride must not exceed the window size \\(4\\), got 6"),
                           ({"scheduler": "heun"}, "scheduler must be one of ddim, dpm-solver\\+\\+"),
                           ({"cross_frame": "all"}, "cross_frame must be one of none, first, sparse-causal"),
                           ({"long_video_noise": "fresh"}, "long_video_noise must be one of independent"),
                           ({"eta": 2.0}, "eta must be between 0 and 1")):
        with pytest.raises(SettingError, match=match):
            resolve_sampling(info(), max_steps=998, **request)


# ---------------------------------------------------------------------------------------------------------------
# PipelineInfo
# ---------------------------------------------------------------------------------------------------------------
def test_pipeline_info_round_trips_through_json_and_keeps_unknown_keys():
    original = info(stage="ssr", stage_options={"factor": 2}, extra={"tuned_on": {"clip": "abc"}})
    data = json.loads(json.dumps(original.to_json()))
    assert data["tuned_on"] == {"clip": "abc"} and data["defaults"]["num_frames"] == 8
    assert PipelineInfo.from_json(data) == original
    assert original.with_defaults(cross_frame="first").defaults.cross_frame == "first"
    assert original.spatial_factor == 4


@pytest.mark.parametrize("change, match", [
    (lambda d: d.pop("stage"), "lacks the key 'stage'"),
    (lambda d: d.update(stage="superres"), "unknown stage 'superres'"),
    (lambda d: d["defaults"].pop("fps"), "defaults lack fps"),
    (lambda d: d["defaults"].update(num_frames="8"), "defaults.num_frames must be a finite"),
    (lambda d: d["defaults"].update(guidance_scale=float("inf")), "defaults.guidance_scale must be a finite"),
    (lambda d: d["defaults"].update(scheduler="heun"), "unknown scheduler 'heun'"),
    (lambda d: d.update(vae_scale_factor=0), "vae_scale_factor must be an integer >= 1"),
    (lambda d: d.update(defaults=[]), "defaults must be an object"),
])
def test_read_info_names_the_broken_key(tmp_path, change, match):
    folder = tmp_path / "model"
    (folder / "unet").mkdir(parents=True)
    (folder / "unet" / "config.json").write_text("{}")
    data = info().to_json()
    change(data)
    (folder / "vidiff.json").write_text(json.dumps(data))
    with pytest.raises(ValueError, match=match):
        read_info(folder)
    (folder / "vidiff.json").write_text("{not json")
    with pytest.raises(ValueError, match="is not a readable JSON file"):
        read_info(folder)


def test_spec_is_torch_free():
    code = "import sys, vidiff.spec; print('torch' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=REPO)
    assert result.stdout.strip() == "False"


# ---------------------------------------------------------------------------------------------------------------
# Stages answer for themselves
# ---------------------------------------------------------------------------------------------------------------
def test_stage_for_reads_the_folder_description():
    from vidiff.stages import InterpolationStage, SSRStage, Stage, TSRStage, stage_for

    base = stage_for(info())
    assert type(base) is Stage and not base.takes_video and base.frame_rate_factor() == 1
    with pytest.raises(ValueError, match="not a cascade stage"):
        base.output_size(info(), (8, 32, 32))
    interp = stage_for(info(stage="interpolation", stage_options={"mask_factors": [2, 4], "mask_modes": ["future"]}))
    assert isinstance(interp, InterpolationStage) and interp.conditioning_channels == 4
    assert interp.output_size(info(), (8, 32, 32), 4) == (29, 32, 32) and interp.frame_rate_factor(2) == 2
    with pytest.raises(ValueError, match="factor 3 is not supported"):
        interp.check_factor(3, "this model")
    tsr = stage_for(info(stage="tsr", stage_options={"factor": 2}))
    assert isinstance(tsr, TSRStage) and tsr.output_size(info(), (8, 32, 32)) == (16, 32, 32)
    ssr = stage_for(info(stage="ssr", stage_options={"factor": 2, "max_noise_level": 100, "noise_level": 0}))
    assert isinstance(ssr, SSRStage) and ssr.output_size(info(), (8, 16, 16)) == (8, 32, 32)
    assert ssr.sidecar(None, None) == {"factor": 2, "noise_level": 0}
    with pytest.raises(ValueError, match="noise_level must be an integer in \\[0, 100\\]"):
        ssr.check_noise_level(101, "this model")
    with pytest.raises(ValueError, match="stage_options in vidiff.json are not usable"):
        stage_for(info(stage="tsr", stage_options={"factor": 1}))


# ---------------------------------------------------------------------------------------------------------------
# The layers, measured on the source
# ---------------------------------------------------------------------------------------------------------------
def _modules() -> dict[str, ast.Module]:
    return {str(p.relative_to(REPO)): ast.parse(p.read_text()) for p in PACKAGE.rglob("*.py")}


def _imports(tree: ast.Module) -> set[str]:
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
    return found


def test_no_stage_name_tests_outside_the_stage_home():
    """`stage == "ssr"` and the like live in vidiff/stages only: everything else asks the Stage object."""
    offenders = []
    for path, tree in _modules().items():
        if path.startswith("vidiff/stages/"):
            continue
        for node in ast.walk(tree):
            if isinstance(node, ast.Compare) and any(isinstance(op, (ast.Eq, ast.NotEq)) for op in node.ops):
                sides = [node.left, *node.comparators]
                names = [s for s in sides if (isinstance(s, ast.Name) and s.id == "stage")
                         or (isinstance(s, ast.Attribute) and s.attr == "stage")]
                strings = [s for s in sides if isinstance(s, ast.Constant) and s.value in
                           ("base", "interpolation", "tsr", "ssr", "extend")]
                if names and strings:
                    offenders.append(f"{path}:{node.lineno}")
    assert not offenders, offenders


def test_pipelines_and_training_do_not_import_each_other_both_ways():
    modules = _modules()
    pipelines_to_training = [p for p, t in modules.items() if p.startswith("vidiff/pipelines/")
                             and any(m.startswith("vidiff.training") for m in _imports(t))]
    assert not pipelines_to_training, pipelines_to_training
    bottom = [p for p, t in modules.items() if p.split("/")[1] in ("models", "data", "stages", "adapters", "control",
                                                                   "spec.py", "utils.py")
              and any(m.startswith(("vidiff.pipelines", "vidiff.training", "vidiff.cli")) for m in _imports(t))]
    assert not bottom, bottom
    # adapters sit beside stages: models, spec and utils below them, nothing beside or above
    sideways = [p for p, t in modules.items() if p.startswith("vidiff/adapters/")
                and any(m.startswith(("vidiff.stages", "vidiff.data", "vidiff.eval", "vidiff.config")) for m in _imports(t))]
    assert not sideways, sideways
    # control sits beside stages and adapters: models, data, spec and utils below it
    control = [p for p, t in modules.items() if p.startswith("vidiff/control/")
               and any(m.startswith(("vidiff.stages", "vidiff.adapters", "vidiff.eval", "vidiff.config"))
                       for m in _imports(t))]
    assert not control, control


def test_no_import_cycle_between_vidiff_modules():
    """Module-level and function-level imports alike: a cycle hidden inside a function is still a cycle."""
    modules = _modules()
    names = {p[:-3].replace("/", ".").removesuffix(".__init__"): t for p, t in modules.items()}
    graph = {}
    for name, tree in names.items():
        targets = set()
        for module in _imports(tree):
            while module and module not in names:
                module = module.rpartition(".")[0]
            if module and module != name and not name.startswith(module + "."):  # a package's own submodules
                targets.add(module)
        graph[name] = targets
    # Tarjan-free check: depth-first search with colours
    state, cycle = {}, []

    def visit(node, path):
        state[node] = "open"
        for nxt in graph[node]:
            if state.get(nxt) == "open":
                cycle.append(path[path.index(nxt):] + [nxt] if nxt in path else [node, nxt])
            elif nxt not in state:
                visit(nxt, path + [nxt])
        state[node] = "done"

    for node in graph:
        if node not in state:
            visit(node, [node])
    # a package __init__ re-exporting its submodules is not a cycle of behaviour: drop package -> child edges
    cycle = [c for c in cycle if not all(b.startswith(a + ".") or a.startswith(b + ".") for a, b in zip(c, c[1:]))]
    assert not cycle, cycle[:3]


def test_no_function_over_60_lines():
    long = [f"{path}:{node.name} ({node.end_lineno - node.lineno + 1} lines)"
            for path, tree in _modules().items() for node in ast.walk(tree)
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.end_lineno - node.lineno + 1 > 60]
    assert not long, long


def test_sampling_settings_fields_each_have_one_range():
    """Every numeric SamplingSettings field is a SETTINGS entry, so `resolve_sampling` checks it by the table."""
    numeric = [f.name for f in dataclasses.fields(SamplingSettings)
               if f.name not in ("scheduler", "cross_frame", "long_video_noise", "guidance_distilled")]  # (the model's)
    assert set(numeric) <= set(SETTINGS), set(numeric) - set(SETTINGS)
