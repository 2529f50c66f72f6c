"""Exact copies: the same decoded pixels (a hash of the RGB array after EXIF orientation), so a file
saved twice under another name, or the same picture as PNG and as a lossless re-save, match even when
the bytes differ.

``train`` runs the cheap check here before it trains (:func:`warn_split_duplicates`: validation files
that repeat training pictures inflate the validation score); ``convnets doctor`` groups every exact
copy with :func:`exact_groups` and adds near duplicates (``doctor/duplicates.py``).
"""

from __future__ import annotations

import hashlib
import os
import warnings
from collections import defaultdict
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image

from .decode import cpu_count, decode_rgb


def pixel_hash(rgb: Image.Image) -> str:
    """Hash of the decoded pixels and their shape: equal for the same picture in any file format."""
    pixels = np.asarray(rgb)
    digest = hashlib.blake2b(pixels.tobytes(), digest_size=16)
    digest.update(np.asarray(pixels.shape, np.int64).tobytes())
    return digest.hexdigest()


def inspect_pixels_hash(path: str) -> str:
    return pixel_hash(decode_rgb(path)[1])


# -- exact groups ---------------------------------------------------------------------------------------


def exact_groups(keys: Sequence[str | None]) -> list[list[int]]:
    """Indices sharing a key (a pixel hash), groups of two or more, in first-seen order."""
    by_key: dict[str, list[int]] = defaultdict(list)
    for i, key in enumerate(keys):
        if key is not None:
            by_key[key].append(i)
    return [members for members in by_key.values() if len(members) > 1]


# -- the train pre-check ---------------------------------------------------------------------------

QUICK_DECODE_PIXELS = 1_000_000  # the pre-check decodes only images up to this many pixels


def _quick_facts(path: str) -> tuple[str, tuple[int, int]] | None:
    """(hash of the file's bytes, (width, height) from the header); None if unreadable (the loader
    reports those)."""
    try:
        with open(path, "rb") as f:
            digest = hashlib.blake2b(f.read(), digest_size=16).hexdigest()
        with Image.open(path) as im:
            return digest, im.size
    except Exception:  # unreadable files are the loader's to report, not this check's
        return None


def _pixels_key(path: str, draft: bool) -> str | None:
    """Hash of the decoded pixels; with ``draft`` a JPEG is decoded at 1/8 scale (libjpeg's DCT
    scaling, ~10x cheaper): a screening key, confirmed at full scale when two files share it."""
    try:
        if not draft:
            return inspect_pixels_hash(path)
        with Image.open(path) as im:
            if im.format == "JPEG":
                im.draft("RGB", (max(1, im.size[0] // 8), max(1, im.size[1] // 8)))
            im.load()
            return "d" + pixel_hash(im)
    except Exception:  # unreadable files are the loader's to report, not this check's
        return None


def exact_duplicates_across(
    train_files: Sequence[str | os.PathLike],
    val_files: Sequence[str | os.PathLike],
    workers: int | None = None,
) -> list[tuple[str, str]]:
    """(val file, train file) pairs showing the same picture: the cheap check ``train`` runs first.

    Identical bytes match at once. Otherwise two files can only hold the same pixels if their
    headers give the same size, so only files whose size occurs in both sets are decoded (up to
    ``QUICK_DECODE_PIXELS`` each; bigger ones match by bytes only): JPEGs first at 1/8 scale, and the
    files whose small decode matches one on the other side again in full. A PNG holding exactly a
    JPEG's decoded pixels is not caught here (``doctor`` catches it).
    """
    train_files, val_files = [str(p) for p in train_files], [str(p) for p in val_files]
    files = train_files + val_files
    n_train = len(train_files)
    with ThreadPoolExecutor(max_workers=workers or min(8, 2 * cpu_count())) as pool:
        facts = list(pool.map(_quick_facts, files, chunksize=32))
        sizes = [{f[1] for f in part if f is not None} for part in (facts[:n_train], facts[n_train:])]
        shared = sizes[0] & sizes[1]
        decode = [
            i
            for i, f in enumerate(facts)
            if f is not None and f[1] in shared and f[1][0] * f[1][1] <= QUICK_DECODE_PIXELS
        ]
        drafts = dict(zip(decode, pool.map(lambda i: _pixels_key(files[i], True), decode, chunksize=16)))
        seen = [{drafts[i] for i in decode if (i < n_train) == side and drafts[i]} for side in (True, False)]
        confirm = [i for i in decode if drafts[i] in seen[0] and drafts[i] in seen[1]]
        pixel_keys = dict(zip(confirm, pool.map(lambda i: _pixels_key(files[i], False), confirm)))

    first_train: dict[str, str] = {}
    for i, path in enumerate(train_files):
        if facts[i] is not None:
            first_train.setdefault("b:" + facts[i][0], path)
            if pixel_keys.get(i):
                first_train.setdefault("p:" + pixel_keys[i], path)
    pairs = []
    for j, path in enumerate(val_files, start=n_train):
        if facts[j] is None:
            continue
        match = first_train.get("b:" + facts[j][0])
        if match is None and pixel_keys.get(j):
            match = first_train.get("p:" + pixel_keys[j])
        if match is not None:
            pairs.append((path, match))
    return pairs


class DataLeakageWarning(UserWarning):
    """Validation images that are copies of training images: the validation score is inflated."""


def warn_split_duplicates(split: dict | None, max_files: int = 100_000) -> int:
    """The ``train`` pre-check: warn (``DataLeakageWarning``) when validation files of a folder split
    (``{"root", "train": [rel paths], "val": [rel paths]}``) repeat training pictures; returns the count.
    Built-in datasets (no ``root``) and splits over ``max_files`` files are not checked."""
    if not split or not split.get("root") or not split.get("train") or not split.get("val"):
        return 0
    if len(split["train"]) + len(split["val"]) > max_files:
        return 0
    root = Path(split["root"])
    pairs = exact_duplicates_across([root / p for p in split["train"]], [root / p for p in split["val"]])
    if pairs:
        val, train = pairs[0]
        warnings.warn(
            f"{len(pairs)} validation image(s) are exact copies of training images (e.g. {val} = {train}): "
            f"the validation score will be inflated. `convnets doctor {root}` lists them all, with near "
            "duplicates",
            DataLeakageWarning,
            stacklevel=2,
        )
    return len(pairs)
