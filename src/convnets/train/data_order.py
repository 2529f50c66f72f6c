"""Which training samples each epoch sees, in which batches and order, and the loaders that read them.

The order is a pure function of (seed, epoch): DistributedSampler's shuffle (padded so every rank gets
as many), or the class-balanced draw of ``--balance sampler``. That makes ``--resume`` exact and DDP
sharding uniform. Each key carries a per-sample augmentation seed where the dataset takes one, so
augmentation depends only on (seed, epoch, sample), whatever the number of worker processes.
"""

from __future__ import annotations

import itertools
import math
import random
from collections.abc import Callable, Iterator

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler, IterableDataset, Sampler

from . import distributed as ddp
from .balance import Balance
from .options import TrainOptions
from .transfer import Phase

# augmentation-seed "epochs" of the cached feature views (no real epoch gets there)
VIEW_EPOCH = 1_000_000


def takes_seeded_keys(dataset: Dataset) -> bool:
    """Whether ``dataset`` reads ``(index, sample_seed)`` keys (the data layer's datasets do)."""
    try:
        from ..data.datasets import BaseDataset  # start-up: PIL on first use
        from ..data.datasets import Subset as DataSubset  # start-up: PIL on first use
    except ImportError:
        return False
    return isinstance(dataset, (BaseDataset, DataSubset))


def _seed_worker(worker_id: int) -> None:
    # torch seeds each worker from the loader's base seed; give numpy and random matching seeds.

    seed = torch.initial_seed() % 2**32
    np.random.seed(seed)
    random.seed(seed)


class _BatchList(Sampler):
    """A batch sampler refilled every epoch (from batch ``start`` on, when resuming mid-epoch), so one
    DataLoader with persistent workers serves the whole run."""

    def __init__(self) -> None:
        self.batches: list[list] = []
        self.start = 0

    def set(self, batches: list[list], start: int = 0) -> None:
        self.batches, self.start = batches, start

    def __iter__(self):
        return iter(self.batches[self.start :])

    def __len__(self) -> int:
        return len(self.batches) - self.start


class DataOrder:
    """The run's batches: training keys per epoch, training batches (from images, a stream of shards,
    or cached features), and validation batches. Loaders are kept for the run, so worker processes
    start once."""

    def __init__(
        self,
        train_set: Dataset,
        val_set: Dataset | None,
        opts: TrainOptions,
        *,
        balance: Balance,
        labels: list[int] | None,
        dist: ddp.DistInfo,
        device: torch.device,
        augmenting: bool,
        num_workers: int,
        collate_fn: Callable | None,
    ) -> None:
        self.train_set, self.val_set = train_set, val_set
        self.seed, self.batch_size = opts.seed, opts.batch_size
        self.balance, self.labels, self.dist, self.device = balance, labels, dist, device
        self.num_workers, self.collate_fn = num_workers, collate_fn
        # Augmented views per image in the feature cache (one view of a deterministic transform).
        self.views = opts.feature_views if augmenting else 1
        # Without augmentation the transform is deterministic and plain indices skip the seeding.
        self.seeded = augmenting and takes_seeded_keys(train_set)
        self.streaming = isinstance(train_set, IterableDataset)  # WebDataset shards (data/shards.py)
        self._train_batches = _BatchList()
        self._train_loader: DataLoader | None = None
        self._val_loader: DataLoader | None = None

    def keys(self, epoch: int, shuffle: bool = True) -> list:
        """This rank's dataset keys for ``epoch``, each paired with a per-sample augmentation seed when
        the dataset takes one."""
        n = len(self.train_set)
        sampler = DistributedSampler(
            range(n), self.dist.world_size, self.dist.rank, shuffle=shuffle, seed=self.seed
        )
        sampler.set_epoch(epoch)
        positions = list(sampler)
        if shuffle and self.balance.mode == "sampler":
            world = self.dist.world_size
            drawn = self.balance.draw(self.labels, self.seed, epoch)
            drawn += drawn[: (-len(drawn)) % world]  # every rank gets as many, like DistributedSampler
            positions = drawn[self.dist.rank :: world]
        if not self.seeded:
            return positions
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
        seeds = torch.randint(0, 2**62, (n,), generator=g).tolist()
        return [(p, seeds[p]) for p in positions]

    def view_keys(self) -> list[list]:
        """The keys of each cached feature view: view v uses its own augmentation seeds."""
        return [self.keys(VIEW_EPOCH + v, shuffle=False) for v in range(self.views)]

    def batches(self, epoch: int) -> list[list]:
        keys = self.keys(epoch)
        bs = self.batch_size
        batches = [keys[i : i + bs] for i in range(0, len(keys), bs)]
        if len(batches) > 1 and len(batches[-1]) == 1:  # BatchNorm cannot normalise a batch of one
            batches.pop()
        return batches

    def batches_per_epoch(self, phase: Phase) -> int:
        if phase.cached:
            return math.ceil(len(self.keys(0)) * self.views / self.batch_size)
        if self.streaming:  # shards: the stream knows this rank's share (equal on every rank)
            return math.ceil(len(self.train_set) / self.batch_size)
        return len(self.batches(0))

    def train_batches(
        self, phase: Phase, epoch: int, start: int, features: dict | None = None
    ) -> tuple[Iterator, int]:
        """``epoch``'s training batches from batch ``start`` on, and how many the epoch has; for a
        cached phase, batches of ``features["train"]``."""
        if phase.cached:
            fx, fy = features["train"]
            g = torch.Generator().manual_seed(self.seed * 100_003 + epoch)
            order = torch.randperm(len(fx), generator=g)
            if self.balance.mode == "sampler":
                order = torch.tensor(self.balance.draw(fy, self.seed, epoch))
            bs = self.batch_size
            batches = [order[i : i + bs] for i in range(0, len(order), bs)]
            return ((fx[b], fy[b]) for b in batches[start:]), len(batches)
        if self.streaming:
            return self._stream_batches(epoch, start)
        batches = self.batches(epoch)
        self._train_batches.set(batches, start)
        if self._train_loader is None:  # one loader for the run: its worker processes persist
            self._train_loader = DataLoader(
                self.train_set,
                batch_sampler=self._train_batches,
                num_workers=self.num_workers,
                collate_fn=self.collate_fn,
                pin_memory=self.device.type == "cuda",
                persistent_workers=self.num_workers > 0,
                worker_init_fn=_seed_worker if self.num_workers else None,
            )
        return iter(self._train_loader), len(batches)

    def _stream_batches(self, epoch: int, start: int) -> tuple[Iterator, int]:
        """Shards (an IterableDataset): the stream splits the epoch across ranks and workers itself;
        a resume mid-epoch reads past the batches already done."""
        self.train_set.set_epoch(epoch)
        if self._train_loader is None:
            self._train_loader = DataLoader(
                self.train_set,
                batch_size=self.batch_size,
                num_workers=self.num_workers,
                collate_fn=self.collate_fn,
                pin_memory=self.device.type == "cuda",
                worker_init_fn=_seed_worker if self.num_workers else None,
            )
        n = math.ceil(len(self.train_set) / self.batch_size)
        return itertools.islice(iter(self._train_loader), start, None), n

    def val_batches(self, indices: list[int], whole: bool = False) -> Iterator:
        """The validation split's batches (twice the training batch: no gradients kept) over
        ``indices``; for shards, the stream's own share of this rank (``whole``: all of it)."""
        if isinstance(self.val_set, IterableDataset):  # shards: the stream splits itself across ranks
            dataset = self.val_set.whole() if whole else self.val_set
            return iter(
                DataLoader(
                    dataset,
                    batch_size=self.batch_size * 2,
                    num_workers=self.num_workers,
                    collate_fn=self.collate_fn,
                )
            )
        if self._val_loader is None or self._val_loader.sampler != indices:
            # Kept for the run (persistent workers): a validation pass per epoch would otherwise
            # start its worker processes again every time.
            self._val_loader = DataLoader(
                self.val_set,
                sampler=indices,
                batch_size=self.batch_size * 2,
                num_workers=self.num_workers,
                collate_fn=self.collate_fn,
                pin_memory=self.device.type == "cuda",
                persistent_workers=self.num_workers > 0,
            )
        return iter(self._val_loader)
