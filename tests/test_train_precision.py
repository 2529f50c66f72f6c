"""`--precision auto` per hardware, the bf16 training path, and log-file friendly progress output."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from train_shapes import make_shapes

from convnets.base import runtime
from convnets.models import create_model
from convnets.train import train

AMX = frozenset({"avx512f", "avx512_bf16", "amx_tile", "amx_bf16", "amx_int8"})
ZEN4 = frozenset({"avx512f", "avx512_bf16"})  # AMD EPYC: bf16 instructions, no AMX tiles
AVX2 = frozenset({"avx2", "fma"})


@pytest.fixture(scope="module")
def shapes(tmp_path_factory):
    return make_shapes(tmp_path_factory.mktemp("data") / "shapes", per_class=16)


def _tiny_run(shapes, out, **options):
    lines: list[str] = []
    result = train(
        shapes, model="lenet5", out=out, epochs=2, workers=0, device="cpu", log=lines.append, **options
    )
    config = json.loads((out / "config.json").read_text())
    return result, config, lines


@pytest.mark.parametrize("flags", [AMX, ZEN4, AVX2, frozenset()])
def test_auto_precision_on_cpus_is_bf16_only_with_bf16_instructions(monkeypatch, flags):
    # bf16 measured faster on the AMX Xeon and the AVX512-BF16 EPYC, and as accurate; without bf16
    # instructions it is emulated, many times slower (bench/RESULTS.md, "Training precision").
    monkeypatch.setattr(runtime, "cpu_flags", lambda: flags)
    native = "avx512_bf16" in flags
    for model in (None, create_model("resnet18", num_classes=2), create_model("mobilenet_v2", num_classes=2)):
        precision, why = runtime.auto_precision("cpu", model)
        assert precision == ("bf16" if native else "fp32") and why
    kind = "AMX CPU" if "amx_bf16" in flags else "AVX512-BF16 CPU"
    assert why.startswith(kind) is native
    assert runtime.auto_precision("cpu", None, macs=10e6)[0] == "fp32"  # the demo's ResNet-20: too small
    assert runtime.auto_precision("cpu", None, macs=40.6e6)[0] == ("bf16" if native else "fp32")  # CIFAR's
    assert runtime.auto_precision("cpu", None, macs=300e6)[0] == ("bf16" if native else "fp32")
    assert runtime.auto_precision("mps")[0] == "fp32"


@pytest.mark.parametrize("native, expected", [(True, "bf16"), (False, "fp32")])
def test_auto_precision_on_cuda_asks_for_native_bf16(monkeypatch, native, expected):
    calls = []

    def supported(including_emulation=True):
        calls.append(including_emulation)
        return native

    monkeypatch.setattr(torch.cuda, "is_bf16_supported", supported)
    assert runtime.auto_precision("cuda")[0] == expected
    assert calls == [False]  # emulated bf16 is slower than fp32: it must not count


def test_cpu_flags_reader_is_torch_free():
    code = "import sys, convnets.base.runtime as r; r.cpu_has_amx_bf16(); print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_auto_without_bf16_instructions_trains_fp32_and_records_it(shapes, tmp_path, monkeypatch):
    monkeypatch.setattr(runtime, "cpu_flags", lambda: AVX2)
    _, config, lines = _tiny_run(shapes, tmp_path / "run")
    assert config["options"]["precision"] == "fp32"
    assert any("fp32 (no bf16 instructions" in line for line in lines)


def test_auto_resolved_to_bf16_trains_and_records_it(shapes, tmp_path, monkeypatch):
    # What auto does where it picks bf16 (a GPU with native bf16), run on this CPU.
    monkeypatch.setattr(runtime, "cpu_flags", lambda: AMX)
    monkeypatch.setattr(runtime, "auto_precision", lambda *args, **kwargs: ("bf16", "test: bf16"))
    result, config, lines = _tiny_run(shapes, tmp_path / "run")
    assert config["options"]["precision"] == "bf16"
    assert any("bf16 (test: bf16)" in line for line in lines)
    assert all(math.isfinite(h["train_loss"]) and math.isfinite(h["val_loss"]) for h in result.history)
    # Whatever runs inside the step, the saved weights are fp32 (evaluate/export/ONNX expect them).
    from safetensors.torch import load_file

    weights = load_file(tmp_path / "run" / "model.safetensors")
    assert {t.dtype for t in weights.values() if t.is_floating_point()} == {torch.float32}


def test_explicit_precision_is_kept(shapes, tmp_path, monkeypatch):
    monkeypatch.setattr(runtime, "cpu_flags", lambda: AMX)
    _, config, _ = _tiny_run(shapes, tmp_path / "run", precision="fp32")
    assert config["options"]["precision"] == "fp32"


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU: the GPU precision path needs one")
def test_auto_on_cuda_trains_and_records(shapes, tmp_path):
    result = train(
        shapes, model="lenet5", out=tmp_path / "run", epochs=1, workers=0, device="cuda", quiet=True
    )
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    expected = "bf16" if torch.cuda.is_bf16_supported(including_emulation=False) else "fp32"
    assert config["options"]["precision"] == expected
    assert math.isfinite(result.history[-1]["train_loss"])


def test_progress_into_a_log_file_is_one_line_per_epoch(shapes, tmp_path):
    """stdout and stderr into a file (CI, nohup): no carriage-return progress frames."""
    log = tmp_path / "train.log"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(runtime.__file__).parents[2]), *sys.path])}
    with open(log, "w") as f:
        subprocess.run(
            [sys.executable, "-m", "convnets", "train", str(shapes), "--model", "lenet5", "--out",
             str(tmp_path / "run"), "--epochs", "3", "--workers", "0", "--precision", "fp32"],
            stdout=f, stderr=subprocess.STDOUT, env=env, check=True, timeout=900,
        )  # fmt: skip
    text = log.read_text()
    assert "\r" not in text
    epoch_lines = [line for line in text.splitlines() if line.startswith("epoch ")]
    assert len(epoch_lines) == 3 and all("img/s" in line for line in epoch_lines)


def test_progress_bars_only_on_a_terminal(tmp_path):
    from convnets.train.history import progress_bars_wanted

    with open(tmp_path / "f", "w") as f:
        assert not progress_bars_wanted(f)

    class Tty:
        def isatty(self):
            return True

    assert progress_bars_wanted(Tty())


def test_augment_auto_resolves_per_regime():
    from convnets.train.options import AUTO_AUGMENT, TrainOptions, resolve_augment

    assert TrainOptions().augment == "auto"
    assert resolve_augment(TrainOptions()) == AUTO_AUGMENT["scratch"]
    assert resolve_augment(TrainOptions(weights="w.pt")) == AUTO_AUGMENT["transfer"]
    assert resolve_augment(TrainOptions(augment="light,vflip")) == "light,vflip"
