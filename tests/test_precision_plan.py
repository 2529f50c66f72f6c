"""The CPU fast path behind one door (accel/plan.py) and its switch, `train --cpu-kernels auto|off`."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn
from train_shapes import interrupted_at_step, make_shapes

from convnets.accel import bf16_backward as bb
from convnets.accel import ckernels
from convnets.accel import fused_bn_act as fba
from convnets.accel.plan import PrecisionPlan
from convnets.base import runtime
from convnets.cli import main
from convnets.models.base import ConvNet
from convnets.train import TrainConfigError, TrainingInterrupted, train

CPU = torch.device("cpu")
# resnet20 has BatchNorm layers and residual adds: everything the fast path rewrites
OPTIONS = dict(model="resnet20", epochs=1, image_size=32, workers=0, device="cpu", batch_size=16)


@pytest.fixture(scope="module")
def shapes(tmp_path_factory):
    return make_shapes(tmp_path_factory.mktemp("data") / "shapes", per_class=8)


@pytest.fixture
def bf16_chosen(monkeypatch, tmp_path):
    """--precision auto resolves to bf16 on this CPU, as on an AMX one (the way test_train_precision
    forces it); the machine's backward picks are kept apart."""
    monkeypatch.setattr(runtime, "auto_precision", lambda *args, **kwargs: ("bf16", "test: bf16"))
    monkeypatch.setenv("CONVNETS_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("CONVNETS_C_KERNELS", raising=False)


def _training_classes():
    """Records, while training forwards run, each module's class and whether the model's forward was
    replaced on the instance (the fx-graph forward)."""
    seen: dict = {"classes": set(), "instance_forward": False}

    def hook(module, _inputs, _output):
        if module.training:
            seen["classes"].add(type(module))
            if isinstance(module, ConvNet):  # the model itself
                seen["instance_forward"] |= "forward" in module.__dict__
        return None

    return seen, hook


def _train_recording(shapes, out, **options):
    seen, hook = _training_classes()
    lines: list[str] = []
    handle = nn.modules.module.register_module_forward_hook(hook)
    try:
        train(shapes, out=out, log=lines.append, **{**OPTIONS, **options})
    finally:
        handle.remove()
    return seen, lines


def test_cpu_kernels_off_is_recorded_and_leaves_the_modules_alone(shapes, tmp_path, bf16_chosen):
    seen, lines = _train_recording(shapes, tmp_path / "run", cpu_kernels="off")
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    assert config["options"]["precision"] == "bf16"
    assert config["cpu_kernels"] == "off" and config["options"]["cpu_kernels"] == "off"
    assert any("--cpu-kernels off" in line for line in lines), lines
    assert nn.BatchNorm2d in seen["classes"]
    assert not any(issubclass(c, fba.FusedBatchNorm2d) for c in seen["classes"])
    activations = {c for c in seen["classes"] if issubclass(c, (nn.ReLU, nn.Hardtanh))}
    assert activations and all(c.__module__.startswith("torch.") for c in activations)  # no run-time subclass
    assert not seen["instance_forward"]
    state = torch.load(tmp_path / "run" / "last.pt", weights_only=True)
    assert state["precision_plan"]["backward_picks"] is None  # no backward picker ran


def test_cpu_kernels_auto_rewrites_them_for_the_epoch(shapes, tmp_path, bf16_chosen, monkeypatch):
    """The counterpart: the same hook sees the swapped classes and the fx forward under auto."""
    # a failure another test caused in this process (faked CPU flags) is not this machine's answer
    monkeypatch.setattr(ckernels, "_errors", {})
    if fba.load_kernel() is None:
        pytest.skip(f"fused kernels unavailable: {fba.kernel_error()}")
    seen, lines = _train_recording(shapes, tmp_path / "run")
    assert json.loads((tmp_path / "run" / "config.json").read_text())["cpu_kernels"] == "auto"
    assert any(issubclass(c, fba.FusedBatchNorm2d) for c in seen["classes"])
    assert any(c in fba._SKIPPING_CLASSES.values() for c in seen["classes"])
    assert seen["instance_forward"]
    assert any("--cpu-kernels auto" in line for line in lines), lines


def test_invalid_cpu_kernels_is_refused_naming_the_option(shapes, tmp_path, capsys):
    with pytest.raises(TrainConfigError, match="--cpu-kernels: must be one of auto, off"):
        train(shapes, out=tmp_path / "a", model="lenet5", cpu_kernels="fast")
    with pytest.raises(SystemExit) as exit_info:
        main(
            ["train", str(shapes), "--model", "lenet5", "--out", str(tmp_path / "b"), "--cpu-kernels", "fast"]
        )
    assert exit_info.value.code == 2 and "--cpu-kernels" in capsys.readouterr().err
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def test_cpu_kernels_is_in_train_help(capsys):
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    assert "--cpu-kernels {auto,off}" in capsys.readouterr().out


def test_resume_keeps_the_switch(shapes, tmp_path, bf16_chosen):
    """An interrupted `--cpu-kernels off` run resumes off (and refuses to be switched on midway)."""
    with interrupted_at_step(2), pytest.raises(TrainingInterrupted):
        train(shapes, out=tmp_path / "run", quiet=True, cpu_kernels="off", **{**OPTIONS, "epochs": 2})
    with pytest.raises(TrainConfigError, match="--cpu-kernels"):
        train(None, out=tmp_path / "run", resume=True, cpu_kernels="auto")
    seen, hook = _training_classes()
    lines: list[str] = []
    handle = nn.modules.module.register_module_forward_hook(hook)
    try:
        train(None, out=tmp_path / "run", resume=True, quiet=False, log=lines.append)
    finally:
        handle.remove()
    assert any("--cpu-kernels off" in line for line in lines), lines
    assert not any(issubclass(c, fba.FusedBatchNorm2d) for c in seen["classes"])
    assert json.loads((tmp_path / "run" / "config.json").read_text())["cpu_kernels"] == "off"


def test_plan_off_and_the_environment_switch(monkeypatch, tmp_path):
    monkeypatch.setenv("CONVNETS_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("CONVNETS_C_KERNELS", raising=False)
    on = PrecisionPlan("bf16", CPU)
    assert on.backward_picker is not None and on.fuse_bn and "--cpu-kernels auto" in on.describe()
    off = PrecisionPlan("bf16", CPU, cpu_kernels=False)
    assert off.backward_picker is None and not off.fuse_bn and "--cpu-kernels off" in off.describe()
    monkeypatch.setenv("CONVNETS_C_KERNELS", "0")  # forces off
    forced = PrecisionPlan("bf16", CPU)
    assert forced.backward_picker is None and not forced.fuse_bn
    assert "CONVNETS_C_KERNELS=0" in forced.describe()
    assert PrecisionPlan("fp32", CPU).describe() == ""  # nothing to say where nothing applies
    assert not PrecisionPlan("bf16", CPU, compiled=True).fuse_bn


def test_plan_state_round_trips_and_reads_old_last_pt(monkeypatch, tmp_path):
    monkeypatch.setenv("CONVNETS_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("CONVNETS_C_KERNELS", raising=False)
    key = ("weight", (2, 8, 4, 4), (2, 4, 4, 4), (8, 4, 3, 3), (1, 1), (1, 1), 1)
    saved = PrecisionPlan("bf16", CPU)
    saved.backward_picker.choices[key] = bb.MATMUL
    state = saved.state_dict()
    assert json.loads(json.dumps(state)) == state  # plain types: last.pt loads with weights_only

    resumed = PrecisionPlan("bf16", CPU)
    resumed.load_from_checkpoint({"precision_plan": state})
    assert resumed.backward_picker.choices == {key: bb.MATMUL}
    # last.pt written before the plan: the picks at the top level, under "bf16_backward"
    old = PrecisionPlan("bf16", CPU)
    old.load_from_checkpoint({"bf16_backward": saved.backward_picker.state()})
    assert old.backward_picker.choices == {key: bb.MATMUL}
    # and an fp32 run's checkpoint (no picks) loads into any plan
    PrecisionPlan("fp32", CPU).load_from_checkpoint({"precision_plan": {"backward_picks": None}})
