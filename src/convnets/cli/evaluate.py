"""`convnets evaluate RUN_DIR [DATA]`: accuracy, per-class metrics, confusion matrix, worst mistakes, TTA."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from . import CLIError, add_backend_argument, add_tta_argument, error_text, positive_int, resolve_tta


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "evaluate",
        help="evaluate a trained run on a folder or on its validation subset",
        description="Accuracy, top-5, per-class precision/recall/F1 and the confusion matrix of a run. "
        "Without DATA: the run's own validation split (the data and split saved in its config.json). "
        "DATA is a folder with the run's classes as sub-folders (every image is evaluated), or the run's "
        "own data source / built-in dataset name (its validation subset is used). Writes "
        "confusion_matrix.png, mistakes.png and metrics.json into --out.",
    )
    p.add_argument("run_dir", metavar="RUN_DIR", help="run folder written by `convnets train`")
    p.add_argument(
        "data",
        metavar="DATA",
        nargs="?",
        default=None,
        help="folder of class folders, or the run's data source / dataset name "
        "(default: the run's own validation split)",
    )
    add_tta_argument(
        p, help="test-time augmentation: mirror (2x compute) or 4 corners + centre, each mirrored (10x)"
    )
    p.add_argument("--batch-size", type=positive_int, default=64)
    p.add_argument("--out", type=Path, default=None, help="where plots go (default RUN_DIR/eval/)")
    p.add_argument("--json", action="store_true", help="print the metrics as JSON")
    p.add_argument(
        "--calibrate",
        action="store_true",
        help="first fit a temperature (and the out-of-distribution detector) on the run's validation "
        "split and store them in the run: predict then reports calibrated probabilities",
    )
    add_backend_argument(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..deploy.evaluate import evaluate

    resolve_tta(args)
    out = args.out if args.out is not None else Path(args.run_dir) / "eval"
    try:
        result = evaluate(
            args.run_dir,
            args.data,
            tta=args.tta,
            batch_size=args.batch_size,
            out=out,
            backend=args.backend,
            calibrate=args.calibrate,
        )
    except (FileNotFoundError, NotADirectoryError, ValueError, KeyError) as e:
        raise CLIError(error_text(e)) from e
    if args.json:
        print(json.dumps(result.to_dict(), indent=2))
        return 0
    print(format_result(result))
    return 0


def format_result(result) -> str:
    m, t = result.metrics, result.tta
    lines = [f"evaluated {result.data}: n = {m['n']} (model run by {result.backend})"]
    lines.append(f"accuracy {m['accuracy']:.4f}" + (f"   top-5 {m['top5']:.4f}" if "top5" in m else ""))
    if t["mode"] != "none":
        lines.append(
            f"TTA {t['mode']}: {t['accuracy']:.4f} vs plain {t['plain_accuracy']:.4f} "
            f"(gain {t['gain'] * 100:+.2f} points) for {t['cost_factor']}x the compute "
            f"({t['seconds']:.2f} s vs {t['plain_seconds']:.2f} s of model time)"
        )
    width = max(len("class"), *(len(c) for c in m["per_class"]))
    lines.append(f"{'class':<{width}}  precision  recall     f1  support")
    for name, row in m["per_class"].items():
        lines.append(
            f"{name:<{width}}  {row['precision']:9.3f}  {row['recall']:6.3f}  {row['f1']:5.3f}"
            f"  {row['support']:7d}"
        )
    lines.extend(format_analysis(result))
    if result.skipped:
        lines.append(f"skipped {len(result.skipped)} unreadable file(s), e.g. {result.skipped[0]['file']}")
    lines.extend(f"wrote {path}" for path in result.files.values())
    return "\n".join(lines)


def format_analysis(result) -> list[str]:
    """Balanced accuracy, macro-F1, calibration, confused pairs, top losses and OOD share as text."""
    m = result.metrics
    cal = m["calibration"]
    t = cal["temperature"]
    lines = [
        f"balanced accuracy {m['balanced_accuracy']:.4f}   macro-F1 {m['macro_f1']:.4f}   "
        f"ECE {cal['ece']:.4f}"
        + (f" (temperature {t:.3f})" if t else " (no temperature: --calibrate fits one)")
    ]
    if result.calibration is not None:
        lines.append("calibrated on the run's validation split: " + result.calibration.summary())
    if m["most_confused"]:
        lines.append(
            "most confused: "
            + ", ".join(f"{c['true']} -> {c['predicted']} {c['count']}x" for c in m["most_confused"][:5])
        )
    wrong = [t for t in m["top_losses"] if t["true"] != t["predicted"]][:5]
    if wrong:
        lines.append("top losses (true -> predicted, probability):")
        lines.extend(f"  {t['id']}: {t['true']} -> {t['predicted']} {t['prob']:.3f}" for t in wrong)
    ood = m.get("ood")
    if ood is not None:
        lines.append(
            f"unlike the training data: {ood['flagged']} of {ood['n']} images ({ood['share']:.1%}) "
            f"flagged by the OOD detector (about 5% expected on images like the validation split)"
        )
    return lines
