"""Run folders: rebuild a trained model from ``config.json`` + ``model.safetensors``, or start a new
model from one (another head, other input channels).

Registry-free: the caller hands in the registry's ``create_model`` and ``get_model_cfg``
(:func:`convnets.weights.load_run` does), so ``models.registry`` can use this module for
``create_model(name, weights=RUN_DIR)``.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable
from functools import partial
from pathlib import Path

import torch
from torch import nn

from ..base.errors import WeightsError, error_text
from ..base.runs import CONFIG_FILE, WEIGHTS_FILE, RunConfig, RunFolderError
from ..models.base import ModelCfg
from .files import load_weights_file
from .matching import fitting_kwargs, load_state_dict_into
from .normalization import effective_normalization

CreateModel = Callable[..., nn.Module]  # models.create_model without weights=
GetModelCfg = Callable[[str], ModelCfg]  # models.get_model_cfg


class RunLoadError(WeightsError, RunFolderError):
    """A run folder that cannot be loaded (missing, not a run, bad config.json, newer schema): a
    ``RunFolderError`` that ``load_run``'s callers may also catch as a WeightsError."""


def run_dir_of(weights: str | os.PathLike) -> Path | None:
    """The run folder ``weights`` names (the folder, or its model.safetensors), else None."""
    path = Path(weights)
    if path.is_dir():
        return path
    if path.name == WEIGHTS_FILE and (path.parent / CONFIG_FILE).is_file():
        return path.parent
    return None


def read_config(run_dir: Path) -> RunConfig:
    try:
        return RunConfig.read(run_dir)
    except RunFolderError as e:
        raise RunLoadError(str(e)) from None


def load_run_with(
    run_dir: str | os.PathLike,
    create_model: CreateModel,
    get_model_cfg: GetModelCfg,
    device: str | torch.device = "cpu",
    **overrides,
) -> tuple[nn.Module, RunConfig]:
    """:func:`convnets.weights.load_run` with the registry's functions handed in."""
    run_dir = Path(run_dir)
    config = read_config(run_dir)
    weights_path = run_dir / WEIGHTS_FILE
    if not weights_path.is_file():
        raise RunLoadError(f"{run_dir} is not a run folder: {WEIGHTS_FILE} is missing")
    run_chans = config.in_chans
    in_chans = int(overrides.pop("in_chans", run_chans))
    model_kwargs = {**config.model_kwargs, **overrides}
    num_classes = config.num_classes
    transfer, dropout = config.head == "transfer", config.head_dropout
    try:
        cfg = get_model_cfg(config.model)
    except (KeyError, ImportError) as e:  # an unknown name, or a timm/ model without timm installed
        raise RunLoadError(f"{run_dir / CONFIG_FILE}: model: {error_text(e)}") from None
    state, _ = load_weights_file(weights_path)
    # A run fine-tuned from torchvision's GoogLeNet has its layout (tv_layout, no side heads) even if
    # config.json's model_kwargs do not say so: rebuild the layout the weights have.
    layouts = [cfg.extra["torchvision_kwargs"]] if cfg.extra.get("torchvision_kwargs") else []
    model_kwargs = fitting_kwargs(
        partial(create_model, config.model),
        state,
        num_classes,
        run_chans,
        model_kwargs,
        layouts,
        dropout,
        transfer,
    )
    model = create_model(config.model, num_classes=num_classes, in_chans=in_chans, **model_kwargs)
    if transfer:
        model.reset_classifier(num_classes, **({} if dropout is None else {"dropout": dropout}))
    load_state_dict_into(
        model, state, source=str(weights_path), allow_new_head=False, adapt_in_chans=in_chans != run_chans
    )

    m, s = effective_normalization((config.mean or cfg.mean, config.std or cfg.std), in_chans)
    model.pretrained_cfg = {
        "mean": m,
        "std": s,
        "input_size": [in_chans, *config.image_size],
        "source": str(run_dir),
        "num_classes": num_classes,
        "model_kwargs": model_kwargs,
        "class_names": list(config.class_names),
    }
    return model.to(device).eval(), config


def start_from_run(
    name: str,
    run_dir: Path,
    create_model: CreateModel,
    get_model_cfg: GetModelCfg,
    num_classes: int,
    in_chans: int,
    kwargs: dict,
    mean,
    std,
    normalize,
) -> nn.Module:
    """A run folder's model as a starting point: same architecture, new head/in_chans if asked."""
    config = read_config(run_dir)
    if config.model != name:
        raise WeightsError(f"{run_dir} holds a {config.model} model, not {name}")
    model, config = load_run_with(run_dir, create_model, get_model_cfg, in_chans=in_chans, **kwargs)
    if num_classes != config.num_classes:
        dropout = config.head_dropout
        model.reset_classifier(num_classes, **({} if dropout is None else {"dropout": dropout}))
        warnings.warn(
            f"classifier head replaced: {run_dir} was trained for {config.num_classes} classes, "
            f"the new head has {num_classes} (freshly initialised)",
            stacklevel=3,
        )
    m, s = effective_normalization(
        (tuple(model.pretrained_cfg["mean"]), tuple(model.pretrained_cfg["std"])),
        in_chans,
        mean,
        std,
        normalize,
    )
    model.pretrained_cfg.update(mean=m, std=s, num_classes=num_classes)
    return model.train()
