"""The fastest way to each bf16 convolution gradient on CPU (convnets.accel.bf16_backward)."""

from __future__ import annotations

import time

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from convnets.accel import bf16_backward as bb
from convnets.accel.bf16_backward import (
    FastBf16ConvBackward,
    depthwise_input_grad_dilated,
    weight_grad_matmul,
)

CL = torch.channels_last


@pytest.mark.parametrize(
    "in_ch, out_ch, size, kernel, stride, padding",
    [(5, 7, 9, 3, 1, 1), (6, 4, 8, 1, 1, 0), (6, 4, 9, 1, 2, 0), (3, 8, 11, 7, 2, 3), (4, 4, 5, 3, 2, 1)],
)
@pytest.mark.parametrize("layout", [CL, torch.contiguous_format])
def test_weight_grad_matmul_equals_the_convolution_backward(
    in_ch, out_ch, size, kernel, stride, padding, layout
):
    torch.manual_seed(0)
    x = torch.randn(3, in_ch, size, size, dtype=torch.float64).contiguous(memory_format=layout)
    w = torch.randn(out_ch, in_ch, kernel, kernel, dtype=torch.float64)
    gy = torch.randn_like(F.conv2d(x, w, stride=stride, padding=padding))
    expected = torch.ops.aten.convolution_backward(
        gy, x, w, None, [stride] * 2, [padding] * 2, [1, 1], False, [0, 0], 1, [False, True, False]
    )[1]
    torch.testing.assert_close(weight_grad_matmul(gy, x, kernel, stride, padding), expected)


@pytest.mark.parametrize(
    "channels, size, kernel, stride, padding",
    [(4, 8, 3, 2, 1), (3, 9, 3, 2, 1), (5, 10, 5, 2, 2), (2, 11, 3, 3, 0), (3, 7, 3, 2, 0), (2, 12, 5, 3, 1)]
    + [(4, 8, 3, 1, 1), (3, 9, 5, 1, 2), (2, 7, 3, 1, 0)],
)
def test_dilated_depthwise_input_grad_equals_the_convolution_backward(
    channels, size, kernel, stride, padding
):
    torch.manual_seed(0)
    x = torch.randn(2, channels, size, size, dtype=torch.float64).contiguous(memory_format=CL)
    w = torch.randn(channels, 1, kernel, kernel, dtype=torch.float64)
    gy = torch.randn_like(F.conv2d(x, w, stride=stride, padding=padding, groups=channels))
    expected = torch.ops.aten.convolution_backward(
        gy, x, w, None, [stride] * 2, [padding] * 2, [1, 1], False, [0, 0], channels, [True, False, False]
    )[0]
    got = depthwise_input_grad_dilated(gy, x.shape, w, stride, padding)
    assert got.shape == x.shape
    torch.testing.assert_close(got, expected)


def test_the_dilated_way_is_offered_for_depthwise_input_grads_only(monkeypatch):
    torch.manual_seed(0)
    model = _Net().to(memory_format=CL)
    x = torch.randn(4, 3, 16, 16).contiguous(memory_format=CL)
    y = torch.randint(0, 5, (4,))
    reference = _grads(model, x, y)
    offered = []

    def prefer(ways):
        offered.append(set(ways))
        return bb.DILATED if bb.DILATED in ways else bb.BF16

    monkeypatch.setattr(FastBf16ConvBackward, "_fastest", staticmethod(prefer))
    mode = FastBf16ConvBackward()
    grads = _grads(model, x, y, mode)
    assert [k[4] for k, v in mode.choices.items() if v == bb.DILATED] == [(2, 2)]  # the depthwise layer
    assert sum(bb.DILATED in ways for ways in offered) == 1
    for name, g in grads.items():
        torch.testing.assert_close(g, reference[name], rtol=2e-2, atol=2e-3, msg=name)


class _Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 16, 3, stride=2, padding=1, bias=False)
        self.body = nn.Conv2d(16, 16, 3, padding=1)  # with a bias: its gradient still comes from oneDNN
        self.depthwise = nn.Conv2d(16, 16, 3, stride=2, padding=1, groups=16)  # no matmul way
        self.point = nn.Conv2d(16, 24, 1, bias=False)
        self.head = nn.Linear(24, 5)

    def forward(self, x):
        x = F.relu(self.stem(x))
        x = F.relu(self.point(self.depthwise(F.relu(self.body(x)))))
        return self.head(x.mean((2, 3)))


def _grads(model, x, y, mode=None):
    model.zero_grad(set_to_none=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = F.cross_entropy(model(x), y)
    if mode is None:
        loss.backward()
    else:
        with mode:
            loss.backward()
    return {name: p.grad.clone() for name, p in model.named_parameters()}


@pytest.mark.parametrize("choice", [bb.MATMUL, bb.FP32, bb.BF16])
def test_training_grads_match_oneDNN_whichever_way_is_chosen(monkeypatch, choice):
    torch.manual_seed(0)
    model = _Net().to(memory_format=CL)
    x = torch.randn(4, 3, 16, 16).contiguous(memory_format=CL)
    y = torch.randint(0, 5, (4,))
    reference = _grads(model, x, y)

    def prefer(ways):  # the wanted way where it is offered (matmul: dense weight gradients only)
        return choice if choice in ways else bb.FP32

    monkeypatch.setattr(FastBf16ConvBackward, "_fastest", staticmethod(prefer))
    mode = FastBf16ConvBackward()
    for _ in range(2):  # the second step reuses the cached choices
        grads = _grads(model, x, y, mode)
    # Four convolutions, each one shape: weight gradients of all four, input gradients of all but
    # the stem (the image needs none).
    assert sorted(k[0] for k in mode.choices) == ["input"] * 3 + ["weight"] * 4
    expected_weight_ways = {choice} if choice != bb.MATMUL else {bb.MATMUL, bb.FP32}  # depthwise: fp32
    assert {v for k, v in mode.choices.items() if k[0] == "weight"} == expected_weight_ways
    for name, g in grads.items():
        assert g.dtype == torch.float32, name
        if g.dim() == 4:  # the weight's own layout, or autograd copies every step
            assert g.is_contiguous(memory_format=CL) == reference[name].is_contiguous(memory_format=CL)
        # bf16 products summed in a different order (or in fp32): equal to bf16 rounding.
        torch.testing.assert_close(g, reference[name], rtol=2e-2, atol=2e-3, msg=name)


@pytest.mark.parametrize("x_layout", [CL, torch.contiguous_format])
@pytest.mark.parametrize("w_layout", [CL, torch.contiguous_format])
def test_picked_gradients_have_the_strides_of_the_meta_kernel(monkeypatch, x_layout, w_layout):
    """The matmul and dilated ways compute in NHWC; the gradient handed back has the layout aten's meta
    kernel promises, which mixes the input's and the weight's: a compiled backward asserts it (with the
    gradient's layout taken from its own tensor alone, `--compile --precision bf16` failed). The eager
    kernel's own strides are not the contract: on AVX2-only CPUs aten's bf16 backward does not run
    oneDNN and returns other strides than the meta kernel, so the values are compared to it instead."""
    torch.manual_seed(0)
    x = torch.randn(2, 8, 9, 9, dtype=torch.bfloat16).contiguous(memory_format=x_layout)
    dense = torch.randn(8, 8, 3, 3, dtype=torch.bfloat16).contiguous(memory_format=w_layout)
    depthwise = torch.randn(8, 1, 3, 3, dtype=torch.bfloat16).contiguous(memory_format=w_layout)

    def prefer(ways):
        return next(w for w in (bb.DILATED, bb.MATMUL, bb.FP32) if w in ways)

    monkeypatch.setattr(FastBf16ConvBackward, "_fastest", staticmethod(prefer))
    mode = FastBf16ConvBackward()
    for weight, groups in ((dense, 1), (depthwise, 8)):
        gy = torch.randn_like(F.conv2d(x, weight, stride=2, padding=1, groups=groups))
        args = (gy, x, weight, None, [2, 2], [1, 1], [1, 1], False, [0, 0], groups, [True, True, False])
        expected = torch.ops.aten.convolution_backward(*args)
        meta = [a.to("meta") if isinstance(a, torch.Tensor) else a for a in args]
        promised = torch.ops.aten.convolution_backward(*meta)
        with mode:
            got = torch.ops.aten.convolution_backward(*args)
        for g, e, m in zip(got[:2], expected[:2], promised[:2]):
            assert g.stride() == m.stride() and g.dtype == e.dtype
            torch.testing.assert_close(g.float(), e.float(), rtol=2e-2, atol=5e-2)
    assert set(mode.choices.values()) == {bb.DILATED, bb.MATMUL, bb.FP32}


def test_fp32_and_other_ops_pass_through_untouched():
    torch.manual_seed(0)
    model = _Net()
    x, y = torch.randn(2, 3, 12, 12), torch.randint(0, 5, (2,))
    model.zero_grad()
    F.cross_entropy(model(x), y).backward()
    expected = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad()
    mode = FastBf16ConvBackward()
    with mode:
        F.cross_entropy(model(x), y).backward()
    assert mode.choices == {}  # fp32: never timed, never replaced
    for n, p in model.named_parameters():
        assert torch.equal(p.grad, expected[n]), n


def test_the_timing_picks_the_fastest_way():
    calls = []

    def slow():
        calls.append("slow")
        time.sleep(0.01)

    ways = {bb.BF16: slow, bb.FP32: lambda: time.sleep(0.002), bb.MATMUL: slow}
    assert FastBf16ConvBackward._fastest(ways) == bb.FP32
    assert FastBf16ConvBackward._fastest({bb.BF16: lambda: None, bb.MATMUL: slow}) == bb.BF16
    assert len(calls) == 9  # a warm-up and two timed calls for each slow way


def test_training_makes_clamps_out_of_place_with_the_same_outputs():
    from convnets.accel.plan import clamps_out_of_place
    from convnets.models import create_model

    torch.manual_seed(0)
    model = create_model("mobilenet_v2", num_classes=3).eval()
    x = torch.randn(2, 3, 32, 32)
    before = model(x)
    assert clamps_out_of_place(model) > 0
    assert not any(m.inplace for m in model.modules() if isinstance(m, nn.Hardtanh))
    torch.testing.assert_close(model(x), before)
    assert clamps_out_of_place(model) == 0
