"""Hand-written C kernels for bf16 CPU training: compiled once per machine, loaded with ctypes.

Used where neither ATen/oneDNN nor ``torch.compile`` reach the memory speed of an operation (each
kernel's file says what it replaces and by how much). The C source is compiled on first use with the
system's C compiler (``cc -O3 -march=native -fopenmp``) into ``cache_root()/kernels/``, keyed by the
source, the compiler and the instruction sets the compiler really targets (``-march=native`` expanded
to its ``__AVX512F__``-style macros, not the CPU's model name, which a hypervisor often reduces to
"AMD EPYC" for AVX2 and AVX-512 parts alike), so a changed file or another CPU kind builds anew; the file
is moved into place atomically, so concurrent runs see the old file or the whole new one. Before a
library is loaded, every instruction set it was built for is checked against this CPU's flags: one
built for other hardware (a cache on a shared home directory) would die of SIGILL mid-training, which
no ``except`` catches.

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

from ..base import runtime  # read at call time: tests stand in other CPUs through it
from ..base.runtime import cache_root

ENV_SWITCH = "CONVNETS_C_KERNELS"
CFLAGS = ["-O3", "-fopenmp", "-shared", "-fPIC", "-std=c99"]
X86 = platform.machine().lower() in ("x86_64", "amd64")
if X86:
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


def arch_flags() -> list[str]:
    """``-march=native``, or on x86 under an ISA cap (:func:`convnets.base.runtime.isa_cap`) the x86-64
    level the cap allows, so a capped run also builds and runs the lesser CPU's code."""

    if not X86 or runtime.isa_cap() is None:
        return ["-march=native"]
    flags = runtime.cpu_flags()
    if "avx512f" in flags:
        return ["-march=x86-64-v4", "-mtune=native"]
    if "avx2" in flags:
        return ["-march=x86-64-v3", "-mtune=native"]
    return ["-march=x86-64-v2", "-mtune=native"]


_targets: dict[tuple[str, ...], tuple[str, ...]] = {}


def target_isas(flags: list[str] | None = None) -> tuple[str, ...]:
    """The instruction sets the compiler targets with ``flags`` (default :func:`arch_flags`): its
    predefined ``__AVX2__``-style macros, lower-cased without underscores (``avx2``, ``avx512bf16``).
    Empty without a compiler."""
    flags = arch_flags() if flags is None else flags
    key = (str(compiler()), *flags)
    if key not in _targets:
        isas: tuple[str, ...] = ()
        cc = compiler()
        if cc is not None:
            done = subprocess.run(
                [cc, *flags, "-dM", "-E", "-x", "c", os.devnull], capture_output=True, text=True, timeout=60
            )
            macros = (line.split()[1] for line in done.stdout.splitlines() if line.startswith("#define "))
            isas = tuple(
                sorted(
                    m.strip("_").lower().replace("_", "")
                    for m in macros
                    if m.startswith(("__AVX", "__AMX", "__FMA__", "__F16C__", "__SSE", "__ARM_FEATURE_"))
                    and not m.endswith("_MATH__")  # __SSE_MATH__: a code-generation mode, not an ISA
                )
            )
        _targets[key] = isas
    return _targets[key]


def unsupported_isas(isas: tuple[str, ...]) -> list[str]:
    """Those of ``isas`` (x86 names from :func:`target_isas`) this CPU lacks; none off x86 or without
    /proc/cpuinfo, where there is nothing to check against."""

    have = {f.replace("_", "").replace(".", "") for f in runtime.cpu_flags()}
    if not X86 or not have:
        return []
    if "pni" in have:  # /proc/cpuinfo's name for SSE3
        have.add("sse3")
    return [i for i in isas if not i.startswith("arm") and i not in have]


def library_path(source: Path) -> Path:
    """Where ``source`` compiled lives: keyed by its text, the compiler and flags, and the instruction
    sets those flags target on this machine."""

    flags = [*arch_flags(), *CFLAGS]
    key = "|".join(
        [source.read_text(), str(compiler()), " ".join(flags), " ".join(target_isas()), platform.machine()]
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
            [cc, *arch_flags(), *CFLAGS, str(source), "-o", str(out)],
            capture_output=True,
            text=True,
            timeout=120,
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
            missing = unsupported_isas(target_isas())
            if missing:
                raise RuntimeError(f"the compiler targets {', '.join(missing)}, which this CPU lacks")
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
