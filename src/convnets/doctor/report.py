"""What ``doctor`` found: the typed :class:`DoctorReport`, its JSON form, a text summary and a
self-contained HTML page with thumbnails."""

from __future__ import annotations

import base64
import html
import io
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ..base.atomic import atomic_write_text

SCHEMA = "convnets.doctor/1"


@dataclass
class FileRef:
    path: str
    split: str
    label: str


@dataclass
class UnusableFile:
    path: str
    split: str
    label: str
    reason: str


@dataclass
class DuplicateGroup:
    """Files showing the same picture. ``kind``: "exact" (same decoded pixels) or "near"
    (re-encoded / resized / slightly cropped; ``similarity`` = the weakest verified pair's score)."""

    kind: str
    files: list[FileRef]
    similarity: float | None = None

    @property
    def splits(self) -> list[str]:
        return sorted({f.split for f in self.files})

    @property
    def labels(self) -> list[str]:
        return sorted({f.label for f in self.files})

    @property
    def leakage(self) -> bool:
        """Copies in more than one split (e.g. train and val): the held-out score is inflated."""
        return len(self.splits) > 1

    @property
    def conflict(self) -> bool:
        """The same picture under two or more classes."""
        return len(self.labels) > 1

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "leakage": self.leakage,
            "conflict": self.conflict,
            "splits": self.splits,
            "labels": self.labels,
            "similarity": self.similarity,
            "files": [asdict(f) for f in self.files],
        }


@dataclass
class ClassReport:
    """Images per class and split; ``imbalance`` = largest / smallest class count per split."""

    names: list[str]
    counts: dict[str, dict[str, int]]  # split -> class -> usable images
    imbalance: dict[str, float | None]
    missing: dict[str, list[str]]  # split -> classes of train with no image there
    unknown: dict[str, list[str]]  # split -> class folders that train does not have


@dataclass
class ImageNote:
    """An image that loads but may surprise: ``kind`` is "tiny", "mode" or "aspect"."""

    path: str
    split: str
    label: str
    kind: str
    detail: str
    width: int
    height: int
    mode: str | None


@dataclass
class LabelIssue:
    rank: int
    path: str
    split: str
    label: str
    suggested: str
    label_prob: float  # out-of-fold probability of the folder's label
    suggested_prob: float
    quality: float  # cleanlab's label quality score (0 = surely wrong, 1 = surely right)


@dataclass
class LabelCheck:
    ran: bool
    method: str | None = None
    folds: int | None = None
    images: int = 0
    oof_accuracy: float | None = None
    seconds: float | None = None
    note: str | None = None
    flagged: int = 0  # images cleanlab flagged; the report lists the first `shown`, most likely first
    shown: int = 0
    trusted: bool | None = None  # None: not assessed (the check did not run)
    warning: str | None = None  # why the check is too weak to act on, in plain words


@dataclass
class DoctorReport:
    sources: dict[str, str]
    files: int
    usable: int
    unreadable: list[UnusableFile] = field(default_factory=list)
    ignored: list[str] = field(default_factory=list)
    duplicates: list[DuplicateGroup] = field(default_factory=list)
    classes: ClassReport | None = None
    images: list[ImageNote] = field(default_factory=list)
    label_issues: list[LabelIssue] = field(default_factory=list)
    label_check: LabelCheck = field(default_factory=lambda: LabelCheck(ran=False))
    thresholds: dict[str, float] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)

    # -- what CI looks at ----------------------------------------------------------------------

    @property
    def leakage(self) -> list[DuplicateGroup]:
        return [g for g in self.duplicates if g.leakage]

    @property
    def conflicts(self) -> list[DuplicateGroup]:
        return [g for g in self.duplicates if g.conflict]

    def summary(self) -> dict[str, Any]:
        exact = [g for g in self.duplicates if g.kind == "exact"]
        near = [g for g in self.duplicates if g.kind == "near"]
        train = self.classes.imbalance.get("train") if self.classes else None
        return {
            "files": self.files,
            "usable": self.usable,
            "unreadable": len(self.unreadable),
            "ignored": len(self.ignored),
            "exact_duplicate_groups": len(exact),
            "exact_duplicate_extra_copies": sum(len(g.files) - 1 for g in exact),
            "near_duplicate_groups": len(near),
            "leakage_groups": len(self.leakage),
            "conflict_groups": len(self.conflicts),
            "classes": len(self.classes.names) if self.classes else 0,
            "imbalance_ratio": train,
            "tiny": sum(n.kind == "tiny" for n in self.images),
            "odd_mode": sum(n.kind == "mode" for n in self.images),
            "extreme_aspect": sum(n.kind == "aspect" for n in self.images),
            "label_issues": len(self.label_issues),
        }

    def to_dict(self) -> dict[str, Any]:
        """The ``doctor --json`` object: a section per kind of problem, every file by its path."""
        return {
            "schema": SCHEMA,
            "summary": self.summary(),
            "sources": dict(self.sources),
            "unreadable": [asdict(u) for u in self.unreadable],
            "ignored": list(self.ignored),
            "duplicates": [g.to_dict() for g in self.duplicates],
            "classes": asdict(self.classes) if self.classes else None,
            "images": [asdict(n) for n in self.images],
            "label_issues": [asdict(i) for i in self.label_issues],
            "label_check": asdict(self.label_check),
            "thresholds": dict(self.thresholds),
            "timings": {k: round(v, 3) for k, v in self.timings.items()},
        }

    # -- text ----------------------------------------------------------------------------------

    def to_text(self, limit: int = 20) -> str:
        s = self.summary()
        lines = [
            "convnets doctor: " + ", ".join(f"{k} {v}" for k, v in self.sources.items()),
            f"  files                 {s['files']:>7,}  ({s['usable']:,} usable)",
            f"  unreadable            {s['unreadable']:>7,}",
            f"  exact duplicates      {s['exact_duplicate_groups']:>7,}  groups "
            f"({s['exact_duplicate_extra_copies']:,} extra copies)",
            f"  near duplicates       {s['near_duplicate_groups']:>7,}  groups",
            f"  leakage across splits {s['leakage_groups']:>7,}  groups",
            f"  label conflicts       {s['conflict_groups']:>7,}  groups (same picture, different class)",
            f"  classes               {s['classes']:>7,}  (train imbalance "
            + (f"{s['imbalance_ratio']:.1f}x)" if s["imbalance_ratio"] else "n/a)"),
            f"  tiny / odd mode / extreme aspect  {s['tiny']:,} / {s['odd_mode']:,} / "
            f"{s['extreme_aspect']:,}",
            f"  likely label errors   {self.label_check.flagged or s['label_issues']:>7,}"
            + ("" if self.label_check.ran else f"  (not checked: {self.label_check.note})")
            + ("  (check too weak to trust: see below)" if self.label_check.trusted is False else ""),
        ]
        if s["ignored"]:
            lines.append(f"  ignored (no image extension) {s['ignored']:,}")

        def section(title: str, rows: list[str]) -> None:
            if not rows:
                return
            lines.extend(["", title])
            lines.extend("  " + r for r in rows[:limit])
            if len(rows) > limit:
                lines.append(f"  ... {len(rows) - limit:,} more (--json or --html for all)")

        section("Unreadable files:", [f"{u.path}: {u.reason}" for u in self.unreadable])
        ordered = sorted(self.duplicates, key=lambda g: (not g.conflict, not g.leakage, g.kind != "exact"))
        section(
            "Duplicates (conflicts and leakage first):",
            [
                f"[{g.kind}{' LEAK' if g.leakage else ''}{' CONFLICT' if g.conflict else ''}"
                + (f" {g.similarity:.3f}" if g.similarity is not None else "")
                + "] "
                + "  =  ".join(f"{f.path} ({f.split}/{f.label})" for f in g.files)
                for g in ordered
            ],
        )
        if self.classes:
            rows = []
            for split, counts in self.classes.counts.items():
                ratio = self.classes.imbalance.get(split)
                rows.append(
                    f"{split}: "
                    + ", ".join(f"{k} {v}" for k, v in counts.items())
                    + (f"  (imbalance {ratio:.1f}x)" if ratio else "")
                )
                if self.classes.missing.get(split):
                    rows.append(f"{split}: no images of {', '.join(self.classes.missing[split])}")
                if self.classes.unknown.get(split):
                    rows.append(
                        f"{split}: class folders not in train: {', '.join(self.classes.unknown[split])}"
                    )
            section("Classes:", rows)
        section("Images to look at:", [f"{n.path}: {n.kind}: {n.detail}" for n in self.images])
        if self.label_check.ran:
            lc = self.label_check
            more = f"; the first {lc.shown:,} of {lc.flagged:,} flagged" if lc.flagged > lc.shown else ""
            if lc.warning:
                lines.append(f"\nWARNING: the label check is {lc.warning}.")
            section(
                f"Likely label errors (most likely first, by the model's confidence against the folder's "
                f"label{more}; {lc.method}, out-of-fold accuracy {lc.oof_accuracy:.3f}):",
                [
                    f"{i.rank:>3}. {i.path}: folder {i.label!r} (p={i.label_prob:.2f}) -> "
                    f"suggested {i.suggested!r} (p={i.suggested_prob:.2f})"
                    for i in self.label_issues
                ],
            )
        return "\n".join(lines)

    # -- HTML ----------------------------------------------------------------------------------

    def write_html(self, path: str | os.PathLike, max_items: int = 200) -> Path:
        """A single self-contained page (inline CSS, base64 JPEG thumbnails, no external links)."""

        e = html.escape
        s = self.summary()
        parts = [
            "<!doctype html><html><head><meta charset='utf-8'><title>convnets doctor</title><style>",
            "body{font-family:system-ui,sans-serif;margin:2em;color:#222}table{border-collapse:collapse}"
            "td,th{border:1px solid #ccc;padding:3px 8px;text-align:left;vertical-align:top}"
            ".grp{border:1px solid #ccc;margin:8px 0;padding:6px}.leak{border-color:#c60}"
            ".conflict{border-color:#c00}figure{display:inline-block;margin:4px;width:132px;font-size:11px;"
            "word-break:break-all;vertical-align:top}"
            "img{max-width:128px;max-height:128px;display:block}.tag{font-weight:bold;color:#c00}",
            "</style></head><body><h1>convnets doctor</h1>",
            "<p>" + "; ".join(f"{e(k)}: <code>{e(v)}</code>" for k, v in self.sources.items()) + "</p>",
            "<h2>Summary</h2><table>"
            + "".join(f"<tr><th>{e(k)}</th><td>{e(str(v))}</td></tr>" for k, v in s.items())
            + "</table>",
        ]

        def figure(path: str, caption: str) -> str:
            src = _thumbnail_data_uri(path)
            img = f"<img src='{src}' alt=''>" if src else "<div>(no preview)</div>"
            return f"<figure>{img}<figcaption>{caption}</figcaption></figure>"

        if self.unreadable:
            parts.append(
                "<h2>Unreadable files</h2><table><tr><th>file</th><th>split</th><th>reason</th></tr>"
            )
            parts += [
                f"<tr><td>{e(u.path)}</td><td>{e(u.split)}</td><td>{e(u.reason)}</td></tr>"
                for u in self.unreadable
            ]
            parts.append("</table>")
        if self.duplicates:
            parts.append(
                "<h2>Duplicates</h2><p>Conflicts (same picture, different class) and leakage "
                "(copies in more than one split) first.</p>"
            )
            ordered = sorted(
                self.duplicates, key=lambda g: (not g.conflict, not g.leakage, g.kind != "exact")
            )
            for g in ordered[:max_items]:
                tags = " ".join(t for t, on in (("LEAKAGE", g.leakage), ("CONFLICT", g.conflict)) if on)
                cls = "conflict" if g.conflict else "leak" if g.leakage else ""
                sim = f" similarity {g.similarity:.3f}" if g.similarity is not None else ""
                parts.append(
                    f"<div class='grp {cls}'><div>{e(g.kind)}{sim} <span class='tag'>{tags}</span></div>"
                )
                parts += [figure(f.path, f"{e(f.split)}/<b>{e(f.label)}</b><br>{e(f.path)}") for f in g.files]
                parts.append("</div>")
            if len(ordered) > max_items:
                parts.append(f"<p>... {len(ordered) - max_items} more groups in --json</p>")
        if self.label_issues:
            lc = self.label_check
            parts.append(
                f"<h2>Likely label errors</h2><p>{e(lc.method or '')}; out-of-fold accuracy "
                f"{lc.oof_accuracy:.3f}; most likely first; {lc.shown:,} of {lc.flagged:,} flagged shown.</p>"
            )
            if lc.warning:
                parts.append(f"<p><b>Warning: the label check is {e(lc.warning)}.</b></p>")
            parts += [
                figure(
                    i.path,
                    f"#{i.rank} folder <b>{e(i.label)}</b> ({i.label_prob:.2f})<br>suggested "
                    f"<b>{e(i.suggested)}</b> ({i.suggested_prob:.2f})<br>{e(i.path)}",
                )
                for i in self.label_issues[:max_items]
            ]
        if self.classes:
            names = self.classes.names
            parts.append(
                "<h2>Classes</h2><table><tr><th>split</th>" + "".join(f"<th>{e(n)}</th>" for n in names)
            )
            parts.append("<th>imbalance</th></tr>")
            for split, counts in self.classes.counts.items():
                ratio = self.classes.imbalance.get(split)
                parts.append(
                    f"<tr><td>{e(split)}</td>"
                    + "".join(f"<td>{counts.get(n, 0)}</td>" for n in names)
                    + f"<td>{f'{ratio:.1f}x' if ratio else ''}</td></tr>"
                )
            parts.append("</table>")
        if self.images:
            parts.append("<h2>Images to look at</h2>")
            parts += [
                figure(n.path, f"{e(n.kind)}: {e(n.detail)}<br>{e(n.path)}") for n in self.images[:max_items]
            ]
        parts.append("</body></html>")
        return atomic_write_text(Path(path), "\n".join(parts))


def _thumbnail_data_uri(path: str, size: int = 128) -> str | None:
    """A small JPEG of ``path`` as a data: URI (None when the file cannot be decoded)."""
    from .scan import decode_rgb  # start-up: numpy on first use

    try:
        _, im = decode_rgb(path)
    except Exception:  # an unreadable file has no preview; the page says so
        return None
    im.thumbnail((size, size))
    buf = io.BytesIO()
    im.save(buf, "JPEG", quality=80)
    return "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode("ascii")
