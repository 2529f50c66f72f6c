"""Command-line entry point: a thin dispatcher over the library.

Each sub-command lives in its own module in this package with ``add_parser(subparsers)``
(which registers the parser and sets ``func``) so commands stay small and independent.
"""

from __future__ import annotations

import argparse
import importlib
import sys

# Order is the order shown by `convnets --help`.
COMMAND_MODULES = [
    "demo",
    "train",
    "evaluate",
    "predict",
    "ensemble",
    "export",
    "report",
    "compare",
    "pick",
    "models_cmd",
    "cost_cmd",
    "augment_preview",
    "experiment",
]


class CLIError(Exception):
    """A user error: printed as one line, exit code 2."""


def add_backend_argument(p: argparse.ArgumentParser, exported: bool = False) -> None:
    """``--backend`` for the commands that run a trained model (predict, evaluate, ensemble, report);
    ``exported``: the command can run the run's exported model on OpenVINO / int8 too (predict)."""
    from ..backends import BACKEND_CHOICES, TORCH_PATH_CHOICES  # imports nothing: --help stays fast

    more = (
        "; openvino = OpenVINO (bf16 on CPUs with AMX/AVX512-BF16); int8 = RUN_DIR/model.int8.onnx "
        "(written by `convnets export RUN --int8`)"
        if exported
        else ""
    )
    p.add_argument(
        "--backend",
        choices=BACKEND_CHOICES if exported else TORCH_PATH_CHOICES,
        default="auto",
        help="what runs the model: auto = the fastest engine measured on this CPU that passed its check "
        "(ONNX Runtime on CPU when installed"
        + (", OpenVINO bf16 or int8 on AMX CPUs" if exported else "")
        + "), else TorchScript with BatchNorm folded; eager = the plain PyTorch model"
        + more,
    )


def build_parser() -> argparse.ArgumentParser:
    from .. import __version__

    parser = argparse.ArgumentParser(
        prog="convnets",
        description="Build, train, transfer-learn and analyse convolutional image classifiers.",
    )
    parser.add_argument("--version", action="version", version=f"convnets {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        try:
            module = importlib.import_module(f"{__package__}.{name}")
        except ModuleNotFoundError as e:  # a command not written yet
            if e.name != f"{__package__}.{name}":
                raise
            continue
        module.add_parser(sub)
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
