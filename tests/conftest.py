"""Shared test fixtures. Tests create their own data; ../shared/data is optional."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("CONVNETS_SHARED_DATA", ROOT.parent / "shared" / "data"))

# Two threads on the 2-core CI machine; OMP_NUM_THREADS wins when set (on a busy machine one thread
# per process is several times faster than threads fighting for cores).
if "OMP_NUM_THREADS" not in os.environ:
    torch.set_num_threads(min(2, os.cpu_count() or 1))


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
