"""What a run reports: the progress bar, train_log.csv, TensorBoard scalars, loss.png and validation clips.

    output_dir/train_log.csv             one row per logged step (columns: CSV_COLUMNS)
    output_dir/loss.png                  the loss curve, with a moving average
    output_dir/logs/                     TensorBoard events
    output_dir/validation/step-00000500/ 00-<prompt>.mp4 + .png contact sheets
    output_dir/validation_metrics.csv    validation.metrics (vbench) of each validation's clips (also TensorBoard)
"""
from __future__ import annotations

import csv
import math
import re
from pathlib import Path

import numpy as np
import torch

from vidiff.config import Config
from vidiff.data import read_video, write_contact_sheet, write_video
from vidiff.eval import vbench
from vidiff.progress import ProgressBar
from vidiff.training import TrainingError
from vidiff.utils import atomic_path

# skipped_files: distinct bad files passed over so far; skipped_encounters: how often they came up.
CSV_COLUMNS = ("step", "epoch", "loss", "lr", "grad_norm", "samples_per_s", "data_wait_share", "skipped_files",
               "skipped_encounters", "nonfinite_steps")
# How each value is written to the CSV (the rest as they are).
CSV_FORMATS = {"epoch": ".3f", "loss": ".6g", "lr": ".6g", "grad_norm": ".6g", "samples_per_s": ".4g",
               "data_wait_share": ".4f"}
# Logged to TensorBoard as train/<name> (loss and grad_norm only when finite).
SCALARS = ("loss", "lr", "grad_norm", "samples_per_s", "data_wait_share", "skipped_files", "skipped_encounters",
           "nonfinite_steps")


def open_csv(path: Path, resume_step: int):
    """Open the CSV log for appending; on resume, drop rows logged after the checkpoint's step."""
    rows = []
    if resume_step and path.is_file():
        with open(path, newline="") as f:
            rows = [r for r in csv.DictReader(f) if r.get("step", "").isdigit() and int(r["step"]) <= resume_step]
    with atomic_path(path) as tmp, open(tmp, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=CSV_COLUMNS)
        writer.writeheader()
        writer.writerows({k: r.get(k, "") for k in CSV_COLUMNS} for r in rows)
    f = open(path, "a", newline="")
    return f, csv.DictWriter(f, fieldnames=CSV_COLUMNS)


def flat_config(config: Config) -> dict:
    """`section.key -> value` with plain values only (what TensorBoard's hparams accept)."""
    flat = {}
    for section, values in config.to_dict().items():
        if isinstance(values, dict):
            for key, value in values.items():
                flat[f"{section}.{key}"] = value if isinstance(value, (int, float, str, bool)) else str(value)
        else:
            flat[section] = values
    return flat


class TrainLog:
    """The progress bar (shown by the main process) and, on the main process, train_log.csv and TensorBoard.

    `step(values, write=...)` takes the numbers of one optimiser step (the keys of CSV_COLUMNS).
    """

    def __init__(self, accelerator, config: Config, output_dir: Path, *, start_step: int, resumed: bool):
        self.accelerator, self.main = accelerator, accelerator.is_main_process
        self.csv_path, self.csv_file, self.csv_writer = Path(output_dir) / "train_log.csv", None, None
        if self.main:
            accelerator.init_trackers("tensorboard", config=flat_config(config))
            self.csv_file, self.csv_writer = open_csv(self.csv_path, start_step if resumed else 0)
        self.progress = ProgressBar(total=config.train.max_steps, initial=start_step, disable=not self.main,
                                    desc="train", dynamic_ncols=True)

    def step(self, values: dict, *, write: bool) -> None:
        self.progress.update(1)
        self.progress.set_postfix(loss=f"{values['loss']:.4f}", lr=f"{values['lr']:.2e}")
        if not (self.main and write):
            return
        try:
            self.csv_writer.writerow({k: format(values[k], CSV_FORMATS.get(k, "")) for k in CSV_COLUMNS})
            self.csv_file.flush()
        except OSError as e:  # a full disk: one line (the last checkpoint is intact; training state is not lost)
            raise TrainingError(f"writing {self.csv_path} failed ({e.strerror or e}) at step {values['step']}; free "
                                "space and continue with --resume auto") from e
        scalars = {f"train/{k}": values[k] for k in SCALARS if k not in ("loss", "grad_norm") or math.isfinite(values[k])}
        self.accelerator.log(scalars, step=values["step"])

    def close(self, *, plot: bool = True) -> None:
        """Close the bar and the CSV; draw loss.png (`plot`) from the whole CSV."""
        self.progress.close()
        if self.csv_file is not None:
            self.csv_file.close()
            self.csv_file = None
            if plot:
                plot_loss_curve(self.csv_path, self.csv_path.parent / "loss.png")


def plot_loss_curve(csv_path: Path, png_path: Path) -> None:
    import matplotlib  # here: the Agg backend must be chosen before pyplot loads, and only the main process plots

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    steps, losses = [], []
    with open(csv_path, newline="") as f:
        for row in csv.DictReader(f):
            try:
                loss = float(row["loss"])
            except (TypeError, ValueError):
                continue
            if math.isfinite(loss):
                steps.append(int(row["step"]))
                losses.append(loss)
    fig, ax = plt.subplots(figsize=(7, 4), dpi=100)
    ax.plot(steps, losses, lw=0.8, alpha=0.5, label="loss")
    if len(losses) >= 10:  # a moving average makes the trend readable through the timestep noise
        window = max(5, len(losses) // 20)
        smooth = np.convolve(losses, np.ones(window) / window, mode="valid")
        ax.plot(steps[window - 1:], smooth, lw=1.6, label=f"mean of {window}")
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    # a log axis only when the loss spans orders of magnitude (early fine-tuning); else plain numbers read better
    ax.set_yscale("log" if losses and min(losses) > 0 and max(losses) / min(losses) > 20 else "linear")
    ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    with atomic_path(png_path) as tmp:
        fig.savefig(tmp)
    plt.close(fig)


def _slug(text: str, limit: int = 40) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")[:limit] or "prompt"


def render_validation(pipe, config: Config, out_dir: Path, device, control=None) -> list[Path]:
    """One clip per validation prompt (mp4 + contact sheet), steered by `control` (a vidiff.control.Control)
    when given; leaves the training RNG untouched."""
    v, d = config.validation, config.data
    written = []
    devices = [device] if torch.device(device).type == "cuda" else []
    was_training = pipe.unet.training
    pipe.unet.eval()
    try:
        with torch.random.fork_rng(devices=devices):
            for i, prompt in enumerate(v.prompts):
                generator = torch.Generator(device=device).manual_seed(v.seed + i)
                frames = pipe(prompt, num_frames=v.num_frames or d.num_frames, height=v.height or d.height,
                              width=v.width or d.width, num_inference_steps=v.steps,
                              guidance_scale=v.guidance_scale, generator=generator, progress=False,
                              control=control)
                stem = out_dir / f"{i:02d}-{_slug(prompt)}"
                try:
                    write_video(stem.with_suffix(".mp4"), frames, fps=v.fps)
                    write_contact_sheet(stem.with_suffix(".png"), frames)
                except OSError as e:
                    raise TrainingError(f"writing validation clips to {out_dir} failed ({e.strerror or e}); free "
                                        "space (or set validation.prompts=[]) and continue with --resume auto") from e
                written.append(stem.with_suffix(".mp4"))
    finally:
        pipe.unet.train(was_training)
    return written


VALIDATION_CSV = "validation_metrics.csv"
VALIDATION_COLUMNS = ("step", "name", *vbench.DIMENSIONS, "flow_magnitude")


def score_validation(paths: list[Path], metrics: list[str]) -> dict:
    """vbench's weight-free dimensions averaged over the written validation clips (read back, so the numbers are
    what `vidiff eval vbench --videos output_dir/validation/<name>` reports)."""
    if "vbench" not in metrics or not paths:
        return {}
    records = [vbench.score_clip(read_video(path).frames) for path in paths]
    summary = vbench.summarize(records)
    return {k: summary[k] for k in VALIDATION_COLUMNS[2:]}


def log_validation_metrics(accelerator, config: Config, output_dir: Path, step: int, name: str,
                           paths: list[Path]) -> dict:
    """Score the clips of one validation (validation.metrics) and log them: TensorBoard validation/<dimension>
    and a row of output_dir/validation_metrics.csv (rewritten atomically; a row of the same name is replaced,
    so a resumed run does not repeat it). Returns the scores ({} without metrics)."""
    scores = score_validation(paths, config.validation.metrics)
    if not scores:
        return scores
    path = Path(output_dir) / VALIDATION_CSV
    rows = []
    if path.is_file():
        with open(path, newline="") as f:
            rows = [r for r in csv.DictReader(f) if r.get("name") != name]
    rows.append({"step": step, "name": name, **{k: f"{v:.6g}" for k, v in scores.items()}})
    try:
        with atomic_path(path) as tmp, open(tmp, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=VALIDATION_COLUMNS, extrasaction="ignore")
            writer.writeheader()
            writer.writerows(rows)
    except OSError as e:
        raise TrainingError(f"writing {path} failed ({e.strerror or e}); free space and continue with "
                            "--resume auto") from e
    accelerator.log({f"validation/{k}": v for k, v in scores.items()}, step=step)
    return scores
