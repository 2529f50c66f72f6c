"""``convnets lr-find DATA --model NAME --out DIR``: the learning-rate range test, plotted."""

from __future__ import annotations

import argparse

from ..train.options import BALANCE_MODES, FREEZE_REGIMES, OPTIMIZERS, PRECISIONS
from . import CLIError

EXAMPLES = """examples:
  convnets lr-find digits --model lenet5 --out lr/digits
  convnets lr-find alpaca/ --model mobilenet_v2 --weights mobilenet_v2.pth --normalize inception \\
      --image-size 160 --freeze base --out lr/alpaca
  convnets train alpaca/ ... --lr auto     # the same test, then training at the suggestion
"""

# lr-find's options that are train's, under the same names (train's parser is the reference).
TRAIN_OPTIONS = (
    "weights",
    "image_size",
    "in_chans",
    "val_split",
    "seed",
    "batch_size",
    "augment",
    "normalize",
    "optimizer",
    "weight_decay",
    "momentum",
    "label_smoothing",
    "balance",
    "freeze",
    "head_dropout",
    "precision",
    "data_root",
    "workers",
)


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "lr-find",
        help="LR range test: the loss against an exponentially growing learning rate, and a suggestion",
        description="Trains for --steps steps with the learning rate growing exponentially from --start-lr "
        "to --end-lr on what `convnets train` would train first (the same data pipeline, model, head and "
        "optimizer; the head on cached features with --freeze base), stops when the smoothed loss "
        "diverges, and prints a suggested learning rate and how it was chosen. Writes DIR/lr_find.png "
        "(the curve, the suggestion marked) and DIR/lr_find.json; no model is saved.",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("data", metavar="DATA", help="folder of class sub-folders, or a built-in name")
    p.add_argument("--model", "-m", required=True, help="registered model name (see `convnets models`)")
    p.add_argument("--out", "-o", required=True, metavar="DIR", help="folder for lr_find.png/.json")
    p.add_argument("--steps", type=int, default=100, help="steps of the test (default 100, fastai's)")
    p.add_argument("--start-lr", type=float, default=1e-7, help="(default 1e-7)")
    p.add_argument("--end-lr", type=float, default=10.0, help="(default 10)")
    p.add_argument(
        "--method",
        choices=("valley", "steep", "minimum"),
        default="valley",
        help="how the suggestion is read off the smoothed curve: valley (default, fastai's: halfway along "
        "the longest fall), steep (steepest descent), minimum (the minimum's lr / 10)",
    )
    g = p.add_argument_group("as for `convnets train`")
    g.add_argument("--weights", metavar="PATH|imagenet", help="start from pretrained weights (new head)")
    g.add_argument("--image-size", type=int)
    g.add_argument("--in-chans", type=int, choices=(1, 3))
    g.add_argument("--val-split", type=float)
    g.add_argument("--seed", type=int)
    g.add_argument("--batch-size", type=int)
    g.add_argument("--augment", metavar="PRESET")
    g.add_argument("--normalize", choices=("imagenet", "inception", "dataset", "none"))
    g.add_argument("--optimizer", choices=OPTIMIZERS)
    g.add_argument("--weight-decay", type=float)
    g.add_argument("--momentum", type=float)
    g.add_argument("--label-smoothing", type=float)
    g.add_argument("--balance", choices=BALANCE_MODES)
    g.add_argument("--freeze", choices=FREEZE_REGIMES)
    g.add_argument("--head-dropout", type=float)
    g.add_argument("--precision", choices=PRECISIONS)
    g.add_argument("--data-root")
    g.add_argument("--workers", type=int)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..train.api import lr_find
    from ..train.lr_find import describe
    from ..train.options import TrainConfigError

    options = {name: getattr(args, name) for name in TRAIN_OPTIONS if getattr(args, name) is not None}
    try:
        curve = lr_find(
            args.data,
            args.model,
            args.out,
            steps=args.steps,
            start_lr=args.start_lr,
            end_lr=args.end_lr,
            method=args.method,
            **options,
        )
    except (TrainConfigError, ValueError) as e:
        raise CLIError(str(e)) from None
    print(describe(curve))
    lr = f"{curve.suggestion:.3g}"
    print(f"suggested learning rate: {lr}  (train with --lr {lr}, or --lr auto)")
    print(f"curve: {args.out}/lr_find.png, {args.out}/lr_find.json")
    return 0
