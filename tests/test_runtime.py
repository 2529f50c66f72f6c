"""Runtime tuning: mallopt applies once, and the CPU description has what benchmarks record."""

import os
import subprocess
import sys

from convnets import runtime


def test_tune_malloc_applies_in_a_fresh_process():
    code = "from convnets.runtime import tune_malloc; print(tune_malloc(), tune_malloc())"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["True", "True"]


def test_tune_malloc_respects_opt_out():
    code = "from convnets.runtime import tune_malloc; print(tune_malloc())"
    env = {**os.environ, "CONVNETS_MALLOC_TUNING": "0"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, env=env)
    assert out.stdout.strip() == "False"


def test_describe_cpu_fields():
    info = runtime.describe_cpu()
    assert info["cores"] >= 1 and info["torch"] and isinstance(info["native_bf16"], bool)
