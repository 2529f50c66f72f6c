"""Trusting a trained model: calibration (`calibration`), "none of these" flags (`ood`), error analysis
(`analysis`), why it decided (`explain`: Grad-CAM), and fitting and applying them on a run (`fit`).

Training fits the temperature and the OOD detector at its end (`fit.calibrate_run`); `deploy` applies them
to every answer (`fit.RunTrust`).
"""

from __future__ import annotations

from ..base.lazy import lazy_exports

# Lazy, like convnets.data: `calibration` is numpy-only and `predict` on an exported model reads the
# run's trust files without torch. These names were `convnets.trust`'s before it became a package.
_EXPORTS = {
    "RunTrust": "fit",
    "SplitFeatures": "fit",
    "TrustFit": "fit",
    "annotate_exported": "fit",
    "calibrate_run": "fit",
    "ood_warning": "fit",
    "split_features": "fit",
}

__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
