"""convnets: build, train, transfer-learn and analyse convolutional image classifiers."""

from __future__ import annotations

from typing import TYPE_CHECKING

from .base import moved

__version__ = "0.1.0"

__all__ = ["__version__", "create_model", "get_model_cfg", "list_models"]

moved.install()  # old module paths (convnets.evaluate, ...) keep importing

if TYPE_CHECKING:
    from .models import create_model, get_model_cfg, list_models


def __getattr__(name: str):
    # Lazy: `import convnets` must not import torch, so the CLI's --help, `predict` on an exported
    # model and the server start without it (torch + torchvision take seconds to import).
    if name in ("create_model", "get_model_cfg", "list_models"):
        from . import models  # start-up: torch on first use

        return getattr(models, name)
    raise AttributeError(f"module 'convnets' has no attribute {name!r}")
