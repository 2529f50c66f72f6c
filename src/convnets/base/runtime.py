"""Process-level CPU settings that make PyTorch fast on a laptop.

glibc's malloc hands large freed buffers straight back to the OS (mmap/munmap, heap trimming), so
every training step re-faults the same activation memory page by page. Telling malloc to keep its
memory (`M_MMAP_MAX=0`, a large `M_TRIM_THRESHOLD`) removes those page-fault storms: measured on the
project's 2-core machine, fp32 matmul went from 85 to 180 GFLOP/s and training steps 1.2-1.3x faster
(bench/RESULTS.md). It is the same as exporting MALLOC_MMAP_MAX_=0 / MALLOC_TRIM_THRESHOLD_, done
in-process so users don't need to know. jemalloc/tcmalloc, when preloaded, are left alone.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import platform
import sys
from pathlib import Path

_M_TRIM_THRESHOLD = -1
_M_MMAP_MAX = -4
_TRIM_THRESHOLD = 1 << 30  # keep up to 1 GiB of freed memory instead of returning it to the OS

_malloc_tuned: bool | None = None


def cache_root() -> Path:
    """``$CONVNETS_CACHE`` or ``~/.cache/convnets``: what convnets keeps per machine (decoded images,
    colour statistics, compiled kernels, bf16 picks, exported graphs with features)."""
    return Path(os.environ.get("CONVNETS_CACHE") or Path.home() / ".cache" / "convnets")


# The flags that decide the speed of training and inference, recorded with every benchmark figure.
_RECORDED_FLAGS = frozenset(
    {
        "avx2",
        "fma",
        "avx512f",
        "avx512_vnni",
        "avx512_bf16",
        "avx512_fp16",
        "amx_tile",
        "amx_bf16",
        "amx_int8",
    }
)


def _preloaded_allocator() -> str | None:
    preload = os.environ.get("LD_PRELOAD", "")
    for name in ("jemalloc", "tcmalloc", "mimalloc"):
        if name in preload:
            return name
    return None


def tune_malloc() -> bool:
    """Stop glibc malloc from returning big buffers to the OS; idempotent. Returns whether it applied.

    Disabled by ``CONVNETS_MALLOC_TUNING=0``; skipped off Linux/glibc and when another allocator is
    preloaded or the user set the MALLOC_* variables themselves.
    """
    global _malloc_tuned
    if _malloc_tuned is not None:
        return _malloc_tuned
    _malloc_tuned = False
    if os.environ.get("CONVNETS_MALLOC_TUNING", "1") == "0" or not sys.platform.startswith("linux"):
        return False
    if _preloaded_allocator() or "MALLOC_MMAP_MAX_" in os.environ or "MALLOC_TRIM_THRESHOLD_" in os.environ:
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # musl or another libc without mallopt
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    ok = mallopt(_M_MMAP_MAX, 0) == 1 and mallopt(_M_TRIM_THRESHOLD, _TRIM_THRESHOLD) == 1
    _malloc_tuned = ok
    return ok


def memory_mb() -> tuple[float, float] | None:
    """(resident now, peak resident) of this process in MiB, or None where /proc is missing. The
    trainer records both every epoch, so a long run shows whether its memory stays flat."""
    try:
        with open("/proc/self/statm") as f:
            resident_pages = int(f.read().split()[1])
        import resource  # optional: POSIX only
    except (OSError, ImportError, ValueError, IndexError):
        return None
    now = resident_pages * os.sysconf("SC_PAGE_SIZE") / 2**20
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    return round(now, 1), round(max(peak, now), 1)


def cpu_flags() -> frozenset[str]:
    """The CPU's feature flags from /proc/cpuinfo (``amx_bf16``, ``avx512_vnni``, ...) as the process may
    use them: without those above an ISA cap the user set (:func:`isa_cap`); empty where there is no
    /proc/cpuinfo. Torch-free and read once: the exported-model engines, int8 quantization, the compiled
    kernels and ``--precision auto`` choose by it."""
    global _cpu_flags
    if _cpu_flags is None:
        flags: frozenset[str] = frozenset()
        try:
            with open("/proc/cpuinfo") as f:
                for line in f:
                    if line.startswith(("flags", "Features")):
                        flags = frozenset(line.split(":", 1)[1].split())
                        break
        except OSError:
            pass
        cap = isa_cap()
        if cap is not None:
            flags = frozenset(f for f in flags if not _above_cap(f, cap))
        _cpu_flags = flags
    return _cpu_flags


_cpu_flags: frozenset[str] | None = None

# The ISA levels a dispatch can be capped at, lowest first, with the flag prefixes each level still
# lacks. ``ATEN_CPU_CAPABILITY`` caps ATen's kernels and ``ONEDNN_MAX_CPU_ISA`` oneDNN's (what torch's
# convolutions and OpenVINO run); with either set, convnets' own choices follow the same cap, so a
# better CPU behaves as a lesser one end to end (.ci/run runs the hardware-sensitive tests so).
_ISA_LEVELS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("default", ("avx", "fma", "f16c", "amx")),
    ("avx2", ("avx512", "avx_vnni", "avx_ifma", "avx_ne_convert", "amx")),
    ("avx2_vnni", ("avx512", "avx_ifma", "avx_ne_convert", "amx")),
    ("avx512_core", ("avx512_vnni", "avx512_bf16", "avx512_fp16", "avx512vbmi", "avx512_vbmi2", "amx")),
    ("avx512_core_vnni", ("avx512_bf16", "avx512_fp16", "amx")),
    ("avx512_core_bf16", ("avx512_fp16", "amx")),
    ("avx512_core_amx", ()),
)
_LEVEL_ALIASES = {"avx512": "avx512_core", "sse41": "default", "avx": "default", "avx2_vnni_2": "avx2_vnni"}


def isa_cap() -> str | None:
    """The lowest ISA level that ``CONVNETS_MAX_CPU_ISA``, ``ONEDNN_MAX_CPU_ISA`` or
    ``ATEN_CPU_CAPABILITY`` allow (``avx2``, ``avx512_core``, ...), or None when none caps it."""
    variables = ("CONVNETS_MAX_CPU_ISA", "ONEDNN_MAX_CPU_ISA", "ATEN_CPU_CAPABILITY")
    names = [_level_name(os.environ.get(v, "")) for v in variables]
    order = [name for name, _ in _ISA_LEVELS]
    caps = [n for n in names if n in order]
    return min(caps, key=order.index) if caps else None


def _level_name(value: str) -> str:
    value = value.strip().lower()
    return _LEVEL_ALIASES.get(value, value)


def _above_cap(flag: str, cap: str) -> bool:
    lacking = dict(_ISA_LEVELS)[cap]
    return bool(lacking) and flag.startswith(lacking)


def cpu_has_native_bf16() -> bool:
    """True when the CPU has bf16 arithmetic (AVX512-BF16 or AMX); without it bf16 autocast is
    emulated and measured 5-10x *slower* than fp32 on this project's machine."""
    return bool(cpu_flags() & {"avx512_bf16", "amx_bf16"})


def cpu_has_amx_bf16() -> bool:
    """True when the CPU has AMX tiles with bf16 (Intel Xeon 4th generation and later): oneDNN then runs
    bf16 convolutions and matmuls on its AMX kernels, measured 10x fp32's matmul rate here."""
    return bool({"amx_bf16", "amx_tile"} <= cpu_flags())


def has_grouped_convolutions(model) -> bool:
    """Depthwise/grouped convolutions (MobileNet, EfficientNet): memory-bound layers whose speed
    follows the memory format and precision differently from dense convolutions."""
    # start-up: torch on first use
    from torch import nn  # not at module level: tune_malloc must be callable before torch loads

    return any(isinstance(m, nn.Conv2d) and m.groups > 1 for m in model.modules())


# Multiply-adds per image under which CPUs with native bf16 still train in fp32: the digits demo's
# models (LeNet-5, 0.4 M; ResNet-20 at 16 px, 10 M) ran no faster in bf16 (AMX Xeon: slower; AVX-512
# EPYC: 1.01x), while every model measured from ResNet-20 at 32 px (40.6 M) up was faster on both kinds
# (bench/RESULTS.md, "Training precision").
BF16_MIN_MACS = 20e6


def auto_precision(device_type: str, model=None, macs: float | None = None) -> tuple[str, str]:
    """What ``--precision auto`` trains ``model`` in on ``device_type``, and why (for the run's log line).

    bf16 only where it was measured faster than fp32 *and* as accurate (bench/RESULTS.md, "Training
    precision"): on CPUs with bf16 instructions (``cpu_has_native_bf16``: AMX tiles or AVX512-BF16),
    through the precision plan's backward picker and fused BatchNorm kernels. The AMX Xeon trains
    ResNet-50 1.8-2.2x, MobileNetV2 1.2-1.4x and ResNet-18 1.9x faster than fp32, and on the mean it kept
    accuracy (SIGNS from scratch, 12 seeds: -0.4 points; alpaca transfer, 9 seeds: 0.0); the AVX-512
    EPYC (AVX512-BF16, no AMX) ResNet-20/56 at 32 px 1.44x, MobileNetV2 1.35-1.62x, ResNet-50 1.59x,
    and CIFAR-10's fast recipe reached fp32's validation accuracy. The per-layer picks persist per
    machine and in ``last.pt``, so seeded runs and resumes repeat. Models under :data:`BF16_MIN_MACS`
    multiply-adds per image (``macs``, when given) stay fp32. CPUs without bf16 instructions (AVX2)
    would emulate it, 5-15x slower, and stay fp32. CUDA GPUs with native bf16 (Ampere and later) train
    in bf16, the standard mixed-precision recipe; older GPUs and Apple's MPS in fp32.
    """
    if device_type == "cpu":
        if not cpu_has_native_bf16():
            return "fp32", "no bf16 instructions on this CPU (AVX512-BF16 or AMX): bf16 would be emulated"
        kind = "AMX CPU" if cpu_has_amx_bf16() else "AVX512-BF16 CPU"
        if macs is not None and macs < BF16_MIN_MACS:
            return "fp32", (
                f"{kind}, but a small model ({macs / 1e6:.1f} M multiply-adds per image): "
                f"bf16 pays from {BF16_MIN_MACS / 1e6:.0f} M"
            )
        return "bf16", f"{kind}: bf16 measured 1.3-2.2x faster at fp32's accuracy; --precision fp32 opts out"
    if device_type == "cuda":
        import torch  # start-up: torch on first use

        if torch.cuda.is_bf16_supported(including_emulation=False):
            return "bf16", "this GPU has native bf16"
        return "fp32", "this GPU has no native bf16"
    return "fp32", f"bf16 autocast is not measured on {device_type}"


def describe_cpu() -> dict:
    """CPU model, cores and threads, for benchmark and run records."""

    import torch  # start-up: torch on first use

    model = platform.processor() or ""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:
        cores = os.cpu_count() or 1
    return {
        "cpu": model,
        "cores": cores,
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "capability": torch.backends.cpu.get_cpu_capability(),
        "native_bf16": cpu_has_native_bf16(),
        "amx_bf16": cpu_has_amx_bf16(),
        "flags": sorted(cpu_flags() & _RECORDED_FLAGS),
        "malloc_tuned": bool(_malloc_tuned),
    }


def prefers_channels_last(model) -> bool:
    """Whether CPU training should use channels-last (NHWC) for ``model``.

    Measured on two 2-core CPUs (bench/RESULTS.md, "Training defaults"). Networks with
    depthwise/grouped convolutions (MobileNet, EfficientNet) train faster in NHWC on both (1.40x and
    1.72x for mobilenet_v2). Dense-convolution networks (VGG, ResNet, LeNet) depend on the CPU: on an
    AVX2 CPU oneDNN's NHWC convolution backward ran at ~90 GFLOP/s against ~150 in NCHW and resnet50
    was 1.09x faster in NCHW; on an AVX-512 CPU resnet50 trained 1.10x (64 px) and 1.23x (224 px)
    faster in NHWC. So: grouped convolutions, or a CPU whose torch kernels use AVX-512.
    """
    import torch  # start-up: torch on first use

    if has_grouped_convolutions(model):
        return True
    return torch.backends.cpu.get_cpu_capability().startswith("AVX512")
