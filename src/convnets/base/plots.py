"""Every picture convnets draws shares this module: matplotlib set up once for files (the "Agg"
backend, never a window), figures saved atomically, and the pictures more than one command shows --
learning curves, the confusion matrix, a grid of images with captions.

Torch-free (numpy and matplotlib): images arrive as arrays (a CPU tensor converts with ``np.asarray``).
Plots that belong to one feature (cost comparison, depth experiment, augmentation preview, ...)
stay with it, but draw through :func:`pyplot` and :func:`save_figure`.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from typing import IO, Any

import numpy as np

from .atomic import atomic_write

__all__ = [
    "confusion_counts",
    "plot_confusion_matrix",
    "plot_curves",
    "plot_image_grid",
    "pyplot",
    "save_figure",
    "short_label",
]

PathOrFile = str | os.PathLike | IO[bytes]


def pyplot():
    """``matplotlib.pyplot`` on the file-only "Agg" backend (imported on first use: it takes ~0.5 s)."""
    import matplotlib  # start-up: matplotlib on first use

    if matplotlib.get_backend().lower() != "agg":
        matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # start-up: matplotlib on first use

    return plt


def save_figure(fig: Any, path: PathOrFile, dpi: int = 100) -> PathOrFile:
    """Save ``fig`` as PNG to a path (atomically, parents created) or a binary file object; close it."""
    plt = pyplot()
    try:
        if hasattr(path, "write"):
            fig.savefig(path, format="png", dpi=dpi)
            return path
        return atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=dpi))
    finally:
        plt.close(fig)


def confusion_counts(y_true: Sequence[int], y_pred: Sequence[int], num_classes: int) -> np.ndarray:
    """(K, K) counts, rows the true class, columns the predicted one. One bincount: the same counts
    as ``sklearn.metrics.confusion_matrix`` without importing scikit-learn (seconds) after training."""
    pairs = num_classes * np.asarray(y_true, dtype=np.int64) + np.asarray(y_pred, dtype=np.int64)
    return np.bincount(pairs, minlength=num_classes * num_classes).reshape(num_classes, num_classes)


LABEL_CHARS = 28  # longer class names are shortened in the middle on plots ("a_very_lo…_name")


def short_label(name: str, limit: int = LABEL_CHARS) -> str:
    """``name`` cut in the middle to ``limit`` characters, so one long class name cannot squeeze the rest."""
    name = str(name)
    if len(name) <= limit:
        return name
    head = (limit - 1) // 2
    return name[:head] + "\u2026" + name[-(limit - 1 - head) :]


def plot_confusion_matrix(
    cm: Sequence[Sequence[int]] | np.ndarray, class_names: Sequence[str], path: PathOrFile, title: str = ""
) -> PathOrFile:
    """Counts in the cells, colours row-normalised (recall on the diagonal, so a rare class is as
    visible as a common one); labels shown up to 60 classes, counts up to 20.

    Sized to the number of classes and the longest label, x labels at 45 degrees (90 when there are
    many or they are long), and a constrained layout that makes room for every label and the colour
    bar, so no label is clipped (``tests/test_report_whole_picture.py`` checks their boxes)."""
    plt = pyplot()
    cm_arr = np.asarray(cm, dtype=np.int64)
    k = len(class_names)
    rows = cm_arr.sum(1, keepdims=True).clip(min=1)
    labels = [short_label(c) for c in class_names]
    show_labels = k <= 60
    font = 9 if k <= 20 else 7 if k <= 40 else 6
    longest = max((len(x) for x in labels), default=1) if show_labels else 0
    steep = k > 12 or longest > 12
    cell = 0.5 if k <= 10 else 0.4 if k <= 20 else 0.22
    label_in = longest * font * 0.65 / 72  # about 0.65 em per character
    side = min(max(3.0, cell * k), 20.0)
    width = side + label_in + 1.6  # y labels, colour bar
    height = side + label_in * (1.0 if steep else 0.75) + 1.2  # x labels, title, axis names
    fig, ax = plt.subplots(figsize=(width, height), layout="constrained")
    image = ax.imshow(cm_arr / rows, cmap="Blues", vmin=0, vmax=1)
    # No fraction=/pad= here: with them the constrained layout misplaces the axes and clips "true".
    fig.colorbar(image, ax=ax, shrink=0.8, label="fraction of the true class")
    if show_labels:
        ax.set_xticks(range(k), labels, rotation=90 if steep else 45, ha="center" if steep else "right",
                      rotation_mode="anchor" if not steep else "default", fontsize=font)  # fmt: skip
        ax.set_yticks(range(k), labels, fontsize=font)
        if k <= 20:
            for i in range(k):
                for j in range(k):
                    color = "white" if cm_arr[i, j] / rows[i, 0] > 0.5 else "black"
                    ax.text(j, i, str(cm_arr[i, j]), ha="center", va="center", color=color, fontsize=8)
    else:  # too many to name: every tenth class index
        ax.set_xticks(range(0, k, max(1, k // 10)))
        ax.set_yticks(range(0, k, max(1, k // 10)))
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    n = int(cm_arr.sum())
    accuracy = np.trace(cm_arr) / max(n, 1)
    ax.set_title(
        f"{title + chr(10) if title else ''}confusion matrix (n = {n}, accuracy {accuracy:.3f})",
        fontsize=10,
    )
    return save_figure(fig, path)


def plot_curves(history: Sequence[dict], path: PathOrFile, title: str = "") -> PathOrFile:
    """Loss and accuracy per epoch (``metrics.jsonl`` rows), train and validation; a dashed line
    where a new phase starts (e.g. head -> finetune), as the course plots do."""
    plt = pyplot()
    epochs = [h.get("epoch", i + 1) for i, h in enumerate(history)]
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(11, 4))
    for ax, key in ((ax_loss, "loss"), (ax_acc, "acc")):
        for split, label in (("train", "train"), ("val", "validation")):
            column = f"{split}_{key}"
            points = [(e, h[column]) for e, h in zip(epochs, history) if h.get(column) is not None]
            if points:
                ax.plot(*zip(*points), "o-", ms=3, label=label)
        previous = None
        for e, h in zip(epochs, history):
            phase = h.get("phase")
            if previous is not None and phase != previous:
                ax.axvline(e - 0.5, color="grey", ls="--", lw=1)
                ax.text(
                    e - 0.4,
                    0.98,
                    f"start {phase}",
                    transform=ax.get_xaxis_transform(),
                    va="top",
                    fontsize=8,
                    color="grey",
                )
            previous = phase
        ax.set_xlabel("epoch")
        ax.set_ylabel("loss" if key == "loss" else "accuracy")
        ax.grid(alpha=0.3)
        if ax.lines:
            ax.legend()
    ax_loss.set_title("loss")
    ax_acc.set_title("accuracy")
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return save_figure(fig, path)


def plot_image_grid(
    images: Sequence[Any],
    captions: Sequence[str],
    path: PathOrFile,
    title: str = "",
    empty: str = "no images",
) -> PathOrFile:
    """A grid of (C, H, W) images with values in [0, 1], a caption under each (e.g. the worst mistakes)."""
    plt = pyplot()
    n = len(images)
    cols = min(max(n, 1), 4)
    rows = max(1, math.ceil(n / cols))
    fig, axes = plt.subplots(rows, cols, figsize=(2.6 * cols, 2.9 * rows), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, img, caption in zip(axes.flat, images, captions):
        arr = np.asarray(img).transpose(1, 2, 0)
        grey = arr.shape[2] == 1
        ax.imshow(arr[:, :, 0] if grey else arr, cmap="gray" if grey else None, vmin=0, vmax=1)
        ax.set_title(caption, fontsize=8)
    if n == 0:
        axes[0, 0].text(0.5, 0.5, empty, ha="center", va="center")
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return save_figure(fig, path)
