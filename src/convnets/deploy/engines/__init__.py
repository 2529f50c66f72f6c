"""Running a run's exported model without torch, on the fastest engine this CPU has.

``convnets export`` (and the first ``predict``/``serve`` on a run) writes ``RUN_DIR/model.onnx``:
BatchNorm folded, normalisation inside the graph, checked against the PyTorch model
(:mod:`convnets.deploy.export`). ``export.json`` beside it records a fingerprint of
``model.safetensors`` (:mod:`convnets.deploy.export_record`); when the weights change, the export is
stale and is written again (``onnx_file``). :class:`ExportedModel` runs that file with numpy and
Pillow only, so ``predict`` and the server start in well under a second instead of paying seconds for
``import torch, torchvision``. Nothing in this package imports torch or onnx when it is imported.

Engines (each a small object with ``run(pixels) -> logits``, pixels float32 NCHW in [0, 1]; ``engine``):

* ``onnxruntime`` (``onnxruntime_engine``): ``model.onnx`` on ONNX Runtime, fp32: the reference the
  other engines are checked on (``check``);
* ``openvino`` (``openvino_engine``): ``model.onnx`` on OpenVINO, computing in bf16 on CPUs with AMX /
  AVX512-BF16 (fp32 elsewhere); checked once against ``onnxruntime`` on the run's validation images;
* ``int8``: ``model.int8.onnx`` (``convnets export RUN --int8``, see :mod:`convnets.deploy.quantize`),
  whose validation top-1 change was measured and accepted when it was written; run on OpenVINO when
  installed.

``choice``: one engine by name, or ``auto``, the fastest of those that passed their check, timed on
this CPU once per run folder. ``tta``: test-time augmentation in numpy. ``exported_model``: the
:class:`ExportedModel` facade. ``fallback``: :func:`choose_engine`, how ``predict`` and the server
open it and what they do when an engine cannot run.
"""

from ..export_record import (
    EngineCheck,
    EngineError,
    ExportError,
    ExportInfo,
    ExportMismatchError,
    Int8Info,
    export_problem,
    file_sha256,
    record_export,
    weights_fingerprint,
)
from .check import check_engine, check_pixels, compare_engines, engine_key, split_files
from .choice import auto_candidates, int8_runner_order, machine_key, make_engine, open_engine, time_engines
from .engine import Engine, pixels_of, run_batched, thread_count
from .exported_model import ExportedModel
from .fallback import EngineChoice, choose_engine
from .onnx_file import ensure_exported
from .onnxruntime_engine import OrtEngine
from .openvino_engine import OpenVinoEngine, openvino_available
from .tta import read_tta_views, ten_crop

__all__ = [
    "Engine",
    "EngineCheck",
    "EngineChoice",
    "EngineError",
    "ExportError",
    "ExportInfo",
    "ExportMismatchError",
    "ExportedModel",
    "Int8Info",
    "OpenVinoEngine",
    "OrtEngine",
    "auto_candidates",
    "check_engine",
    "check_pixels",
    "choose_engine",
    "compare_engines",
    "engine_key",
    "ensure_exported",
    "export_problem",
    "file_sha256",
    "int8_runner_order",
    "machine_key",
    "make_engine",
    "open_engine",
    "openvino_available",
    "pixels_of",
    "read_tta_views",
    "record_export",
    "run_batched",
    "split_files",
    "ten_crop",
    "thread_count",
    "time_engines",
    "weights_fingerprint",
]
