"""Depthwise-separable conv, inverted residual, squeeze-excitation, MBConv, make_divisible."""

from __future__ import annotations

from functools import partial

import pytest
import torch
from torch import nn
from torchvision.models._utils import _make_divisible
from torchvision.models.efficientnet import MBConv as TVMBConv
from torchvision.models.efficientnet import MBConvConfig
from torchvision.models.mobilenetv2 import InvertedResidual as TVInvertedResidual

from convnets.blocks import (
    DepthwiseSeparableConv,
    InvertedResidual,
    MBConv,
    SqueezeExcitation,
    make_divisible,
)


def _randomize_bn(module: nn.Module) -> None:
    """Non-trivial BN statistics and affine parameters, so eval-mode BN is not the identity."""
    for m in module.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.normal_(0, 0.1)
            m.running_var.uniform_(0.5, 1.5)
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.normal_(0, 0.1)


@pytest.mark.parametrize("value", [3.5, 8, 12, 16 * 1.1, 24 * 1.4, 32 * 0.35, 190, 1280 * 1.8, 0.5])
def test_make_divisible_matches_torchvision(value):
    assert make_divisible(value) == _make_divisible(value, 8)


def test_depthwise_separable_shapes_and_groups():
    block = DepthwiseSeparableConv(16, 32, stride=2)
    depthwise, pointwise = block.depthwise[0], block.pointwise[0]
    assert depthwise.groups == depthwise.in_channels == depthwise.out_channels == 16
    assert depthwise.kernel_size == (3, 3) and pointwise.kernel_size == (1, 1) and pointwise.groups == 1
    assert [type(m) for m in block.pointwise] == [nn.Conv2d, nn.BatchNorm2d, nn.ReLU]
    out = block(torch.randn(2, 16, 15, 15))
    assert out.shape == (2, 32, 8, 8)
    assert out.min() >= 0  # ends in ReLU
    # The saving of the lecture: k*k*C_in + C_in*C_out weights instead of k*k*C_in*C_out.
    assert depthwise.weight.numel() + pointwise.weight.numel() == 9 * 16 + 16 * 32


@pytest.mark.parametrize(
    ("cin", "cout", "stride", "t", "residual"),
    [
        (16, 16, 1, 6, True),
        (16, 24, 1, 6, False),
        (16, 16, 2, 6, False),
        (32, 16, 1, 1, False),
        (16, 16, 1, 1, True),
    ],
)
def test_inverted_residual_matches_torchvision(cin, cout, stride, t, residual):
    ours = InvertedResidual(cin, cout, stride, expand_ratio=t)
    theirs = TVInvertedResidual(cin, cout, stride, expand_ratio=t)
    _randomize_bn(theirs)
    ours.load_state_dict(theirs.state_dict(), strict=True)  # same keys, no renaming
    assert ours.use_res_connect is residual
    # t == 1 skips the expansion: depthwise, projection conv, projection BN.
    assert len(ours.conv) == (3 if t == 1 else 4)
    x = torch.randn(2, cin, 12, 12)
    ours.eval(), theirs.eval()
    with torch.no_grad():
        out = ours(x)
        torch.testing.assert_close(out, theirs(x), atol=1e-5, rtol=1e-5)
    assert out.shape == (2, cout, 12 // stride, 12 // stride)


def test_inverted_residual_adds_input_only_when_shapes_match():
    block = InvertedResidual(16, 16, stride=1).eval()
    projection_bn = block.conv[-1]
    nn.init.zeros_(projection_bn.weight), nn.init.zeros_(projection_bn.bias)  # branch outputs 0
    x = torch.randn(2, 16, 8, 8)
    with torch.no_grad():
        torch.testing.assert_close(block(x), x)  # only the identity shortcut is left
        widening = InvertedResidual(16, 24, stride=1).eval()
        nn.init.zeros_(widening.conv[-1].weight), nn.init.zeros_(widening.conv[-1].bias)
        assert torch.count_nonzero(widening(x)) == 0  # no shortcut when channels change


def test_inverted_residual_projection_is_linear():
    block = InvertedResidual(16, 24, stride=2).eval()
    assert isinstance(block.conv[-1], nn.BatchNorm2d) and isinstance(block.conv[-2], nn.Conv2d)
    assert not any(isinstance(m, nn.ReLU6) for m in list(block.conv)[-2:])
    with torch.no_grad():
        out = block(torch.randn(2, 16, 8, 8))
    assert (out < 0).any() and (out > 0).any()  # no ReLU/ReLU6 after the projection
    assert isinstance(block.conv[0][2], nn.ReLU6) and block.conv[1][0].groups == 96


def test_squeeze_excitation_rescales_channels():
    se = SqueezeExcitation(8, 2)
    assert {k.split(".")[0] for k in se.state_dict()} == {"fc1", "fc2"}
    x = torch.rand(2, 8, 5, 5) + 0.1
    gate = se(x) / x
    # One gate per (sample, channel), in (0, 1), the same at every spatial position.
    torch.testing.assert_close(gate, gate[:, :, :1, :1].expand_as(gate))
    assert (gate > 0).all() and (gate < 1).all()


@pytest.mark.parametrize(
    ("cin", "cout", "k", "stride", "t"), [(16, 16, 3, 1, 6), (32, 16, 3, 1, 1), (24, 40, 5, 2, 6)]
)
def test_mbconv_matches_torchvision(cin, cout, k, stride, t):
    norm = partial(nn.BatchNorm2d, eps=1e-3, momentum=0.01)
    theirs = TVMBConv(MBConvConfig(t, k, stride, cin, cout, 1), 0.0, norm)
    ours = MBConv(cin, cout, k, stride, t, norm_layer=norm)
    _randomize_bn(theirs)
    ours.load_state_dict(theirs.state_dict(), strict=True)
    assert ours.use_res_connect == theirs.use_res_connect == (stride == 1 and cin == cout)
    assert ours.block[-2].fc1.out_channels == max(1, cin // 4)  # SE squeezes the block's input width
    ours.eval(), theirs.eval()
    x = torch.randn(2, cin, 10, 10)
    with torch.no_grad():
        torch.testing.assert_close(ours(x), theirs(x), atol=1e-5, rtol=1e-5)
    assert ours.block[-1][0].out_channels == cout and len(ours.block[-1]) == 2  # linear projection


def test_mbconv_stochastic_depth_drops_the_branch_in_training_only():
    block = MBConv(16, 16, 3, 1, 6, stochastic_depth_prob=1.0)
    x = torch.randn(4, 16, 6, 6)
    torch.testing.assert_close(block.train()(x), x)  # every sample's branch dropped
    with torch.no_grad():
        assert not torch.allclose(block.eval()(x), x)


def test_bad_stride_is_a_clear_error():
    with pytest.raises(ValueError, match="stride"):
        InvertedResidual(8, 8, stride=3)
    with pytest.raises(ValueError, match="stride"):
        MBConv(8, 8, stride=3)
