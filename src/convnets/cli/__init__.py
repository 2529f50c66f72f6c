"""Command-line entry point: a thin dispatcher over the library.

Each sub-command lives in its own module in this package with ``add_parser(subparsers)``
(which registers the parser and sets ``func``) so commands stay small and independent.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from ..backends import BACKEND_CHOICES, TORCH_PATH_CHOICES, TTA_MODES  # imports nothing: --help stays fast

# Order is the order shown by `convnets --help`.
COMMAND_MODULES = [
    "demo",
    "train",
    "lr_find",
    "evaluate",
    "predict",
    "explain",
    "doctor",
    "ensemble",
    "export",
    "serve",
    "report",
    "compare",
    "pick",
    "models_cmd",
    "cost_cmd",
    "augment_preview",
    "experiment",
    "shard",
]


class CLIError(Exception):
    """A user error: printed as one line, exit code 2."""


def add_backend_argument(p: argparse.ArgumentParser, exported: bool = False) -> None:
    """``--backend`` for the commands that run a trained model (predict, evaluate, ensemble, report);
    ``exported``: the command can run the run's exported model on OpenVINO / int8 too (predict)."""
    p.add_argument(
        "--backend",
        choices=BACKEND_CHOICES if exported else TORCH_PATH_CHOICES,
        default="auto",
        help="what runs the model: auto = the fastest engine measured on this CPU that passed its check "
        "(ONNX Runtime on CPU when installed"
        + (", OpenVINO bf16 or int8 on AMX CPUs" if exported else "")
        + "), else TorchScript with BatchNorm folded; eager = the plain PyTorch model"
        + (
            "; openvino = OpenVINO (bf16 on CPUs with AMX/AVX512-BF16); int8 = RUN_DIR/model.int8.onnx "
            "(written by `convnets export RUN --int8`)"
            if exported
            else ""
        ),
    )


def add_tta_argument(p: argparse.ArgumentParser, help: str = "test-time augmentation") -> None:
    """``--tta`` for the commands that can average over augmented views (predict, evaluate)."""
    p.add_argument("--tta", choices=TTA_MODES, default="none", help=help)


def build_parser() -> argparse.ArgumentParser:
    from .. import __version__

    parser = argparse.ArgumentParser(
        prog="convnets",
        description="Build, train, transfer-learn and analyse convolutional image classifiers.",
    )
    parser.add_argument("--version", action="version", version=f"convnets {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:  # a missing module is a bug (a typo here): fail loudly
        importlib.import_module(f"{__package__}.{name}").add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    from ..runtime import tune_malloc

    tune_malloc()  # before the first big tensor is allocated; see runtime.py for the measurement
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        rc = args.func(args)
    except CLIError as e:
        print(f"convnets {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    return int(rc or 0)


if __name__ == "__main__":
    sys.exit(main())
