"""LeNet-5, AlexNet, VGG, ResNet and GoogLeNet: parameter counts, torchvision parity, the ConvNet
contract (heads, stages, aux outputs) and arbitrary input sizes."""

from __future__ import annotations

import copy
import functools

import pytest
import torch
import torchvision
from torch import nn
from torch.nn import functional as F

from convnets.models import AuxOutputs, ConvNet, create_model, get_model_cfg

VGGS = [f"vgg{d}{bn}" for d in (11, 13, 16, 19) for bn in ("", "_bn")]
RESNETS = ["resnet18", "resnet34", "resnet50", "resnet101", "resnet152"]
TORCHVISION_FAMILIES = ["alexnet", *VGGS, *RESNETS, "googlenet"]
ALL = ["lenet5", *TORCHVISION_FAMILIES]


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@functools.cache
def _built(name: str) -> ConvNet:
    return create_model(name, num_classes=7, in_chans=1)


def fresh(name: str) -> ConvNet:
    """A (7-class, 1-channel) model, built once per session and copied: random init of 10M+ weights is
    what costs time here, not the tiny forward passes."""
    return copy.deepcopy(_built(name))


def torchvision_model(name: str, **kwargs) -> nn.Module:
    if name == "googlenet":
        kwargs = {"aux_logits": True, "init_weights": True, **kwargs}
    return getattr(torchvision.models, name)(weights=None, **kwargs)


def ours_for_torchvision(name: str, **kwargs) -> ConvNet:
    if name == "googlenet":
        kwargs = {"tv_layout": True, **kwargs}
    return create_model(name, **kwargs)


# --- parameter counts and state-dict layout ------------------------------------------------------


@pytest.mark.parametrize("name", TORCHVISION_FAMILIES)
def test_same_parameters_and_keys_as_torchvision(name):
    with torch.device("meta"):  # no memory, no init cost
        ours = ours_for_torchvision(name)
        theirs = torchvision_model(name)
    assert n_params(ours) == n_params(theirs)
    ours_sd, theirs_sd = ours.state_dict(), theirs.state_dict()
    assert list(ours_sd) == list(theirs_sd)
    assert [v.shape for v in ours_sd.values()] == [v.shape for v in theirs_sd.values()]


@pytest.mark.parametrize(
    ("name", "kwargs", "expected"),
    [
        ("lenet5", {"num_classes": 10, "in_chans": 1}, 61_706),
        ("alexnet", {}, 61_100_840),
        ("vgg16", {}, 138_357_544),
        ("resnet50", {}, 25_557_032),
        ("googlenet", {"tv_layout": True}, 13_004_888),
        # the paper's 5x5 branches: 380,928 more weights than torchvision's 3x3 ones
        ("googlenet", {}, 13_004_888 + 380_928),
    ],
)
def test_published_parameter_counts(name, kwargs, expected):
    with torch.device("meta"):
        assert n_params(create_model(name, **kwargs)) == expected


def test_googlenet_without_aux_heads_matches_torchvision_inference_model():
    with torch.device("meta"):
        ours = create_model("googlenet", tv_layout=True, aux_logits=False)
        theirs = torchvision.models.googlenet(weights=None, aux_logits=False, init_weights=True)
    assert n_params(ours) == n_params(theirs) == 6_624_904


@pytest.mark.parametrize("name", TORCHVISION_FAMILIES)
def test_default_cfg_matches_torchvision_weights_meta(name):
    cfg = get_model_cfg(name)
    assert cfg.torchvision == name
    meta = torchvision.models.get_model_weights(name).IMAGENET1K_V1.meta
    assert cfg.imagenet_top1 == pytest.approx(meta["_metrics"]["ImageNet-1K"]["acc@1"])
    assert (cfg.min_size, cfg.min_size) == meta["min_size"]


# --- numerical parity with torchvision ----------------------------------------------------------


def _randomize_batchnorm(model: nn.Module) -> None:
    """Non-trivial BN statistics and affine parameters, so a mis-mapped BN key would show."""
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.weight.copy_(torch.rand(m.weight.shape, generator=g) + 0.5)
                m.bias.copy_(torch.randn(m.bias.shape, generator=g) * 0.1)
                m.running_mean.copy_(torch.randn(m.running_mean.shape, generator=g) * 0.1)
                m.running_var.copy_(torch.rand(m.running_var.shape, generator=g) + 0.5)


def _ours_with_their_weights(name: str, theirs: nn.Module, **kwargs) -> ConvNet:
    with torch.device("meta"):  # skip our own random init: every tensor comes from torchvision's model
        ours = ours_for_torchvision(name, **kwargs)
    ours.load_state_dict(theirs.state_dict(), strict=True, assign=True)
    return ours


@pytest.mark.parametrize(
    ("name", "size"), [("alexnet", 64), ("vgg11", 32), ("vgg11_bn", 32), ("resnet18", 64), ("resnet50", 32)]
)
def test_torchvision_state_dict_loads_and_logits_match(name, size):
    theirs = torchvision_model(name, num_classes=10).eval()
    _randomize_batchnorm(theirs)
    ours = _ours_with_their_weights(name, theirs, num_classes=10).eval()
    x = torch.randn(2, 3, size, size)
    with torch.no_grad():
        expected, got = theirs(x), ours(x)
    assert isinstance(got, torch.Tensor) and got.shape == (2, 10)
    assert expected.abs().max() > 1e-3  # logits that are all ~0 would make the comparison vacuous
    torch.testing.assert_close(got, expected, atol=1e-4, rtol=1e-4)


def test_googlenet_torchvision_parity_eval_train_and_transform_input():
    theirs = torchvision_model("googlenet", num_classes=10, dropout=0.0, dropout_aux=0.0)
    _randomize_batchnorm(theirs)
    x = torch.randn(2, 3, 48, 48)  # the side classifiers pool adaptively to 4x4: small inputs work
    for transform_input in (True, False):
        theirs.transform_input = transform_input
        ours = _ours_with_their_weights(
            "googlenet", theirs, num_classes=10, transform_input=transform_input, dropout=0.0, dropout_aux=0.0
        )
        with torch.no_grad():
            expected, got = theirs.eval()(x), ours.eval()(x)
            assert isinstance(got, torch.Tensor) and got.shape == (2, 10)
            torch.testing.assert_close(got, expected, atol=1e-4, rtol=1e-4)
            # training mode: logits and both side classifiers, in the order aux1 (after 4a), aux2 (after 4d)
            expected, got = theirs.train()(x), ours.train()(x)
        assert isinstance(got, AuxOutputs) and got.aux_weight == 0.3
        torch.testing.assert_close(got.logits, expected.logits, atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(got.aux[0], expected.aux_logits1, atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(got.aux[1], expected.aux_logits2, atol=1e-4, rtol=1e-4)
    # tv_layout turns transform_input on by default, as torchvision does for its pretrained googlenet
    with torch.device("meta"):
        assert create_model("googlenet", tv_layout=True).transform_input
        assert not create_model("googlenet").transform_input


def test_resnet50_stride_in_1x1_moves_the_stride_not_the_weights():
    with torch.device("meta"):
        v15 = create_model("resnet50")
        v1 = create_model("resnet50", stride_in_1x1=True)
        assert v1(torch.randn(1, 3, 64, 64)).shape == (1, 1000)
    assert {k: v.shape for k, v in v1.state_dict().items()} == {
        k: v.shape for k, v in v15.state_dict().items()
    }
    for stage in ("layer2", "layer3", "layer4"):
        paper, tv = getattr(v1, stage)[0], getattr(v15, stage)[0]
        assert (paper.conv1.stride, paper.conv2.stride) == ((2, 2), (1, 1))
        assert (tv.conv1.stride, tv.conv2.stride) == ((1, 1), (2, 2))
        assert paper.downsample[0].stride == tv.downsample[0].stride == (2, 2)
    with pytest.raises(ValueError, match="stride_in_1x1"):
        create_model("resnet18", stride_in_1x1=True)


# --- training from scratch on other inputs ------------------------------------------------------


def _loss(out: torch.Tensor | AuxOutputs, target: torch.Tensor) -> torch.Tensor:
    if isinstance(out, AuxOutputs):
        return F.cross_entropy(out.logits, target) + out.aux_weight * sum(
            F.cross_entropy(a, target) for a in out.aux
        )
    return F.cross_entropy(out, target)


SMALL_SIZE = {"lenet5": 28, "alexnet": 67, "googlenet": 40}


def _forward_backward(model: ConvNet, name: str) -> torch.Tensor:
    model.train()
    size = SMALL_SIZE.get(name, 32)
    x, target = torch.randn(2, 1, size, size), torch.tensor([0, 6])
    out = model(x)
    logits = out.logits if isinstance(out, AuxOutputs) else out
    assert logits.shape == (2, 7)
    if name == "googlenet":
        assert isinstance(out, AuxOutputs) and [a.shape for a in out.aux] == [(2, 7), (2, 7)]
    _loss(out, target).backward()
    first_conv = next(m for m in model.modules() if isinstance(m, nn.Conv2d))
    assert first_conv.in_channels == 1 and first_conv.weight.grad is not None
    return x


@pytest.mark.parametrize("name", ALL)
def test_every_model_forward_backward_shapes_seven_classes_one_channel(name):
    with torch.device("meta"):  # shapes and the autograd graph, without paying for 140M random weights
        model = create_model(name, num_classes=7, in_chans=1)
        x = _forward_backward(model, name)
        model.eval()
        assert isinstance(model(x), torch.Tensor)  # eval: plain logits for every model
    assert all(p.grad is not None for p in model.parameters())


@pytest.mark.parametrize("name", ["lenet5", "alexnet", "resnet18", "googlenet"])
def test_forward_backward_real_values(name):
    model = fresh(name)
    x = _forward_backward(model, name)
    first_conv = next(m for m in model.modules() if isinstance(m, nn.Conv2d))
    assert torch.isfinite(first_conv.weight.grad).all() and first_conv.weight.grad.abs().sum() > 0
    model.eval()
    with torch.no_grad():
        out = model(x)
    assert isinstance(out, torch.Tensor) and out.shape == (2, 7) and torch.isfinite(out).all()


@pytest.mark.parametrize("name", ["lenet5", "alexnet", "googlenet", "resnet18"])
def test_minimum_and_non_square_inputs(name):
    model = fresh(name).eval()
    min_size = get_model_cfg(name).min_size
    with torch.no_grad():
        assert model(torch.randn(1, 1, min_size, min_size)).shape == (1, 7)
        assert model(torch.randn(1, 1, 70, 100)).shape == (1, 7)
        if min_size > 1:  # the stated minimum is exact
            with pytest.raises(RuntimeError):
                model(torch.randn(1, 1, min_size - 1, min_size - 1))


@pytest.mark.parametrize(
    ("kwargs", "expected_grouped", "expected_lrn"),
    [
        ({}, 0, 0),
        ({"lrn": True}, 0, 2),
        ({"groups": 2, "lrn": True, "widths": (96, 256, 384, 384, 256)}, 3, 2),
    ],
)
def test_alexnet_paper_options(kwargs, expected_grouped, expected_lrn):
    with torch.device("meta"):
        model = create_model("alexnet", num_classes=5, **kwargs).eval()
        assert model(torch.randn(1, 3, 64, 64)).shape == (1, 5)
        assert len(model.stages()) == 6
    convs = [m for m in model.features if isinstance(m, nn.Conv2d)]
    assert sum(c.groups == 2 for c in convs) == expected_grouped
    assert sum(isinstance(m, nn.LocalResponseNorm) for m in model.features) == expected_lrn
    # LRN sits between the ReLU and the max-pool of conv1 and conv2
    kinds = [type(m).__name__ for m in model.stages()[0]]
    assert kinds == (
        ["Conv2d", "ReLU", "LocalResponseNorm", "MaxPool2d"]
        if expected_lrn
        else ["Conv2d", "ReLU", "MaxPool2d"]
    )


@pytest.mark.parametrize(("activation", "pool"), [("tanh", "avg"), ("relu", "max")])
def test_lenet5_options(activation, pool):
    model = create_model("lenet5", num_classes=10, in_chans=1, activation=activation, pool=pool)
    act = nn.Tanh if activation == "tanh" else nn.ReLU
    pool_type = nn.AvgPool2d if pool == "avg" else nn.MaxPool2d
    assert isinstance(model.features.act1, act) and isinstance(model.classifier.act6, act)
    assert isinstance(model.features.s2, pool_type) and isinstance(model.features.s4, pool_type)
    assert model.forward_features(torch.randn(3, 1, 32, 32)).shape == (3, 120, 1, 1)
    with pytest.raises(ValueError, match="activation"):
        create_model("lenet5", activation="sigmoid")


# --- the ConvNet contract: heads and stages -----------------------------------------------------


CONTRACT_CASES = [("lenet5", 32, 3), ("alexnet", 64, 5), ("resnet18", 32, 5), ("googlenet", 32, 4)]


@pytest.mark.parametrize(("name", "size", "n_stages"), CONTRACT_CASES)
def test_reset_classifier_and_stages(name, size, n_stages):
    model = fresh(name).eval()
    x = torch.randn(2, 1, size, size)
    with torch.no_grad():
        features = model.forward_features(x)
        assert model.forward_head(features, pre_logits=True).shape == (2, model.num_features)
    assert model.get_classifier().in_features == model.num_features
    assert model.get_classifier().out_features == 7

    model.reset_classifier(4, dropout=0.3)
    head = model.get_classifier()
    assert isinstance(head, nn.Linear) and head.out_features == 4
    # GAP -> dropout -> Linear on the last feature map
    assert head.in_features == model.num_features == features.shape[1]
    dropouts = [m for m in model.modules() if isinstance(m, nn.Dropout) and m.p == 0.3]
    assert len(dropouts) == 1 and not dropouts[0].training  # follows the model's eval mode
    with torch.no_grad():
        torch.testing.assert_close(model.forward_head(features, pre_logits=True), features.mean((2, 3)))
        torch.testing.assert_close(model.forward_head(features), head(features.mean((2, 3))))

    stages = model.stages()
    assert len(stages) == n_stages
    stage_params = [p for s in stages for p in s.parameters()]
    assert len({id(p) for p in stage_params}) == len(stage_params)  # disjoint
    covered = {id(p) for p in stage_params} | {id(p) for p in head.parameters()}
    assert covered == {id(p) for p in model.parameters()}  # stages + classifier = the whole model
    with torch.no_grad():  # the stages, applied in order, are the feature extractor
        y = x
        for stage in stages:
            y = stage(y)
    torch.testing.assert_close(y, features)


@pytest.mark.parametrize("name", ["lenet5", "vgg11", "alexnet"])
def test_original_fc_layers_are_a_stage_until_reset(name):
    with torch.device("meta"):
        model = create_model(name, num_classes=6)
    hidden = model.stages()[-1]
    assert any(isinstance(m, nn.Linear) for m in hidden.modules())
    assert model.get_classifier() not in list(hidden.modules())


def test_googlenet_aux_heads_in_training_only_and_reset():
    model = fresh("googlenet")
    x = torch.randn(2, 1, 32, 32)
    out = model.train()(x)
    assert isinstance(out, AuxOutputs) and len(out.aux) == 2 and out.aux_weight == 0.3
    assert isinstance(model.eval()(x), torch.Tensor)

    model.reset_classifier(3, keep_aux=True)
    out = model.train()(x)
    assert out.logits.shape == (2, 3) and [a.shape for a in out.aux] == [(2, 3), (2, 3)]

    model.reset_classifier(2)  # default: side classifiers dropped, as for pretrained inference
    assert model.aux1 is None and model.aux2 is None
    out = model.train()(x)
    assert isinstance(out, torch.Tensor) and out.shape == (2, 2)


def test_googlenet_transform_input_needs_three_channels():
    with pytest.raises(ValueError, match="in_chans"):
        create_model("googlenet", in_chans=1, tv_layout=True)
    with torch.device("meta"):
        model = create_model("googlenet", in_chans=1, tv_layout=True, transform_input=False)
    assert model.conv1.conv.in_channels == 1


def test_zero_init_residual_makes_blocks_start_as_identity():
    model = create_model("resnet18", num_classes=3, zero_init_residual=True).eval()
    block = model.layer1[0]
    x = torch.rand(1, 64, 8, 8)
    with torch.no_grad():
        torch.testing.assert_close(block(x), x)


@pytest.mark.parametrize(
    ("name", "convs_per_stage"), [("vgg11", [1, 1, 2, 2, 2]), ("vgg16_bn", [2, 2, 3, 3, 3])]
)
def test_vgg_stages_are_the_five_pooled_blocks(name, convs_per_stage):
    with torch.device("meta"):
        model = create_model(name, num_classes=5)
        assert len(model.stages()) == 6  # five conv blocks + fc6/fc7 while the original head is there
        model.reset_classifier(3)
        stages = model.stages()
        assert [sum(isinstance(m, nn.Conv2d) for m in s) for s in stages] == convs_per_stage
        assert all(isinstance(s[-1], nn.MaxPool2d) for s in stages)
        y = torch.randn(1, 3, 64, 64)
        for stage in stages:
            y = stage(y)
        assert y.shape == model.forward_features(torch.randn(1, 3, 64, 64)).shape == (1, 512, 2, 2)
        assert model(torch.randn(2, 3, 64, 64)).shape == (2, 3)
