"""A picture of what an augmentation spec does: originals beside augmented versions."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..base.plots import pyplot, save_figure
from .augment import build_eval_transform, parse_ops


def augment_preview(
    source: str | os.PathLike,
    augment: Any = "light",
    out: str | os.PathLike = "augment_preview.png",
    *,
    n: int = 8,
    versions: int = 4,
    seed: int = 0,
    image_size: int = 160,
    in_chans: int = 3,
    data_root: str | os.PathLike | None = None,
) -> Path:
    """Write a grid PNG: one row per training image, its evaluation view then ``versions`` augmentations."""
    from .pipeline import load_data  # start-up: PIL on first use

    plt = pyplot()

    ops = parse_ops(augment)
    splits = load_data(
        source,
        image_size=image_size,
        in_chans=in_chans,
        val_split=None,
        seed=seed,
        augment=ops,
        normalize="none",
        num_workers=0,
        data_root=data_root,
    )
    subset = splits.train.dataset
    base_ds = subset.dataset

    eval_tf = build_eval_transform((image_size, image_size), [0.0] * in_chans, [1.0] * in_chans)
    positions = np.unique(np.linspace(0, len(subset) - 1, num=min(n, len(subset))).round().astype(int))
    gen = torch.Generator().manual_seed(seed)
    rows = []
    for p in positions:
        original, label, _ = base_ds.sample(subset.indices, int(p), None, eval_tf)
        seeds = torch.randint(0, 2**62, (versions,), generator=gen).tolist()
        with torch.random.fork_rng(devices=[]):  # sample() reseeds the global RNG
            augmented = [base_ds.sample(subset.indices, int(p), s, subset.transform)[0] for s in seeds]
        rows.append((splits.class_names[label], [original, *augmented]))

    fig, axes = plt.subplots(
        len(rows), versions + 1, figsize=(1.6 * (versions + 1), 1.7 * len(rows)), squeeze=False
    )
    for r, (label, images) in enumerate(rows):
        for c, img in enumerate(images):
            ax = axes[r][c]
            arr = img.clamp(0, 1).permute(1, 2, 0).numpy()
            ax.imshow(
                arr[..., 0] if in_chans == 1 else arr, cmap="gray" if in_chans == 1 else None, vmin=0, vmax=1
            )
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                ax.set_title("original" if c == 0 else f"augmented {c}", fontsize=8)
            if c == 0:
                ax.set_ylabel(label, fontsize=8)
    spec = ", ".join(f"{name}:{param:g}" for name, param in ops) or "none"
    fig.suptitle(f"augmentation: {spec}", fontsize=9)
    fig.tight_layout()
    return save_figure(fig, out)
