"""Built-in datasets: sklearn's ``digits`` (bundled, no download) and torchvision's classic sets.

``digits`` is the embedded default: 1,797 real 8x8 greyscale handwritten digits, 10 classes, values
0..16 scaled to 0..255 (so [0, 1] after ``ToDtype``), upsampled bilinearly to the requested size.

The torchvision sets are read from ``data_root`` (default ``cache_root()/datasets``, i.e.
``~/.cache/convnets/datasets``) when the files are there, downloaded into it otherwise; offline, the
error says where to put the files. Validation comes from the dataset's official validation split when
it has one (flowers102), else it is carved from the official training split with the seeded
stratified split of ``split.py`` (keys are sample indices); the official test split is kept apart as
``test``.
"""

from __future__ import annotations

import functools
import os
import socket
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..base.runtime import cache_root
from .datasets import ArrayDataset, BaseDataset, PILDataset
from .folder import DatasetError
from .split import stratified_split


@dataclass(frozen=True)
class TorchvisionInfo:
    cls: str
    train: dict
    val: dict | None  # official validation split, if any
    test: dict | None
    in_memory: bool  # ``.data`` holds the whole uint8 image array


TORCHVISION: dict[str, TorchvisionInfo] = {
    "mnist": TorchvisionInfo("MNIST", {"train": True}, None, {"train": False}, True),
    "fashion_mnist": TorchvisionInfo("FashionMNIST", {"train": True}, None, {"train": False}, True),
    "kmnist": TorchvisionInfo("KMNIST", {"train": True}, None, {"train": False}, True),
    "cifar10": TorchvisionInfo("CIFAR10", {"train": True}, None, {"train": False}, True),
    "cifar100": TorchvisionInfo("CIFAR100", {"train": True}, None, {"train": False}, True),
    "svhn": TorchvisionInfo("SVHN", {"split": "train"}, None, {"split": "test"}, True),
    "stl10": TorchvisionInfo("STL10", {"split": "train"}, None, {"split": "test"}, True),
    "flowers102": TorchvisionInfo(
        "Flowers102", {"split": "train"}, {"split": "val"}, {"split": "test"}, False
    ),
    "oxford_pets": TorchvisionInfo("OxfordIIITPet", {"split": "trainval"}, None, {"split": "test"}, False),
    "food101": TorchvisionInfo("Food101", {"split": "train"}, None, {"split": "test"}, False),
}
BUILTIN_NAMES = ("digits", *TORCHVISION)
_ALIASES = {
    "fashion-mnist": "fashion_mnist",
    "fashionmnist": "fashion_mnist",
    "cifar-10": "cifar10",
    "cifar-100": "cifar100",
    "pets": "oxford_pets",
    "oxford-iiit-pet": "oxford_pets",
    "flowers": "flowers102",
}


def builtin_name(source: str) -> str | None:
    """The canonical built-in name for ``source``, or None if it isn't one."""
    key = str(source).lower()
    key = _ALIASES.get(key, key)
    return key if key in BUILTIN_NAMES else None


@dataclass
class Parts:
    """What a data source provides before loaders are built: base datasets and index lists."""

    class_names: list[str]
    train: tuple[BaseDataset, list[int]]
    val: tuple[BaseDataset, list[int]] | None
    test: tuple[BaseDataset, list[int]] | None
    split: dict
    in_memory: bool


def _carve(name, dataset: BaseDataset, val_split, seed, split, official_val=None):
    if split is not None:
        if split.get("dataset") != name:
            raise DatasetError(f"the saved split is for {split.get('dataset')!r}, not {name!r}")
        train_idx, val_idx = list(split["train"]), list(split["val"])
        val_source = split.get("val_source", "train")
    elif official_val is not None:
        train_idx, val_idx, val_source = list(range(len(dataset))), list(range(len(official_val))), "val"
    elif val_split:
        train_idx, val_idx = stratified_split(
            [str(i) for i in range(len(dataset))], dataset.labels, val_split, seed
        )
        val_source = "train"
    else:
        train_idx, val_idx, val_source = list(range(len(dataset))), [], "train"
    val_ds = official_val if val_source == "val" else dataset
    record = {
        "dataset": name,
        "seed": seed,
        "val_split": val_split,
        "val_source": val_source,
        "train": train_idx,
        "val": val_idx,
    }
    return (dataset, train_idx), ((val_ds, val_idx) if val_idx else None), record


@functools.lru_cache(maxsize=1)
def _digits_arrays() -> tuple[np.ndarray, list[int], list[str]]:
    from sklearn.datasets import load_digits  # start-up: sklearn on first use

    bunch = load_digits()
    images = np.rint(bunch.images * (255.0 / 16.0)).astype(np.uint8)  # 0..16 -> 0..255
    images.setflags(write=False)  # shared by every call
    return images, bunch.target.tolist(), [str(c) for c in bunch.target_names]


def load_digits_parts(image_size, in_chans, val_split=0.2, seed=0, split=None) -> Parts:
    images, labels, names = _digits_arrays()
    ds = ArrayDataset(images, list(labels), list(names), image_size, in_chans, source="digits")
    train, val, record = _carve("digits", ds, val_split, seed, split)
    return Parts(names, train, val, None, record, in_memory=True)


def _open_torchvision(name: str, info: TorchvisionInfo, root: Path, kwargs: dict):
    import torchvision.datasets as tvd  # start-up: torchvision on first use

    cls = getattr(tvd, info.cls)
    try:
        return cls(str(root), download=False, **kwargs)
    except (RuntimeError, OSError, FileNotFoundError):
        pass  # not on disk yet
    old_timeout = socket.getdefaulttimeout()
    socket.setdefaulttimeout(20)  # urllib has no timeout of its own: fail fast when offline
    try:
        root.mkdir(parents=True, exist_ok=True)
        return cls(str(root), download=True, **kwargs)
    except Exception as e:
        raise DatasetError(
            f"dataset {name!r} is not in {root} and could not be downloaded ({type(e).__name__}: {e}). "
            f"If this machine is offline, download it elsewhere with "
            f"torchvision.datasets.{info.cls}(root, download=True) and copy the files to {root}, "
            f"or pass data_root=<folder that holds them>."
        ) from None
    finally:
        socket.setdefaulttimeout(old_timeout)


def _wrap(name: str, info: TorchvisionInfo, tv, image_size, in_chans, resize) -> BaseDataset:
    labels = None
    for attr in ("targets", "labels", "_labels"):
        if getattr(tv, attr, None) is not None:
            labels = [int(v) for v in np.asarray(getattr(tv, attr)).tolist()]
            break
    if labels is None:
        raise DatasetError(f"cannot find the labels of torchvision dataset {info.cls}")
    classes = getattr(tv, "classes", None) or [str(i) for i in range(max(labels) + 1)]
    if info.in_memory:
        data = np.asarray(tv.data)
        if data.ndim == 4 and data.shape[1] in (1, 3) and data.shape[-1] not in (1, 3):
            data = data.transpose(0, 2, 3, 1)  # SVHN, STL10 store N x C x H x W
        return ArrayDataset(
            np.ascontiguousarray(data), labels, list(classes), image_size, in_chans, source=name
        )
    return PILDataset(tv, labels, list(classes), image_size, in_chans, resize=resize, name=name)


def load_torchvision_parts(
    name, image_size, in_chans, val_split=0.2, seed=0, split=None, data_root=None, resize="resize"
) -> Parts:
    info = TORCHVISION[name]
    root = Path(data_root) if data_root else cache_root() / "datasets"
    root = Path(os.path.expanduser(str(root)))
    train_ds = _wrap(
        name, info, _open_torchvision(name, info, root, info.train), image_size, in_chans, resize
    )
    official_val = None
    if info.val is not None:
        official_val = _wrap(
            name, info, _open_torchvision(name, info, root, info.val), image_size, in_chans, resize
        )
    train, val, record = _carve(name, train_ds, val_split, seed, split, official_val)
    test = None
    if info.test is not None:
        test_ds = _wrap(
            name, info, _open_torchvision(name, info, root, info.test), image_size, in_chans, resize
        )
        test = (test_ds, list(range(len(test_ds))))
    return Parts(train_ds.class_names, train, val, test, record, in_memory=info.in_memory)
