"""What the review page shows: ``doctor``'s findings (and a run's top losses) as items to act on.

An item is a group of files side by side (a duplicate group, a leakage group across splits, a
conflict across classes) or one file (a likely label error with the given and the suggested class,
a top loss of a run). Files are named by their path relative to DATA; a file the findings name
outside DATA is left out (and counted), so the page never offers to act on it.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ..base.runs import RunConfig
from ..doctor import diagnose
from .journal import DataFolder

__all__ = ["Finding", "FindingFile", "Findings", "doctor_findings", "load_findings", "run_top_losses"]


@dataclass
class FindingFile:
    path: str  # relative to DATA (the original place; the journal says where it is now)
    label: str
    split: str = ""
    note: str = ""


@dataclass
class Finding:
    id: str
    kind: str  # "leakage", "conflict", "duplicate", "label", "loss"
    title: str
    files: list[FindingFile]
    suggested: str | None = None  # the class the model suggests (label errors, top losses)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class Findings:
    items: list[Finding] = field(default_factory=list)
    outside: int = 0  # files the findings named that are not inside DATA (not offered)
    source: str = ""  # where they came from (doctor on DATA, a doctor --json file, a run)

    def to_dict(self) -> dict[str, Any]:
        return {"items": [i.to_dict() for i in self.items], "outside": self.outside, "source": self.source}


def doctor_findings(report: dict[str, Any], folder: DataFolder) -> Findings:
    """Items from a ``DoctorReport.to_dict()`` (what ``doctor --json`` prints): duplicate groups
    (leakage and conflicts first), then likely label errors in cleanlab's rank order."""
    out = Findings(source="doctor")
    groups = sorted(
        report.get("duplicates") or [],
        key=lambda g: (not g.get("leakage"), not g.get("conflict"), g.get("kind") != "exact"),
    )
    for n, g in enumerate(groups, 1):
        files = []
        for f in g.get("files") or []:
            rel = folder.rel(f["path"])
            if rel is None:
                out.outside += 1
                continue
            files.append(FindingFile(rel, f.get("label", ""), f.get("split", "")))
        if len(files) < 2:
            continue
        kind = "leakage" if g.get("leakage") else "conflict" if g.get("conflict") else "duplicate"
        what = (
            "exact copies" if g.get("kind") == "exact" else f"near copies (similarity {g.get('similarity')})"
        )
        where = {
            "leakage": f" across {' and '.join(g.get('splits') or [])}",
            "conflict": f" under classes {', '.join(g.get('labels') or [])}",
            "duplicate": "",
        }[kind]
        out.items.append(Finding(f"dup{n}", kind, f"{len(files)} {what}{where}", files))
    for issue in report.get("label_issues") or []:
        rel = folder.rel(issue["path"])
        if rel is None:
            out.outside += 1
            continue
        note = (
            f"P({issue['label']}) = {issue['label_prob']:.2f}, "
            f"P({issue['suggested']}) = {issue['suggested_prob']:.2f}"
        )
        out.items.append(
            Finding(
                f"label{issue['rank']}",
                "label",
                f"likely label error #{issue['rank']}: filed as {issue['label']}, "
                f"looks like {issue['suggested']}",
                [FindingFile(rel, issue["label"], issue.get("split", ""), note)],
                suggested=issue["suggested"],
            )
        )
    return out


def run_top_losses(run_dir: str | os.PathLike, folder: DataFolder, k: int = 24) -> Findings:
    """A run's ``k`` highest-loss images among DATA's files (wrong and confident first), as fastai's
    ImageClassifierCleaner shows them: the run's validation split when DATA is its data, else every
    image of DATA (its classes must be the run's)."""
    from ..deploy.evaluate import evaluate  # start-up: torch on first use

    config = RunConfig.read(run_dir)
    source = config.data.source if config.data is not None else None
    own = source is not None and Path(source).is_dir() and Path(source).resolve() == folder.root
    if own:
        targets: list[Path | None] = [None]
    else:  # a pre-split root: each split folder is a class-folder tree
        targets = [folder.root / d for d in folder.split_dirs] or [folder.root]
    losses = [t for target in targets for t in evaluate(run_dir, target, worst_k=k).metrics["top_losses"]]
    losses = sorted(losses, key=lambda t: -t["loss"])[:k]
    out = Findings(source=f"top losses of {run_dir}")
    for n, t in enumerate(losses, 1):
        rel = folder.rel(t["id"])
        if rel is None:
            out.outside += 1
            continue
        out.items.append(
            Finding(
                f"loss{n}",
                "loss",
                f"top loss #{n}: filed as {t['true']}, the model says {t['predicted']} "
                f"(P({t['true']}) = {t['prob']:.2f}, loss {t['loss']:.2f})",
                [FindingFile(rel, t["true"], "", f"loss {t['loss']:.2f}")],
                suggested=t["predicted"] if t["predicted"] != t["true"] else None,
            )
        )
    return out


def load_findings(
    folder: DataFolder,
    *,
    doctor_json: str | os.PathLike | None = None,
    run: str | os.PathLike | None = None,
    labels: bool = True,
    progress: bool = True,
) -> Findings:
    """Doctor's findings on DATA (read from ``doctor_json``, else ``diagnose`` runs now) and, with
    ``run``, that run's top losses."""
    if doctor_json is not None:
        try:
            report = json.loads(Path(doctor_json).read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as e:
            raise ValueError(f"{doctor_json}: not a doctor --json file ({e})") from None
        if not isinstance(report, dict) or not str(report.get("schema", "")).startswith("convnets.doctor/"):
            raise ValueError(f"{doctor_json}: not a doctor --json file (no convnets.doctor schema)")
        source = f"doctor --json {doctor_json}"
    else:
        report = diagnose(folder.root, labels=labels, progress=progress).to_dict()
        source = f"doctor on {folder.root}"
    found = doctor_findings(report, folder)
    found.source = source
    if run is not None:
        losses = run_top_losses(run, folder)
        found.items += losses.items
        found.outside += losses.outside
        found.source += f" + {losses.source}"
    return found
