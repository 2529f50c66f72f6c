"""AlexNet (Krizhevsky, Sutskever & Hinton 2012) in torchvision's layout.

torchvision follows Krizhevsky's "one weird trick" single-GPU variant (2014): conv widths
64-192-384-256-256, no local response normalisation, no grouped convolutions; 61,100,840 parameters.
The 2012 paper's ingredients can be switched back on:

- ``lrn=True``: LocalResponseNorm(size=5, alpha=1e-4, beta=0.75, k=2) after the ReLUs of conv1 and conv2
  (before their max-pools), as in Section 3.3 of the paper;
- ``groups=2``: conv2, conv4 and conv5 see only the half of the previous layer "on the same GPU";
- ``widths=(96, 256, 384, 384, 256)``: the paper's filter counts.

The adaptive 6x6 average pool before the classifier makes any input from 63x63 up usable.
"""

from __future__ import annotations

from torch import nn

from .base import ModelCfg
from .lenet import FCHeadConvNet
from .registry import register_model

__all__ = ["AlexNet", "alexnet"]

TORCHVISION_WIDTHS = (64, 192, 384, 256, 256)


class AlexNet(FCHeadConvNet):
    """Five conv layers (11x11/4, 5x5, 3x3, 3x3, 3x3) with three overlapping 3x3/2 max-pools,
    then dropout -> fc6 (4096) -> dropout -> fc7 (4096) -> fc8 (classes)."""

    def __init__(
        self,
        num_classes: int = 1000,
        in_chans: int = 3,
        dropout: float = 0.5,
        lrn: bool = False,
        groups: int = 1,
        widths: tuple[int, int, int, int, int] = TORCHVISION_WIDTHS,
    ) -> None:
        super().__init__()
        if len(widths) != 5:
            raise ValueError(f"alexnet: widths needs 5 conv widths, got {widths!r}")
        c1, c2, c3, c4, c5 = widths
        for w in (c1, c2, c3, c4, c5):
            if w % groups:
                raise ValueError(f"alexnet: every width in {widths} must be divisible by groups={groups}")

        def lrn_layer() -> list[nn.Module]:
            return [nn.LocalResponseNorm(size=5, alpha=1e-4, beta=0.75, k=2.0)] if lrn else []

        def max_pool() -> nn.MaxPool2d:
            return nn.MaxPool2d(kernel_size=3, stride=2)  # overlapping pooling (Section 3.4)

        # Stages: conv1 | conv2 | conv3 | conv4 | conv5 (each with its ReLU, LRN and pool).
        stage_layers: list[list[nn.Module]] = [
            [nn.Conv2d(in_chans, c1, kernel_size=11, stride=4, padding=2), nn.ReLU(inplace=True)]
            + lrn_layer()
            + [max_pool()],
            [nn.Conv2d(c1, c2, kernel_size=5, padding=2, groups=groups), nn.ReLU(inplace=True)]
            + lrn_layer()
            + [max_pool()],
            [nn.Conv2d(c2, c3, kernel_size=3, padding=1), nn.ReLU(inplace=True)],
            [nn.Conv2d(c3, c4, kernel_size=3, padding=1, groups=groups), nn.ReLU(inplace=True)],
            [nn.Conv2d(c4, c5, kernel_size=3, padding=1, groups=groups), nn.ReLU(inplace=True), max_pool()],
        ]
        layers: list[nn.Module] = []
        ends: list[int] = []
        for stage in stage_layers:
            layers += stage
            ends.append(len(layers))
        self.features = nn.Sequential(*layers)
        self.stage_ends = tuple(ends)
        self.feature_channels = c5
        self.avgpool = nn.AdaptiveAvgPool2d((6, 6))
        self.classifier = nn.Sequential(
            nn.Dropout(p=dropout),
            nn.Linear(c5 * 6 * 6, 4096),
            nn.ReLU(inplace=True),
            nn.Dropout(p=dropout),
            nn.Linear(4096, 4096),
            nn.ReLU(inplace=True),
            nn.Linear(4096, num_classes),
        )
        self.num_features = 4096


ALEXNET_CFG = ModelCfg(
    min_size=63,
    torchvision="alexnet",
    imagenet_top1=56.522,
    extra={"imagenet_top1_source": "torchvision AlexNet_Weights.IMAGENET1K_V1"},
)


@register_model("alexnet", ALEXNET_CFG)
def alexnet(num_classes: int = 1000, in_chans: int = 3, **kwargs) -> AlexNet:
    """AlexNet, torchvision layout; kwargs: ``dropout``, ``lrn``, ``groups``, ``widths``."""
    model = AlexNet(num_classes=num_classes, in_chans=in_chans, **kwargs)
    model.default_cfg = ALEXNET_CFG
    return model
