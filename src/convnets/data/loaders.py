"""Batch loaders: seeded sampling, worker processes, and reporting of files that fail mid-epoch.

``ImageLoader`` wraps a ``torch.utils.data.DataLoader``. Augmentation runs in the loader's worker
processes while the model trains in the main one:

* ``num_workers`` (:func:`default_num_workers`) is 0 for in-memory datasets (digits, MNIST, CIFAR, a
  memory-cached folder): measured on digits at 32x32 with "light" augmentation on the shared 2-core
  machine, 0 and 2 workers took the same time per epoch within noise (12-16 s vs 11-13 s for 1,438
  images, load average 11), so 0 wins by skipping worker start-up and the per-process copies of the
  arrays. For files decoded on the fly it is the cores the CPU's intra-op threads leave free (training
  on a GPU: the cores, at most 8). Workers beside intra-op threads on the same cores stall them:
  MobileNetV2 at 160 px on 327 alpaca photos, 2 cores, 2 epochs took 18.9 s with 2 workers and
  11.1 s with none (bench/RESULTS.md "Data-loading workers").
* workers are persistent (started once, not every epoch), prefetch 2 batches each, and batches are
  put in pinned memory only when CUDA is available.
* reproducibility: ``SeededSampler`` (in the main process) draws each epoch's order and one seed per
  sample from ``seed`` and the epoch number; the dataset seeds torch's RNG with the sample's seed
  before augmenting. So a seed gives the same batches and the same augmentations whatever
  ``num_workers`` is.
"""

from __future__ import annotations

import gc
import os
import random
import warnings
from collections.abc import Iterator

import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset, Sampler

from .datasets import BaseDataset, Subset, cpu_count
from .decode import SkippedImageWarning

# A forked data-loading worker must not free objects whose destructors need threads only the parent
# has: an ONNX Runtime session that earlier work left in a reference cycle was collected by the garbage
# collector inside a freshly forked worker, and its destructor hung there on its thread pool's condition
# variable (pthread_cond_destroy), stalling the epoch for good. Collecting the garbage in the parent just
# before each fork leaves the child nothing of the kind to free (a few ms per fork; DataLoader workers
# fork once per loader, persistent_workers).
os.register_at_fork(before=gc.collect)


class SeededSampler(Sampler):
    """Yields ``(index, sample_seed)``; order and seeds depend only on (seed, epoch)."""

    def __init__(self, n: int, shuffle: bool, seed: int = 0):
        self.n = n
        self.shuffle = shuffle
        self.seed = int(seed)
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Continue from ``epoch`` (e.g. when resuming a run)."""
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return self.n

    def __iter__(self) -> Iterator[tuple[int, int]]:
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        self.epoch += 1
        order = torch.randperm(self.n, generator=g) if self.shuffle else torch.arange(self.n)
        seeds = torch.randint(0, 2**62, (self.n,), generator=g)
        return iter(zip(order.tolist(), seeds.tolist()))


def collate(batch):
    images = torch.stack([item[0] for item in batch])
    labels = torch.tensor([item[1] for item in batch], dtype=torch.int64)
    errors = [e for item in batch for e in item[2]]
    return images, labels, errors


def _worker_init(worker_id: int) -> None:
    # torch seeds each worker; give numpy and random (used by user transforms) matching seeds.
    seed = torch.initial_seed() % 2**32
    np.random.seed(seed)
    random.seed(seed)


def default_num_workers(in_memory: bool = False, device_type: str = "cpu") -> int:
    """Worker processes for a loader: 0 for in-memory datasets; for files, the usable cores (at most 8)
    when a GPU does the compute, else the cores torch's intra-op threads leave free. Under torchrun
    the cores are shared by the machine's ranks (``LOCAL_WORLD_SIZE``)."""
    if in_memory:
        return 0
    ranks = max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1")))
    cores = cpu_count()
    if device_type != "cpu":
        return min(8, cores // ranks)
    return max(0, min(8, (cores - torch.get_num_threads() * ranks) // ranks))


def holds_images_in_memory(dataset) -> bool:
    """Whether a dataset's base images are in memory (an array, or a memory-cached folder); a stream
    (shards) or a folder decoded on the fly is not."""
    base = getattr(dataset, "dataset", dataset)
    if isinstance(base, IterableDataset):
        return False
    return not hasattr(base, "files") or getattr(base, "cache", None) == "memory"


class ImageLoader:
    """Iterable over ``(images, labels)`` batches: float32 (N, C, H, W) and int64 (N,).

    Attributes: ``class_names``, ``file_paths`` (or sample names for built-in datasets), ``labels``,
    ``skipped`` (``(path, reason)`` of every file left out, at scan time or mid-epoch; shared by the
    loaders of one dataset), ``num_samples``, ``batch_size``, ``dataset``. ``len()`` is the number of
    batches per epoch, as for a DataLoader.
    """

    def __init__(
        self,
        subset: Subset,
        *,
        batch_size: int = 32,
        shuffle: bool = False,
        seed: int = 0,
        num_workers: int | None = None,
        drop_last: bool = False,
        skipped: list | None = None,
        prefetch_factor: int = 2,
    ):
        base: BaseDataset = subset.dataset
        if num_workers is None:
            num_workers = default_num_workers(in_memory=holds_images_in_memory(base))
        self.dataset = subset
        self.class_names = base.class_names
        self.file_paths = subset.names()
        self.labels = subset.labels
        self.num_samples = len(subset)
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.skipped = skipped if skipped is not None else []
        self.split: dict | None = None
        self.test: ImageLoader | None = None  # a pre-split folder's test/ subset, set by load_data
        self.pca = None  # (eigvals, eigvecs) used by the "pca" op, when it is on
        self.sampler = SeededSampler(len(subset), shuffle, seed)
        self._loader = DataLoader(
            subset,
            batch_size=batch_size,
            sampler=self.sampler,
            num_workers=num_workers,
            collate_fn=collate,
            pin_memory=torch.cuda.is_available(),
            drop_last=drop_last,
            persistent_workers=num_workers > 0,
            prefetch_factor=prefetch_factor if num_workers > 0 else None,
            worker_init_fn=_worker_init if num_workers > 0 else None,
        )

    def __len__(self) -> int:
        return len(self._loader)

    def _report(self, errors) -> None:
        known = {name for name, _ in self.skipped}
        for name, reason in errors:
            if name not in known:
                known.add(name)
                self.skipped.append((name, reason))
                warnings.warn(f"skipping {name}: {reason}", SkippedImageWarning, stacklevel=3)

    def prepare(self) -> None:
        """Fill the memory cache (``cache="memory"``) now, in the main process, before workers start."""
        base = self.dataset.dataset
        if getattr(base, "cache", None) == "memory" and base._memory is None:
            self._report(base.fill_memory_cache())

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        self.prepare()
        batches = iter(self._loader) if self.num_workers else self._in_process_batches()
        for images, labels, errors in batches:
            if errors:
                self._report(errors)
            yield images, labels

    def _in_process_batches(self):
        """num_workers=0: fetch each batch with one intra-op thread and the caller's RNG untouched."""
        it = iter(self._loader)
        while True:
            rng_state, threads = torch.get_rng_state(), torch.get_num_threads()
            # Per-image ops are too small to gain from intra-op threads; on a busy machine they lose
            # a lot (measured: 60 ms vs 5 ms per 32x32 digit with 2 threads vs 1 under load).
            torch.set_num_threads(1)
            try:
                batch = next(it)
            except StopIteration:
                return
            finally:
                torch.set_rng_state(rng_state)
                torch.set_num_threads(threads)
            yield batch

    def __repr__(self) -> str:
        return (
            f"ImageLoader({self.num_samples} images, {len(self.class_names)} classes, "
            f"batch_size={self.batch_size}, num_workers={self.num_workers})"
        )
