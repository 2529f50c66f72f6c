"""Error analysis of a set of predictions: what fastai's ``ClassificationInterpretation`` shows.

Balanced accuracy and macro-F1 beside accuracy (they do not let a large class hide a small one),
the most-confused class pairs, and the top losses (the images the model got most wrong, with
the true class, the prediction and its probability). numpy only; no torch.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np

from .calibration import reliability

__all__ = [
    "Confusion",
    "ErrorAnalysis",
    "TopLoss",
    "balanced_accuracy",
    "macro_f1",
    "most_confused",
    "top_losses",
]


def balanced_accuracy(cm: Sequence[Sequence[int]]) -> float:
    """Mean recall over the classes that occur (rows of the confusion matrix with any image)."""
    cm = np.asarray(cm, dtype=np.float64)
    support = cm.sum(1)
    present = support > 0
    return float((np.diag(cm)[present] / support[present]).mean()) if present.any() else float("nan")


def macro_f1(cm: Sequence[Sequence[int]]) -> float:
    """Unweighted mean F1 over the classes that occur in the truth or the predictions."""
    cm = np.asarray(cm, dtype=np.float64)
    tp = np.diag(cm)
    denom = cm.sum(0) + cm.sum(1)  # 2 tp + fp + fn
    present = denom > 0
    return float((2 * tp[present] / denom[present]).mean()) if present.any() else float("nan")


@dataclass(frozen=True)
class Confusion:
    true: str
    predicted: str
    count: int
    share: float  # of the true class's images

    def to_dict(self) -> dict:
        return asdict(self)


def most_confused(
    cm: Sequence[Sequence[int]], class_names: Sequence[str], k: int = 10, min_count: int = 1
) -> list[Confusion]:
    """The off-diagonal cells of the confusion matrix with the most images, largest first."""
    cm = np.asarray(cm, dtype=np.int64)
    support = cm.sum(1)
    cells = [
        Confusion(class_names[i], class_names[j], int(cm[i, j]), float(cm[i, j] / max(support[i], 1)))
        for i in range(len(cm))
        for j in range(len(cm))
        if i != j and cm[i, j] >= min_count
    ]
    cells.sort(key=lambda c: (-c.count, -c.share, c.true, c.predicted))
    return cells[:k]


@dataclass(frozen=True)
class TopLoss:
    index: int  # position in the evaluated set
    id: str  # file path or "<dataset>[val i]"
    true: str
    predicted: str
    prob: float  # probability of the prediction
    true_prob: float  # probability given to the true class
    loss: float  # -log(true_prob)

    def to_dict(self) -> dict:
        return asdict(self)


def top_losses(
    probs: np.ndarray, targets: np.ndarray, ids: Sequence[str], class_names: Sequence[str], k: int = 16
) -> list[TopLoss]:
    """The ``k`` images with the highest cross-entropy loss (wrong and confident first)."""
    probs = np.asarray(probs, dtype=np.float64)
    targets = np.asarray(targets, dtype=np.int64)
    rows = np.arange(len(targets))
    true_prob = probs[rows, targets]
    loss = -np.log(np.clip(true_prob, 1e-12, None))
    pred = probs.argmax(1)
    order = np.argsort(-loss, kind="stable")[:k]
    return [
        TopLoss(
            int(i),
            str(ids[i]),
            class_names[targets[i]],
            class_names[pred[i]],
            float(probs[i, pred[i]]),
            float(true_prob[i]),
            float(loss[i]),
        )
        for i in order
    ]


@dataclass
class ErrorAnalysis:
    """Everything ``evaluate`` and the report show about where a model goes wrong."""

    balanced_accuracy: float
    macro_f1: float
    most_confused: list[Confusion]
    top_losses: list[TopLoss]
    ece: float  # expected calibration error of the reported probabilities
    reliability: dict  # convnets.trust.calibration.Reliability.to_dict()

    @classmethod
    def of(
        cls,
        probs: np.ndarray,
        targets: np.ndarray,
        ids: Sequence[str],
        class_names: Sequence[str],
        cm: Sequence[Sequence[int]],
        k: int = 16,
    ) -> ErrorAnalysis:

        rel = reliability(probs, targets)
        return cls(
            balanced_accuracy(cm),
            macro_f1(cm),
            most_confused(cm, class_names, k=10),
            top_losses(probs, targets, ids, class_names, k=k),
            rel.ece,
            rel.to_dict(),
        )

    def to_dict(self) -> dict:
        return {
            "balanced_accuracy": self.balanced_accuracy,
            "macro_f1": self.macro_f1,
            "most_confused": [c.to_dict() for c in self.most_confused],
            "top_losses": [t.to_dict() for t in self.top_losses],
            "ece": self.ece,
            "reliability": self.reliability,
        }
