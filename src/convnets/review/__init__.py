"""``convnets review DATA``: fix what ``doctor`` found, in a page, with every change undoable.

:mod:`~convnets.review.journal` is the data folder under review (checked paths and class names) and
the write-ahead journal of file moves (``DATA/.review-journal.jsonl``; set-aside files go to
``DATA/.quarantine/``); :mod:`~convnets.review.findings` turns doctor's report (and a run's top
losses) into the items the page shows; :mod:`~convnets.review.app` is the Starlette app with the page
(``static/index.html``). Importing this package imports neither torch nor Starlette.
"""

from __future__ import annotations

from typing import Any

from .findings import load_findings
from .journal import JOURNAL_FILE, QUARANTINE_DIR, DataFolder, Journal, ReviewError, check_class_name

__all__ = [
    "JOURNAL_FILE",
    "QUARANTINE_DIR",
    "DataFolder",
    "Journal",
    "ReviewError",
    "check_class_name",
    "create_app",
    "load_findings",
    "undo_all",
]


def undo_all(data: str) -> list:
    """Undo every change a review made to ``data`` (after finishing any step a crash left): the
    folder as it was before. Returns the moves made back."""
    return Journal(DataFolder(data), exclusive=True).undo_all()


def __getattr__(name: str) -> Any:
    if name == "create_app":
        from .app import create_app  # optional: starlette

        return create_app
    if name == "load_findings":
        return load_findings
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
