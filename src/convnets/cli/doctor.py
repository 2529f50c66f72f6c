"""`convnets doctor DATA`: unusable files, duplicates and leakage, class balance, odd images and likely
label errors in a class-per-folder dataset (or the split a run used)."""

from __future__ import annotations

import argparse
import json
import sys

from . import CLIError, error_text


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "doctor",
        help="check a dataset: unreadable files, duplicates/leakage, imbalance, label errors",
        description="Check a class-per-folder dataset before training on it. DATA is a folder of class "
        "sub-folders, a root holding train/ and val/ (or test/), or a run folder (its saved train/val "
        "split is checked). Prints a summary of each kind of problem, then the details.",
    )
    p.add_argument("data", metavar="DATA", help="data folder, pre-split root or run folder")
    p.add_argument("--val", metavar="DIR", help="validation folder (class sub-folders) to check against DATA")
    p.add_argument("--test", metavar="DIR", help="test folder (class sub-folders) to check against DATA")
    p.add_argument(
        "--weights",
        metavar="FILE|RUN",
        help="a pretrained checkpoint or a run folder for the label check (frozen features + logistic "
        "regression); DATA given as a run folder checks with its own model; otherwise a tiny CNN is "
        "trained per fold (too weak on photos of similar things: the report says so)",
    )
    p.add_argument("--model", default="mobilenet_v2", help="architecture of --weights (default mobilenet_v2)")
    p.add_argument(
        "--normalize",
        choices=["imagenet", "inception"],
        help="input normalisation --weights expect when the file does not say (inception = [-1, 1])",
    )
    p.add_argument("--no-labels", action="store_true", help="skip the label check (the slowest part)")
    p.add_argument(
        "--max-label-issues",
        type=int,
        metavar="N",
        help="list at most N likely label errors, most likely first (default 50; 0 = all flagged)",
    )
    p.add_argument(
        "--near-threshold",
        type=float,
        default=None,
        help="similarity (registered NCC of grey thumbnails) for near duplicates; default 0.95",
    )
    p.add_argument(
        "--workers", type=int, default=None, help="decoding threads (default: 2 x CPUs, at most 8)"
    )
    p.add_argument(
        "--json", action="store_true", help="print one JSON object (a section per kind of problem)"
    )
    p.add_argument("--html", metavar="FILE", help="also write a self-contained HTML page with thumbnails")
    p.add_argument(
        "--strict", action="store_true", help="exit 1 on leakage across splits or label conflicts (for CI)"
    )
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..doctor import DoctorError, diagnose
    from ..doctor.duplicates import NEAR_THRESHOLD

    threshold = NEAR_THRESHOLD if args.near_threshold is None else args.near_threshold
    if not 0 < threshold <= 1:
        raise CLIError("--near-threshold must be in (0, 1]")
    if args.max_label_issues is not None and args.max_label_issues < 0:
        raise CLIError(f"--max-label-issues: must be >= 0, got {args.max_label_issues}")
    if args.html:
        from ..base.errors import output_file

        output_file(args.html, "--html")  # a folder there, or a read-only one: refused before the scan
    try:
        report = diagnose(
            args.data,
            args.val,
            args.test,
            weights=args.weights,
            model=args.model,
            normalize=args.normalize,
            labels=not args.no_labels,
            near_threshold=threshold,
            workers=args.workers,
            progress=not args.json,
            max_label_issues=args.max_label_issues,
        )
    except DoctorError as e:
        raise CLIError(str(e)) from e
    except (FileNotFoundError, ValueError, KeyError) as e:  # bad --weights / --model
        raise CLIError(error_text(e)) from e
    if args.html:
        path = report.write_html(args.html)
        print(f"wrote {path}", file=sys.stderr)
    if args.json:
        print(json.dumps(report.to_dict(), indent=2))
    else:
        print(report.to_text())
    if args.strict and (report.leakage or report.conflicts):
        print(
            f"convnets doctor --strict: {len(report.leakage)} leakage and {len(report.conflicts)} conflict "
            "group(s)",
            file=sys.stderr,
        )
        return 1
    return 0
