"""What every engine is and takes: ``run(pixels) -> logits``, pixels float32 NCHW in [0, 1]."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Protocol

import numpy as np

from ...trust import ood
from ..export_record import EngineError


class Engine(Protocol):
    name: str  # one of base.choices.EXPORTED_BACKENDS
    description: str  # e.g. "OpenVINO 2026.4 bf16"

    def run(self, pixels: np.ndarray) -> np.ndarray:
        """float32 (N, C, H, W) pixels in [0, 1] -> float32 logits (N, K)."""
        ...

    def run_with_features(self, pixels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """:meth:`run` and the penultimate features (N, D) of the same pass (engines opened with
        ``features=True``: the out-of-distribution detector's input)."""
        ...


def thread_count(threads: int | None) -> int:
    """``threads``, or every core this process may run on."""
    if threads:
        return int(threads)
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def graph_with_features(path: str | os.PathLike) -> Path:
    """``path`` with its penultimate features as a second output (made once, cached as a file)."""
    try:
        return ood.features_graph(path)
    except ValueError as e:
        raise EngineError(f"no features output for the out-of-distribution detector: {e}") from None


def pixels_of(views: Sequence[np.ndarray]) -> np.ndarray:
    """uint8 (H, W, C) views -> float32 (N, C, H, W) in [0, 1], what every engine takes."""
    return np.stack(views).astype(np.float32).transpose(0, 3, 1, 2) / np.float32(255)


def run_batched(engine: Engine, pixels: np.ndarray, batch_size: int = 32) -> np.ndarray:
    """``engine``'s logits for ``pixels``, ``batch_size`` at a time."""
    return np.concatenate([engine.run(pixels[i : i + batch_size]) for i in range(0, len(pixels), batch_size)])
