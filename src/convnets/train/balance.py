"""Imbalanced classes: ``train --balance {none,loss,sampler,auto}``.

With 500 images of one class and 50 of another, a model can reach 91% accuracy by never answering the
small class. Two remedies:

* ``loss``: class-weighted cross-entropy, weight ``n / (K * n_c)`` per class (scikit-learn's
  "balanced" weights), so every class contributes equally to the loss;
* ``sampler``: each epoch draws as many images as the training set holds, with replacement, each
  with probability proportional to ``1 / n_c`` of its class, so batches are balanced on average
  (the draw is a function of (seed, epoch): ``--resume`` stays exact).

``auto`` (the default) turns ``loss`` on when the largest class has more than 3x the images of the
smallest, and says so; below that it changes nothing. ``loss`` is auto's choice because it sees
every image every epoch (the sampler repeats minority images and leaves out majority ones); both
raise the small class's recall in tests/test_balance.py.

When classes are imbalanced the epoch line also shows the balanced accuracy (mean per-class recall)
and the best epoch is chosen by it: plain accuracy would reward ignoring the small class.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

BALANCE_MODES = ("none", "loss", "sampler", "auto")
IMBALANCE_RATIO = 3.0  # largest / smallest class count above which classes count as imbalanced


@dataclass
class Balance:
    mode: str  # what is applied: "none", "loss" or "sampler"
    counts: list[int]  # training images per class
    requested: str = "auto"

    @property
    def ratio(self) -> float:
        present = [c for c in self.counts if c > 0]
        return max(present) / min(present) if present else 1.0

    @property
    def imbalanced(self) -> bool:
        return self.ratio > IMBALANCE_RATIO

    def class_weights(self) -> torch.Tensor:
        """``n / (K * n_c)`` per class (0 for a class with no training image)."""
        counts = torch.tensor(self.counts, dtype=torch.float32)
        weights = counts.sum() / (len(self.counts) * counts.clamp_min(1))
        return torch.where(counts > 0, weights, torch.zeros_like(weights))

    def draw(self, labels: Sequence[int] | torch.Tensor, seed: int, epoch: int) -> list[int]:
        """``len(labels)`` positions drawn with replacement, class-balanced, a function of (seed, epoch)."""
        y = torch.as_tensor(labels, dtype=torch.long)
        p = self.class_weights()[y].double()
        g = torch.Generator().manual_seed(seed * 1_000_033 + epoch)
        return torch.multinomial(p, len(y), replacement=True, generator=g).tolist()

    def message(self, class_names: Sequence[str]) -> str | None:
        """The line ``train`` prints about it (None when there is nothing to say)."""
        if not self.imbalanced and self.mode == "none":
            return None
        big = max(range(len(self.counts)), key=lambda i: self.counts[i])
        small = min((i for i in range(len(self.counts)) if self.counts[i] > 0), key=lambda i: self.counts[i])
        what = (
            f"imbalanced classes: {class_names[big]} has {self.counts[big]} training images, "
            f"{class_names[small]} {self.counts[small]} ({self.ratio:.1f}x)"
            if self.imbalanced
            else f"classes within {IMBALANCE_RATIO:g}x of each other"
        )
        action = {
            "loss": "class-weighted loss",
            "sampler": "class-balanced sampler",
            "none": "no balancing (--balance none)",
        }[self.mode]
        chosen = " (--balance auto)" if self.requested == "auto" and self.mode != "none" else ""
        best = "; best epoch by balanced accuracy" if self.imbalanced else ""
        return f"{what}: {action}{chosen}{best}"


def resolve_balance(requested: str, labels: Sequence[int] | None, num_classes: int) -> Balance:
    """The balancing to apply for ``--balance requested`` given the training labels."""
    if requested not in BALANCE_MODES:
        raise ValueError(f"--balance must be one of {', '.join(BALANCE_MODES)}, got {requested!r}")
    if labels is None:
        if requested in ("loss", "sampler"):
            raise ValueError("--balance: this dataset does not expose its labels")
        return Balance("none", [0] * num_classes, requested)
    counts = torch.bincount(torch.as_tensor(list(labels), dtype=torch.long), minlength=num_classes).tolist()
    balance = Balance("none", counts, requested)
    if requested == "auto":
        balance.mode = "loss" if balance.imbalanced else "none"
    else:
        balance.mode = requested
    return balance


def dataset_labels(dataset) -> list[int] | None:
    """The training labels of a data-layer dataset (or ``Subset``), without decoding any image."""
    labels = getattr(dataset, "labels", None)
    return [int(v) for v in labels] if labels is not None else None


def balanced_accuracy(correct: Sequence[float], counts: Sequence[float]) -> float:
    """Mean per-class recall over the classes present."""
    recalls = [c / n for c, n in zip(correct, counts) if n > 0]
    return sum(recalls) / len(recalls) if recalls else float("nan")
