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
    p.add_argument(
        "--all",
        action="store_true",
        help="also every torchvision classifier (torchvision/NAME) and, with timm installed, every timm "
        f"architecture (timm/NAME); their cost is computed when the pattern leaves at most {COST_LIMIT}",
    )
    p.set_defaults(func=run)


COST_LIMIT = 20  # library models whose cost `models --all` computes (each is built and run once)


def model_rows(pattern: str | None = None, all: bool = False) -> list[dict]:  # noqa: A002
    """One dict per registered model (the data behind the table); ``all`` adds the timm/torchvision
    ones (params and multiply-adds None when more than COST_LIMIT of them match)."""
    from .. import get_model_cfg, list_models
    from ..cost import default_num_classes, model_cost
    from ..models.external import is_external

    names = list_models(pattern, all=all)
    costly = sum(map(is_external, names)) <= COST_LIMIT
    rows = []
    for name in names:
        cfg = get_model_cfg(name)
        report = model_cost(name) if costly or not is_external(name) else None
        rows.append(
            {
                "name": name,
                "params": report.params if report else None,
                "macs": report.macs if report else None,
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
    rows = model_rows(args.pattern, all=args.all)
    if not rows:
        raise CLIError(f"no model matches {args.pattern!r}; run `convnets models` for the list")
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    body = [
        [
            r["name"],
            "-" if r["params"] is None else format_count(r["params"]),
            "-" if r["macs"] is None else format_count(r["macs"]),
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
