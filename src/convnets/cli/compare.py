"""`convnets compare DATA --models a,b,c --out DIR`: same budget, same split, ranked with their cost."""

from __future__ import annotations

import argparse
from pathlib import Path

from . import CLIError, error_text, positive_int


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "compare",
        help="train several models under the same budget and rank them with their cost",
        description="Trains each model with `convnets train` on the same data, seed and validation split, "
        "then writes leaderboard.md, leaderboard.json (validation accuracy, params, multiply-adds, measured "
        "batch-1 latency, training seconds) and accuracy_vs_cost.png into --out.",
    )
    p.add_argument("data", metavar="DATA", help="folder of class folders or a built-in dataset name")
    p.add_argument("--models", required=True, help="comma-separated model names, e.g. lenet5,resnet18")
    p.add_argument("--epochs", type=int, default=5)
    p.add_argument("--image-size", type=int, default=None, help="one input size for all (default: per model)")
    p.add_argument("--batch-size", type=positive_int, default=None)
    p.add_argument("--lr", type=float, default=None)
    p.add_argument("--val-split", type=float, default=None, help="validation fraction (default 0.2)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, required=True, help="folder for the runs and the leaderboard")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..studies.compare import compare

    models = [m.strip() for m in args.models.split(",") if m.strip()]
    options = {
        k: v
        for k, v in {"batch_size": args.batch_size, "lr": args.lr, "val_split": args.val_split}.items()
        if v is not None
    }
    try:
        board = compare(
            args.data,
            models,
            args.out,
            epochs=args.epochs,
            image_size=args.image_size,
            seed=args.seed,
            **options,
        )
    except (KeyError, ValueError, FileNotFoundError) as e:  # incl. the trainer's and data layer's errors
        raise CLIError(error_text(e)) from e
    print(Path(board.files["leaderboard_md"]).read_text(encoding="utf-8"))
    for path in board.files.values():
        print(f"wrote {path}")
    return 0
