"""After training: metrics, evaluation on a folder or a run's validation subset, and ensembles.

Running the model (the :class:`~convnets.deploy.predictor.Classifier`, test-time augmentation, ``predict``)
is ``convnets.deploy.predictor``; this module measures it: :func:`evaluate` (accuracy, per-class metrics,
confusion matrix, worst mistakes, what TTA gains for its cost) and :func:`evaluate_ensemble`.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from ..accel.inference import backend_of
from ..base.errors import ConvnetsError, output_dir
from ..base.plots import confusion_counts, plot_confusion_matrix, plot_image_grid
from ..cost import model_cost
from ..data.images import expand_paths
from ..data.run_splits import load_run_splits, run_data_source
from ..trust.analysis import ErrorAnalysis
from ..trust.calibration import Calibration, Reliability, plot_reliability
from ..trust.fit import calibrate_run
from ..trust.ood import features_and_logits
from .predictor import TTA_COST, Classifier, check_tta, measure_latency, tta_views

__all__ = [
    "ClassMismatchError",
    "EnsembleResult",
    "EvalResult",
    "SampleDraw",
    "check_class_names",
    "classification_metrics",
    "evaluate",
    "evaluate_ensemble",
    "run_data_source",
]


class ClassMismatchError(ConvnetsError, ValueError):
    """The data's classes are not the run's classes."""


def check_class_names(expected: Sequence[str], found: Sequence[str], where: str) -> None:
    """Raise :class:`ClassMismatchError` naming the extra and missing classes."""
    if list(expected) == list(found):
        return
    extra = sorted(set(found) - set(expected))
    missing = sorted(set(expected) - set(found))
    parts = []
    if extra:
        parts.append(f"classes not in the model: {', '.join(extra)}")
    if missing:
        parts.append(f"model classes missing from the data: {', '.join(missing)}")
    if not parts:
        parts.append(f"same classes in a different order: {list(found)} vs the model's {list(expected)}")
    raise ClassMismatchError(f"{where}: class names do not match the model's ({'; '.join(parts)})")


# --- metrics ---------------------------------------------------------------------------------


def classification_metrics(probs: torch.Tensor, targets: torch.Tensor, class_names: Sequence[str]) -> dict:
    """Accuracy, top-5 (when there are at least 5 classes), per-class precision/recall/F1/support,
    macro averages and the confusion matrix (rows: true class, columns: predicted)."""
    num_classes = len(class_names)
    targets = targets.long().cpu()
    pred = probs.argmax(1).cpu()
    n = int(targets.numel())
    # From the confusion matrix (what scikit-learn computes, zero_division=0), without importing
    # scikit-learn: that import alone took 5 s of a 5,000-image report on a busy machine.
    cm = confusion_counts(targets.numpy(), pred.numpy(), num_classes)
    tp = np.diag(cm).astype(np.float64)
    support = cm.sum(1)
    predicted = cm.sum(0)
    precision = np.divide(tp, predicted, out=np.zeros_like(tp), where=predicted > 0)
    recall = np.divide(tp, support, out=np.zeros_like(tp), where=support > 0)
    pr = precision + recall
    f1 = np.divide(2 * precision * recall, pr, out=np.zeros_like(tp), where=pr > 0)
    metrics = {
        "n": n,
        "accuracy": float((pred == targets).float().mean()) if n else float("nan"),
        "per_class": {
            name: {
                "precision": float(precision[i]),
                "recall": float(recall[i]),
                "f1": float(f1[i]),
                "support": int(support[i]),
            }
            for i, name in enumerate(class_names)
        },
        "macro": {
            "precision": float(precision.mean()),
            "recall": float(recall.mean()),
            "f1": float(f1.mean()),
        },
        "confusion_matrix": cm.tolist(),
        "class_names": list(class_names),
    }
    if num_classes >= 5:
        top5 = probs.topk(5, dim=1).indices.cpu()
        metrics["top5"] = float((top5 == targets[:, None]).any(1).float().mean()) if n else float("nan")
    return metrics


@dataclass
class _Batch:
    x: torch.Tensor  # normalised: at the model's size, or the base size for ten-crop
    y: torch.Tensor
    ids: list[str]


def _folder_classes(folder: Path) -> list[str]:
    return sorted(d.name for d in folder.iterdir() if d.is_dir() and not d.name.startswith("."))


def _same_path(a: str | Path, b: str | Path | None) -> bool:
    if b is None:
        return False
    try:
        return Path(a).resolve() == Path(b).resolve()
    except OSError:
        return False


def _eval_batches(
    clf: Classifier, data: str | Path, batch_size: int, base: bool, skipped: list
) -> tuple[Iterator[_Batch], int, str]:
    """Batches of ``data`` for ``clf``, the number of images and a description of what they are.

    A folder of class sub-folders: every image in it. The run's own data source (folder or
    built-in name): the run's validation subset, reproduced from the split saved in config.json.
    """
    config = clf.config
    source = config.data.source if config.data is not None else None
    split = config.split
    split_root = split.get("root") if isinstance(split, dict) else None
    path = Path(data)
    own_source = str(data) == str(source) or _same_path(data, source) or _same_path(data, split_root)

    if path.is_dir() and not own_source:
        check_class_names(clf.class_names, _folder_classes(path), str(path))
        files = [f for c in clf.class_names for f in expand_paths(path / c)]
        labels = [clf.class_names.index(Path(f).relative_to(path).parts[0]) for f in files]
        if not files:
            raise FileNotFoundError(f"{path}: no image files in the class folders")

        def folder_iter() -> Iterator[_Batch]:
            for start in range(0, len(files), batch_size):
                chunk = files[start : start + batch_size]
                x, errors = clf.load_files(chunk, base=base)
                for i, msg in errors.items():
                    skipped.append({"file": chunk[i], "error": msg})
                keep = [i for i in range(len(chunk)) if i not in errors]
                if x is not None:
                    yield _Batch(x, torch.tensor([labels[start + i] for i in keep]), [chunk[i] for i in keep])

        return folder_iter(), len(files), f"all {len(files)} images in {path}"

    if path.exists() and not path.is_dir():
        raise NotADirectoryError(f"{path}: DATA must be a folder of class folders or a dataset name")
    splits = load_run_splits(config, data, batch_size=batch_size, own_source=own_source)
    check_class_names(clf.class_names, splits.class_names, str(data))
    loader = splits.val
    if loader is None:
        raise ValueError(f"{data}: no validation subset to evaluate on")

    # The validation loader keeps its order: its file names name the images (top losses, mistakes).
    names = [str(n) for n in getattr(loader, "file_paths", None) or []]

    def loader_iter() -> Iterator[_Batch]:
        seen = 0
        for batch in loader:
            x, y = batch[0], batch[1]
            at = range(seen, seen + len(y))
            yield _Batch(x, y.long(), [names[i] if i < len(names) else f"{data}[val {i}]" for i in at])
            seen += len(y)

    what = "the run's validation subset" if own_source else "the validation subset"
    return loader_iter(), len(loader.dataset), f"{what} of {data}"


# --- evaluate ---------------------------------------------------------------------------------


@dataclass
class EvalResult:
    metrics: dict  # classification_metrics() of the reported predictions (with TTA when asked)
    tta: dict  # mode, views, plain_accuracy, accuracy, gain, cost_factor, seconds, plain_seconds
    probs: torch.Tensor
    targets: torch.Tensor
    ids: list[str]
    data: str
    skipped: list[dict] = field(default_factory=list)
    files: dict[str, str] = field(default_factory=dict)
    backend: str = "eager"  # what ran the model (convnets.accel.inference.backend_of)
    mistakes: list[dict] = field(default_factory=list)  # worst mistakes: id, true, pred, confidence
    # ``sample_k`` images drawn across classes, right and wrong (SampleDraw, seeded): id, true, pred,
    # confidence and "image" (C, H, W) in [0, 1].
    samples: list[dict] = field(default_factory=list, repr=False)
    mistake_images: list[torch.Tensor] = field(default_factory=list, repr=False)  # same order as mistakes
    # Error analysis (balanced accuracy, macro-F1, confused pairs, top losses, ECE; also in metrics).
    analysis: ErrorAnalysis | None = None
    calibration: Calibration | None = None  # the temperature fitted by calibrate=True
    mistake_classes: list[tuple[int, int]] = field(default_factory=list, repr=False)  # (true, pred)

    def to_dict(self) -> dict:
        return {
            **self.metrics,
            "tta": self.tta,
            "data": self.data,
            "backend": self.backend,
            "skipped": self.skipped,
            "mistakes": self.mistakes,
            "files": self.files,
        }


def _keep_worst(
    worst: list,
    conf: np.ndarray,
    pred: np.ndarray,
    batch: _Batch,
    shown: Callable[[int], torch.Tensor],
    k: int,
) -> list:
    """The ``k`` most confident mistakes so far; images denormalised only for the ones kept."""
    floor = worst[-1][0] if len(worst) >= k else -1.0
    y = batch.y.numpy()
    for i in np.flatnonzero((pred != y) & (conf > floor)).tolist():
        worst.append((float(conf[i]), batch.ids[i], int(y[i]), int(pred[i]), shown(i)))
    worst.sort(key=lambda t: -t[0])
    return worst[:k]


class SampleDraw:
    """A seeded sample of up to ``k`` images spread over the classes, right and wrong, drawn while
    the images stream past (reservoir sampling per class x right/wrong), so a report of a 10-class
    run shows every class rather than the first batch's, without keeping the images in memory.

    With more classes than ``k``, ``k`` classes are drawn first. :meth:`pick` takes the classes in
    turn (round-robin), each alternating right and wrong predictions when it has both."""

    def __init__(self, k: int, num_classes: int, seed: int = 0) -> None:
        self.k = k
        self.rng = np.random.default_rng(seed)
        classes = np.arange(num_classes)
        if num_classes > k > 0:
            classes = np.sort(self.rng.choice(num_classes, size=k, replace=False))
        self.classes = [int(c) for c in classes] if k > 0 else []
        self.wanted = set(self.classes)
        self.cap = -(-k // max(1, len(self.classes))) if k > 0 else 0  # per class and right/wrong
        self.seen: dict[tuple[int, bool], int] = {}
        self.kept: dict[tuple[int, bool], list[dict]] = {}

    def offer(
        self, batch: _Batch, conf: np.ndarray, pred: np.ndarray, class_names: Sequence[str], shown: Callable
    ) -> None:
        if not self.k:
            return
        for i, (y, p) in enumerate(zip(batch.y.tolist(), pred.tolist())):
            if y not in self.wanted:
                continue
            key = (y, y == p)
            n = self.seen[key] = self.seen.get(key, 0) + 1
            kept = self.kept.setdefault(key, [])
            slot = len(kept) if len(kept) < self.cap else int(self.rng.integers(n))
            if slot < self.cap:
                row = {"id": batch.ids[i], "true": class_names[y], "pred": class_names[p],
                       "confidence": float(conf[i]), "image": shown(i)}  # fmt: skip
                if slot == len(kept):
                    kept.append(row)
                else:
                    kept[slot] = row

    def pick(self) -> list[dict]:
        queues = []
        for n, c in enumerate(self.classes):
            right, wrong = self.kept.get((c, True), []), self.kept.get((c, False), [])
            first, second = (wrong, right) if n % 2 else (right, wrong)
            mixed = [row for pair in zip(first, second) for row in pair]
            shorter = min(len(first), len(second))
            queues.append(mixed + first[shorter:] + second[shorter:])
        out: list[dict] = []
        for turn in range(max((len(q) for q in queues), default=0)):
            out += [q[turn] for q in queues if turn < len(q)]
        return out[: self.k]


def evaluate(
    run: str | Path | Classifier,
    data: str | Path | None = None,
    *,
    tta: str = "none",
    batch_size: int = 64,
    out: str | Path | None = None,
    worst_k: int = 16,
    sample_k: int = 0,
    sample_seed: int = 0,
    device: str = "cpu",
    backend: str = "auto",
    calibrate: bool = False,
) -> EvalResult:
    """Evaluate a run (or a :class:`Classifier`) on ``data``; write plots to ``out`` when given.

    ``data=None``: the run's own validation split (the source and split in its config.json), as
    ``yolo val`` does without a data argument. ``sample_k`` images are kept for showing
    (:class:`SampleDraw`: across classes, right and wrong, drawn with ``sample_seed``).

    Beside accuracy: balanced accuracy, macro-F1, the most-confused pairs, the top losses and the
    expected calibration error (:class:`convnets.trust.analysis.ErrorAnalysis`), and the share of images
    the run's out-of-distribution detector flags. ``calibrate=True`` first fits the temperature and
    the detector on the run's own splits and stores them in the run (``trust.fit.calibrate_run``).

    With ``tta`` other than ``"none"`` the plain (single view) predictions are computed too, so the
    result reports both accuracies, the gain, the compute factor and the measured model seconds.
    Writes ``confusion_matrix.png``, ``mistakes.png`` (highest-confidence wrong predictions) and
    ``metrics.json`` into ``out``. ``backend``: see :func:`convnets.accel.inference.inference_module`.
    """
    check_tta(tta)
    if out is not None:
        out = output_dir(out, "--out")  # a file there, or a read-only folder: refused before the work
    fit = None
    if calibrate:
        if isinstance(run, Classifier):
            raise ValueError("calibrate: needs a run folder (the temperature is stored there)")

        fit = calibrate_run(run, out=out)
    clf = run if isinstance(run, Classifier) else Classifier.from_run(run, device=device, backend=backend)
    if data is None:
        data = run_data_source(clf.config)
    detector = clf.trust.detector if clf.trust is not None else None
    skipped: list[dict] = []
    batches, _, description = _eval_batches(clf, data, batch_size, base=(tta == "10crop"), skipped=skipped)

    plain_probs, tta_probs, targets, ids = [], [], [], []
    plain_seconds = tta_seconds = 0.0
    worst: list = []
    draw = SampleDraw(sample_k, len(clf.class_names), seed=sample_seed)
    features = []
    for batch in batches:
        plain_view = tta_views(batch.x, "none", clf.image_size)[0]
        if detector is not None:
            features.append(features_and_logits(clf.model, plain_view.to(clf.device))[1].cpu().numpy())
        start = time.perf_counter()
        (p_plain,) = clf.proba_views([plain_view])
        plain_seconds += time.perf_counter() - start
        if tta != "none":
            start = time.perf_counter()
            p_tta = torch.stack(clf.proba_views(tta_views(batch.x, tta, clf.image_size))).mean(0)
            tta_seconds += time.perf_counter() - start
            tta_probs.append(p_tta)
        reported = p_tta if tta != "none" else p_plain
        plain_probs.append(p_plain)
        targets.append(batch.y)
        ids.extend(batch.ids)

        def shown(i: int, view: torch.Tensor = plain_view) -> torch.Tensor:
            return clf.denormalize(view[i : i + 1])[0]  # only the images kept are denormalised

        # Bookkeeping in numpy: small torch ops cost tens of ms each on a busy machine (thread wake-ups).
        probs_np = reported.numpy()
        pred = probs_np.argmax(1)
        conf = probs_np[np.arange(len(pred)), pred]
        worst = _keep_worst(worst, conf, pred, batch, shown, worst_k)
        draw.offer(batch, conf, pred, clf.class_names, shown)
    samples = draw.pick()
    if not plain_probs:
        raise ValueError(f"{data}: nothing to evaluate (every image failed to load)")

    plain = torch.cat(plain_probs)
    target = torch.cat(targets)
    probs = torch.cat(tta_probs) if tta != "none" else plain
    metrics = classification_metrics(probs, target, clf.class_names)
    analysis = ErrorAnalysis.of(
        probs.numpy(), target.numpy(), ids, clf.class_names, metrics["confusion_matrix"], k=worst_k
    )
    metrics.update(analysis.to_dict())
    metrics["calibration"] = {
        "ece": metrics.pop("ece"),
        "reliability": metrics.pop("reliability"),
        "temperature": clf.config.temperature,
        **({"fit": fit.calibration.to_dict()} if fit is not None and fit.calibration is not None else {}),
    }
    ood = clf.trust.ood_summary(np.concatenate(features)) if features else None
    if ood is not None:
        ood["flagged_ids"] = [ids[i] for i in ood.pop("flagged_index")]
    metrics["ood"] = ood
    plain_acc = float((plain.argmax(1) == target).float().mean())
    tta_info = {
        "mode": tta,
        "views": TTA_COST[tta],
        "cost_factor": TTA_COST[tta],
        "plain_accuracy": plain_acc,
        "accuracy": metrics["accuracy"],
        "gain": metrics["accuracy"] - plain_acc,
        "plain_seconds": plain_seconds,
        "seconds": tta_seconds if tta != "none" else plain_seconds,
    }
    result = EvalResult(
        metrics=metrics,
        tta=tta_info,
        probs=probs,
        targets=target,
        ids=ids,
        data=description,
        skipped=skipped,
        backend=backend_of(clf.runner),
        mistakes=[
            {"id": i, "true": clf.class_names[t], "pred": clf.class_names[p], "confidence": c}
            for c, i, t, p, _ in worst
        ],
        samples=samples,
        mistake_images=[w[4] for w in worst],
        analysis=analysis,
        calibration=fit.calibration if fit is not None else None,
        mistake_classes=[(w[2], w[3]) for w in worst],
    )
    if out is not None:
        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        cm_path = plot_confusion_matrix(
            metrics["confusion_matrix"], clf.class_names, out / "confusion_matrix.png"
        )
        mistakes_path = plot_image_grid(
            [w[4] for w in worst],
            [f"true: {clf.class_names[w[2]]}\npred: {clf.class_names[w[3]]} ({w[0]:.0%})" for w in worst],
            out / "mistakes.png",
            title=f"{len(worst)} most confident mistakes",
            empty="no mistakes",
        )
        rel = Reliability(**analysis.reliability)
        t = clf.config.temperature
        rel_path = plot_reliability(
            out / "reliability.png",
            {f"T = {t:.2f}" if t else "model": rel},
            title=f"reliability on {len(target)} images",
        )
        result.files = {
            "confusion_matrix": str(cm_path),
            "mistakes": str(mistakes_path),
            "reliability": str(rel_path),
            **(fit.files if fit is not None else {}),
        }
        result.files["metrics"] = str(out / "metrics.json")
        (out / "metrics.json").write_text(json.dumps(result.to_dict(), indent=2), encoding="utf-8")
    return result


# --- ensembles ----------------------------------------------------------------------------------


@dataclass
class EnsembleResult:
    members: list[dict]  # name, accuracy, params, macs, latency_ms, image_size
    accuracy: float
    best_member_accuracy: float
    gain: float
    params: int
    macs: int
    latency_ms: float
    n: int
    probs: torch.Tensor
    targets: torch.Tensor
    metrics: dict

    def to_dict(self) -> dict:
        return {
            "members": self.members,
            "accuracy": self.accuracy,
            "best_member_accuracy": self.best_member_accuracy,
            "gain": self.gain,
            "params": self.params,
            "macs": self.macs,
            "latency_ms": self.latency_ms,
            "n": self.n,
            "per_class": self.metrics["per_class"],
            "confusion_matrix": self.metrics["confusion_matrix"],
            **({"top5": self.metrics["top5"]} if "top5" in self.metrics else {}),
        }


def evaluate_ensemble(
    runs: Sequence[str | Path | Classifier],
    data: str | Path,
    *,
    batch_size: int = 64,
    measure: bool = True,
    device: str = "cpu",
    backend: str = "auto",
) -> EnsembleResult:
    """Average the members' softmax probabilities; each member gets its own preprocessing.

    Members must share class names (same order) and see the same images: a folder, or the same
    validation subset. Reports each member's accuracy and cost and the summed params, multiply-adds
    and batch-1 latency of the ensemble next to its gain over the best member.
    """

    if len(runs) < 2:
        raise ValueError("an ensemble needs at least two members")
    clfs = [
        r if isinstance(r, Classifier) else Classifier.from_run(r, device=device, backend=backend)
        for r in runs
    ]
    first = clfs[0]
    for clf in clfs[1:]:
        check_class_names(first.class_names, clf.class_names, f"ensemble member {clf.name}")

    members, all_probs, reference = [], [], None
    for clf in clfs:
        result = evaluate(clf, data, batch_size=batch_size)
        if reference is None:
            reference = result
        elif result.ids != reference.ids or not torch.equal(result.targets, reference.targets):
            raise ValueError(
                f"ensemble member {clf.name} was evaluated on different images than {first.name} "
                "(different validation subsets?): pass a folder of class folders as DATA"
            )
        cost = model_cost(clf.model, image_size=clf.image_size, in_chans=clf.in_chans)
        members.append(
            {
                "name": clf.name,
                "model": clf.config.model,
                "image_size": list(clf.image_size),
                "accuracy": result.metrics["accuracy"],
                "params": cost.params,
                "macs": cost.macs,
                "latency_ms": measure_latency(clf) if measure else None,
                "backend": backend_of(clf.runner),
            }
        )
        all_probs.append(result.probs)
    probs = torch.stack(all_probs).mean(0)
    metrics = classification_metrics(probs, reference.targets, first.class_names)
    best = max(m["accuracy"] for m in members)
    return EnsembleResult(
        members=members,
        accuracy=metrics["accuracy"],
        best_member_accuracy=best,
        gain=metrics["accuracy"] - best,
        params=sum(m["params"] for m in members),
        macs=sum(m["macs"] for m in members),
        latency_ms=sum(m["latency_ms"] for m in members) if measure else float("nan"),
        n=metrics["n"],
        probs=probs,
        targets=reference.targets,
        metrics=metrics,
    )
