"""The reference engine: an ONNX file on ONNX Runtime's CPU provider (fp32; also the int8 model with u8
weights)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from ..export_record import EngineError
from .engine import graph_with_features, thread_count


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
            import onnxruntime as ort  # optional: onnxruntime (convnets[export])
        except ImportError as e:
            raise EngineError("running an exported model needs: pip install 'convnets[export]'") from e
        options = ort.SessionOptions()
        options.intra_op_num_threads = thread_count(threads)
        options.log_severity_level = 3  # errors only: not a notice per unused initializer of an int8 graph
        if not spin:
            # The server's decode threads and event loop share these cores: ORT's pool threads must not
            # busy-wait between operators (measured: 2x the CPU per image on a busy 2-core machine).
            options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        # With features: the same graph with its pooled features as a second output (one pass).
        graph = str(graph_with_features(path)) if features else str(path)
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
