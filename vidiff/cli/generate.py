"""`vidiff generate`: sample video clips from text prompts with a pipeline folder."""
from __future__ import annotations

import argparse

from vidiff.cli.common import (MAX_FPS, MAX_FRAMES, MAX_SEED, MAX_SIDE, MIN_FPS, SETTING_FLAGS, CLIError,
                               check_device, check_number, check_output_path, in_flag_names, numbered_paths,
                               quiet_loading, seed_or_random, write_outputs)
from vidiff.spec import CROSS_FRAME_MODES
from vidiff.pipelines.schedulers import SCHEDULERS
from vidiff.utils import DTYPES

MAX_VIDEOS = 10_000  # clips in one run (prompts x --num-videos)
MAX_STEPS = 1000  # sampling steps (the model's noise schedule may allow fewer)
MAX_GUIDANCE = 100.0  # classifier-free guidance scale (7.5 is SD's usual; far beyond 30 only saturates)


def add_parser(sub):
    p = sub.add_parser(
        "generate", help="generate video clips from text prompts",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Sample video clips from a vidiff pipeline folder. Unset sizes and sampling settings take the "
                    "folder's defaults (its vidiff.json). Each clip gets a JSON sidecar (prompt, seed, settings).",
        epilog="examples:\n"
               "  vidiff generate --prompt \"a red circle moving right\" --out clip.mp4   (no --model: the built-in demo)\n"
               "  vidiff generate --model models/sd15-video --prompt \"a red fox running in snow\" --out fox.mp4\n"
               "  vidiff generate --model M --prompt \"waves\" --num-frames 64 --steps 25 --seed 7 --gif --out waves.mp4\n"
               "  vidiff generate --model M --prompts-file prompts.txt --num-videos 2 --out clips/clip.mp4\n"
               "  vidiff generate --cascade configs/cascade/demo.yaml --prompt \"a red circle\" --keep-intermediate --out c.mp4\n"
               "  vidiff generate --model M --zero-shot --motion-field 8,0 --prompt \"a horse galloping\" --out horse.mp4\n"
               "\n--zero-shot (Text2Video-Zero) makes coherent clips from a freshly inflated image model, before any video\n"
               "training: frame 0's latent is moved by the motion field (pixels per frame) and every frame attends to frame 0.\n"
               "\nseveral videos (prompts x --num-videos) are written as clip-000.mp4, clip-001.mp4, ...;\n"
               "video i uses seed + i, so `--seed S+i --num-videos 1` remakes it alone.\n"
               "--out's suffix picks the format: .mp4, .gif, .png (contact sheet), none (folder of PNG frames).")
    p.add_argument("--model", metavar="DIR", default=None,
                   help="vidiff pipeline folder (from `vidiff inflate`/`train`), or a cascade folder (cascade.yaml); "
                        "default: the built-in demo cascade (shapes: colours, circle/square/triangle, moving "
                        "left/right/up/down)")
    p.add_argument("--cascade", metavar="YAML", default=None,
                   help="cascade YAML (configs/cascade/): the base, then each interpolation / tsr / ssr stage")
    p.add_argument("--keep-intermediate", action="store_true",
                   help="with a cascade: also write each stage's output (clip_0-base.mp4, clip_1-interpolation.mp4, ...)")
    p.add_argument("--prompt", action="append", default=None, help="text prompt (repeat for several)")
    p.add_argument("--prompts-file", metavar="F", default=None,
                   help="text file, one prompt per line (blank lines and # comments skipped)")
    p.add_argument("--negative", default=None, metavar="TEXT", help="negative prompt (default: none)")
    p.add_argument("--num-frames", type=int, default=None, help="frames per clip (default: the model's)")
    p.add_argument("--height", type=int, default=None, help="pixels, multiple of the model's factor (default: the model's)")
    p.add_argument("--width", type=int, default=None, help="pixels, multiple of the model's factor (default: the model's)")
    p.add_argument("--steps", type=int, default=None, help="sampling steps (default: the model's)")
    p.add_argument("--guidance", type=float, default=None, help="classifier-free guidance scale, 1 = off (default: the model's)")
    p.add_argument("--scheduler", default=None,
                   help=f"{' | '.join(SCHEDULERS)} (default: the model's)")
    p.add_argument("--eta", type=float, default=0.0, help="DDIM eta (default: %(default)s)")
    p.add_argument("--seed", type=int, default=None, help="random seed; video i uses seed + i (default: random, recorded)")
    p.add_argument("--num-videos", type=int, default=1, help="videos per prompt (default: %(default)s)")
    p.add_argument("--fps", type=float, default=None, help="frame rate of the written clips (default: the model's)")
    p.add_argument("--cross-frame", choices=CROSS_FRAME_MODES, default=None,
                   help="override the model's cross-frame attention mode")
    p.add_argument("--window-size", type=int, default=None,
                   help="temporal window for long clips (default: the model's num_frames)")
    p.add_argument("--window-stride", type=int, default=None, help="stride between windows (default: window / 2)")
    p.add_argument("--long-video-noise", choices=("independent", "freenoise"), default="independent",
                   help="noise of frames past the first window: fresh, or FreeNoise's reshuffled (default: %(default)s)")
    p.add_argument("--decode-chunk-size", type=int, default=8, help="frames per VAE decode call (default: %(default)s)")
    p.add_argument("--device", default=None, help="cuda | cuda:N | mps | cpu (default: best available)")
    p.add_argument("--dtype", default=None, choices=DTYPES, help="default: fp16 on CUDA, else fp32")
    p.add_argument("--out", required=True, metavar="PATH", help="output clip, e.g. clip.mp4")
    p.add_argument("--overwrite", action="store_true",
                   help="replace existing outputs of the same names (clip, sidecar, .gif, .png, _frames/)")
    p.add_argument("--gif", action="store_true", help="also write a .gif beside each clip")
    p.add_argument("--frames-dir", action="store_true", help="also write a folder of PNG frames (<stem>_frames/)")
    p.add_argument("--contact-sheet", action="store_true", help="also write a .png contact sheet of the frames")
    p.add_argument("--zero-shot", action="store_true",
                   help="training-free video from an image model (Text2Video-Zero): motion in the latents + "
                        "cross-frame attention on frame 0; what to use before any video training")
    p.add_argument("--motion-field", metavar="DX,DY", default=None,
                   help="with --zero-shot: global motion in pixels per frame, x right, y down (default: 8,0)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    return p


def run(args) -> int:
    import time
    from pathlib import Path

    from vidiff.pipelines.folder import read_info, read_scheduler_config
    from vidiff.pipelines.schedulers import max_inference_steps

    # Everything is checked before the model loads: a typo costs no time.
    demo_model = args.model is None and args.cascade is None
    if demo_model:  # the built-in demo cascade (vidiff.demo), so a fresh install makes a clip at once
        from vidiff import demo

        try:
            args.model = str(demo.default_model())
        except FileNotFoundError as e:
            raise CLIError(str(e)) from None
    prompts = read_prompts(args)
    if demo_model:
        import os
        import sys

        print(f"using the built-in demo model {args.model} (pass --model DIR for another)", file=sys.stderr)
        if "OMP_NUM_THREADS" not in os.environ:
            import torch

            # The demo models are tiny: one thread is about as fast, while two spin-wait on a busy 2-core machine
            # (measured: the demo clip took 12 s of CPU with one thread, 90 s with two, under load).
            torch.set_num_threads(1)
        message = demo.unknown_words_message(prompts)
        if message:
            print(f"warning: {message}", file=sys.stderr)
    check_numbers(args, len(prompts))
    motion_field = _zero_shot_options(args)
    from vidiff.cli import stage_io

    if args.zero_shot and demo_model:  # zero-shot samples the demo's base alone, not its cascade
        from vidiff.pipelines.cascade import is_cascade

        if is_cascade(args.model):
            args.model = str(demo.model_dir("base"))
    if stage_io.is_cascade_request(args):
        if args.zero_shot:
            raise CLIError("--zero-shot samples one text-to-video model; it does not apply to a cascade")
        return stage_io.generate_cascade(args, prompts)
    info = stage_io.check_base_model(args.model, read_info(args.model))
    try:
        schedule = read_scheduler_config(Path(args.model) / "scheduler")
    except (FileNotFoundError, ValueError) as e:  # (json.JSONDecodeError is a ValueError)
        raise CLIError(f"{args.model}: unreadable scheduler/scheduler_config.json ({e}); re-create the folder "
                       "with `vidiff inflate`") from None
    settings = _settings(args, info, max_inference_steps(schedule))
    out = check_output_path(args.out, len(prompts) * args.num_videos, gif=args.gif, frames_dir=args.frames_dir,
                            contact_sheet=args.contact_sheet, overwrite=args.overwrite)
    seed = seed_or_random(args.seed)
    fps = args.fps if args.fps is not None else info["defaults"].get("fps", 8)
    paths = numbered_paths(out, len(prompts) * args.num_videos)
    device = check_device(args.device)

    from vidiff.pipelines.text_to_video import VideoPipeline

    quiet_loading(args.quiet)
    pipe = VideoPipeline.from_pretrained(args.model, device=device, dtype=args.dtype)
    start = time.perf_counter()
    if args.zero_shot:
        videos = _zero_shot(pipe, prompts, args, settings, seed, motion_field)
    else:
        videos = pipe(prompts, num_frames=settings["num_frames"], height=settings["height"], width=settings["width"],
                      num_inference_steps=settings["num_inference_steps"], guidance_scale=settings["guidance_scale"],
                      negative_prompt=args.negative, seed=seed, num_videos_per_prompt=args.num_videos, eta=args.eta,
                      scheduler=settings["scheduler"], cross_frame=settings["cross_frame"],
                      window_size=settings["window_size"], window_stride=settings["window_stride"],
                      long_video_noise=args.long_video_noise, decode_chunk_size=settings["decode_chunk_size"],
                      progress=not args.quiet)
    seconds = time.perf_counter() - start
    videos = [videos] if len(paths) == 1 else videos
    for index, (path, frames) in enumerate(zip(paths, videos)):
        prompt = prompts[index // args.num_videos]
        sidecar = _sidecar(args, settings, pipe, prompt=prompt, seed=seed + index, fps=fps,
                           seconds=seconds / len(paths))
        if args.zero_shot:
            sidecar.update(zero_shot=True, motion_field=list(motion_field), scheduler="ddim")
        written = write_outputs(path, frames, fps, sidecar, gif=args.gif, frames_dir=args.frames_dir,
                                contact_sheet=args.contact_sheet, overwrite=args.overwrite)
        print(f"wrote {', '.join(str(p) for p in written)} ({len(frames)} frame{'s' * (len(frames) != 1)}, "
              f"{frames.shape[2]}x{frames.shape[1]}, {fps:g} fps, seed {seed + index}, {prompt!r})")
    return 0


def read_prompts(args) -> list[str]:
    """--prompt (repeated) then --prompts-file's lines (blank lines and # comments skipped); CLIError if none."""
    from pathlib import Path

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


def check_numbers(args, num_prompts: int) -> None:
    """Every numeric flag in a sane range, before anything is read or loaded (the model's own limits, such as
    its size factor and noise schedule, are checked by `resolve_settings` next)."""
    check_number("--num-videos", args.num_videos, 1, MAX_VIDEOS)
    if num_prompts * args.num_videos > MAX_VIDEOS:
        raise CLIError(f"{num_prompts} prompts x --num-videos {args.num_videos} is more than {MAX_VIDEOS} clips; "
                       "split the prompts over several runs")
    check_number("--num-frames", args.num_frames, 1, MAX_FRAMES)
    check_number("--height", args.height, 1, MAX_SIDE, "pixels")
    check_number("--width", args.width, 1, MAX_SIDE, "pixels")
    check_number("--steps", args.steps, 1, MAX_STEPS)
    check_number("--guidance", args.guidance, 0, MAX_GUIDANCE, "(1 = off)")
    check_number("--eta", args.eta, 0, 1, "(0 = deterministic DDIM, 1 = DDPM-like)")
    check_number("--seed", args.seed, 0, MAX_SEED - num_prompts * args.num_videos)
    check_number("--fps", args.fps, MIN_FPS, MAX_FPS, "frames per second")
    check_number("--window-size", args.window_size, 1, MAX_FRAMES)
    check_number("--window-stride", args.window_stride, 1, MAX_FRAMES)
    check_number("--decode-chunk-size", args.decode_chunk_size, 1, MAX_FRAMES)


def _settings(args, info: dict, max_steps: int) -> dict:
    """The model's defaults filled in and checked against the model (`resolve_settings`), in the flags' names."""
    from vidiff.pipelines.text_to_video import resolve_settings

    try:
        return resolve_settings(info, max_steps=max_steps, num_frames=args.num_frames, height=args.height,
                                width=args.width, num_inference_steps=args.steps, guidance_scale=args.guidance,
                                scheduler=args.scheduler,
                                cross_frame=args.cross_frame or ("first" if args.zero_shot else None),
                                window_size=args.window_size, window_stride=args.window_stride,
                                decode_chunk_size=args.decode_chunk_size)
    except ValueError as e:  # name the flag, not the Python argument
        raise CLIError(in_flag_names(str(e), SETTING_FLAGS)) from None


def _sidecar(args, settings: dict, pipe, *, prompt: str, seed: int, fps: float, seconds: float) -> dict:
    """What the clip's JSON records: enough to make it again (`--seed` with the same settings and model)."""
    from pathlib import Path

    import vidiff

    return {
        "prompt": prompt, "negative_prompt": args.negative, "seed": seed,
        "model": str(Path(args.model).resolve()), "num_frames": settings["num_frames"],
        "height": settings["height"], "width": settings["width"], "fps": fps,
        "num_inference_steps": settings["num_inference_steps"], "guidance_scale": settings["guidance_scale"],
        "scheduler": settings["scheduler"], "eta": args.eta, "cross_frame": settings["cross_frame"],
        "window_size": settings["window_size"], "window_stride": settings["window_stride"],
        "long_video_noise": args.long_video_noise, "device": str(pipe.device),
        "dtype": str(pipe.dtype).replace("torch.", ""), "vidiff_version": vidiff.__version__,
        "seconds": round(seconds, 3),
    }


def _zero_shot_options(args):
    """(dx, dy) of --motion-field for --zero-shot (None without it); CLIError for bad combinations."""
    if not args.zero_shot:
        if args.motion_field is not None:
            raise CLIError("--motion-field applies to --zero-shot generation; add --zero-shot")
        return None
    from vidiff.pipelines.editing import parse_motion_field

    for flag, value, default in (("--scheduler", args.scheduler, None), ("--eta", args.eta, 0.0),
                                 ("--long-video-noise", args.long_video_noise, "independent")):
        if value != default:
            raise CLIError(f"{flag} does not apply to --zero-shot (it samples with deterministic DDIM)")
    try:
        return parse_motion_field(args.motion_field or "8,0")
    except ValueError as e:
        raise CLIError(f"--motion-field: {e}") from None


def _zero_shot(pipe, prompts, args, settings, seed, motion_field) -> list:
    """Text2Video-Zero clips, prompt-major, video i with seed + i (vidiff.pipelines.editing.zero_shot_generate)."""
    from vidiff.pipelines.editing import zero_shot_generate
    from vidiff.pipelines.text_to_video import to_uint8

    videos = []
    for index in range(len(prompts) * args.num_videos):
        video = zero_shot_generate(pipe, prompts[index // args.num_videos], motion_field=motion_field,
                                   num_frames=settings["num_frames"], height=settings["height"],
                                   width=settings["width"], num_inference_steps=settings["num_inference_steps"],
                                   guidance_scale=settings["guidance_scale"], negative_prompt=args.negative,
                                   seed=seed + index, cross_frame=settings["cross_frame"], progress=not args.quiet)
        videos.append(to_uint8(video[0]))
    return videos[0] if len(videos) == 1 else videos
