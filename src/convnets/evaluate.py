"""After training: metrics, multi-crop test-time augmentation (TTA), ensembles and prediction.

Everything works from a run folder alone (``config.json`` gives the class names, image size,
channels and normalisation; ``weights.load_run`` rebuilds the model) or from a :class:`Classifier`
built around any ``nn.Module`` (what the tests do with models whose outputs they control).

Preprocessing of image files is the data layer's (``data.decode.load_base``): the "base" image is
the picture scaled to cover ``size / 0.875`` and centre-cropped to that; the plain evaluation view
is its central ``size`` crop (torchvision's ImageNet protocol, e.g. 256 -> 224).

Test-time augmentation, as in the AlexNet/GoogLeNet case studies:

* ``flip``: the view and its mirror image, softmax probabilities averaged (2x the compute);
* ``10crop``: the four corner crops and the centre crop of the base image, each also mirrored
  (``torchvision.transforms.v2.functional.ten_crop``), probabilities averaged (10x the compute).
  A batch that arrives already at the model's size (a built-in dataset's loader) is first resized
  up to ``size / 0.875`` so the ten crops have somewhere to move.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torchvision.transforms.v2 import functional as TF

from .inference import BACKENDS, backend_of, inference_module, predict_batch

__all__ = [
    "TTA_COST",
    "TTA_MODES",
    "Classifier",
    "ClassMismatchError",
    "EnsembleResult",
    "EvalResult",
    "classification_metrics",
    "evaluate",
    "evaluate_ensemble",
    "find_images",
    "measure_latency",
    "plot_confusion_matrix",
    "plot_mistakes",
    "predict",
    "run_normalization",
    "tta_views",
]

TTA_MODES = ("none", "flip", "10crop")
TTA_COST = {"none": 1, "flip": 2, "10crop": 10}  # forward passes per image
CROP_RATIO = 0.875


class ClassMismatchError(ValueError):
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


def run_normalization(config: dict) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """The mean/std a run's inputs are normalised with (identity when it trained unnormalised)."""
    in_chans = int(config.get("in_chans", 3))
    if config.get("normalize", True) is False or config.get("mean") is None:
        return (0.0,) * in_chans, (1.0,) * in_chans
    mean, std = tuple(float(m) for m in config["mean"]), tuple(float(s) for s in config["std"])
    if len(mean) == 1 and in_chans > 1:  # a grey statistic applied to every channel
        mean, std = mean * in_chans, std * in_chans
    return mean, std


# --- the model and its preprocessing ---------------------------------------------------------


def tta_views(x: torch.Tensor, tta: str, crop_size: tuple[int, int]) -> list[torch.Tensor]:
    """The views TTA averages over, each ``(N, C, *crop_size)``.

    ``x`` is either the base image batch (larger than ``crop_size``: the plain view is its centre)
    or a batch already at ``crop_size`` (then ``10crop`` first resizes it up by 1 / 0.875).
    """
    if tta not in TTA_MODES:
        raise ValueError(f"unknown TTA mode {tta!r}; choose from {', '.join(TTA_MODES)}")
    h, w = crop_size
    if tta == "10crop":
        if tuple(x.shape[-2:]) == (h, w):
            x = TF.resize(x, [round(h / CROP_RATIO), round(w / CROP_RATIO)], antialias=True)
        return list(TF.ten_crop(x, [h, w]))  # corners + centre, then the same mirrored
    view = TF.center_crop(x, [h, w]) if tuple(x.shape[-2:]) != (h, w) else x
    return [view, view.flip(-1)] if tta == "flip" else [view]


@dataclass
class Classifier:
    """A model plus what it must be fed: ``Classifier.from_run(run_dir)`` or ``Classifier(model, config)``.

    ``config`` needs ``class_names``, ``image_size`` ([H, W]) and optionally ``in_chans``, ``mean``,
    ``std``, ``normalize`` (the run folder's config.json keys). ``model`` stays the eager model (for
    cost and inspection); predictions run on :attr:`runner`, the model on ``backend`` (see
    :func:`convnets.inference.inference_module`), built on first use.
    """

    model: nn.Module
    config: dict
    name: str = "model"
    device: str | torch.device = "cpu"
    backend: str = "auto"
    _runner: nn.Module | None = field(default=None, init=False, repr=False)

    def __post_init__(self) -> None:
        if self.backend not in BACKENDS:
            raise ValueError(f"unknown inference backend {self.backend!r}; choose from {', '.join(BACKENDS)}")
        self.model = self.model.to(self.device).eval()

    @classmethod
    def from_run(
        cls, run_dir: str | Path, device: str | torch.device = "cpu", backend: str = "auto"
    ) -> Classifier:
        from .weights import load_run

        run_dir = Path(run_dir)
        if not (run_dir / "config.json").is_file():
            raise FileNotFoundError(f"{run_dir}: not a run folder (no config.json)")
        model, config = load_run(run_dir, device=device)
        return cls(model, config, name=run_dir.name, device=device, backend=backend)

    @property
    def runner(self) -> nn.Module:
        """The model prepared for prediction on :attr:`backend` (``backend_of(runner)`` names it)."""
        if self._runner is None:
            example = torch.randn(1, self.in_chans, *self.image_size, device=self.device)
            self._runner = inference_module(self.model, example, backend=self.backend)
        return self._runner

    @property
    def class_names(self) -> list[str]:
        return list(self.config["class_names"])

    @property
    def image_size(self) -> tuple[int, int]:
        size = self.config["image_size"]
        return (int(size), int(size)) if isinstance(size, int) else (int(size[0]), int(size[1]))

    @property
    def in_chans(self) -> int:
        return int(self.config.get("in_chans", 3))

    @property
    def base_size(self) -> tuple[int, int]:
        h, w = self.image_size
        return round(h / CROP_RATIO), round(w / CROP_RATIO)

    @property
    def resize_mode(self) -> str:
        # The mode the run's data used (recorded since config "resize"), else the explicit option.
        return self.config.get("resize") or (self.config.get("options") or {}).get("resize") or "center-crop"

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        """uint8 or [0, 1] float images (N, C, H, W) -> the model's normalised input."""
        if x.dtype == torch.uint8:
            x = x.float() / 255.0
        mean, std = run_normalization(self.config)
        mean_t = torch.tensor(mean, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
        std_t = torch.tensor(std, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
        return (x - mean_t) / std_t

    def denormalize(self, x: torch.Tensor) -> torch.Tensor:
        """The inverse of :meth:`normalize`, clamped to [0, 1] (for showing images)."""
        mean, std = run_normalization(self.config)
        mean_t = torch.tensor(mean, dtype=x.dtype).view(1, -1, 1, 1)
        std_t = torch.tensor(std, dtype=x.dtype).view(1, -1, 1, 1)
        return (x.cpu() * std_t + mean_t).clamp(0, 1)

    def proba_views(self, views: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        """Softmax probabilities of each view (normalised input tensors)."""
        return [F.softmax(predict_batch(self.runner, v.to(self.device)).float(), dim=1).cpu() for v in views]

    def predict_proba(self, x: torch.Tensor, tta: str = "none") -> torch.Tensor:
        """Class probabilities (N, K) of a normalised batch, averaged over the TTA views."""
        probs = self.proba_views(tta_views(x, tta, self.image_size))
        return torch.stack(probs).mean(0)

    def load_files(self, paths: Sequence[str | Path], base: bool = False) -> tuple[torch.Tensor | None, dict]:
        """Decode image files with the data layer -> (normalised batch, {index: error message}).

        ``base=True`` returns the base images (size / 0.875, for ten-crop); otherwise the plain view.
        """
        from .data.decode import ImageReadError, base_size, load_base

        mode = self.resize_mode
        size = base_size(self.image_size, mode)

        def read(path):
            try:
                return load_base(path, size, in_chans=self.in_chans, resize=mode)
            except ImageReadError as e:
                return e
            except OSError as e:  # missing file, permission denied, a directory
                return ImageReadError(f"cannot read: {e.strerror or e}")

        with ThreadPoolExecutor(max_workers=4) as pool:  # PIL releases the GIL while decoding
            arrays = list(pool.map(read, paths))
        errors = {i: str(a) for i, a in enumerate(arrays) if isinstance(a, Exception)}
        good = [torch.tensor(a).permute(2, 0, 1) for a in arrays if not isinstance(a, Exception)]
        if not good:
            return None, errors
        x = self.normalize(torch.stack(good))
        if not base and tuple(x.shape[-2:]) != self.image_size:
            x = TF.center_crop(x, list(self.image_size))
        return x, errors


# --- metrics ---------------------------------------------------------------------------------


def classification_metrics(probs: torch.Tensor, targets: torch.Tensor, class_names: Sequence[str]) -> dict:
    """Accuracy, top-5 (when there are at least 5 classes), per-class precision/recall/F1/support,
    macro averages and the confusion matrix (rows: true class, columns: predicted)."""
    from sklearn.metrics import confusion_matrix, precision_recall_fscore_support

    num_classes = len(class_names)
    targets = targets.long().cpu()
    pred = probs.argmax(1).cpu()
    n = int(targets.numel())
    labels = list(range(num_classes))
    precision, recall, f1, support = precision_recall_fscore_support(
        targets.numpy(), pred.numpy(), labels=labels, zero_division=0
    )
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
        "confusion_matrix": confusion_matrix(targets.numpy(), pred.numpy(), labels=labels).tolist(),
        "class_names": list(class_names),
    }
    if num_classes >= 5:
        top5 = probs.topk(5, dim=1).indices.cpu()
        metrics["top5"] = float((top5 == targets[:, None]).any(1).float().mean()) if n else float("nan")
    return metrics


# --- evaluation data ---------------------------------------------------------------------------


def find_images(paths: Sequence[str | Path]) -> list[Path]:
    """Files as given, folders searched recursively for image files (sorted)."""
    from .data.decode import is_image_file

    found: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            found.extend(sorted(f for f in p.rglob("*") if f.is_file() and is_image_file(f)))
        else:
            found.append(p)  # a missing or unreadable file is reported by the loader, per file
    return found


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
    cfg_data = clf.config.get("data") or {}
    source = cfg_data.get("source")
    split = clf.config.get("split")
    split_root = split.get("root") if isinstance(split, dict) else None
    path = Path(data)
    own_source = str(data) == str(source) or _same_path(data, source) or _same_path(data, split_root)

    if path.is_dir() and not own_source:
        check_class_names(clf.class_names, _folder_classes(path), str(path))
        files = [f for c in clf.class_names for f in find_images([path / c])]
        labels = [clf.class_names.index(f.relative_to(path).parts[0]) for f in files]
        if not files:
            raise FileNotFoundError(f"{path}: no image files in the class folders")

        def folder_iter() -> Iterator[_Batch]:
            for start in range(0, len(files), batch_size):
                chunk = files[start : start + batch_size]
                x, errors = clf.load_files(chunk, base=base)
                for i, msg in errors.items():
                    skipped.append({"file": str(chunk[i]), "error": msg})
                keep = [i for i in range(len(chunk)) if i not in errors]
                if x is not None:
                    yield _Batch(
                        x, torch.tensor([labels[start + i] for i in keep]), [str(chunk[i]) for i in keep]
                    )

        return folder_iter(), len(files), f"all {len(files)} images in {path}"

    if path.exists() and not path.is_dir():
        raise NotADirectoryError(f"{path}: DATA must be a folder of class folders or a dataset name")
    from .data import load_data

    mean, std = run_normalization(clf.config)
    options = clf.config.get("options") or {}
    splits = load_data(
        str(data),
        image_size=clf.image_size,
        in_chans=clf.in_chans,
        val_split=cfg_data.get("val_split", 0.2),
        seed=cfg_data.get("seed", 0),
        batch_size=batch_size,
        augment="none",
        normalize="auto",  # with mean and std given: exactly the run's statistics
        mean=mean,
        std=std,
        num_workers=0,
        data_root=options.get("data_root"),
        resize=options.get("resize"),
        split=split if own_source else None,
    )
    check_class_names(clf.class_names, splits.class_names, str(data))
    loader = splits.val
    if loader is None:
        raise ValueError(f"{data}: no validation subset to evaluate on")

    def loader_iter() -> Iterator[_Batch]:
        seen = 0
        for batch in loader:
            x, y = batch[0], batch[1]
            yield _Batch(x, y.long(), [f"{data}[val {seen + i}]" for i in range(len(y))])
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
    backend: str = "eager"  # what ran the model (convnets.inference.backend_of)
    mistakes: list[dict] = field(default_factory=list)  # worst mistakes: id, true, pred, confidence
    # The first ``sample_k`` images with id, true, pred, confidence and "image" (C, H, W) in [0, 1].
    samples: list[dict] = field(default_factory=list, repr=False)
    mistake_images: list[torch.Tensor] = field(default_factory=list, repr=False)  # same order as mistakes

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


def _keep_worst(worst: list, probs: torch.Tensor, batch: _Batch, images: torch.Tensor, k: int) -> list:
    conf, pred = probs.max(1)
    for i in torch.nonzero(pred != batch.y).flatten().tolist():
        worst.append((float(conf[i]), batch.ids[i], int(batch.y[i]), int(pred[i]), images[i]))
    worst.sort(key=lambda t: -t[0])
    return worst[:k]


def evaluate(
    run: str | Path | Classifier,
    data: str | Path,
    *,
    tta: str = "none",
    batch_size: int = 64,
    out: str | Path | None = None,
    worst_k: int = 16,
    sample_k: int = 0,
    device: str = "cpu",
    backend: str = "auto",
) -> EvalResult:
    """Evaluate a run (or a :class:`Classifier`) on ``data``; write plots to ``out`` when given.

    With ``tta`` other than ``"none"`` the plain (single view) predictions are computed too, so the
    result reports both accuracies, the gain, the compute factor and the measured model seconds.
    Writes ``confusion_matrix.png``, ``mistakes.png`` (highest-confidence wrong predictions) and
    ``metrics.json`` into ``out``. ``backend``: see :func:`convnets.inference.inference_module`.
    """
    if tta not in TTA_MODES:
        raise ValueError(f"unknown TTA mode {tta!r}; choose from {', '.join(TTA_MODES)}")
    clf = run if isinstance(run, Classifier) else Classifier.from_run(run, device=device, backend=backend)
    skipped: list[dict] = []
    batches, _, description = _eval_batches(clf, data, batch_size, base=(tta == "10crop"), skipped=skipped)

    plain_probs, tta_probs, targets, ids = [], [], [], []
    plain_seconds = tta_seconds = 0.0
    worst: list = []
    samples: list[dict] = []
    for batch in batches:
        plain_view = tta_views(batch.x, "none", clf.image_size)[0]
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
        shown = clf.denormalize(plain_view)
        worst = _keep_worst(worst, reported, batch, shown, worst_k)
        conf, pred = reported.max(1)
        for i in range(min(len(batch.ids), sample_k - len(samples))):
            samples.append(
                {
                    "id": batch.ids[i],
                    "true": clf.class_names[int(batch.y[i])],
                    "pred": clf.class_names[int(pred[i])],
                    "confidence": float(conf[i]),
                    "image": shown[i],
                }
            )
    if not plain_probs:
        raise ValueError(f"{data}: nothing to evaluate (every image failed to load)")

    plain = torch.cat(plain_probs)
    target = torch.cat(targets)
    probs = torch.cat(tta_probs) if tta != "none" else plain
    metrics = classification_metrics(probs, target, clf.class_names)
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
    )
    if out is not None:
        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        cm_path = plot_confusion_matrix(
            metrics["confusion_matrix"], clf.class_names, out / "confusion_matrix.png"
        )
        mistakes_path = plot_mistakes(
            [w[4] for w in worst],
            [f"true: {clf.class_names[w[2]]}\npred: {clf.class_names[w[3]]} ({w[0]:.0%})" for w in worst],
            out / "mistakes.png",
            title=f"{len(worst)} most confident mistakes",
        )
        result.files = {"confusion_matrix": str(cm_path), "mistakes": str(mistakes_path)}
        result.files["metrics"] = str(out / "metrics.json")
        (out / "metrics.json").write_text(json.dumps(result.to_dict(), indent=2), encoding="utf-8")
    return result


# --- ensembles ----------------------------------------------------------------------------------


def measure_latency(clf: Classifier, runs: int = 5, warmup: int = 2) -> float:
    """Median milliseconds per image at batch 1 on this machine (random input of the model's size)."""
    from .cost import latency_ms

    x = torch.randn(1, clf.in_chans, *clf.image_size, device=clf.device)
    return latency_ms(clf.runner, x, warmup=warmup, runs=runs)


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
    from .cost import model_cost

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
                "model": clf.config.get("model", type(clf.model).__name__),
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


# --- predict ------------------------------------------------------------------------------------


def predict(
    run: str | Path | Classifier,
    paths: Sequence[str | Path],
    *,
    top_k: int = 5,
    tta: str = "none",
    batch_size: int = 32,
    device: str = "cpu",
    backend: str = "auto",
) -> list[dict]:
    """Top-k classes per image: ``[{"file", "top": [{"class", "prob"}]}]``; a file that cannot be
    read gets ``{"file", "error"}`` instead and the rest go on. Folders are searched recursively."""
    if tta not in TTA_MODES:
        raise ValueError(f"unknown TTA mode {tta!r}; choose from {', '.join(TTA_MODES)}")
    clf = run if isinstance(run, Classifier) else Classifier.from_run(run, device=device, backend=backend)
    files = find_images(paths)
    k = max(1, min(top_k, len(clf.class_names)))
    results: list[dict] = []
    for start in range(0, len(files), batch_size):
        chunk = files[start : start + batch_size]
        x, errors = clf.load_files(chunk, base=(tta == "10crop"))
        probs = clf.predict_proba(x, tta) if x is not None else None
        row = 0
        for i, f in enumerate(chunk):
            if i in errors:
                results.append({"file": str(f), "error": errors[i]})
                continue
            top = probs[row].topk(k)
            results.append(
                {
                    "file": str(f),
                    "top": [
                        {"class": clf.class_names[c], "prob": float(p)}
                        for p, c in zip(top.values, top.indices)
                    ],
                }
            )
            row += 1
    return results


# --- plots ---------------------------------------------------------------------------------------


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path):
    """Save a figure as PNG to a path (parents created) or a binary file object; close it."""
    plt = _pyplot()
    try:
        if hasattr(path, "write"):
            fig.savefig(path, format="png", dpi=100)
            return path
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=100)
        return path
    finally:
        plt.close(fig)


def plot_confusion_matrix(cm: Sequence[Sequence[int]], class_names: Sequence[str], path: str | Path) -> Path:
    """Counts with row-normalised colours (recall on the diagonal); labels shown up to 40 classes."""
    plt = _pyplot()
    cm_arr = np.asarray(cm, dtype=np.int64)
    k = len(class_names)
    rows = cm_arr.sum(1, keepdims=True).clip(min=1)
    size = min(4 + 0.45 * k, 16)
    fig, ax = plt.subplots(figsize=(size, size * 0.9))
    image = ax.imshow(cm_arr / rows, cmap="Blues", vmin=0, vmax=1)
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04, label="fraction of the true class")
    if k <= 40:
        ax.set_xticks(range(k), [str(c) for c in class_names], rotation=45, ha="right")
        ax.set_yticks(range(k), [str(c) for c in class_names])
        if k <= 20:
            for i in range(k):
                for j in range(k):
                    color = "white" if cm_arr[i, j] / rows[i, 0] > 0.5 else "black"
                    ax.text(j, i, str(cm_arr[i, j]), ha="center", va="center", color=color, fontsize=8)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(f"confusion matrix (n = {int(cm_arr.sum())})")
    fig.tight_layout()
    return _save(fig, path)


def plot_mistakes(
    images: Sequence[torch.Tensor], captions: Sequence[str], path: str | Path, title: str = ""
) -> Path:
    """A grid of images in [0, 1] (C, H, W) with a caption under each."""
    plt = _pyplot()
    n = len(images)
    cols = min(max(n, 1), 4)
    rows = max(1, math.ceil(n / cols))
    fig, axes = plt.subplots(rows, cols, figsize=(2.6 * cols, 2.9 * rows), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, img, caption in zip(axes.flat, images, captions):
        arr = img.permute(1, 2, 0).numpy()
        ax.imshow(
            arr[:, :, 0] if arr.shape[2] == 1 else arr,
            cmap="gray" if arr.shape[2] == 1 else None,
            vmin=0,
            vmax=1,
        )
        ax.set_title(caption, fontsize=8)
    if n == 0:
        axes[0, 0].text(0.5, 0.5, "no mistakes", ha="center", va="center")
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return _save(fig, path)
