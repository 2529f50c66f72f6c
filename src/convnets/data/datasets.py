"""Map-style datasets that yield (augmented tensor, label) from base images, with caching.

Every dataset here produces *base images* (uint8 H x W x C at the base size, see ``decode.py``) and
applies its ``transform`` (augmentation or evaluation) to them. What differs is where the base image
comes from: image files (``FileDataset``), an in-memory uint8 array (``ArrayDataset``: digits, MNIST,
CIFAR...) or any dataset returning PIL images (``PILDataset``: torchvision's file-backed sets).

Caching (``cache=``):

* ``"auto"``: ``"memory"`` when the decoded base images fit :func:`memory_cache_budget`, else none.
  ``convnets train`` uses it: a small photo folder is then decoded once, not once per epoch.
* ``"memory"``: before the first epoch all base images are decoded in the main process by a thread
  pool (PIL releases the GIL while decoding and resizing) into one uint8 array; worker processes
  inherit it (fork, copy-on-write; the array holds no Python objects so pages stay shared), so no
  epoch decodes again. Costs N x H' x W' x C bytes (327 alpaca images at 183 x 183: 33 MB).
* ``"disk"``: each base image is saved as ``.npy`` under ``cache_root()/images/`` keyed by the file's
  absolute path, mtime, size and the base-image settings; workers write it (atomically) the first
  time and read it afterwards, across epochs and across runs.

A file that fails to decode at load time (e.g. truncated) does not end the epoch: the sample is
replaced by the next loadable one and the failure travels with the batch to the loader, which
reports it (``loader.skipped`` and a warning naming the file).
"""

from __future__ import annotations

import hashlib
import os
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from ..base.runtime import cache_root
from .decode import ImageReadError, cpu_count, fit, load_base, to_mode

CACHE_MODES = (None, "auto", "memory", "disk")
_MEMORY_CACHE_CAP = 4 * 2**30


def memory_cache_budget() -> int:
    """Bytes ``cache="auto"`` may hold in memory: a quarter of the memory available now, at most 4 GiB
    (workers share the array copy-on-write, so it is held once)."""
    try:
        with open("/proc/meminfo") as f:
            available = next(int(line.split()[1]) * 1024 for line in f if line.startswith("MemAvailable:"))
    except (OSError, StopIteration, ValueError):
        available = 4 * 2**30  # no /proc (macOS, Windows): assume a small machine
    return min(_MEMORY_CACHE_CAP, available // 4)


class BaseDataset(Dataset):
    """Common part: labels, transform, memory cache, bad-sample replacement, per-sample seeding."""

    def __init__(self, labels: list[int], class_names: list[str], out_size: tuple[int, int], in_chans: int):
        self.labels = [int(v) for v in labels]
        self.class_names = list(class_names)
        self.out_size = tuple(out_size)
        self.in_chans = in_chans
        self.transform = None
        self._memory: np.ndarray | None = None
        self._bad: dict[int, str] = {}  # per process: index -> reason

    # -- to implement ------------------------------------------------------------------------
    def load_base(self, index: int) -> np.ndarray:
        """uint8 (H', W', C) base image of sample ``index``; raises ``ImageReadError``."""
        raise NotImplementedError

    def name(self, index: int) -> str:
        """How a sample is named in reports (a file path, or ``dataset[index]``)."""
        return f"sample {index}"

    def fingerprint(self) -> list[str]:
        """Strings identifying the samples and settings (for on-disk caches of derived statistics)."""
        return [f"{self.name(i)}|{self.out_size}|{self.in_chans}" for i in range(len(self))]

    # -- common ------------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self.labels)

    def base(self, index: int) -> np.ndarray:
        if self._memory is not None:
            if index in self._bad:
                raise ImageReadError(self._bad[index])
            return self._memory[index]
        return self.load_base(index)

    def fill_memory_cache(self, threads: int | None = None) -> list[tuple[str, str]]:
        """Decode every base image into one shared array (``cache="memory"``); returns failures."""
        if self._memory is not None:
            return []
        h, w = self.out_size
        memory = np.zeros((len(self), h, w, self.in_chans), dtype=np.uint8)
        failures: list[tuple[str, str]] = []

        def fill(i: int) -> None:
            try:
                memory[i] = self.load_base(i)
            except ImageReadError as e:
                self._bad[i] = str(e)
                failures.append((self.name(i), str(e)))

        bar = _decode_bar(len(self))
        with ThreadPoolExecutor(max_workers=max(1, threads or cpu_count())) as pool:
            for _ in pool.map(fill, range(len(self))):
                if bar is not None:
                    bar.update()
        if bar is not None:
            bar.close()
        self._memory = memory
        return failures

    def __getitem__(self, key: Any):
        """``key`` is an index, or ``(index, seed)`` from ``SeededSampler`` for reproducible augmentation.

        Returns ``(image, label, errors)``; ``errors`` lists ``(name, reason)`` of files that failed
        while producing this sample (and were replaced by the next loadable one).
        """
        index, seed = key if isinstance(key, tuple) else (key, None)
        return self.sample(range(len(self)), index, seed, self.transform)

    def sample(self, indices, position: int, seed: int | None, transform):
        """Sample ``indices[position]``, or the next loadable one after it (wrapping round)."""
        errors: list[tuple[str, str]] = []
        n = len(indices)
        for attempt in range(n):
            i = indices[(position + attempt) % n]
            if i in self._bad:
                continue  # known bad in this process: already reported once
            try:
                arr = self.base(i)
                break
            except ImageReadError as e:
                self._bad[i] = str(e)
                errors.append((self.name(i), str(e)))
        else:
            raise ImageReadError(f"no loadable image left among {n} samples; last errors: {errors[-3:]}")
        if not arr.flags.writeable:
            arr = arr.copy()  # torch.from_numpy warns on read-only arrays (shared digits images)
        image = torch.from_numpy(np.ascontiguousarray(arr)).permute(2, 0, 1)
        if transform is not None:
            image = _seeded(transform, image, seed)
        return image, self.labels[i], errors


def _decode_bar(total: int):
    """A progress bar for a long memory-cache fill (~3 ms an image), on a terminal only."""
    if total < 1000 or not sys.stderr.isatty():
        return None
    from tqdm.auto import tqdm  # start-up: tqdm on first use

    return tqdm(total=total, desc="decode into memory", unit="img", leave=False)


def _seeded(transform, image: torch.Tensor, seed: int | None) -> torch.Tensor:
    if seed is not None:
        # Reseeds torch's global RNG: private to a worker process; with num_workers=0 the ImageLoader
        # saves and restores the caller's RNG state around each batch.
        # Only the CPU generator (augmentation runs on CPU): torch.manual_seed also queues lazy
        # CUDA/MTIA seeding that records a stack trace per call, ~3 ms a sample.
        torch.default_generator.manual_seed(seed)
    return transform(image)


class FileDataset(BaseDataset):
    """Base images decoded from image files (JPEG draft decoding, optional disk cache)."""

    def __init__(
        self,
        files: list[str],
        labels: list[int],
        class_names: list[str],
        out_size: tuple[int, int],
        in_chans: int = 3,
        resize: str = "center-crop",
        draft: bool = True,
        max_pixels: int | None = None,
        cache: str | None = None,
        cache_dir: str | os.PathLike | None = None,
    ):
        super().__init__(labels, class_names, out_size, in_chans)
        if cache not in CACHE_MODES:
            raise ValueError(f"cache must be one of {CACHE_MODES}, got {cache!r}")
        self.files = [str(f) for f in files]
        if cache == "auto":
            nbytes = len(self.files) * out_size[0] * out_size[1] * in_chans
            cache = "memory" if nbytes <= memory_cache_budget() else None
        self.resize = resize
        self.draft = draft
        self.max_pixels = max_pixels
        self.cache = cache
        self.cache_dir = Path(cache_dir) if cache_dir else cache_root() / "images"

    def name(self, index: int) -> str:
        return self.files[index]

    def fingerprint(self) -> list[str]:
        return [f"{self._cache_key(i)}" for i in range(len(self))]

    def _cache_key(self, index: int) -> str:
        path = self.files[index]
        try:
            st = os.stat(path)
            stamp = f"{st.st_mtime_ns}|{st.st_size}"
        except OSError:
            stamp = "missing"
        return f"{os.path.abspath(path)}|{stamp}|{self.out_size}|{self.in_chans}|{self.resize}|v1"

    def load_base(self, index: int) -> np.ndarray:
        if self.cache != "disk":
            return self._decode(index)
        digest = hashlib.sha1(self._cache_key(index).encode()).hexdigest()
        path = self.cache_dir / digest[:2] / f"{digest}.npy"
        try:
            arr = np.load(path, allow_pickle=False)
            if arr.shape == (*self.out_size, self.in_chans) and arr.dtype == np.uint8:
                return arr
        except (OSError, ValueError):
            pass
        arr = self._decode(index)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(f"{digest}.{os.getpid()}.tmp.npy")
            np.save(tmp, arr, allow_pickle=False)
            os.replace(tmp, path)
        except OSError:
            pass  # an unwritable cache only costs speed
        return arr

    def _decode(self, index: int) -> np.ndarray:
        return load_base(
            self.files[index], self.out_size, self.in_chans, self.resize, self.draft, self.max_pixels
        )


class ArrayDataset(BaseDataset):
    """Base images from an in-memory uint8 array (N, h, w, C), resized on the fly to the base size."""

    def __init__(
        self,
        images: np.ndarray,
        labels: list[int],
        class_names: list[str],
        out_size: tuple[int, int],
        in_chans: int,
        source: str = "array",
    ):
        super().__init__(labels, class_names, out_size, in_chans)
        if images.ndim == 3:
            images = images[..., None]
        if images.dtype != np.uint8:
            raise TypeError("ArrayDataset wants uint8 images")
        self.images = images
        self.source = source

    # Resizing every image once, batched, is ~100x cheaper than one interpolate call per sample per
    # epoch (digits: 8x8 -> 32x32); done only while the resized set stays small.
    PRESIZE_LIMIT_BYTES = 512 * 2**20

    def name(self, index: int) -> str:
        return f"{self.source}[{index}]"

    def base(self, index: int) -> np.ndarray:
        if self._memory is None and self._presized_bytes() <= self.PRESIZE_LIMIT_BYTES:
            self._memory = self._presize_all()
        return super().base(index)

    def _presized_bytes(self) -> int:
        return len(self) * self.out_size[0] * self.out_size[1] * self.in_chans

    def _presize_all(self, chunk: int = 1024) -> np.ndarray:
        out = np.empty((len(self), *self.out_size, self.in_chans), dtype=np.uint8)
        for start in range(0, len(self), chunk):
            stop = min(start + chunk, len(self))
            out[start:stop] = self._convert(self.images[start:stop])
        return out

    def load_base(self, index: int) -> np.ndarray:
        return self._convert(self.images[index : index + 1])[0]

    def _convert(self, arr: np.ndarray) -> np.ndarray:
        """(n, h, w, C) uint8 -> (n, H, W, in_chans) uint8 at the base size."""
        if arr.shape[-1] != self.in_chans:
            # 1 <-> 3 channels: replicate grey, or ITU-R 601-2 luma like PIL's convert("L").
            if arr.shape[-1] == 1:
                arr = np.repeat(arr, 3, axis=-1)
            else:
                luma = arr[..., :3].astype(np.float32) @ np.array([0.299, 0.587, 0.114], dtype=np.float32)
                arr = np.clip(np.rint(luma), 0, 255).astype(np.uint8)[..., None]
        if arr.shape[1:3] == self.out_size:
            return arr
        t = torch.tensor(arr).permute(0, 3, 1, 2).float()  # a copy: the source array may be read-only
        t = torch.nn.functional.interpolate(
            t, size=self.out_size, mode="bilinear", align_corners=False, antialias=True
        )
        return t.permute(0, 2, 3, 1).round().clamp(0, 255).to(torch.uint8).numpy()


class PILDataset(BaseDataset):
    """Base images from a dataset whose items are ``(PIL image, label)`` (torchvision's datasets)."""

    def __init__(self, source, labels, class_names, out_size, in_chans, resize="center-crop", name="dataset"):
        super().__init__(labels, class_names, out_size, in_chans)
        self.source = source
        self.resize = resize
        self.source_name = name

    def name(self, index: int) -> str:
        return f"{self.source_name}[{index}]"

    def load_base(self, index: int) -> np.ndarray:
        try:
            im = self.source[index][0]
            arr = np.asarray(fit(to_mode(im, self.in_chans), self.out_size, self.resize), dtype=np.uint8)
        except Exception as e:
            raise ImageReadError(f"cannot decode: {type(e).__name__}: {e}") from None
        return arr[..., None] if arr.ndim == 2 else arr


class Subset(Dataset):
    """A view of some indices of a BaseDataset, with its own transform (train vs eval)."""

    def __init__(self, dataset: BaseDataset, indices: list[int], transform=None):
        self.dataset = dataset
        self.indices = list(indices)
        self.transform = transform

    def __len__(self) -> int:
        return len(self.indices)

    @property
    def labels(self) -> list[int]:
        return [self.dataset.labels[i] for i in self.indices]

    def names(self) -> list[str]:
        return [self.dataset.name(i) for i in self.indices]

    def base(self, position: int) -> np.ndarray:
        return self.dataset.base(self.indices[position])

    def __getitem__(self, key: Any):
        position, seed = key if isinstance(key, tuple) else (key, None)
        return self.dataset.sample(self.indices, position, seed, self.transform)
