"""CIFAR ResNets (He et al. 2016 §4.2) and their plain twins."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from convnets import create_model, get_model_cfg
from convnets.models.base import ConvNet
from convnets.models.cifar_resnet import ZeroPadShortcut, cifar_resnet


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


# Exact counts at 10 classes, 3 input channels; Table 6 rounds them to 0.27M/0.46M/0.66M/0.85M/1.7M.
@pytest.mark.parametrize(
    "depth, option_a, paper",
    [
        (20, 269_722, 0.27e6),
        (32, 464_154, 0.46e6),
        (44, 658_586, 0.66e6),
        (56, 853_018, 0.85e6),
        (110, 1_727_962, 1.7e6),
    ],
)
def test_parameter_counts_match_table_6(depth, option_a, paper):
    model = create_model(f"resnet{depth}", num_classes=10)
    assert n_params(model) == option_a
    assert abs(option_a - paper) / paper < 0.02  # within the paper's rounding
    # The plain twin has exactly the same weights: option A adds none.
    assert n_params(create_model(f"plain{depth}", num_classes=10)) == option_a


def test_option_a_shortcut_is_parameter_free_option_b_is_not():
    a = create_model("resnet20", num_classes=10)
    b = create_model("resnet20", num_classes=10, shortcut="B")
    shortcuts_a = [m for m in a.modules() if isinstance(m, ZeroPadShortcut)]
    assert len(shortcuts_a) == 2  # the first block of stages 2 and 3
    assert all(n_params(s) == 0 for s in shortcuts_a)
    assert not any(isinstance(m, ZeroPadShortcut) for m in b.modules())
    # Option B: two 1x1 projections + BN, 16->32 and 32->64.
    assert n_params(b) - n_params(a) == (16 * 32 + 2 * 32) + (32 * 64 + 2 * 64) == 272_474 - 269_722


def test_zero_pad_shortcut_subsamples_and_pads_with_zeros():
    x = torch.randn(2, 4, 6, 6)
    y = ZeroPadShortcut(4, 8, stride=2)(x)
    assert y.shape == (2, 8, 3, 3)
    torch.testing.assert_close(y[:, :4], x[:, :, ::2, ::2])
    assert torch.count_nonzero(y[:, 4:]) == 0


def test_plain_twin_has_no_shortcut_and_differs_with_the_same_weights():
    residual = create_model("resnet20", num_classes=10).eval()
    plain = create_model("plain20", num_classes=10).eval()
    assert not any(isinstance(m, ZeroPadShortcut) for m in plain.modules())
    assert all(not b.residual and b.downsample is None for b in plain.modules() if hasattr(b, "residual"))
    plain.load_state_dict(residual.state_dict())  # same keys, same shapes
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert not torch.allclose(plain(x), residual(x))
        # Zeroing each residual branch's last BN makes every block an identity (+ReLU), so the
        # residual net reduces to stem -> pooled features; the plain net then outputs zeros only.
        for m in residual.modules():
            if hasattr(m, "bn2"):
                nn.init.zeros_(m.bn2.weight)
                nn.init.zeros_(m.bn2.bias)
        stem = residual.stem(x)
        torch.testing.assert_close(residual.forward_features(x)[:, :16], stem[:, :, ::4, ::4])


@pytest.mark.parametrize("depth", [8, 14, 20])
def test_any_6n_plus_2_depth(depth):
    for plain in (False, True):
        model = cifar_resnet(depth, plain=plain, num_classes=3, in_chans=1)
        convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
        assert len(convs) + 1 == depth  # conv layers + the fc layer
        assert model(torch.randn(2, 1, 16, 16)).shape == (2, 3)


def test_bad_depth_and_shortcut_are_clear_errors():
    with pytest.raises(ValueError, match="6n\\+2"):
        cifar_resnet(21)
    with pytest.raises(ValueError, match="shortcut"):
        cifar_resnet(20, shortcut="C")


@pytest.mark.parametrize("in_chans, size", [(1, 16), (1, 32), (3, 8), (5, 20)])
def test_model_contract_any_input(in_chans, size):
    model = create_model("resnet20", num_classes=7, in_chans=in_chans)
    assert isinstance(model, ConvNet)
    x = torch.randn(2, in_chans, size, size)
    features = model.forward_features(x)
    assert features.shape[:2] == (2, model.num_features) == (2, 64)
    assert model.forward_head(features, pre_logits=True).shape == (2, 64)
    assert model(x).shape == (2, 7)
    assert model.get_classifier() is model.fc
    assert [len(list(s.parameters())) > 0 for s in model.stages()] == [True] * 4
    model.reset_classifier(4, dropout=0.5)
    assert isinstance(model.dropout, nn.Dropout) and model.get_classifier().out_features == 4
    assert model(x).shape == (2, 4)


def test_registry_cfg():
    cfg = get_model_cfg("resnet56")
    assert cfg.input_size == (3, 32, 32) and cfg.min_size <= 8
    assert cfg.extra["depth"] == 56 and cfg.extra["paper_cifar10_error"] == 6.97
    with pytest.raises(ValueError, match="no shortcuts"):
        create_model("plain20", shortcut="B")
