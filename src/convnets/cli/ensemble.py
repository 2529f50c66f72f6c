"""`convnets ensemble RUN_DIR RUN_DIR... DATA`: averaged softmax of several runs, and what it costs."""

from __future__ import annotations

import argparse
import json

from . import CLIError, add_backend_argument, error_text, positive_int


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "ensemble",
        help="evaluate the average of several runs' predictions, with its cost",
        description="Averages the members' softmax probabilities (same class names required; architectures "
        "and image sizes may differ) and reports each member's accuracy, the ensemble's, and the summed "
        "parameters, multiply-adds and batch-1 latency: ensembles win benchmarks, cost production budgets.",
    )
    p.add_argument("items", metavar="RUN_DIR... DATA", nargs="+", help="two or more run folders, then DATA")
    p.add_argument("--batch-size", type=positive_int, default=64)
    p.add_argument("--json", action="store_true")
    add_backend_argument(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..cost import format_count
    from ..deploy.evaluate import evaluate_ensemble

    if len(args.items) < 3:
        raise CLIError("give at least two run folders and then DATA")
    *runs, data = args.items
    try:
        result = evaluate_ensemble(runs, data, batch_size=args.batch_size, backend=args.backend)
    except (FileNotFoundError, NotADirectoryError, ValueError, KeyError) as e:
        raise CLIError(error_text(e)) from e
    if args.json:
        print(json.dumps(result.to_dict(), indent=2))
        return 0
    width = max(len("ensemble"), *(len(m["name"]) for m in result.members))
    print(f"{'member':<{width}}  {'size':>7}  accuracy  {'params':>9}  {'mult-adds':>9}  latency/img")
    for m in result.members:
        size = "x".join(map(str, m["image_size"]))
        print(
            f"{m['name']:<{width}}  {size:>7}  {m['accuracy']:8.4f}  {format_count(m['params']):>9}  "
            f"{format_count(m['macs']):>9}  {m['latency_ms']:8.2f} ms"
        )
    print(
        f"{'ensemble':<{width}}  {'':>7}  {result.accuracy:8.4f}  {format_count(result.params):>9}  "
        f"{format_count(result.macs):>9}  {result.latency_ms:8.2f} ms"
    )
    print(
        f"gain over the best member: {result.gain * 100:+.2f} points on n = {result.n}, for "
        f"{len(result.members)} networks' compute"
    )
    return 0
