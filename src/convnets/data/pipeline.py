"""The data entry points: ``load_data``, ``image_dataset_from_directory`` and ``load_images``.

Evaluation transform (validation, test, prediction), by ``resize``:

* ``"center-crop"`` (folders, torchvision's photo datasets, ``load_images``): scale the shorter side to
  ``size / 0.875`` (256 for 224), centre-crop ``size`` -- torchvision's ImageNet evaluation;
* ``"resize"`` (``squash``; in-memory built-ins such as digits, MNIST, CIFAR): resize straight to ``size``;
* ``"letterbox"``: fit the long side to ``size``, pad the rest with the ImageNet mean colour
  (``decode.py`` says why), no crop.

Training augmentation follows the mode (``augment.py``): ``rrc`` in letterbox mode is a random
scale-and-shift of the whole picture inside the canvas, never a crop of it.

Normalisation (``normalize``): ``"imagenet"`` (mean 0.485, 0.456, 0.406; std 0.229, 0.224, 0.225),
``"inception"`` ([-1, 1]: mean = std = 0.5), ``"none"`` ([0, 1]), ``"dataset"`` (per-channel mean/std
of up to 256 training images, base size, no augmentation), ``"mean"`` (the same per-channel mean
subtracted, std 1: the CIFAR ResNet paper's mean subtraction, per channel rather than per pixel so the
normalisation stays three numbers every consumer of the run already understands), ``"auto"`` (the
``mean``/``std`` passed -- normally the model's pretrained config -- else ``"dataset"``). With one input
channel the RGB constants are averaged.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader

from ..base.choices import NORMALIZE_MODES
from ..models.base import IMAGENET_MEAN, IMAGENET_STD, INCEPTION_MEAN, INCEPTION_STD
from .augment import build_eval_transform, build_train_transform, needs_pca, parse_ops
from .builtin import BUILTIN_NAMES, Parts, builtin_name, load_digits_parts, load_torchvision_parts
from .datasets import FileDataset, Subset, cpu_count
from .decode import ImageReadError, SkippedImageWarning, base_size, resize_mode
from .folder import DatasetError, find_presplit, scan_folder
from .images import expand_paths, read_images, to_input
from .loaders import ImageLoader, collate, default_num_workers
from .pca import cached_pca_stats, channel_stats
from .shards import is_shard_source, shard_splits
from .split import stratified_split

STATS_SAMPLE = 256  # training images used for "dataset" normalisation and PCA colour statistics


@dataclass
class DataSplits:
    """What ``load_data`` returns. ``split`` is JSON-able; pass it back to reproduce the subsets."""

    train: ImageLoader
    val: ImageLoader | None
    class_names: list[str]
    mean: list[float]
    std: list[float]
    split: dict
    test: ImageLoader | None = None
    resize: str = "center-crop"
    skipped: list = field(default_factory=list)


def _size2(image_size: int | Sequence[int]) -> tuple[int, int]:
    if isinstance(image_size, int):
        return (image_size, image_size)
    size = tuple(int(v) for v in image_size)
    if len(size) != 2 or min(size) < 1:
        raise ValueError(f"image_size must be an int or (height, width), got {image_size!r}")
    return size  # type: ignore[return-value]


def _fit_channels(values: Sequence[float], in_chans: int) -> list[float]:
    values = [float(v) for v in values]
    if len(values) == in_chans:
        return values
    if in_chans == 1:
        return [sum(values) / len(values)]
    if len(values) == 1:
        return values * in_chans
    raise ValueError(f"{len(values)} normalisation values for {in_chans} channels")


def _sample_bases(subset: Subset, limit: int = STATS_SAMPLE) -> Iterator[np.ndarray]:
    """Up to ``limit`` evenly spaced base images of a subset (unreadable ones are passed over)."""
    n = len(subset)
    positions = np.unique(np.linspace(0, n - 1, num=min(n, limit)).round().astype(int)) if n else []
    for p in positions:
        try:
            yield subset.base(int(p))
        except ImageReadError:
            continue


def resolve_normalization(normalize, mean, std, in_chans, train: Subset | None = None):
    """(mean, std) lists for ``normalize`` (see the module docstring)."""
    if normalize not in NORMALIZE_MODES:
        raise ValueError(f"normalize must be one of {NORMALIZE_MODES}, got {normalize!r}")
    if normalize == "auto":
        if (mean is None) != (std is None):
            raise ValueError("pass both mean and std, or neither")
        normalize = "dataset" if mean is None else "given"
    if normalize == "given":
        pass
    elif normalize == "imagenet":
        mean, std = IMAGENET_MEAN, IMAGENET_STD
    elif normalize == "inception":
        mean, std = INCEPTION_MEAN, INCEPTION_STD
    elif normalize == "none":
        mean, std = (0.0,), (1.0,)
    else:
        if train is None:
            raise ValueError(f"normalize={normalize!r} needs a training set")
        mean, std = channel_stats(_sample_bases(train))
        if normalize == "mean":
            std = (1.0,) * len(mean)
    return _fit_channels(mean, in_chans), _fit_channels(std, in_chans)


def _folder_parts(
    root, out_size, in_chans, val_split, seed, split, resize, cache, cache_dir, max_pixels, on_error
) -> tuple[Parts, list]:
    root = Path(root)
    if split is not None:
        return _folder_parts_from_split(root, split, out_size, in_chans, resize, cache, cache_dir, max_pixels)
    presplit = find_presplit(root)
    record: dict[str, Any] = {"root": str(root.resolve()), "seed": seed, "val_split": val_split}
    if presplit:
        train_scan = scan_folder(presplit["train"], max_pixels=max_pixels, on_error=on_error)
        names = train_scan.class_names
        prefix = presplit["train"].name
        rel = [f"{prefix}/{p}" for p in train_scan.rel_paths]
        labels = list(train_scan.labels)
        skipped = train_scan.skipped
        roles = {"train": list(range(len(rel)))}
        for role in ("val", "test"):
            if presplit[role] is not None:
                s = scan_folder(
                    presplit[role], names, max_pixels=max_pixels, on_error=on_error, min_classes=0
                )
                start = len(rel)
                rel += [f"{presplit[role].name}/{p}" for p in s.rel_paths]
                labels += s.labels
                skipped += s.skipped
                roles[role] = list(range(start, len(rel)))
        if "val" not in roles and val_split:  # train/ + test/ only: carve validation out of train/
            t, v = stratified_split(
                [rel[i] for i in roles["train"]], [labels[i] for i in roles["train"]], val_split, seed
            )
            roles["val"] = [roles["train"][i] for i in v]
            roles["train"] = [roles["train"][i] for i in t]
        record["layout"] = "presplit"
    else:
        scan = scan_folder(root, max_pixels=max_pixels, on_error=on_error)
        names, rel, labels, skipped = scan.class_names, scan.rel_paths, scan.labels, scan.skipped
        if val_split:
            t, v = stratified_split(rel, labels, val_split, seed)
            roles = {"train": t, "val": v}
        else:
            roles = {"train": list(range(len(rel)))}
        record["layout"] = "classes"
    record["class_names"] = names
    for role, idx in roles.items():
        record[role] = [rel[i] for i in idx]
    ds = FileDataset(
        [str(root / p) for p in rel],
        labels,
        names,
        out_size,
        in_chans,
        resize,
        max_pixels=max_pixels,
        cache=cache,
        cache_dir=cache_dir,
    )
    part = {role: (ds, roles[role]) if roles.get(role) else None for role in ("train", "val", "test")}
    return Parts(names, part["train"], part["val"], part["test"], record, in_memory=False), skipped


def _folder_parts_from_split(root, split, out_size, in_chans, resize, cache, cache_dir, max_pixels):
    """Rebuild exactly the subsets recorded in ``split`` (e.g. to evaluate a run's validation set)."""
    if not root.is_dir():
        raise DatasetError(f"data folder {root} does not exist")
    try:
        names = list(split["class_names"])
        layout = split.get("layout", "classes")
        roles = {role: list(split[role]) for role in ("train", "val", "test") if split.get(role)}
    except (KeyError, TypeError):
        raise DatasetError(
            "the saved split is not a folder split (needs 'class_names', 'train', 'val')"
        ) from None
    index = {n: i for i, n in enumerate(names)}
    files, labels, skipped, idx = [], [], [], {}
    for role, rels in roles.items():
        idx[role] = []
        for rel in rels:
            parts = Path(rel).parts
            cls = parts[1] if layout == "presplit" else parts[0]
            path = root / rel
            if cls not in index:
                raise DatasetError(
                    f"saved split names {rel!r}, whose class {cls!r} is not in its class_names"
                )
            if not path.is_file():
                skipped.append((str(path), "missing (listed in the saved split)"))
                warnings.warn(
                    f"skipping {path}: listed in the saved split but missing",
                    SkippedImageWarning,
                    stacklevel=3,
                )
                continue
            idx[role].append(len(files))
            files.append(str(path))
            labels.append(index[cls])
    if not files:
        raise DatasetError(f"none of the files of the saved split exist under {root}")
    ds = FileDataset(
        files,
        labels,
        names,
        out_size,
        in_chans,
        resize,
        max_pixels=max_pixels,
        cache=cache,
        cache_dir=cache_dir,
    )
    part = {role: (ds, idx[role]) if idx.get(role) else None for role in ("train", "val", "test")}
    return Parts(names, part["train"], part["val"], part["test"], dict(split), in_memory=False), skipped


def load_data(
    source: str | os.PathLike,
    *,
    image_size: int | Sequence[int],
    in_chans: int = 3,
    val_split: float | None = 0.2,
    seed: int = 0,
    batch_size: int = 32,
    augment: Any = "light",
    normalize: str = "auto",
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    num_workers: int | None = None,
    data_root: str | os.PathLike | None = None,
    cache: str | None = None,
    split: dict | None = None,
    drop_last: bool = False,
    resize: str | None = None,
    max_pixels: int | None = None,
    on_error: str = "skip",
    cache_dir: str | os.PathLike | None = None,
) -> DataSplits:
    """Train / validation (/ test) loaders for a folder of class sub-folders or a built-in dataset name.

    ``augment`` is a preset or op spec (``augment.py``) applied to training batches only.
    ``split`` (from a previous ``DataSplits.split``) reproduces exactly those subsets.
    """
    size = _size2(image_size)
    if in_chans not in (1, 3):
        raise ValueError(f"in_chans must be 1 or 3, got {in_chans}")
    if resize is not None:
        resize = resize_mode(resize)  # crop / squash / letterbox, or the stored names
    if val_split is not None and not 0 <= val_split < 1:
        raise ValueError(f"val_split must be in [0, 1), got {val_split}")
    parse_ops(augment)  # fail on a bad spec before any scanning
    path = Path(os.path.expanduser(str(source)))
    name = None if path.exists() else builtin_name(str(source))
    skipped: list = []
    if name == "digits":
        resize = "resize"
        parts = load_digits_parts(size, in_chans, val_split or 0, seed, split)
    elif name is not None:
        resize = resize or (
            "resize"
            if name in ("mnist", "fashion_mnist", "kmnist", "cifar10", "cifar100", "svhn", "stl10")
            else "center-crop"
        )
        parts = load_torchvision_parts(
            name,
            base_size(size, resize) if resize == "center-crop" else size,
            in_chans,
            val_split or 0,
            seed,
            split,
            data_root,
            resize,
        )
    elif is_shard_source(path):  # WebDataset shards written by `convnets shard`
        if resize not in (None, "center-crop"):  # shards may hold centre-crop base pixels (--resize)
            raise ValueError(f"{path}: shards are read with the crop resize mode only, not {resize!r}")
        return _shard_data(path, size, in_chans, batch_size, augment, normalize, mean, std, seed, num_workers)
    elif path.exists():
        resize = resize or "center-crop"
        parts, skipped = _folder_parts(
            path,
            base_size(size, resize),
            in_chans,
            val_split,
            seed,
            split,
            resize,
            cache,
            cache_dir,
            max_pixels,
            on_error,
        )
    else:
        raise DatasetError(
            f"{source!r} is neither an existing folder nor a built-in dataset ({', '.join(BUILTIN_NAMES)})"
        )
    return _build(
        parts,
        skipped,
        size,
        in_chans,
        resize,
        batch_size,
        augment,
        normalize,
        mean,
        std,
        seed,
        num_workers,
        drop_last,
    )


def _build(
    parts: Parts,
    skipped,
    size,
    in_chans,
    resize,
    batch_size,
    augment,
    normalize,
    mean,
    std,
    seed,
    num_workers,
    drop_last,
) -> DataSplits:
    base_ds, train_idx = parts.train
    stats_view = Subset(base_ds, train_idx)
    if getattr(base_ds, "cache", None) == "memory":
        # Decode once now: statistics below and every epoch then read from memory.
        for name, reason in base_ds.fill_memory_cache():
            skipped.append((name, reason))
            warnings.warn(f"skipping {name}: {reason}", SkippedImageWarning, stacklevel=3)
    mean, std = resolve_normalization(normalize, mean, std, in_chans, stats_view)
    pca = None
    if needs_pca(augment):
        key = ["pca-v1", str(in_chans), str(size), *(base_ds.fingerprint()[i] for i in train_idx)]
        pca = cached_pca_stats(key, lambda: _sample_bases(stats_view))
    train_tf = build_train_transform(augment, size, in_chans, mean, std, pca, resize=resize)
    eval_tf = build_eval_transform(size, mean, std)
    if num_workers is None and parts.in_memory:
        num_workers = 0

    def loader(pair, transform, shuffle, drop):
        if pair is None:
            return None
        ds, idx = pair
        return ImageLoader(
            Subset(ds, idx, transform),
            batch_size=batch_size,
            shuffle=shuffle,
            seed=seed,
            num_workers=num_workers,
            drop_last=drop,
            skipped=skipped,
        )

    train = loader(parts.train, train_tf, True, drop_last)
    val = loader(parts.val, eval_tf, False, False)
    test = loader(parts.test, eval_tf, False, False)
    for ld in (train, val, test):
        if ld is not None:
            ld.split = parts.split
            ld.test = test
            ld.pca = pca
    return DataSplits(train, val, parts.class_names, mean, std, parts.split, test, resize, skipped)


def _shard_data(path, size, in_chans, batch_size, augment, normalize, mean, std, seed, num_workers):
    """Streams over shards (``data/shards.py``), with the folder pipeline's normalisation and transforms."""

    stats: dict[str, Any] = {}

    def train_transform(bases) -> Any:
        m, s, mode = mean, std, normalize
        if mode in ("dataset", "mean") or (mode == "auto" and mean is None):
            m, s = channel_stats(bases(STATS_SAMPLE))
            s, mode = ((1.0,) * len(m) if mode == "mean" else s), "auto"
        stats["mean"], stats["std"] = resolve_normalization(mode, m, s, in_chans)
        pca = None
        if needs_pca(augment):
            key = ["pca-shards-v1", str(in_chans), str(size), str(path.resolve())]
            pca = cached_pca_stats(key, lambda: bases(STATS_SAMPLE))
        return build_train_transform(augment, size, in_chans, stats["mean"], stats["std"], pca)

    train, val, index = shard_splits(
        path,
        image_size=size,
        in_chans=in_chans,
        batch_size=batch_size,
        seed=seed,
        train_transform_for=train_transform,
        eval_transform_for=lambda: build_eval_transform(size, stats["mean"], stats["std"]),
    )
    workers = default_num_workers() if num_workers is None else num_workers
    skipped: list = []
    split = {"shards": str(path.resolve()), "train": sum(c for _, c in train.shards)}

    def loader(stream):
        if stream is None:
            return None
        ld = DataLoader(stream, batch_size=batch_size, num_workers=workers, collate_fn=collate)
        ld.skipped, ld.split = skipped, split
        return ld

    mean, std = stats["mean"], stats["std"]
    train_loader, val_loader = loader(train), loader(val)
    names = index.class_names
    return DataSplits(train_loader, val_loader, names, mean, std, split, None, "center-crop", skipped)


def image_dataset_from_directory(
    directory: str | os.PathLike,
    validation_split: float | None = 0.2,
    seed: int = 0,
    image_size: int | Sequence[int] = (224, 224),
    batch_size: int = 32,
    shuffle: bool = True,
    color_mode: str = "rgb",
    augment: Any = None,
    normalize: str = "none",
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    num_workers: int | None = None,
    cache: str | None = None,
    on_error: str = "skip",
    resize: str = "center-crop",
    max_pixels: int | None = None,
    cache_dir: str | os.PathLike | None = None,
):
    """Keras-style: ``(train, val)`` loaders from ``directory/<class>/<images>`` (one with no val subset).

    Defaults differ from ``load_data`` where Keras users expect them to: no augmentation and
    ``normalize="none"`` (pixels in [0, 1]). A folder with ``train/`` and ``val/`` (or ``validation/``)
    is used as split; its ``test/`` subset is ``train.test``. ``shuffle`` applies to the training loader.
    """
    if color_mode not in ("rgb", "grayscale"):
        raise ValueError(f"color_mode must be 'rgb' or 'grayscale', got {color_mode!r}")
    path = Path(directory)
    if not path.exists():
        raise DatasetError(f"data folder {path} does not exist")
    splits = load_data(
        path,
        image_size=image_size,
        in_chans=3 if color_mode == "rgb" else 1,
        val_split=validation_split,
        seed=seed,
        batch_size=batch_size,
        augment=augment,
        normalize=normalize,
        mean=mean,
        std=std,
        num_workers=num_workers,
        cache=cache,
        resize=resize,
        max_pixels=max_pixels,
        on_error=on_error,
        cache_dir=cache_dir,
    )
    splits.train.sampler.shuffle = shuffle
    return (splits.train, splits.val) if splits.val is not None else splits.train


# -- prediction --------------------------------------------------------------------------------


class ImageBatch:
    """One batch from ``load_images``: unpacks as ``(images, paths, errors)``; ``labels`` when known."""

    def __init__(
        self,
        images: torch.Tensor,
        paths: list[str],
        errors: list[tuple[str, str]],
        labels: torch.Tensor | None = None,
    ):
        self.images, self.paths, self.errors, self.labels = images, paths, errors, labels

    def __iter__(self):
        return iter((self.images, self.paths, self.errors))


def load_images(
    paths: str | os.PathLike | Iterable[str | os.PathLike],
    class_names: Sequence[str] | None = None,
    *,
    image_size: int | Sequence[int],
    in_chans: int = 3,
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
    resize: str = "center-crop",
    batch_size: int = 32,
    max_pixels: int | None = None,
) -> Iterator[ImageBatch]:
    """Batches of arbitrary files / folders for prediction, with the evaluation transform.

    An unreadable or missing file becomes an entry ``(path, reason)`` in the batch's ``errors``
    instead of an exception. With ``class_names``, ``batch.labels`` holds the index of each file's
    parent-folder name in ``class_names`` (-1 when it is not a class), for evaluation.
    """
    size = _size2(image_size)
    mean, std = _fit_channels(mean, in_chans), _fit_channels(std, in_chans)
    files = expand_paths(paths)
    index = {n: i for i, n in enumerate(class_names or [])}
    for start in range(0, len(files), batch_size):
        chunk = files[start : start + batch_size]
        arrays = read_images(chunk, size, in_chans, resize, max_pixels=max_pixels, workers=cpu_count())
        ok = [p for p, a in zip(chunk, arrays) if not isinstance(a, ImageReadError)]
        errors = [(p, str(a)) for p, a in zip(chunk, arrays) if isinstance(a, ImageReadError)]
        good = [a for a in arrays if not isinstance(a, ImageReadError)]
        images = torch.from_numpy(to_input(good, mean, std)) if good else torch.empty(0, in_chans, *size)
        labels = None
        if class_names is not None:
            labels = torch.tensor([index.get(Path(p).parent.name, -1) for p in ok], dtype=torch.int64)
        yield ImageBatch(images, ok, errors, labels)
