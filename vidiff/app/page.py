"""The Gradio page of `vidiff app`: generate, edit, interpolate / upscale, each a tab with its form on the left and
what it wrote on the right (the clip, its GIF and contact sheet, the JSON settings, every file to download).

The buttons call `vidiff.app.handlers`, which runs the matching `vidiff` command; the page shows the command's
one-line message when a value is wrong, never a traceback. One request runs at a time (they share the CPU or GPU),
with the sampler's progress bars shown while it runs (Gradio tracks vidiff's tqdm bars).
"""
from __future__ import annotations

import sys
import traceback
from pathlib import Path

import gradio as gr

from vidiff import demo
from vidiff.app import handlers
from vidiff.app.handlers import MB, AppError, AppModels
from vidiff.pipelines.editing import EDIT_METHODS
from vidiff.spec import SCHEDULER_NAMES

MODEL_DEFAULT = "the model's"      # the scheduler choice that leaves it to the model
QUEUE = "vidiff"                   # every button's requests share one worker: one sampling run at a time
OUTPUTS = 6                        # status, clip, GIF, contact sheet, settings, downloads
# small clips (the demo's are 32 px) drawn large and sharp rather than as a thumbnail
CSS = (".vidiff-still .image-frame, .vidiff-still img { width: 100% !important; height: auto !important; }"
       ".vidiff-still img { object-fit: contain !important; image-rendering: pixelated; }")


def _respond(call) -> tuple:
    """Run one request; its result (or its one-line error) as the output panel's values."""
    try:
        result = call()
    except AppError as e:
        return (f"error: {e}",) + (None,) * (OUTPUTS - 1)
    except Exception as e:  # not the user's mistake: one line here, the traceback in the server's log
        traceback.print_exc(file=sys.stderr)
        message = " ".join(f"{type(e).__name__}: {e}".split())
        return (f"internal error ({message}); the server's log has the traceback",) + (None,) * (OUTPUTS - 1)
    return (result.message, str(result.clip), _path(result.gif), _path(result.contact_sheet), result.settings,
            [str(p) for p in result.files])


def _path(path: Path | None) -> str | None:
    return None if path is None else str(path)


def _output_panel(prefix: str) -> list:
    """The components a request fills, in `_respond`'s order; ids `<prefix>-status`, `<prefix>-video`, ..."""
    status = gr.Textbox(label="Status", interactive=False, elem_id=f"{prefix}-status")
    video = gr.Video(label="Clip", interactive=False, elem_id=f"{prefix}-video")
    with gr.Row():
        gif = gr.Image(label="GIF", type="filepath", interactive=False, elem_id=f"{prefix}-gif",
                       elem_classes="vidiff-still")
        sheet = gr.Image(label="Contact sheet", type="filepath", interactive=False, elem_id=f"{prefix}-sheet",
                         elem_classes="vidiff-still")
    settings = gr.JSON(label="Settings (the JSON sidecar)", elem_id=f"{prefix}-settings")
    files = gr.File(label="Downloads", file_count="multiple", interactive=False, elem_id=f"{prefix}-files")
    return [status, video, gif, sheet, settings, files]


def _number(label: str, default, elem_id: str, *, whose: str = MODEL_DEFAULT, info: str | None = None):
    """A number field, left empty for the default (`whose`: the model's), which its placeholder shows. A text
    box: the command's own parser reads it (an empty gr.Number would send 0), so "abc" is its one-line error."""
    hint = "random" if default is None else default if isinstance(default, str) else f"{whose}: {default:g}"
    return gr.Textbox(label=label, placeholder=hint, info=info, elem_id=elem_id)


def _generate_tab(models: AppModels, out_dir: Path) -> None:
    d = models.base_defaults()
    choices = list(models.generate_choices())
    with gr.Row():
        with gr.Column():
            prompt = gr.Textbox(label="Prompt", placeholder=demo.EXAMPLE_PROMPT, elem_id="generate-prompt")
            negative = gr.Textbox(label="Negative prompt", elem_id="generate-negative")
            model = gr.Radio(choices, value=choices[0], label="Model", elem_id="generate-model",
                             info="sizes, steps and guidance are the base's; later stages use their own")
            with gr.Row():
                frames = _number("Frames", d.num_frames, "generate-frames")
                height = _number("Height", d.height, "generate-height")
                width = _number("Width", d.width, "generate-width")
            with gr.Row():
                steps = _number("Steps", d.num_inference_steps, "generate-steps")
                guidance = _number("Guidance", d.guidance_scale, "generate-guidance")
                seed = _number("Seed", None, "generate-seed")
            scheduler = gr.Dropdown([MODEL_DEFAULT, *SCHEDULER_NAMES], value=MODEL_DEFAULT, label="Scheduler",
                                    info=f"{MODEL_DEFAULT}: {d.scheduler}; a cascade's stages keep their own",
                                    elem_id="generate-scheduler")
            button = gr.Button("Generate", variant="primary", elem_id="generate-button")
        with gr.Column():
            outputs = _output_panel("generate")

    def on_generate(prompt, negative, model, frames, height, width, steps, guidance, seed, scheduler,
                    progress=gr.Progress(track_tqdm=True)):
        return _respond(lambda: handlers.generate(
            models, out_dir, prompt=prompt, negative=negative, model=model, num_frames=frames, height=height,
            width=width, steps=steps, guidance=guidance, seed=seed,
            scheduler=None if scheduler == MODEL_DEFAULT else scheduler))

    button.click(on_generate, [prompt, negative, model, frames, height, width, steps, guidance, seed, scheduler],
                 outputs, concurrency_id=QUEUE, show_progress_on=outputs[1])


def _edit_tab(models: AppModels, out_dir: Path, max_upload_mb: float) -> None:
    d = models.base_defaults()
    with gr.Row():
        with gr.Column():
            video = gr.File(label=f"Video to edit (up to {max_upload_mb:g} MB)", type="filepath",
                            elem_id="edit-upload")
            source = gr.Textbox(label="Source prompt", info="what the video shows", elem_id="edit-source")
            prompt = gr.Textbox(label="Prompt", info="what it should show", elem_id="edit-prompt")
            negative = gr.Textbox(label="Negative prompt", elem_id="edit-negative")
            method = gr.Dropdown(list(EDIT_METHODS), value=EDIT_METHODS[0], label="Method", elem_id="edit-method",
                                 info="zero-shot: no training (Text2Video-Zero); tune: Tune-A-Video on the clip first")
            with gr.Row():
                strength = _number("Strength", "empty: DDIM inversion" if d.edit_strength is None else
                                   d.edit_strength, "edit-strength", info="SDEdit noise, 0..1")
                tune_steps = _number("Tuning steps", 300, "edit-tune-steps", whose="default")
            with gr.Row():
                frames = _number("Frames", d.num_frames, "edit-frames", info="taken from the clip's start")
                steps = _number("Steps", d.num_inference_steps, "edit-steps")
                guidance = _number("Guidance", d.edit_guidance or d.guidance_scale, "edit-guidance")
                seed = _number("Seed", None, "edit-seed")
            button = gr.Button("Edit", variant="primary", elem_id="edit-button")
        with gr.Column():
            outputs = _output_panel("edit")

    def on_edit(video, source, prompt, negative, method, strength, tune_steps, frames, steps, guidance, seed,
                progress=gr.Progress(track_tqdm=True)):
        return _respond(lambda: handlers.edit(
            models, out_dir, video=video, prompt=prompt, source_prompt=source, negative=negative, method=method,
            strength=strength, num_frames=frames, steps=steps, guidance=guidance, seed=seed, tune_steps=tune_steps,
            max_upload_mb=max_upload_mb))

    button.click(on_edit, [video, source, prompt, negative, method, strength, tune_steps, frames, steps, guidance,
                           seed], outputs, concurrency_id=QUEUE, show_progress_on=outputs[1])


def _stage_tab(models: AppModels, out_dir: Path, max_upload_mb: float) -> None:
    with gr.Row():
        with gr.Column():
            operation = gr.Radio(["interpolate", "upscale"], value="interpolate", label="Operation",
                                 elem_id="stage-operation", info="interpolate: more frames; upscale: more pixels")
            video = gr.File(label=f"Video (up to {max_upload_mb:g} MB)", type="filepath", elem_id="stage-upload")
            prompt = gr.Textbox(label="Prompt", info="optional; without one guidance is off", elem_id="stage-prompt")
            with gr.Row():
                factor = _number("Factor", "the stage's", "stage-factor", info="interpolate: frame-rate factor")
                noise = _number("Noise level", "the stage's", "stage-noise", info="upscale: noise on the low-res input")
            with gr.Row():
                steps = _number("Steps", "the stage's", "stage-steps")
                guidance = _number("Guidance", "the stage's", "stage-guidance")
                seed = _number("Seed", None, "stage-seed")
            button = gr.Button("Run", variant="primary", elem_id="stage-button")
        with gr.Column():
            outputs = _output_panel("stage")

    def on_stage(operation, video, prompt, factor, noise, steps, guidance, seed,
                 progress=gr.Progress(track_tqdm=True)):
        return _respond(lambda: handlers.run_stage(
            models, out_dir, operation, video=video, prompt=prompt, factor=factor, noise_level=noise,
            steps=steps, guidance=guidance, seed=seed, max_upload_mb=max_upload_mb))

    button.click(on_stage, [operation, video, prompt, factor, noise, steps, guidance, seed], outputs,
                 concurrency_id=QUEUE, show_progress_on=outputs[1])


def describe(models: AppModels) -> str:
    """The page's header line: which models run."""
    if models.demo:
        return (f"The built-in demo models (tiny, trained on moving shapes): prompts such as "
                f"*{demo.EXAMPLE_PROMPT}*, with the words {', '.join(demo.vocabulary())}.")
    stages = (f"; interpolate: `{models.interpolation or 'the demo stage'}`, upscale: "
              f"`{models.ssr or 'the demo stage'}`")
    return f"Cascade `{models.cascade}`, base `{models.base}`{stages}." if models.cascade else \
        f"Base `{models.base}`{stages}."


def build_app(models: AppModels, out_dir: Path, max_upload_mb: float = 200) -> gr.Blocks:
    """The page (not launched)."""
    # Gradio keeps copies of uploads and shown files in its cache (GRADIO_TEMP_DIR): hourly, those over an hour old go
    with gr.Blocks(title="vidiff", analytics_enabled=False, delete_cache=(3600, 3600)) as app:
        gr.Markdown(f"# vidiff\n{describe(models)} Every request writes a new clip, its GIF, contact sheet and "
                    f"JSON settings under `{out_dir}`.")
        with gr.Tab("Generate", elem_id="tab-generate"):
            _generate_tab(models, out_dir)
        with gr.Tab("Edit", elem_id="tab-edit"):
            _edit_tab(models, out_dir, max_upload_mb)
        with gr.Tab("Interpolate / upscale", elem_id="tab-stage"):
            _stage_tab(models, out_dir, max_upload_mb)
    return app


def launch(models: AppModels, out_dir: Path, *, host: str, port: int, max_upload_mb: float) -> None:
    """Serve the page at http://host:port until interrupted: no share link, no analytics, nothing served from
    this machine beyond the app and `out_dir`, uploads over `max_upload_mb` refused."""
    app = build_app(models, out_dir, max_upload_mb)
    app.queue(default_concurrency_limit=1)
    app.launch(server_name=host, server_port=port, share=False, inbrowser=False, show_error=False, quiet=True,
               max_file_size=int(max_upload_mb * MB), allowed_paths=[str(out_dir)], footer_links=[],
               run_history=False, mcp_server=False, pwa=False, enable_monitoring=False, ssr_mode=False, css=CSS)
