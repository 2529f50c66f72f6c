"""Finding the files of each split and decoding every image once, keeping what all checks need.

The folder rules are the data layer's (``convnets.data.folder.scan_folder``: class sub-folders,
hidden files skipped, image extensions only, a header check per file), so doctor sees exactly the
files that ``train`` would. Then one full decode per usable file (a thread pool: Pillow releases the
GIL while decoding) keeps, per image:

* the header facts (format, mode, size, bytes) for the tiny / odd-mode / aspect-ratio checks;
* a hash of the decoded RGB pixels (exact duplicates: same picture, whatever the file bytes);
* a 64x64 grey thumbnail (perceptual hash and near-duplicate verification);
* a 32x32 RGB thumbnail (the quick label-check model without ``--weights``).

A file whose pixels fail to decode (truncated, corrupt) is reported with the data layer's message.
"""

from __future__ import annotations

import os
import sys
import time
import warnings
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from ..base.errors import ConvnetsError
from ..base.runs import RunConfig, RunFolderError
from ..data.decode import ImageReadError, SkippedImageWarning, cpu_count, decode_rgb, is_image_file
from ..data.duplicates import pixel_hash
from ..data.folder import DatasetError, find_presplit, scan_folder

GREY_SIZE = 64  # grey thumbnail side for hashing and near-duplicate checks
RGB_SIZE = 32  # colour thumbnail side for the quick label model

SPLIT_ORDER = ("train", "val", "test")


class DoctorError(ConvnetsError, ValueError):
    """The input cannot be checked as given (missing folder, not a class-per-folder layout, ...)."""


@dataclass
class SplitSource:
    """One split to check: its name and its files (absolute paths) with their folder labels."""

    name: str
    root: Path
    files: list[str]
    labels: list[str]
    class_folders: list[str]
    skipped: list[tuple[str, str]] = field(default_factory=list)  # header check failures
    ignored: list[str] = field(default_factory=list)  # files with no image extension


@dataclass
class ImageInfo:
    """One file of the decode pass. ``error`` set: the file cannot be used (and the rest is empty)."""

    path: str
    split: str
    label: str
    bytes: int = 0
    format: str | None = None
    mode: str | None = None
    width: int = 0
    height: int = 0
    pixel_hash: str | None = None
    error: str | None = None


@dataclass
class ScanResult:
    """Every file of every split, in one order; ``usable`` indexes the thumbnails' rows."""

    sources: list[SplitSource]
    images: list[ImageInfo]
    usable: list[int]  # indices into images of decoded files, in thumbnail row order
    grey: np.ndarray  # (len(usable), GREY_SIZE, GREY_SIZE) uint8
    rgb: np.ndarray  # (len(usable), RGB_SIZE, RGB_SIZE, 3) uint8
    seconds: float = 0.0


def _other_files(folder: Path) -> list[str]:
    """Visible files under ``folder``'s class sub-folders that training ignores (not an image type)."""
    out = []
    for class_dir in sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith(".")):
        for dirpath, dirnames, filenames in os.walk(class_dir):
            dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
            out += [
                str(Path(dirpath) / f)
                for f in sorted(filenames)
                if not f.startswith(".") and not is_image_file(f)
            ]
    return out


def folder_source(name: str, folder: str | os.PathLike) -> SplitSource:
    """A class-per-folder directory as one split (the data layer's scan rules, errors collected)."""
    folder = Path(folder)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", SkippedImageWarning)  # collected in scan.skipped instead
            scan = scan_folder(folder, min_classes=0, allow_empty=True)
    except DatasetError as e:
        raise DoctorError(f"{name} folder: {e}") from None
    folders = [p.name for p in folder.iterdir() if p.is_dir() and not p.name.startswith(".")]
    return SplitSource(
        name,
        folder,
        scan.files,
        [scan.class_names[i] for i in scan.labels],
        sorted(folders),
        list(scan.skipped),
        _other_files(folder),
    )


def run_sources(run_dir: str | os.PathLike) -> list[SplitSource]:
    """The train and val files a run used, from its saved split (``RunConfig.split``)."""

    try:
        config = RunConfig.read(run_dir)
    except RunFolderError as e:
        raise DoctorError(str(e)) from None
    split = config.split or {}
    if not split.get("root") or "train" not in split:
        source = config.data.source if config.data else "?"
        raise DoctorError(
            f"{run_dir}: the run's data ({source}) is not a folder split (built-in datasets have no files "
            "to check); run doctor on a folder"
        )
    root = Path(split["root"])
    presplit = split.get("layout") == "presplit"
    sources = []
    for role in SPLIT_ORDER:
        rel = list(split.get(role) or [])
        if not rel:
            continue
        files, labels, missing = [], [], []
        for r in rel:
            parts = Path(r).parts
            path = root / r
            if not path.is_file():
                missing.append((str(path), "missing (listed in the run's saved split)"))
                continue
            files.append(str(path))
            labels.append(parts[1] if presplit else parts[0])
        # The role's own folder (train/ of a pre-split root) so that labels of missing files resolve.
        role_root = root / Path(rel[0]).parts[0] if presplit else root
        sources.append(SplitSource(role, role_root, files, labels, sorted(set(labels)), missing))
    return sources


def resolve_sources(
    data: str | os.PathLike, val: str | os.PathLike | None = None, test: str | os.PathLike | None = None
) -> list[SplitSource]:
    """``data`` as a run folder, an already split root (train/ + val/ or test/), or a train folder
    with optional ``val`` and ``test`` folders."""
    from ..base.runs import is_run_dir

    data = Path(data)
    if not data.exists():
        raise DoctorError(f"DATA: {data} does not exist")
    if is_run_dir(data):
        if val is not None or test is not None:
            raise DoctorError("--val/--test: a run folder brings its own split; give a data folder instead")
        return run_sources(data)
    folders: dict[str, Path | None] = {"train": data, "val": None, "test": None}
    presplit = find_presplit(data)
    if presplit:
        folders = dict(presplit)
    if val is not None:
        folders["val"] = Path(val)
    if test is not None:
        folders["test"] = Path(test)
    return [folder_source(role, f) for role in SPLIT_ORDER if (f := folders[role]) is not None]


def inspect_image(path: str) -> tuple[dict, np.ndarray, np.ndarray]:
    """One full decode: header facts, decoded-pixel hash and the two thumbnails."""
    facts, rgb = decode_rgb(path)
    facts["pixel_hash"] = pixel_hash(rgb)
    return (facts, *thumbnails(rgb))


def thumbnails(rgb: Image.Image) -> tuple[np.ndarray, np.ndarray]:
    """(GREY_SIZE² grey, RGB_SIZE² colour) uint8 thumbnails of an RGB image, squashed to squares:
    one resize to the grey size (Pillow reduces big images by box filter first), the rest from it."""
    small = rgb.resize((GREY_SIZE, GREY_SIZE), Image.BILINEAR, reducing_gap=2.0)
    grey = np.asarray(small.convert("L"), dtype=np.uint8)
    return grey, np.asarray(small.resize((RGB_SIZE, RGB_SIZE), Image.BOX), dtype=np.uint8)


def _progress(total: int, desc: str):
    """A tqdm bar on a terminal; nothing otherwise (logs stay readable)."""
    if not sys.stderr.isatty():
        return None
    from tqdm.auto import tqdm  # start-up: tqdm on first use

    return tqdm(total=total, desc=desc, unit="img", leave=False)


def decode_all(sources: list[SplitSource], workers: int | None = None, progress: bool = True) -> ScanResult:
    """The one decode pass over every file of every split."""

    start = time.perf_counter()
    images: list[ImageInfo] = []
    for s in sources:
        images += [ImageInfo(path, s.name, label) for path, label in zip(s.files, s.labels)]
        images += [ImageInfo(path, s.name, _label_of(s, path), error=why) for path, why in s.skipped]
    todo = [i for i, info in enumerate(images) if info.error is None]

    def work(i: int):
        try:
            return inspect_image(images[i].path)
        except ImageReadError as e:
            return str(e)
        except OSError as e:
            return f"cannot read: {e.strerror or e}"

    workers = workers or min(8, 2 * cpu_count())
    bar = _progress(len(todo), "doctor: decoding") if progress else None
    results: list = [None] * len(todo)
    with ThreadPoolExecutor(max_workers=workers) as pool:
        for k, result in enumerate(pool.map(work, todo, chunksize=16)):
            results[k] = result
            if bar is not None:
                bar.update(1)
    if bar is not None:
        bar.close()

    usable, greys, colours = [], [], []
    for i, result in zip(todo, results):
        info = images[i]
        if isinstance(result, str):
            info.error = result
            continue
        facts, grey, colour = result
        for key, value in facts.items():
            setattr(info, key, value)
        usable.append(i)
        greys.append(grey)
        colours.append(colour)
    grey = np.stack(greys) if greys else np.zeros((0, GREY_SIZE, GREY_SIZE), np.uint8)
    rgb = np.stack(colours) if colours else np.zeros((0, RGB_SIZE, RGB_SIZE, 3), np.uint8)
    return ScanResult(sources, images, usable, grey, rgb, time.perf_counter() - start)


def _label_of(source: SplitSource, path: str) -> str:
    """The class folder of a file under ``source.root`` (for files the header check refused)."""
    try:
        return Path(path).relative_to(source.root).parts[0]
    except (ValueError, IndexError):
        return ""
