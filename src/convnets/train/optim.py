"""The optimizer and its learning-rate schedule: what ``convnets train`` steps with in each phase."""

from __future__ import annotations

import math

import torch
from torch import nn

from .options import TrainOptions


def lr_factor(schedule: str, step: int, total: int, warmup: int) -> float:
    """Multiplier of the peak learning rate at optimizer step ``step`` of ``total``.

    ``warmup`` steps ramp linearly up to the peak first. cosine: half a cosine down to 0; step: x0.1
    at 50% and 75% of training (the CIFAR ResNet recipe); onecycle: up from peak/25 over the warm-up
    (30% of the steps when none is given) then cosine down to peak/25e4 (Smith's 1cycle, without
    momentum cycling); constant: the peak throughout.
    """
    total = max(total, 1)
    if schedule == "onecycle":
        warmup = warmup or max(1, int(0.3 * total))
        start, end = 1 / 25, 1 / 25e4
        if step < warmup:
            return start + (1 - start) * step / warmup
        t = min(1.0, (step - warmup) / max(1, total - warmup))
        return end + (1 - end) * 0.5 * (1 + math.cos(math.pi * t))
    if step < warmup:
        return (step + 1) / warmup
    t = min(1.0, (step - warmup) / max(1, total - warmup))
    if schedule == "cosine":
        return 0.5 * (1 + math.cos(math.pi * t))
    if schedule == "step":
        return 0.1 ** ((t >= 0.5) + (t >= 0.75))
    return 1.0


def build_optimizer(
    params: list[nn.Parameter], opts: TrainOptions, lr: float, device: torch.device | None = None
) -> torch.optim.Optimizer:
    """No weight decay on biases and BatchNorm/LayerNorm scales (1-d tensors), as in timm and the
    ResNet/EfficientNet recipes: decaying them only fights the normalisation.

    On CPU and CUDA the fused implementations run the whole update in one pass over each tensor
    instead of torch's default of a dozen element-wise passes: measured on this CPU, AdamW's step for
    VGG-16's 138M parameters went from 0.52 s to 0.08 s (bench/RESULTS.md, "Training defaults").
    """
    decay = [p for p in params if p.ndim > 1]
    no_decay = [p for p in params if p.ndim <= 1]
    groups = [{"params": decay, "weight_decay": opts.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    groups = [g for g in groups if g["params"]]
    device = device if device is not None else (params[0].device if params else torch.device("cpu"))
    fused = {"fused": True} if device.type in ("cpu", "cuda") else {}
    if opts.optimizer == "sgd":
        nesterov = opts.nesterov and opts.momentum > 0
        return torch.optim.SGD(groups, lr=lr, momentum=opts.momentum, nesterov=nesterov, **fused)
    if opts.optimizer == "adam":
        return torch.optim.Adam(groups, lr=lr, **fused)
    return torch.optim.AdamW(groups, lr=lr, **fused)


def build_schedule(
    optimizer: torch.optim.Optimizer, opts: TrainOptions, steps_per_epoch: int, epochs: int
) -> torch.optim.lr_scheduler.LambdaLR:
    """``opts.schedule`` over a phase of ``epochs`` epochs of ``steps_per_epoch`` optimizer steps,
    after ``opts.warmup_epochs`` of warm-up."""
    total = steps_per_epoch * epochs
    warmup = int(round(opts.warmup_epochs * steps_per_epoch))
    schedule = opts.schedule
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_factor(schedule, s, total, warmup))
