"""``convnets doctor``: check an image-classification dataset before trusting a score trained on it.

:func:`diagnose` reads a class-per-folder dataset (or the split a run used), decodes each image once,
and reports unusable files, exact and near duplicates within and across splits (leakage) and across
classes (conflicts), class counts and imbalance, tiny / odd-mode / extreme-aspect images, and likely
label errors (out-of-fold probabilities ranked by confident learning). Torch is only imported by the
label check.
"""

from __future__ import annotations

import os
import time
from collections import Counter
from pathlib import Path

import numpy as np

from ..base.runs import WEIGHTS_FILE, is_run_dir
from . import duplicates as dup
from .labels import MAX_SHOWN, LabelCheckError, assess, find_label_issues
from .report import (
    ClassReport,
    DoctorReport,
    DuplicateGroup,
    FileRef,
    ImageNote,
    LabelCheck,
    LabelIssue,
    UnusableFile,
)
from .scan import DoctorError, ImageInfo, ScanResult, decode_all, resolve_sources

__all__ = ["diagnose", "DoctorReport", "DoctorError", "DuplicateGroup", "LabelIssue"]

TINY_SIDE = 32  # images with a side under this many pixels are "tiny"
ASPECT_LIMIT = 3.0  # longer side / shorter side above this is "extreme"
MODE_NAMES = {
    "L": "greyscale",
    "1": "1-bit black and white",
    "I": "32-bit greyscale",
    "I;16": "16-bit greyscale",
    "I;16B": "16-bit greyscale",
    "I;16L": "16-bit greyscale",
    "F": "float greyscale",
    "LA": "greyscale with alpha",
    "RGBA": "alpha channel",
    "PA": "palette with alpha",
    "P": "palette",
    "CMYK": "CMYK",
    "YCbCr": "YCbCr",
    "LAB": "LAB",
    "HSV": "HSV",
}


def diagnose(
    data: str | os.PathLike,
    val: str | os.PathLike | None = None,
    test: str | os.PathLike | None = None,
    *,
    weights: str | os.PathLike | None = None,
    model: str = "mobilenet_v2",
    normalize: str | None = None,
    labels: bool = True,
    near: bool = True,
    near_threshold: float = dup.NEAR_THRESHOLD,
    workers: int | None = None,
    progress: bool = True,
    seed: int = 0,
    max_label_issues: int | None = None,
) -> DoctorReport:
    """Check ``data`` (a class-per-folder directory, an already split root with train/ and val/ or
    test/, or a run folder) and, when given, the ``val`` and ``test`` folders.

    ``weights`` (a pretrained checkpoint for ``model``, ``normalize`` as in ``create_model``; or a run
    folder) makes the label check use that frozen model's features; a run folder given as ``data``
    checks with its own model; otherwise a tiny CNN is trained per fold.
    ``labels=False`` skips the label check, ``near=False`` the near-duplicate search.
    ``max_label_issues`` caps the listed label issues (default ``labels.MAX_SHOWN``; 0 = all); the
    check also says when it is too weak to trust (``report.label_check.trusted``/``warning``).
    """
    timings: dict[str, float] = {}
    if weights is None and is_run_dir(data) and (Path(data) / WEIGHTS_FILE).is_file():
        # A run folder's own model checks its labels: features trained on these very images are what
        # makes the check strong at scale (CIFAR-10: the tiny CNN reached 0.60 out of fold).
        weights = data
    t = time.perf_counter()
    sources = resolve_sources(data, val, test)
    timings["list"] = time.perf_counter() - t
    scan = decode_all(sources, workers=workers, progress=progress)
    timings["decode"] = scan.seconds

    t = time.perf_counter()
    groups, representatives = _duplicates(scan, near, near_threshold)
    timings["duplicates"] = time.perf_counter() - t

    report = DoctorReport(
        sources={s.name: str(s.root) for s in sources},
        files=len(scan.images),
        usable=len(scan.usable),
        unreadable=[UnusableFile(i.path, i.split, i.label, i.error) for i in scan.images if i.error],
        ignored=[p for s in sources for p in s.ignored],
        duplicates=groups,
        classes=_classes(scan),
        images=_image_notes(scan),
        thresholds={
            "near_similarity": near_threshold,
            "phash_candidate_bits": dup.CANDIDATE_BITS,
            "max_crop": dup.MAX_CROP,
            "screen_ncc_8x8": dup.SCREEN_NCC,
            "colour_limit": dup.COLOUR_LIMIT,
            "worst_block_limit": dup.WORST_BLOCK_LIMIT,
            "tiny_side": TINY_SIDE,
            "aspect_limit": ASPECT_LIMIT,
        },
        timings=timings,
    )
    if labels:
        t = time.perf_counter()
        report.label_issues, report.label_check = _label_issues(
            scan, representatives, weights, model, normalize, seed, max_label_issues
        )
        timings["labels"] = time.perf_counter() - t
    else:
        report.label_check = LabelCheck(ran=False, note="skipped (--no-labels)")
    return report


def _ref(info: ImageInfo) -> FileRef:
    return FileRef(info.path, info.split, info.label)


def _duplicates(scan: ScanResult, near: bool, threshold: float) -> tuple[list[DuplicateGroup], list[int]]:
    """Exact groups (same pixel hash) and near groups (verified pHash candidates among one image per
    exact group). Returns the groups and the representative rows (one per distinct picture)."""
    images = [scan.images[i] for i in scan.usable]
    exact = dup.exact_groups([info.pixel_hash for info in images])
    copies_of: dict[int, list[int]] = {g[0]: g for g in exact}
    in_group = {i for g in exact for i in g[1:]}
    representatives = [r for r in range(len(images)) if r not in in_group]
    groups = [DuplicateGroup("exact", [_ref(images[i]) for i in g]) for g in exact]
    if near and len(representatives) > 1:
        matches = dup.near_duplicates(scan.grey[representatives], scan.rgb[representatives], threshold)
        weakest: dict[int, float] = {}
        comps = dup.components(len(representatives), [(m.a, m.b) for m in matches])
        root_of = {member: min(c) for c in comps for member in c}
        for m in matches:
            root = root_of[m.a]
            weakest[root] = min(weakest.get(root, 1.0), m.similarity)
        for c in comps:
            rows = [
                row
                for member in c
                for row in copies_of.get(representatives[member], [representatives[member]])
            ]
            groups.append(DuplicateGroup("near", [_ref(images[r]) for r in rows], round(weakest[min(c)], 4)))
    return groups, representatives


def _classes(scan: ScanResult) -> ClassReport:
    train_names = next((s.class_folders for s in scan.sources if s.name == "train"), [])
    names = list(train_names) + sorted({c for s in scan.sources for c in s.class_folders} - set(train_names))
    counts: dict[str, dict[str, int]] = {}
    imbalance: dict[str, float | None] = {}
    missing: dict[str, list[str]] = {}
    unknown: dict[str, list[str]] = {}
    usable = [scan.images[i] for i in scan.usable]
    for s in scan.sources:
        c = Counter(info.label for info in usable if info.split == s.name)
        counts[s.name] = {n: c.get(n, 0) for n in names if n in s.class_folders or c.get(n)}
        present = [v for v in counts[s.name].values()]
        imbalance[s.name] = round(max(present) / min(present), 2) if present and min(present) > 0 else None
        missing[s.name] = [n for n in train_names if c.get(n, 0) == 0]
        unknown[s.name] = [n for n in s.class_folders if n not in train_names] if s.name != "train" else []
    return ClassReport(names, counts, imbalance, missing, unknown)


def _image_notes(scan: ScanResult) -> list[ImageNote]:
    notes = []
    for i in scan.usable:
        info = scan.images[i]
        w, h = info.width, info.height
        if min(w, h) < TINY_SIDE:
            notes.append(_note(info, "tiny", f"{w}x{h} px (under {TINY_SIDE} px on a side)"))
        if info.mode != "RGB":
            name = MODE_NAMES.get(info.mode or "", info.mode)
            notes.append(_note(info, "mode", f"{info.mode} ({name}); converted to RGB when loaded"))
        if max(w, h) > ASPECT_LIMIT * min(w, h):
            notes.append(_note(info, "aspect", f"{w}x{h} (aspect {max(w, h) / min(w, h):.1f}:1)"))
    return notes


def _note(info: ImageInfo, kind: str, detail: str) -> ImageNote:
    return ImageNote(info.path, info.split, info.label, kind, detail, info.width, info.height, info.mode)


def _label_issues(
    scan: ScanResult,
    representatives: list[int],
    weights,
    model: str,
    normalize: str | None,
    seed: int,
    max_issues: int | None = None,
) -> tuple[list[LabelIssue], LabelCheck]:
    """cleanlab's ranked issues over one image per distinct picture (exact copies would leak across
    folds and make each other look right)."""

    images = [scan.images[scan.usable[r]] for r in representatives]
    if len(images) < 10:
        return [], LabelCheck(ran=False, note=f"too few images ({len(images)})")
    try:
        result = find_label_issues(
            [i.label for i in images],
            scan.rgb[representatives],
            [i.path for i in images],
            weights=weights,
            model_name=model,
            normalize=normalize,
            seed=seed,
        )
    except LabelCheckError as e:
        return [], LabelCheck(ran=False, note=str(e))
    names = result.class_names
    issues = []
    cap = MAX_SHOWN if max_issues is None else (max_issues or len(result.ranked))
    for rank, row in enumerate(result.ranked[:cap], start=1):
        probs = result.pred_probs[row]
        given, best = int(result.labels[row]), int(np.argmax(probs))
        info = images[row]
        issues.append(
            LabelIssue(
                rank,
                info.path,
                info.split,
                info.label,
                names[best],
                round(float(probs[given]), 4),
                round(float(probs[best]), 4),
                round(float(result.quality[row]), 4),
            )
        )
    check = LabelCheck(
        True,
        result.method,
        result.folds,
        len(images),
        round(result.oof_accuracy, 4),
        round(result.seconds, 2),
    )
    check.flagged, check.shown = len(result.ranked), len(issues)
    check.trusted, check.warning = assess(
        result.oof_accuracy, len(result.ranked), len(images), weights_given=weights is not None
    )
    return issues, check
