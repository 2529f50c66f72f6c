"""Hand-written C kernels for bf16 CPU training: compiled once per machine, loaded with ctypes.

Used where neither ATen/oneDNN nor ``torch.compile`` reach the memory speed of an operation (each
kernel's file says what it replaces and by how much). The C source is compiled on first use with the
system's C compiler (``cc -O3 -march=native -fopenmp``) into ``cache_root()/kernels/``, keyed by the
source, the compiler and the CPU, so a changed file or another CPU model builds anew; the file is
moved into place atomically, so concurrent runs see the old file or the whole new one.

Without a C compiler, or with ``CONVNETS_C_KERNELS=0``, :func:`load_c_kernel` returns None and says why
(:func:`c_kernel_error`); callers then run ATen's kernels.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import platform
import shutil
import subprocess
import tempfile
import threading
from pathlib import Path

ENV_SWITCH = "CONVNETS_C_KERNELS"
CFLAGS = ["-O3", "-march=native", "-fopenmp", "-shared", "-fPIC", "-std=c99"]
if platform.machine().lower() in ("x86_64", "amd64"):
    # GCC tunes recent Xeons for 256-bit vectors; the kernels are 20% faster with AVX-512's full width
    # (bench/RESULTS.md, "Training precision"). Without AVX-512 the flag changes nothing.
    CFLAGS.append("-mprefer-vector-width=512")
Signatures = dict[str, tuple[type | None, list[type]]]  # function: (restype, argtypes)

_lock = threading.Lock()
_loaded: dict[Path, ctypes.CDLL] = {}
_errors: dict[Path, str] = {}


def compiler() -> str | None:
    """``$CC``, else ``cc``, else ``gcc`` on PATH."""
    return shutil.which(os.environ.get("CC") or "cc") or shutil.which("gcc")


def library_path(source: Path) -> Path:
    """Where ``source`` compiled lives: keyed by its text, the compiler and flags, and the CPU model
    (``-march=native``)."""
    from ..data.pca import cache_root
    from ..runtime import describe_cpu

    key = "|".join(
        [source.read_text(), str(compiler()), " ".join(CFLAGS), describe_cpu()["cpu"], platform.machine()]
    )
    return cache_root() / "kernels" / f"{source.stem}-{hashlib.sha1(key.encode()).hexdigest()[:16]}.so"


def _compile(source: Path, target: Path) -> None:
    cc = compiler()
    if cc is None:
        raise RuntimeError("no C compiler (cc or gcc) on PATH")
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
        out = Path(tmp) / target.name
        done = subprocess.run(
            [cc, *CFLAGS, str(source), "-o", str(out)], capture_output=True, text=True, timeout=120
        )
        if done.returncode != 0:
            raise RuntimeError(f"{cc} failed on {source.name}: {done.stderr.strip()[-500:]}")
        os.replace(out, target)


def load_c_kernel(source: Path, signatures: Signatures) -> ctypes.CDLL | None:
    """``source`` compiled and loaded with ``signatures`` declared, once per process; None where it
    can't be had (:func:`c_kernel_error` says why)."""
    if os.environ.get(ENV_SWITCH, "1") == "0":
        return None
    with _lock:
        if source in _loaded or source in _errors:
            return _loaded.get(source)
        try:
            path = library_path(source)
            if not path.exists():
                _compile(source, path)
            lib = ctypes.CDLL(str(path))
            for name, (restype, argtypes) in signatures.items():
                function = getattr(lib, name)
                function.restype, function.argtypes = restype, argtypes
        except (OSError, RuntimeError, AttributeError, subprocess.SubprocessError) as e:
            _errors[source] = str(e)
            return None
        _loaded[source] = lib
        return lib


def c_kernel_error(source: Path) -> str | None:
    """Why :func:`load_c_kernel` returned None for ``source`` (None when untried or loaded)."""
    if os.environ.get(ENV_SWITCH, "1") == "0":
        return f"{ENV_SWITCH}=0"
    return _errors.get(source)
