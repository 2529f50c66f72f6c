"""How the apps open a run's exported model: the engine asked for, and what is done when it cannot run.

``predict`` and the server call :func:`choose_engine` and only print its note: whether ``--backend auto``
gives up the export for the PyTorch model, or the server gives up the out-of-distribution field, is
decided here, once.
"""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Callable
from dataclasses import dataclass

from ..export_record import EngineError, ExportError, ExportMismatchError
from .exported_model import ExportedModel


@dataclass(frozen=True)
class EngineChoice:
    """The exported model to run, or None where the caller is to run the PyTorch model instead; ``note``:
    one line for the user on what was given up and why (None: nothing worth telling)."""

    model: ExportedModel | None
    note: str | None = None


def choose_engine(
    run_dir: str | os.PathLike,
    backend: str = "auto",
    *,
    images: int | None = None,
    threads: int | None = None,
    spin: bool = True,
    features: bool = False,
    features_optional: bool = False,
    pytorch_fallback: bool = False,
    log: Callable[[str], None] | None = None,
) -> EngineChoice:
    """The run's exported model on ``backend`` (:meth:`ExportedModel.open`, exporting first if needed).

    ``pytorch_fallback`` (``predict``, which can run the PyTorch model): under ``auto``, an export that
    cannot be used gives ``model=None`` -- ONNX Runtime not installed or no engine opens (silently), or
    the export itself refused (a read-only run folder without the run's own export) or failing its
    check against PyTorch (with a note saying so). ``features_optional`` (the server): a graph whose
    penultimate features cannot be found is opened without them, and the note says rows will have no
    ``ood`` field. An engine asked for by name that cannot run raises :class:`EngineError` naming
    ``--backend``; a foreign or stale export that cannot be replaced raises :class:`ExportMismatchError`.
    """
    if backend == "auto" and pytorch_fallback and importlib.util.find_spec("onnxruntime") is None:
        return EngineChoice(None)

    def open_model(with_features: bool) -> ExportedModel:
        return ExportedModel.open(
            run_dir, backend, threads=threads, images=images, log=log, spin=spin, features=with_features
        )

    note = None
    try:
        try:
            model = open_model(features)
        except EngineError as e:
            # A stranger's export is refused whatever was asked; a graph without a features output is
            # served without them where they are optional.
            if not (features and features_optional) or isinstance(e, ExportMismatchError):
                raise
            note = f"rows will have no ood field: {e}"
            model = open_model(False)
    except (EngineError, ExportError, ImportError) as e:
        if backend == "auto" and pytorch_fallback:
            if isinstance(e, (ExportMismatchError, ExportError)):  # the export itself: say why it is not run
                return EngineChoice(None, f"not using the exported model ({e}); running PyTorch")
            return EngineChoice(None)  # an engine missing here (ONNX Runtime, a features output): quietly
        if backend != "auto" and isinstance(e, EngineError) and not isinstance(e, ExportMismatchError):
            raise EngineError(f"--backend {backend}: {e}") from e
        raise
    return EngineChoice(model, note)
