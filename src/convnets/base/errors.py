"""The CLI's error policy, torch-free: which failures are expected, how each is told, and exit codes.

An *expected* failure is one the user can fix: a missing, damaged or unwritable file, folder or run,
a bad option value. It is printed as one line naming the file, field or option, with no traceback.
Anything else is a bug: one line too, saying so, and the traceback only with ``convnets --debug``
(or ``CONVNETS_DEBUG=1``).

Exit codes (documented in the README, "Errors and exit codes"):

* ``0`` done;
* ``1`` done in part: some inputs of a batch failed (each reported, the rest went on), or a check the
  command runs failed (``doctor --strict``, a loss that became NaN);
* ``2`` nothing done: a usage error (bad option value) or an expected failure above;
* ``3`` an internal error (a bug in convnets or a library it uses);
* ``130`` interrupted (Ctrl-C).

Library code raises :class:`ConvnetsError` subclasses (``RunFolderError``, ``WeightsError``,
``ExportError``, ``EngineError``, ...) naming what is wrong; the CLI's one handler,
:func:`describe`, turns those, ``OSError`` (with its file name) and ``ValueError`` into the line.
"""

from __future__ import annotations

import errno
import os
import tempfile
from pathlib import Path

EXIT_OK = 0
EXIT_PARTIAL = 1
EXIT_USAGE = 2
EXIT_INTERNAL = 3
EXIT_INTERRUPTED = 130

DEBUG_ENV = "CONVNETS_DEBUG"


class ConvnetsError(Exception):
    """An expected failure, told as one line; ``exit_code`` is what the CLI exits with."""

    exit_code = EXIT_USAGE


class OutputPathError(ConvnetsError, ValueError):
    """An output path that cannot be written: a file where a folder is wanted (or the reverse), a
    read-only folder, a name too long for the file system."""


def debug_wanted() -> bool:
    return os.environ.get(DEBUG_ENV, "").strip().lower() not in ("", "0", "false", "no")


def describe(e: BaseException) -> tuple[str, int] | None:
    """(one-line message, exit code) for an expected failure; None for a bug."""
    if isinstance(e, ConvnetsError) or type(e).__name__ == "ImageReadError":  # decode.py's, told as is
        return _one_line(str(e)), getattr(e, "exit_code", EXIT_USAGE)
    if isinstance(e, OSError):
        return os_error_message(e), EXIT_USAGE
    if isinstance(e, MemoryError):
        return f"out of memory{': ' + str(e) if str(e) else ''}", EXIT_USAGE
    if isinstance(e, ValueError) and type(e).__module__.split(".")[0] in ("convnets", "builtins"):
        # The library's own checks raise ValueError with the message meant for the user.
        return _one_line(str(e)), EXIT_USAGE
    return None


def os_error_message(e: OSError) -> str:
    """``FILE: reason``, e.g. ``runs/a: Permission denied`` (of a rename onto a folder: the folder)."""
    reason = e.strerror or str(e) or type(e).__name__
    if e.errno == errno.ENAMETOOLONG:
        reason = "file name too long"
    names = [str(n) for n in (e.filename, e.filename2) if n is not None]
    if not names:
        return _one_line(reason)
    return f"{_short(names[-1] if e.errno == errno.EISDIR and len(names) == 2 else names[0])}: {reason}"


def _short(name: str, keep: int = 120) -> str:
    """A path short enough for one line (a 300-character name is shown by its ends)."""
    return name if len(name) <= keep else f"{name[: keep // 2]}...{name[-keep // 2 :]}"


def _one_line(message: str) -> str:
    lines = [line.strip() for line in message.strip().splitlines() if line.strip()]
    return lines[0] if lines else "failed"


# --- output paths, checked before the work that fills them ---------------------------------------


def can_write_in(folder: str | os.PathLike) -> bool:
    """Whether a file can be created in ``folder`` (tried, not guessed: ``os.access`` says yes to
    root on a read-only mount)."""
    try:
        fd, name = tempfile.mkstemp(dir=folder, prefix=".convnets-probe-")
    except OSError:
        return False
    os.close(fd)
    os.unlink(name)
    return True


def output_dir(path: str | os.PathLike, option: str = "--out") -> Path:
    """``path`` checked as a folder to write into, creating nothing: :class:`OutputPathError` naming
    ``option`` when it (or a parent) is a file, or when it (or, if missing, its nearest existing
    parent, where it would be created) cannot be written."""
    path = Path(path)
    shown = _short(str(path))
    try:
        existing = path
        while not existing.exists() and existing != existing.parent:
            existing = existing.parent
        is_dir = existing.is_dir()
    except OSError as e:  # e.g. a name too long for the file system
        raise OutputPathError(f"{option} {shown}: {os_error_message(e).rsplit(': ', 1)[-1]}") from None
    if not is_dir:
        where = "is a file" if existing == path else f"{_short(str(existing))} is a file"
        raise OutputPathError(f"{option} {shown}: {where}, not a folder")
    if not can_write_in(existing):
        where = "folder" if existing == path else f"{_short(str(existing))}"
        raise OutputPathError(f"{option} {shown}: {where} is not writable")
    return path


def output_file(path: str | os.PathLike, option: str = "--out") -> Path:
    """``path`` as a file to (re)write: its folder is created; :class:`OutputPathError` naming
    ``option`` when ``path`` is a folder or its folder cannot be written."""
    path = Path(path)
    if path.is_dir():
        raise OutputPathError(f"{option} {_short(str(path))}: is a folder; give a file name")
    if len(path.name.encode()) > 255:
        raise OutputPathError(f"{option} {_short(str(path))}: file name too long")
    output_dir(path.parent if str(path.parent) else ".", option)
    return path


def error_text(e: BaseException) -> str:
    """The message of ``e`` as the user should read it: a KeyError's own text, not its repr (which
    quotes it; stripping those quotes cut a closing quote off names inside the message)."""
    if isinstance(e, KeyError) and len(e.args) == 1 and isinstance(e.args[0], str):
        return e.args[0]
    return str(e)


# --- checkpoints (convnets.weights), here so models/ can raise them without importing that package ---


class WeightsError(ConvnetsError, ValueError):
    """A checkpoint that cannot be found, read or used; the message names the file."""


class CheckpointMismatchError(WeightsError):
    """The checkpoint's tensors do not fit the model (missing/unexpected keys, other shapes)."""
