"""BatchNorm + activation in fused bf16 CPU kernels (convnets.accel.fused_bn_act)."""

from __future__ import annotations

import math
import shutil

import pytest
import torch
from torch import nn

from convnets.accel import fused_bn_act as fba
from convnets.accel.fused_bn_act import FusedBatchNorm2d, batchnorm_activation_pairs, fuse_batchnorm_act

CL = torch.channels_last


@pytest.fixture(scope="module")
def kernel():
    if fba.load_kernel() is None:
        if shutil.which("cc") is None and shutil.which("gcc") is None:
            pytest.skip("no C compiler (cc or gcc): the fused kernels are not built, ATen's run instead")
        pytest.fail(f"a C compiler is present but the kernel did not build: {fba.kernel_error()}")
    return fba.load_kernel()


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.double() - b.double()).abs().max() / b.double().abs().max().clamp_min(1e-12)).item()


def _step(model: nn.Module, start: dict, x: torch.Tensor, y: torch.Tensor, bf16: bool):
    """One training step from the state ``start``: the loss and all parameter gradients, flat."""
    model.load_state_dict(start)
    model.zero_grad()
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        loss = nn.functional.cross_entropy(model(x), y)
    loss.backward()
    return loss.item(), torch.cat([p.grad.flatten() for p in model.parameters()])


def _cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    return torch.nn.functional.cosine_similarity(a, b, dim=0).item()


class BnAct(nn.Sequential):
    def __init__(self, channels: int, act: nn.Module | None, **bn_options) -> None:
        super().__init__(nn.BatchNorm2d(channels, **bn_options), *([act] if act is not None else []))


@pytest.mark.parametrize(
    "act, bounds",
    [(nn.ReLU6(), (0.0, 6.0)), (nn.ReLU(inplace=True), (0.0, math.inf)), (None, (-math.inf, math.inf))],
)
@pytest.mark.parametrize("shape", [(4, 24, 9, 7), (2, 80, 1, 1), (3, 5, 6, 6)])
def test_fused_layer_matches_float64_batchnorm_and_clamp(kernel, act, bounds, shape):
    """Output, input/weight/bias gradients and running statistics against a float64 reference; the
    fused path must be at least as close to it as ATen's bf16 BatchNorm + activation."""
    torch.manual_seed(0)
    channels = shape[1]
    layer = BnAct(channels, act)
    with torch.no_grad():
        layer[0].weight.uniform_(0.5, 1.5)
        layer[0].bias.uniform_(-0.5, 0.5)
    reference = BnAct(channels, None).double()
    reference.load_state_dict(layer.state_dict())
    aten = BnAct(channels, type(act)() if act is not None else None)
    aten.load_state_dict(layer.state_dict())

    x = (torch.randn(shape) * 2 + 1).to(torch.bfloat16).contiguous(memory_format=CL)
    grad = torch.randn(shape).to(torch.bfloat16).contiguous(memory_format=CL)

    x_ref = x.double().requires_grad_()
    y_ref = reference(x_ref).clamp(*bounds)
    y_ref.backward(grad.double())

    x_aten = x.clone().requires_grad_()
    y_aten = aten(x_aten)
    y_aten.backward(grad)

    with fuse_batchnorm_act(layer) as fused:
        assert fused == 1 and isinstance(layer[0], FusedBatchNorm2d)
        x_fused = x.clone().requires_grad_()
        y_fused = layer(x_fused)
        y_fused.backward(grad)
    assert type(layer[0]) is nn.BatchNorm2d  # restored

    assert y_fused.dtype == torch.bfloat16 and y_fused.is_contiguous(memory_format=CL)
    assert x_fused.grad.dtype == torch.bfloat16 and layer[0].weight.grad.dtype == torch.float32
    assert _rel(y_fused, y_ref) <= max(_rel(y_aten, y_ref), 2**-8)
    assert _rel(x_fused.grad, x_ref.grad) <= max(_rel(x_aten.grad, x_ref.grad), 2**-7)
    for name in ("weight", "bias"):
        fused_grad = getattr(layer[0], name).grad
        ref_grad = getattr(reference[0], name).grad
        assert _rel(fused_grad, ref_grad) < 1e-4, name
    for name in ("running_mean", "running_var"):
        expected = getattr(reference[0], name).float()
        torch.testing.assert_close(getattr(layer[0], name), expected, rtol=1e-4, atol=1e-5)
    assert int(layer[0].num_batches_tracked) == 1


@pytest.mark.parametrize("act, bounds", [(nn.ReLU6(), (0.0, 6.0)), (None, (-math.inf, math.inf))])
def test_frozen_layer_passing_gradients_matches_float64(kernel, act, bounds):
    """An eval-mode BatchNorm inside a training step (fine-tuning keeps BatchNorm frozen): normalised by
    the running statistics, which stay untouched, with gradients for the input and the affine terms."""
    torch.manual_seed(0)
    layer = BnAct(12, act)
    with torch.no_grad():
        layer[0].running_mean.uniform_(-1, 1)
        layer[0].running_var.uniform_(0.5, 2)
        layer[0].weight.uniform_(0.5, 1.5)
        layer[0].bias.uniform_(-0.5, 0.5)
    layer.eval()
    reference = BnAct(12, None).double().eval()
    reference.load_state_dict(layer.state_dict())
    before = {k: v.clone() for k, v in layer.state_dict().items()}
    plain = BnAct(12, type(act)() if act is not None else None).eval()
    plain.load_state_dict(before)
    x = (torch.randn(4, 12, 6, 5) * 3).to(torch.bfloat16).contiguous(memory_format=CL)
    grad = torch.randn(4, 12, 6, 5).to(torch.bfloat16).contiguous(memory_format=CL)
    x_ref = x.double().requires_grad_()
    y_ref = reference(x_ref).clamp(*bounds)
    y_ref.backward(grad.double())
    with fuse_batchnorm_act(layer):
        x_fused = x.clone().requires_grad_()
        y_fused = layer(x_fused)
        y_fused.backward(grad)
        with torch.no_grad():  # inference: ATen's kernels, bit for bit
            torch.testing.assert_close(layer(x), plain(x), rtol=0, atol=0)
    assert _rel(y_fused, y_ref) < 2**-7
    assert _rel(x_fused.grad, x_ref.grad) < 2**-7
    for name in ("weight", "bias"):
        assert _rel(getattr(layer[0], name).grad, getattr(reference[0], name).grad) < 1e-4, name
    for key, value in layer.state_dict().items():
        assert torch.equal(value, before[key]), key


def test_cumulative_average_and_no_affine(kernel):
    """momentum=None (cumulative running average) and affine=False take BatchNorm's own rules."""
    torch.manual_seed(0)
    fused_layer = BnAct(6, nn.ReLU(), momentum=None, affine=False)
    aten_layer = BnAct(6, nn.ReLU(), momentum=None, affine=False)
    xs = [torch.randn(4, 6, 5, 5).to(torch.bfloat16).contiguous(memory_format=CL) for _ in range(3)]
    with fuse_batchnorm_act(fused_layer):
        for x in xs:
            fused_layer(x)
    for x in xs:
        aten_layer(x)
    for name in ("running_mean", "running_var"):
        expected = getattr(aten_layer[0], name)
        torch.testing.assert_close(getattr(fused_layer[0], name), expected, rtol=1e-2, atol=1e-3)
    assert int(fused_layer[0].num_batches_tracked) == 3


def test_outside_bf16_cpu_training_the_layer_runs_atens_kernels(kernel):
    """eval mode and fp32 inputs take BatchNorm's own forward and the activation still applies."""
    torch.manual_seed(0)
    layer = BnAct(8, nn.ReLU6())
    plain = BnAct(8, nn.ReLU6())
    plain.load_state_dict(layer.state_dict())
    x32 = torch.randn(2, 8, 4, 4).contiguous(memory_format=CL) * 5
    with fuse_batchnorm_act(layer):
        torch.testing.assert_close(layer(x32), plain(x32), rtol=0, atol=0)  # fp32: ATen's
        layer.eval(), plain.eval()
        xb = x32.to(torch.bfloat16)
        torch.testing.assert_close(layer(xb), plain(xb), rtol=0, atol=0)  # eval: ATen's
        assert layer(xb).max() <= 6  # the activation was not skipped


@pytest.mark.parametrize("batch_stats", [True, False])
def test_residual_form_matches_float64(kernel, batch_stats):
    """relu(bn(x) + identity) in one kernel pair: output, the gradients of x, the shortcut, the weight
    and the bias, and the running statistics, against float64 (training mode, and a frozen layer)."""
    torch.manual_seed(0)
    bn = nn.BatchNorm2d(16)
    with torch.no_grad():
        bn.weight.uniform_(0.5, 1.5)
        bn.bias.uniform_(-0.5, 0.5)
        bn.running_mean.uniform_(-1, 1)
        bn.running_var.uniform_(0.5, 2)
    bn.train(batch_stats)
    reference = nn.BatchNorm2d(16).double().train(batch_stats)
    reference.load_state_dict(bn.state_dict())
    shape = (4, 16, 7, 6)
    x = (torch.randn(shape) * 2).to(torch.bfloat16).contiguous(memory_format=CL)
    identity = torch.randn(shape).to(torch.bfloat16).contiguous(memory_format=CL)
    grad = torch.randn(shape).to(torch.bfloat16).contiguous(memory_format=CL)

    x_ref, id_ref = x.double().requires_grad_(), identity.double().requires_grad_()
    y_ref = torch.relu(reference(x_ref) + id_ref)
    y_ref.backward(grad.double())

    holder = nn.Sequential(bn, nn.ReLU())
    with fuse_batchnorm_act(holder):
        x_f, id_f = x.clone().requires_grad_(), identity.clone().requires_grad_()
        calls = {"n": 0}
        original = fba._BatchNormActFunction.apply

        def counted(*args):
            calls["n"] += args[1] is not None  # the residual form: an identity
            return original(*args)

        fba._BatchNormActFunction.apply = counted
        try:
            y = fba.bn_add_act(holder[0], holder[1], x_f, id_f)
        finally:
            fba._BatchNormActFunction.apply = original
        y.backward(grad)
    assert calls["n"] == 1  # the fused path, not the three steps
    assert _rel(y, y_ref) < 2**-7
    assert _rel(x_f.grad, x_ref.grad) < 2**-6
    assert _rel(id_f.grad, id_ref.grad) < 2**-7
    for name in ("weight", "bias"):
        assert _rel(getattr(bn, name).grad, getattr(reference, name).grad) < 1e-3, name
    for name in ("running_mean", "running_var"):
        torch.testing.assert_close(getattr(bn, name), getattr(reference, name).float(), rtol=1e-4, atol=1e-5)


def test_resnet_blocks_fuse_their_shortcut_and_the_model_is_left_as_it_was(kernel):
    """ResNet-18: each block's last BatchNorm, shortcut add and ReLU become one call in a rewritten
    forward (torch.fx), only inside the block; one bf16 step agrees with fp32 as closely as ATen's bf16
    does (loss and gradient on the mean of three seeds: one step's gradient cosine to fp32 moves by
    +-0.03 between seeds and thread counts for either, 0.89-0.93), and afterwards the model's own
    forward is back."""
    from convnets.accel.fused_bn_act import residual_forward
    from convnets.models.registry import create_model

    torch.manual_seed(0)
    model = create_model("resnet18", num_classes=5).train().to(memory_format=CL)
    rewritten = residual_forward(model)
    assert rewritten is not None
    assert sum(n.op == "call_function" and n.target is fba.bn_add_act for n in rewritten.graph.nodes) == 8
    cosines_aten, cosines_fused, loss_errors_aten, loss_errors_fused, losses32 = [], [], [], [], []
    for seed in range(3):
        torch.manual_seed(seed)
        start = {k: v.clone() for k, v in create_model("resnet18", num_classes=5).state_dict().items()}
        x = torch.randn(8, 3, 32, 32).contiguous(memory_format=CL)
        y = torch.arange(8) % 5
        loss32, grads32 = _step(model, start, x, y, bf16=False)
        loss_aten, grads_aten = _step(model, start, x, y, bf16=True)
        with fuse_batchnorm_act(model):
            assert "forward" in model.__dict__
            loss_fused, grads_fused = _step(model, start, x, y, bf16=True)
        assert "forward" not in model.__dict__
        loss_errors_aten.append(abs(loss_aten - loss32))
        loss_errors_fused.append(abs(loss_fused - loss32))
        losses32.append(loss32)
        cosines_aten.append(_cosine(grads_aten, grads32))
        cosines_fused.append(_cosine(grads_fused, grads32))
    assert sum(loss_errors_fused) <= max(2 * sum(loss_errors_aten), 0.01 * sum(losses32))
    assert sum(cosines_fused) / 3 > sum(cosines_aten) / 3 - 0.02, (cosines_fused, cosines_aten)
    model.eval()
    model.load_state_dict(start)
    with torch.no_grad():
        plain = create_model("resnet18", num_classes=5).eval().to(memory_format=CL)
        plain.load_state_dict(start)
        torch.testing.assert_close(model(x), plain(x), rtol=0, atol=0)


def test_pairs_follow_the_dataflow_not_the_module_order():
    """ResNet's shared relu follows bn1 but not bn2 (added to the shortcut first); Sequential
    conv-BN-act blocks pair; a BatchNorm whose output has another consumer keeps its activation."""
    from convnets.blocks import BasicBlock, ConvBNAct

    block = BasicBlock(8, 8)
    pairs = dict((id(bn), act) for bn, act in batchnorm_activation_pairs(block))
    assert pairs[id(block.bn1)] is block.relu
    assert pairs[id(block.bn2)] is None

    seq = ConvBNAct(3, 8, act_layer=nn.ReLU6)
    ((bn, act),) = batchnorm_activation_pairs(seq)
    assert bn is seq[1] and isinstance(act, nn.ReLU6)

    class TwoConsumers(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.bn, self.act = nn.BatchNorm2d(4), nn.ReLU()

        def forward(self, x):
            y = self.bn(x)
            return self.act(y) + y

    ((_, act),) = batchnorm_activation_pairs(TwoConsumers())
    assert act is None


def test_a_training_step_agrees_with_fp32_as_closely_as_atens_bf16(kernel):
    """A small conv net (BatchNorm with ReLU6, with ReLU, and alone): one bf16 autocast step's loss and
    gradients against fp32, fused and with ATen's kernels. (A randomly initialised deep network is
    no test: its bf16 gradients differ from fp32's by more than the kernels could.)"""
    from convnets.blocks import ConvBNAct

    torch.manual_seed(0)
    model = (
        nn.Sequential(
            ConvBNAct(3, 16, stride=2, act_layer=nn.ReLU6),
            ConvBNAct(16, 24, act_layer=nn.ReLU),
            ConvBNAct(24, 24, act_layer=None),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
            nn.Linear(24, 5),
        )
        .train()
        .to(memory_format=CL)
    )
    start = {k: v.clone() for k, v in model.state_dict().items()}
    x = torch.randn(8, 3, 32, 32).contiguous(memory_format=CL)
    y = torch.arange(8) % 5

    loss32, grads32 = _step(model, start, x, y, bf16=False)
    loss_aten, grads_aten = _step(model, start, x, y, bf16=True)
    with fuse_batchnorm_act(model) as fused:
        assert fused == 3
        loss_fused, grads_fused = _step(model, start, x, y, bf16=True)

    assert abs(loss_fused - loss32) <= max(abs(loss_aten - loss32), 0.005 * loss32)
    assert _cosine(grads_fused, grads32) > min(0.999, _cosine(grads_aten, grads32) - 1e-3)


def test_mobilenet_v2_trains_fused_and_is_left_as_it_was(kernel):
    """Every BatchNorm of MobileNetV2 switches (35 with their ReLU6); afterwards the module classes and
    state dict keys are the original ones, and the running statistics moved."""
    from convnets.models.registry import create_model

    model = create_model("mobilenet_v2", num_classes=5).train().to(memory_format=CL)
    keys = list(model.state_dict())
    classes = [type(m) for m in model.modules()]
    pairs = batchnorm_activation_pairs(model)
    assert sum(act is not None for _, act in pairs) == 35
    x = torch.randn(4, 3, 64, 64).contiguous(memory_format=CL)
    with fuse_batchnorm_act(model) as fused:
        assert fused == len(pairs) == 52
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss = nn.functional.cross_entropy(model(x), torch.tensor([0, 1, 2, 3]))
        loss.backward()
    assert math.isfinite(loss.item())
    assert [type(m) for m in model.modules()] == classes
    assert list(model.state_dict()) == keys
    assert model.features[0][1].running_mean.abs().sum() > 0


def test_without_a_compiler_nothing_changes(tmp_path, monkeypatch):
    """No C compiler: the context switches nothing and says why (the trainer logs it)."""
    from convnets.accel import ckernels

    monkeypatch.setattr(ckernels, "_loaded", {})  # this process's kernels, restored after the test
    monkeypatch.setattr(ckernels, "_errors", {})
    monkeypatch.setattr(fba, "_kernel", None)
    monkeypatch.setenv("CONVNETS_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(ckernels, "compiler", lambda: None)
    layer = BnAct(4, nn.ReLU())
    with fuse_batchnorm_act(layer) as fused:
        assert fused == 0 and type(layer[0]) is nn.BatchNorm2d
    assert "no C compiler" in fba.kernel_error()
    monkeypatch.setenv("CONVNETS_C_KERNELS", "0")
    assert fba.load_kernel() is None and fba.kernel_error() == "CONVNETS_C_KERNELS=0"


def test_bf16_training_fuses_logs_it_and_resumes_bit_for_bit(kernel, tmp_path, monkeypatch):
    """`train --precision bf16` on CPU runs the fused layers and says so; the kernels are
    deterministic, so an interrupted run resumed equals an uninterrupted one bit for bit."""

    from train_shapes import interrupted_at_step, make_shapes

    from convnets.base.runtime import cpu_has_native_bf16
    from convnets.train import TrainingInterrupted, train

    if not cpu_has_native_bf16():
        pytest.skip("--precision bf16 needs a CPU with native bf16")
    monkeypatch.setenv("CONVNETS_CACHE", str(tmp_path / "cache"))
    data = make_shapes(tmp_path / "shapes", per_class=16)
    options = dict(model="resnet20", epochs=2, image_size=32, precision="bf16", workers=0, device="cpu")
    lines: list[str] = []
    train(data, out=tmp_path / "a", log=lines.append, **options)
    assert any("fused BatchNorm+activation kernels for 19 BatchNorm layers" in line for line in lines), lines

    with interrupted_at_step(3), pytest.raises(TrainingInterrupted):
        train(data, out=tmp_path / "b", quiet=True, **options)
    train(None, out=tmp_path / "b", resume=True, quiet=True)
    a, b = (torch.load(tmp_path / run / "last.pt", weights_only=True)["model"] for run in "ab")
    for key in a:
        assert torch.equal(a[key], b[key]), key
