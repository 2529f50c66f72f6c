"""``convnets train DATA --model NAME --out RUN_DIR``: train or transfer-learn a classifier."""

from __future__ import annotations

import argparse
import dataclasses
import json
import shlex
import sys

from ..base.choices import NORMALIZE_CHOICES, VAL_TTA_MODES
from ..train.options import (
    BALANCE_MODES,
    CPU_KERNELS,
    DEVICES,
    FREEZE_REGIMES,
    OPTIMIZERS,
    PRECISIONS,
    SCHEDULES,
    TrainOptions,
)
from ..train.recipes import RECIPES
from . import CLIError

EXAMPLES = """examples:
  convnets train digits --model lenet5 --out runs/lenet
  convnets train photos/ --model mobilenet_v2 --weights imagenet --out runs/photos
  convnets train alpaca/ --model mobilenet_v2 --weights mobilenet_v2_imagenet.pth --normalize inception \\
      --image-size 160 --augment light --freeze base --fine-tune-last 2 --fine-tune-epochs 5 --out runs/alpaca
  convnets train cifar10/train --model resnet20 --recipe he2015 --out runs/r20   # the ResNet paper
  convnets train cifar10/train --model resnet20 --recipe he2015 --epochs 40 --lr 0.05 --out runs/r20s
  convnets train --resume --out runs/alpaca          # continue an interrupted run
  torchrun --nproc_per_node=2 -m convnets train digits --model resnet20 --out runs/ddp
"""


def add_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "train",
        help="train a model on a folder of images or a built-in dataset",
        description="Train a CNN classifier (from scratch, or transfer learning with --weights) and write "
        "a run folder: model.safetensors, config.json, metrics.jsonl, curves.png, confusion_matrix.png, "
        "last.pt.",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    # Every option defaults to None: the library fills in the per-model defaults, and --resume can
    # tell an option the user typed from one left alone.
    p.add_argument(
        "data",
        nargs="?",
        metavar="DATA",
        help="folder with one sub-folder per class, or a built-in name (digits, cifar10, ...)",
    )
    p.add_argument("--model", "-m", help="registered model name (see `convnets models`)")
    p.add_argument("--out", "-o", required=True, metavar="RUN_DIR", help="run folder to write")
    p.add_argument(
        "--recipe",
        choices=tuple(RECIPES),
        help="fill every option you do not give with a named recipe's value: "
        # argparse %-formats help: the summaries' "50%" must be escaped or --help crashes
        + "; ".join(f"{r.name}: {r.summary}" for r in RECIPES.values()).replace("%", "%%")
        + " (recorded in config.json)",
    )

    g = p.add_argument_group("data")
    g.add_argument(
        "--image-size",
        type=int,
        help="input side in pixels (default: the model's, or 32 for tiny built-in sets such as digits)",
    )
    g.add_argument("--in-chans", type=int, choices=(1, 3), help="image channels (default: the model's)")
    g.add_argument("--val-split", type=float, help="fraction held out for validation (default 0.2)")
    g.add_argument("--seed", type=int, help="seed for the split, shuffling, augmentation, init (default 0)")
    g.add_argument("--batch-size", type=int, help="images per step (per process) (default 32)")
    g.add_argument(
        "--augment",
        metavar="PRESET",
        help="auto|none|light|standard|strong or ops like 'hflip,rotate:15'; 'mixup'/'cutmix' mix the "
        "batch (soft labels) (default auto: the preset measured best for the regime, from scratch or from "
        "--weights)",
    )
    g.add_argument(
        "--resize",
        choices=("crop", "letterbox", "squash"),
        help="how a non-square image becomes the square input: crop (centre crop, the default for "
        "folders), letterbox (whole image, padded with the mean colour) or squash (stretched straight to "
        "the input size: small images such as CIFAR's 32x32 are kept as they are); evaluate, predict, "
        "export and serve use the run's choice",
    )
    g.add_argument(
        "--normalize",
        choices=NORMALIZE_CHOICES,
        help="input normalisation: dataset = per-channel mean/std, mean = per-channel mean only "
        "(default: the checkpoint's with --weights, else dataset)",
    )
    g.add_argument("--workers", type=int, help="data loading processes (default: chosen by the data layer)")
    g.add_argument("--data-root", help="where built-in datasets are stored/downloaded")

    g = p.add_argument_group("model")
    g.add_argument(
        "--model-kwargs",
        type=_json_object,
        metavar="JSON",
        help='extra builder arguments, e.g. \'{"activation": "relu"}\'',
    )
    g.add_argument("--weights", metavar="PATH|imagenet", help="start from pretrained weights (new head)")
    g.add_argument("--head-dropout", type=float, help="dropout before the new head (default 0.2)")

    g = p.add_argument_group("optimisation")
    g.add_argument("--epochs", type=int, help="epochs (of the head phase, with --freeze base) (default 10)")
    g.add_argument(
        "--lr",
        type=_number_or_auto,
        metavar="LR|auto",
        help="peak learning rate (default: 0.1 sgd, 1e-3 adam/adamw); auto: an LR range test (as "
        "`convnets lr-find`) picks it before training, recorded in config.json",
    )
    g.add_argument("--optimizer", choices=OPTIMIZERS, help="(default adamw)")
    g.add_argument("--momentum", type=float, help="SGD momentum (default 0.9)")
    g.add_argument(
        "--nesterov",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="Nesterov momentum (default on)",
    )
    g.add_argument("--weight-decay", type=float, help="(default: 5e-4 sgd, 0 adam, 0.01 adamw)")
    g.add_argument("--schedule", choices=SCHEDULES, help="(default cosine)")
    g.add_argument("--warmup-epochs", type=float, help="linear warm-up length (default 0)")
    g.add_argument("--label-smoothing", type=float, help="(default 0)")
    g.add_argument(
        "--ema",
        type=float,
        metavar="DECAY",
        help="keep an exponential moving average of the weights (decay per optimizer step, e.g. 0.999); "
        "validation, the best weights and so the run's model are the average (default off)",
    )
    g.add_argument(
        "--val-tta",
        choices=VAL_TTA_MODES,
        help="views validation averages: flip = the image and its mirror (2x the validation compute); "
        "the run's evaluate and predict use the same unless --tta is given (default none)",
    )
    g.add_argument(
        "--balance",
        choices=BALANCE_MODES,
        help="imbalanced classes: class-weighted loss or class-balanced sampler; auto (default) uses "
        "the weighted loss when the largest class is over 3x the smallest, and says so",
    )
    g.add_argument("--grad-accum", type=int, help="micro-batches per optimizer step (default 1)")
    g.add_argument(
        "--early-stopping",
        type=int,
        metavar="PATIENCE",
        help="end a phase after PATIENCE epochs without validation improvement",
    )

    g = p.add_argument_group("transfer learning (with --weights)")
    g.add_argument(
        "--freeze",
        choices=FREEZE_REGIMES,
        help="base: train only the new head; none: train everything; auto: choose from the "
        "images per class (default auto; base when --fine-tune-* is given)",
    )
    g.add_argument(
        "--fine-tune-last",
        type=int,
        metavar="N",
        help="after the head phase, unfreeze the last N stages of the base",
    )
    g.add_argument(
        "--fine-tune-from", metavar="LAYER", help="after the head phase, unfreeze from this module on"
    )
    g.add_argument(
        "--fine-tune-epochs",
        type=int,
        metavar="M",
        help="epochs of the fine-tuning phase (default: --epochs)",
    )
    g.add_argument(
        "--fine-tune-lr-scale",
        type=_number_or_auto,
        metavar="SCALE|auto",
        help="fine-tuning lr = lr x this (default 0.1); auto: a range test when fine-tuning starts",
    )
    g.add_argument(
        "--bn-train",
        action="store_true",
        default=None,
        help="let unfrozen BatchNorm layers update their statistics while fine-tuning",
    )
    g.add_argument(
        "--feature-cache",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="train the head on cached base features while the base is frozen (default on)",
    )
    g.add_argument(
        "--feature-views",
        type=int,
        metavar="K",
        help="augmented views per image in the feature cache (default 1)",
    )

    g = p.add_argument_group("hardware")
    g.add_argument("--device", choices=DEVICES, help="(default auto)")
    g.add_argument(
        "--channels-last",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="NHWC memory format (default: on CPU for depthwise-conv models, on CUDA with bf16/fp16)",
    )
    g.add_argument("--compile", action="store_true", default=None, help="torch.compile the model")
    g.add_argument(
        "--precision",
        choices=PRECISIONS,
        help="(default auto: bf16 on GPUs with native bf16 and on CPUs with bf16 instructions (AMX, "
        "AVX512-BF16) for models of 20 M multiply-adds per image or more, measured 1.3-2.2x faster at "
        "fp32's accuracy; fp32 elsewhere. "
        "bf16/fp16 only where the hardware has them natively)",
    )
    g.add_argument(
        "--cpu-kernels",
        choices=CPU_KERNELS,
        help="bf16 on a CPU: auto (default) times each convolution gradient's fastest way and runs "
        "BatchNorm+activation in C kernels compiled on first use, swapping the layers' classes for each "
        "epoch; off trains with plain autocast (also CONVNETS_C_KERNELS=0). Recorded in config.json",
    )

    g = p.add_argument_group("run")
    g.add_argument(
        "--resume", action="store_true", default=None, help="continue the run in --out from last.pt"
    )
    g.add_argument("--overwrite", action="store_true", default=None, help="replace an existing run in --out")
    g.add_argument("--quiet", "-q", action="store_true", default=None, help="print only the final summary")
    p.set_defaults(func=run)
    return p


def _number_or_auto(text: str) -> float | str:
    from ..train.options import number_or_auto

    try:
        return number_or_auto(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def _json_object(text: str) -> dict:
    try:
        value = json.loads(text)
    except json.JSONDecodeError as e:
        raise argparse.ArgumentTypeError(f"not valid JSON ({e}): {text!r}") from None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError(
            f'must be a JSON object like \'{{"activation": "relu"}}\', got {text!r}'
        )
    return value


# Every TrainOptions field is a command-line option of the same name (--image-size -> image_size).
OPTION_NAMES = tuple(f.name for f in dataclasses.fields(TrainOptions))


def run(args: argparse.Namespace) -> int:
    from ..train import NonFiniteLossError, TrainConfigError, TrainingInterrupted, train
    from ..train.distributed import env_dist_info

    options = {name: getattr(args, name) for name in OPTION_NAMES if getattr(args, name) is not None}
    is_main = env_dist_info().is_main
    try:
        result = train(args.data, model=args.model, out=args.out, **options)
    except TrainConfigError as e:
        raise CLIError(str(e)) from None
    except TrainingInterrupted as e:
        if is_main:
            print(f"\n{e}\nresume with:\n  {resume_command(args)}", file=sys.stderr)
        return e.exit_code
    except NonFiniteLossError as e:
        if is_main:
            print(f"convnets train: error: {e}", file=sys.stderr)
        return 1
    if is_main:
        print(summary(result))
    return 0


def resume_command(args: argparse.Namespace) -> str:
    parts = ["convnets", "train"]
    if args.data is not None:
        parts.append(str(args.data))
    if args.model is not None:
        parts += ["--model", args.model]
    parts += ["--out", str(args.out), "--resume"]
    return shlex.join(parts)


def summary(result) -> str:
    minutes, seconds = divmod(result.seconds, 60)
    took = f"{int(minutes)}m{seconds:04.1f}s" if minutes else f"{seconds:.1f}s"
    best = (
        f"best validation accuracy {result.best_val_acc:.4f} (epoch {result.best_epoch})"
        if result.best_val_acc is not None
        else "no validation split"
    )
    return f"{best}; {len(result.history)} epoch(s) in {took}; run folder: {result.run_dir}"
