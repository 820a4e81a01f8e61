"""`vidiff generate --controlnet`: the ControlNet flags, checked before anything loads, and the control they make.

The request is checked at the door: the flags belong together, the ControlNet is a local folder / file (its
config read and matched to the model's U-Net, torch-free) or a hub id, and the control video is readable with
at least the clip's frames; the control images are made from its first `num_frames` frames at the clip's size.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

import torch

from vidiff.cli.common import CLIError, check_flag, check_source, probe_video_arg
from vidiff.cli.options import group
from vidiff.control import (Control, VideoControlNet, check_fits, control_images, read_controlnet,
                            read_controlnet_config, read_record)
from vidiff.data.video_io import VideoReadError, read_video
from vidiff.models.weights import read_json
from vidiff.spec import CONTROL_EXTRACTORS
from vidiff.utils import plural

EXAMPLES = """\
  vidiff generate --model M --controlnet lllyasviel/sd-controlnet-canny --control-video dance.mp4 --control canny \\
      --prompt "a robot dancing" --out robot.mp4
  vidiff generate --model M --controlnet models/depth-cn --control-video depth.mp4 --control raw --control-scale 0.7 \\
      --prompt "a castle at dusk" --out castle.mp4"""

HELP = """--controlnet runs an SD ControlNet (a diffusers folder, a hub id, or a single file with --controlnet-config) on
every frame beside the U-Net; its images come from --control-video: `canny` edges of each frame, or `raw` (the
frames as they are: a depth, pose or edge video you made), resized to the clip's size. The first --num-frames
frames are used. The ControlNet attends as --cross-frame says (`--cross-frame first` keeps frames alike)."""


@dataclass(frozen=True)
class ControlRequest:
    source: str              # --controlnet: folder, hub id or file
    config: str | None       # --controlnet-config (single files)
    video: Path              # --control-video
    kind: str                # --control: canny | track | raw
    scale: float             # --control-scale
    images: torch.Tensor | None  # (1, 3, f, H, W) in [0, 1]; None: made from the clip being edited (`for_clip`)

    def for_clip(self, frames, height: int, width: int) -> "ControlRequest":
        """The request with its images made from `frames` (uint8 `(f, h, w, 3)`: `edit`'s clip, when no
        --control-video is given)."""
        return dataclasses.replace(self, images=control_images(frames, self.kind, height, width))

    def sidecar(self) -> dict:
        source = Path(self.source).expanduser()
        return {"controlnet": str(source.resolve()) if source.exists() else self.source,
                "control": self.kind, "control_video": str(self.video.resolve()), "control_scale": self.scale}


def add_control_options(p) -> None:
    options = group(p, "control (ControlNet)")
    options.add_argument("--controlnet", metavar="DIR_OR_ID", default=None,
                         help="an SD ControlNet: diffusers ControlNetModel folder, hub id, or single file "
                              "(.safetensors / .ckpt, with --controlnet-config)")
    options.add_argument("--controlnet-config", metavar="DIR", default=None,
                         help="with a single-file --controlnet: its diffusers config (config.json or its folder)")
    options.add_argument("--control-video", metavar="PATH", default=None,
                         help="the video the control images come from (its first --num-frames frames)")
    options.add_argument("--control", metavar="KIND", default=None,
                         help=f"how control images are made from --control-video: {' | '.join(CONTROL_EXTRACTORS)} "
                              "(default: what a ControlNet trained by vidiff was trained on)")
    options.add_argument("--control-scale", type=float, default=None, metavar="S",
                         help="the ControlNet's residual scale, 0 = off (default: 1.0)")


def read_control_request(args, model, clip: str | None = None) -> ControlRequest | None:
    """The checked ControlNet request of `args` for `model` (a `resolve.Model`), control images made; None when
    no ControlNet is asked for. `clip`: the video being edited, the control video when --control-video is not
    given (its images are then made from the edited frames: `ControlRequest.for_clip`). CLIError (one line) for
    every problem, before any model loads."""
    flags = {"--controlnet-config": args.controlnet_config, "--control-video": args.control_video,
             "--control": args.control, "--control-scale": args.control_scale}
    if args.controlnet is None:
        given = next((flag for flag, value in flags.items() if value is not None), None)
        if given:
            raise CLIError(f"{given} applies to a ControlNet: add --controlnet DIR_OR_ID")
        return None
    if getattr(args, "zero_shot", False):
        raise CLIError("--controlnet does not combine with --zero-shot; drop one (--cross-frame first keeps the "
                       "ControlNet's frames alike)")
    check_source(args.controlnet, "--controlnet")
    try:
        kind = args.control or read_record(args.controlnet).get("extractor")
    except ValueError as e:
        raise CLIError(f"--controlnet: {e}") from None
    video = args.control_video or clip
    for flag, value, what in (("--control-video", video, "PATH (the video to follow)"),
                              ("--control", kind, f"{' | '.join(CONTROL_EXTRACTORS)}")):
        if value is None:
            raise CLIError(f"--controlnet needs {flag} {what}")
    if kind not in CONTROL_EXTRACTORS:
        raise CLIError(f"--control must be one of {', '.join(CONTROL_EXTRACTORS)}, got {kind!r}")
    scale = check_flag("control_scale", 1.0 if args.control_scale is None else args.control_scale)
    _check_controlnet(args.controlnet, args.controlnet_config, model)
    s = model.settings
    images = None if args.control_video is None else _read_images(video, kind, s.num_frames, s.height, s.width)
    return ControlRequest(args.controlnet, args.controlnet_config, Path(video), kind, scale, images)


def _check_controlnet(source: str, config: str | None, model) -> None:
    """The ControlNet exists (or is a hub id) and, when its config is local, fits the model's U-Net."""
    check_source(config, "--controlnet-config")
    try:
        controlnet_config = read_controlnet_config(source, config)
        if controlnet_config is not None:
            unet_config = read_json(Path(model.path) / "unet" / "config.json", "a VideoUNet config")
            check_fits(controlnet_config, unet_config, source, model.info.vae_scale_factor)
    except (ValueError, FileNotFoundError) as e:
        raise CLIError(f"--controlnet: {e}") from None


def _read_images(path: str, kind: str, num_frames: int, height: int, width: int) -> torch.Tensor:
    """The control images of the first `num_frames` frames of `path`."""
    info = probe_video_arg(path, "--control-video")
    if info.num_frames < num_frames:
        raise CLIError(f"--control-video {path!r} has {plural(info.num_frames, 'frame')}, fewer than the "
                       f"{num_frames} of the clip; pass --num-frames {info.num_frames} or a longer video")
    try:
        frames = read_video(path, num_frames=num_frames).frames
    except VideoReadError as e:
        raise CLIError(f"--control-video {path!r} is not readable ({e.reason})") from None
    return control_images(frames, kind, height, width)


def load_control(request: ControlRequest | None, pipe, cross_frame: str) -> Control | None:
    """The request's Control for `pipe`: the ControlNet loaded (and checked against the U-Net) on its device."""
    if request is None:
        return None
    controlnet = read_controlnet(request.source, config=request.config)
    check_fits(controlnet.config, pipe.unet.config, request.source, pipe.vae_scale_factor)
    video_controlnet = VideoControlNet(controlnet.to(pipe.device, pipe.dtype), cross_frame=cross_frame)
    return Control(video_controlnet, request.images, request.scale)
