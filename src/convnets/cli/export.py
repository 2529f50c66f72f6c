"""`convnets export RUN_DIR --format onnx|torchscript`: a deployable file with normalisation inside."""

from __future__ import annotations

import argparse
from pathlib import Path

from . import CLIError


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
        "--atol", type=float, default=1e-4, help="largest allowed |exported - PyTorch| (default 1e-4)"
    )
    p.add_argument("--opset", type=int, default=17, help="ONNX opset (default 17)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..export import ExportError, export_run

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
