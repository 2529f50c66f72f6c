"""Residual blocks (BasicBlock, IdentityBlock, ConvBlock) and the Inception module."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from convnets.blocks import BasicBlock, BasicConv2d, ConvBlock, IdentityBlock, InceptionModule, conv_shortcut


def test_basic_block_shapes_and_auto_projection():
    same = BasicBlock(16, 16)
    assert same.downsample is None
    assert same(torch.randn(2, 16, 8, 8)).shape == (2, 16, 8, 8)

    down = BasicBlock(16, 32, stride=2)
    assert isinstance(down.downsample, nn.Sequential)
    assert down.downsample[0].stride == (2, 2) and down.downsample[0].kernel_size == (1, 1)
    assert down(torch.randn(2, 16, 8, 8)).shape == (2, 32, 4, 4)

    plain = BasicBlock(16, 32, stride=2, residual=False)
    assert plain.downsample is None
    assert plain(torch.randn(2, 16, 8, 8)).shape == (2, 32, 4, 4)


def test_basic_block_zeroed_branch_is_identity():
    block = BasicBlock(8, 8).eval()
    nn.init.zeros_(block.bn2.weight)
    nn.init.zeros_(block.bn2.bias)
    x = torch.rand(2, 8, 6, 6)
    torch.testing.assert_close(block(x), x)


def test_identity_block_shapes():
    block = IdentityBlock(64, 16)
    assert block.downsample is None
    assert [c.kernel_size for c in (block.conv1, block.conv2, block.conv3)] == [(1, 1), (3, 3), (1, 1)]
    assert block.conv1.out_channels == 16 and block.conv3.out_channels == 64
    assert block(torch.randn(2, 64, 7, 7)).shape == (2, 64, 7, 7)


@pytest.mark.parametrize("train", [False, True])
def test_identity_block_with_zeroed_residual_branch_passes_input_through(train):
    block = IdentityBlock(32, 8).train(train)
    nn.init.zeros_(block.bn3.weight)
    nn.init.zeros_(block.bn3.bias)
    x = torch.rand(2, 32, 5, 5)  # non-negative: the ReLU after the addition leaves it unchanged
    torch.testing.assert_close(block(x), x)
    # ...but a negative input is clipped by that final ReLU: the identity is only for x >= 0.
    assert (block(-x) == 0).all()


def test_identity_block_with_live_branch_changes_input():
    block = IdentityBlock(32, 8).eval()
    x = torch.rand(2, 32, 5, 5)
    assert not torch.allclose(block(x), x)


@pytest.mark.parametrize("stride_in_1x1", [False, True])
def test_conv_block_stride_placement_and_shape(stride_in_1x1):
    block = ConvBlock(64, 32, 128, stride=2, stride_in_1x1=stride_in_1x1)
    strided, unstrided = (block.conv1, block.conv2) if stride_in_1x1 else (block.conv2, block.conv1)
    assert strided.stride == (2, 2) and unstrided.stride == (1, 1)
    assert block.conv3.stride == (1, 1)
    assert block(torch.randn(2, 64, 8, 8)).shape == (2, 128, 4, 4)


def test_conv_block_shortcut_is_strided_1x1_conv_bn_without_activation():
    block = ConvBlock(64, 32, 128, stride=2)
    shortcut = block.downsample
    assert [type(m) for m in shortcut] == [nn.Conv2d, nn.BatchNorm2d]  # no activation on the shortcut
    assert shortcut[0].kernel_size == (1, 1) and shortcut[0].stride == (2, 2)
    assert shortcut[0].in_channels == 64 and shortcut[0].out_channels == 128
    # With the residual branch zeroed the output is ReLU(BN(conv1x1(x))): negative values of the
    # shortcut alone would survive if it had no activation, and the final ReLU is what clips them.
    block.eval()
    nn.init.zeros_(block.bn3.weight)
    nn.init.zeros_(block.bn3.bias)
    x = torch.randn(2, 64, 8, 8)
    shortcut_out = shortcut(x)
    assert (shortcut_out < 0).any()
    torch.testing.assert_close(block(x), torch.relu(shortcut_out))


def test_conv_shortcut_helper():
    sc = conv_shortcut(8, 16, stride=2)
    assert sc(torch.randn(1, 8, 6, 6)).shape == (1, 16, 3, 3)


def test_residual_block_gradients_reach_the_input():
    block = ConvBlock(16, 8, 32, stride=2)
    x = torch.randn(2, 16, 8, 8, requires_grad=True)
    block(x).sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0


@pytest.mark.parametrize("branch3_kernel_size", [5, 3])
def test_inception_module_concatenates_branches(branch3_kernel_size):
    module = InceptionModule(192, 64, 96, 128, 16, 32, 32, branch3_kernel_size=branch3_kernel_size)
    assert module.out_channels == 64 + 128 + 32 + 32
    out = module(torch.randn(2, 192, 9, 9))
    assert out.shape == (2, 256, 9, 9)  # every branch keeps H x W
    assert module.branch3[1].conv.kernel_size == (branch3_kernel_size,) * 2
    assert isinstance(module.branch4[0], nn.MaxPool2d) and module.branch4[0].stride == 1
    # channel order is branch1 | branch2 | branch3 | branch4
    x = torch.randn(1, 192, 9, 9)
    module.eval()
    full = module(x)
    torch.testing.assert_close(full[:, :64], module.branch1(x))
    torch.testing.assert_close(full[:, 64:192], module.branch2(x))
    torch.testing.assert_close(full[:, 192:224], module.branch3(x))
    torch.testing.assert_close(full[:, 224:], module.branch4(x))


def test_inception_5x5_branch_costs_more_than_torchvision_3x3():
    paper = InceptionModule(192, 64, 96, 128, 16, 32, 32)
    tv = InceptionModule(192, 64, 96, 128, 16, 32, 32, branch3_kernel_size=3)
    count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    assert count(paper) - count(tv) == 16 * 32 * (25 - 9)


def test_basic_conv2d_keys_are_torchvisions():
    assert list(BasicConv2d(3, 8, kernel_size=3).state_dict()) == [
        "conv.weight",
        "bn.weight",
        "bn.bias",
        "bn.running_mean",
        "bn.running_var",
        "bn.num_batches_tracked",
    ]
