"""Building a model around a checkpoint: a file, ``"imagenet"``, a timm tag or a run folder.

Registry-free: ``models.registry.create_model(name, weights=...)`` calls :func:`build_pretrained`
with its own ``create_model`` (which builds ``name`` with random weights) and ``get_model_cfg``.
"""

from __future__ import annotations

import json
import os
from functools import partial
from pathlib import Path
from typing import Any

from torch import nn

from ..models.external import fetch_timm_weights
from .files import load_weights_file
from .imagenet import fetch_imagenet_weights
from .matching import fitting_kwargs, load_state_dict_into
from .normalization import effective_normalization
from .runs import CreateModel, GetModelCfg, run_dir_of, start_from_run


def build_pretrained(
    name: str,
    weights: str | os.PathLike,
    create_model: CreateModel,
    get_model_cfg: GetModelCfg,
    num_classes: int = 1000,
    in_chans: int = 3,
    *,
    mean: Any = None,
    std: Any = None,
    normalize: str | None = None,
    **kwargs,
) -> nn.Module:
    """:func:`convnets.weights.create_pretrained` with the registry's functions handed in."""
    cfg = get_model_cfg(name)
    layouts = [cfg.extra["torchvision_kwargs"]] if cfg.extra.get("torchvision_kwargs") else []
    source_norm = (tuple(cfg.mean), tuple(cfg.std))
    input_hw = list(cfg.input_size[1:])

    if name.startswith("timm/") and isinstance(weights, str) and not _is_local(weights):
        # "imagenet" or a timm pretrained tag ("a1_in1k"): timm's weights from the Hugging Face hub
        path, tag_cfg, source = fetch_timm_weights(name, weights)
        state, _ = load_weights_file(path)
        source_norm = (tuple(tag_cfg.mean), tuple(tag_cfg.std))
        input_hw = list(tag_cfg.input_size[1:])
    elif isinstance(weights, str) and weights.lower() == "imagenet":
        path, entry = fetch_imagenet_weights(name, cfg.torchvision)
        state, _ = load_weights_file(path)
        preprocess = entry.transforms()
        source_norm = (tuple(preprocess.mean), tuple(preprocess.std))
        input_hw = [preprocess.crop_size[0]] * 2
        kwargs = {**(layouts[0] if layouts else {}), **kwargs}  # the layout the file was trained in
        layouts = []
        source = f"imagenet: torchvision {entry} ({path.name})"
    elif (run_dir := run_dir_of(weights)) is not None:
        return start_from_run(
            name, run_dir, create_model, get_model_cfg, num_classes, in_chans, kwargs, mean, std, normalize
        )
    else:
        path = Path(weights)
        state, metadata = load_weights_file(path)
        saved = json.loads(metadata.get("pretrained_cfg", "{}"))
        if "mean" in saved and "std" in saved:
            source_norm = (tuple(saved["mean"]), tuple(saved["std"]))
        source = str(path)

    kwargs = fitting_kwargs(partial(create_model, name), state, num_classes, in_chans, kwargs, layouts)
    model = create_model(name, num_classes=num_classes, in_chans=in_chans, **kwargs)
    load_state_dict_into(model, state, source=source)
    m, s = effective_normalization(source_norm, in_chans, mean, std, normalize)
    model.pretrained_cfg = {
        "mean": m,
        "std": s,
        "input_size": [in_chans, *input_hw],
        "source": source,
        "num_classes": num_classes,
        "model_kwargs": kwargs,
    }
    return model


def _is_local(weights: str) -> bool:
    """A path (file or run folder) rather than a name such as "imagenet" or a timm tag."""
    suffixes = (".safetensors", ".pth", ".pt", ".bin")
    return os.sep in weights or Path(weights).exists() or Path(weights).suffix in suffixes
