"""``RUN_DIR/model.onnx`` as the engines open it: exported once (with torch), again when the weights change.

The export is written by :func:`convnets.deploy.export.export_run`, which records it in ``export.json``
(:mod:`convnets.deploy.export_record`); here the record is read, and torch is imported only when the file
is missing or is not the run's. Where the run folder cannot be written, a stale or foreign export is
refused (:class:`ExportMismatchError`), never run.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

from ...base.errors import can_write_in, os_error_message
from ...base.runs import ONNX_FILE, RunConfig, weights_path
from ..export_record import ExportMismatchError, export_problem


def ensure_exported(
    run_dir: str | os.PathLike, *, opset: int = 17, log: Callable[[str], None] | None = None
) -> Path:
    """``RUN_DIR/model.onnx``, exported (with torch, once) unless the run's own export is already
    there; :class:`ExportMismatchError` when it is not and the run folder cannot be written."""
    run_dir = Path(run_dir)
    config = RunConfig.read(run_dir)
    weights_path(run_dir)
    problem = export_problem(run_dir, config)
    if problem is None:
        return run_dir / ONNX_FILE
    if not can_write_in(run_dir):
        raise ExportMismatchError(f"{problem}; {run_dir} is read-only, so it cannot be exported again")
    from ..export import export_run  # start-up: torch only when an export must be written

    if log is not None:
        why = "" if not (run_dir / ONNX_FILE).exists() else f": {problem}"
        log(f"exporting {run_dir / ONNX_FILE} (once; later runs start without torch){why}")
    try:
        result = export_run(run_dir, "onnx", run_dir / ONNX_FILE, opset=opset)  # records export.json
    except PermissionError as e:  # the probe passed, the write did not (a quota, an ACL)
        raise ExportMismatchError(f"{problem}; cannot export it again: {os_error_message(e)}") from None
    return result.path
