"""One prediction row: what ``predict --json``, the server's ``/v1/predict`` and the report share.

Torch-free (numpy only), so the server and ``predict`` on an exported model build rows without torch.
JSON schema of a row: ``{"file", "top": [{"class", "prob"}, ...]}``, or ``{"file", "error"}`` for an
input that could not be used; further fields (such as ``ood``) are added only when set.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

# BACKENDS: the name convnets.accel.inference imports the PyTorch path's --backend list by (defined in
# choices.py, with the other option lists).
from .choices import TORCH_PATH_CHOICES as BACKENDS  # noqa: F401


@dataclass(frozen=True)
class ClassProb:
    label: str
    prob: float

    def to_dict(self) -> dict[str, Any]:
        return {"class": self.label, "prob": self.prob}


@dataclass
class Prediction:
    """Top-k classes for one input, or the reason it could not be used."""

    file: str
    top: list[ClassProb] = field(default_factory=list)
    error: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)  # e.g. {"ood": {...}}

    @property
    def label(self) -> str | None:
        return self.top[0].label if self.top else None

    @property
    def prob(self) -> float | None:
        return self.top[0].prob if self.top else None

    def to_dict(self) -> dict[str, Any]:
        if self.error is not None:
            return {"file": self.file, "error": self.error, **self.extra}
        return {"file": self.file, "top": [c.to_dict() for c in self.top], **self.extra}


def softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise softmax in float64 for stable probabilities, returned as float32."""
    z = np.asarray(logits, dtype=np.float64)
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return (e / e.sum(axis=1, keepdims=True)).astype(np.float32)


def top_k(probs: np.ndarray, class_names: Sequence[str], k: int) -> list[list[ClassProb]]:
    """The ``k`` most probable classes of each row of ``probs`` (N, K), most probable first; ties
    keep the lower class index first (like ``torch.topk`` on CPU)."""
    probs = np.asarray(probs)
    k = max(1, min(int(k), probs.shape[1]))
    order = np.argsort(-probs, axis=1, kind="stable")[:, :k]
    return [[ClassProb(class_names[c], float(row[c])) for c in idx] for row, idx in zip(probs, order)]
