"""The run folder's exported model, and running it without torch.

``convnets export`` (and the first ``predict``/``serve`` on a run) writes ``RUN_DIR/model.onnx``:
BatchNorm folded, normalisation inside the graph, checked against the PyTorch model. ``export.json``
beside it records a fingerprint of ``model.safetensors``; when the weights change, the export is
stale and is written again. :class:`ExportedModel` runs that file on ONNX Runtime with numpy and
Pillow only: ``predict`` and the server start in well under a second instead of paying seconds for
``import torch, torchvision``.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from . import __version__
from .atomic import atomic_write_json
from .data.decode import ImageReadError
from .data.images import ImageSource, expand_paths, read_image
from .predictions import Prediction, softmax, top_k
from .runs import EXPORT_INFO_FILE, ONNX_FILE, RunConfig, RunFolderError, weights_path


def weights_fingerprint(run_dir: str | os.PathLike) -> str:
    """sha256 of ``model.safetensors`` (what the export was made from)."""
    h = hashlib.sha256()
    with open(weights_path(run_dir), "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


@dataclass
class ExportInfo:
    """``RUN_DIR/export.json``: which weights ``model.onnx`` was exported from, and its parity check."""

    weights_sha256: str
    max_abs_diff: float
    opset: int
    convnets: str = __version__

    @classmethod
    def read(cls, run_dir: str | os.PathLike) -> ExportInfo | None:
        path = Path(run_dir) / EXPORT_INFO_FILE
        try:
            raw = json.loads(path.read_text())
            return cls(**{k: raw[k] for k in ("weights_sha256", "max_abs_diff", "opset", "convnets")})
        except (OSError, ValueError, KeyError, TypeError):
            return None


def export_is_fresh(run_dir: str | os.PathLike) -> bool:
    """``model.onnx`` exists and was exported from the run's current weights."""
    run_dir = Path(run_dir)
    info = ExportInfo.read(run_dir)
    if info is None or not (run_dir / ONNX_FILE).is_file():
        return False
    try:
        return info.weights_sha256 == weights_fingerprint(run_dir)
    except (OSError, RunFolderError):
        return False


def ensure_exported(run_dir: str | os.PathLike, *, opset: int = 17, log=None) -> Path:
    """``RUN_DIR/model.onnx``, exported (with torch, once) unless a fresh export is already there."""
    run_dir = Path(run_dir)
    if export_is_fresh(run_dir):
        return run_dir / ONNX_FILE
    from .export import export_run  # torch: only when an export must be written

    if log is not None:
        log(f"exporting {run_dir / ONNX_FILE} (once; later runs start without torch)")
    fingerprint = weights_fingerprint(run_dir)
    result = export_run(run_dir, "onnx", run_dir / ONNX_FILE, opset=opset)
    atomic_write_json(
        run_dir / EXPORT_INFO_FILE,
        ExportInfo(fingerprint, result.max_abs_diff, opset).__dict__,
    )
    return result.path


class ExportedModel:
    """A run's ``model.onnx`` on ONNX Runtime: images in, probabilities and prediction rows out.

    ``ExportedModel.open(run_dir)`` exports first if needed (that once imports torch).
    """

    backend = "onnxruntime"

    def __init__(
        self,
        run_dir: str | os.PathLike,
        config: RunConfig,
        onnx_path: Path,
        threads: int | None,
        spin: bool = True,
    ):
        try:
            import onnxruntime as ort
        except ImportError as e:
            raise ImportError("running an exported model needs: pip install 'convnets[export]'") from e
        self.run_dir, self.config, self.path = Path(run_dir), config, onnx_path
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads or (os.cpu_count() or 1)
        if not spin:
            # The server's decode threads and event loop share these cores: ORT's pool threads must not
            # busy-wait between operators (measured: 2x the CPU per image on a busy 2-core machine).
            options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self.session = ort.InferenceSession(str(onnx_path), options, providers=["CPUExecutionProvider"])
        self.input_name = self.session.get_inputs()[0].name

    @classmethod
    def open(
        cls, run_dir: str | os.PathLike, *, threads: int | None = None, log=None, spin: bool = True
    ) -> ExportedModel:
        """``spin=False``: ORT's threads sleep between operators instead of busy-waiting (servers)."""
        config = RunConfig.read(run_dir)
        return cls(run_dir, config, ensure_exported(run_dir, log=log), threads, spin)

    @property
    def class_names(self) -> list[str]:
        return list(self.config.class_names)

    def logits(self, pixels: np.ndarray) -> np.ndarray:
        """float32 (N, C, H, W) pixels in [0, 1] -> logits (N, K)."""
        (out,) = self.session.run(None, {self.input_name: np.ascontiguousarray(pixels, dtype=np.float32)})
        return out

    def predict_views(self, views: Sequence[np.ndarray]) -> np.ndarray:
        """uint8 (H, W, C) views at the run's image size -> probabilities (N, K)."""
        x = np.stack(views).astype(np.float32).transpose(0, 3, 1, 2) / np.float32(255)
        return softmax(self.logits(x) / (self.config.temperature or 1.0))  # evaluate --calibrate

    def read(self, source: ImageSource) -> np.ndarray:
        c = self.config
        return read_image(source, c.image_size, c.in_chans, c.resize)

    def predict(
        self, sources: Sequence[tuple[str, ImageSource]], top: int = 5, batch_size: int = 32
    ) -> list[Prediction]:
        """Rows for ``(name, file path or bytes)`` pairs; an unusable input gets its error row."""
        rows: list[Prediction] = []
        for start in range(0, len(sources), batch_size):
            chunk = sources[start : start + batch_size]
            views, slots = [], []
            for name, source in chunk:
                try:
                    views.append(self.read(source))
                    slots.append(Prediction(name))
                except ImageReadError as e:
                    slots.append(Prediction(name, error=str(e)))
            good = [r for r in slots if r.error is None]
            if good:
                for row, classes in zip(good, top_k(self.predict_views(views), self.class_names, top)):
                    row.top = classes
            rows += slots
        return rows

    def predict_files(self, paths: Sequence[str | os.PathLike], top: int = 5) -> list[Prediction]:
        files = expand_paths(paths)
        return self.predict([(f, f) for f in files], top)
