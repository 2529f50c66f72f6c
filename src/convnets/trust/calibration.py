"""Are the probabilities honest: expected calibration error, reliability diagrams, temperature scaling.

A model is calibrated when, of the images it labels with confidence 0.8, about 80% are right.
Modern CNNs are over-confident (Guo et al. 2017, "On calibration of modern neural networks");
dividing the logits by one temperature ``T > 1`` fitted on held-out data fixes most of it without
changing any prediction (the arg-max is unchanged).

Works on numpy arrays and imports neither torch nor torchvision (``predict`` on an exported model
applies the temperature without them). Probabilities in, probabilities out: ``log p`` differs from
the logits by a constant per row, and softmax ignores such constants, so
``softmax(log p / T) == softmax(logits / T)`` exactly for a single view; for test-time augmentation
(averaged probabilities) it scales the averaged distribution.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from ..base.plots import pyplot, save_figure

__all__ = [
    "Calibration",
    "Reliability",
    "apply_temperature",
    "expected_calibration_error",
    "fit_temperature",
    "nll",
    "plot_reliability",
    "reliability",
]

DEFAULT_BINS = 15  # Guo et al.'s choice; equal-width confidence bins
_TINY = np.finfo(np.float32).tiny  # log(0) guard: a probability that underflowed in float32


def _log_probs(probs: np.ndarray) -> np.ndarray:
    return np.log(np.clip(np.asarray(probs, dtype=np.float64), _TINY, None))


def _softmax(z: np.ndarray) -> np.ndarray:
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def apply_temperature(probs: np.ndarray, temperature: float | None) -> np.ndarray:
    """Probabilities as if the logits had been divided by ``temperature`` (``None``/1: unchanged)."""
    if temperature is None or temperature == 1.0:
        return np.asarray(probs)
    return _softmax(_log_probs(probs) / float(temperature)).astype(np.float32)


def nll(probs: np.ndarray, targets: np.ndarray, temperature: float = 1.0) -> float:
    """Mean negative log-likelihood of the true classes (after ``temperature``)."""
    from scipy.special import log_softmax  # start-up: scipy on first use

    targets = np.asarray(targets, dtype=np.int64)
    logp = log_softmax(_log_probs(probs) / temperature, axis=1)
    return float(-logp[np.arange(len(targets)), targets].mean())


def fit_temperature(probs: np.ndarray, targets: np.ndarray) -> float:
    """The temperature minimising the NLL of ``targets`` (a bounded 1-D search over log T with
    SciPy's Brent method; T in [0.05, 20]).

    Without a single mistake the NLL only falls as T -> 0 (sharper is always "better"), which says
    nothing about the confidence the model deserves: then T stays 1."""
    from scipy.optimize import minimize_scalar  # start-up: scipy on first use

    if len(targets) == 0:
        raise ValueError("fitting a temperature needs at least one labelled image")
    if np.all(np.asarray(probs).argmax(1) == np.asarray(targets)):
        return 1.0
    result = minimize_scalar(
        lambda log_t: nll(probs, targets, math.exp(log_t)),
        bounds=(math.log(0.05), math.log(20.0)),
        method="bounded",
        options={"xatol": 1e-4},
    )
    return float(math.exp(result.x))


@dataclass
class Reliability:
    """Per confidence bin: mean confidence, accuracy and count; and the expected calibration error."""

    edges: list[float]
    confidence: list[float | None]  # None for an empty bin
    accuracy: list[float | None]
    counts: list[int]
    ece: float

    def to_dict(self) -> dict:
        return self.__dict__.copy()


def reliability(probs: np.ndarray, targets: np.ndarray, bins: int = DEFAULT_BINS) -> Reliability:
    """Reliability-diagram data: top-1 confidence binned into ``bins`` equal-width bins."""
    probs = np.asarray(probs, dtype=np.float64)
    targets = np.asarray(targets, dtype=np.int64)
    conf = probs.max(1)
    correct = probs.argmax(1) == targets
    edges = np.linspace(0.0, 1.0, bins + 1)
    which = np.clip(np.digitize(conf, edges[1:-1], right=True), 0, bins - 1)
    confidence, accuracy, counts, ece = [], [], [], 0.0
    for b in range(bins):
        mask = which == b
        n = int(mask.sum())
        counts.append(n)
        if n == 0:
            confidence.append(None)
            accuracy.append(None)
            continue
        c, a = float(conf[mask].mean()), float(correct[mask].mean())
        confidence.append(c)
        accuracy.append(a)
        ece += n / max(len(conf), 1) * abs(a - c)
    return Reliability([float(e) for e in edges], confidence, accuracy, counts, float(ece))


def expected_calibration_error(probs: np.ndarray, targets: np.ndarray, bins: int = DEFAULT_BINS) -> float:
    """ECE: the count-weighted mean gap between confidence and accuracy over confidence bins."""
    return reliability(probs, targets, bins).ece


@dataclass
class Calibration:
    """A fitted temperature and what it did on the images it was fitted on."""

    temperature: float
    n: int
    nll_before: float
    nll_after: float
    ece_before: float
    ece_after: float
    before: Reliability
    after: Reliability

    @classmethod
    def fit(cls, probs: np.ndarray, targets: np.ndarray, bins: int = DEFAULT_BINS) -> Calibration:
        t = fit_temperature(probs, targets)
        calibrated = apply_temperature(probs, t)
        before, after = reliability(probs, targets, bins), reliability(calibrated, targets, bins)
        nll_before, nll_after = nll(probs, targets), nll(calibrated, targets)
        return cls(t, len(targets), nll_before, nll_after, before.ece, after.ece, before, after)

    def summary(self) -> str:
        return (
            f"temperature {self.temperature:.3f} fitted on {self.n} images: "
            f"NLL {self.nll_before:.4f} -> {self.nll_after:.4f}, "
            f"ECE {self.ece_before:.4f} -> {self.ece_after:.4f}"
        )

    def to_dict(self) -> dict:
        out = {k: v for k, v in self.__dict__.items() if k not in ("before", "after")}
        return {**out, "reliability_before": self.before.to_dict(), "reliability_after": self.after.to_dict()}


def plot_reliability(path, curves: dict[str, Reliability], title: str = "reliability diagram"):
    """Accuracy against confidence per bin for each named curve (e.g. before/after temperature),
    the diagonal (perfect calibration), and the share of images per bin below. ``path``: a file path
    (written atomically) or a binary file object; returned."""

    fig, (ax, hist) = pyplot().subplots(2, 1, figsize=(5.2, 5.6), sharex=True, height_ratios=[3, 1])
    ax.plot([0, 1], [0, 1], color="grey", linestyle="--", linewidth=1, label="perfectly calibrated")
    for (name, rel), marker in zip(curves.items(), "os^D"):
        pts = [(c, a) for c, a in zip(rel.confidence, rel.accuracy) if c is not None]
        if pts:
            xs, ys = zip(*pts)
            ax.plot(xs, ys, marker=marker, label=f"{name} (ECE {rel.ece:.3f})")
    ax.set_ylabel("accuracy")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.02)
    ax.set_title(title)
    ax.legend(loc="lower right", fontsize=8)
    first = next(iter(curves.values()))
    centres = [(a + b) / 2 for a, b in zip(first.edges[:-1], first.edges[1:])]
    total = max(sum(first.counts), 1)
    hist.bar(centres, [c / total for c in first.counts], width=1 / len(centres) * 0.9, color="tab:blue")
    hist.set_xlabel("confidence (top-1 probability)")
    hist.set_ylabel("share")
    fig.tight_layout()
    return save_figure(fig, path)
