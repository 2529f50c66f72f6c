"""MobileNet v1/v2 and EfficientNet B0-B7: sizes, torchvision parity, the model contract, real weights."""

from __future__ import annotations

import pytest
import torch
import torchvision
from torch import nn

from convnets.blocks import StochasticDepth
from convnets.models import create_model, get_model_cfg
from convnets.models.efficientnet import EFFICIENTNET_SCALING

EFFICIENTNETS = [f"efficientnet_b{i}" for i in range(8)]
MODELS = ["mobilenet_v1", "mobilenet_v2", *EFFICIENTNETS]


def _num_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def _randomize_bn(module: nn.Module) -> None:
    """Non-trivial BN statistics, so eval-mode BN (and its eps) matters for the comparison."""
    for m in module.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.normal_(0, 0.1)
            m.running_var.uniform_(0.5, 1.5)
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.normal_(0, 0.1)


@pytest.fixture
def shapes_only(monkeypatch):
    """Build on the meta device with weight initialisation switched off: counting parameters and
    comparing shapes needs neither memory nor values, and init on meta tensors is slow."""
    for fn in ("kaiming_normal_", "kaiming_uniform_", "uniform_", "normal_", "ones_", "zeros_"):
        monkeypatch.setattr(nn.init, fn, lambda tensor, *args, **kwargs: tensor)
    with torch.device("meta"):
        yield


def test_mobilenet_v1_parameter_counts(shapes_only):
    assert _num_params(create_model("mobilenet_v1")) == 4_231_976
    # Paper Table 6: 4.2M, 2.6M, 1.3M, 0.5M parameters for alpha = 1, 0.75, 0.5, 0.25.
    for name, millions in [("mobilenet_v1_075", 2.6), ("mobilenet_v1_050", 1.3), ("mobilenet_v1_025", 0.5)]:
        assert round(_num_params(create_model(name)) / 1e6, 1) == millions
    alpha_half = create_model("mobilenet_v1", width_mult=0.5)
    assert _num_params(alpha_half) == _num_params(create_model("mobilenet_v1_050"))


@pytest.mark.parametrize("width_mult", [1.0, 0.5, 1.4])
def test_mobilenet_v2_matches_torchvision_layout(width_mult, shapes_only):
    ours = create_model("mobilenet_v2", width_mult=width_mult)
    theirs = torchvision.models.mobilenet_v2(width_mult=width_mult)
    if width_mult == 1.0:
        assert _num_params(ours) == 3_504_872
    assert {k: v.shape for k, v in ours.state_dict().items()} == {
        k: v.shape for k, v in theirs.state_dict().items()
    }


def test_efficientnets_match_torchvision_layout(shapes_only):
    """All eight variants from one coefficient table == torchvision's eight hand-called builders."""
    for name in EFFICIENTNETS:
        ours, theirs = create_model(name), getattr(torchvision.models, name)()
        assert _num_params(ours) == _num_params(theirs), name
        assert [(k, v.shape) for k, v in ours.state_dict().items()] == [
            (k, v.shape) for k, v in theirs.state_dict().items()
        ], name
        bn_ours = [(m.eps, m.momentum) for m in ours.modules() if isinstance(m, nn.BatchNorm2d)]
        bn_theirs = [(m.eps, m.momentum) for m in theirs.modules() if isinstance(m, nn.BatchNorm2d)]
        assert bn_ours == bn_theirs, name
        # Stochastic depth grows linearly over the blocks exactly as torchvision's.
        drop_ours = [m.p for m in ours.modules() if isinstance(m, StochasticDepth)]
        drop_theirs = [m.p for m in theirs.modules() if isinstance(m, torchvision.ops.StochasticDepth)]
        assert drop_ours == drop_theirs, name
        assert ours.classifier[0].p == theirs.classifier[0].p, name
    assert _num_params(create_model("efficientnet_b0")) == 5_288_548


def test_default_cfg_follows_the_width_built(shapes_only):
    assert create_model("mobilenet_v2", width_mult=1.4).default_cfg.imagenet_top1 == 74.7
    assert create_model("mobilenet_v2", width_mult=0.9).default_cfg.imagenet_top1 is None
    assert create_model("efficientnet_b0", depth_mult=2.0).default_cfg.imagenet_top1 is None
    assert create_model("efficientnet_b0", dropout=0.5).default_cfg.imagenet_top1 == 77.1


def test_efficientnet_default_cfgs():
    sizes = [get_model_cfg(n).input_size for n in EFFICIENTNETS]
    assert sizes == [(3, r, r) for r in (224, 240, 260, 300, 380, 456, 528, 600)]
    assert [get_model_cfg(n).imagenet_top1 for n in EFFICIENTNETS] == [
        77.1,
        79.1,
        80.1,
        81.6,
        82.9,
        83.6,
        84.0,
        84.3,
    ]
    assert all(get_model_cfg(n).torchvision == n for n in EFFICIENTNETS)
    assert set(EFFICIENTNET_SCALING) == set(EFFICIENTNETS)
    assert get_model_cfg("mobilenet_v2").torchvision == "mobilenet_v2"
    assert get_model_cfg("mobilenet_v1").torchvision is None
    assert [get_model_cfg(f"mobilenet_v1{s}").imagenet_top1 for s in ("", "_075", "_050", "_025")] == [
        70.6,
        68.4,
        63.7,
        50.6,
    ]


@pytest.mark.parametrize(
    ("name", "size"), [("mobilenet_v2", 64), ("efficientnet_b0", 64), ("efficientnet_b5", 32)]
)
def test_logits_match_torchvision(name, size):
    theirs = getattr(torchvision.models, name)(num_classes=10)
    _randomize_bn(theirs)
    ours = create_model(name, num_classes=10)
    ours.load_state_dict(theirs.state_dict(), strict=True)
    ours.eval(), theirs.eval()
    x = torch.randn(2, 3, size, size)
    with torch.no_grad():
        torch.testing.assert_close(ours(x), theirs(x), atol=1e-4, rtol=1e-4)


# Small inputs keep the big variants cheap; odd and non-square sizes check that pooling is global.
FORWARD_SIZES = {"mobilenet_v1": (48, 40), "mobilenet_v2": (64, 64), "efficientnet_b0": (33, 47)}


@pytest.mark.parametrize("name", MODELS)
def test_model_contract(name):
    model = create_model(name, num_classes=7, in_chans=1)
    assert model.default_cfg == get_model_cfg(name)
    h, w = FORWARD_SIZES.get(name, (32, 32))
    x = torch.randn(2, 1, h, w)

    features = model.forward_features(x)
    assert features.shape[:2] == (2, model.num_features)
    pooled = model.forward_head(features, pre_logits=True)
    assert pooled.shape == (2, model.num_features)
    logits = model.forward_head(features)
    assert logits.shape == (2, 7) and model.get_classifier().out_features == 7
    logits.sum().backward()
    first_conv = next(m for m in model.modules() if isinstance(m, nn.Conv2d))
    assert first_conv.in_channels == 1 and first_conv.weight.grad is not None

    # stages(): ordered groups that partition the feature extractor, input side first.
    stages = model.stages()
    stage_params = [id(p) for stage in stages for p in stage.parameters()]
    assert stage_params == [id(p) for p in model.features.parameters()]
    assert next(stages[0].parameters()) is first_conv.weight
    assert len(stages) == (6 if name == "mobilenet_v1" else 9)

    model.reset_classifier(3, dropout=0.5)
    assert (
        model.get_classifier().out_features == 3 and model.get_classifier().in_features == model.num_features
    )
    assert any(isinstance(m, nn.Dropout) and m.p == 0.5 for m in model.classifier)
    model.eval()
    with torch.no_grad():
        out = model(x)
    assert isinstance(out, torch.Tensor) and out.shape == (2, 3)


def test_mobilenet_v1_width_and_resolution():
    model = create_model("mobilenet_v1", num_classes=5, width_mult=0.25).eval()
    assert model.num_features == 256
    assert model.default_cfg.imagenet_top1 == 50.6  # the width built, not the registered default
    depthwise = model.features[1].depthwise[0]
    assert depthwise.groups == depthwise.in_channels == 8
    with torch.no_grad():
        for size in (32, 128):  # resolution multiplier: any size the five stride-2 layers allow
            assert model(torch.randn(1, 3, size, size)).shape == (1, 5)


def test_pretrained_mobilenet_v2_on_real_photos(shared_data):
    """Real ImageNet weights in torchvision format load strictly, match torchvision, see llamas."""
    from PIL import Image
    from torchvision.transforms import v2

    weights = torch.load(shared_data / "weights" / "mobilenet_v2_imagenet.pth", weights_only=True)
    labels = (shared_data / "weights" / "imagenet_labels.txt").read_text().splitlines()
    llama = labels.index("llama")
    ours = create_model("mobilenet_v2")
    ours.load_state_dict(weights, strict=True)
    theirs = torchvision.models.mobilenet_v2()
    theirs.load_state_dict(weights, strict=True)
    ours.eval(), theirs.eval()

    # These weights want [-1, 1] inputs (see weights/README.md), resize 256 + centre crop 224.
    preprocess = v2.Compose(
        [
            v2.Resize(256),
            v2.CenterCrop(224),
            v2.ToImage(),
            v2.ToDtype(torch.float32, scale=True),
            v2.Normalize([0.5] * 3, [0.5] * 3),
        ]
    )
    alpacas = sorted((shared_data / "alpaca" / "alpaca").glob("*.jpg"))[:8]
    others = sorted((shared_data / "alpaca" / "not alpaca").glob("*.jpg"))[:8]
    x = torch.stack([preprocess(Image.open(p).convert("RGB")) for p in alpacas + others])
    with torch.no_grad():
        logits = ours(x)
        torch.testing.assert_close(logits, theirs(x), atol=1e-4, rtol=1e-4)
    top1 = logits.argmax(1)
    top5 = logits.topk(5, dim=1).indices
    alpaca_top1, other_top1 = (top1[:8] == llama).sum().item(), (top1[8:] == llama).sum().item()
    # Alpacas are mostly 'llama' (ImageNet has no alpaca class); other animals rarely are.
    assert alpaca_top1 >= 4, f"llama top-1 for only {alpaca_top1}/8 alpaca photos"
    assert (top5[:8] == llama).any(1).sum() >= 6
    assert other_top1 <= 2
    prob = logits.softmax(1)[:, llama]
    assert prob[:8].mean() > 3 * prob[8:].mean()
