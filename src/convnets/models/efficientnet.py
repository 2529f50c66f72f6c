"""EfficientNet B0-B7 (Tan & Le, 2019): one baseline network, compound-scaled.

B0's stage list (``EFFICIENTNET_B0_STAGES``) is scaled by one coefficient table
(``EFFICIENTNET_SCALING``): width multiplies channels (rounded to multiples of 8), depth multiplies
the repeats of each stage (rounded up), resolution is the default input size. The result matches
``torchvision.models.efficientnet_bN`` module for module, so its state dicts load with ``strict=True``.
"""

from __future__ import annotations

import math
from dataclasses import replace
from functools import partial
from typing import NamedTuple

from torch import nn

from ..blocks import ConvBNAct, MBConv, make_divisible
from .base import ModelCfg
from .mobilenet import FeaturesClassifierNet
from .registry import register_model

__all__ = ["EFFICIENTNET_B0_STAGES", "EFFICIENTNET_SCALING", "EfficientNet", "EfficientNetScaling"]


class StageCfg(NamedTuple):
    expand_ratio: int
    kernel_size: int
    stride: int
    in_channels: int
    out_channels: int
    num_layers: int


# Paper Table 1 (the MBConv stages of B0, after the 3x3 stride-2 stem to 32 channels).
EFFICIENTNET_B0_STAGES: tuple[StageCfg, ...] = (
    StageCfg(1, 3, 1, 32, 16, 1),
    StageCfg(6, 3, 2, 16, 24, 2),
    StageCfg(6, 5, 2, 24, 40, 2),
    StageCfg(6, 3, 2, 40, 80, 3),
    StageCfg(6, 5, 1, 80, 112, 3),
    StageCfg(6, 5, 2, 112, 192, 4),
    StageCfg(6, 3, 1, 192, 320, 1),
)


class EfficientNetScaling(NamedTuple):
    width: float
    depth: float
    resolution: int
    dropout: float
    imagenet_top1: float  # paper Table 2
    torchvision_top1: float  # torchvision's IMAGENET1K_V1 weights
    # torchvision trains B5-B7 with TF's BatchNorm settings (eps 1e-3, momentum 0.01); the eps
    # changes the eval-mode output, so it must match for logit parity.
    bn_eps: float = 1e-5
    bn_momentum: float = 0.1


EFFICIENTNET_SCALING: dict[str, EfficientNetScaling] = {
    "efficientnet_b0": EfficientNetScaling(1.0, 1.0, 224, 0.2, 77.1, 77.692),
    "efficientnet_b1": EfficientNetScaling(1.0, 1.1, 240, 0.2, 79.1, 78.642),
    "efficientnet_b2": EfficientNetScaling(1.1, 1.2, 260, 0.3, 80.1, 80.608),
    "efficientnet_b3": EfficientNetScaling(1.2, 1.4, 300, 0.3, 81.6, 82.008),
    "efficientnet_b4": EfficientNetScaling(1.4, 1.8, 380, 0.4, 82.9, 83.384),
    "efficientnet_b5": EfficientNetScaling(1.6, 2.2, 456, 0.4, 83.6, 83.444, 1e-3, 0.01),
    "efficientnet_b6": EfficientNetScaling(1.8, 2.6, 528, 0.5, 84.0, 84.008, 1e-3, 0.01),
    "efficientnet_b7": EfficientNetScaling(2.0, 3.1, 600, 0.5, 84.3, 84.122, 1e-3, 0.01),
}


class EfficientNet(FeaturesClassifierNet):
    """EfficientNet: 3x3 stride-2 stem, the scaled MBConv stages, 1x1 conv to 4x the last stage's
    channels, SiLU throughout.

    The stochastic-depth drop probability grows linearly with the block index, from 0 at the first
    block to ``stochastic_depth_prob * (N-1)/N`` at the last (torchvision's schedule).
    Keys: ``features.0`` stem, ``features.1..7`` stages of :class:`~convnets.blocks.MBConv`,
    ``features.8`` head conv, ``classifier.1`` Linear.
    """

    def __init__(
        self,
        width_mult: float = 1.0,
        depth_mult: float = 1.0,
        num_classes: int = 1000,
        in_chans: int = 3,
        dropout: float = 0.2,
        stochastic_depth_prob: float = 0.2,
        bn_eps: float = 1e-5,
        bn_momentum: float = 0.1,
        stages: tuple[StageCfg, ...] = EFFICIENTNET_B0_STAGES,
    ) -> None:
        super().__init__()
        norm_layer = partial(nn.BatchNorm2d, eps=bn_eps, momentum=bn_momentum)
        scaled = [
            s._replace(
                in_channels=make_divisible(s.in_channels * width_mult),
                out_channels=make_divisible(s.out_channels * width_mult),
                num_layers=math.ceil(s.num_layers * depth_mult),
            )
            for s in stages
        ]
        features: list[nn.Module] = [
            ConvBNAct(in_chans, scaled[0].in_channels, 3, stride=2, act_layer=nn.SiLU, norm_layer=norm_layer)
        ]
        total_blocks = sum(s.num_layers for s in scaled)
        block_id = 0
        for s in scaled:
            blocks: list[nn.Module] = []
            for i in range(s.num_layers):
                blocks.append(
                    MBConv(
                        s.in_channels if i == 0 else s.out_channels,
                        s.out_channels,
                        s.kernel_size,
                        s.stride if i == 0 else 1,
                        s.expand_ratio,
                        stochastic_depth_prob=stochastic_depth_prob * block_id / total_blocks,
                        norm_layer=norm_layer,
                    )
                )
                block_id += 1
            features.append(nn.Sequential(*blocks))
        head_channels = 4 * scaled[-1].out_channels
        features.append(
            ConvBNAct(scaled[-1].out_channels, head_channels, 1, act_layer=nn.SiLU, norm_layer=norm_layer)
        )
        self.features = nn.Sequential(*features)
        self._build_head(head_channels, num_classes, dropout, inplace=True)
        self._init_weights()

    def stages(self) -> list[nn.Module]:
        # stem, the seven MBConv stages of Table 1, the final 1x1 conv: 9 groups.
        return list(self.features)

    def _init_weights(self) -> None:
        """torchvision's EfficientNet initialisation (He fan-out convs, uniform Linear)."""
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out")
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                init_range = 1.0 / math.sqrt(m.out_features)
                nn.init.uniform_(m.weight, -init_range, init_range)
                nn.init.zeros_(m.bias)


def _register(name: str, scaling: EfficientNetScaling) -> None:
    cfg = ModelCfg(
        input_size=(3, scaling.resolution, scaling.resolution),
        torchvision=name,
        imagenet_top1=scaling.imagenet_top1,
        extra={
            "torchvision_top1": scaling.torchvision_top1,
            "scaling": scaling._asdict(),
            "paper": "Tan & Le 2019, arXiv:1905.11946",
        },
    )

    @register_model(name, cfg)
    def build(num_classes: int = 1000, in_chans: int = 3, **kwargs) -> EfficientNet:
        defaults = {
            "width_mult": scaling.width,
            "depth_mult": scaling.depth,
            "dropout": scaling.dropout,
            "bn_eps": scaling.bn_eps,
            "bn_momentum": scaling.bn_momentum,
        }
        kwargs = {**defaults, **kwargs}
        model = EfficientNet(num_classes=num_classes, in_chans=in_chans, **kwargs)
        # A re-scaled network is no longer the published one: no published top-1 for it.
        rescaled = (kwargs["width_mult"], kwargs["depth_mult"]) != (scaling.width, scaling.depth)
        model.default_cfg = replace(cfg, imagenet_top1=None) if rescaled else cfg
        return model

    build.__name__ = name
    build.__doc__ = (
        f"EfficientNet-{name[-2:].upper()}: width x{scaling.width}, depth x{scaling.depth}, "
        f"{scaling.resolution}px. kwargs: dropout, stochastic_depth_prob, width_mult, depth_mult."
    )


for _name, _scaling in EFFICIENTNET_SCALING.items():
    _register(_name, _scaling)
