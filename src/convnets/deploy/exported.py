"""The run folder's exported model, and running it without torch on the fastest engine this CPU has.

``convnets export`` (and the first ``predict``/``serve`` on a run) writes ``RUN_DIR/model.onnx``:
BatchNorm folded, normalisation inside the graph, checked against the PyTorch model. ``export.json``
beside it records a fingerprint of ``model.safetensors``; when the weights change, the export is
stale and is written again (with its checks and int8 model). :class:`ExportedModel` runs that file
with numpy and Pillow only, so ``predict`` and the server start in well under a second instead of
paying seconds for ``import torch, torchvision``.

Engines (each a small object with ``run(pixels) -> logits``, pixels float32 NCHW in [0, 1]):

* ``onnxruntime``: ``model.onnx`` on ONNX Runtime, fp32: the reference the other engines are checked on;
* ``openvino``: ``model.onnx`` on OpenVINO, computing in bf16 on CPUs with AMX / AVX512-BF16 (fp32
  elsewhere); checked once against ``onnxruntime`` on the run's validation images (``export.json``);
* ``int8``: ``model.int8.onnx`` (``convnets export RUN --int8``, see :mod:`convnets.deploy.quantize`), whose
  validation top-1 change was measured and accepted when it was written; run on OpenVINO when installed.

``auto`` times the installed engines that passed their check on the user's own CPU, once per run
folder and machine (the figures stay in ``export.json``), and runs the fastest: which one wins depends
on the CPU and the model (bench/RESULTS.md, "Inference backends"), so it is measured, not assumed
from the CPU's name or flags. Small jobs run on ONNX Runtime fp32, which opens fastest.
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Protocol

import numpy as np

from .. import __version__
from ..base.atomic import atomic_write_json
from ..base.choices import BACKEND_CHOICES, EXPORTED_BACKENDS, TORCH_BACKENDS  # noqa: F401 (re-exported)
from ..base.errors import ConvnetsError, can_write_in, os_error_message
from ..base.predictions import Prediction, softmax, top_k
from ..base.runs import (
    EXPORT_INFO_FILE,
    INT8_ONNX_FILE,
    ONNX_FILE,
    OPENVINO_CACHE_DIR,
    RunConfig,
    RunFolderError,
    weights_path,
)
from ..data.decode import ImageReadError
from ..data.images import ImageSource, center_crop, expand_paths, read_image

TTA_MODES = ("none", "flip", "10crop")
CROP_RATIO = 0.875  # 10-crop: the base is the view size / 0.875 (as convnets.deploy.evaluate)

# bf16 is native (not emulated) with these; OpenVINO then computes in bf16.
BF16_FLAGS = frozenset({"amx_bf16", "avx512_bf16"})
# int8 dot products in 32-bit accumulators (VNNI, AMX); without them int8 weights are u8
# (convnets.deploy.quantize.int8_weight_type).
INT8_FLAGS = frozenset({"amx_int8", "avx512_vnni", "avx_vnni"})
# auto times the installed engines on the user's CPU once per run folder (speeds in export.json):
# which one is fastest depends on the CPU (OpenVINO bf16 8.8x ONNX Runtime fp32 on an AMX Xeon,
# bench/RESULTS.md "Inference backends") and on the model, so it is measured, never assumed.
SPEED_BATCH = 8
SPEED_ROUNDS = 3

# An engine passes its parity check against ONNX Runtime fp32 when, on the check images, no class
# probability moves by more than this and the top-1 class agrees on at least this fraction.
# OpenVINO bf16 moved probabilities by up to 0.035 (top-1 unchanged) on the alpaca MobileNetV2.
CHECK_MAX_PROB_DIFF = 0.1
CHECK_MIN_AGREEMENT = 0.97
CHECK_IMAGES = 32
# Under auto, a job known to be smaller than this runs on ONNX Runtime fp32: importing OpenVINO and
# loading its compiled graph took ~0.3 s more than opening an ONNX Runtime session (cache warm,
# mobilenet_v2), more than a faster engine saves on a few images.
AUTO_MIN_IMAGES = 32


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
    # milliseconds per image of each engine (check key) at batch SPEED_BATCH, by machine_key()
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


def export_is_fresh(run_dir: str | os.PathLike) -> bool:
    """``model.onnx`` exists and is the file exported from the run's current weights."""
    try:
        return export_problem(run_dir) is None
    except (OSError, RunFolderError):
        return False


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


def ensure_exported(run_dir: str | os.PathLike, *, opset: int = 17, log=None) -> Path:
    """``RUN_DIR/model.onnx``, exported (with torch, once) unless the run's own export is already
    there; :class:`ExportMismatchError` when it is not and the run folder cannot be written."""
    run_dir = Path(run_dir)
    config = RunConfig.read(run_dir)
    weights_path(run_dir)
    problem = export_problem(run_dir, config)
    if problem is None:
        return run_dir / ONNX_FILE
    if not can_write_in(run_dir):
        raise ExportMismatchError(f"{problem}; {run_dir} is read-only, so it cannot be exported again")
    from .export import export_run  # torch: only when an export must be written

    if log is not None:
        why = "" if not (run_dir / ONNX_FILE).exists() else f": {problem}"
        log(f"exporting {run_dir / ONNX_FILE} (once; later runs start without torch){why}")
    try:
        result = export_run(run_dir, "onnx", run_dir / ONNX_FILE, opset=opset)  # records export.json
    except PermissionError as e:  # the probe passed, the write did not (a quota, an ACL)
        raise ExportMismatchError(f"{problem}; cannot export it again: {os_error_message(e)}") from None
    return result.path


# --- engines ---------------------------------------------------------------------------------


class Engine(Protocol):
    name: str  # one of EXPORTED_BACKENDS
    description: str  # e.g. "OpenVINO 2026.4 bf16"

    def run(self, pixels: np.ndarray) -> np.ndarray:
        """float32 (N, C, H, W) pixels in [0, 1] -> float32 logits (N, K)."""
        ...

    def run_with_features(self, pixels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """:meth:`run` and the penultimate features (N, D) of the same pass (engines opened with
        ``features=True``: the out-of-distribution detector's input)."""
        ...


def _threads(threads: int | None) -> int:
    if threads:
        return int(threads)
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


class OrtEngine:
    """An ONNX file on ONNX Runtime's CPU provider."""

    def __init__(
        self,
        path: str | os.PathLike,
        threads: int | None = None,
        name: str = "onnxruntime",
        spin: bool = True,
        features: bool = False,
    ):
        try:
            import onnxruntime as ort
        except ImportError as e:
            raise EngineError("running an exported model needs: pip install 'convnets[export]'") from e
        options = ort.SessionOptions()
        options.intra_op_num_threads = _threads(threads)
        options.log_severity_level = 3  # errors only: not a notice per unused initializer of an int8 graph
        if not spin:
            # The server's decode threads and event loop share these cores: ORT's pool threads must not
            # busy-wait between operators (measured: 2x the CPU per image on a busy 2-core machine).
            options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        # With features: the same graph with its pooled features as a second output (one pass).
        graph = str(_features_graph(path)) if features else str(path)
        self.session = ort.InferenceSession(graph, options, providers=["CPUExecutionProvider"])
        self.input_name = self.session.get_inputs()[0].name
        self.logits_name = self.session.get_outputs()[0].name
        self.name, self.path = name, Path(path)
        self.description = f"ONNX Runtime {ort.__version__} {'int8' if name == 'int8' else 'fp32'}"

    def run(self, pixels: np.ndarray) -> np.ndarray:
        feed = {self.input_name: np.ascontiguousarray(pixels, dtype=np.float32)}
        (out,) = self.session.run([self.logits_name], feed)
        return out

    def run_with_features(self, pixels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        outputs = self.session.run(None, {self.input_name: np.ascontiguousarray(pixels, dtype=np.float32)})
        if len(outputs) < 2:
            raise EngineError(f"{self.path} was opened without its features output")
        return outputs[0], outputs[1].reshape(len(outputs[1]), -1)


def _features_graph(path: str | os.PathLike) -> Path:
    from ..trust.ood import features_graph

    try:
        return features_graph(path)
    except ValueError as e:
        raise EngineError(f"no features output for the out-of-distribution detector: {e}") from None


def openvino_available() -> bool:
    import importlib.util

    return importlib.util.find_spec("openvino") is not None


class OpenVinoEngine:
    """An ONNX file on OpenVINO's CPU plugin, compiled per batch size.

    A graph compiled for one static shape ran 1.4-2x faster than the same graph with a dynamic
    batch (measured on the AMX Xeon, mobilenet_v2 at batch 1 and 32), so each batch size gets its
    own compiled model (kept for the last ``max_shapes`` sizes; a new size costs one compile,
    ~0.3 s; batch 1 is cached on disk in ``RUN_DIR/openvino_cache``).
    """

    def __init__(
        self,
        path: str | os.PathLike,
        threads: int | None = None,
        precision: str | None = None,
        *,
        name: str = "openvino",
        cache_dir: str | os.PathLike | None = None,
        max_shapes: int = 6,
        features: bool = False,
    ):
        try:
            import openvino as ov
        except ImportError as e:
            raise EngineError("the openvino backend needs: pip install 'convnets[openvino]'") from e
        from ..base.runtime import cpu_flags

        self.precision = precision or ("bf16" if cpu_flags() & BF16_FLAGS else "f32")
        self.core = ov.Core()
        self.cache_dir = cache_dir
        # With features: the graph with its pooled features as a second output (one compiled pass).
        self.model = self.core.read_model(str(_features_graph(path) if features else path))
        self.features = features
        self.config = {
            "INFERENCE_PRECISION_HINT": self.precision,
            "PERFORMANCE_HINT": "LATENCY",
            "INFERENCE_NUM_THREADS": _threads(threads),
        }
        self.name, self.path, self.max_shapes = name, Path(path), max_shapes
        version = ov.get_version().split("-")[0]
        self.description = f"OpenVINO {version} {'int8' if name == 'int8' else self.precision}"
        self._compiled: OrderedDict[tuple[int, ...], object] = OrderedDict()
        self._lock = threading.Lock()  # an infer request runs one call at a time

    def _request(self, shape: tuple[int, ...]):
        request = self._compiled.get(shape)
        if request is None:
            model = self.model.clone()
            model.reshape({model.inputs[0]: list(shape)})
            config = dict(self.config)
            if self.cache_dir is not None and shape[0] == 1:
                # Cache only the batch-1 graph: it is what a cold `predict` needs (compile 0.33 ->
                # 0.13 s), and one blob per batch size a server meets would fill the run folder.
                config["CACHE_DIR"] = str(self.cache_dir)
            request = self.core.compile_model(model, "CPU", config).create_infer_request()
            self._compiled[shape] = request
            if len(self._compiled) > self.max_shapes:
                self._compiled.popitem(last=False)
        self._compiled.move_to_end(shape)
        return request

    def run(self, pixels: np.ndarray) -> np.ndarray:
        return self._infer(pixels, 1)[0]

    def run_with_features(self, pixels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        if not self.features:
            raise EngineError(f"{self.path} was opened without its features output")
        logits, features = self._infer(pixels, 2)
        return logits, features.reshape(len(features), -1)

    def _infer(self, pixels: np.ndarray, outputs: int) -> list[np.ndarray]:
        pixels = np.ascontiguousarray(pixels, dtype=np.float32)
        with self._lock:
            request = self._request(tuple(pixels.shape))
            request.infer({0: pixels})
            tensors = [request.get_output_tensor(i).data for i in range(outputs)]
            return [np.array(t, dtype=np.float32, copy=True) for t in tensors]


def int8_runner_order(weights: str = "s8") -> tuple[str, ...]:
    """Which library runs ``model.int8.onnx``: OpenVINO was 2-4x faster than ONNX Runtime on the same
    int8 file on the AMX Xeon (bench/RESULTS.md), so OpenVINO when installed; u8 weights (U8U8, CPUs
    without VNNI) only ONNX Runtime, whose kernel widens them before multiplying (OpenVINO's oneDNN
    forced down to AVX2 could not compile them, and lost 1.5 points of top-1 where it could)."""
    if weights == "u8" or not openvino_available():
        return ("onnxruntime",)
    return ("openvino", "onnxruntime")


def make_engine(
    run_dir: str | os.PathLike,
    backend: str,
    *,
    threads: int | None = None,
    precision: str | None = None,
    spin: bool = True,
    features: bool = False,
) -> Engine:
    """The engine ``backend`` (not ``auto``) on the run's fresh export; :class:`EngineError` if unusable.
    ``spin=False``: ONNX Runtime's threads sleep between operators instead of busy-waiting (servers).
    ``features=True``: the engine also gives the penultimate features (``run_with_features``)."""
    run_dir = Path(run_dir)
    cache = run_dir / OPENVINO_CACHE_DIR
    if backend == "onnxruntime":
        return OrtEngine(run_dir / ONNX_FILE, threads, spin=spin, features=features)
    if backend == "openvino":
        return OpenVinoEngine(run_dir / ONNX_FILE, threads, precision, cache_dir=cache, features=features)
    if backend == "int8":
        info = ExportInfo.read(run_dir)
        path = run_dir / INT8_ONNX_FILE
        int8 = info.int8 if info is not None else None
        if int8 is not None and int8.weights_sha256 != info.weights_sha256:
            raise EngineError(f"{path} is from older weights: run `convnets export {run_dir} --int8` again")
        if int8 is not None and not int8.accepted:
            raise EngineError(
                f"the int8 model was refused: validation top-1 changed by {int8.delta_points:+.2f} points "
                f"(allowed -{int8.max_drop:g})"
            )
        if int8 is None or not path.is_file():
            raise EngineError(f"{run_dir} has no int8 model: run `convnets export {run_dir} --int8` first")
        if int8.int8_sha256 is None or int8.int8_sha256 != file_sha256(path):
            raise EngineError(
                f"{path} is not the file `convnets export --int8` wrote and checked (its sha256 differs "
                f"from export.json's): run `convnets export {run_dir} --int8` again"
            )
        if int8_runner_order(int8.weights)[0] == "openvino":
            return OpenVinoEngine(path, threads, precision, name="int8", cache_dir=cache, features=features)
        return OrtEngine(path, threads, name="int8", spin=spin, features=features)
    raise EngineError(
        f"unknown exported-model backend {backend!r}; choose from {', '.join(EXPORTED_BACKENDS)}"
    )


# --- checks and the auto choice ----------------------------------------------------------------


def split_files(config: RunConfig, role: str) -> list[tuple[Path, int]]:
    """(file, class index) of a folder run's ``train`` or ``val`` split, as recorded in config.json.

    Raises :class:`RunFolderError` for runs on built-in datasets (their split is indices, not files).
    """
    split = config.split or {}
    if "root" not in split or not isinstance(split.get(role), list):
        source = config.data.source if config.data else "?"
        raise RunFolderError(
            f"the run's data ({source}) has no recorded {role} files: this needs a run trained on an "
            "image folder (built-in datasets record indices)"
        )
    root, presplit = Path(split["root"]), split.get("layout") == "presplit"
    index = {n: i for i, n in enumerate(split.get("class_names") or config.class_names)}
    out = []
    for rel in split[role]:
        parts = Path(rel).parts
        cls = parts[1] if presplit else parts[0]
        if cls in index and (root / rel).is_file():
            out.append((root / rel, index[cls]))
    if not out:
        raise RunFolderError(f"none of the run's {role} files exist under {root}")
    return out


def pixels_of(views: Sequence[np.ndarray]) -> np.ndarray:
    """uint8 (H, W, C) views -> float32 (N, C, H, W) in [0, 1], what every engine takes."""
    return np.stack(views).astype(np.float32).transpose(0, 3, 1, 2) / np.float32(255)


def check_pixels(config: RunConfig, n: int = CHECK_IMAGES) -> tuple[np.ndarray, str]:
    """Images to compare engines on: the run's first ``n`` validation images, else seeded noise."""
    try:
        files = split_files(config, "val")[:n]
        views = [read_image(f, config.image_size, config.in_chans, config.resize) for f, _ in files]
        return pixels_of(views), "validation images"
    except (RunFolderError, ImageReadError):
        rng = np.random.default_rng(0)
        return rng.random((n, *config.input_shape), dtype=np.float32), "random pixels"


def run_batched(engine: Engine, pixels: np.ndarray, batch_size: int = 32) -> np.ndarray:
    return np.concatenate([engine.run(pixels[i : i + batch_size]) for i in range(0, len(pixels), batch_size)])


def compare_engines(
    reference: Engine, other: Engine, pixels: np.ndarray, source: str, key: str
) -> EngineCheck:
    p_ref, p_other = softmax(run_batched(reference, pixels)), softmax(run_batched(other, pixels))
    return EngineCheck(
        engine=key,
        images=len(pixels),
        source=source,
        top1_agreement=float((p_ref.argmax(1) == p_other.argmax(1)).mean()),
        max_prob_diff=float(np.abs(p_ref - p_other).max()),
    )


def engine_key(engine: Engine) -> str:
    """``onnxruntime-fp32``, ``openvino-bf16``, ``openvino-int8``: library and precision."""
    return engine.description.split(" ", 1)[0].lower() + "-" + engine.description.rsplit(" ", 1)[-1]


def check_engine(run_dir: str | os.PathLike, engine: Engine, config: RunConfig | None = None) -> EngineCheck:
    """``engine`` against ONNX Runtime fp32 on the run's validation images, recorded in export.json."""
    key = engine_key(engine)
    info = ExportInfo.read(run_dir)
    if info is not None and key in info.checks:
        return info.checks[key]
    config = config or RunConfig.read(run_dir)
    pixels, source = check_pixels(config)
    result = compare_engines(OrtEngine(Path(run_dir) / ONNX_FILE), engine, pixels, source, key)
    if info is not None:
        info.checks[key] = result
        info.write(run_dir)
    return result


def auto_candidates(run_dir: str | os.PathLike) -> list[str]:
    """The exported backends ``auto`` chooses among on this machine: an accepted, fresh int8 model and
    OpenVINO where installed, and always ONNX Runtime fp32 (last: the reference, and the fallback)."""
    info = ExportInfo.read(run_dir)
    out = []
    int8 = info.int8 if info is not None else None
    if (
        int8 is not None
        and int8.accepted
        and int8.weights_sha256 == info.weights_sha256
        and (Path(run_dir) / INT8_ONNX_FILE).is_file()
        and int8.int8_sha256 is not None
    ):
        out.append("int8")
    if openvino_available():
        out.append("openvino")
    return [*out, "onnxruntime"]


def machine_key(threads: int | None = None) -> str:
    """What an engine's speed depends on besides the model: the CPU (model name and instruction sets,
    so a hypervisor's bare "AMD EPYC" on AVX2 and on AVX-512 parts differ) and the thread count."""
    from ..base.runtime import cpu_flags

    model = ""
    try:
        with open("/proc/cpuinfo") as f:
            model = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), "")
    except OSError:
        pass
    text = f"{model}|{' '.join(sorted(cpu_flags()))}|{_threads(threads)}"
    return hashlib.sha1(text.encode()).hexdigest()[:12]


def time_engines(engines: Sequence[Engine], pixels: np.ndarray, rounds: int = SPEED_ROUNDS) -> list[float]:
    """Milliseconds per image of each engine on ``pixels`` (one batch): a warm-up call each, then
    ``rounds`` rounds that call every engine once in turn (so a busy moment hits all alike); the median."""
    for engine in engines:
        engine.run(pixels)
    times: list[list[float]] = [[] for _ in engines]
    for _ in range(rounds):
        for i, engine in enumerate(engines):
            t0 = time.perf_counter()
            engine.run(pixels)
            times[i].append(time.perf_counter() - t0)
    return [1000 * float(np.median(t)) / len(pixels) for t in times]


def open_engine(
    run_dir: str | os.PathLike,
    backend: str = "auto",
    *,
    threads: int | None = None,
    config: RunConfig | None = None,
    images: int | None = None,
    spin: bool = True,
    features: bool = False,
    log: Callable[[str], None] | None = None,
) -> Engine:
    """The engine for ``backend`` on the run's (fresh) export. ``auto``: the fastest, as timed on this
    machine, of :func:`auto_candidates` that open and pass their check against ONNX Runtime fp32 (the
    int8 model passed its accuracy gate when written); timed once per run folder and machine, the
    figures kept in export.json. A job of fewer than :data:`AUTO_MIN_IMAGES` ``images`` runs on ONNX
    Runtime, which opens fastest."""
    if backend != "auto":
        return make_engine(run_dir, backend, threads=threads, spin=spin, features=features)
    names = auto_candidates(run_dir)
    if (images is not None and images < AUTO_MIN_IMAGES) or names == ["onnxruntime"]:
        return make_engine(run_dir, "onnxruntime", threads=threads, spin=spin, features=features)
    say = log or (lambda _msg: None)
    engines: dict[str, Engine] = {}
    for name in names:
        try:
            engine = make_engine(run_dir, name, threads=threads, spin=spin, features=features)
            check = None if name in ("int8", "onnxruntime") else check_engine(run_dir, engine, config)
            if check is not None and not check.passed:
                say(
                    f"not using {engine.description}: against ONNX Runtime fp32 top-1 agreed on "
                    f"{check.top1_agreement:.0%}, probabilities moved up to {check.max_prob_diff:.3f}"
                )
                continue
        except Exception as e:  # noqa: BLE001 - an engine that cannot compile this graph: the next one
            if not isinstance(e, EngineError):
                say(f"not using {name}: {e}")
            continue
        engines[name] = engine
    if len(engines) == 1:
        return next(iter(engines.values()))
    machine = machine_key(threads)
    info = ExportInfo.read(run_dir)
    known = info.speeds.get(machine, {}) if info is not None else {}
    keys = {name: engine_key(e) for name, e in engines.items()}
    if not all(k in known for k in keys.values()):
        config = config or RunConfig.read(run_dir)
        pixels, _ = check_pixels(config, SPEED_BATCH)
        timed = time_engines(list(engines.values()), pixels)
        known = {**known, **{keys[n]: round(t, 4) for n, t in zip(engines, timed)}}
        if info is not None:
            info.speeds[machine] = known
            try:
                info.write(run_dir)
            except OSError:  # a read-only run folder: measured again next time
                pass
        say("timed on this CPU (ms per image): " + ", ".join(f"{k} {t:.3g}" for k, t in known.items()))
    fastest = min(engines, key=lambda n: known[keys[n]])
    return engines[fastest]


# --- test-time augmentation on uint8 views (numpy; the same pixels as convnets.deploy.evaluate) ----------


def ten_crop(base: np.ndarray, size: tuple[int, int]) -> list[np.ndarray]:
    """torchvision's ``ten_crop``: the four corners and the centre, then the same of the mirror image."""
    h, w = size
    crops = []
    for img in (base, base[:, ::-1]):
        bh, bw = img.shape[:2]
        crops += [
            img[:h, :w],
            img[:h, bw - w :],
            img[bh - h :, :w],
            img[bh - h :, bw - w :],
            center_crop(img, size),
        ]
    return crops


class ExportedModel:
    """A run's exported model on one engine: images in, probabilities and prediction rows out.

    ``ExportedModel.open(run_dir, backend="auto")`` exports first if needed (that once imports torch).
    ``.backend`` is the engine chosen (one of :data:`EXPORTED_BACKENDS`), ``.engine.description`` says more.
    """

    def __init__(self, run_dir: str | os.PathLike, config: RunConfig, engine: Engine):
        self.run_dir, self.config, self.engine = Path(run_dir), config, engine
        self.path = Path(getattr(engine, "path", self.run_dir / ONNX_FILE))

    @classmethod
    def open(
        cls,
        run_dir: str | os.PathLike,
        backend: str = "auto",
        *,
        threads: int | None = None,
        images: int | None = None,
        log: Callable[[str], None] | None = None,
        spin: bool = True,
        features: bool = False,
    ) -> ExportedModel:
        """``images``: how many images the caller will run, when known (see :func:`open_engine`);
        ``spin=False``: ONNX Runtime's threads sleep between operators instead of busy-waiting (servers);
        ``features=True``: :meth:`predict_views_with_features` gives the penultimate features too."""
        if backend not in ("auto", *EXPORTED_BACKENDS):
            raise EngineError(
                f"backend {backend!r} runs the PyTorch model; an exported model runs on "
                f"{', '.join(('auto', *EXPORTED_BACKENDS))}"
            )
        config = RunConfig.read(run_dir)
        ensure_exported(run_dir, log=log)
        return cls(
            run_dir,
            config,
            open_engine(
                run_dir,
                backend,
                threads=threads,
                config=config,
                images=images,
                spin=spin,
                features=features,
                log=log,
            ),
        )

    @property
    def backend(self) -> str:
        return self.engine.name

    @property
    def class_names(self) -> list[str]:
        return list(self.config.class_names)

    def logits(self, pixels: np.ndarray) -> np.ndarray:
        """float32 (N, C, H, W) pixels in [0, 1] -> logits (N, K)."""
        return self.engine.run(pixels)

    def predict_views(self, views: Sequence[np.ndarray]) -> np.ndarray:
        """uint8 (H, W, C) views at the run's image size -> probabilities (N, K)."""
        return softmax(
            self.logits(pixels_of(views)) / (self.config.temperature or 1.0)
        )  # evaluate --calibrate

    def predict_views_with_features(self, views: Sequence[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        """:meth:`predict_views` and the penultimate features (N, D) from the same pass (opened with
        ``features=True``)."""
        logits, features = self.engine.run_with_features(pixels_of(views))
        return softmax(logits / (self.config.temperature or 1.0)), features

    def read(self, source: ImageSource) -> np.ndarray:
        """One image as the model's uint8 (H, W, C) view (what ``predict_views`` takes)."""
        c = self.config
        return read_image(source, c.image_size, c.in_chans, c.resize)

    def read_views(self, source: ImageSource, tta: str = "none") -> list[np.ndarray]:
        """The views of one image that ``tta`` averages over (one view without TTA)."""
        c = self.config
        if tta == "10crop":
            return ten_crop(read_image(source, c.image_size, c.in_chans, c.resize, base=True), c.image_size)
        view = self.read(source)
        return [view, view[:, ::-1]] if tta == "flip" else [view]

    def predict(
        self,
        sources: Sequence[tuple[str, ImageSource]],
        top: int = 5,
        batch_size: int = 32,
        tta: str = "none",
        trust=None,
        reject_ood: bool = False,
    ) -> list[Prediction]:
        """Rows for ``(name, file path or bytes)`` pairs; an unusable input gets its error row.
        With ``tta``, each image's probabilities are the mean over its views (as convnets.deploy.evaluate).
        ``trust`` (a ``trust.RunTrust`` with a detector, on a model opened with ``features=True``, TTA
        none or flip): rows get the ``ood`` field from the plain view's features of the same pass."""
        if tta not in TTA_MODES:
            raise ValueError(f"unknown TTA mode {tta!r}; choose from {', '.join(TTA_MODES)}")
        # The plain view is the first of "none" and "flip"; ten-crop has none of its own.
        flag = trust is not None and trust.detector is not None and tta != "10crop"
        rows: list[Prediction] = []
        for start in range(0, len(sources), batch_size):
            chunk = sources[start : start + batch_size]
            views, slots = [], []
            for name, source in chunk:
                try:
                    views.append(self.read_views(source, tta))
                    slots.append(Prediction(name))
                except ImageReadError as e:
                    slots.append(Prediction(name, error=str(e)))
            good = [r for r in slots if r.error is None]
            if good:
                k = len(views[0])  # views per image; stacked view-major so each view is one batch
                per_view, features = [], None
                if flag:
                    plain, features = self.predict_views_with_features([v[0] for v in views])
                    per_view.append(plain)
                per_view += [self.predict_views([v[i] for v in views]) for i in range(len(per_view), k)]
                for row, classes in zip(good, top_k(np.mean(per_view, axis=0), self.class_names, top)):
                    row.top = classes
                if features is not None:
                    trust.annotate(good, features, reject_ood)
            rows += slots
        return rows

    def predict_files(
        self, paths: Sequence[str | os.PathLike], top: int = 5, tta: str = "none"
    ) -> list[Prediction]:
        files = expand_paths(paths)
        return self.predict([(f, f) for f in files], top, tta=tta)
