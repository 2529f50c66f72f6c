"""Training options: one dataclass, its defaults, and the checks that refuse bad combinations
before any data is read or any model is built.

``TrainOptions`` is what ``convnets train`` parses and what ``convnets.train(**options)`` accepts;
the resolved copy (every ``None`` filled in for the chosen model and data) is saved in the run's
``config.json`` under ``"options"``.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..base import runtime  # read at call time: tests stand in other CPUs through it
from ..base.choices import VAL_TTA_MODES
from ..base.errors import ConvnetsError
from .recipes import RECIPE_NAMES

if TYPE_CHECKING:
    import torch

# torch is imported inside the functions that need hardware answers: the CLI reads TrainOptions and
# the option lists below to build `convnets train --help` without importing torch.

OPTIMIZERS = ("sgd", "adam", "adamw")
SCHEDULES = ("cosine", "step", "onecycle", "constant")
BALANCE_MODES = ("none", "loss", "sampler", "auto")  # imbalanced classes (balance.py)
PRECISIONS = ("auto", "fp32", "bf16", "fp16")
# The bf16 CPU fast path (accel/plan.py): auto uses it where it applies; off trains with plain autocast.
CPU_KERNELS = ("auto", "off")
DEVICES = ("auto", "cpu", "cuda", "mps")
FREEZE_REGIMES = ("none", "base", "auto")

# Learning rates that work out of the box for each optimizer (SGD with momentum 0.9, Adam-style at
# the usual 1e-3), and the matching weight decay (decoupled for AdamW, so a larger value).
DEFAULT_LR = {"sgd": 0.1, "adam": 1e-3, "adamw": 1e-3}
DEFAULT_WEIGHT_DECAY = {"sgd": 5e-4, "adam": 0.0, "adamw": 0.01}

# Native resolution of the built-in datasets: training them at a model's ImageNet size (224) would
# only upsample the same pixels and cost 50x the compute.
BUILTIN_NATIVE_SIZE = {
    "digits": 8,
    "mnist": 28,
    "fashion_mnist": 28,
    "kmnist": 28,
    "cifar10": 32,
    "cifar100": 32,
    "svhn": 32,
    "stl10": 96,
}

# Options a --resume may change; everything else must match the run being resumed.
RESUME_OVERRIDABLE = {
    "epochs",
    "fine_tune_epochs",
    "quiet",
    "workers",
    "device",
    "data_root",
    "resume",
    "overwrite",
    "early_stopping",
}


# What ``--augment auto`` trains with, per regime, chosen by validation accuracy on the shared sets
# (bench/train_recipes.py; bench/RESULTS.md, "Augmentation defaults"). Transfer on alpaca: "light" and
# "standard" cut the fine-tuning overfit (training accuracy 1.000 -> 0.966 / 0.912) but validated no
# better than none (best 0.923 / 0.908 vs 0.923), and none keeps the feature cache exact. From scratch
# (ResNet-50 on SIGNS, 3 seeds): none 0.925, light 0.911, standard 0.827 mean best validation accuracy.
AUTO_AUGMENT = {"scratch": "none", "transfer": "none"}


class TrainConfigError(ConvnetsError, ValueError):
    """An invalid option or combination of options; the message names the option."""


@dataclass
class TrainOptions:
    """Every option of ``convnets train``; ``None`` means "pick the default for this model/data"."""

    # data
    image_size: int | None = None
    in_chans: int | None = None
    val_split: float = 0.2
    seed: int = 0
    batch_size: int = 32
    augment: str = "auto"  # resolved per regime (resolve_augment)
    resize: str | None = None  # crop | letterbox | squash (data/decode.py); None: the data's own default
    normalize: str | None = None
    workers: int | None = None
    data_root: str | None = None
    # model
    model_kwargs: dict[str, Any] = field(default_factory=dict)
    weights: str | None = None
    head_dropout: float = 0.2
    # optimisation
    epochs: int = 10
    lr: float | str | None = None  # "auto": an LR range test before the phase (lr_find.py)
    optimizer: str = "adamw"
    momentum: float = 0.9
    nesterov: bool = True
    weight_decay: float | None = None
    schedule: str = "cosine"
    warmup_epochs: float = 0.0
    label_smoothing: float = 0.0
    ema: float | None = None  # decay per step of the weights' moving average (validated and saved)
    val_tta: str = "none"  # validation views (none | flip); the run's default for evaluate and predict
    balance: str = "auto"  # imbalanced classes: none, loss, sampler, auto (balance.py)
    grad_accum: int = 1
    early_stopping: int | None = None
    # transfer learning
    freeze: str | None = None
    fine_tune_last: int | None = None
    fine_tune_from: str | None = None
    fine_tune_epochs: int | None = None
    fine_tune_lr_scale: float | str = 0.1  # "auto": the fine-tuning phase runs its own range test
    bn_train: bool = False
    feature_cache: bool = True
    feature_views: int = 1
    # hardware
    device: str = "auto"
    channels_last: bool | None = None
    compile: bool = False
    precision: str = "auto"  # resolved to fp32/bf16 for the hardware (resolve_precision)
    cpu_kernels: str = "auto"  # "off": no hand-written kernels or module rewrites (accel/plan.py)
    # a named recipe (train/recipes.py) fills every option not given explicitly
    recipe: str | None = None
    # run
    resume: bool = False
    overwrite: bool = False
    quiet: bool = False

    @classmethod
    def from_kwargs(cls, **kwargs: Any) -> TrainOptions:
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(kwargs) - names)
        if unknown:
            raise TypeError(f"unknown training option(s): {', '.join(unknown)}")
        return cls(**{k: v for k, v in kwargs.items() if v is not None})

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


# Largest --image-size: one 4096 x 4096 RGB float32 input is 200 MB before any activation; 99999
# asked for 40 GB per image and failed deep in the data layer.
MAX_IMAGE_SIZE = 4096


def check_options(opts: TrainOptions) -> None:
    """Refuse invalid values and combinations that need neither the data nor the model."""

    def bad(option: str, why: str) -> TrainConfigError:
        return TrainConfigError(f"{_flag(option)}: {why}")

    choices = {
        "optimizer": OPTIMIZERS,
        "schedule": SCHEDULES,
        "precision": PRECISIONS,
        "cpu_kernels": CPU_KERNELS,
        "device": DEVICES,
        "balance": BALANCE_MODES,
    }
    for name, allowed in choices.items():
        if getattr(opts, name) not in allowed:
            raise bad(name, f"must be one of {', '.join(allowed)}, got {getattr(opts, name)!r}")
    if opts.recipe is not None:
        if opts.recipe not in RECIPE_NAMES:
            raise bad("recipe", f"must be one of {', '.join(RECIPE_NAMES)}, got {opts.recipe!r}")
    if opts.resize is not None:
        from ..data.decode import resize_mode  # start-up: numpy on first use

        try:
            resize_mode(opts.resize)
        except ValueError as e:
            raise bad("resize", str(e).removeprefix("resize ")) from None
    if opts.freeze is not None and opts.freeze not in FREEZE_REGIMES:
        raise bad("freeze", f"must be one of {', '.join(FREEZE_REGIMES)}, got {opts.freeze!r}")
    positive = ["epochs", "batch_size", "grad_accum", "feature_views"]
    for name in positive:
        if int(getattr(opts, name)) < 1:
            raise bad(name, f"must be at least 1, got {getattr(opts, name)}")
    for name in ("fine_tune_epochs", "early_stopping", "fine_tune_last", "image_size"):
        value = getattr(opts, name)
        if value is not None and value < 1:
            raise bad(name, f"must be at least 1, got {value}")
    if opts.image_size is not None and opts.image_size > MAX_IMAGE_SIZE:
        raise bad("image_size", f"at most {MAX_IMAGE_SIZE} pixels a side, got {opts.image_size}")
    if not 0.0 <= opts.val_split < 1.0:
        raise bad("val_split", f"must be in [0, 1), got {opts.val_split}")
    if opts.lr is not None and opts.lr != "auto" and not (_is_number(opts.lr) and opts.lr > 0):
        raise bad("lr", f"must be a positive number or auto, got {opts.lr!r}")
    if opts.weight_decay is not None and opts.weight_decay < 0:
        raise bad("weight_decay", f"must be >= 0, got {opts.weight_decay}")
    if not 0.0 <= opts.label_smoothing < 1.0:
        raise bad("label_smoothing", f"must be in [0, 1), got {opts.label_smoothing}")
    if opts.ema is not None and not (_is_number(opts.ema) and 0.0 < opts.ema < 1.0):
        raise bad("ema", f"must be a decay in (0, 1), e.g. 0.999, got {opts.ema!r}")
    if opts.val_tta not in VAL_TTA_MODES:
        raise bad("val_tta", f"must be one of {', '.join(VAL_TTA_MODES)}, got {opts.val_tta!r}")
    if not 0.0 <= opts.head_dropout < 1.0:
        raise bad("head_dropout", f"must be in [0, 1), got {opts.head_dropout}")
    if opts.warmup_epochs < 0:
        raise bad("warmup_epochs", f"must be >= 0, got {opts.warmup_epochs}")
    scale = opts.fine_tune_lr_scale
    if scale != "auto" and not (_is_number(scale) and scale > 0):
        raise bad("fine_tune_lr_scale", f"must be a positive number or auto, got {scale!r}")
    if opts.workers is not None and opts.workers < 0:
        raise bad("workers", f"must be >= 0, got {opts.workers}")

    # Transfer-learning combinations.
    fine_tune = opts.fine_tune_last is not None or opts.fine_tune_from is not None
    if opts.fine_tune_last is not None and opts.fine_tune_from is not None:
        raise bad("fine_tune_from", "give either --fine-tune-last or --fine-tune-from, not both")
    if opts.weights is None:
        for name in ("fine_tune_last", "fine_tune_from", "fine_tune_epochs"):
            if getattr(opts, name) is not None:
                raise bad(name, "needs --weights: fine-tuning continues from pretrained weights")
        if opts.freeze in ("base", "auto"):
            raise bad(
                "freeze",
                f"--freeze {opts.freeze} needs --weights (a randomly initialised base "
                "has nothing worth freezing)",
            )
    if opts.freeze == "none" and (fine_tune or opts.fine_tune_epochs is not None):
        raise bad(
            "freeze", "--freeze none already trains every layer; drop --fine-tune-* or use --freeze base"
        )
    if opts.fine_tune_epochs is not None and not fine_tune and opts.freeze != "auto":
        raise bad("fine_tune_epochs", "needs --fine-tune-last N or --fine-tune-from LAYER (what to unfreeze)")
    if opts.bn_train and not (fine_tune or opts.freeze == "auto"):
        raise bad("bn_train", "only applies to the fine-tuning phase (--fine-tune-last/--fine-tune-from)")
    if opts.early_stopping is not None and opts.val_split == 0:
        raise bad("early_stopping", "needs a validation split (--val-split > 0)")

    # Precision: refuse what the hardware cannot do natively instead of silently running slow.
    import torch  # start-up: torch on first use

    device = resolve_device(opts.device)
    if opts.precision == "fp16" and device.type == "cpu":
        raise bad("precision", "fp16 needs a GPU (cuda or mps); CPUs have no fast fp16 arithmetic. Use fp32")
    if opts.precision == "bf16":
        if device.type == "cuda" and not torch.cuda.is_bf16_supported():
            raise bad("precision", f"bf16 is not supported natively by {torch.cuda.get_device_name(device)}")
        if device.type == "cpu":
            if not runtime.cpu_has_native_bf16():
                raise bad(
                    "precision",
                    "this CPU has no native bf16 (avx512_bf16/amx_bf16): autocast would "
                    "emulate it and train 5-10x slower than fp32. Use --precision fp32",
                )
    if opts.compile and not hasattr(torch, "compile"):
        raise bad("compile", "this PyTorch has no torch.compile")


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def number_or_auto(text: str) -> float | str:
    """``--lr``/``--fine-tune-lr-scale`` on the command line: a number, or ``auto``."""
    if text.strip().lower() == "auto":
        return "auto"
    try:
        return float(text)
    except ValueError:
        raise ValueError(f"expected a number or auto, got {text!r}") from None


def resolve_augment(opts: TrainOptions) -> str:
    """``auto`` -> the preset measured best for the run's regime: from scratch, or from ``--weights``
    (head on cached features, then fine-tuning); other specs pass through."""
    if opts.augment != "auto":
        return opts.augment
    return AUTO_AUGMENT["scratch" if opts.weights is None else "transfer"]


def resolve_precision(
    precision: str, device: torch.device, model=None, image_size: int | None = None, in_chans: int = 3
) -> tuple[str, str]:
    """``auto`` -> bf16 or fp32 for ``model`` on ``device`` (``runtime.auto_precision``: bf16 where it
    was measured faster and as accurate), with the reason for the run's log line; other values pass
    through. On CPUs with bf16 instructions the model's multiply-adds at ``image_size`` decide (one
    batch-1 pass)."""
    if precision != "auto":
        return precision, "requested"

    macs = None
    if device.type == "cpu" and model is not None and image_size and runtime.cpu_has_native_bf16():
        from ..cost import model_cost  # start-up: torch on first use

        try:
            macs = float(model_cost(model, image_size, in_chans).macs)
        except Exception as e:  # noqa: BLE001 - a model the cost pass cannot run: keep fp32, say why
            return "fp32", f"bf16 CPU, but the model's size could not be measured ({type(e).__name__})"
    return runtime.auto_precision(device.type, model, macs)


def resolve_device(name: str) -> torch.device:
    """``auto`` -> cuda (LOCAL_RANK's GPU under torchrun), else mps, else cpu; refuse absent hardware."""

    import torch  # start-up: torch on first use

    if name == "auto":
        if torch.cuda.is_available():
            name = "cuda"
        elif getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            name = "mps"
        else:
            name = "cpu"
    if name == "cuda":
        if not torch.cuda.is_available():
            raise TrainConfigError("--device: cuda requested but no CUDA GPU is available")
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
    if name == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise TrainConfigError("--device: mps requested but Apple's Metal backend is not available")
    return torch.device(name)


def default_image_size(source: str | Path, model_cfg, requested: int | None) -> int:
    """The model's published size, unless the data is a small built-in set (then its native size,
    raised to the model's minimum): digits -> 32 for lenet5, cifar10 -> 32 for a ResNet."""
    min_size = int(model_cfg.min_size)
    if requested is not None:
        if requested < min_size:
            raise TrainConfigError(
                f"--image-size: {requested} is below the model's minimum input size "
                f"{min_size} (its downsampling would leave no pixels)"
            )
        return int(requested)
    model_size = int(model_cfg.input_size[-1])
    native = None
    if not Path(str(source)).exists():
        from ..data.builtin import builtin_name  # start-up: torch on first use

        native = BUILTIN_NATIVE_SIZE.get(builtin_name(str(source)) or "")
    if native is not None and native < model_size:
        # Upsampling tiny images a little helps (LeNet-5 was designed for 28x28 digits padded to 32x32);
        # beyond 32 it only costs compute.
        return min(model_size, max(native, min_size, 32))
    return model_size
