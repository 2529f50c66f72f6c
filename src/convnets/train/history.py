"""A run's record of its epochs, as the run folder and the terminal show it: ``metrics.jsonl``, the
epoch's log line, TensorBoard scalars, and at the end ``curves.png`` and ``confusion_matrix.png``."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from ..base.atomic import atomic_write_text
from ..base.plots import confusion_counts, plot_confusion_matrix, plot_curves
from ..base.runs import CONFUSION_FILE, CURVES_FILE, METRICS_FILE
from ..base.runtime import memory_mb

SCALARS = ("train_loss", "train_acc", "val_loss", "val_acc", "lr")  # what TensorBoard gets per epoch


def epoch_record(
    epoch: int, phase: str, train: dict[str, float], val: dict[str, float] | None
) -> dict[str, Any]:
    """One line of ``metrics.jsonl`` (with the process's resident memory now and at its peak, MiB)."""
    memory = memory_mb()
    return {
        "epoch": epoch,
        "phase": phase,
        "train_loss": train["loss"],
        "train_acc": train["acc"],
        "val_loss": val["loss"] if val else None,
        "val_acc": val["acc"] if val else None,
        "val_bal_acc": val["bal_acc"] if val else None,
        "lr": train["lr"],
        "seconds": round(train["seconds"], 3),
        "rss_mb": memory[0] if memory else None,
        "peak_rss_mb": memory[1] if memory else None,
    }


def write_metrics(run_dir: Path, history: list[dict]) -> None:
    atomic_write_text(run_dir / METRICS_FILE, "".join(json.dumps(h) + "\n" for h in history))


def epoch_line(record: dict, images: float, total_epochs: int, *, balanced: bool, best: bool) -> str:
    """The epoch's log line: losses, accuracies, learning rate, time, images/s and resident memory."""
    ips = images / max(record["seconds"], 1e-9)
    val = (
        f" | val loss {record['val_loss']:.4f} acc {record['val_acc']:.4f}"
        if record["val_acc"] is not None
        else ""
    )
    memory = f" | {record['rss_mb']:,.0f} MiB" if record.get("rss_mb") is not None else ""
    if record["val_acc"] is not None and balanced:
        val += f" bal acc {record['val_bal_acc']:.4f}"
    return (
        f"epoch {record['epoch']:>3}/{total_epochs} [{record['phase']}] train loss "
        f"{record['train_loss']:.4f} acc {record['train_acc']:.4f}{val} | lr {record['lr']:.2e} | "
        f"{record['seconds']:.1f}s {ips:,.0f} img/s{memory}{'  *best' if best else ''}"
    )


def open_tensorboard(run_dir: Path):
    """A TensorBoard writer under ``RUN_DIR/tensorboard``, or None where tensorboard isn't installed
    (metrics.jsonl and curves.png still exist)."""
    try:
        from torch.utils.tensorboard import SummaryWriter  # optional: tensorboard
    except ImportError:
        return None
    return SummaryWriter(log_dir=str(run_dir / "tensorboard"))


def add_scalars(writer, record: dict) -> None:
    for key in SCALARS:
        if record[key] is not None:
            writer.add_scalar(key.replace("_", "/", 1), record[key], record["epoch"])


def write_plots(
    run_dir: Path,
    history: list[dict],
    title: str,
    predictions: tuple[list[int], list[int]] | None,
    class_names: list[str],
    best_epoch: int | None,
) -> None:
    """``curves.png`` (when there is a history) and, from the best model's validation ``predictions``
    (true, predicted), ``confusion_matrix.png``."""
    if history:
        plot_curves(history, run_dir / CURVES_FILE, title=f"{title} - {run_dir.name}")
    if predictions is not None:
        y_true, y_pred = predictions
        plot_confusion_matrix(
            confusion_counts(y_true, y_pred, len(class_names)),
            class_names,
            run_dir / CONFUSION_FILE,
            title=f"{title} validation (best epoch {best_epoch})",
        )


def progress_bars_wanted(stream=None) -> bool:
    """Redrawn progress bars only on a terminal (or in a notebook); in CI, under ``nohup`` or into a
    log file every redraw would be a carriage-return frame, so the run prints one line per epoch."""
    stream = stream if stream is not None else sys.stdout
    if "ipykernel" in sys.modules:  # tqdm.auto draws a widget there
        return True
    isatty = getattr(stream, "isatty", None)
    return bool(isatty and isatty())
