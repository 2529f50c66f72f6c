"""VGG-11/13/16/19 (Simonyan & Zisserman 2014, configurations A, B, D, E), with and without
batch norm, in torchvision's layout.

Only 3x3 convolutions (stride 1, "same" padding) and 2x2 max-pools: two stacked 3x3 convs see a 5x5
window, three see 7x7, with fewer parameters and more non-linearities than one large kernel. Five
pools halve the resolution to 7x7 at 224; torchvision's adaptive 7x7 average pool keeps the
classifier's 25,088 inputs for any input from 32x32 up.
"""

from __future__ import annotations

from torch import nn

from .base import ModelCfg
from .lenet import FCHeadConvNet
from .registry import register_model

__all__ = [
    "VGG",
    "VGG_CONFIGS",
    "vgg11",
    "vgg11_bn",
    "vgg13",
    "vgg13_bn",
    "vgg16",
    "vgg16_bn",
    "vgg19",
    "vgg19_bn",
]

# Conv widths per stage; every stage ends in a 2x2 max-pool (Table 1 of the paper).
VGG_CONFIGS: dict[str, tuple[tuple[int, ...], ...]] = {
    "vgg11": ((64,), (128,), (256, 256), (512, 512), (512, 512)),  # A
    "vgg13": ((64, 64), (128, 128), (256, 256), (512, 512), (512, 512)),  # B
    "vgg16": ((64, 64), (128, 128), (256, 256, 256), (512, 512, 512), (512, 512, 512)),  # D
    "vgg19": ((64, 64), (128, 128), (256,) * 4, (512,) * 4, (512,) * 4),  # E
}


class VGG(FCHeadConvNet):
    """Stacks of 3x3 conv (-> BN) -> ReLU separated by max-pools, then fc6 -> fc7 -> fc8."""

    def __init__(
        self,
        stage_widths: tuple[tuple[int, ...], ...],
        num_classes: int = 1000,
        in_chans: int = 3,
        batch_norm: bool = False,
        dropout: float = 0.5,
    ) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        ends: list[int] = []
        channels = in_chans
        for widths in stage_widths:
            for width in widths:
                layers.append(nn.Conv2d(channels, width, kernel_size=3, padding=1))
                if batch_norm:
                    layers.append(nn.BatchNorm2d(width))
                layers.append(nn.ReLU(inplace=True))
                channels = width
            layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
            ends.append(len(layers))
        self.features = nn.Sequential(*layers)
        self.stage_ends = tuple(ends)
        self.feature_channels = channels
        self.avgpool = nn.AdaptiveAvgPool2d((7, 7))
        self.classifier = nn.Sequential(
            nn.Linear(channels * 7 * 7, 4096),
            nn.ReLU(inplace=True),
            nn.Dropout(p=dropout),
            nn.Linear(4096, 4096),
            nn.ReLU(inplace=True),
            nn.Dropout(p=dropout),
            nn.Linear(4096, num_classes),
        )
        self.num_features = 4096
        # torchvision's initialisation (He for convs, N(0, 0.01) for the FC layers).
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, 0, 0.01)
                nn.init.zeros_(m.bias)


# torchvision IMAGENET1K_V1 top-1 (single 224 centre crop).
_TOP1 = {
    "vgg11": 69.020,
    "vgg13": 69.928,
    "vgg16": 71.592,
    "vgg19": 72.376,
    "vgg11_bn": 70.370,
    "vgg13_bn": 71.586,
    "vgg16_bn": 73.360,
    "vgg19_bn": 74.218,
}


def _cfg(name: str) -> ModelCfg:
    weights_enum = name.upper() + "_Weights"
    return ModelCfg(
        min_size=32,
        torchvision=name,
        imagenet_top1=_TOP1[name],
        extra={"imagenet_top1_source": f"torchvision {weights_enum}.IMAGENET1K_V1"},
    )


VGG_CFGS: dict[str, ModelCfg] = {name: _cfg(name) for name in _TOP1}


def _vgg(name: str, num_classes: int, in_chans: int, **kwargs) -> VGG:
    arch = name.removesuffix("_bn")
    model = VGG(VGG_CONFIGS[arch], num_classes, in_chans, batch_norm=name.endswith("_bn"), **kwargs)
    model.default_cfg = VGG_CFGS[name]
    return model


@register_model("vgg11", VGG_CFGS["vgg11"])
def vgg11(num_classes: int = 1000, in_chans: int = 3, **kwargs) -> VGG:
    """VGG-11 (configuration A); kwargs: ``dropout``."""
    return _vgg("vgg11", num_classes, in_chans, **kwargs)


@register_model("vgg11_bn", VGG_CFGS["vgg11_bn"])
def vgg11_bn(num_classes: int = 1000, in_chans: int = 3, **kwargs) -> VGG:
    """VGG-11 (configuration A) with batch norm; kwargs: ``dropout``."""
    return _vgg("vgg11_bn", num_classes, in_chans, **kwargs)


@register_model("vgg13", VGG_CFGS["vgg13"])
def vgg13(num_classes: int = 1000, in_chans: int = 3, **kwargs) -> VGG:
    """VGG-13 (configuration B); kwargs: ``dropout``."""
    return _vgg("vgg13", num_classes, in_chans, **kwargs)


@register_model("vgg13_bn", VGG_CFGS["vgg13_bn"])
def vgg13_bn(num_classes: int = 1000, in_chans: int = 3, **kwargs) -> VGG:
    """VGG-13 (configuration B) with batch norm; kwargs: ``dropout``."""
    return _vgg("vgg13_bn", num_classes, in_chans, **kwargs)


@register_model("vgg16", VGG_CFGS["vgg16"])
def vgg16(num_classes: int = 1000, in_chans: int = 3, **kwargs) -> VGG:
    """VGG-16 (configuration D); kwargs: ``dropout``."""
    return _vgg("vgg16", num_classes, in_chans, **kwargs)


@register_model("vgg16_bn", VGG_CFGS["vgg16_bn"])
def vgg16_bn(num_classes: int = 1000, in_chans: int = 3, **kwargs) -> VGG:
    """VGG-16 (configuration D) with batch norm; kwargs: ``dropout``."""
    return _vgg("vgg16_bn", num_classes, in_chans, **kwargs)


@register_model("vgg19", VGG_CFGS["vgg19"])
def vgg19(num_classes: int = 1000, in_chans: int = 3, **kwargs) -> VGG:
    """VGG-19 (configuration E); kwargs: ``dropout``."""
    return _vgg("vgg19", num_classes, in_chans, **kwargs)


@register_model("vgg19_bn", VGG_CFGS["vgg19_bn"])
def vgg19_bn(num_classes: int = 1000, in_chans: int = 3, **kwargs) -> VGG:
    """VGG-19 (configuration E) with batch norm; kwargs: ``dropout``."""
    return _vgg("vgg19_bn", num_classes, in_chans, **kwargs)
