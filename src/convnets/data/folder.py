"""Finding the images of a class-per-folder dataset, and refusing bad folders early.

Layout: ``ROOT/<class name>/**/<image>`` (sub-folders of a class folder are searched too; hidden
files and folders are ignored; files whose extension is not an image format are ignored). A root
holding ``train/`` plus ``val/``, ``validation/`` or ``test/`` is taken as already split.

What is checked when (cost matters for big folders):

* scan time, per file: the header only (``PIL.Image.open``: format and size, no pixel decode,
  ~0.1 ms per file, in a thread pool): empty files, non-images, unsupported formats and images over
  the pixel limit (decompression bombs) are skipped and reported by name, or raise with
  ``on_error="raise"``. Folder-level problems raise ``DatasetError`` before any training.
* load time: truncated or corrupt pixel data is only found by decoding; the loader replaces the sample
  and reports the file (see ``datasets.py``).
"""

from __future__ import annotations

import os
import warnings
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from ..base.errors import ConvnetsError
from .decode import ImageReadError, SkippedImageWarning, cpu_count, is_image_file, probe

PRESPLIT_NAMES = {"train": ("train",), "val": ("val", "validation"), "test": ("test",)}


class DatasetError(ConvnetsError, ValueError):
    """The data cannot be used as given (bad folder layout, no images, unknown dataset...)."""


@dataclass
class FolderScan:
    root: Path
    class_names: list[str]
    rel_paths: list[str]  # POSIX paths relative to root: "alpaca/img.jpg"
    labels: list[int]
    skipped: list[tuple[str, str]] = field(default_factory=list)

    @property
    def files(self) -> list[str]:
        return [str(self.root / p) for p in self.rel_paths]


def _visible(name: str) -> bool:
    return not name.startswith(".")


def find_presplit(root: str | os.PathLike) -> dict[str, Path] | None:
    """``{"train": path, "val": path|None, "test": path|None}`` if ``root`` is already split."""
    root = Path(root)
    if not root.is_dir():
        return None
    subdirs = {p.name.lower(): p for p in root.iterdir() if p.is_dir() and _visible(p.name)}
    found = {
        role: next((subdirs[n] for n in names if n in subdirs), None)
        for role, names in PRESPLIT_NAMES.items()
    }
    if found["train"] is None or (found["val"] is None and found["test"] is None):
        return None
    return found


def _class_dirs(root: Path) -> list[Path]:
    return sorted((p for p in root.iterdir() if p.is_dir() and _visible(p.name)), key=lambda p: p.name)


def _image_files(folder: Path) -> list[Path]:
    files = []
    for dirpath, dirnames, filenames in os.walk(folder, followlinks=True):
        dirnames[:] = sorted(d for d in dirnames if _visible(d))
        files += [Path(dirpath) / f for f in sorted(filenames) if _visible(f) and is_image_file(f)]
    return files


def scan_folder(
    root: str | os.PathLike,
    class_names: list[str] | None = None,
    *,
    max_pixels: int | None = None,
    on_error: str = "skip",
    min_classes: int = 2,
    allow_empty: bool = False,
) -> FolderScan:
    """List and header-check the images of a class-per-folder dataset.

    With ``class_names`` (a validation folder, or a saved split), those define the label numbers;
    a sub-folder that is not one of them is an error, and a class may have no images.
    ``allow_empty``: return a scan with no usable image (its ``skipped`` says why) instead of raising;
    for ``convnets doctor``, which reports the unreadable files.
    """
    if on_error not in ("skip", "raise"):
        raise ValueError(f"on_error must be 'skip' or 'raise', got {on_error!r}")
    root = Path(root)
    if not root.exists():
        raise DatasetError(f"data folder {root} does not exist")
    if not root.is_dir():
        raise DatasetError(f"{root} is not a folder (expected {root}/<class name>/<images>)")
    dirs = _class_dirs(root)
    if not dirs:
        loose = [p.name for p in root.iterdir() if p.is_file() and is_image_file(p)]
        if loose:
            raise DatasetError(
                f"{root} holds {len(loose)} image files but no class sub-folders; put each class's images "
                f"in its own folder: {root}/<class name>/<images>"
            )
        raise DatasetError(f"{root} has no class sub-folders (expected {root}/<class name>/<images>)")
    names = [d.name for d in dirs]
    if class_names is None:
        class_names = names
    else:
        unknown = sorted(set(names) - set(class_names))
        if unknown:
            raise DatasetError(f"{root} has class folders not in the training classes: {', '.join(unknown)}")
    index = {name: i for i, name in enumerate(class_names)}

    candidates: list[tuple[Path, int]] = []
    for d in dirs:
        candidates += [(f, index[d.name]) for f in _image_files(d)]

    def check(path: Path) -> str | None:
        try:
            probe(path, max_pixels)
            return None
        except ImageReadError as e:
            return str(e)

    paths = [p for p, _ in candidates]
    if len(paths) > 64:  # header reads are I/O-bound: overlap them (network drives, cold caches)
        with ThreadPoolExecutor(max_workers=min(16, 4 * cpu_count())) as pool:
            problems = list(pool.map(check, paths))
    else:
        problems = [check(p) for p in paths]

    scan = FolderScan(root, list(class_names), [], [])
    for (path, label), problem in zip(candidates, problems):
        if problem is None:
            scan.rel_paths.append(path.relative_to(root).as_posix())
            scan.labels.append(label)
            continue
        if on_error == "raise":
            raise DatasetError(f"{path}: {problem}")
        scan.skipped.append((str(path), problem))
        warnings.warn(f"skipping {path}: {problem}", SkippedImageWarning, stacklevel=2)

    if min_classes:
        counts = {name: 0 for name in names}
        for label in scan.labels:
            counts[class_names[label]] = counts.get(class_names[label], 0) + 1
        empty = [n for n in names if counts[n] == 0]
        if empty:
            raise DatasetError(
                "class folder(s) with no usable images: " + ", ".join(str(root / n) for n in empty)
            )
        if len(names) < min_classes:
            raise DatasetError(
                f"{root} has only {len(names)} class ({', '.join(names)}); a classifier needs at least "
                f"{min_classes} class sub-folders"
            )
    if not scan.rel_paths and not allow_empty:
        raise DatasetError(f"no usable images in {root}")
    return scan
