"""Running a trained model: :class:`Classifier` (a model plus what it must be fed), test-time
augmentation (TTA) and :func:`predict`.

Everything works from a run folder alone (its :class:`~convnets.base.runs.RunConfig` gives the class
names, image size, channels, resize mode and normalisation; ``weights.load_run`` rebuilds the model)
or from a :class:`Classifier` built around any ``nn.Module`` and a ``RunConfig`` (what the tests do
with models whose outputs they control).

Image files become model input through the data layer's one loader (``convnets.data.images``): the
"base" image is the picture scaled to cover ``size / 0.875`` and centre-cropped to that; the plain
view is its central ``size`` crop (torchvision's ImageNet protocol, e.g. 256 -> 224).

Test-time augmentation, as in the AlexNet/GoogLeNet case studies:

* ``flip``: the view and its mirror image, softmax probabilities averaged (2x the compute);
* ``10crop``: the four corner crops and the centre crop of the base image, each also mirrored
  (``torchvision.transforms.v2.functional.ten_crop``), probabilities averaged (10x the compute).
  A batch that arrives already at the model's size (a built-in dataset's loader) is first resized
  up to ``size / 0.875`` so the ten crops have somewhere to move.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from ..accel.inference import inference_module, predict_batch
from ..base.choices import TORCH_PATH_CHOICES, TTA_COST, TTA_MODES
from ..base.predictions import Prediction
from ..base.predictions import top_k as top_classes  # predict() has a top_k argument
from ..base.runs import RunConfig
from ..cost import latency_ms
from ..data.decode import CROP_RATIO, ImageReadError
from ..data.images import expand_paths, read_images, to_input
from ..trust.fit import RunTrust
from ..weights import load_run

__all__ = ["TTA_COST", "TTA_MODES", "Classifier", "check_tta", "measure_latency", "predict", "tta_views"]


def check_tta(tta: str) -> None:
    if tta not in TTA_MODES:
        raise ValueError(f"unknown TTA mode {tta!r}; choose from {', '.join(TTA_MODES)}")


def tta_views(x: torch.Tensor, tta: str, crop_size: tuple[int, int]) -> list[torch.Tensor]:
    """The views TTA averages over, each ``(N, C, *crop_size)``.

    ``x`` is either the base image batch (larger than ``crop_size``: the plain view is its centre)
    or a batch already at ``crop_size`` (then ``10crop`` first resizes it up by 1 / 0.875).
    """
    check_tta(tta)
    h, w = crop_size
    if tta == "10crop" or tuple(x.shape[-2:]) != (h, w):
        # Only when a crop is needed: importing torchvision (its ops pull in torch._dynamo) costs
        # 1.5-2 s of start-up.
        from torchvision.transforms.v2 import functional as TF
    if tta == "10crop":
        if tuple(x.shape[-2:]) == (h, w):
            x = TF.resize(x, [round(h / CROP_RATIO), round(w / CROP_RATIO)], antialias=True)
        return list(TF.ten_crop(x, [h, w]))  # corners + centre, then the same mirrored
    view = TF.center_crop(x, [h, w]) if tuple(x.shape[-2:]) != (h, w) else x
    return [view, view.flip(-1)] if tta == "flip" else [view]


@dataclass
class Classifier:
    """A model plus what it must be fed: ``Classifier.from_run(run_dir)`` or ``Classifier(model, config)``.

    ``config`` is the run's :class:`~convnets.base.runs.RunConfig` (class names, image size, channels,
    resize mode, normalisation). ``model`` stays the eager model (for cost and inspection);
    predictions run on :attr:`runner`, the model on ``backend`` (see
    :func:`convnets.accel.inference.inference_module`), built on first use.
    """

    model: nn.Module
    config: RunConfig
    name: str = "model"
    device: str | torch.device = "cpu"
    backend: str = "auto"
    # The run's out-of-distribution detector (convnets.trust.fit); None: no ood field on predictions.
    trust: RunTrust | None = field(default=None, repr=False)
    _runner: nn.Module | None = field(default=None, init=False, repr=False)

    def __post_init__(self) -> None:
        if self.backend not in TORCH_PATH_CHOICES:
            raise ValueError(
                f"unknown inference backend {self.backend!r}; choose from {', '.join(TORCH_PATH_CHOICES)}"
            )
        if not isinstance(self.config, RunConfig):
            raise TypeError(f"config must be a RunConfig, got {type(self.config).__name__!s}")
        self.model = self.model.to(self.device).eval()

    @classmethod
    def from_run(
        cls, run_dir: str | os.PathLike, device: str | torch.device = "cpu", backend: str = "auto"
    ) -> Classifier:
        """The run folder's model; :class:`~convnets.base.runs.RunFolderError` if it is not a usable run."""
        model, config = load_run(run_dir, device=device)
        trust = RunTrust.read(run_dir, config)
        return cls(model, config, name=Path(run_dir).name, device=device, backend=backend, trust=trust)

    @property
    def runner(self) -> nn.Module:
        """The model prepared for prediction on :attr:`backend` (``backend_of(runner)`` names it)."""
        if self._runner is None:
            example = torch.randn(1, self.in_chans, *self.image_size, device=self.device)
            self._runner = inference_module(self.model, example, backend=self.backend)
        return self._runner

    @property
    def class_names(self) -> list[str]:
        return list(self.config.class_names)

    @property
    def image_size(self) -> tuple[int, int]:
        return self.config.image_size

    @property
    def in_chans(self) -> int:
        return self.config.in_chans

    @property
    def resize_mode(self) -> str:
        return self.config.resize

    def _stats(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mean, std = self.config.normalization()
        shape = (1, -1, 1, 1)
        return (
            torch.tensor(mean, dtype=x.dtype, device=x.device).view(shape),
            torch.tensor(std, dtype=x.dtype, device=x.device).view(shape),
        )

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        """uint8 or [0, 1] float images (N, C, H, W) -> the model's normalised input."""
        if x.dtype == torch.uint8:
            x = x.float() / 255.0
        mean, std = self._stats(x)
        return (x - mean) / std

    def denormalize(self, x: torch.Tensor) -> torch.Tensor:
        """The inverse of :meth:`normalize`, clamped to [0, 1] (for showing images)."""
        x = x.cpu()
        mean, std = self._stats(x)
        return (x * std + mean).clamp(0, 1)

    def proba_views(self, views: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        """Softmax probabilities of each view (normalised input tensors), after the run's temperature
        (``evaluate --calibrate``) when it has one."""
        t = self.config.temperature or 1.0
        return [
            F.softmax(predict_batch(self.runner, v.to(self.device)).float() / t, dim=1).cpu() for v in views
        ]

    def predict_proba(self, x: torch.Tensor, tta: str = "none") -> torch.Tensor:
        """Class probabilities (N, K) of a normalised batch, averaged over the TTA views."""
        probs = self.proba_views(tta_views(x, tta, self.image_size))
        return torch.stack(probs).mean(0)

    def load_files(
        self, paths: Sequence[str | os.PathLike], base: bool = False
    ) -> tuple[torch.Tensor | None, dict[int, str]]:
        """Image files through the data layer's loader -> (normalised batch, {index: error message}).

        ``base=True`` gives the base images (size / 0.875, for ten-crop); otherwise the plain view.
        """
        c = self.config
        arrays = read_images(paths, c.image_size, c.in_chans, c.resize, base=base)
        errors = {i: str(a) for i, a in enumerate(arrays) if isinstance(a, ImageReadError)}
        good = [a for a in arrays if not isinstance(a, ImageReadError)]
        if not good:
            return None, errors
        mean, std = c.normalization()
        return torch.from_numpy(to_input(good, mean, std)), errors


def predict(
    run: str | os.PathLike | Classifier,
    paths: str | os.PathLike | Iterable[str | os.PathLike],
    *,
    top_k: int = 5,
    tta: str = "none",
    batch_size: int = 32,
    device: str = "cpu",
    backend: str = "auto",
    ood: bool = True,
    reject_ood: bool = False,
) -> list[Prediction]:
    """Top-k classes per image (folders searched recursively, hidden files skipped); a file that
    cannot be read gets a row with its ``error`` and the rest go on. ``[p.to_dict() for p in ...]``
    is the ``predict --json`` output.

    With ``ood`` and a run that has an out-of-distribution detector, each row gets an ``ood`` field
    (``{"flagged", "score", "threshold"}``; features of the plain view from the eager model);
    ``reject_ood`` answers ``unknown`` for flagged images (see :mod:`convnets.trust.fit`)."""
    check_tta(tta)
    clf = run if isinstance(run, Classifier) else Classifier.from_run(run, device=device, backend=backend)
    files = expand_paths(paths)
    results: list[Prediction] = []
    for start in range(0, len(files), batch_size):
        chunk = files[start : start + batch_size]
        x, errors = clf.load_files(chunk, base=(tta == "10crop"))
        probs = clf.predict_proba(x, tta).numpy() if x is not None else None
        tops = iter(top_classes(probs, clf.class_names, top_k) if probs is not None else [])
        rows = [
            Prediction(f, error=errors[i]) if i in errors else Prediction(f, top=next(tops))
            for i, f in enumerate(chunk)
        ]
        if ood and clf.trust is not None and x is not None:
            plain = tta_views(x, "none", clf.image_size)[0]
            clf.trust.annotate_torch(
                clf.model, plain.to(clf.device), [r for r in rows if r.error is None], reject_ood
            )
        results += rows
    return results


def measure_latency(clf: Classifier, runs: int = 5, warmup: int = 2) -> float:
    """Median milliseconds per image at batch 1 on this machine (random input of the model's size)."""
    x = torch.randn(1, clf.in_chans, *clf.image_size, device=clf.device)
    return latency_ms(clf.runner, x, warmup=warmup, runs=runs)
