"""``convnets demo``: LeNet-5 and ResNet-20 trained side by side on the embedded digits (about a minute)."""

from __future__ import annotations

import argparse


def add_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "demo",
        help="train LeNet-5 and a ResNet side by side on the built-in digits (about a minute on a CPU)",
        description="Train LeNet-5 (1998) and ResNet-20 (2015) on sklearn's 1,797 handwritten digits, "
        "then print validation accuracy, parameters, multiply-adds and time for each, and where their run "
        "folders are (inspect them with `convnets report`, `convnets evaluate`, ...).",
    )
    p.add_argument(
        "--out", default="runs/demo", metavar="DIR", help="parent folder of the runs (default runs/demo)"
    )
    p.add_argument("--seed", type=int, default=0, help="seed for the split, initialisation and shuffling")
    p.add_argument("--verbose", "-v", action="store_true", help="show each epoch while training")
    p.set_defaults(func=run)
    return p


def run(args: argparse.Namespace) -> int:
    import time

    from ..train.demo import DEMO_DATA, DEMO_RUNS, format_table, run_demo

    names = " and ".join(run[0] for run in DEMO_RUNS)
    print(f"training {names} on {DEMO_DATA} (1,797 8x8 handwritten digits, 10 classes) ...", flush=True)
    start = time.perf_counter()
    rows = run_demo(args.out, quiet=not args.verbose, seed=args.seed)
    print()
    print(format_table(rows))
    print(
        f"\ntotal {time.perf_counter() - start:.1f}s. Each run folder holds model.safetensors, config.json, "
        "metrics.jsonl, curves.png and confusion_matrix.png."
    )
    return 0
