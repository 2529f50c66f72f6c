"""Model registry: ``create_model(name, ...)`` and ``list_models()`` (timm-style)."""

from __future__ import annotations

from collections.abc import Callable

from torch import nn

from .base import ModelCfg

_MODELS: dict[str, Callable[..., nn.Module]] = {}
_CFGS: dict[str, ModelCfg] = {}


def register_model(name: str, cfg: ModelCfg | None = None):
    """Decorator: register a builder ``fn(num_classes=..., in_chans=..., **kwargs) -> nn.Module``."""

    def wrap(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        if name in _MODELS:
            raise ValueError(f"model {name!r} registered twice")
        _MODELS[name] = fn
        _CFGS[name] = cfg or ModelCfg()
        return fn

    return wrap


def _ensure_loaded() -> None:
    # Importing the package registers every family.
    from . import _families  # noqa: F401


def list_models(pattern: str | None = None) -> list[str]:
    """Registered model names, optionally filtered by a glob pattern (``"resnet*"``)."""
    import fnmatch

    _ensure_loaded()
    names = sorted(_MODELS)
    return [n for n in names if pattern is None or fnmatch.fnmatch(n, pattern)]


def get_model_cfg(name: str) -> ModelCfg:
    _ensure_loaded()
    if name not in _CFGS:
        raise KeyError(_unknown(name))
    return _CFGS[name]


def _unknown(name: str) -> str:
    import difflib

    close = difflib.get_close_matches(name, list(_MODELS), n=3)
    hint = f" Did you mean {', '.join(close)}?" if close else ""
    return f"unknown model {name!r}.{hint} See `convnets models` for the list."


def create_model(
    name: str,
    num_classes: int = 1000,
    in_chans: int = 3,
    weights: str | None = None,
    **kwargs,
) -> nn.Module:
    """Build a registered model; ``weights`` is a checkpoint path, a run folder, or ``"imagenet"``."""
    _ensure_loaded()
    if name not in _MODELS:
        raise KeyError(_unknown(name))
    if weights is not None:
        from ..weights import create_pretrained

        return create_pretrained(name, weights, num_classes=num_classes, in_chans=in_chans, **kwargs)
    model = _MODELS[name](num_classes=num_classes, in_chans=in_chans, **kwargs)
    model.model_name = name
    return model
