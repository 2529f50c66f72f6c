"""ResNet-18/34/50/101/152 (He, Zhang, Ren & Sun 2015) in torchvision's layout.

Stem (7x7/2 conv -> BN -> ReLU -> 3x3/2 max-pool), four stages of residual blocks at strides
4, 8, 16, 32, global average pool, one Linear. ResNet-18/34 stack :class:`~convnets.blocks.BasicBlock`;
ResNet-50/101/152 start each stage with a :class:`~convnets.blocks.ConvBlock` (projection shortcut)
followed by :class:`~convnets.blocks.IdentityBlock` s. Stage and block attribute names are
torchvision's (``layer1.0.conv1`` ...), so its checkpoints load unchanged.

``stride_in_1x1=False`` (default) is torchvision's "v1.5" (stride on the 3x3, what its checkpoints
were trained with); ``True`` is the paper's v1 (stride on the first 1x1). Same parameters either way.
"""

from __future__ import annotations

import torch
from torch import nn

from ..blocks import BasicBlock, ConvBlock, IdentityBlock
from .base import ConvNet, ModelCfg
from .registry import register_model

__all__ = ["ResNet", "resnet18", "resnet34", "resnet50", "resnet101", "resnet152"]

STAGE_WIDTHS = (64, 128, 256, 512)  # 3x3 conv width of each stage (the "mid" width in bottlenecks)


class ResNet(ConvNet):
    """ResNet with ``block="basic"`` (2 convs per block) or ``"bottleneck"`` (1x1-3x3-1x1, 4x expansion);
    ``layers`` gives the number of blocks per stage, e.g. ``(3, 4, 6, 3)`` for ResNet-50.

    ``zero_init_residual=True`` zero-initialises the last BN of every residual branch, so each block
    starts as the identity (Goyal et al. 2017).
    """

    def __init__(
        self,
        block: str,
        layers: tuple[int, int, int, int],
        num_classes: int = 1000,
        in_chans: int = 3,
        zero_init_residual: bool = False,
        stride_in_1x1: bool = False,
    ) -> None:
        super().__init__()
        if block not in ("basic", "bottleneck"):
            raise ValueError(f"resnet: block must be 'basic' or 'bottleneck', got {block!r}")
        if stride_in_1x1 and block == "basic":
            raise ValueError("resnet: stride_in_1x1 only applies to bottleneck ResNets (50/101/152)")
        self.conv1 = nn.Conv2d(in_chans, 64, kernel_size=7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)

        channels = 64
        for index, (width, depth) in enumerate(zip(STAGE_WIDTHS, layers)):
            stride = 1 if index == 0 else 2  # the max-pool already downsampled before stage 1
            blocks: list[nn.Module] = []
            if block == "basic":
                blocks.append(BasicBlock(channels, width, stride))  # projection shortcut when shapes change
                blocks += [BasicBlock(width, width) for _ in range(depth - 1)]
                channels = width
            else:
                out = width * ConvBlock.expansion
                blocks.append(ConvBlock(channels, width, out, stride, stride_in_1x1=stride_in_1x1))
                blocks += [IdentityBlock(out, width) for _ in range(depth - 1)]
                channels = out
            self.add_module(f"layer{index + 1}", nn.Sequential(*blocks))

        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.dropout = nn.Identity()  # torchvision has none; reset_classifier(dropout=p) adds one
        self.fc = nn.Linear(channels, num_classes)
        self.num_features = channels

        # torchvision's initialisation.
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        if zero_init_residual:
            for m in self.modules():
                if isinstance(m, (ConvBlock, IdentityBlock)):
                    nn.init.zeros_(m.bn3.weight)
                elif isinstance(m, BasicBlock):
                    nn.init.zeros_(m.bn2.weight)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer1(x)
        x = self.layer2(x)
        x = self.layer3(x)
        return self.layer4(x)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = self.dropout(torch.flatten(self.avgpool(x), 1))
        return x if pre_logits else self.fc(x)

    def get_classifier(self) -> nn.Linear:
        return self.fc

    def reset_classifier(self, num_classes: int, dropout: float = 0.2) -> None:
        old = self.fc.weight  # the new layer goes where the old one was
        self.dropout = nn.Dropout(dropout).train(self.training)  # fresh modules start in training mode
        self.fc = nn.Linear(self.num_features, num_classes, device=old.device, dtype=old.dtype)

    def stages(self) -> list[nn.Module]:
        stem = nn.Sequential(self.conv1, self.bn1, self.relu, self.maxpool)
        return [stem, self.layer1, self.layer2, self.layer3, self.layer4]


def _cfg(name: str, top1: float) -> ModelCfg:
    return ModelCfg(
        min_size=1,  # every conv and pool is padded: torchvision states 1x1
        torchvision=name,
        imagenet_top1=top1,
        extra={"imagenet_top1_source": f"torchvision ResNet{name[6:]}_Weights.IMAGENET1K_V1"},
    )


# torchvision IMAGENET1K_V1 top-1 (the paper's 10-crop figures are higher; v1.5 stride placement).
RESNET_CFGS: dict[str, ModelCfg] = {
    "resnet18": _cfg("resnet18", 69.758),
    "resnet34": _cfg("resnet34", 73.314),
    "resnet50": _cfg("resnet50", 76.130),
    "resnet101": _cfg("resnet101", 77.374),
    "resnet152": _cfg("resnet152", 78.312),
}


def _resnet(
    name: str, block: str, layers: tuple[int, int, int, int], num_classes: int, in_chans: int, **kwargs
):
    model = ResNet(block, layers, num_classes=num_classes, in_chans=in_chans, **kwargs)
    model.default_cfg = RESNET_CFGS[name]
    return model


@register_model("resnet18", RESNET_CFGS["resnet18"])
def resnet18(num_classes: int = 1000, in_chans: int = 3, **kwargs) -> ResNet:
    """ResNet-18: basic blocks (2, 2, 2, 2); kwargs: ``zero_init_residual``."""
    return _resnet("resnet18", "basic", (2, 2, 2, 2), num_classes, in_chans, **kwargs)


@register_model("resnet34", RESNET_CFGS["resnet34"])
def resnet34(num_classes: int = 1000, in_chans: int = 3, **kwargs) -> ResNet:
    """ResNet-34: basic blocks (3, 4, 6, 3); kwargs: ``zero_init_residual``."""
    return _resnet("resnet34", "basic", (3, 4, 6, 3), num_classes, in_chans, **kwargs)


@register_model("resnet50", RESNET_CFGS["resnet50"])
def resnet50(num_classes: int = 1000, in_chans: int = 3, **kwargs) -> ResNet:
    """ResNet-50: bottleneck blocks (3, 4, 6, 3); kwargs: ``zero_init_residual``, ``stride_in_1x1``."""
    return _resnet("resnet50", "bottleneck", (3, 4, 6, 3), num_classes, in_chans, **kwargs)


@register_model("resnet101", RESNET_CFGS["resnet101"])
def resnet101(num_classes: int = 1000, in_chans: int = 3, **kwargs) -> ResNet:
    """ResNet-101: bottleneck blocks (3, 4, 23, 3); kwargs: ``zero_init_residual``, ``stride_in_1x1``."""
    return _resnet("resnet101", "bottleneck", (3, 4, 23, 3), num_classes, in_chans, **kwargs)


@register_model("resnet152", RESNET_CFGS["resnet152"])
def resnet152(num_classes: int = 1000, in_chans: int = 3, **kwargs) -> ResNet:
    """ResNet-152: bottleneck blocks (3, 8, 36, 3); kwargs: ``zero_init_residual``, ``stride_in_1x1``."""
    return _resnet("resnet152", "bottleneck", (3, 8, 36, 3), num_classes, in_chans, **kwargs)
