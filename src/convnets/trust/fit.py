"""Fit what makes a run's answers trustworthy, on the run's own data: the temperature that calibrates
its probabilities (``convnets.trust.calibration``) and the detector that flags inputs unlike its training
images (``convnets.trust.ood``); both are stored in the run folder for ``predict``, ``evaluate`` and the
report.

When: the OOD detector is fitted at the end of ``convnets train`` (one extra forward pass over the
training and validation images, no gradients), so a fresh run flags strange inputs out of the box;
the temperature changes every probability the run reports, so it is fitted only when asked
(``convnets evaluate RUN_DIR --calibrate``, which refits both).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..base.predictions import ClassProb, softmax
from ..base.runs import ONNX_FILE, OODConfig, RunConfig
from .calibration import Calibration, apply_temperature, plot_reliability
from .ood import FeatureSession, OODDetector, features_and_logits

__all__ = [
    "UNKNOWN",
    "RunTrust",
    "SplitFeatures",
    "TrustFit",
    "calibrate_run",
    "ood_warning",
    "split_features",
]

CALIBRATION_FILE = "calibration.png"  # reliability before/after the fitted temperature


@dataclass
class TrustFit:
    calibration: Calibration | None = None
    ood: OODConfig | None = None
    val_pass_rate: float | None = None  # share of validation images the OOD detector lets through
    files: dict[str, str] = field(default_factory=dict)

    def summary(self) -> list[str]:
        lines = []
        if self.calibration is not None:
            lines.append(self.calibration.summary())
        if self.ood is not None:
            lines.append(
                f"OOD detector ({self.ood.method}, {self.ood.n_train} training images): threshold "
                f"{self.ood.threshold:.2f}, passes {self.val_pass_rate:.1%} of "
                f"{self.ood.n_val} validation images"
            )
        return lines


@dataclass
class SplitFeatures:
    """Penultimate features, logits and labels of a run's training and validation images."""

    train_features: np.ndarray
    train_labels: np.ndarray
    val_features: np.ndarray
    val_logits: np.ndarray
    val_labels: np.ndarray


def split_features(
    run_dir: str | os.PathLike,
    *,
    batch_size: int = 64,
    model=None,
    loaders: tuple[Iterable, Iterable | None] | None = None,
) -> SplitFeatures:
    """Run the model (eval mode, no augmentation) over the run's own training and validation split,
    reproduced from config.json, or over ``loaders`` (training, validation batches of ``(images,
    labels)``) when the caller holds them already (the trainer, its images maybe in memory)."""
    import torch  # start-up: torch on first use

    from ..weights import load_run  # start-up: torch on first use

    if model is None:
        model, _ = load_run(run_dir)
    if loaders is None:
        from ..data.run_splits import load_run_splits  # start-up: torch, only to fit

        try:
            splits = load_run_splits(RunConfig.read(run_dir), batch_size=batch_size)
        except ValueError as e:
            raise ValueError(f"{run_dir}: {e}") from e
        loaders = (splits.train, splits.val)

    def run(loader):
        feats, logits, labels = [], [], []
        if loader is None:
            return np.zeros((0, 0), np.float32), np.zeros((0, 0), np.float32), np.zeros(0, np.int64)
        with torch.no_grad():
            for batch in loader:
                z, f = features_and_logits(model, batch[0])
                feats.append(f.numpy())
                logits.append(z.numpy())
                labels.append(batch[1].numpy())
        return np.concatenate(feats), np.concatenate(logits), np.concatenate(labels).astype(np.int64)

    model.eval()
    train_f, _, train_y = run(loaders[0])
    val_f, val_z, val_y = run(loaders[1])
    return SplitFeatures(train_f, train_y, val_f, val_z, val_y)


def calibrate_run(
    run_dir: str | os.PathLike,
    *,
    temperature: bool = True,
    ood: bool = True,
    quantile: float = 0.95,
    out: str | os.PathLike | None = None,
    batch_size: int = 64,
    model=None,
    features: SplitFeatures | None = None,
    loaders: tuple[Iterable, Iterable | None] | None = None,
    log: Callable[[str], None] | None = None,
) -> TrustFit:
    """Fit the temperature (on the validation split) and/or the OOD detector (centres on the training
    split, threshold at ``quantile`` of the validation scores) and store them in ``run_dir``.

    ``features``: the split's features when the caller already has them (a head-only training run's
    cached base features); otherwise :func:`split_features` runs the model over the split (over
    ``loaders`` when given).

    Writes ``calibration.png`` (reliability before/after the temperature) into ``out`` (default:
    the run folder).
    """

    run_dir = Path(run_dir)
    config = RunConfig.read(run_dir)
    if features is None:
        features = split_features(run_dir, batch_size=batch_size, model=model, loaders=loaders)
    feats = features
    fit = TrustFit()
    if temperature:
        if len(feats.val_labels) == 0:
            raise ValueError(f"{run_dir}: the run has no validation split to fit a temperature on")
        fit.calibration = Calibration.fit(softmax(feats.val_logits), feats.val_labels)
        config.temperature = fit.calibration.temperature
        path = plot_reliability(
            Path(out or run_dir) / CALIBRATION_FILE,
            {
                "before": fit.calibration.before,
                f"T = {fit.calibration.temperature:.2f}": fit.calibration.after,
            },
            title=f"reliability on the validation split (n = {fit.calibration.n})",
        )
        fit.files["calibration"] = str(path)
    if ood:
        detector = OODDetector.fit(feats.train_features, feats.train_labels, feats.val_features, quantile)
        config.ood = detector.save(run_dir)
        fit.ood = config.ood
        held_out = feats.val_features if len(feats.val_features) else feats.train_features
        fit.val_pass_rate = float((detector.score(held_out) <= detector.threshold).mean())
    config.write(run_dir)
    if log is not None:
        for line in fit.summary():
            log(line)
    return fit


UNKNOWN = "unknown"  # the answer for a flagged input under --reject-ood


@dataclass
class RunTrust:
    """What a run folder holds for trustworthy answers, ready to apply to predictions."""

    temperature: float | None = None
    detector: OODDetector | None = None

    @classmethod
    def read(cls, run_dir: str | os.PathLike, config: RunConfig | None = None) -> RunTrust:
        config = config or RunConfig.read(run_dir)
        detector = OODDetector.load(run_dir, config.ood) if config.ood is not None else None
        return cls(config.temperature, detector)

    def calibrate(self, probs: np.ndarray) -> np.ndarray:
        """Probabilities after the run's temperature (unchanged without one)."""

        return apply_temperature(probs, self.temperature)

    def annotate(self, rows: list, features: np.ndarray, reject: bool = False) -> None:
        """Add the ``ood`` field to prediction rows (``Prediction``, one per feature row); with
        ``reject``, a flagged row answers ``unknown`` and keeps the model's classes in ``ood.model_top``."""

        if self.detector is None:
            return
        for row, flag in zip(rows, self.detector.flags(features)):
            row.extra["ood"] = flag
            if reject and flag["flagged"]:
                flag["model_top"] = [c.to_dict() for c in row.top]
                row.top = [ClassProb(UNKNOWN, 1.0)]

    def annotate_torch(self, model, x, rows: list, reject: bool = False) -> None:
        """:meth:`annotate` with the features of the normalised batch ``x`` from the eager model."""

        if self.detector is not None and rows:
            self.annotate(rows, features_and_logits(model, x)[1].numpy(), reject)

    def ood_summary(self, features: np.ndarray) -> dict | None:
        """How many of an evaluated set's images the detector flags (None without a detector)."""
        if self.detector is None or len(features) == 0:
            return None
        flagged = self.detector.score(features) > self.detector.threshold
        return {
            "flagged": int(flagged.sum()),
            "n": len(flagged),
            "share": float(flagged.mean()),
            "threshold": self.detector.threshold,
            "flagged_index": [int(i) for i in np.flatnonzero(flagged)],
        }


def ood_warning(rows: list) -> str | None:
    """The text-output warning for rows flagged as unlike the training data (None when none are)."""
    flagged = [r for r in rows if r.extra.get("ood", {}).get("flagged")]
    if not flagged:
        return None
    what = f"warning: {len(flagged)} of {len(rows)} image(s) look unlike the training data"
    if all(r.top and r.top[0].label == UNKNOWN for r in flagged):
        return f"{what}: answered {UNKNOWN}"
    return f"{what} (marked [ood]): their classes are guesses (--reject-ood answers {UNKNOWN} for them)"


def annotate_exported(run_dir: str | os.PathLike, rows: list, reject: bool = False) -> RunTrust:
    """The ``ood`` field for rows ``predict`` made with the exported model, without torch: the images
    are read again and run through ``model.onnx`` with its features as a second output
    (:class:`convnets.trust.ood.FeatureSession`). Rows with an error are left alone."""
    from ..data.images import read_image  # start-up: PIL on first use

    config = RunConfig.read(run_dir)
    trust = RunTrust.read(run_dir, config)
    good = [r for r in rows if r.error is None]
    if trust.detector is None or not good:
        return trust
    session = FeatureSession(Path(run_dir) / ONNX_FILE)
    for start in range(0, len(good), 32):
        chunk = good[start : start + 32]
        views = [read_image(r.file, config.image_size, config.in_chans, config.resize) for r in chunk]
        pixels = np.stack(views).astype(np.float32).transpose(0, 3, 1, 2) / np.float32(255)
        _, features = session(pixels)
        trust.annotate(chunk, features, reject)
    return trust
