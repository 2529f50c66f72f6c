"""An engine checked against ONNX Runtime fp32 on the run's own validation images, once (kept in export.json).

ONNX Runtime fp32 is the reference: the export itself was checked against PyTorch when it was written
(:mod:`convnets.deploy.export`). Another engine (OpenVINO in bf16) is used only where its probabilities
stay close to the reference's (:attr:`convnets.deploy.export_record.EngineCheck.passed`).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from ...base.predictions import softmax
from ...base.runs import ONNX_FILE, RunConfig, RunFolderError
from ...data.decode import ImageReadError
from ...data.images import read_image
from ..export_record import EngineCheck, ExportInfo
from .engine import Engine, pixels_of, run_batched
from .onnxruntime_engine import OrtEngine

CHECK_IMAGES = 32


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


def check_pixels(config: RunConfig, n: int = CHECK_IMAGES) -> tuple[np.ndarray, str]:
    """Images to compare engines on: the run's first ``n`` validation images, else seeded noise."""
    try:
        files = split_files(config, "val")[:n]
        views = [read_image(f, config.image_size, config.in_chans, config.resize) for f, _ in files]
        return pixels_of(views), "validation images"
    except (RunFolderError, ImageReadError):
        rng = np.random.default_rng(0)
        return rng.random((n, *config.input_shape), dtype=np.float32), "random pixels"


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
