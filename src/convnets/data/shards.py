"""WebDataset tar shards: data past what one folder scan and one disk serve.

``write_shards(DATA, OUT)`` (``convnets shard``) scans a class-per-folder dataset once, splits it
(stratified, seeded: the same split a folder run makes), shuffles the training order and writes
``train-NNNNNN.tar`` / ``val-NNNNNN.tar`` of about ``shard_size`` bytes each, plus ``index.json``
(:class:`ShardIndex`: class names, per-class counts, each shard's sample count, which are validation).
Samples hold the original file bytes, or with ``resize`` a JPEG of the decoded base image (smaller
shards, cheaper decoding when streaming).

:class:`ShardStream` streams them for training: ``convnets train OUT/`` (``load_data`` sees the
index). The webdataset library reads the tars (local paths, ``http(s)://``, ``pipe:`` URLs listed in
the index); the split of work is done here rather than with ``split_by_node``/``split_by_worker``,
which hand out whole shards and so give ranks unequal sample counts (a DDP run then hangs or drops
data). Instead every epoch the shards are put in a seeded order, the concatenated samples are cut into
one contiguous range per rank (sizes differ by at most one; the shorter ranges are padded by repeating
their first sample, as ``DistributedSampler`` pads) and each rank's range into whole-batch pieces per
worker. So each training image is seen once per epoch across ranks, every rank steps the same number
of batches, and each worker reads only the shards its range touches, sequentially. A shuffle buffer
mixes the order inside each worker; decoding follows the folder rules (``decode.load_base``) and a
sample that fails to decode is reported (``SkippedImageWarning`` via the trainer) and skipped.
"""

from __future__ import annotations

import io
import json
import math
import os
import random
import re
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from torch.utils.data import IterableDataset

INDEX_FILE = "index.json"
DEFAULT_SHARD_SIZE = "512MB"
# Samples held per worker for shuffling. The writer already shuffled the training order and the shard
# order changes every epoch, so the buffer only mixes locally; a larger one delays the first batch.
SHUFFLE_BUFFER = 256
RAW_PREFIX = "u8."  # member extension of decoded pixels: "u8.73x73x3"
SHUFFLE_START = 64  # samples in the buffer before the first one leaves it
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgt]?)i?b?\s*$", re.IGNORECASE)


def parse_size(text: str | int) -> int:
    """``"512MB"``, ``"64k"``, ``1000000`` -> bytes."""
    if isinstance(text, int):
        return text
    m = _SIZE.match(str(text))
    if not m:
        raise ValueError(f"--shard-size: {text!r} is not a size such as 512MB, 64MB or 1GB")
    return int(float(m.group(1)) * 1024 ** "_kmgt".index((m.group(2) or "_").lower()))


@dataclass
class ShardInfo:
    url: str  # relative to the index's folder, or a URL the webdataset library opens
    count: int


@dataclass
class ShardIndex:
    """``index.json``: what a shard set holds."""

    class_names: list[str]
    train: list[ShardInfo]
    val: list[ShardInfo]
    counts: dict[str, int]  # images per class (train + val)
    stored: str  # "original" (the files' own bytes) or "resized" (JPEG of the base image)
    image_size: int | None = None  # the stored base size when resized
    source: str = ""
    val_split: float | None = None
    seed: int = 0
    skipped: list = field(default_factory=list)  # (file, reason) left out at write time
    version: int = 1

    def write(self, folder: Path) -> Path:
        from ..base.atomic import atomic_write_json

        path = Path(folder) / INDEX_FILE
        atomic_write_json(path, asdict(self))
        return path

    @classmethod
    def read(cls, path: str | os.PathLike) -> ShardIndex:
        path = Path(path)
        if path.is_dir():
            path = path / INDEX_FILE
        try:
            raw = json.loads(path.read_text())
            raw["train"] = [ShardInfo(**s) for s in raw["train"]]
            raw["val"] = [ShardInfo(**s) for s in raw["val"]]
            return cls(**raw)
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise ValueError(f"{path}: not a readable shard index ({type(e).__name__}: {e})") from e

    def resolve(self, folder: Path, shards: list[ShardInfo]) -> list[tuple[str, int]]:
        """(URL the webdataset library opens, sample count) per shard."""
        out = []
        for s in shards:
            remote = "://" in s.url or s.url.startswith("pipe:")
            out.append((s.url if remote else str(Path(folder) / s.url), s.count))
        return out


def _tar_bytes(data: bytes) -> int:
    """A tar member's size on disk: a 512-byte header and the data padded to 512."""
    return 512 + -(-len(data) // 512) * 512


def is_shard_source(source: str | os.PathLike) -> bool:
    path = Path(os.path.expanduser(str(source)))
    return (path.is_dir() and (path / INDEX_FILE).is_file()) or (path.name == INDEX_FILE and path.is_file())


# --- writing -----------------------------------------------------------------------------------------


def write_shards(
    data: str | os.PathLike,
    out: str | os.PathLike,
    *,
    shard_size: str | int = DEFAULT_SHARD_SIZE,
    val_split: float | None = 0.2,
    seed: int = 0,
    resize: int | None = None,
    progress: bool = True,
) -> ShardIndex:
    """Write ``data`` (a folder of class sub-folders) as WebDataset shards + ``index.json`` in ``out``.

    ``resize`` stores each image decoded and brought to a ``resize``-pixel base (the folder pipeline's
    centre-crop base, JPEG quality 95) instead of the file's own bytes.
    """
    import webdataset as wds
    from tqdm.auto import tqdm

    from .decode import ImageReadError, base_size, load_base
    from .folder import scan_folder
    from .split import stratified_split

    max_bytes = parse_size(shard_size)
    out = Path(out)
    if out.exists() and any(out.glob("*.tar")):
        raise ValueError(f"--out: {out} already holds shards; choose an empty folder")
    out.mkdir(parents=True, exist_ok=True)
    scan = scan_folder(data)
    root = Path(data)
    rel, files = scan.rel_paths, scan.files
    if val_split:
        train_idx, val_idx = stratified_split(rel, scan.labels, val_split, seed)
    else:
        train_idx, val_idx = list(range(len(rel))), []
    random.Random(seed).shuffle(train_idx)  # classes mixed along the shards: contiguous ranges are random
    skipped: list = [list(s) for s in scan.skipped]  # scan_folder has reported these already
    reported = len(skipped)
    base = base_size((resize, resize), "center-crop") if resize else None

    def payload(i: int) -> tuple[str, bytes]:
        path = files[i]
        if base is None:
            ext = Path(path).suffix.lower().lstrip(".")
            return ("jpg" if ext == "jpeg" else ext), Path(path).read_bytes()
        arr = load_base(path, base)  # decoded pixels: streaming then skips decoding entirely
        return f"{RAW_PREFIX}{arr.shape[0]}x{arr.shape[1]}x{arr.shape[2]}", arr.tobytes()

    bar = tqdm(total=len(rel), desc="shards", unit="img", disable=not progress)

    def write(split: str, indices: list[int]) -> list[ShardInfo]:
        shards: list[ShardInfo] = []
        writer = None
        size = 0
        for i in indices:
            try:
                ext, data_bytes = payload(i)
            except (ImageReadError, OSError) as e:
                skipped.append([rel[i], str(e)])
                bar.update()
                continue
            if writer is None or size + len(data_bytes) > max_bytes and shards[-1].count:
                if writer is not None:
                    writer.close()
                name = f"{split}-{len(shards):06d}.tar"
                # An integer mtime: plain ustar headers (a float one adds a PAX header per member).
                writer = wds.TarWriter(str(out / name), encoder=False, mtime=int(time.time()))
                shards.append(ShardInfo(name, 0))
                size = 0
            key = f"{len(shards) - 1:06d}_{shards[-1].count:07d}"
            writer.write(
                {"__key__": key, ext: data_bytes, "cls": str(scan.labels[i]).encode(), "txt": rel[i].encode()}
            )
            shards[-1].count += 1
            size += _tar_bytes(data_bytes) + 2 * _tar_bytes(b"x" * 64)  # + the cls and txt members
            bar.update()
        if writer is not None:
            writer.close()
        return shards

    train = write("train", train_idx)
    val = write("val", val_idx)
    bar.close()
    for name, reason in skipped[reported:]:
        from .decode import SkippedImageWarning

        warnings.warn(f"skipping {name}: {reason}", SkippedImageWarning, stacklevel=2)
    counts = {c: 0 for c in scan.class_names}
    for label in scan.labels:
        counts[scan.class_names[label]] += 1
    index = ShardIndex(
        class_names=list(scan.class_names),
        train=train,
        val=val,
        counts=counts,
        stored="resized" if base else "original",
        image_size=resize,
        source=str(root.resolve()),
        val_split=val_split,
        seed=seed,
        skipped=skipped,
    )
    os.chmod(index.write(out), 0o644)  # shards on shared storage: readable by every user, as the tars
    return index


# --- reading -----------------------------------------------------------------------------------------


def _rank_world() -> tuple[int, int]:
    import torch.distributed as dist

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
        import copy

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
        from .decode import ImageReadError, base_size, fit, load_base, to_mode

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
            from PIL import Image

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
        from torch.utils.data import get_worker_info

        from .decode import ImageReadError

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
        import torch

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
    import itertools

    import webdataset as wds

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
    from webdataset.tariterators import base_plus_ext, group_by_keys, tar_file_iterator

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
    from webdataset.tariterators import base_plus_ext

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
