"""`vidiff generate`: sample video clips from text prompts with a pipeline folder (or a cascade)."""
from __future__ import annotations

import argparse
import sys
import time
import warnings
from pathlib import Path

import yaml

import vidiff
from vidiff.adapters.export import module_skeleton
from vidiff.adapters.embeddings import load_embedding, read_embedding
from vidiff.adapters.lora import LORA_NAME, fuse_lora, has_lora, load_lora, lora_scales, read_lora
from vidiff.cli import cascade, image_to_video
from vidiff.cli.controlnet import EXAMPLES as CONTROL_EXAMPLES, HELP as CONTROL_HELP
from vidiff.cli.controlnet import add_control_options, load_control, read_control_request
from vidiff.cli.common import (CLIError, check_device, check_flag, check_output_path, check_size, check_source,
                               clip_paths, quiet_loading, seed_or_random, write_outputs)
from vidiff.cli.options import (CLIP_EXTRAS, add_allow_large_option, add_compile_option, add_device_options,
                                add_long_video_option, add_output_options, add_sampler_options, add_seed_option, add_size_options,
                                check_compile_flag, group)
from vidiff.cli.resolve import Model, demo_model, resolve_model
from vidiff.pipelines.editing import parse_motion_field, zero_shot_generate
from vidiff.pipelines.text_to_video import VideoPipeline, to_uint8
from vidiff.models.weights import WEIGHT_SUFFIXES
from vidiff.spec import (CROSS_FRAME_MODES, LONG_VIDEO_NOISE, SETTINGS, PromptSchedule, SettingError, check_setting,
                         is_keyframe_prompt, parse_prompt_schedule)
from vidiff.utils import plural, yaml_error_line

EPILOG = """examples:
  vidiff generate --prompt "a red circle moving right" --out clip.mp4   (no --model: the built-in demo)
  vidiff generate --model models/sd15-video --prompt "a red fox running in snow" --out fox.mp4
  vidiff generate --model M --prompt "waves" --num-frames 64 --steps 25 --seed 7 --gif --out waves.mp4
  vidiff generate --model M --prompts-file prompts.txt --num-videos 2 --out clips/clip.mp4
  vidiff generate --prompt "a red circle moving left" --prompt "a blue square moving up" --out "clips/{prompt}.mp4"
  vidiff generate --cascade configs/cascade/demo.yaml --prompt "a red circle" --keep-intermediate --out c.mp4
  vidiff generate --image first.png --prompt "a red circle moving right" --out clip.mp4   (frame 0 = first.png)
  vidiff generate --num-frames 16 --prompt "0: a red circle" --prompt "8: a blue circle" --out travel.mp4
      (prompt travel; or --prompts-file schedule.json holding {"0": "...", "8": "..."})
  vidiff generate --model M --zero-shot --motion-field 8,0 --prompt "a horse galloping" --out horse.mp4
  vidiff generate --model M --lora style.safetensors:0.8 --lora motion.safetensors --prompt "a cat" --out cat.mp4
  vidiff generate --model M --embedding embeddings/purple.safetensors --prompt "a purple circle" --out p.mp4
""" + CONTROL_EXAMPLES + """

--lora FILE[:SCALE] applies a LoRA (diffusers / peft, kohya / ComfyUI / A1111 or AnimateDiff motion-LoRA keys;
text-encoder parts are skipped) at SCALE (default 1); repeat it to mix several. --fuse merges them into the
weights before sampling (faster steps; the same clip up to rounding).

""" + CONTROL_HELP + """

--image FILE (png / jpg / webp, or a video's first frame) is frame 0 of the clip, exactly, and the rest follows
the prompt: an interpolation stage trained with first-frame masks makes it (--model such a stage, or a cascade
whose first such stage runs, then the stages after it; default: the demo's i2v/ stage where installed, then the
demo cascade's stages after its base, else the demo cascade from its interpolation stage). The image is resized to cover the output size (aspect kept) and centre-cropped.

--zero-shot (Text2Video-Zero) makes coherent clips from a freshly inflated image model, before any video
training: frame 0's latent is moved by the motion field (pixels per frame) and every frame attends to frame 0.

several videos (prompts x --num-videos) are written as clip-000.mp4, clip-001.mp4, ...;
video i uses seed + i, so `--seed S+i --num-videos 1` remakes it alone.
--out "clips/{prompt}.mp4" names each clip by its prompt (lower case, '-' for spaces, other characters
dropped, at most 60), "{prompt}-{seed}.mp4" by prompt and seed; clips that would share a name get -000, -001.
--out's suffix picks the format: .mp4, .gif, .png (contact sheet), none (folder of PNG frames)."""


def add_parser(sub, help_text: str):
    p = sub.add_parser(
        "generate", help=help_text, formatter_class=argparse.RawDescriptionHelpFormatter, epilog=EPILOG,
        description="Sample video clips from a vidiff pipeline folder. Unset sizes and sampling settings take the "
                    "folder's defaults (its vidiff.json). Each clip gets a JSON sidecar (prompt, seed, settings).")
    p.add_argument("--model", metavar="DIR", default=None,
                   help="vidiff pipeline folder (from `vidiff inflate`/`train`), or a cascade folder (cascade.yaml); "
                        "default: the built-in demo cascade (shapes: colours, circle/square/triangle, moving "
                        "left/right/up/down)")
    p.add_argument("--cascade", metavar="YAML", default=None,
                   help="cascade YAML (configs/cascade/): the base, then each interpolation / tsr / ssr stage")
    p.add_argument("--image", metavar="FILE", default=None,
                   help="image-to-video: this image (or a video's first frame) is frame 0, the rest follows the "
                        "prompt (see below)")
    p.add_argument("--keep-intermediate", action="store_true",
                   help="with a cascade: also write each stage's output (clip_0-base.mp4, clip_1-interpolation.mp4, ...)")
    p.add_argument("--prompt", action="append", default=None, help="text prompt (repeat for several)")
    p.add_argument("--prompts-file", metavar="F", default=None,
                   help="text file, one prompt per line (blank lines and # comments skipped); a .json / .yaml "
                        "file is a prompt-travel schedule mapping frames to prompts ({\"0\": \"...\", \"8\": \"...\"})")
    p.add_argument("--negative", default=None, metavar="TEXT", help="negative prompt (default: none)")
    add_size_options(p)
    add_sampler_options(p)
    add_seed_option(p, "random seed; video i uses seed + i (default: random, recorded)")
    _add_generate_options(group(p, "sampling"))
    add_control_options(p)
    add_allow_large_option(p)
    add_device_options(p)
    add_compile_option(p)
    add_output_options(p, extras=CLIP_EXTRAS,
                       out_help="output clip, e.g. clip.mp4 (.mp4, .gif, .png sheet, or a folder); {prompt} and "
                                "{seed} in it name each clip by its prompt and seed, e.g. \"clips/{prompt}.mp4\"",
                       overwrite_help="replace existing outputs of the same names (clip, sidecar, .gif, .png, _frames/)")
    p.add_argument("--spatial-from", metavar="SD", default=None,
                   help="swap in the spatial (image) weights of another SD U-Net of the same architecture, keeping "
                        "the model's temporal layers / motion modules: a DreamBooth or community fine-tune (SD "
                        "folder, hub id, or single-file .safetensors / .ckpt)")
    p.add_argument("--zero-shot", action="store_true",
                   help="training-free video from an image model (Text2Video-Zero): motion in the latents + "
                        "cross-frame attention on frame 0; what to use before any video training")
    p.add_argument("--motion-field", metavar="DX,DY", default=None,
                   help="with --zero-shot: global motion in pixels per frame, x right, y down (default: 8,0)")
    return p


def _add_generate_options(options) -> None:
    options.add_argument("--eta", type=float, default=0.0, help="DDIM eta (default: %(default)s)")
    options.add_argument("--num-videos", type=int, default=1, help="videos per prompt (default: %(default)s)")
    options.add_argument("--fps", type=float, default=None, help="frame rate of the written clips (default: the model's)")
    options.add_argument("--cross-frame", choices=CROSS_FRAME_MODES, default=None,
                         help="override the model's cross-frame attention mode")
    options.add_argument("--window-size", type=int, default=None,
                         help="temporal window for long clips (default: the model's num_frames)")
    options.add_argument("--window-stride", type=int, default=None, help="stride between windows (default: window / 2)")
    options.add_argument("--long-video-noise", choices=LONG_VIDEO_NOISE, default="independent",
                         help="noise of frames past the first window: fresh, or FreeNoise's reshuffled "
                              "(default: %(default)s)")
    add_long_video_option(options)
    options.add_argument("--decode-chunk-size", type=int, default=8,
                         help="frames per VAE decode call (default: %(default)s)")
    options.add_argument("--lora", action="append", default=None, metavar="FILE[:SCALE]",
                         help="apply a LoRA file at SCALE (default 1; repeat for several, their effects add up)")
    options.add_argument("--embedding", action="append", default=None, metavar="FILE[:WORD]",
                         help="a textual-inversion embedding (A1111 / ComfyUI / diffusers file); its WORD (default: "
                              "the file's name) can then be used in prompts; repeat for several")
    options.add_argument("--fuse", action="store_true",
                         help="merge the LoRA adapters (--lora, and the model's own) into the weights before sampling")


def run(args) -> int:
    # Everything is checked before the model loads: a typo costs no time.
    prompts, travel = read_prompts(args)  # travel: the prompts at keyframes ("0: ...", "8: ..."), or None
    if args.image is not None:  # frame 0 given: its own model choice and checks (vidiff.cli.image_to_video)
        return image_to_video.generate_from_image(args, prompts, travel)
    motion_field = _zero_shot_options(args)
    if args.model is None and args.cascade is None:  # the built-in demo, so a fresh install makes a clip at once
        # zero-shot: the demo's base alone
        args.model = demo_model("base" if args.zero_shot else None, travel.prompts if travel else prompts)
    loras = parse_lora_flags(args.lora or [])
    embeddings = parse_embedding_flags(args.embedding or [])
    if cascade.is_cascade_request(args):
        _check_cascade_request(args, loras, embeddings)
        return cascade.generate_cascade(args, prompts, travel)
    model = resolve_model(args, "generate", **sampling_request(args))
    control = _check_model_request(args, model, loras, travel)
    count = check_clip_count(len(prompts), args.num_videos)
    s = model.settings
    check_size([("the clips", s.num_frames, s.height, s.width, count)], args.allow_large)  # (sampled together)
    fps = check_flag("fps", args.fps) if args.fps is not None else model.info.defaults.fps
    seed = seed_or_random(args.seed, count)
    paths = clip_paths(args.out, prompts, args.num_videos, seed)
    check_output_path(args.out, count, gif=args.gif, frames_dir=args.frames_dir, contact_sheet=args.contact_sheet,
                      overwrite=args.overwrite, paths=paths)
    device = check_device(args.device)
    check_compile_flag(args, device)

    quiet_loading(args.quiet)
    pipe = VideoPipeline.from_pretrained(model.path, device=device, dtype=args.dtype)
    if args.spatial_from:  # a personalised SD's weights first: LoRAs apply on top, as in SD tooling
        pipe.unet.load_spatial_from(args.spatial_from)
    apply_loras(pipe, loras, args.fuse)
    apply_embeddings(pipe, embeddings)
    control_model = load_control(control, pipe, model.settings.cross_frame)
    if args.compile:  # last: the U-Net as it samples (LoRAs loaded or fused); it compiles on its first step
        pipe.compile_unet()
    start = time.perf_counter()
    if args.zero_shot:
        videos = _zero_shot(pipe, prompts, args, model, seed, motion_field)
    else:
        videos = pipe.sample([travel] if travel else prompts, model.settings, negative_prompt=args.negative,
                             seed=seed, progress=not args.quiet, control=control_model)
    seconds = time.perf_counter() - start
    videos = [videos] if count == 1 else videos
    for index, (path, frames) in enumerate(zip(paths, videos)):
        prompt = prompts[index // args.num_videos]
        sidecar = _sidecar(args, model, pipe, prompt=prompt, seed=seed + index, fps=fps, seconds=seconds / count,
                           loras=loras, travel=travel)
        if control is not None:
            sidecar.update(control.sidecar())
        if args.zero_shot:
            sidecar.update(zero_shot=True, motion_field=list(motion_field), scheduler="ddim")
        written = write_outputs(path, frames, fps, sidecar, gif=args.gif, frames_dir=args.frames_dir,
                                contact_sheet=args.contact_sheet, overwrite=args.overwrite)
        print(f"wrote {', '.join(str(p) for p in written)} ({plural(len(frames), 'frame')}, "
              f"{frames.shape[2]}x{frames.shape[1]}, {fps:g} fps, seed {seed + index}, {prompt!r})")
    return 0


def _check_cascade_request(args, loras, embeddings) -> None:
    """The flags that apply to one text-to-video model, refused for a cascade."""
    for flag, value in (("--zero-shot", args.zero_shot), ("--spatial-from", args.spatial_from), ("--lora", loras),
                        ("--fuse", args.fuse), ("--controlnet", args.controlnet), ("--embedding", embeddings)):
        if value:
            raise CLIError(f"{flag} applies to one text-to-video model, not to a cascade: pass --model BASE")


def _check_model_request(args, model, loras, travel):
    """What depends on the resolved model: guidance, adapters, travel keyframes; returns the control request."""
    if args.negative is not None and model.settings.guidance_distilled:
        raise CLIError(f"--negative needs two-pass guidance, and {model.path} is a guidance-distilled student (one "
                       "pass per step, the scale an input); leave --negative out")
    if args.long_video == "keyframes":
        raise CLIError("--long-video keyframes needs a cascade with an interpolation stage to fill the keyframes in "
                       "(--cascade YAML, or no --model: the demo's); one model samples a long clip in temporal "
                       "windows")
    check_source(args.spatial_from, "--spatial-from")
    check_loras(model.path, loras, args.fuse)
    _check_travel(travel, model.settings.num_frames, args.zero_shot)
    return read_control_request(args, model)


def sampling_request(args) -> dict:
    """The sampling flags as `vidiff.spec.resolve_sampling` arguments (None: the model's default)."""
    return dict(num_frames=args.num_frames, height=args.height, width=args.width, num_inference_steps=args.steps,
                guidance_scale=args.guidance, scheduler=args.scheduler,
                cross_frame=args.cross_frame or ("first" if args.zero_shot else None),
                window_size=args.window_size, window_stride=args.window_stride, eta=args.eta,
                long_video_noise=args.long_video_noise, decode_chunk_size=args.decode_chunk_size,
                num_videos_per_prompt=args.num_videos)


def parse_lora_flags(values: list[str]) -> list[tuple[Path, float]]:
    """--lora FILE[:SCALE] values as (file, scale), checked: the file exists and is a weight file, the scale is a
    number in its SETTINGS range. A colon followed by a path (C:\\..., dir:name/x) stays part of the file name."""
    loras = []
    for value in values:
        path, sep, scale = value.rpartition(":")
        if not sep or "/" in scale or "\\" in scale or not path:
            path, scale = value, "1"
        try:
            number = check_setting("lora_scale", float(scale))
        except ValueError as e:
            reason = e.for_flags() if isinstance(e, SettingError) else f"scale {scale!r} is not a number"
            raise CLIError(f"--lora {value}: {reason} (write FILE or FILE:SCALE, e.g. style.safetensors:0.8)") from None
        file = Path(path).expanduser()
        if not file.is_file():
            what = "is a folder, not a LoRA file" if file.is_dir() else "does not exist"
            raise CLIError(f"--lora {value}: {file} {what}")
        if not file.name.lower().endswith(WEIGHT_SUFFIXES):
            raise CLIError(f"--lora {value}: {file} is not a weight file ({', '.join(WEIGHT_SUFFIXES)})")
        loras.append((file, number))
    return loras


def parse_embedding_flags(values: list[str]) -> list[tuple[Path, str | None]]:
    """--embedding FILE[:WORD] values as (file, word or None), each file read once here (format, SDXL or not)."""
    embeddings = []
    for value in values:
        file, word = Path(value), None
        if not file.is_file() and ":" in value:
            name, word = value.rsplit(":", 1)
            file = Path(name)
        if not file.is_file():
            raise CLIError(f"--embedding {value}: {file} is not a file")
        if word is not None and (not word or any(c.isspace() for c in word)):
            raise CLIError(f"--embedding {value}: the word {word!r} must be one word (FILE:WORD)")
        try:
            read_embedding(file)
        except (ValueError, OSError) as e:
            raise CLIError(f"--embedding {value}: {e}") from None
        embeddings.append((file, word))
    return embeddings


def apply_embeddings(pipe, embeddings: list[tuple[Path, str | None]]) -> None:
    """Each --embedding's word(s) added to the pipeline's tokenizer and text encoder."""
    for path, word in embeddings:
        try:
            load_embedding(pipe.tokenizer, pipe.text_encoder, path, word)
        except ValueError as e:
            raise CLIError(f"--embedding {path}: {e}") from None


def check_loras(model_path, loras: list[tuple[Path, float]], fuse: bool) -> None:
    """Every --lora file fits the model's U-Net (keys checked against its layers, built from its config alone,
    before the model loads); --fuse needs something to merge."""
    if fuse and not loras and not (Path(model_path) / "unet" / LORA_NAME).is_file():
        raise CLIError("--fuse merges LoRA adapters into the weights, and there are none: add --lora FILE")
    if loras:
        modules = module_skeleton(model_path)
        with warnings.catch_warnings():  # (skipped text-encoder keys: said once, when the adapter loads)
            warnings.simplefilter("ignore")
            for path, _ in loras:
                read_lora(path, modules)


def apply_loras(pipe, loras: list[tuple[Path, float]], fuse: bool) -> None:
    """Load each --lora adapter at its scale beside the model's own; with --fuse merge them all."""
    for path, scale in loras:
        load_lora(pipe.unet, path, scale=scale)
    if loras:
        print(f"LoRA: {', '.join(f'{name} x{scale:g}' for name, scale in lora_scales(pipe.unet).items())}"
              f"{' (fused)' if fuse else ''}", file=sys.stderr)
    if fuse and has_lora(pipe.unet):
        fuse_lora(pipe.unet)


def check_clip_count(num_prompts: int, num_videos: int) -> int:
    """Clips in this run (prompts x --num-videos, --num-videos checked first), within one run's limit."""
    check_flag("num_videos_per_prompt", num_videos)
    most = SETTINGS["num_videos_per_prompt"].high
    if num_prompts * num_videos > most:
        raise CLIError(f"{num_prompts} prompts x --num-videos {num_videos} is more than {most:g} clips; split the "
                       "prompts over several runs")
    return num_prompts * num_videos


def read_prompts(args) -> tuple[list[str], PromptSchedule | None]:
    """--prompt (repeated) then --prompts-file's lines (blank lines and # comments skipped); CLIError if none.
    Prompts that all start with a frame number ("0: a red circle", "8: a blue circle") are one clip's prompt
    travel: (its one name, the PromptSchedule); otherwise (the prompts, None)."""
    if args.prompts_file and Path(args.prompts_file).suffix.lower() in SCHEDULE_SUFFIXES:
        if args.prompt:
            raise CLIError(f"--prompts-file {args.prompts_file!r} is a prompt schedule: give it or --prompt, not both")
        travel = _read_schedule(Path(args.prompts_file))
        return [str(travel)], travel
    prompts = _prompt_texts(args)
    keyed = [is_keyframe_prompt(p) for p in prompts]
    if not any(keyed):
        return prompts, None
    if not all(keyed):
        raise CLIError("prompt travel: every --prompt needs a frame ('0: a red circle', '8: a blue circle'), or "
                       "none does (several prompts: one clip each)")
    try:
        travel = parse_prompt_schedule(prompts)
    except ValueError as e:
        raise CLIError(f"prompt travel: {e}") from None
    return [str(travel)], travel


def _check_travel(travel: PromptSchedule | None, num_frames: int, zero_shot: bool) -> None:
    if travel is None:
        return
    if zero_shot:
        raise CLIError("prompt travel ('N: prompt') does not apply to --zero-shot; give one prompt")
    try:
        travel.check_frames(num_frames)
    except SettingError as e:
        raise CLIError(f"{e.for_flags()}: the clip must reach every prompt keyframe") from None


SCHEDULE_SUFFIXES = (".json", ".yaml", ".yml")


def _read_schedule(file: Path) -> PromptSchedule:
    """A prompt-travel schedule file (AnimateDiff's prompt-travel JSON, or YAML): a mapping of frames to prompts."""
    where = f"--prompts-file {str(file)!r}"
    if not file.is_file():
        raise CLIError(f"{where} {'is a folder' if file.is_dir() else 'does not exist'}; give a .json / .yaml "
                       "schedule mapping frames to prompts")
    try:
        content = yaml.safe_load(file.read_text(encoding="utf-8-sig"))  # (JSON is YAML)
    except UnicodeDecodeError as e:
        raise CLIError(f"{where} is not UTF-8 text ({e.reason} at byte {e.start})") from None
    except yaml.YAMLError as e:
        raise CLIError(f"{where} is not valid JSON / YAML: {yaml_error_line(e)}") from None
    if not isinstance(content, dict):
        raise CLIError(f"{where} must map frames to prompts, e.g. {{\"0\": \"a red circle\", \"8\": \"a blue "
                       f"circle\"}}; got a {type(content).__name__}")
    try:
        return parse_prompt_schedule(content)
    except ValueError as e:
        raise CLIError(f"{where}: {e}") from None


def _prompt_texts(args) -> list[str]:
    prompts = list(args.prompt or [])
    if args.prompts_file:
        file = Path(args.prompts_file)
        if not file.is_file():
            what = "is a folder, not a text file" if file.is_dir() else "does not exist"
            raise CLIError(f"--prompts-file {str(file)!r} {what}; give a text file with one prompt per line")
        try:
            lines = file.read_text(encoding="utf-8-sig").splitlines()
        except UnicodeDecodeError as e:
            raise CLIError(f"--prompts-file {str(file)!r} is not UTF-8 text ({e.reason} at byte {e.start}); save it "
                           "as UTF-8 with one prompt per line") from None
        prompts += [line.strip() for line in lines if line.strip() and not line.lstrip().startswith("#")]
    if not prompts:
        raise CLIError("no prompt: pass --prompt \"...\" or --prompts-file F")
    return prompts


def _sidecar(args, model: Model, pipe, *, prompt: str, seed: int, fps: float, seconds: float, loras=(),
             travel: PromptSchedule | None = None) -> dict:
    """What the clip's JSON records: enough to make it again (`--seed` with the same settings and model)."""
    settings = {k: v for k, v in model.settings.as_dict().items() if k != "num_videos_per_prompt"}
    extra = {}
    if loras:
        extra.update(loras=[{"file": str(path.resolve()), "scale": scale} for path, scale in loras], fused=args.fuse)
    if args.embedding:
        extra.update(embeddings=args.embedding)
    if travel is not None:
        extra.update(prompt_schedule={str(frame): text for frame, text in travel.keyframes})
    return {**extra, "prompt": prompt, "negative_prompt": args.negative, "seed": seed, "model": str(Path(model.path).resolve()),
            **settings, "unet_evaluations": model.settings.unet_evaluations,
            **({"spatial_from": str(args.spatial_from)} if args.spatial_from else {}),
            "fps": fps, "device": str(pipe.device), "dtype": str(pipe.dtype).replace("torch.", ""),
            "compile": args.compile, "vidiff_version": vidiff.__version__, "seconds": round(seconds, 3)}


def _zero_shot_options(args):
    """(dx, dy) of --motion-field for --zero-shot (None without it); CLIError for bad combinations."""
    if not args.zero_shot:
        if args.motion_field is not None:
            raise CLIError("--motion-field applies to --zero-shot generation; add --zero-shot")
        return None
    for flag, value, default in (("--scheduler", args.scheduler, None), ("--eta", args.eta, 0.0),
                                 ("--long-video-noise", args.long_video_noise, "independent")):
        if value != default:
            raise CLIError(f"{flag} does not apply to --zero-shot (it samples with deterministic DDIM)")
    try:
        return parse_motion_field(args.motion_field or "8,0")
    except ValueError as e:
        raise CLIError(f"--motion-field: {e}") from None


def _zero_shot(pipe, prompts, args, model: Model, seed, motion_field) -> list:
    """Text2Video-Zero clips, prompt-major, video i with seed + i (vidiff.pipelines.editing.zero_shot_generate)."""
    s, videos = model.settings, []
    for index in range(len(prompts) * args.num_videos):
        video = zero_shot_generate(pipe, prompts[index // args.num_videos], motion_field=motion_field,
                                   num_frames=s.num_frames, height=s.height, width=s.width,
                                   num_inference_steps=s.num_inference_steps, guidance_scale=s.guidance_scale,
                                   negative_prompt=args.negative, seed=seed + index, cross_frame=s.cross_frame,
                                   progress=not args.quiet)
        videos.append(to_uint8(video[0]))
    return videos[0] if len(videos) == 1 else videos
