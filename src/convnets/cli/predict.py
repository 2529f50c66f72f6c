"""`convnets predict RUN_DIR PATH...`: top-k classes per image, from the run folder alone."""

from __future__ import annotations

import argparse
import json

from . import CLIError, add_backend_argument


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
    p.add_argument("--tta", choices=["none", "flip", "10crop"], default="none", help="test-time augmentation")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument(
        "--json", action="store_true", help='print [{"file", "top": [{"class", "prob"}], "error"?}]'
    )
    add_backend_argument(p, exported=True)
    p.set_defaults(func=run)


def predict_exported(args: argparse.Namespace) -> list[dict] | None:
    """The fast path: the run's exported model without torch (exported once, with torch, on the
    first call). None when ``--backend auto`` cannot use it (ONNX Runtime missing, export failed)."""
    import importlib.util
    import sys

    from ..data.images import expand_paths
    from ..exported import EngineError, ExportedModel

    if args.backend == "auto" and importlib.util.find_spec("onnxruntime") is None:
        return None
    files = expand_paths(args.paths)
    if not files:
        return []
    try:
        model = ExportedModel.open(
            args.run_dir, args.backend, images=len(files), log=lambda msg: print(msg, file=sys.stderr)
        )
    except (EngineError, ImportError) as e:
        if args.backend == "auto":
            return None
        raise CLIError(str(e)) from e
    except ValueError as e:  # RunFolderError, or an export that failed its parity check
        if args.backend == "auto" and type(e).__name__ == "ExportError":
            print(f"not using the exported model ({e}); running PyTorch", file=sys.stderr)
            return None
        raise CLIError(str(e)) from e
    rows = model.predict([(f, f) for f in files], args.top_k, args.batch_size, tta=args.tta)
    return [r.to_dict() for r in rows]


def run(args: argparse.Namespace) -> int:
    from ..backends import EXPORTED_BACKENDS

    if args.top_k < 1:
        raise CLIError("--top-k must be at least 1")
    results = None
    if args.backend in ("auto", *EXPORTED_BACKENDS):
        results = predict_exported(args)
    if results is None:
        results = predict_torch(args)
    return print_results(results, args)


def predict_torch(args: argparse.Namespace) -> list[dict]:
    from ..evaluate import predict

    try:
        return predict(
            args.run_dir,
            args.paths,
            top_k=args.top_k,
            tta=args.tta,
            batch_size=args.batch_size,
            backend=args.backend,
        )
    except (FileNotFoundError, ValueError, KeyError) as e:
        raise CLIError(str(e).strip("'\"")) from e


def print_results(results: list[dict], args: argparse.Namespace) -> int:
    if not results:
        raise CLIError(f"no image files found in {', '.join(args.paths)}")
    if args.json:
        print(json.dumps(results, indent=2))
    else:
        for r in results:
            if "error" in r:
                print(f"{r['file']}: ERROR {r['error']}")
            else:
                print(f"{r['file']}: " + ", ".join(f"{t['class']} {t['prob']:.3f}" for t in r["top"]))
    return 1 if any("error" in r for r in results) else 0
