"""Data-pipeline throughput: convnets.data vs a plain torchvision ImageFolder + DataLoader.

Measures images/s of decode + resize + augmentation (the "light" preset: flip + rotation, then
normalisation) with 2 worker processes, on real JPEG photos (../shared/data/alpaca when present,
else synthetic 1024x768 photos made here). Pipelines, run interleaved in every repetition so machine
noise hits all of them alike:

* plain  -- torchvision.datasets.ImageFolder (full PIL decode), Resize + CenterCrop to the same base
            image, then the same v2 augmentation; DataLoader(2 workers, persistent);
* ours   -- convnets.data.load_data with no cache (JPEG draft decoding), cache="memory", cache="disk".

"epoch 1" includes building the dataset (folder scan, memory-cache fill) and starting the workers;
"epoch 2" is the next pass with the same loader. Reported: median [min, max] over the repetitions
after one warm-up repetition.

    .venv/bin/python bench/data_pipeline.py [--reps 5] [--image-size 160] [--data DIR]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader
from torchvision import datasets
from torchvision.transforms import v2

from convnets.data import build_train_transform, load_data
from convnets.data.decode import base_size
from convnets.models.base import IMAGENET_MEAN, IMAGENET_STD

ROOT = Path(__file__).resolve().parents[1]
AUGMENT = "light"


def make_photos(folder: Path, n_per_class: int = 100) -> Path:
    rng = np.random.default_rng(0)
    for cls in ("a", "b"):
        (folder / cls).mkdir(parents=True, exist_ok=True)
        for i in range(n_per_class):
            # Smooth random image + noise: JPEG-compresses like a photo, not like flat colour.
            small = rng.integers(0, 255, (24, 32, 3), dtype=np.uint8)
            im = Image.fromarray(small).resize((1024, 768), Image.BICUBIC)
            arr = np.asarray(im).astype(np.int16) + rng.integers(-12, 12, (768, 1024, 3))
            Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8)).save(folder / cls / f"{i}.jpg", quality=90)
    return folder


def plain_loader(root: Path, size: int, workers: int) -> DataLoader:
    bh, bw = base_size((size, size), "center-crop")
    tf = v2.Compose(
        [
            v2.Resize(bh),
            v2.CenterCrop((bh, bw)),
            v2.PILToTensor(),
            build_train_transform(AUGMENT, (size, size), 3, IMAGENET_MEAN, IMAGENET_STD),
        ]
    )
    ds = datasets.ImageFolder(str(root), transform=tf)
    return DataLoader(
        ds,
        batch_size=32,
        shuffle=True,
        num_workers=workers,
        persistent_workers=workers > 0,
        generator=torch.Generator().manual_seed(0),
    )


def our_loader(root: Path, size: int, workers: int, cache: str | None, cache_dir: Path):
    return load_data(
        root,
        image_size=size,
        val_split=None,
        augment=AUGMENT,
        normalize="imagenet",
        num_workers=workers,
        cache=cache,
        cache_dir=cache_dir,
        batch_size=32,
    ).train


def two_epochs(build, rep: int) -> tuple[float, float, int]:
    start = time.perf_counter()
    loader = build(rep)
    n = sum(len(y) for _, y in loader)
    t1 = time.perf_counter() - start
    start = time.perf_counter()
    n2 = sum(len(y) for _, y in loader)
    t2 = time.perf_counter() - start
    assert n == n2
    del loader
    return t1, t2, n


def fmt(values: list[float]) -> str:
    return f"{statistics.median(values):.0f} [{min(values):.0f}, {max(values):.0f}]"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--image-size", type=int, default=160)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data" / "alpaca")
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="convnets-bench-"))
    root = args.data if args.data.is_dir() else make_photos(tmp / "photos")
    size, w = args.image_size, args.workers
    pipelines = {
        "plain ImageFolder": lambda rep: plain_loader(root, size, w),
        "ours, no cache": lambda rep: our_loader(root, size, w, None, tmp / "unused"),
        "ours, cache=memory": lambda rep: our_loader(root, size, w, "memory", tmp / "unused"),
        "ours, cache=disk": lambda rep: our_loader(root, size, w, "disk", tmp / f"disk{rep}"),
    }
    results = {name: ([], []) for name in pipelines}
    load = [os.getloadavg()[0]]
    for rep in range(args.reps + 1):  # rep 0 is the warm-up (page cache, imports)
        for name, build in pipelines.items():
            t1, t2, n = two_epochs(build, rep)
            if rep:
                results[name][0].append(n / t1)
                results[name][1].append(n / t2)
            print(
                f"rep {rep} {name:20s} epoch1 {n / t1:7.1f} img/s  epoch2 {n / t2:7.1f} img/s",
                file=sys.stderr,
            )
        load.append(os.getloadavg()[0])
    plain2 = statistics.median(results["plain ImageFolder"][1])
    print(
        f"\n{n} JPEGs from {root}, {size}x{size}, augment={AUGMENT!r}, {w} workers, batch 32, "
        f"{args.reps} reps after 1 warm-up; torch {torch.__version__}; cores {len(os.sched_getaffinity(0))}; "
        f"1-min load average {min(load):.1f}..{max(load):.1f}\n"
    )
    print("| pipeline | epoch 1 img/s | epoch 2 img/s | epoch 2 vs plain |")
    print("|---|---|---|---|")
    for name, (e1, e2) in results.items():
        print(f"| {name} | {fmt(e1)} | {fmt(e2)} | {statistics.median(e2) / plain2:.2f}x |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
