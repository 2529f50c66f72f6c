"""An ONNX file on OpenVINO's CPU plugin: bf16 on CPUs with AMX / AVX512-BF16, fp32 elsewhere; int8 files
too."""

from __future__ import annotations

import importlib.util
import os
import threading
from collections import OrderedDict
from pathlib import Path

import numpy as np

from ...base import runtime
from ..export_record import EngineError
from .engine import graph_with_features, thread_count

# bf16 is native (not emulated) with these; OpenVINO then computes in bf16.
BF16_FLAGS = frozenset({"amx_bf16", "avx512_bf16"})


def openvino_available() -> bool:
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
            import openvino as ov  # optional: openvino (convnets[openvino])
        except ImportError as e:
            raise EngineError("the openvino backend needs: pip install 'convnets[openvino]'") from e

        self.precision = precision or ("bf16" if runtime.cpu_flags() & BF16_FLAGS else "f32")
        self.core = ov.Core()
        self.cache_dir = cache_dir
        # With features: the graph with its pooled features as a second output (one compiled pass).
        self.model = self.core.read_model(str(graph_with_features(path) if features else path))
        self.features = features
        self.config = {
            "INFERENCE_PRECISION_HINT": self.precision,
            "PERFORMANCE_HINT": "LATENCY",
            "INFERENCE_NUM_THREADS": thread_count(threads),
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
