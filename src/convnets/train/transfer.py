"""Transfer learning as the case studies teach it: a new head on a pretrained base, the base frozen
while the head learns, then (optionally) the last layers unfrozen and fine-tuned at a smaller
learning rate.

A training run is a list of :class:`Phase` objects; :func:`plan_phases` turns the options into that
list, :func:`apply_phase` sets ``requires_grad`` for a phase, and :func:`set_bn_modes` keeps frozen
BatchNorm layers in eval mode (so their running statistics stay the pretrained ones).
"""

from __future__ import annotations

import difflib
from collections.abc import Callable
from dataclasses import dataclass

from torch import nn

from .options import TrainConfigError, TrainOptions

# --freeze auto: how many images per class each regime needs (the usual rule of thumb: a small set
# can only fit a linear head without overfitting; a medium set can adapt the last, most
# task-specific stages; a large set can retrain everything).
HEAD_ONLY_BELOW = 100
FINE_TUNE_BELOW = 1000
AUTO_FINE_TUNE_LAST = 2  # stages unfrozen by --freeze auto's middle regime


@dataclass
class Phase:
    """One stretch of training with a fixed set of trainable layers."""

    name: str  # "train" (everything), "head" (base frozen), "finetune" (head + some of the base)
    epochs: int
    lr: float
    unfreeze: str  # "all", "head", "last:N" or "from:LAYER"
    cached: bool = False  # head phase trained on cached pooled features


def choose_regime(images_per_class: float) -> tuple[str, str]:
    """``--freeze auto``: ("head" | "finetune" | "all", the reason in words)."""
    n = f"{images_per_class:.0f} training images per class"
    if images_per_class < HEAD_ONLY_BELOW:
        return "head", f"{n} (< {HEAD_ONLY_BELOW}): freeze the base, train only the new head"
    if images_per_class < FINE_TUNE_BELOW:
        return "finetune", (
            f"{n} (< {FINE_TUNE_BELOW}): train the head on the frozen base, then fine-tune the last stages"
        )
    return "all", f"{n} (>= {FINE_TUNE_BELOW}): enough data to train every layer from the pretrained start"


def plan_phases(
    opts: TrainOptions,
    model: nn.Module,
    images_per_class: float,
    lr: float,
    log: Callable[[str], None] = print,
) -> list[Phase]:
    """The phases this run trains, in order (checks the layer names/counts against ``model``)."""
    fine_tune_epochs = opts.fine_tune_epochs if opts.fine_tune_epochs is not None else opts.epochs
    if opts.weights is None:
        return [Phase("train", opts.epochs, lr, "all")]

    freeze = opts.freeze
    fine_tune_last, fine_tune_from = opts.fine_tune_last, opts.fine_tune_from
    if freeze is None:  # with weights and no choice made: fine-tune flags imply "base", else decide by size
        freeze = "base" if (fine_tune_last or fine_tune_from) else "auto"
    if freeze == "auto":
        regime, why = choose_regime(images_per_class)
        log(f"--freeze auto: {why}")
        if regime == "all":
            return [Phase("train", opts.epochs, lr, "all")]
        if regime == "head":
            fine_tune_last = fine_tune_from = None
        elif fine_tune_last is None and fine_tune_from is None:
            fine_tune_last = min(AUTO_FINE_TUNE_LAST, len(model.stages()))
    if freeze == "none":
        return [Phase("train", opts.epochs, lr, "all")]

    phases = [Phase("head", opts.epochs, lr, "head", cached=opts.feature_cache)]
    if fine_tune_last is not None:
        n_stages = len(model.stages())
        if fine_tune_last > n_stages:
            raise TrainConfigError(
                f"--fine-tune-last: {fine_tune_last} is more than the {n_stages} stages "
                f"of {getattr(model, 'model_name', type(model).__name__)}"
            )
        phases.append(
            Phase("finetune", fine_tune_epochs, lr * opts.fine_tune_lr_scale, f"last:{fine_tune_last}")
        )
    elif fine_tune_from is not None:
        _check_layer(model, fine_tune_from)
        phases.append(
            Phase("finetune", fine_tune_epochs, lr * opts.fine_tune_lr_scale, f"from:{fine_tune_from}")
        )
    return phases


def _check_layer(model: nn.Module, layer: str) -> None:
    names = [n for n, m in model.named_modules() if n and any(True for _ in m.parameters())]
    if layer not in names:
        close = difflib.get_close_matches(layer, names, n=3)
        hint = (
            f" Did you mean {', '.join(close)}?"
            if close
            else f" Layers look like: {', '.join(names[:4])}, ..."
        )
        raise TrainConfigError(f"--fine-tune-from: the model has no layer {layer!r} with parameters.{hint}")


def apply_phase(model: nn.Module, phase: Phase) -> None:
    """Set ``requires_grad`` for ``phase``: the classifier always trains; the base per ``unfreeze``."""
    if phase.unfreeze == "all":
        model.requires_grad_(True)
        return
    model.requires_grad_(False)
    model.get_classifier().requires_grad_(True)
    if phase.unfreeze == "head":
        return
    kind, _, arg = phase.unfreeze.partition(":")
    if kind == "last":
        for stage in model.stages()[-int(arg) :]:
            stage.requires_grad_(True)
    elif kind == "from":
        # Everything from LAYER on, in the order the model registers its parameters (input side first),
        # like Keras' `for layer in base.layers[fine_tune_at:]: layer.trainable = True`.
        prefix = arg + "."
        started = False
        for name, p in model.named_parameters():
            started = started or name.startswith(prefix)
            if started:
                p.requires_grad_(True)
    else:
        raise ValueError(f"unknown unfreeze spec {phase.unfreeze!r}")


def is_batchnorm(module: nn.Module) -> bool:
    return isinstance(module, nn.modules.batchnorm._BatchNorm)


def set_bn_modes(model: nn.Module, phase: Phase, bn_train: bool = False) -> None:
    """Call after ``model.train()``: frozen BatchNorm layers go back to eval mode (running statistics
    untouched); while fine-tuning, every BN layer stays in eval mode unless ``bn_train``."""
    for module in model.modules():
        if not is_batchnorm(module):
            continue
        params = list(module.parameters(recurse=False))
        frozen = bool(params) and not any(p.requires_grad for p in params)
        if phase.name == "head" or frozen or (phase.name == "finetune" and not bn_train):
            module.eval()


def trainable_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def describe_phase(model: nn.Module, phase: Phase) -> str:
    total = sum(p.numel() for p in model.parameters())
    what = {"all": "all layers", "head": "the new head only (base frozen)"}.get(phase.unfreeze)
    if what is None:
        kind, _, arg = phase.unfreeze.partition(":")
        what = (
            f"the head and the last {arg} stage(s)"
            if kind == "last"
            else f"the head and layers from {arg!r} on"
        )
    cached = ", on cached base features" if phase.cached else ""
    return (
        f"phase {phase.name}: {phase.epochs} epoch(s) at lr {phase.lr:.2g}, training {what}{cached} "
        f"({trainable_parameters(model):,} of {total:,} parameters)"
    )
