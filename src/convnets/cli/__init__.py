"""Command-line entry point: a thin dispatcher over the library.

Each sub-command lives in its own module in this package with ``add_parser(subparsers)``
(which registers the parser and sets ``func``) so commands stay small and independent.
"""

from __future__ import annotations

import argparse
import importlib
import sys
import traceback
import warnings

from ..base.choices import (  # imports nothing: --help stays fast
    BACKEND_CHOICES,
    TORCH_PATH_CHOICES,
    TTA_MODES,
)
from ..base.errors import (  # noqa: F401 (error_text: for the command modules)
    EXIT_INTERNAL,
    EXIT_INTERRUPTED,
    EXIT_USAGE,
    ConvnetsError,
    debug_wanted,
    describe,
    error_text,
)

# Order is the order shown by `convnets --help`.
COMMAND_MODULES = [
    "demo",
    "train",
    "lr_find",
    "evaluate",
    "predict",
    "explain",
    "doctor",
    "review",
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


class CLIError(ConvnetsError):
    """A user error: printed as one line, exit code 2."""


def positive_int(text: str) -> int:
    """argparse ``type``: a whole number >= 1 (``--batch-size 0`` is a usage error, not a traceback)."""
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 1, got {text!r}")
    return value


def non_negative_float(text: str) -> float:
    """argparse ``type``: a finite number >= 0."""
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0 <= value < float("inf"):
        raise argparse.ArgumentTypeError(f"expected a number >= 0, got {text!r}")
    return value


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
    p.add_argument(
        "--tta",
        choices=TTA_MODES,
        default=None,
        help=f"{help} (default: the views the run validated on, else none)",
    )


def resolve_tta(args: argparse.Namespace) -> None:
    """``--tta`` not given: the run's own validation views (`convnets train --val-tta`), else none. A run
    folder that cannot be read is left to the command, which reports it in its own words."""
    if args.tta is None:
        from ..base.runs import RunConfig, RunFolderError  # start-up: only when --tta is left out

        try:
            args.tta = RunConfig.read(args.run_dir).test_views
        except (RunFolderError, OSError, ValueError):
            args.tta = "none"


def build_parser() -> argparse.ArgumentParser:
    from .. import __version__

    parser = argparse.ArgumentParser(
        prog="convnets",
        description="Build, train, transfer-learn and analyse convolutional image classifiers.",
    )
    parser.add_argument("--version", action="version", version=f"convnets {__version__}")
    parser.add_argument(
        "--debug",
        action="store_true",
        help="show the Python traceback of an error (also CONVNETS_DEBUG=1); may follow the command too",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:  # a missing module is a bug (a typo here): fail loudly
        importlib.import_module(f"{__package__}.{name}").add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run one command; the one place where failures become a line on stderr and an exit code
    (base/errors.py: 0 done, 1 partial, 2 usage or expected failure, 3 internal error, 130 interrupted)."""
    from ..base.runtime import tune_malloc

    tune_malloc()  # before the first big tensor is allocated; see runtime.py for the measurement
    argv = list(sys.argv[1:] if argv is None else argv)
    # --debug anywhere before a "--" (after the command too): argparse takes it only before.
    end = argv.index("--") if "--" in argv else len(argv)
    debug = "--debug" in argv[:end] or debug_wanted()
    argv = [a for i, a in enumerate(argv) if not (a == "--debug" and i < end)]
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return EXIT_USAGE
    # Warnings as one line: the format, not the display, is replaced, so whoever records warnings
    # (pytest.warns, a caller's catch_warnings(record=True)) still gets them.
    formatwarning = warnings.formatwarning
    if not debug:
        warnings.formatwarning = _warning_line(args.command)
    try:
        rc = args.func(args)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except Exception as e:  # noqa: BLE001 - the CLI's one error policy
        return report_error(args.command, e, debug)
    finally:
        warnings.formatwarning = formatwarning
    return int(rc or 0)


def report_error(command: str, e: BaseException, debug: bool = False) -> int:
    """One line on stderr for ``e`` (the traceback first with ``debug``); the exit code."""
    if debug:
        traceback.print_exception(e)
    told = describe(e)
    if told is not None:
        message, code = told
        print(f"convnets {command}: error: {message}", file=sys.stderr)
        return code
    message = str(e).strip().splitlines()[0] if str(e).strip() else ""
    print(
        f"convnets {command}: internal error: {type(e).__name__}: {message}"
        + ("" if debug else " (a bug: rerun with --debug for the traceback, and please report it)"),
        file=sys.stderr,
    )
    return EXIT_INTERNAL


def _warning_line(command: str):
    """``warnings.formatwarning`` as one line per warning (a skipped image, a library's notice)."""

    def one_line(message, category, filename, lineno, line=None) -> str:
        text = str(message).strip().splitlines()[0] if str(message).strip() else category.__name__
        return f"convnets {command}: warning: {text}\n"

    return one_line


if __name__ == "__main__":
    sys.exit(main())
