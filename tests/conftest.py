"""Shared test fixtures. Tests create their own data; ../shared/data is optional."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("CONVNETS_SHARED_DATA", ROOT.parent / "shared" / "data"))

# Two threads on the 2-core CI machine, shared among pytest-xdist's workers; OMP_NUM_THREADS wins when
# set (on a busy machine one thread per process is several times faster than threads fighting for cores).
if "OMP_NUM_THREADS" not in os.environ:
    _workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    torch.set_num_threads(max(1, min(2, os.cpu_count() or 1) // _workers))

# Test files whose outcome depends on the CPU's instruction sets (bf16, AVX-512, VNNI, compiled kernels):
# .ci/run runs them a second time with ATen's and oneDNN's dispatch forced down to AVX2
# (`make test PYTEST_ARGS="-m hardware"` under ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2), so a
# break on AVX2-only CPUs shows on any x86 machine.
HARDWARE_SENSITIVE = {
    "test_bf16_backward.py",
    "test_ckernels.py",
    "test_engines.py",
    "test_fused_bn_act.py",
    "test_runtime.py",
    "test_train_precision.py",
    "test_train_resume.py",
}


def pytest_collection_modifyitems(config, items):
    for item in items:
        if item.path.name in HARDWARE_SENSITIVE:
            item.add_marker(pytest.mark.hardware)


@pytest.fixture
def shared_data() -> Path:
    """../shared/data (real photos and pretrained weights); skips the test when absent."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"{SHARED_DATA} not found: integration data lives in ../shared/data beside the project")
    return SHARED_DATA


@pytest.fixture
def one_thread():
    """One torch thread for tests that train tiny models: on a shared, busy CPU that was 12x faster
    than two threads fighting for the cores."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
