"""Seeded, stratified, *stable* train/validation split.

Each file is keyed by its path relative to the dataset root (``"alpaca/img_01.jpg"``) and gets a
uniform number ``u = sha256(f"{seed}:{key}") / 2**256`` in [0, 1). Within each class the files
are ranked by ``u`` and the ``k`` lowest go to validation, where

    k = clamp(floor(frac * n + 0.5), 1, n - 1)        (n = files in the class, n >= 2, 0 < frac < 1)

Guarantees (tested in tests/test_data_split.py):

* disjoint and complete: every file is in exactly one subset;
* stratified: each class contributes ``k`` of its ``n`` files (round half up, at least one of each
  class on both sides when the class has two or more files);
* deterministic: the same files and seed give the same split on every machine (no dependence on
  listing order, the OS, or Python's hash randomisation);
* stable: adding (or removing) one file moves **at most one existing file** between the subsets,
  and only within the added file's class; files of other classes never move. Why: ``k`` grows by 0
  or 1 when ``n`` grows by 1, and membership is "among the k lowest hashes", so the new file can
  push at most one file out of (or ``k+1`` pull at most one file into) the lowest-``k`` set.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Sequence


def hash_unit(seed: int, key: str) -> float:
    """A seeded, platform-independent pseudo-random number in [0, 1) for ``key``."""
    digest = hashlib.sha256(f"{seed}:{key}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2.0**64


def val_count(n: int, frac: float) -> int:
    """How many of a class's ``n`` files go to validation (see the module docstring)."""
    if n <= 0 or frac <= 0:
        return 0
    if frac >= 1:
        return n
    k = math.floor(frac * n + 0.5)
    if n >= 2:
        k = min(max(k, 1), n - 1)
    return k


def stratified_split(
    keys: Sequence[str], labels: Sequence[int], frac: float, seed: int = 0
) -> tuple[list[int], list[int]]:
    """Indices ``(train, val)`` into ``keys``; both lists sorted ascending.

    ``keys`` are stable identifiers (relative paths, or ``str(index)`` for in-memory datasets).
    """
    if len(keys) != len(labels):
        raise ValueError("keys and labels differ in length")
    if not 0 <= frac < 1:
        raise ValueError(f"validation_split must be in [0, 1), got {frac}")
    by_class: dict[int, list[int]] = {}
    for i, label in enumerate(labels):
        by_class.setdefault(int(label), []).append(i)
    val: list[int] = []
    for members in by_class.values():
        # Ties in the 64-bit hash are practically impossible; the key breaks them for determinism.
        ranked = sorted(members, key=lambda i: (hash_unit(seed, keys[i]), keys[i]))
        val.extend(ranked[: val_count(len(members), frac)])
    val_set = set(val)
    train = [i for i in range(len(keys)) if i not in val_set]
    return train, sorted(val)
