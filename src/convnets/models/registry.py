"""Model registry: ``create_model(name, ...)`` and ``list_models()`` (timm-style)."""

from __future__ import annotations

import difflib
import fnmatch
import inspect
from collections.abc import Callable

from torch import nn

from ..weights.pretrained import build_pretrained
from .base import ModelCfg
from .external import create_external, external_cfg, is_external, list_external

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


def list_models(pattern: str | None = None, all: bool = False) -> list[str]:  # noqa: A002 - timm's name
    """Registered model names, optionally filtered by a glob pattern (``"resnet*"``); ``all`` adds
    every ``torchvision/NAME`` classifier and, when timm is installed, every ``timm/NAME``."""

    names = [n for n in sorted(_MODELS) if pattern is None or fnmatch.fnmatch(n, pattern)]
    if all:
        names += list_external(pattern)
    return names


def get_model_cfg(name: str) -> ModelCfg:
    if is_external(name):
        return external_cfg(name)
    if name not in _CFGS:
        raise KeyError(_unknown(name))
    return _CFGS[name]


def _unknown(name: str) -> str:

    close = difflib.get_close_matches(name, list(_MODELS), n=3)
    hint = f" Did you mean {', '.join(close)}?" if close else ""
    return f"unknown model {name!r}.{hint} See `convnets models` for the list."


def builder_defaults(name: str) -> tuple[int, int]:
    """``(num_classes, in_chans)`` a model is published with: its builder's own defaults
    (LeNet-5: 10 classes, 1 channel; CIFAR ResNets: 10, 3; ImageNet models: 1000, 3)."""

    if is_external(name):
        get_model_cfg(name)  # an unknown name fails here, with suggestions
        return 1000, 3
    if name not in _MODELS:
        raise KeyError(_unknown(name))
    params = inspect.signature(_MODELS[name]).parameters

    def default(arg: str, fallback: int) -> int:
        p = params.get(arg)
        return p.default if p is not None and isinstance(p.default, int) else fallback

    return default("num_classes", 1000), default("in_chans", 3)


def create_model(
    name: str,
    num_classes: int | None = None,
    in_chans: int | None = None,
    weights: str | None = None,
    **kwargs,
) -> nn.Module:
    """Build a registered model; ``weights`` is a checkpoint path, a run folder, or ``"imagenet"``.

    ``num_classes``/``in_chans`` left as None take the model's published defaults (1000 classes and
    3 channels for the ImageNet models, 10 classes for LeNet-5 and the CIFAR ResNets, 1 channel for
    LeNet-5).
    """
    default_classes, default_chans = builder_defaults(name)
    num_classes = default_classes if num_classes is None else num_classes
    in_chans = default_chans if in_chans is None else in_chans
    if weights is not None:  # built through this registry, then loaded: see convnets/weights/__init__.py
        return build_pretrained(name, weights, create_model, get_model_cfg, num_classes, in_chans, **kwargs)
    if is_external(name):  # timm/NAME, torchvision/NAME: see models/external.py
        return create_external(name, num_classes=num_classes, in_chans=in_chans, **kwargs)
    model = _MODELS[name](num_classes=num_classes, in_chans=in_chans, **kwargs)
    model.model_name = name
    return model
