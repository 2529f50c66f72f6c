"""Lazy package exports (PEP 562): ``name -> submodule``, imported on first attribute access.

The data and train packages use it so that their torch-free modules (``data.images``, ``data.decode``,
``train.options``) can be imported without their package ``__init__`` pulling in torch.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable


def lazy_exports(package: str, exports: dict[str, str]) -> tuple[Callable, Callable]:
    """``(__getattr__, __dir__)`` for ``package`` exporting each name from its submodule."""

    def __getattr__(name: str):
        module = exports.get(name)
        if module is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        return getattr(importlib.import_module(f".{module}", package), name)

    def __dir__() -> list[str]:
        return sorted(exports)

    return __getattr__, __dir__
