"""Running a trained run folder: `predictor` (Classifier, TTA, predict), `evaluate` (metrics, ensembles),
`export` (ONNX/TorchScript, with torch; `quantize`: int8), `export_record` (export.json: is model.onnx the
run's?) and `engines` (the exported model on ONNX Runtime or OpenVINO, without torch).
"""

from __future__ import annotations

from ..base.lazy import lazy_exports

_EXPORTS = {
    "Classifier": "predictor",
    "predict": "predictor",
    "evaluate": "evaluate",
    "evaluate_ensemble": "evaluate",
    "EvalResult": "evaluate",
    "export_model": "export",
    "export_run": "export",
}

__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
