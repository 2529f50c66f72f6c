"""`convnets report RUN_DIR`: a self-contained HTML report of a trained run."""

from __future__ import annotations

import argparse
from pathlib import Path

from . import CLIError, add_backend_argument, error_text


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "report",
        help="write a self-contained report.html for a run",
        description="Training curves, confusion matrix, sample predictions, worst mistakes, per-class "
        "metrics, the model's cost table and the options used, in one HTML file with every image embedded "
        "(opens offline).",
    )
    p.add_argument("run_dir", metavar="RUN_DIR", help="run folder written by `convnets train`")
    p.add_argument("--out", type=Path, default=None, help="output file (default RUN_DIR/report.html)")
    p.add_argument("--data", default=None, help="evaluate on this instead of the run's validation subset")
    p.add_argument("--samples", type=int, default=16, help="sample predictions to show (default 16)")
    add_backend_argument(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..report import report

    try:
        path = report(args.run_dir, args.out, data=args.data, samples=args.samples, backend=args.backend)
    except (FileNotFoundError, ValueError, KeyError) as e:
        raise CLIError(error_text(e)) from e
    print(f"wrote {path}")
    return 0
