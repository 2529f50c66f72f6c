"""Reading a shard set: :class:`ShardStream` streams it for training (the split of work across ranks
and workers, the shuffle buffer, decoding as the folder pipeline does), ``shard_splits`` is what
``load_data`` calls."""

from __future__ import annotations

import copy
import io
import itertools
import math
import os
import random
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from PIL import Image
from torch.utils.data import IterableDataset, get_worker_info

from ..decode import ImageReadError, base_size, fit, load_base, to_mode
from .index import RAW_PREFIX, ShardIndex

# Samples held per worker for shuffling. The writer already shuffled the training order and the shard
# order changes every epoch, so the buffer only mixes locally; a larger one delays the first batch.
SHUFFLE_BUFFER = 256
SHUFFLE_START = 64  # samples in the buffer before the first one leaves it


def _rank_world() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def plan_positions(
    counts: Sequence[int], epoch: int, seed: int, rank: int, world: int, shuffle: bool, pad: bool, batch: int
) -> list[tuple[int, int]]:
    """This rank's samples for ``epoch`` as (shard number, offset in shard), in reading order.

    Shards are concatenated in a seeded order (``shuffle``), cut into ``world`` contiguous ranges;
    with ``pad`` every rank gets ceil(N / world) samples (one more if a lone-sample last batch would
    be left for BatchNorm), the shorter ranges repeating their first samples.
    """
    order = list(range(len(counts)))
    if shuffle:
        random.Random(seed * 1_000_003 + epoch).shuffle(order)
    total = sum(counts)
    lo, hi = total * rank // world, total * (rank + 1) // world
    positions: list[tuple[int, int]] = []
    start = 0
    for shard in order:
        n = counts[shard]
        a, b = max(lo, start), min(hi, start + n)
        positions += [(shard, off - start) for off in range(a, b)]
        start += n
    if pad and positions:
        target = math.ceil(total / world)
        if target % batch == 1 and target > 1:
            target += 1  # a last batch of one cannot be batch-normalised
        positions += [positions[i % len(positions)] for i in range(target - len(positions))]
    return positions


def _worker_slice(n: int, batch: int, worker: int, workers: int) -> tuple[int, int]:
    """Contiguous whole-batch piece [a, b) of ``n`` positions for ``worker``."""
    batches = math.ceil(n / batch)
    a = batches * worker // workers * batch
    b = min(n, batches * (worker + 1) // workers * batch)
    return a, b


def _runs(positions: list[tuple[int, int]]) -> Iterator[tuple[int, int, int]]:
    """(shard, first offset, end offset) runs of consecutive offsets."""
    i = 0
    while i < len(positions):
        shard, first = positions[i]
        j = i + 1
        while j < len(positions) and positions[j] == (shard, first + (j - i)):
            j += 1
        yield shard, first, first + (j - i)
        i = j


class ShardStream(IterableDataset):
    """Streams ``(image, label, errors)`` from shards (see the module docstring); ``len`` is this rank's
    number of samples per epoch; call ``set_epoch`` before each epoch."""

    def __init__(
        self,
        shards: list[tuple[str, int]],
        class_names: list[str],
        transform: Callable | None,
        *,
        out_size: tuple[int, int],
        in_chans: int = 3,
        resize: str = "center-crop",
        shuffle: bool = True,
        pad: bool = True,
        batch_size: int = 32,
        seed: int = 0,
        shuffle_buffer: int = SHUFFLE_BUFFER,
        split_ranks: bool = True,
    ) -> None:
        self.shards = list(shards)
        self.class_names = list(class_names)
        self.transform = transform
        self.out_size = tuple(out_size)
        self.in_chans = in_chans
        self.resize = resize
        self.shuffle, self.pad, self.batch_size = shuffle, pad, batch_size
        self.seed = seed
        self.shuffle_buffer = shuffle_buffer if shuffle else 0
        self.split_ranks = split_ranks
        self.epoch = 0
        self.rank_world: tuple[int, int] | None = None
        self.total = sum(c for _, c in self.shards)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch
        # Read in the main process: worker processes started by "spawn" have no process group.
        self.rank_world = _rank_world()

    def whole(self) -> ShardStream:
        """The same stream, unsplit: every sample once, in one process (the final confusion matrix)."""
        other = copy.copy(self)
        other.split_ranks, other.pad = False, False
        return other

    def _positions(self) -> list[tuple[int, int]]:
        rank, world = (self.rank_world or _rank_world()) if self.split_ranks else (0, 1)
        counts = [c for _, c in self.shards]
        return plan_positions(
            counts, self.epoch, self.seed, rank, world, self.shuffle, self.pad, self.batch_size
        )

    def __len__(self) -> int:
        return len(self._positions())

    def _decode(self, sample: dict[str, Any]) -> np.ndarray:
        size = base_size(self.out_size, self.resize)
        raw = next((k for k in sample if k.startswith(RAW_PREFIX)), None)
        if raw is None:
            return load_base(io.BytesIO(_image_bytes(sample)), size, self.in_chans, self.resize)
        try:  # shards written with --resize: the base image's uint8 pixels, shape in the member name
            # (np.load's header parsing cost 1.3 ms a sample here: more than the augmentation)
            shape = tuple(int(v) for v in raw[len(RAW_PREFIX) :].split("x"))
            arr = np.frombuffer(sample[raw], dtype=np.uint8).reshape(shape)
        except ValueError as e:
            raise ImageReadError(f"cannot read the stored pixels ({raw}): {e}") from None
        if arr.shape != (*size, self.in_chans):  # trained at another size than stored: resize those
            im = fit(
                to_mode(Image.fromarray(arr[:, :, 0] if arr.shape[2] == 1 else arr), self.in_chans),
                size,
                self.resize,
            )
            arr = np.array(im, dtype=np.uint8).reshape(*size, self.in_chans)
        return arr.copy()  # writable, for torch.from_numpy

    def bases(self, limit: int) -> Iterator[np.ndarray]:
        """Up to ``limit`` decoded base images from the start of the training shards (statistics)."""
        n = 0
        for url, _ in self.shards:
            for sample in _read_shard(url):
                try:
                    yield self._decode(sample)
                except Exception:  # noqa: BLE001 - a bad sample is reported when training reads it
                    continue
                n += 1
                if n >= limit:
                    return

    def __iter__(self):
        positions = self._positions()
        info = get_worker_info()
        worker, workers = (info.id, info.num_workers) if info else (0, 1)
        a, b = _worker_slice(len(positions), self.batch_size, worker, workers)
        rank = (self.rank_world or _rank_world())[0] if self.split_ranks else 0
        rng = random.Random(hash((self.seed, self.epoch, rank, worker)))
        buffer: list = []
        errors: list[tuple[str, str]] = []
        # A sample that fails to decode is replaced by a repeat of a good one, as the folder pipeline
        # replaces a bad file with the next: every worker and rank keeps its planned count, so the
        # ranks still step together.
        owed, previous, added = 0, None, 0
        for shard, first, end in _runs(positions[a:b]):
            url = self.shards[shard][0]
            for offset, sample in enumerate(_read_shard(url, first, end)):
                name = f"{url}#{sample.get('__key__', first + offset)}"
                try:
                    arr = self._decode(sample)
                    label = int(sample["cls"])
                except (ImageReadError, KeyError, ValueError) as e:
                    errors.append((name, str(e)))
                    if previous is None:
                        owed += 1
                        continue
                    items = [previous]
                else:
                    previous = (arr, label)
                    items = [previous] * (1 + owed)
                    owed = 0
                for item in items:
                    if self.shuffle_buffer:
                        # As webdataset's shuffle: start after a few samples and let the buffer grow by
                        # one for every sample out, so the first batch does not wait for a full buffer.
                        buffer.append(item)
                        added += 1
                        if len(buffer) < min(SHUFFLE_START, self.shuffle_buffer) or (
                            len(buffer) < self.shuffle_buffer and added % 2
                        ):
                            continue
                        k = rng.randrange(len(buffer))
                        buffer[k], buffer[-1] = buffer[-1], buffer[k]
                        item = buffer.pop()
                    yield self._transformed(item[0]), item[1], errors
                    errors = []
        rng.shuffle(buffer)
        for arr, label in buffer:
            yield self._transformed(arr), label, errors
            errors = []

    def _transformed(self, arr: np.ndarray):
        # Applied as samples leave the shuffle buffer: the buffer then holds small uint8 images, not
        # float tensors (a buffer of 256 transformed 64x64 images cost ~100 us a sample in cache misses).
        image = torch.from_numpy(arr).permute(2, 0, 1)
        return image if self.transform is None else self.transform(image)


def _image_bytes(sample: dict[str, Any]) -> bytes:
    for key, value in sample.items():
        if not key.startswith("__") and key not in ("cls", "txt", "json"):
            return value
    raise KeyError("the sample holds no image")


def _read_shard(url: str, first: int = 0, end: int | None = None) -> Iterator[dict]:
    """Raw samples ``first:end`` of one shard (no decoding). A local shard is entered at sample
    ``first`` by hopping over tar headers (microseconds a sample; parsing the skipped members with
    ``tarfile``, as reading through webdataset does, cost ~0.75 ms each here); URLs are read through."""
    import webdataset as wds  # optional: convnets[shards]

    if os.path.isfile(url):
        # A 1 MiB buffer: a sample is three tar members, ~6 reads; 8 KiB buffers made each a syscall.
        f = open(url, "rb", buffering=1 << 20)  # noqa: SIM115 - closed by the generator below
        if _skip_samples(f, first):
            count = None if end is None else end - first
            return _closing(f, itertools.islice(_local_samples(f, url), count))
        f.close()
    ds = wds.WebDataset(url, shardshuffle=False, nodesplitter=None, workersplitter=None, empty_check=False)
    return itertools.islice(iter(ds), first, end)


def _local_samples(f, url: str) -> Iterator[dict]:
    """Samples of a plain-ustar tar (what ``write_shards`` writes) read member by member with the
    header hop of :func:`_skip_samples`: 0.3 s against 3.7 s through ``wds.WebDataset`` for 5,000
    samples measured here, which matters once decoding is gone (``--resize`` shards). Other headers
    (PAX, GNU long names) hand over to webdataset's reader from that point."""
    from webdataset.tariterators import (  # optional: convnets[shards]
        base_plus_ext,
        group_by_keys,
        tar_file_iterator,
    )

    sample: dict[str, Any] = {}
    start = 0
    while True:
        pos = f.tell()
        header = f.read(512)
        if len(header) < 512 or not header.strip(b"\0"):
            break
        if header[156:157] not in (b"0", b"\0"):
            f.seek(start if sample else pos)  # re-read the unfinished sample through tarfile
            yield from group_by_keys({**m, "__url__": url} for m in tar_file_iterator(f))
            return
        name = header[:100].split(b"\0", 1)[0].decode("utf-8", "replace")
        prefix = header[345:500].split(b"\0", 1)[0].decode("utf-8", "replace")
        key, ext = base_plus_ext(f"{prefix}/{name}" if prefix else name)
        size = int(header[124:136].split(b"\0", 1)[0].strip() or b"0", 8)
        data = f.read(size)
        f.seek(-size % 512, 1)
        if sample and sample["__key__"] != key:
            yield sample
            sample = {}
        if not sample:
            sample, start = {"__key__": key, "__url__": url}, pos
        sample[ext.lower()] = data
    if sample:
        yield sample


def _closing(f, samples: Iterator[dict]) -> Iterator[dict]:
    try:
        yield from samples
    finally:
        f.close()


def _skip_samples(f, n: int) -> bool:
    """Move ``f`` (a tar file at a member boundary) past ``n`` samples; False (position undefined) for
    headers this does not read (PAX / GNU long names): the caller then reads through tarfile."""
    from webdataset.tariterators import base_plus_ext  # optional: convnets[shards]

    seen, current = 0, None
    while True:
        pos = f.tell()
        header = f.read(512)
        if len(header) < 512 or not header.strip(b"\0"):
            return seen == n and False
        size = int(header[124:136].split(b"\0", 1)[0].strip() or b"0", 8)
        if header[156:157] == b"x":  # a PAX header: fine unless it renames the next member
            if b" path=" in f.read(-(-size // 512) * 512):
                return False
            continue
        if header[156:157] not in (b"0", b"\0"):
            return False
        name = header[:100].split(b"\0", 1)[0].decode("utf-8", "replace")
        prefix = header[345:500].split(b"\0", 1)[0].decode("utf-8", "replace")
        key = base_plus_ext(f"{prefix}/{name}" if prefix else name)[0]
        if key != current:
            if seen == n:
                f.seek(pos)
                return True
            current, seen = key, seen + 1
        f.seek(-(-size // 512) * 512, 1)


def shard_splits(
    source: str | os.PathLike,
    *,
    image_size: tuple[int, int],
    in_chans: int,
    batch_size: int,
    seed: int,
    train_transform_for: Callable[[Iterator[np.ndarray]], Any],
    eval_transform_for: Callable[[], Any],
) -> tuple[ShardStream, ShardStream | None, ShardIndex]:
    """Training and validation streams of a shard set (``load_data`` builds the transforms: it calls
    ``train_transform_for(base images)`` for the normalisation/PCA statistics it may need)."""
    path = Path(os.path.expanduser(str(source)))
    folder = path if path.is_dir() else path.parent
    index = ShardIndex.read(path)
    if not index.train:
        raise ValueError(f"{folder}: the shard index lists no training shards")
    common = dict(out_size=image_size, in_chans=in_chans, batch_size=batch_size, seed=seed)
    train = ShardStream(index.resolve(folder, index.train), index.class_names, None, **common)
    train.transform = train_transform_for(train.bases)
    val = None
    if index.val:
        val = ShardStream(
            index.resolve(folder, index.val),
            index.class_names,
            eval_transform_for(),
            shuffle=False,
            pad=False,
            **common,
        )
    return train, val, index
