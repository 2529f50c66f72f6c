"""The run folder's pictures: learning curves (both phases marked) and the confusion matrix."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, never a window

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from .checkpoint import atomic_write  # noqa: E402


def plot_curves(history: Sequence[dict], path: str | Path, title: str = "") -> Path:
    """Loss and accuracy per epoch, train and validation; a line where the fine-tuning phase starts."""
    epochs = [h["epoch"] for h in history]
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(11, 4))
    for ax, key in ((ax_loss, "loss"), (ax_acc, "acc")):
        ax.plot(epochs, [h[f"train_{key}"] for h in history], "o-", ms=3, label="train")
        if any(h.get(f"val_{key}") is not None for h in history):
            ax.plot(epochs, [h.get(f"val_{key}") for h in history], "o-", ms=3, label="validation")
        previous = None
        for h in history:  # mark every phase change (e.g. head -> finetune), as the course plots do
            if previous is not None and h["phase"] != previous:
                ax.axvline(h["epoch"] - 0.5, color="grey", ls="--", lw=1)
                ax.text(
                    h["epoch"] - 0.4,
                    0.98,
                    f"start {h['phase']}",
                    transform=ax.get_xaxis_transform(),
                    va="top",
                    fontsize=8,
                    color="grey",
                )
            previous = h["phase"]
        ax.set_xlabel("epoch")
        ax.set_ylabel("loss" if key == "loss" else "accuracy")
        ax.grid(alpha=0.3)
        ax.legend()
    ax_loss.set_title("loss")
    ax_acc.set_title("accuracy")
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=100, format="png"))
    plt.close(fig)
    return Path(path)


def plot_confusion_matrix(
    y_true: Sequence[int],
    y_pred: Sequence[int],
    class_names: Sequence[str],
    path: str | Path,
    title: str = "",
) -> Path:
    """Rows: true class, columns: predicted; counts in the cells (validation set, best model)."""
    n = len(class_names)
    # One bincount instead of sklearn.metrics.confusion_matrix: same counts, without importing
    # scikit-learn (seconds) at the end of every run.
    pairs = n * np.asarray(y_true, dtype=np.int64) + np.asarray(y_pred, dtype=np.int64)
    cm = np.bincount(pairs, minlength=n * n).reshape(n, n)
    size = min(4 + 0.45 * n, 20)
    fig, ax = plt.subplots(figsize=(size, size * 0.85))
    im = ax.imshow(cm, cmap="Blues")
    fig.colorbar(im, ax=ax, fraction=0.046)
    ax.set_xticks(range(n), class_names, rotation=45, ha="right", fontsize=8 if n > 10 else 10)
    ax.set_yticks(range(n), class_names, fontsize=8 if n > 10 else 10)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    if n <= 30:
        threshold = cm.max() / 2 if cm.size else 0
        for i, j in np.ndindex(cm.shape):
            ax.text(
                j,
                i,
                str(cm[i, j]),
                ha="center",
                va="center",
                fontsize=8,
                color="white" if cm[i, j] > threshold else "black",
            )
    accuracy = np.trace(cm) / max(cm.sum(), 1)
    ax.set_title(f"{title}  accuracy {accuracy:.3f}".strip())
    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=100, format="png"))
    plt.close(fig)
    return Path(path)
