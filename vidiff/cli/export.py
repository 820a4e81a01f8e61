"""`vidiff export`: a trained model's temporal weights or LoRA adapter in the formats other tools read."""
from __future__ import annotations

import argparse
from pathlib import Path

from vidiff.cli.common import CLIError, check_writable

# format -> (what --out is, what it is for)
FORMATS = {
    "diffusers-motion-adapter": ("folder", "a diffusers MotionAdapter (AnimateDiffPipeline, "
                                           "MotionAdapter.from_pretrained)"),
    "animatediff": ("file", "one .safetensors in the original AnimateDiff keys (the AnimateDiff repository, "
                            "ComfyUI's AnimateDiff nodes)"),
    "temporal": ("file", "vidiff's own temporal-layers file (VideoUNet.load_temporal), for either layout"),
    "lora-diffusers": ("file", "a LoRA in diffusers / peft keys (pipe.load_lora_weights, vidiff generate --lora)"),
    "lora-comfyui": ("file", "a LoRA in kohya / ComfyUI / A1111 keys (lora_unet_..., ComfyUI's LoRA loader)"),
}


def add_parser(sub, help_text: str):
    p = sub.add_parser(
        "export", help=help_text, formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Write a vidiff model's temporal weights or LoRA adapter for other tools. Formats:\n"
                    + "\n".join(f"  {name:25s} {what}: {use}" for name, (what, use) in FORMATS.items())
                    + "\nThe two AnimateDiff formats need a model in AnimateDiff's layout (`vidiff inflate "
                      "--motion-module` or `--temporal-layout animatediff`, then trained).",
        epilog="examples:\n"
               "  vidiff export --model runs/ad/pipeline --format diffusers-motion-adapter --out my-motion-adapter\n"
               "  vidiff export --model runs/ad/pipeline --format animatediff --out mm_mine.safetensors\n"
               "  vidiff export --model runs/ft/pipeline --format temporal --out temporal.safetensors\n"
               "  vidiff export --model runs/lora/pipeline --format lora-comfyui --out style_comfy.safetensors\n"
               "  vidiff export --model style.safetensors --format lora-diffusers --out style_diffusers.safetensors\n"
               "\nthen, in diffusers: AnimateDiffPipeline.from_pretrained(SD, motion_adapter="
               "MotionAdapter.from_pretrained(\"my-motion-adapter\"))")
    p.add_argument("--model", required=True, metavar="DIR",
                   help="a vidiff pipeline folder (or its unet/ folder); for the LoRA formats also a LoRA file")
    p.add_argument("--format", required=True, choices=FORMATS, help="what to write (see above)")
    p.add_argument("--out", required=True, metavar="PATH", help="the folder or .safetensors file to write")
    p.add_argument("--overwrite", action="store_true", help="replace an earlier export of the same format at --out")
    return p


def run(args) -> int:
    out = Path(args.out)
    kind = FORMATS[args.format][0]
    if kind == "file" and out.suffix != ".safetensors":
        raise CLIError(f"--out {args.out}: --format {args.format} writes one .safetensors file; end --out with "
                       ".safetensors")
    if out.exists() and not args.overwrite:
        raise CLIError(f"--out {args.out} already exists; pass --overwrite to replace an earlier export, or choose "
                       "another --out")
    if kind == "file" and out.is_dir():
        raise CLIError(f"--out {args.out} is a folder; --format {args.format} writes a .safetensors file")
    check_writable(out)
    if args.format.startswith("lora-"):
        return _export_lora(args, out)
    unet_folder = _unet_folder(Path(args.model))
    # after the checks: torch and diffusers take seconds to import
    from vidiff.models import motion
    from vidiff.models.unet import VideoUNet, is_temporal_parameter

    from vidiff.models.weights import read_video_unet_config

    layout = read_video_unet_config(unet_folder).get("temporal_layout", "vidiff")
    if args.format != "temporal" and layout != "animatediff":  # before the weights load
        raise CLIError(f"--model {args.model} has vidiff's temporal layout (temporal conv + attention), not "
                       "AnimateDiff motion modules; export it with --format temporal, or train a model "
                       "inflated with --motion-module / --temporal-layout animatediff")
    unet = VideoUNet.from_pretrained(unet_folder)
    if args.format == "temporal":
        unet.save_temporal(out)
        what = "temporal layers"
    else:
        if args.format == "animatediff":
            motion.save_original_motion_module(unet.motion_module_state_dict(), out, unet.motion)
        else:
            motion.save_motion_adapter(unet.motion_adapter_config(), unet.motion_module_state_dict(), out)
        what = f"motion modules ({unet.motion.max_seq_length} frame positions, mid block {unet.motion.mid_block})"
    tensors = sum(1 for k in unet.state_dict() if is_temporal_parameter(k))
    print(f"wrote {out}{'/' if kind == 'folder' else ''} ({args.format}): {what}, {tensors} tensors")
    return 0


def _unet_folder(model: Path) -> Path:
    for folder in (model / "unet", model):
        if (folder / "config.json").is_file():
            return folder
    raise CLIError(f"--model {model}: no vidiff U-Net there (no unet/config.json nor config.json); give a "
                   "pipeline folder `vidiff inflate` or `vidiff train` wrote")


def _export_lora(args, out: Path) -> int:
    """A trained pipeline's adapter (unet/lora.safetensors) or a LoRA file, in another key format."""
    if not Path(args.model).exists():
        raise CLIError(f"--model {args.model} does not exist: give a pipeline trained with train.trainable=lora "
                       "or a LoRA .safetensors file")
    from vidiff.adapters.export import export_lora  # after the checks: torch and peft take seconds to import

    written = export_lora(args.model, out, args.format.removeprefix("lora-"))
    print(f"wrote {written} ({args.format})")
    return 0
