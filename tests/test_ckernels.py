"""The compiled-kernel cache: keyed by what the compiler targets, never loaded on a CPU that lacks it."""

from __future__ import annotations

import platform
import shutil
from pathlib import Path

import pytest

from convnets.accel import ckernels
from convnets.base import runtime

SOURCE = Path(ckernels.__file__).with_name("bn_act_kernel.c")
needs_x86_cc = pytest.mark.skipif(
    ckernels.compiler() is None or platform.machine().lower() not in ("x86_64", "amd64"),
    reason="needs an x86-64 machine with a C compiler (the cache key reads the compiler's target macros)",
)


@pytest.fixture
def fresh(tmp_path, monkeypatch):
    monkeypatch.setattr(ckernels, "_loaded", {})
    monkeypatch.setattr(ckernels, "_errors", {})
    monkeypatch.setattr(ckernels, "_targets", {})
    monkeypatch.setenv("CONVNETS_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("CONVNETS_C_KERNELS", raising=False)
    return tmp_path


@needs_x86_cc
def test_cache_key_follows_the_target_isa_not_the_cpu_name(fresh, monkeypatch):
    """Two CPUs that both call themselves "AMD EPYC" but differ in AVX-512 get two libraries."""
    monkeypatch.setattr(runtime, "describe_cpu", lambda: {"cpu": "AMD EPYC"})
    monkeypatch.setattr(ckernels, "arch_flags", lambda: ["-march=x86-64-v3"])
    avx2 = ckernels.library_path(SOURCE)
    assert "avx2" in ckernels.target_isas() and "avx512f" not in ckernels.target_isas()
    monkeypatch.setattr(ckernels, "arch_flags", lambda: ["-march=x86-64-v4"])
    avx512 = ckernels.library_path(SOURCE)
    assert "avx512f" in ckernels.target_isas()
    assert avx2 != avx512


@needs_x86_cc
def test_a_library_for_other_hardware_is_never_loaded(fresh, monkeypatch):
    """A compiler that targets AVX-512 on a CPU without it (a copied cache, a cross-configured CC):
    refused before any load, with the reason, so training runs ATen's kernels instead of dying of
    SIGILL."""
    monkeypatch.setattr(ckernels, "arch_flags", lambda: ["-march=x86-64-v4"])
    monkeypatch.setattr(runtime, "cpu_flags", lambda: frozenset({"sse", "sse2", "pni", "avx", "avx2", "fma"}))
    signatures = {"bn_act_forward": (None, [])}
    assert ckernels.load_c_kernel(SOURCE, signatures) is None
    assert "avx512f" in ckernels.c_kernel_error(SOURCE)
    assert not (fresh / "cache" / "kernels").exists()  # nothing was even built


@needs_x86_cc
def test_an_isa_cap_builds_for_the_capped_level(fresh, monkeypatch):
    monkeypatch.setattr(runtime, "_cpu_flags", None)
    monkeypatch.setenv("ATEN_CPU_CAPABILITY", "avx2")
    if "avx2" not in runtime.cpu_flags():
        pytest.skip("this CPU has no AVX2")
    assert ckernels.arch_flags()[0] == "-march=x86-64-v3"
    assert not any(i.startswith("avx512") for i in ckernels.target_isas())
    assert ckernels.unsupported_isas(ckernels.target_isas()) == []
    monkeypatch.setattr(runtime, "_cpu_flags", None)  # the cached flags are re-read after the test


def test_isa_cap_masks_the_flags_convnets_decides_by(monkeypatch):
    monkeypatch.setattr(runtime, "_cpu_flags", None)
    for variable, value, cap in [
        ("ATEN_CPU_CAPABILITY", "avx2", "avx2"),
        ("ONEDNN_MAX_CPU_ISA", "AVX512_CORE_VNNI", "avx512_core_vnni"),
        ("CONVNETS_MAX_CPU_ISA", "avx512_core_amx", "avx512_core_amx"),
    ]:
        monkeypatch.delenv("ATEN_CPU_CAPABILITY", raising=False)
        monkeypatch.delenv("ONEDNN_MAX_CPU_ISA", raising=False)
        monkeypatch.delenv("CONVNETS_MAX_CPU_ISA", raising=False)
        monkeypatch.setenv(variable, value)
        assert runtime.isa_cap() == cap
    for flag, cap, above in [
        ("avx512f", "avx2", True),
        ("avx2", "avx2", False),
        ("avx_vnni", "avx2", True),
        ("avx512_vnni", "avx512_core_vnni", False),
        ("avx512_bf16", "avx512_core_vnni", True),
        ("amx_bf16", "avx512_core_bf16", True),
        ("amx_bf16", "avx512_core_amx", False),
        ("fma", "default", True),
    ]:
        assert runtime._above_cap(flag, cap) is above, (flag, cap)
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "AVX2")
    monkeypatch.setenv("ATEN_CPU_CAPABILITY", "avx512")
    assert runtime.isa_cap() == "avx2"  # the lower of the two caps


@pytest.mark.skipif(shutil.which("cc") is None and shutil.which("gcc") is None, reason="no C compiler")
def test_target_isas_are_cached_per_flags(fresh, monkeypatch):
    calls = []
    real = ckernels.subprocess.run
    monkeypatch.setattr(ckernels.subprocess, "run", lambda *a, **k: calls.append(a) or real(*a, **k))
    first = ckernels.target_isas(["-march=native"])
    assert ckernels.target_isas(["-march=native"]) == first and len(calls) == 1
