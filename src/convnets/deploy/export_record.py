"""``RUN_DIR/export.json``: which weights ``model.onnx`` was exported from, and whether it still is the run's.

Torch-free, and below both the writer (:mod:`convnets.deploy.export`, torch) and the engines that run the
file (:mod:`convnets.deploy.engines`, without torch): the writer records each export of the run's own
``model.onnx`` here, the engines read the record to refuse a stale or foreign file, so neither imports
the other to share it. ``export.json`` also keeps each engine's parity check against ONNX Runtime fp32,
the int8 model's measured accuracy and the engines' speeds on each machine ``auto`` met.

The errors of exporting and running an export live here too, so that the torch-free paths (``predict``,
the server) can catch a failed export without importing the torch module that raises it.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

from .. import __version__
from ..base.atomic import atomic_write_json
from ..base.errors import ConvnetsError
from ..base.runs import EXPORT_INFO_FILE, INT8_ONNX_FILE, ONNX_FILE, RunConfig, RunFolderError, weights_path

# An engine passes its parity check against ONNX Runtime fp32 when, on the check images, no class
# probability moves by more than this and the top-1 class agrees on at least this fraction.
# OpenVINO bf16 moved probabilities by up to 0.035 (top-1 unchanged) on the alpaca MobileNetV2.
CHECK_MAX_PROB_DIFF = 0.1
CHECK_MIN_AGREEMENT = 0.97


class ExportError(ConvnetsError, RuntimeError):
    """The export could not be written or does not match PyTorch within tolerance."""


class EngineError(ConvnetsError, RuntimeError):
    """The asked-for engine cannot run this run's export (not installed, no int8 model, stale)."""


class ExportMismatchError(EngineError):
    """The exported file is not the one exported from this run's weights (or is missing), and the run
    folder cannot be written to export it again: it is refused, never run."""


def file_sha256(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    try:
        with open(path, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
    except OSError as e:
        raise RunFolderError(f"{path}: cannot read ({e.strerror or e})") from None
    return h.hexdigest()


def weights_fingerprint(run_dir: str | os.PathLike) -> str:
    """sha256 of ``model.safetensors`` (what the export was made from)."""
    return file_sha256(weights_path(run_dir))


@dataclass
class EngineCheck:
    """An engine's probabilities against ONNX Runtime fp32 on the same images."""

    engine: str  # e.g. "openvino-bf16"
    images: int
    source: str  # "validation images" or "random pixels" (a run without a folder split)
    top1_agreement: float
    max_prob_diff: float

    @property
    def passed(self) -> bool:
        return self.max_prob_diff <= CHECK_MAX_PROB_DIFF and self.top1_agreement >= CHECK_MIN_AGREEMENT


@dataclass
class Int8Info:
    """``model.int8.onnx``: how it was calibrated and what it cost on the validation split."""

    weights_sha256: str
    quantizer: str
    calibration_images: int
    val_images: int
    fp32_top1: float
    int8_top1: float
    top1_agreement: float
    max_drop: float  # points; above it the int8 model is refused
    seconds: float = 0.0
    weights: str = "s8"  # "u8" (U8U8) where the CPU that quantized had no VNNI: runs on ONNX Runtime
    int8_sha256: str | None = None  # of model.int8.onnx as written: any other file there is refused

    @property
    def delta_points(self) -> float:
        return 100.0 * (self.int8_top1 - self.fp32_top1)

    @property
    def accepted(self) -> bool:
        return -self.delta_points <= self.max_drop


@dataclass
class ExportInfo:
    """``RUN_DIR/export.json``: which weights ``model.onnx`` came from, its parity with PyTorch, the
    engines' parity checks and the int8 model's accuracy."""

    weights_sha256: str
    max_abs_diff: float
    opset: int
    convnets: str = __version__
    checks: dict[str, EngineCheck] = field(default_factory=dict)
    int8: Int8Info | None = None
    # model.onnx itself as written, and what it takes and gives: a file swapped in from another run
    # (or damaged) has another hash and is exported again or refused, never run.
    onnx_sha256: str | None = None
    input_shape: list[int] | None = None  # [C, H, W]
    num_classes: int | None = None
    # milliseconds per image of each engine (check key) at the auto choice's timing batch, by machine
    # (convnets.deploy.engines.choice.machine_key)
    speeds: dict[str, dict[str, float]] = field(default_factory=dict)

    @classmethod
    def read(cls, run_dir: str | os.PathLike) -> ExportInfo | None:
        path = Path(run_dir) / EXPORT_INFO_FILE
        try:
            raw = json.loads(path.read_text())
            info = cls(**{k: raw[k] for k in ("weights_sha256", "max_abs_diff", "opset", "convnets")})
            info.onnx_sha256, info.input_shape = raw.get("onnx_sha256"), raw.get("input_shape")
            info.num_classes = raw.get("num_classes")
            info.checks = {k: EngineCheck(**v) for k, v in (raw.get("checks") or {}).items()}
            if raw.get("int8"):
                info.int8 = Int8Info(**raw["int8"])
            speeds = raw.get("speeds") or {}
            info.speeds = {str(m): {str(e): float(t) for e, t in v.items()} for m, v in speeds.items()}
            return info
        except (OSError, ValueError, KeyError, TypeError):
            return None

    def write(self, run_dir: str | os.PathLike) -> Path:
        return atomic_write_json(Path(run_dir) / EXPORT_INFO_FILE, asdict(self))


def export_problem(run_dir: str | os.PathLike, config: RunConfig | None = None) -> str | None:
    """Why ``RUN_DIR/model.onnx`` is not to be run as this run's model (None: it is).

    It is the run's when ``export.json`` records the sha256 of both the current ``model.safetensors``
    and ``model.onnx`` itself, and the input shape and class count of the run's ``config.json``."""
    run_dir = Path(run_dir)
    onnx_path = run_dir / ONNX_FILE
    info = ExportInfo.read(run_dir)
    if not onnx_path.is_file():
        return f"{onnx_path} does not exist"
    if info is None:
        return f"{run_dir / EXPORT_INFO_FILE} is missing or damaged, so {onnx_path} cannot be verified"
    if info.weights_sha256 != weights_fingerprint(run_dir):
        return f"{run_dir / 'model.safetensors'} changed since {onnx_path} was exported"
    if info.onnx_sha256 is None:
        return f"{run_dir / EXPORT_INFO_FILE} (older convnets) records no hash of {onnx_path}"
    if info.onnx_sha256 != file_sha256(onnx_path):
        return f"{onnx_path} is not the file exported from this run (its sha256 differs from export.json's)"
    config = config or RunConfig.read(run_dir)
    if info.input_shape is not None and tuple(info.input_shape) != tuple(config.input_shape):
        return f"{onnx_path} takes {tuple(info.input_shape)} input, config.json says {config.input_shape}"
    if info.num_classes is not None and info.num_classes != config.num_classes:
        return f"{onnx_path} gives {info.num_classes} classes, config.json says {config.num_classes}"
    return None


def record_export(
    run_dir: str | os.PathLike, weights_sha256: str, max_abs_diff: float, opset: int, config: RunConfig
) -> ExportInfo:
    """A new ``export.json`` for the ``model.onnx`` just written (the old engine checks and int8 model
    described the previous file: both are dropped)."""
    run_dir = Path(run_dir)
    info = ExportInfo(
        weights_sha256,
        max_abs_diff,
        opset,
        onnx_sha256=file_sha256(run_dir / ONNX_FILE),
        input_shape=list(config.input_shape),
        num_classes=config.num_classes,
    )
    info.write(run_dir)
    (run_dir / INT8_ONNX_FILE).unlink(missing_ok=True)
    return info
