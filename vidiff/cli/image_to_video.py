"""`vidiff generate --image FILE`: the image is frame 0, the rest follows the prompt (vidiff.pipelines.image_to_video).

Which model: `--model` an interpolation stage trained with first-frame (or future-prediction) masks, or a cascade
(`--cascade` / a cascade folder), whose first such stage makes the clip and whose later stages run on it; without
either, the built-in demo's image-to-video stage, then the demo cascade's stages after its base (interpolation x2,
SSR x2), as `generate` makes a demo clip. Every check (the image read and fitted, the stage, the sizes, the
outputs) comes before any model loads.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import vidiff
from vidiff import demo
from vidiff.cli.common import (CLIError, check_device, check_flag, check_output_path, check_size, clip_paths,
                               quiet_loading, seed_or_random, write_outputs)
from vidiff.cli.resolve import demo_model, resolve_settings
from vidiff.pipelines.cascade import CascadePipeline, StageSpec, is_cascade, read_cascade
from vidiff.pipelines.image_to_video import as_image, check_first_frame_stage, first_frame_stage, image_to_video
from vidiff.pipelines.text_to_video import VideoPipeline, to_uint8
from vidiff.spec import RequestTooLarge, read_info
from vidiff.stages.cascade import check_pixels
from vidiff.utils import plural

# generate's flags an image-to-video run does not take (flag, args name, its unset value)
NOT_FOR_IMAGES = (("--zero-shot", "zero_shot", False), ("--motion-field", "motion_field", None),
                  ("--spatial-from", "spatial_from", None), ("--lora", "lora", None),
                  ("--embedding", "embedding", None), ("--fuse", "fuse", False), ("--controlnet", "controlnet", None),
                  ("--keep-intermediate", "keep_intermediate", False),
                  ("--cross-frame", "cross_frame", None), ("--window-size", "window_size", None),
                  ("--window-stride", "window_stride", None), ("--eta", "eta", 0.0),
                  ("--long-video-noise", "long_video_noise", "independent"), ("--long-video", "long_video", "auto"))


@dataclass
class Plan:
    """The checked request: the stages that run (the first makes the clip from the image), its settings, the
    output's size and frame rate."""
    specs: list[StageSpec]
    source: str          # what --model / --cascade named (or the demo's folder)
    settings: object     # SamplingSettings of the first stage
    sizes: list[tuple[int, int, int]]
    fps: float


def read_image_arg(path: str):
    """--image as uint8 `(h, w, 3)`: an image file or a video's first frame; CLIError when it cannot be read."""
    file = Path(path)
    if not file.is_file():
        raise CLIError(f"--image {path!r} {'is a folder, not an image' if file.is_dir() else 'does not exist'}")
    try:
        return as_image(file)
    except ValueError as e:
        reason = getattr(e, "reason", str(e))
        raise CLIError(f"--image {path!r} is not readable ({reason}); give a png / jpg / webp image or a video") \
            from None


def stage_specs(args, prompts) -> tuple[list[StageSpec], str]:
    """The stages that run, the first making the clip from the image, and the source they came from."""
    source = args.cascade or args.model
    if args.cascade is not None and args.model is not None:
        raise CLIError("give --model or --cascade, not both")
    if source is None:  # the demo's image-to-video stage, then its cascade's stages after the base
        i2v = demo.installed(demo.IMAGE_TO_VIDEO)
        if i2v is None:
            return stage_specs_of(demo_model(None, prompts))
        demo_model(demo.IMAGE_TO_VIDEO, prompts)
        rest = read_cascade(demo.DEMO_DIR)[1:] if demo.available_stages()[1:] else []
        return [StageSpec(model=i2v, info=read_info(i2v)), *rest], str(i2v)
    return stage_specs_of(source)


def stage_specs_of(source) -> tuple[list[StageSpec], str]:
    if is_cascade(source):
        specs = read_cascade(source)
        try:
            return specs[first_frame_stage(specs):], str(source)
        except ValueError as e:
            raise CLIError(f"--model {source}: {e}") from None
    path = Path(source)
    return [StageSpec(model=path, info=read_info(path))], str(source)


def plan_request(args, prompts) -> Plan:
    """Every check of the request on the folders' vidiff.json (nothing loads)."""
    specs, source = stage_specs(args, prompts)
    first = specs[0]
    settings = resolve_settings(first.model, first.info, num_frames=args.num_frames, height=args.height,
                                width=args.width, num_inference_steps=args.steps, guidance_scale=args.guidance,
                                scheduler=args.scheduler)
    where = f"--model {first.model}"
    try:
        check_first_frame_stage(first.stage, first.info, settings.num_frames, where)
        check_pixels(first.info, settings.height, settings.width, where, what="the clip")
        sizes = [(settings.num_frames, settings.height, settings.width)]
        for i, spec in enumerate(specs[1:], 1):
            sizes.append(spec.stage.output_size(spec.info, sizes[-1], spec.factor, spec.where(i)))
    except ValueError as e:
        raise CLIError(str(e).replace("num_frames", "--num-frames")) from None
    count = len(prompts) * args.num_videos
    check_size([(f"the output of stage {i}", *size, count) for i, size in enumerate(sizes)], args.allow_large)
    fps = check_flag("fps", args.fps) if args.fps is not None else first.info.defaults.fps
    for spec in specs[1:]:
        fps *= spec.stage.frame_rate_factor(spec.factor)
    return Plan(specs=specs, source=source, settings=settings, sizes=sizes, fps=fps)


def generate_from_image(args, prompts: list[str], travel) -> int:
    """`vidiff generate --image`: one clip per prompt x --num-videos (video i with seed + i), frame 0 the image."""
    for flag, name, unset in NOT_FOR_IMAGES:
        if getattr(args, name) not in (unset, None, [], False):
            raise CLIError(f"{flag} does not apply to --image (image-to-video samples with the stage's own windows)")
    if travel is not None:
        raise CLIError("prompt travel ('N: prompt') does not apply to --image; give one prompt")
    image = read_image_arg(args.image)
    plan = plan_request(args, prompts)
    count = len(prompts) * args.num_videos
    seed = seed_or_random(args.seed, count)
    paths = clip_paths(args.out, prompts, args.num_videos, seed)
    check_output_path(args.out, count, gif=args.gif, frames_dir=args.frames_dir, contact_sheet=args.contact_sheet,
                      overwrite=args.overwrite, paths=paths)
    device = check_device(args.device)

    quiet_loading(args.quiet)
    pipelines = [VideoPipeline.from_pretrained(spec.model, device=device, dtype=args.dtype) for spec in plan.specs]
    pipe = CascadePipeline(plan.specs, pipelines) if len(pipelines) > 1 else pipelines[0]
    for index, path in enumerate(paths):
        write_clip(args, pipe, plan, image, path, prompts[index // args.num_videos], seed + index)
    return 0


def write_clip(args, pipe, plan: Plan, image, path: Path, prompt: str, seed: int) -> None:
    """One clip from the image, written with its sidecar; prints one line."""
    s = plan.settings
    start = time.perf_counter()
    try:
        video = image_to_video(pipe, image, prompt, num_frames=s.num_frames, height=s.height, width=s.width,
                               seed=seed, steps=s.num_inference_steps, guidance=s.guidance_scale,
                               scheduler=s.scheduler, negative_prompt=args.negative, progress=not args.quiet,
                               allow_large=True)  # (checked above, from the headers)
    except RequestTooLarge as e:
        raise CLIError(e.for_flags()) from None
    frames, first = to_uint8(video[0]), pipelines_of(pipe)[0]
    f, h, w = plan.sizes[-1]
    sidecar = {"prompt": prompt, "negative_prompt": args.negative, "seed": seed,
               "image": str(Path(args.image).resolve()), "image_height": int(image.shape[0]),
               "image_width": int(image.shape[1]),
               "first_frame": f"the image, resized to cover {w}x{h} (aspect kept) and centre-cropped",
               "model": str(Path(plan.source).resolve()),
               "stages": [{"model": str(spec.model.resolve()), "stage": spec.name, "frames": size[0],
                           "height": size[1], "width": size[2]} for spec, size in zip(plan.specs, plan.sizes)],
               "num_inference_steps": s.num_inference_steps, "guidance_scale": s.guidance_scale,
               "scheduler": s.scheduler, "num_frames": f, "height": h, "width": w, "fps": plan.fps,
               "device": str(first.device), "dtype": str(first.dtype).replace("torch.", ""),
               "vidiff_version": vidiff.__version__, "seconds": round(time.perf_counter() - start, 3)}
    written = write_outputs(path, frames, plan.fps, sidecar, gif=args.gif, frames_dir=args.frames_dir,
                            contact_sheet=args.contact_sheet, overwrite=args.overwrite)
    print(f"wrote {', '.join(str(p) for p in written)} (frame 0 {args.image}, {plural(f, 'frame')}, {w}x{h}, "
          f"{plan.fps:g} fps, seed {seed}, {prompt!r})")


def pipelines_of(pipe) -> list:
    return pipe.pipelines if isinstance(pipe, CascadePipeline) else [pipe]
