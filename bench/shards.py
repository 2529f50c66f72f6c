"""Feeding the trainer from WebDataset shards vs from the image folder, on a synthetic 20,000-JPEG set.

Pipelines (the same decode rules, "light" augmentation, normalisation, batch, workers), run interleaved
in every repetition:

* folder          -- ``load_data(FOLDER)``: scan (header checks) + stratified split, no cache (what
                     ``convnets train FOLDER`` does);
* folder, memory  -- the same with ``cache="memory"``: every image decoded once while building, later
                     epochs read base images from RAM (the folder's fastest, cached pipeline);
* shards          -- ``load_data(SHARDS/)`` over ``convnets shard`` output holding the original JPEG bytes;
* shards, resized -- shards written with ``--resize`` (a JPEG of the base image per sample).

Reported per pipeline: start-up (``load_data`` call to the first training batch: folder scan or index
read, statistics, cache fill, worker start) and images/s over one epoch (the first ``--limit`` training
images; the memory-cached folder's second epoch, the others' first, as they do the same work every
epoch). Median [min, max] over the repetitions. The shard writing time is reported once.

    OMP_NUM_THREADS=1 .venv/bin/python bench/shards.py [--images 20000] [--size 80] [--reps 3]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

from convnets.data import load_data
from convnets.data.shards import write_shards


def make_jpegs(folder: Path, n: int, size: int, classes: int = 10) -> Path:
    """Smooth random images with noise (JPEG-compress like small photos), ``classes`` sub-folders."""
    rng = np.random.default_rng(0)
    for c in range(classes):
        (folder / f"class{c}").mkdir(parents=True, exist_ok=True)
    for i in range(n):
        small = rng.integers(0, 255, (6, 6, 3), dtype=np.uint8)
        im = Image.fromarray(small).resize((size, size), Image.BICUBIC)
        arr = np.asarray(im).astype(np.int16) + rng.integers(-12, 12, (size, size, 3))
        Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8)).save(
            folder / f"class{i % classes}" / f"{i:06d}.jpg", quality=90
        )
    return folder


def measure(source: Path, cache: str | None, args) -> tuple[float, float]:
    """(start-up seconds, images/s over up to args.limit training images)."""
    t0 = time.perf_counter()
    splits = load_data(
        str(source),
        image_size=args.image_size,
        batch_size=args.batch_size,
        augment="light",
        normalize="imagenet",
        num_workers=args.workers,
        cache=cache,
    )
    loader = splits.train
    epochs = 2 if cache == "memory" else 1  # the memory cache pays off from the second epoch
    startup = None
    for epoch in range(epochs):
        if hasattr(loader.dataset, "set_epoch"):
            loader.dataset.set_epoch(epoch)
        seen, start = 0, time.perf_counter()
        for batch in loader:
            if startup is None:
                startup = time.perf_counter() - t0
                start = time.perf_counter()  # throughput from the first batch on
                continue
            seen += len(batch[1])
            if seen >= args.limit:
                break
        rate = seen / (time.perf_counter() - start)
    return startup, rate


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--images", type=int, default=20000)
    p.add_argument("--size", type=int, default=80, help="side of the generated JPEGs")
    p.add_argument("--image-size", type=int, default=64, help="training input side")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--limit", type=int, default=8000, help="training images timed per epoch")
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--keep", type=Path, default=None, help="reuse/keep the generated data here")
    args = p.parse_args()

    tmp = args.keep or Path(tempfile.mkdtemp(prefix="convnets-bench-shards-"))
    folder = tmp / "jpegs"
    t = time.perf_counter()
    if not folder.is_dir():
        make_jpegs(folder, args.images, args.size)
    print(f"{args.images} JPEGs of {args.size}x{args.size} px in {folder} ({time.perf_counter() - t:.0f} s)")
    written = {}
    for name, resize in (("shards", None), ("shards-resized", args.image_size)):
        out = tmp / name
        if not out.is_dir():
            t = time.perf_counter()
            write_shards(folder, out, shard_size="64MB", val_split=0.2, seed=0, resize=resize, progress=False)
            written[name] = time.perf_counter() - t
    for name, seconds in written.items():
        size = sum(f.stat().st_size for f in (tmp / name).glob("*.tar")) / 2**20
        print(f"convnets shard ({name}): {seconds:.1f} s, {size:.0f} MiB")

    pipelines = {
        "folder (no cache)": (folder, None),
        "folder, cache=memory": (folder, "memory"),
        "shards (original bytes)": (tmp / "shards", None),
        "shards (--resize)": (tmp / "shards-resized", None),
    }
    results: dict[str, list[tuple[float, float]]] = {k: [] for k in pipelines}
    for rep in range(args.reps):
        for name, (source, cache) in pipelines.items():
            startup, rate = measure(source, cache, args)
            results[name].append((startup, rate))
            print(f"rep {rep + 1} {name}: start-up {startup:.2f} s, {rate:.0f} img/s", file=sys.stderr)

    def cell(values: list[float], fmt: str) -> str:
        return f"{statistics.median(values):{fmt}} [{min(values):{fmt}}, {max(values):{fmt}}]"

    base = statistics.median(r for _, r in results["folder, cache=memory"])
    print(
        f"\n{args.images} JPEGs {args.size}px -> {args.image_size}x{args.image_size}, augment light, "
        f"batch {args.batch_size}, {args.workers} workers, {args.limit} images timed, {args.reps} reps; "
        f"load average {os.getloadavg()[0]:.1f}\n"
    )
    print("| pipeline | start-up s | img/s | vs folder cache=memory |\n|---|---|---|---|")
    for name, rows in results.items():
        starts, rates = [s for s, _ in rows], [r for _, r in rows]
        print(
            f"| {name} | {cell(starts, '.2f')} | {cell(rates, '.0f')} | "
            f"{statistics.median(rates) / base:.2f}x |"
        )
    if args.keep is None:
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
