"""`vidiff eval fvd | clip | vbench`: the field's standard video metrics over folders of clips (a `generate` run,
a shapes dataset, anyone's videos). Parsers and runs here; `vidiff.cli.eval` lists them beside shapes / stage /
edit. Every input is checked (folders, captions, clip lengths, output file, weights named) before a model loads."""
from __future__ import annotations

import argparse
import shlex
import time
from pathlib import Path

import torch

import vidiff
from vidiff.cli.common import CLIError, check_device, check_file_target, check_flag, check_source
from vidiff.eval import clips as clip_sources
from vidiff.eval import fvd, vbench
from vidiff.eval.clip_score import ClipScorer
from vidiff.eval.i3d import WEIGHTS_HINT, load_i3d, random_i3d
from vidiff.progress import ProgressBar
from vidiff.utils import write_json_atomic

FVD_EPILOG = f"""examples:
  vidiff eval fvd --real data/shapes --fake runs/samples --i3d i3d.safetensors --out fvd.json
  vidiff eval fvd --real data/manifest.csv --fake samples/ --i3d owner/i3d-kinetics400 --max-clips 2048
  vidiff eval fvd --real a/ --fake b/ --i3d random          (smoke test: random weights, not comparable)

Protocol (StyleGAN-V's FVD16): the first {fvd.FVD_FRAMES} frames of each clip, resized to {fvd.FVD_SIZE}x{fvd.FVD_SIZE},
[-1, 1]; I3D's 400 Kinetics logits; the Fréchet distance in float64. Papers use 2048 clips a set; compare FVDs
of equal set sizes only. {WEIGHTS_HINT}."""

CLIP_EPILOG = """examples:
  vidiff eval clip --videos runs/samples --clip openai/clip-vit-base-patch32 --out clip.json
  vidiff eval clip --videos clips/ --captions captions.json --clip ./clip-vit-b32

CLIPSIM: per frame 100 x max(cos(text, frame), 0), averaged over frames, then over clips. Captions: --captions
(JSON {"clip.mp4": "caption"} or CSV path,caption), else each clip's `vidiff generate` sidecar or .txt. The
`mismatched` row scores every clip against another clip's caption: the gap is what the captions explain."""

VBENCH_EPILOG = f"""examples:
  vidiff eval vbench --videos runs/samples --out vbench.json
  vidiff eval vbench --videos data/shapes --dimensions motion_smoothness,dynamic_degree
  vidiff eval vbench --videos runs/samples --clip openai/clip-vit-base-patch32   (CLIP background consistency)

Dimensions: {', '.join(vbench.DIMENSIONS)}. VBench's formulas with weight-free measures in place of its networks
(thumbnails, colour histograms, Farneback flow; see vidiff/eval/vbench.py): they rank clips as VBench's do but are
not VBench's published numbers."""


def add_parsers(eval_sub) -> None:
    _add_fvd_parser(eval_sub)
    _add_clip_parser(eval_sub)
    _add_vbench_parser(eval_sub)


def _parser(eval_sub, name: str, help_text: str, epilog: str):
    return eval_sub.add_parser(name, help=help_text, description=help_text[0].upper() + help_text[1:] + ".",
                               formatter_class=argparse.RawDescriptionHelpFormatter, epilog=epilog)


def _add_common(p, clip_help: str | None = None) -> None:
    p.add_argument("--max-clips", type=int, default=None, metavar="N", help="use the first N clips (sorted by path)")
    if clip_help is not None:
        p.add_argument("--clip", default=None, metavar="ID_OR_DIR", help=clip_help)
    p.add_argument("--device", default=None, help="cuda | cuda:N | mps | cpu (default: the best available)")
    p.add_argument("--out", default=None, metavar="JSON", help="write the results here (e.g. results.json)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def _add_fvd_parser(eval_sub) -> None:
    p = _parser(eval_sub, "fvd", "Fréchet Video Distance between real and generated clips (I3D features)",
                FVD_EPILOG)
    p.add_argument("--real", required=True, metavar="DIR_OR_MANIFEST", help="the reference clips")
    p.add_argument("--fake", required=True, metavar="DIR_OR_MANIFEST", help="the generated clips")
    p.add_argument("--i3d", default=None, metavar="FILE|HUB_ID|random",
                   help="I3D Kinetics-400 weights: a .safetensors (or pytorch-i3d's rgb_imagenet.pt, read "
                        "weights-only), a hub id holding i3d.safetensors, or `random` (smoke tests only)")
    p.add_argument("--frames", type=int, default=fvd.FVD_FRAMES,
                   help="frames per clip (default: %(default)s, the protocol's)")
    p.add_argument("--size", type=int, default=fvd.FVD_SIZE, help="frame side after resizing (default: %(default)s)")
    p.add_argument("--batch-size", type=int, default=8, help="clips per I3D pass (default: %(default)s)")
    _add_common(p)


def _add_clip_parser(eval_sub) -> None:
    p = _parser(eval_sub, "clip", "CLIP score (CLIPSIM) of clips against their captions", CLIP_EPILOG)
    p.add_argument("--videos", required=True, metavar="DIR_OR_MANIFEST", help="the clips to score")
    p.add_argument("--captions", default=None, metavar="FILE", help="JSON or CSV mapping clip names to captions")
    _add_common(p, clip_help="a transformers CLIP model: hub id or folder (safetensors weights)")


def _add_vbench_parser(eval_sub) -> None:
    p = _parser(eval_sub, "vbench", "VBench-style consistency, smoothness, dynamics and flicker, no weights needed",
                VBENCH_EPILOG)
    p.add_argument("--videos", required=True, metavar="DIR_OR_MANIFEST", help="the clips to score")
    p.add_argument("--dimensions", default=None, metavar="LIST",
                   help=f"comma-separated (default: all): {', '.join(vbench.DIMENSIONS)}")
    _add_common(p, clip_help="score background consistency with this CLIP model's image features (as VBench) "
                             "instead of colour histograms")


# ---------------------------------------------------------------------------------------------------------------
# Shared checks and output
# ---------------------------------------------------------------------------------------------------------------
def _torch_device(device: str | None) -> torch.device:
    return torch.device(check_device(device) or ("cuda" if torch.cuda.is_available() else "cpu"))


def _clips(source: str, flag: str, max_clips: int | None, min_frames: int, why: str) -> list:
    """The clips of `source`, each probed: readable and at least `min_frames` long (CLIError otherwise)."""
    check_flag("limit", max_clips, flag="--max-clips")
    try:
        entries = clip_sources.find_clips(source, flag, max_clips)
        clip_sources.probe_clips(entries, min_frames, why)
    except (ValueError, FileNotFoundError) as e:
        raise CLIError(f"{flag}: {e}" if not str(e).startswith("--") else str(e)) from None
    return entries


def _command(args, flags: tuple[str, ...]) -> str:
    parts = ["vidiff", "eval", args.eval_command]
    for flag in flags:
        value = getattr(args, flag[2:].replace("-", "_"), None)
        if value is not None:
            parts += [flag, str(value)]
    return shlex.join(parts)


def _finish(args, results: dict, table: str, summary_line: str) -> int:
    out = Path(args.out) if args.out is not None else None
    print(table)
    if out is not None:
        write_json_atomic(out, {"command": results.pop("command"), "vidiff_version": vidiff.__version__, **results})
    print(summary_line + (f"; wrote {out}" if out is not None else ""))
    return 0


# ---------------------------------------------------------------------------------------------------------------
# vidiff eval fvd
# ---------------------------------------------------------------------------------------------------------------
def _i3d(source: str):
    if source == "random":
        return random_i3d()
    check_source(source, "--i3d")
    try:
        return load_i3d(source)
    except (ValueError, FileNotFoundError) as e:
        raise CLIError(str(e)) from None


def _fvd_features(model, entries, args, device):
    clips = (clip_sources.read_clip(entry, args.frames) for entry in entries)
    return fvd.i3d_features(model, clips, num_frames=args.frames, size=args.size, batch_size=args.batch_size,
                            device=device, total=len(entries), progress=not args.quiet)


def run_fvd(args) -> int:
    if args.i3d is None:
        raise CLIError(f"--i3d is required: {WEIGHTS_HINT} (or --i3d random for a smoke test)")
    check_flag("batch_size", args.batch_size)
    if not 2 <= args.frames <= 1024 or not 32 <= args.size <= 1024:
        raise CLIError(f"--frames must be in [2, 1024] and --size in [32, 1024], got {args.frames} and {args.size}")
    why = f"FVD with --frames {args.frames}"
    real = _clips(args.real, "--real", args.max_clips, args.frames, why)
    fake = _clips(args.fake, "--fake", args.max_clips, args.frames, why)
    for flag, entries in (("--real", real), ("--fake", fake)):
        if len(entries) < fvd.MIN_CLIPS:
            raise CLIError(f"{flag} has {len(entries)} clip; FVD needs at least {fvd.MIN_CLIPS} a set (papers: 2048)")
    check_file_target(args.out, "--out", ".json", args.overwrite)
    device = _torch_device(args.device)
    model = _i3d(args.i3d)
    start = time.perf_counter()
    real_features = _fvd_features(model, real, args, device)
    fake_features = _fvd_features(model, fake, args, device)
    value = fvd.fvd(real_features, fake_features)
    standard = (args.frames, args.size) == (fvd.FVD_FRAMES, fvd.FVD_SIZE) and args.i3d != "random"
    label = "" if standard else (" (random-weight I3D: not comparable)" if args.i3d == "random"
                                 else " (non-standard frames / size: not comparable with papers)")
    table = ("| real clips | generated clips | frames | size | FVD |\n| ---: | ---: | ---: | ---: | ---: |\n"
             f"| {len(real)} | {len(fake)} | {args.frames} | {args.size} | {value:.2f}{label} |")
    results = {"command": _command(args, ("--real", "--fake", "--i3d", "--frames", "--size", "--max-clips")),
               "fvd": value, "comparable": standard, "i3d": args.i3d, "num_real": len(real), "num_fake": len(fake),
               "protocol": {"frames": args.frames, "size": args.size, "frame_sampling": "first frames",
                            "resize": "bilinear", "range": "[-1, 1]", "features": "i3d kinetics-400 logits"},
               "device": str(device), "seconds": round(time.perf_counter() - start, 2)}
    return _finish(args, results, table, f"FVD {value:.2f} between {len(real)} real and {len(fake)} generated "
                                         f"clips{label}")


# ---------------------------------------------------------------------------------------------------------------
# vidiff eval clip
# ---------------------------------------------------------------------------------------------------------------
def _scorer(source: str | None, device) -> ClipScorer | None:
    if source is None:
        return None
    check_source(source, "--clip")
    try:
        return ClipScorer.from_pretrained(source, device)
    except (ValueError, FileNotFoundError) as e:
        raise CLIError(str(e)) from None


def _captioned_clips(args) -> list:
    entries = _clips(args.videos, "--videos", args.max_clips, 1, "CLIP score")
    try:
        if args.captions is not None:
            clip_sources.apply_captions(entries, clip_sources.read_captions(args.captions), Path(args.videos))
        clip_sources.check_captions(entries)
    except (ValueError, FileNotFoundError) as e:
        raise CLIError(str(e)) from None
    return entries


def _clip_records(scorer: ClipScorer, entries, progress: bool) -> list[dict]:
    """Per clip: its CLIPSIM, and against the next clip's caption (a different caption, when there is one)."""
    captions = [e.caption for e in entries]
    text = scorer.text_embeddings(captions)
    records = []
    for i, entry in enumerate(ProgressBar(entries, desc="clip", unit="clip", disable=not progress)):
        images = scorer.image_embeddings(clip_sources.read_clip(entry))
        scores = (100.0 * (images @ text.T).clamp(min=0)).mean(dim=0)  # (n,): this clip against every caption
        others = [j for j in range(len(entries)) if captions[j] != captions[i]]
        record = {"path": str(entry.path), "caption": entry.caption, "clip_score": float(scores[i])}
        if others:
            record["mismatched"] = float(scores[others[i % len(others)]])
        records.append(record)
    return records


def run_clip(args) -> int:
    if args.clip is None:
        raise CLIError("--clip is required: a CLIP hub id (e.g. openai/clip-vit-base-patch32) or a folder")
    entries = _captioned_clips(args)
    check_file_target(args.out, "--out", ".json", args.overwrite)
    device = _torch_device(args.device)
    start = time.perf_counter()
    scorer = _scorer(args.clip, device)
    records = _clip_records(scorer, entries, not args.quiet)
    mean = sum(r["clip_score"] for r in records) / len(records)
    mismatched = [r["mismatched"] for r in records if "mismatched" in r]
    summary = {"num_clips": len(records), "clip_score": mean,
               "mismatched": sum(mismatched) / len(mismatched) if mismatched else None}
    table = ("| clips | CLIP score | mismatched captions |\n| ---: | ---: | ---: |\n"
             f"| {len(records)} | {mean:.2f} | "
             + (f"{summary['mismatched']:.2f} |" if mismatched else "n/a |"))
    results = {"command": _command(args, ("--videos", "--captions", "--clip", "--max-clips")), "clip": args.clip,
               "device": str(device), "seconds": round(time.perf_counter() - start, 2), "summary": summary,
               "clips": records}
    return _finish(args, results, table, f"CLIP score {mean:.2f} over {len(records)} clips")


# ---------------------------------------------------------------------------------------------------------------
# vidiff eval vbench
# ---------------------------------------------------------------------------------------------------------------
def _dimensions(text: str | None) -> tuple[str, ...]:
    names = [part.strip() for part in (text or "").split(",") if part.strip()]
    try:
        return vbench.check_dimensions(names)
    except ValueError as e:
        raise CLIError(f"--dimensions: {e}") from None


def run_vbench(args) -> int:
    dimensions = _dimensions(args.dimensions)
    if args.clip is not None and "background_consistency" not in dimensions:
        raise CLIError("--clip scores background_consistency; add it to --dimensions or leave --clip out")
    needed = vbench.min_frames(dimensions)
    entries = _clips(args.videos, "--videos", args.max_clips, needed,
                     " and ".join(d for d in dimensions if vbench.MIN_FRAMES[d] == needed))
    check_file_target(args.out, "--out", ".json", args.overwrite)
    device = _torch_device(args.device) if args.clip is not None else None
    start = time.perf_counter()
    scorer = _scorer(args.clip, device)
    records = []
    for entry in ProgressBar(entries, desc="vbench", unit="clip", disable=args.quiet):
        records.append({"path": str(entry.path), **vbench.score_clip(clip_sources.read_clip(entry), dimensions,
                                                                        scorer)})
    summary = vbench.summarize(records)
    features = {"subject_consistency": "thumbnails",
                "background_consistency": "clip" if scorer is not None else "colour histograms"}
    results = {"command": _command(args, ("--videos", "--dimensions", "--clip", "--max-clips")),
               "dimensions": list(dimensions), "features": {k: v for k, v in features.items() if k in dimensions},
               "seconds": round(time.perf_counter() - start, 2), "summary": summary, "clips": records}
    return _finish(args, results, vbench.markdown_table(summary), f"scored {len(records)} clips on "
                                                                  f"{len(dimensions)} vbench dimensions")


RUNS = {"fvd": run_fvd, "clip": run_clip, "vbench": run_vbench}
