"""`convnets cost`: parameters and multiply-adds of a model, one convolution, or several models.

    convnets cost MODEL [--image-size N] [--in-chans C] [--json]
    convnets cost conv --input HxWxC --filters N --kernel K [--stride S] [--padding same|valid]
                       [--bottleneck B] [--depthwise-separable] [--json]
    convnets cost compare MODEL MODEL... [--image-size N] [--out chart.png] [--no-latency] [--json]

One parser takes every option and the first positional picks the form, so that model names
(``convnets cost resnet50``) need no sub-command of their own.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from . import CLIError, error_text, positive_int

USAGE = """convnets cost MODEL [--image-size N] [--in-chans C] [--json]
       convnets cost conv --input HxWxC --filters N --kernel K [--stride S] [--padding same|valid]
                          [--bottleneck B] [--depthwise-separable] [--json]
       convnets cost compare MODEL MODEL... [--image-size N] [--out chart.png] [--no-latency] [--json]"""

CONV_OPTIONS = ("input", "filters", "kernel", "stride", "padding", "bottleneck", "depthwise_separable")


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "cost",
        help="parameters and multiply-adds of a model, a convolution, or a comparison",
        usage=USAGE,
        description="What a network costs. MODEL: per-layer table and totals at the model's published "
        "resolution. `conv`: the lectures' arithmetic for one convolution, with a 1x1 bottleneck or "
        "depthwise-separable variant and the saving. `compare`: params, multiply-adds and measured "
        "latency (batch 1, this machine) of several models, as a table and a bar chart. Multiply-adds "
        "(MACs) count convolutions and linear layers; FLOPs ~= 2 x MACs.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("target", nargs="+", metavar="MODEL|conv|compare", help="what to cost")
    p.add_argument(
        "--image-size", type=positive_int, default=None, help="input H = W (default: the model's own)"
    )
    p.add_argument(
        "--in-chans", type=positive_int, default=None, help="input channels (default: the model's own)"
    )
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    conv = p.add_argument_group("conv")
    conv.add_argument("--input", default=None, metavar="HxWxC", help="input volume, e.g. 28x28x192")
    conv.add_argument("--filters", type=positive_int, default=None, help="number of output channels")
    conv.add_argument("--kernel", type=positive_int, default=None, help="kernel size k (k x k)")
    conv.add_argument("--stride", type=positive_int, default=None, help="stride (default 1)")
    conv.add_argument("--padding", choices=["same", "valid"], default=None, help="default same")
    conv.add_argument(
        "--bottleneck", type=positive_int, default=None, metavar="B", help="1x1 reduction to B channels first"
    )
    conv.add_argument(
        "--depthwise-separable", action="store_true", default=None, help="depthwise kxk + pointwise 1x1"
    )
    compare = p.add_argument_group("compare")
    compare.add_argument("--out", type=Path, default=None, help="bar chart PNG (default cost_compare.png)")
    compare.add_argument("--no-latency", action="store_true", help="skip the latency measurement")
    compare.add_argument("--runs", type=int, default=5, help="timed runs per model (median reported)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    first, rest = args.target[0], args.target[1:]
    given_conv = [f"--{o.replace('_', '-')}" for o in CONV_OPTIONS if getattr(args, o) is not None]
    if first == "conv":
        if rest:
            raise CLIError(f"`cost conv` takes no positional arguments, got {' '.join(rest)}")
        return _conv(args)
    if given_conv:
        raise CLIError(f"{', '.join(given_conv)} only apply to `convnets cost conv`")
    if first == "compare":
        if len(rest) < 1:
            raise CLIError(
                "`cost compare` needs model names, e.g. `convnets cost compare resnet50 mobilenet_v2`"
            )
        return _compare(args, rest)
    if rest:
        raise CLIError(
            f"one model at a time (got {' '.join(args.target)}); use `convnets cost compare` for several"
        )
    return _model(args, first)


def _model(args: argparse.Namespace, name: str) -> int:
    from ..cost import model_cost

    try:
        report = model_cost(name, image_size=args.image_size, in_chans=args.in_chans)
    except KeyError as e:
        raise CLIError(error_text(e)) from e
    except ValueError as e:
        raise CLIError(str(e)) from e
    if args.json:
        print(json.dumps(report.to_dict(), indent=2))
        return 0
    print(format_report(report))
    return 0


def _conv(args: argparse.Namespace) -> int:
    from ..cost import conv_cost

    missing = [o for o in ("input", "filters", "kernel") if getattr(args, o) is None]
    if missing:
        raise CLIError(f"`cost conv` needs {', '.join('--' + o for o in missing)}")
    try:
        result = conv_cost(
            args.input,
            filters=args.filters,
            kernel=args.kernel,
            stride=args.stride or 1,
            padding=args.padding or "same",
            bottleneck=args.bottleneck,
            depthwise_separable=bool(args.depthwise_separable),
        )
    except ValueError as e:
        raise CLIError(str(e)) from e
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    print(format_conv(result))
    return 0


def _compare(args: argparse.Namespace, names: list[str]) -> int:
    from ..cost import compare_cost, plot_compare

    if args.in_chans is not None:
        raise CLIError("--in-chans does not apply to `cost compare` (each model uses its own)")
    try:
        rows = compare_cost(
            names, image_size=args.image_size, measure_latency=not args.no_latency, runs=args.runs
        )
    except KeyError as e:
        raise CLIError(error_text(e)) from e
    except ValueError as e:
        raise CLIError(str(e)) from e
    out = args.out if args.out is not None else Path("cost_compare.png")
    chart = plot_compare(rows, out, title="cost per image (batch 1)")
    if args.json:
        print(json.dumps({"models": rows, "chart": str(chart)}, indent=2))
        return 0
    print(format_compare(rows))
    print(f"wrote {chart}")
    return 0


# --- plain-text tables ------------------------------------------------------------------------


def table(headers: list[str], rows: list[list[str]], right: set[int] | None = None) -> str:
    """Aligned columns; ``right`` holds the indices of right-aligned (numeric) columns."""
    right = right or set()
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(headers)]

    def line(cells: list[str]) -> str:
        return "  ".join(
            c.rjust(w) if i in right else c.ljust(w) for i, (c, w) in enumerate(zip(cells, widths))
        )

    return "\n".join([line(headers), line(["-" * w for w in widths]), *(line(r) for r in rows)]).rstrip()


def _shape(shape: list[int]) -> str:
    return "x".join(map(str, shape)) if shape else "-"


def format_report(report) -> str:
    from ..cost import format_count

    rows = [
        [layer.name, layer.type, _shape(layer.output_shape), f"{layer.params:,}", f"{layer.macs:,}"]
        for layer in report.layers
    ]
    h, w = report.image_size
    lines = [
        f"{report.model} at {h}x{w} (output shapes per image, C x H x W)",
        table(["layer", "type", "output", "params", "multiply-adds"], rows, right={3, 4}),
        "",
        f"params         {report.params:>16,}  ({format_count(report.params)})",
        f"multiply-adds  {report.macs:>16,}  ({format_count(report.macs)}; "
        f"FLOPs ~= {format_count(2 * report.macs)})",
    ]
    return "\n".join(lines)


def format_conv(result: dict) -> str:
    rows = [
        [s["stage"], _shape(s["output_shape"]), f"{s['macs']:,}", f"{s['params']:,}"]
        for s in result["stages"]
    ]
    lines = [
        f"input {_shape(result['input_shape'])} -> output {_shape(result['output_shape'])} (H x W x C)",
        table(["stage", "output", "multiplies", "params"], rows, right={2, 3}),
        "",
        f"total multiplies  {result['macs']:,}",
        f"total params      {result['params']:,} (bias counted; {result['params_without_bias']:,} without)",
    ]
    if len(result["stages"]) > 1:
        lines.append(
            f"plain conv        {result['plain_macs']:,} multiplies, {result['plain_params']:,} params: "
            f"{result['macs_saving']:.1f}x fewer multiplies, {result['params_saving']:.1f}x fewer params"
        )
    return "\n".join(lines)


def format_compare(rows: list[dict]) -> str:
    from ..cost import format_count

    body = [
        [
            r["model"],
            _shape(r["image_size"]),
            format_count(r["params"]),
            format_count(r["macs"]),
            "-" if r["latency_ms"] is None else f"{r['latency_ms']:.1f}",
        ]
        for r in rows
    ]
    return table(["model", "input", "params", "multiply-adds", "latency ms"], body, right={2, 3, 4})
