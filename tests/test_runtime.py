"""Runtime tuning: mallopt applies once, and the CPU description has what benchmarks record."""

import os
import subprocess
import sys

from convnets.base import runtime


def test_tune_malloc_applies_in_a_fresh_process():
    code = "from convnets.base.runtime import tune_malloc; print(tune_malloc(), tune_malloc())"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["True", "True"]


def test_tune_malloc_respects_opt_out():
    code = "from convnets.base.runtime import tune_malloc; print(tune_malloc())"
    env = {**os.environ, "CONVNETS_MALLOC_TUNING": "0"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, env=env)
    assert out.stdout.strip() == "False"


def test_describe_cpu_fields():
    info = runtime.describe_cpu()
    assert info["cores"] >= 1 and info["torch"] and isinstance(info["native_bf16"], bool)


def test_channels_last_for_depthwise_models_and_on_avx512(monkeypatch):
    import torch

    from convnets.base.runtime import prefers_channels_last
    from convnets.models import create_model

    for isa, dense in (("AVX2", False), ("AVX512", True), ("DEFAULT", False)):
        monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda isa=isa: isa)
        assert prefers_channels_last(create_model("mobilenet_v2", num_classes=2))
        assert prefers_channels_last(create_model("efficientnet_b0", num_classes=2))
        assert prefers_channels_last(create_model("resnet18", num_classes=2)) is dense
        assert prefers_channels_last(create_model("lenet5")) is dense


def test_optimizers_are_fused_on_cpu_with_no_decay_groups():
    import torch

    from convnets.train.optim import build_optimizer
    from convnets.train.options import TrainOptions

    model = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3), torch.nn.BatchNorm2d(4))
    for name in ("sgd", "adam", "adamw"):
        opts = TrainOptions(optimizer=name, weight_decay=0.1)
        opt = build_optimizer(list(model.parameters()), opts, lr=0.01)
        assert opt.defaults["fused"] is True, name
        assert [g["weight_decay"] for g in opt.param_groups] == [0.1, 0.0]
        model(torch.randn(2, 1, 5, 5)).sum().backward()
        opt.step()  # the fused kernel runs on CPU
