"""`convnets predict RUN_DIR PATH...`: top-k classes per image, from the run folder alone."""

from __future__ import annotations

import argparse
import json
import sys

from . import CLIError, add_backend_argument, add_tta_argument, error_text, positive_int, resolve_tta


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "predict",
        help="classify images with a trained run",
        description="Top-K classes with probabilities for each image (folders are searched recursively). "
        "A file that cannot be read is reported and the rest go on; the exit code is 1 if any failed.",
    )
    p.add_argument("run_dir", metavar="RUN_DIR", help="run folder written by `convnets train`")
    p.add_argument("paths", metavar="PATH", nargs="+", help="image files or folders")
    p.add_argument("--top-k", type=positive_int, default=5, help="classes to show per image (default 5)")
    add_tta_argument(p)
    p.add_argument("--batch-size", type=positive_int, default=32)
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
    add_backend_argument(p, exported=True)
    p.set_defaults(func=run)


def predict_exported(args: argparse.Namespace) -> list | None:
    """The fast path: the run's exported model without torch (exported once, with torch, on the
    first call). None when ``--backend auto`` runs PyTorch instead (deploy.engines.choose_engine)."""
    from pathlib import Path

    from ..base.runs import OOD_FILE
    from ..data.images import expand_paths
    from ..deploy.engines import choose_engine

    files = expand_paths(args.paths)
    if not files:
        return []
    # The detector's features from the engine's own pass (ten-crop has no plain view: a second pass).
    ood = not args.no_ood and (Path(args.run_dir) / OOD_FILE).is_file()
    one_pass = ood and args.tta != "10crop"
    try:
        choice = choose_engine(
            args.run_dir,
            args.backend,
            images=len(files),
            features=one_pass,
            pytorch_fallback=True,
            log=lambda msg: print(msg, file=sys.stderr),
        )
    except (ValueError, RuntimeError, ImportError) as e:  # RunFolderError, EngineError, ExportError
        raise CLIError(str(e)) from e
    if choice.note:
        print(choice.note, file=sys.stderr)
    if choice.model is None:
        return None
    from ..trust.fit import RunTrust, annotate_exported

    trust = RunTrust.read(args.run_dir) if one_pass else None
    sources = [(f, f) for f in files]
    rows = choice.model.predict(sources, args.top_k, args.batch_size, args.tta, trust, args.reject_ood)
    if ood and not one_pass:
        annotate_exported(args.run_dir, rows, reject=args.reject_ood)
    return rows


def predict_torch(args: argparse.Namespace) -> list:
    from ..deploy.predictor import predict

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
            from ..trust.explain import explain_files

            good = [r.file for r in results if r.error is None]
            explain_files(args.run_dir, good, args.explain, option="--explain")
    except (FileNotFoundError, ValueError, KeyError, ImportError) as e:
        raise CLIError(error_text(e)) from e
    return results


def run(args: argparse.Namespace) -> int:
    from ..base.choices import EXPORTED_PATH_CHOICES, TORCH_PATH_CHOICES

    resolve_tta(args)
    if args.explain:
        from ..base.errors import output_dir

        output_dir(args.explain, "--explain")  # before any model runs
    results = None
    if args.backend in EXPORTED_PATH_CHOICES and not args.explain:
        results = predict_exported(args)  # no torch (Grad-CAM, --explain, needs it)
    elif args.backend not in TORCH_PATH_CHOICES:
        raise CLIError(f"--explain runs the PyTorch model: use --backend {', '.join(TORCH_PATH_CHOICES)}")
    if results is None:
        results = predict_torch(args)
    return print_results(results, args)


def print_results(results: list, args: argparse.Namespace) -> int:
    if not results:
        raise CLIError(f"no image files found in {', '.join(args.paths)}")
    if args.json:
        print(json.dumps([r.to_dict() for r in results], indent=2))
    else:
        for r in results:
            if r.error is not None:
                print(f"{r.file}: ERROR {r.error}")
            elif "model_top" in r.extra.get("ood", {}):  # --reject-ood answered "unknown"
                guess = r.extra["ood"]["model_top"][0]
                print(
                    f"{r.file}: {r.top[0].label} (unlike the training images; the model would say "
                    f"{guess['class']} {guess['prob']:.3f})"
                )
            else:
                flag = "  [ood]" if r.extra.get("ood", {}).get("flagged") else ""
                print(f"{r.file}: " + ", ".join(f"{c.label} {c.prob:.3f}" for c in r.top) + flag)
        if any("ood" in r.extra for r in results):
            from ..trust.fit import ood_warning

            warning = ood_warning(results)
            if warning:
                print(warning, file=sys.stderr)
    if args.explain:
        print(f"Grad-CAM heat maps in {args.explain}", file=sys.stderr)
    return 1 if any(r.error is not None for r in results) else 0
