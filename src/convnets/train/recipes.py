"""Named training recipes (``convnets train --recipe NAME``): every hyper-parameter of a published or
measured recipe, filled in wherever the user did not set the option explicitly.

A recipe is a table of choices, one row per :class:`~convnets.train.options.TrainOptions` field, each
with the reason it is there, so a later session can change one row and measure it. The run records the
recipe's name in ``options["recipe"]`` and, in ``config.json["recipe"]``, the values it trained with
and which of them the user overrode (:func:`recipe_record`).

Torch-free: the CLI lists the names from here for ``--help``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Choice:
    """One row of a recipe: the option's value and why."""

    value: Any
    why: str


@dataclass(frozen=True)
class Recipe:
    name: str
    summary: str
    choices: dict[str, Choice]
    # What the recipe would also use but the trainer does not offer yet (named, not silently dropped).
    missing: dict[str, str] = field(default_factory=dict)

    def values(self) -> dict[str, Any]:
        return {name: c.value for name, c in self.choices.items()}


HE2015 = Recipe(
    name="he2015",
    summary="He et al. 2015 (arXiv:1512.03385) section 4.2, CIFAR-10: SGD 0.1, /10 at 50% and 75%",
    choices={
        "optimizer": Choice("sgd", "SGD with momentum"),
        "momentum": Choice(0.9, "momentum 0.9"),
        "nesterov": Choice(False, "plain (heavy-ball) momentum, as in the paper's Torch/Caffe code"),
        "lr": Choice(0.1, "learning rate 0.1"),
        "weight_decay": Choice(1e-4, "weight decay 1e-4"),
        "batch_size": Choice(128, "mini-batch 128"),
        "schedule": Choice(
            "step", "divided by 10 at 32k and 48k of 64k iterations = 50% and 75% of --epochs"
        ),
        "warmup_epochs": Choice(0.0, "no warm-up (the paper warms up only its 110-layer net)"),
        "epochs": Choice(164, "64k iterations of batch 128 on 50k images"),
        "label_smoothing": Choice(0.0, "plain cross-entropy"),
        "augment": Choice("crop:4,hflip", "4-pixel zero padding, random 32x32 crop, horizontal flip"),
        "normalize": Choice("mean", "mean subtracted (per channel; the paper's is per pixel), no scaling"),
        "resize": Choice("resize", "images at their native 32x32: no upscaling, one view at test time"),
        "val_split": Choice(0.1, "45k/5k train/validation split, as the paper's analysis runs"),
        "precision": Choice(
            "auto", "bf16 where the CPU has bf16 instructions (1.44x here; fp32's accuracy), else fp32"
        ),
        "val_tta": Choice("none", "one view at test time"),
    },
    missing={
        "weight decay on BatchNorm and biases": "the trainer never decays 1-d tensors (timm's practice)",
        "per-pixel mean image": "per-channel mean instead (three numbers that evaluate/export/serve carry)",
    },
)

# The speed-training literature's choices (Smith's one-cycle; Goyal et al.'s linear lr scaling;
# Szegedy et al.'s label smoothing; Page's and Keller Jordan's CIFAR-10 speed runs). Each row is
# one knob to measure: bench/RESULTS.md records what each one measured on these CPUs.
FAST = Recipe(
    name="fast",
    summary="one-cycle SGD, batch 256 at lr 0.2 (linear scaling), label smoothing 0.1, 60 epochs",
    choices={
        "optimizer": Choice("sgd", "SGD generalises better than Adam on CIFAR ResNets"),
        "momentum": Choice(0.9, "standard"),
        "nesterov": Choice(True, "Nesterov momentum: slightly faster convergence at no cost"),
        "batch_size": Choice(256, "bf16 img/s within 4% of batch 512's, twice the steps per epoch"),
        "lr": Choice(0.2, "0.1 x 256/128 (linear scaling rule)"),
        "weight_decay": Choice(5e-4, "stronger decay for the short schedule (speed-run practice)"),
        "schedule": Choice("onecycle", "one-cycle: warm-up then cosine annealing to ~0"),
        "warmup_epochs": Choice(0.0, "0 = one-cycle's own 30% ramp"),
        "epochs": Choice(
            60, "33 min here in bf16: 0.876 one view (0.889 flips), past he2015's 164 epochs (0.873, 88 min)"
        ),
        "label_smoothing": Choice(0.1, "label smoothing 0.1"),
        "augment": Choice("crop:4,hflip", "the paper's augmentation: cheap on the uint8 cache"),
        "normalize": Choice("dataset", "per-channel mean and std"),
        "resize": Choice("resize", "native 32x32"),
        "val_split": Choice(0.1, "45k/5k"),
        "channels_last": Choice(True, "NHWC: oneDNN's fast convolution layout on AVX-512 CPUs"),
        "precision": Choice(
            "auto", "bf16 where the CPU has bf16 instructions (AMX, AVX512-BF16: ResNet-20 1.44x) or a GPU"
        ),
        "val_tta": Choice(
            "flip", "validate on the image and its mirror (+0.7 points at 30 epochs: 0.867 -> 0.874)"
        ),
    },
    missing={
        "EMA weights": "`--ema 0.99` measured at 15 epochs: 0.844 vs 0.846, no gain at one-cycle's end",
        "Lookahead": "not in the trainer",
    },
)

RECIPES: dict[str, Recipe] = {r.name: r for r in (HE2015, FAST)}
RECIPE_NAMES = tuple(RECIPES)


def get_recipe(name: str) -> Recipe:
    try:
        return RECIPES[name]
    except KeyError:
        raise ValueError(f"unknown recipe {name!r}; choose from {', '.join(RECIPE_NAMES)}") from None


def apply_recipe(options: dict[str, Any]) -> dict[str, Any]:
    """``options`` (the explicitly given ones, ``None`` = not given) with the recipe named in
    ``options["recipe"]`` filling every option the user left unset. No recipe: unchanged."""
    name = options.get("recipe")
    if name is None:
        return dict(options)
    recipe = get_recipe(name)
    out = dict(options)
    for key, value in recipe.values().items():
        if out.get(key) is None:
            out[key] = value
    return out


def recipe_record(name: str, resolved: dict[str, Any]) -> dict[str, Any]:
    """What config.json records: the recipe, the values the run used for each of its rows, and the
    rows the user overrode (value differs from the recipe's; ``auto`` rows are resolved, not overridden)."""
    recipe = get_recipe(name)
    values = {k: resolved.get(k) for k in recipe.choices}
    overridden = {
        k: {"recipe": c.value, "used": values[k]}
        for k, c in recipe.choices.items()
        if c.value not in ("auto", None) and values[k] != c.value
    }
    return {
        "name": name,
        "summary": recipe.summary,
        "values": values,
        "overridden": overridden,
        "missing": dict(recipe.missing),
    }
