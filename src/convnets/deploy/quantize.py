"""``convnets export RUN --int8``: post-training static int8 quantization of the run's export.

Calibrated on a few hundred of the run's own training images, then measured: top-1 on the run's
validation split with the fp32 export and with the int8 model. The int8 model is kept
(``RUN_DIR/model.int8.onnx``) only when top-1 drops by at most ``max_drop`` points; the figures are
recorded in ``export.json`` either way, so ``--backend auto`` uses int8 only where it was accepted.

Quantizer: ONNX Runtime's ``quantize_static`` (QDQ, per-channel weights, MinMax calibration). It is
a light dependency (ships with onnxruntime) and its QDQ file runs on both ONNX Runtime and OpenVINO;
NNCF (OpenVINO's quantizer) would pull in a second large stack, and was not measured here.
Torch-free.
"""

from __future__ import annotations

import contextlib
import logging
import os
import platform
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from ..base import runtime
from ..base.runs import INT8_ONNX_FILE, RunConfig
from ..data.decode import ImageReadError
from ..data.images import read_image
from .engines import (
    Engine,
    OpenVinoEngine,
    OrtEngine,
    ensure_exported,
    int8_runner_order,
    pixels_of,
    run_batched,
    split_files,
)
from .export_record import ExportInfo, Int8Info, file_sha256

DEFAULT_CALIBRATION_IMAGES = 300
DEFAULT_MAX_DROP = 1.0  # top-1 points
CALIBRATION_BATCH = 8
# int8 dot products in 32-bit accumulators (VNNI, AMX); without them int8 weights are u8
# (int8_weight_type).
INT8_FLAGS = frozenset({"amx_int8", "avx512_vnni", "avx_vnni"})
X86_MACHINE = platform.machine().lower() in ("x86_64", "amd64", "i686", "x86")
QUANTIZER = "onnxruntime.quantize_static QDQ per-channel s8 weights u8 activations MinMax"


def int8_weight_type(flags: frozenset[str] | None = None) -> str:
    """``"s8"`` or ``"u8"``: the int8 weights' type for this CPU. x86 without VNNI multiplies u8
    activations by s8 weights with AVX2's ``vpmaddubsw``, whose 16-bit pair sums saturate (ONNX
    Runtime's quantization guide): on an AVX2 EPYC a MobileNetV2 lost 3.1 points of top-1 so, and with
    oneDNN forced down to AVX2 here OpenVINO lost the same 3.1 points. The guide's two fixes, measured
    on the alpaca MobileNetV2 (bench/RESULTS.md, "int8 on CPUs without VNNI"): 7-bit weights
    (``reduce_range``) lost the same 3.1 points to their coarser steps, while u8 weights (U8U8, run by
    ONNX Runtime, whose kernel widens to 16 bits first) kept fp32's top-1 exactly. With VNNI or AMX the
    products accumulate in 32 bits, and s8 weights on OpenVINO are the fastest and as exact. By the
    CPU's flags, never its vendor."""
    flags = runtime.cpu_flags() if flags is None else flags
    return "u8" if X86_MACHINE and flags and not flags & INT8_FLAGS else "s8"


def quantizer_name(weights: str) -> str:
    if weights == "u8":
        return QUANTIZER.replace("s8 weights", "u8 weights (U8U8: this CPU has no VNNI)")
    return QUANTIZER


class QuantizationRefused(RuntimeError):
    """The int8 model lost more validation top-1 than allowed; carries the measurement."""

    def __init__(self, info: Int8Info):
        self.info = info
        super().__init__(
            f"int8 model refused: validation top-1 {100 * info.int8_top1:.2f}% vs fp32 "
            f"{100 * info.fp32_top1:.2f}% ({info.delta_points:+.2f} points, more than the allowed "
            f"-{info.max_drop:g}; --max-drop raises it) on {info.val_images} images"
        )


@dataclass
class QuantizeResult:
    path: Path
    info: Int8Info
    engine: str  # what ran the int8 model for the accuracy measurement, e.g. "OpenVINO 2026.4 int8"


def _read_views(files: Sequence[Path], config: RunConfig) -> tuple[list[np.ndarray], list[int]]:
    """The readable files' views and their positions in ``files`` (a corrupt image is skipped, as
    training skipped it)."""
    views, kept = [], []
    for i, f in enumerate(files):
        try:
            views.append(read_image(f, config.image_size, config.in_chans, config.resize))
            kept.append(i)
        except ImageReadError:
            continue
    return views, kept


class _CalibrationReader:
    """onnxruntime's CalibrationDataReader over ``batches()``: float32 NCHW pixel batches in [0, 1]."""

    def __init__(self, batches: Callable[[], Iterable[np.ndarray]], input_name: str):
        self.batches, self.input_name = batches, input_name
        self.rewind()

    def get_next(self) -> dict[str, np.ndarray] | None:
        batch = next(self._batches, None)
        return None if batch is None else {self.input_name: batch}

    def rewind(self) -> None:
        self._batches = iter(self.batches())


def quantize_onnx(
    onnx_path: str | os.PathLike,
    out: str | os.PathLike,
    batches: Callable[[], Iterable[np.ndarray]],
    weights: str | None = None,
    reduce_range: bool = False,
) -> None:
    """Static int8 quantization of ``onnx_path`` to ``out`` (:data:`QUANTIZER`), calibrated on the
    pixel batches ``batches()`` yields (float32 NCHW in [0, 1], what the export takes). ``weights``:
    ``"s8"`` or ``"u8"`` (default :func:`int8_weight_type` for this CPU); ``reduce_range``: 7-bit
    weights (measured, not used: bench/backends.py)."""
    # optional: onnxruntime (convnets[export])
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    weights = weights or int8_weight_type()
    input_name = OrtEngine(onnx_path, threads=1).input_name
    with _quiet_root_logger():
        quantize_static(
            str(onnx_path),
            str(out),
            _CalibrationReader(batches, input_name),
            quant_format=QuantFormat.QDQ,
            per_channel=True,
            activation_type=QuantType.QUInt8,  # OpenVINO 2026.4 failed to compile s8 activations
            weight_type=QuantType.QUInt8 if weights == "u8" else QuantType.QInt8,
            reduce_range=reduce_range,
            # MinMax adds ReduceMin/ReduceMax outputs per tensor, so only scalars are kept per batch.
            # (Not CalibMaxIntermediateOutputs: onnxruntime 1.32 drops, not merges, what it flushes.)
            calibrate_method=CalibrationMethod.MinMax,
        )


@contextlib.contextmanager
def _quiet_root_logger():
    """onnxruntime.quantization logs advice per tensor on the root logger; keep the terminal to ours."""
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        yield
    finally:
        root.setLevel(level)


def top1(engine: Engine, pixels: np.ndarray, labels: np.ndarray) -> tuple[float, np.ndarray]:
    pred = run_batched(engine, pixels).argmax(1)
    return float((pred == labels).mean()), pred


def quantize_run(
    run_dir: str | os.PathLike,
    *,
    calibration_images: int = DEFAULT_CALIBRATION_IMAGES,
    max_drop: float = DEFAULT_MAX_DROP,
    seed: int = 0,
    weights: str | None = None,
    log: Callable[[str], None] | None = None,
) -> QuantizeResult:
    """Write ``RUN_DIR/model.int8.onnx`` and record its measured top-1 change in ``export.json``.

    ``weights``: the int8 weights' type, ``"s8"`` or ``"u8"`` (default :func:`int8_weight_type`).
    Raises :class:`QuantizationRefused` (nothing written but the record) when top-1 on the
    validation split drops by more than ``max_drop`` points, and
    :class:`convnets.base.runs.RunFolderError` for a run without recorded image files.
    """
    say = log or (lambda _msg: None)
    run_dir = Path(run_dir)
    config = RunConfig.read(run_dir)
    train, val = split_files(config, "train"), split_files(config, "val")
    onnx_path = ensure_exported(run_dir, log=log)
    rng = np.random.default_rng(seed)
    picked = sorted(rng.choice(len(train), size=min(calibration_images, len(train)), replace=False))
    calib = [train[i][0] for i in picked]

    t0 = time.perf_counter()
    out = run_dir / INT8_ONNX_FILE
    fp32 = OrtEngine(onnx_path)
    say(f"calibrating on {len(calib)} training images")
    with tempfile.TemporaryDirectory(dir=run_dir) as tmp:
        tmp_model = Path(tmp) / INT8_ONNX_FILE
        with tqdm(total=len(calib), desc="calibrate", unit="img", leave=False) as bar:

            def batches() -> Iterator[np.ndarray]:
                for i in range(0, len(calib), CALIBRATION_BATCH):
                    views, _ = _read_views(calib[i : i + CALIBRATION_BATCH], config)
                    bar.update(min(CALIBRATION_BATCH, len(calib) - i))
                    if views:
                        yield pixels_of(views)

            weights = weights or int8_weight_type()
            if weights == "u8":
                say("no VNNI on this CPU: u8 weights (U8U8, run by ONNX Runtime) so AVX2 cannot saturate")
            quantize_onnx(onnx_path, tmp_model, batches, weights=weights)
        seconds = time.perf_counter() - t0

        say(f"measuring top-1 on {len(val)} validation images (fp32 and int8)")
        views, kept = _read_views([f for f, _ in val], config)
        pixels, labels = pixels_of(views), np.array([val[i][1] for i in kept])
        int8 = _int8_engine(tmp_model, weights)
        fp32_top1, fp32_pred = top1(fp32, pixels, labels)
        int8_top1, int8_pred = top1(int8, pixels, labels)
        info = Int8Info(
            weights_sha256=ExportInfo.read(run_dir).weights_sha256,
            quantizer=quantizer_name(weights),
            weights=weights,
            calibration_images=len(calib),
            val_images=len(labels),
            fp32_top1=fp32_top1,
            int8_top1=int8_top1,
            top1_agreement=float((fp32_pred == int8_pred).mean()),
            max_drop=float(max_drop),
            seconds=round(seconds, 1),
            int8_sha256=file_sha256(tmp_model),
        )
        record = ExportInfo.read(run_dir)
        record.int8 = info
        if info.accepted:
            os.replace(tmp_model, out)
        else:
            out.unlink(missing_ok=True)
        record.write(run_dir)
    if not info.accepted:
        raise QuantizationRefused(info)
    return QuantizeResult(out, info, int8.description)


def _int8_engine(path: Path, weights: str) -> Engine:
    """The int8 model on what ``--backend int8`` will run it on (:func:`int8_runner_order`)."""
    if int8_runner_order(weights)[0] == "openvino":
        return OpenVinoEngine(path, name="int8")
    return OrtEngine(path, name="int8")
