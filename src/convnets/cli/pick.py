"""`convnets pick`: the most accurate published architecture within a latency / size / compute budget."""

from __future__ import annotations

import argparse
import json

from . import CLIError


def _count(text: str) -> int:
    """'5e6', '5M', '300m', '1.2G', '4000000' -> int."""
    scale = {"k": 1e3, "m": 1e6, "g": 1e9}
    t = text.strip().lower()
    try:
        if t and t[-1] in scale:
            return int(float(t[:-1]) * scale[t[-1]])
        return int(float(t))
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a count: {text!r} (e.g. 5M, 300M, 1.2G, 4000000)") from None


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "pick",
        help="pick an EfficientNet / MobileNet variant for a device budget",
        description="Candidates: EfficientNet-B0..B7 at their own resolutions, MobileNet v1 at width "
        "{1.0, 0.75, 0.5, 0.25} x resolution {224, 192, 160, 128}, MobileNet v2 width variants. Accuracy is "
        "the published ImageNet top-1; params and multiply-adds are counted; latency is measured on this "
        "machine (batch 1) for candidates that pass the cheap filters. Prints the table it decided from.",
    )
    p.add_argument("--latency-ms", type=float, default=None, help="max milliseconds per image, batch 1, here")
    p.add_argument("--max-params", type=_count, default=None, help="max parameters (e.g. 5M)")
    p.add_argument("--max-macs", type=_count, default=None, help="max multiply-adds per image (e.g. 300M)")
    p.add_argument(
        "--image-size", type=int, nargs="+", default=None, help="only candidates at these resolutions"
    )
    p.add_argument(
        "--family",
        nargs="+",
        choices=["efficientnet", "mobilenet_v1", "mobilenet_v2"],
        default=None,
        help="restrict the candidates (default: all three families)",
    )
    p.add_argument("--measure-budget", type=float, default=60.0, help="cap on latency measurement, seconds")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..studies.pick import FAMILIES, pick

    if args.latency_ms is None and args.max_params is None and args.max_macs is None:
        raise CLIError("give a budget: --latency-ms, --max-params and/or --max-macs")
    try:
        result = pick(
            latency_ms=args.latency_ms,
            max_params=args.max_params,
            max_macs=args.max_macs,
            image_sizes=tuple(args.image_size) if args.image_size else None,
            families=tuple(args.family) if args.family else FAMILIES,
            measure_budget_s=args.measure_budget,
        )
    except ValueError as e:
        raise CLIError(str(e)) from e
    if args.json:
        print(json.dumps(result.to_dict(), indent=2))
        return 0 if result.choice else 1
    width = max(len(c.label) for c in result.table)
    print(f"{'candidate':<{width}}  top-1  params(M)  MACs(M)  latency   decision")
    for c in result.table:
        latency = f"{c.latency_ms:6.1f} ms" if c.latency_ms is not None else "       - "
        mark = "->" if c is result.choice else "  "
        print(
            f"{c.label:<{width}}  {c.top1:5.1f}  {c.params / 1e6:9.2f}  {c.macs / 1e6:7.0f}  {latency}"
            f"  {mark} {c.status}"
        )
    print()
    print("top-1: published ImageNet accuracy; sources:")
    for source in sorted({c.source for c in result.table}):
        print(f"  {source}")
    print(result.message)
    return 0 if result.choice else 1
