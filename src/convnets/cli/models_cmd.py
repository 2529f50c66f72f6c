"""`convnets models [PATTERN] [--json]`: the zoo, with each model's size and cost."""

from __future__ import annotations

import argparse
import json
import time

from . import CLIError


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "models",
        help="list the registered models with params, multiply-adds and published top-1",
        description="Every registered model at its published resolution and number of classes: "
        "parameters, multiply-adds (convolutions + linear layers; FLOPs ~= 2 x MACs), default input, "
        "the torchvision architecture it matches (whose ImageNet weights --weights imagenet loads) and "
        "the published ImageNet top-1.",
    )
    p.add_argument("pattern", nargs="?", default=None, help='glob filter, e.g. "resnet*"')
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.set_defaults(func=run)


def model_rows(pattern: str | None = None) -> list[dict]:
    """One dict per registered model (the data behind the table)."""
    from .. import get_model_cfg, list_models
    from ..cost import default_num_classes, model_cost

    rows = []
    for name in list_models(pattern):
        cfg = get_model_cfg(name)
        report = model_cost(name)
        rows.append(
            {
                "name": name,
                "params": report.params,
                "macs": report.macs,
                "num_classes": default_num_classes(name),
                "input_size": list(cfg.input_size),
                "min_size": cfg.min_size,
                "mean": list(cfg.mean),
                "std": list(cfg.std),
                "torchvision": cfg.torchvision,
                "imagenet_top1": cfg.imagenet_top1,
            }
        )
    return rows


def run(args: argparse.Namespace) -> int:
    from ..cost import format_count
    from .cost_cmd import table

    start = time.perf_counter()
    rows = model_rows(args.pattern)
    if not rows:
        raise CLIError(f"no model matches {args.pattern!r}; run `convnets models` for the list")
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    body = [
        [
            r["name"],
            format_count(r["params"]),
            format_count(r["macs"]),
            "x".join(map(str, r["input_size"])),
            str(r["num_classes"]),
            r["torchvision"] or "-",
            "-" if r["imagenet_top1"] is None else f"{r['imagenet_top1']:.1f}",
        ]
        for r in rows
    ]
    headers = ["model", "params", "multiply-adds", "input", "classes", "torchvision", "top-1 %"]
    print(table(headers, body, right={1, 2, 4, 6}))
    seconds = time.perf_counter() - start
    print(f"{len(rows)} models ({seconds:.1f} s); `convnets cost MODEL` for per-layer detail")
    return 0
