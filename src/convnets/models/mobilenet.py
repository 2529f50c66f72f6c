"""MobileNet v1 (depthwise-separable convolutions) and MobileNet v2 (inverted residuals).

v1 (Howard et al., 2017) has no torchvision counterpart; its layout here is the paper's Table 1.
v2 (Sandler et al., 2018) reproduces ``torchvision.models.mobilenet_v2`` module for module, so its
state dicts load with ``strict=True``.
"""

from __future__ import annotations

from dataclasses import replace

import torch
from torch import nn

from ..blocks import ConvBNAct, DepthwiseSeparableConv, InvertedResidual, make_divisible
from .base import ConvNet, ModelCfg
from .registry import register_model

__all__ = ["FeaturesClassifierNet", "MobileNetV1", "MobileNetV2"]


class FeaturesClassifierNet(ConvNet):
    """A ``features`` Sequential, global average pooling, and ``classifier = [Dropout, Linear]``:
    the head shared by the MobileNets and EfficientNet (and torchvision's layout for them)."""

    features: nn.Sequential
    classifier: nn.Sequential

    def _build_head(self, num_features: int, num_classes: int, dropout: float, inplace: bool = False) -> None:
        self.num_features = num_features
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        # torchvision's EfficientNet uses an in-place Dropout, MobileNetV2 not; no effect on results.
        self.classifier = nn.Sequential(
            nn.Dropout(p=dropout, inplace=inplace), nn.Linear(num_features, num_classes)
        )

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = torch.flatten(self.avgpool(x), 1)
        return x if pre_logits else self.classifier(x)

    def get_classifier(self) -> nn.Linear:
        return self.classifier[-1]

    def reset_classifier(self, num_classes: int, dropout: float = 0.2) -> None:
        # The head already is pool -> dropout -> Linear; only the dropout and the Linear are new.
        self.classifier = nn.Sequential(nn.Dropout(p=dropout), nn.Linear(self.num_features, num_classes))


# --- MobileNet v1 -----------------------------------------------------------------------------

# Paper Table 1 after the stem: (output channels, stride) of each depthwise-separable layer.
MOBILENET_V1_LAYERS: tuple[tuple[int, int], ...] = (
    (64, 1),
    (128, 2), (128, 1),
    (256, 2), (256, 1),
    (512, 2), (512, 1), (512, 1), (512, 1), (512, 1), (512, 1),
    (1024, 2), (1024, 1),
)  # fmt: skip

# Paper Table 6 (224x224) and Table 7 (alpha = 1.0) ImageNet top-1.
MOBILENET_V1_TOP1_BY_WIDTH = {1.0: 70.6, 0.75: 68.4, 0.5: 63.7, 0.25: 50.6}
MOBILENET_V1_TOP1_BY_RESOLUTION = {224: 70.6, 192: 69.1, 160: 67.2, 128: 64.4}


class MobileNetV1(FeaturesClassifierNet):
    """MobileNet v1: a 3x3 stride-2 stem and 13 depthwise-separable convolutions.

    ``width_mult`` is the paper's width multiplier alpha: every layer gets ``int(channels * alpha)``
    channels (at least ``min_channels``, 8 as in TF-slim). The resolution multiplier rho is simply the
    input size: global average pooling accepts any size of at least 32x32.
    Keys: ``features.0`` (stem ConvBNAct), ``features.1..13`` (:class:`DepthwiseSeparableConv`),
    ``classifier.1`` (Linear). ``dropout`` defaults to 0.001 as in TF-slim/Keras (keep prob 0.999).
    """

    def __init__(
        self,
        num_classes: int = 1000,
        in_chans: int = 3,
        width_mult: float = 1.0,
        dropout: float = 0.001,
        min_channels: int = 8,
    ) -> None:
        super().__init__()
        if width_mult <= 0:
            raise ValueError(f"width_mult must be positive, got {width_mult}")
        self.width_mult = width_mult

        def width(channels: int) -> int:
            return max(min_channels, int(channels * width_mult))

        channels = width(32)
        features: list[nn.Module] = [ConvBNAct(in_chans, channels, 3, stride=2)]
        for out_channels, stride in MOBILENET_V1_LAYERS:
            features.append(DepthwiseSeparableConv(channels, width(out_channels), stride))
            channels = width(out_channels)
        self.features = nn.Sequential(*features)
        self._build_head(channels, num_classes, dropout)
        _init_weights(self)

    def stages(self) -> list[nn.Module]:
        # One group per resolution (112, 112, 56, 28, 14, 7 at 224 input); each starts at a stride 2.
        bounds = [0, 1, 2, 4, 6, 12, 14]
        return [self.features[a:b] for a, b in zip(bounds[:-1], bounds[1:], strict=True)]


def _v1_cfg(width_mult: float) -> ModelCfg:
    return ModelCfg(
        imagenet_top1=MOBILENET_V1_TOP1_BY_WIDTH[width_mult],
        extra={
            "width_mult": width_mult,
            "imagenet_top1_by_width": MOBILENET_V1_TOP1_BY_WIDTH,
            **({"imagenet_top1_by_resolution": MOBILENET_V1_TOP1_BY_RESOLUTION} if width_mult == 1.0 else {}),
            "paper": "Howard et al. 2017, arXiv:1704.04861",
        },
    )


def _cfg_for_width(cfg: ModelCfg, width_mult: float) -> ModelCfg:
    """The registered cfg, with the published top-1 of the width actually built (None if unpublished)."""
    top1 = cfg.extra["imagenet_top1_by_width"].get(width_mult)
    return replace(cfg, imagenet_top1=top1, extra={**cfg.extra, "width_mult": width_mult})


def _register_v1(name: str, default_width: float) -> None:
    @register_model(name, _v1_cfg(default_width))
    def build(num_classes: int = 1000, in_chans: int = 3, **kwargs) -> MobileNetV1:
        kwargs.setdefault("width_mult", default_width)
        model = MobileNetV1(num_classes=num_classes, in_chans=in_chans, **kwargs)
        model.default_cfg = _cfg_for_width(_v1_cfg(default_width), model.width_mult)
        return model

    build.__name__ = name
    build.__doc__ = f"MobileNet v1 with width multiplier {default_width} (kwargs: width_mult, dropout)."


_register_v1("mobilenet_v1", 1.0)
_register_v1("mobilenet_v1_075", 0.75)
_register_v1("mobilenet_v1_050", 0.5)
_register_v1("mobilenet_v1_025", 0.25)


# --- MobileNet v2 -----------------------------------------------------------------------------

# Paper Table 2 after the stem: expansion t, output channels c, repeats n, first stride s.
MOBILENET_V2_SETTING: tuple[tuple[int, int, int, int], ...] = (
    (1, 16, 1, 1),
    (6, 24, 2, 2),
    (6, 32, 3, 2),
    (6, 64, 4, 2),
    (6, 96, 3, 1),
    (6, 160, 3, 2),
    (6, 320, 1, 1),
)


class MobileNetV2(FeaturesClassifierNet):
    """MobileNet v2: stem, 17 :class:`InvertedResidual` blocks (the rows of ``MOBILENET_V2_SETTING``),
    a 1x1 conv to 1280 channels, ReLU6 throughout; identical to ``torchvision.models.mobilenet_v2``.

    ``width_mult`` scales every layer's channels, rounded to a multiple of ``round_nearest``; the
    last conv never shrinks below 1280 (as in the paper and torchvision).
    """

    def __init__(
        self,
        num_classes: int = 1000,
        in_chans: int = 3,
        width_mult: float = 1.0,
        dropout: float = 0.2,
        round_nearest: int = 8,
    ) -> None:
        super().__init__()
        if width_mult <= 0:
            raise ValueError(f"width_mult must be positive, got {width_mult}")
        self.width_mult = width_mult
        channels = make_divisible(32 * width_mult, round_nearest)
        last_channels = make_divisible(1280 * max(1.0, width_mult), round_nearest)
        features: list[nn.Module] = [ConvBNAct(in_chans, channels, 3, stride=2, act_layer=nn.ReLU6)]
        self._stage_bounds = [0, 1]  # features index where each stage starts
        for t, c, n, s in MOBILENET_V2_SETTING:
            out_channels = make_divisible(c * width_mult, round_nearest)
            for i in range(n):
                features.append(InvertedResidual(channels, out_channels, s if i == 0 else 1, expand_ratio=t))
                channels = out_channels
            self._stage_bounds.append(len(features))
        features.append(ConvBNAct(channels, last_channels, 1, act_layer=nn.ReLU6))
        self._stage_bounds.append(len(features))
        self.features = nn.Sequential(*features)
        self._build_head(last_channels, num_classes, dropout)
        _init_weights(self)

    def stages(self) -> list[nn.Module]:
        # stem, one group per row of the paper's Table 2 (7), the final 1x1 conv: 9 groups.
        b = self._stage_bounds
        return [self.features[lo:hi] for lo, hi in zip(b[:-1], b[1:], strict=True)]


MOBILENET_V2_CFG = ModelCfg(
    torchvision="mobilenet_v2",
    imagenet_top1=72.0,
    extra={
        "width_mult": 1.0,
        "torchvision_top1": 71.878,
        "imagenet_top1_by_width": {1.0: 72.0, 1.4: 74.7},  # paper Table 4
        "paper": "Sandler et al. 2018, arXiv:1801.04381",
    },
)


@register_model("mobilenet_v2", MOBILENET_V2_CFG)
def mobilenet_v2(num_classes: int = 1000, in_chans: int = 3, **kwargs) -> MobileNetV2:
    """MobileNet v2 (torchvision layout); kwargs: ``width_mult``, ``dropout``, ``round_nearest``."""
    model = MobileNetV2(num_classes=num_classes, in_chans=in_chans, **kwargs)
    model.default_cfg = _cfg_for_width(MOBILENET_V2_CFG, model.width_mult)
    return model


def _init_weights(model: nn.Module) -> None:
    """torchvision's MobileNet initialisation: He (fan-out) convs, unit BN, small-normal Linear."""
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, 0, 0.01)
            nn.init.zeros_(m.bias)
