"""Colour statistics of a training set: per-channel mean/std and the RGB covariance's eigen-decomposition.

Computed once from a sample of base images (pixels scaled to [0, 1]) and, for PCA, cached on disk
under ``cache_root()/pca/<key>.json`` where the key hashes the file list and the image settings,
so a second run on the same folder does not decode the sample again.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import torch

from ..base.runtime import cache_root


def _pixels(images: Iterable[np.ndarray], max_pixels_per_image: int = 4096) -> np.ndarray:
    """Stack a strided subsample of each uint8 HWC image's pixels as float64 rows in [0, 1]."""
    rows = []
    for arr in images:
        flat = arr.reshape(-1, arr.shape[-1])
        step = max(1, len(flat) // max_pixels_per_image)
        rows.append(flat[::step].astype(np.float64) / 255.0)
    if not rows:
        raise ValueError("no images to compute colour statistics from")
    return np.concatenate(rows)


def channel_stats(images: Iterable[np.ndarray]) -> tuple[list[float], list[float]]:
    """Per-channel mean and std of pixels in [0, 1] (for ``normalize="dataset"``)."""
    px = _pixels(images)
    std = px.std(axis=0)
    std[std < 1e-6] = 1.0  # a constant channel: avoid dividing by zero
    return px.mean(axis=0).tolist(), std.tolist()


def pca_stats(images: Iterable[np.ndarray]) -> tuple[torch.Tensor, torch.Tensor]:
    """(eigvals, eigvecs) of the channel covariance, largest first; eigvecs' columns are the p_i."""
    px = _pixels(images)
    cov = np.atleast_2d(np.cov(px, rowvar=False))
    eigvals, eigvecs = np.linalg.eigh(cov)
    order = np.argsort(eigvals)[::-1]
    eigvals = np.clip(eigvals[order], 0.0, None)
    return torch.tensor(eigvals, dtype=torch.float32), torch.tensor(eigvecs[:, order], dtype=torch.float32)


def cached_pca_stats(key_parts: Iterable[str], images_fn, cache_dir: Path | None = None):
    """``pca_stats(images_fn())``, cached on disk by the sha256 of ``key_parts``."""
    digest = hashlib.sha256("\n".join(key_parts).encode()).hexdigest()[:32]
    path = Path(cache_dir or cache_root() / "pca") / f"{digest}.json"
    try:
        saved = json.loads(path.read_text())
        return torch.tensor(saved["eigvals"]), torch.tensor(saved["eigvecs"])
    except (OSError, ValueError, KeyError):
        pass
    eigvals, eigvecs = pca_stats(images_fn())
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".tmp{os.getpid()}")
        tmp.write_text(json.dumps({"eigvals": eigvals.tolist(), "eigvecs": eigvecs.tolist()}))
        os.replace(tmp, path)
    except OSError:
        pass  # a read-only cache only costs recomputation
    return eigvals, eigvecs
