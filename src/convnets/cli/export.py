"""`convnets export RUN_DIR --format onnx|torchscript`: a deployable file with normalisation inside."""

from __future__ import annotations

import argparse
from pathlib import Path

from . import CLIError, non_negative_float


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "export",
        help="export a run to ONNX or TorchScript (normalisation and folded BatchNorm inside)",
        description="The exported graph takes RGB (or grey) pixels in [0, 1] at the run's image size, any "
        "batch size, and returns logits; class names are written beside it (FILE.labels.txt). The file is "
        "run back with onnxruntime / torch.jit.load and compared with PyTorch; fails above --atol.",
    )
    p.add_argument("run_dir", metavar="RUN_DIR", help="run folder written by `convnets train`")
    p.add_argument("--format", choices=["onnx", "torchscript"], default="onnx")
    p.add_argument("--out", type=Path, default=None, help="output file (default RUN_DIR/model.onnx or .pt)")
    p.add_argument(
        "--atol",
        type=non_negative_float,
        default=1e-4,
        help="largest allowed |exported - PyTorch| (default 1e-4)",
    )
    p.add_argument("--opset", type=int, default=17, help="ONNX opset (default 17)")
    q = p.add_argument_group("int8 (post-training static quantization of RUN_DIR/model.onnx)")
    q.add_argument(
        "--int8",
        action="store_true",
        help="also write RUN_DIR/model.int8.onnx, calibrated on the run's training images; its top-1 "
        "change on the validation split is measured, printed and recorded, and the model refused "
        "beyond --max-drop",
    )
    q.add_argument(
        "--calibration-images", type=int, default=300, help="training images to calibrate on (default 300)"
    )
    q.add_argument(
        "--max-drop",
        type=float,
        default=1.0,
        help="largest accepted validation top-1 loss, in points (default 1)",
    )
    p.set_defaults(func=run)


def run_int8(args: argparse.Namespace) -> int:
    from ..base.runs import RunFolderError
    from ..deploy.quantize import QuantizationRefused, quantize_run

    if args.calibration_images < 1:
        raise CLIError("--calibration-images must be at least 1")
    try:
        result = quantize_run(
            args.run_dir,
            calibration_images=args.calibration_images,
            max_drop=args.max_drop,
            log=lambda msg: print(msg, flush=True),
        )
    except QuantizationRefused as e:
        raise CLIError(str(e)) from e
    except (RunFolderError, FileNotFoundError) as e:
        raise CLIError(str(e)) from e
    info = result.info
    print(f"wrote {result.path} (int8, calibrated on {info.calibration_images} training images)")
    print(
        f"validation top-1 on {info.val_images} images: fp32 {100 * info.fp32_top1:.2f}%, int8 "
        f"{100 * info.int8_top1:.2f}% ({info.delta_points:+.2f} points; {result.engine}); "
        f"top-1 agreement {100 * info.top1_agreement:.1f}%"
    )
    return 0


def run(args: argparse.Namespace) -> int:
    if args.int8:
        if args.format != "onnx" or args.out is not None:
            raise CLIError("--int8 quantizes the run's own RUN_DIR/model.onnx: drop --format/--out")
        return run_int8(args)
    from ..deploy.export import ExportError, export_run

    try:
        result = export_run(args.run_dir, args.format, args.out, atol=args.atol, opset=args.opset)
    except (ExportError, FileNotFoundError, ValueError) as e:
        raise CLIError(str(e)) from e
    fold = result.fold
    print(f"wrote {result.path} ({args.format}, input {result.input_shape} in [0, 1])")
    print(f"wrote {result.labels_path}")
    print(
        f"BatchNorm layers folded into convolutions: {fold['batchnorm_before'] - fold['batchnorm_after']} "
        f"of {fold['batchnorm_before']} ({fold['method']})"
    )
    print(f"max |exported - PyTorch| = {result.max_abs_diff:.3g} (tolerance {result.atol:g})")
    return 0
