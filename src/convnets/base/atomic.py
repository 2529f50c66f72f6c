"""Atomic file writes: a temp file in the destination folder, fsync, then ``os.replace``.

An interrupted write never leaves a truncated file, and the previous version stays until the new one
is complete. The file gets the permissions an ordinary ``open()`` would give it (0666 less the umask),
not ``mkstemp``'s private 0600: a run folder written by one user stays readable by a server running as
another. Torch-free, so the run folder and the server can use it without importing torch.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any


def current_umask() -> int:
    """The process's umask, read without changing it where Linux allows (``/proc/self/status``):
    ``os.umask`` can only be read by setting it, a window in which another thread's files get 0666."""
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def new_file_mode() -> int:
    """What ``open(path, "w")`` would create: 0666 less the umask."""
    return 0o666 & ~current_umask()


def make_like_new_file(path: str | os.PathLike) -> None:
    """Give a ``mkstemp`` file (always 0600) the permissions of an ordinarily created one."""
    os.chmod(path, new_file_mode())


def atomic_write(path: str | os.PathLike, write: Callable[[Path], None]) -> Path:
    """Call ``write(tmp_path)`` then atomically move ``tmp_path`` onto ``path``.

    The temporary file lives in the destination folder (``os.replace`` is only atomic within one
    file system) and is removed if ``write`` fails, leaving any previous ``path`` untouched.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # ".NAME.XXXXXXXX.tmp" must fit the 255 bytes a name may have, as NAME itself does
    prefix = f".{path.name}." if len(os.fsencode(path.name)) <= 240 else ".convnets-"
    fd, tmp_name = tempfile.mkstemp(prefix=prefix, suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        make_like_new_file(tmp)
        write(tmp)
        with open(tmp, "rb") as f:  # make the bytes durable before the rename publishes them
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    return atomic_write(path, lambda tmp: tmp.write_bytes(data))


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    return atomic_write(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def atomic_write_json(path: str | os.PathLike, obj: Any) -> Path:
    return atomic_write_text(path, json.dumps(obj, indent=2) + "\n")
