"""The entry points that take a model *name* (or a run folder naming one) and so look it up in the
registry: they sit above :mod:`convnets.models`, whose ``create_model(weights=...)`` uses the
registry-free rest of this package."""

from __future__ import annotations

import os
from typing import Any

import torch
from torch import nn

from ..base.runs import RunConfig
from ..models import create_model, get_model_cfg
from .imagenet import imagenet_weights_entry
from .runs import load_run_with


def create_pretrained(
    name: str,
    weights: str | os.PathLike,
    num_classes: int = 1000,
    in_chans: int = 3,
    *,
    mean: Any = None,
    std: Any = None,
    normalize: str | None = None,
    **kwargs,
) -> nn.Module:
    """Build ``name`` and load ``weights``: a torchvision state dict (``.pth``, e.g. from its hub
    cache), a ``.safetensors`` file, a run folder (or its ``model.safetensors``), or ``"imagenet"``
    (torchvision's default ImageNet weights, downloaded or taken from the hub cache).

    A different ``num_classes`` replaces the head, ``in_chans`` other than the checkpoint's adapts
    the first convolution (both with a warning). ``mean``/``std`` or ``normalize="imagenet"|
    "inception"`` override the normalisation stored in ``model.pretrained_cfg``.
    """
    return create_model(
        name,
        num_classes=num_classes,
        in_chans=in_chans,
        weights=weights,
        mean=mean,
        std=std,
        normalize=normalize,
        **kwargs,
    )


def load_run(
    run_dir: str | os.PathLike, device: str | torch.device = "cpu", **overrides
) -> tuple[nn.Module, RunConfig]:
    """Rebuild a trained model from its run folder: ``(model in eval mode, RunConfig)``.

    The architecture comes from ``config.json`` (``model``, ``num_classes``, ``in_chans``,
    ``model_kwargs``; ``head == "transfer"`` means the head was replaced with ``reset_classifier``),
    the weights from ``model.safetensors``, loaded strictly. ``overrides`` are extra builder kwargs
    (``in_chans`` here adapts the first convolution). Raises :class:`RunLoadError` for a folder that
    is not a loadable run.
    """
    return load_run_with(run_dir, create_model, get_model_cfg, device, **overrides)


def imagenet_weights_url(name: str):
    """torchvision's default ImageNet weights entry (a ``WeightsEnum`` member with ``.url``) for ``name``."""
    return imagenet_weights_entry(name, get_model_cfg(name).torchvision)
