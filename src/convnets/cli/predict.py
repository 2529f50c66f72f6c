"""`convnets predict RUN_DIR PATH...`: top-k classes per image, from the run folder alone."""

from __future__ import annotations

import argparse
import json
import sys

from . import CLIError, add_backend_argument, add_tta_argument


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "predict",
        help="classify images with a trained run",
        description="Top-K classes with probabilities for each image (folders are searched recursively). "
        "A file that cannot be read is reported and the rest go on; the exit code is 1 if any failed.",
    )
    p.add_argument("run_dir", metavar="RUN_DIR", help="run folder written by `convnets train`")
    p.add_argument("paths", metavar="PATH", nargs="+", help="image files or folders")
    p.add_argument("--top-k", type=int, default=5, help="classes to show per image (default 5)")
    add_tta_argument(p)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument(
        "--json", action="store_true", help='print [{"file", "top": [{"class", "prob"}], "error"?}]'
    )
    p.add_argument(
        "--reject-ood",
        action="store_true",
        help="answer 'unknown' for images unlike the training data (default: answer, flag them [ood])",
    )
    p.add_argument("--no-ood", action="store_true", help="skip the out-of-distribution check")
    p.add_argument("--explain", metavar="DIR", default=None, help="also save Grad-CAM heat maps into DIR")
    add_backend_argument(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..predictor import predict
    from ..trust import UNKNOWN, ood_warning

    if args.top_k < 1:
        raise CLIError("--top-k must be at least 1")
    try:
        results = predict(
            args.run_dir,
            args.paths,
            top_k=args.top_k,
            tta=args.tta,
            batch_size=args.batch_size,
            backend=args.backend,
            ood=not args.no_ood,
            reject_ood=args.reject_ood,
        )
        if args.explain:
            from ..explain import explain_files

            explain_files(args.run_dir, [r.file for r in results if r.error is None], args.explain)
    except (FileNotFoundError, ValueError, KeyError, ImportError) as e:
        raise CLIError(str(e).strip("'\"")) from e
    if not results:
        raise CLIError(f"no image files found in {', '.join(args.paths)}")
    if args.json:
        print(json.dumps([r.to_dict() for r in results], indent=2))
    else:
        for r in results:
            if r.error is not None:
                print(f"{r.file}: ERROR {r.error}")
            elif r.top[0].label == UNKNOWN and "model_top" in r.extra.get("ood", {}):
                guess = r.extra["ood"]["model_top"][0]
                print(
                    f"{r.file}: {UNKNOWN} (unlike the training images; the model would say {guess['class']} "
                    f"{guess['prob']:.3f})"
                )
            else:
                flag = "  [ood]" if r.extra.get("ood", {}).get("flagged") else ""
                print(f"{r.file}: " + ", ".join(f"{c.label} {c.prob:.3f}" for c in r.top) + flag)
        warning = ood_warning(results)
        if warning:
            print(warning, file=sys.stderr)
    if args.explain:
        print(f"Grad-CAM heat maps in {args.explain}", file=sys.stderr)
    return 1 if any(r.error is not None for r in results) else 0
