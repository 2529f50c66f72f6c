"""A run's exported model on one engine: images in, probabilities and prediction rows out, without torch."""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from ...base.choices import EXPORTED_PATH_CHOICES, TTA_MODES
from ...base.predictions import Prediction, softmax, top_k
from ...base.runs import ONNX_FILE, RunConfig
from ...data.decode import ImageReadError
from ...data.images import ImageSource, expand_paths, read_image
from ..export_record import EngineError
from .choice import open_engine
from .engine import Engine, pixels_of
from .onnx_file import ensure_exported
from .tta import read_tta_views


class ExportedModel:
    """A run's exported model on one engine: images in, probabilities and prediction rows out.

    ``ExportedModel.open(run_dir, backend="auto")`` exports first if needed (that once imports torch).
    ``.backend`` is the engine chosen (one of ``base.choices.EXPORTED_BACKENDS``), ``.engine.description``
    says more.
    """

    def __init__(self, run_dir: str | os.PathLike, config: RunConfig, engine: Engine):
        self.run_dir, self.config, self.engine = Path(run_dir), config, engine
        self.path = Path(getattr(engine, "path", self.run_dir / ONNX_FILE))

    @classmethod
    def open(
        cls,
        run_dir: str | os.PathLike,
        backend: str = "auto",
        *,
        threads: int | None = None,
        images: int | None = None,
        log: Callable[[str], None] | None = None,
        spin: bool = True,
        features: bool = False,
    ) -> ExportedModel:
        """``images``: how many images the caller will run, when known (see :func:`open_engine`);
        ``spin=False``: ONNX Runtime's threads sleep between operators instead of busy-waiting (servers);
        ``features=True``: :meth:`predict_views_with_features` gives the penultimate features too."""
        if backend not in EXPORTED_PATH_CHOICES:
            raise EngineError(
                f"backend {backend!r} runs the PyTorch model; an exported model runs on "
                f"{', '.join(EXPORTED_PATH_CHOICES)}"
            )
        config = RunConfig.read(run_dir)
        ensure_exported(run_dir, log=log)
        return cls(
            run_dir,
            config,
            open_engine(
                run_dir,
                backend,
                threads=threads,
                config=config,
                images=images,
                spin=spin,
                features=features,
                log=log,
            ),
        )

    @property
    def backend(self) -> str:
        return self.engine.name

    @property
    def class_names(self) -> list[str]:
        return list(self.config.class_names)

    def logits(self, pixels: np.ndarray) -> np.ndarray:
        """float32 (N, C, H, W) pixels in [0, 1] -> logits (N, K)."""
        return self.engine.run(pixels)

    def predict_views(self, views: Sequence[np.ndarray]) -> np.ndarray:
        """uint8 (H, W, C) views at the run's image size -> probabilities (N, K)."""
        return softmax(
            self.logits(pixels_of(views)) / (self.config.temperature or 1.0)
        )  # evaluate --calibrate

    def predict_views_with_features(self, views: Sequence[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        """:meth:`predict_views` and the penultimate features (N, D) from the same pass (opened with
        ``features=True``)."""
        logits, features = self.engine.run_with_features(pixels_of(views))
        return softmax(logits / (self.config.temperature or 1.0)), features

    def read(self, source: ImageSource) -> np.ndarray:
        """One image as the model's uint8 (H, W, C) view (what ``predict_views`` takes)."""
        c = self.config
        return read_image(source, c.image_size, c.in_chans, c.resize)

    def read_views(self, source: ImageSource, tta: str = "none") -> list[np.ndarray]:
        """The views of one image that ``tta`` averages over (one view without TTA)."""
        return read_tta_views(source, self.config, tta)

    def predict(
        self,
        sources: Sequence[tuple[str, ImageSource]],
        top: int = 5,
        batch_size: int = 32,
        tta: str = "none",
        trust=None,
        reject_ood: bool = False,
    ) -> list[Prediction]:
        """Rows for ``(name, file path or bytes)`` pairs; an unusable input gets its error row.
        With ``tta``, each image's probabilities are the mean over its views (as convnets.deploy.evaluate).
        ``trust`` (a ``trust.RunTrust`` with a detector, on a model opened with ``features=True``, TTA
        none or flip): rows get the ``ood`` field from the plain view's features of the same pass."""
        if tta not in TTA_MODES:
            raise ValueError(f"unknown TTA mode {tta!r}; choose from {', '.join(TTA_MODES)}")
        # The plain view is the first of "none" and "flip"; ten-crop has none of its own.
        flag = trust is not None and trust.detector is not None and tta != "10crop"
        rows: list[Prediction] = []
        for start in range(0, len(sources), batch_size):
            chunk = sources[start : start + batch_size]
            views, slots = [], []
            for name, source in chunk:
                try:
                    views.append(self.read_views(source, tta))
                    slots.append(Prediction(name))
                except ImageReadError as e:
                    slots.append(Prediction(name, error=str(e)))
            good = [r for r in slots if r.error is None]
            if good:
                k = len(views[0])  # views per image; stacked view-major so each view is one batch
                per_view, features = [], None
                if flag:
                    plain, features = self.predict_views_with_features([v[0] for v in views])
                    per_view.append(plain)
                per_view += [self.predict_views([v[i] for v in views]) for i in range(len(per_view), k)]
                for row, classes in zip(good, top_k(np.mean(per_view, axis=0), self.class_names, top)):
                    row.top = classes
                if features is not None:
                    trust.annotate(good, features, reject_ood)
            rows += slots
        return rows

    def predict_files(
        self, paths: Sequence[str | os.PathLike], top: int = 5, tta: str = "none"
    ) -> list[Prediction]:
        files = expand_paths(paths)
        return self.predict([(f, f) for f in files], top, tta=tta)
