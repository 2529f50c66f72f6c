"""GoogLeNet / Inception v1 (Szegedy et al. 2014, "Going deeper with convolutions"), with its two
auxiliary side classifiers, in torchvision's module layout.

Stem (7x7/2 conv, 3x3/2 pool, 1x1 conv, 3x3 conv, 3x3/2 pool), nine Inception modules (3a-3b, 4a-4e,
5a-5b) with 3x3/2 (2x2/2 before 5a) max-pools between groups, global average pool, dropout 0.2,
one Linear. Auxiliary classifiers hang off 4a and 4d during training; their losses are added with
weight 0.3 and they are ignored at inference.

Two layouts:

- default: the paper's 5x5 convolutions in each module's third branch;
- ``tv_layout=True``: torchvision's, whose "5x5" branch is a 3x3 (pytorch/vision#906). Use it to load
  torchvision's checkpoints (13,004,888 parameters with the side classifiers); it also switches on
  ``transform_input`` (unless given), like ``torchvision.models.googlenet(weights=...)``, because
  those weights expect [-1, 1]-scaled pixels while the model is fed ImageNet-normalised ones.

Every pooling uses ``ceil_mode`` (as Caffe and torchvision do), so any input from 15x15 up works.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from ..blocks import BasicConv2d, InceptionModule
from .base import IMAGENET_MEAN, IMAGENET_STD, AuxOutputs, ConvNet, ModelCfg
from .registry import register_model

__all__ = ["GoogLeNet", "InceptionAux", "googlenet", "INCEPTION_V1_MODULES"]

# in_channels, #1x1, #3x3 reduce, #3x3, #5x5 reduce, #5x5, pool proj (Table 1 of the paper).
INCEPTION_V1_MODULES: dict[str, tuple[int, int, int, int, int, int, int]] = {
    "inception3a": (192, 64, 96, 128, 16, 32, 32),
    "inception3b": (256, 128, 128, 192, 32, 96, 64),
    "inception4a": (480, 192, 96, 208, 16, 48, 64),
    "inception4b": (512, 160, 112, 224, 24, 64, 64),
    "inception4c": (512, 128, 128, 256, 24, 64, 64),
    "inception4d": (512, 112, 144, 288, 32, 64, 64),
    "inception4e": (528, 256, 160, 320, 32, 128, 128),
    "inception5a": (832, 256, 160, 320, 32, 128, 128),
    "inception5b": (832, 384, 192, 384, 48, 128, 128),
}


class InceptionAux(nn.Module):
    """Auxiliary side classifier: average pool to 4x4 -> 1x1 conv (128) -> FC 1024 -> dropout -> FC.

    The paper pools 5x5/3 (14x14 -> 4x4); torchvision's adaptive 4x4 pool is the same at 224 and
    works at any size.
    """

    def __init__(self, in_channels: int, num_classes: int, dropout: float = 0.7) -> None:
        super().__init__()
        self.conv = BasicConv2d(in_channels, 128, kernel_size=1)
        self.fc1 = nn.Linear(128 * 4 * 4, 1024)
        self.fc2 = nn.Linear(1024, num_classes)
        self.dropout = nn.Dropout(p=dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.flatten(self.conv(F.adaptive_avg_pool2d(x, (4, 4))), 1)
        x = self.dropout(F.relu(self.fc1(x), inplace=True))
        return self.fc2(x)


class GoogLeNet(ConvNet):
    """Inception v1. In training mode with ``aux_logits`` the forward returns
    ``AuxOutputs(logits, [aux1, aux2], aux_weight)``; in eval mode plain logits."""

    def __init__(
        self,
        num_classes: int = 1000,
        in_chans: int = 3,
        aux_logits: bool = True,
        aux_weight: float = 0.3,
        tv_layout: bool = False,
        transform_input: bool | None = None,
        dropout: float = 0.2,
        dropout_aux: float = 0.7,
    ) -> None:
        super().__init__()
        if transform_input is None:
            transform_input = tv_layout
        if transform_input and in_chans != 3:
            raise ValueError(f"googlenet: transform_input needs 3 input channels, got in_chans={in_chans}")
        self.transform_input = transform_input
        self.aux_weight = aux_weight
        branch3_kernel_size = 3 if tv_layout else 5

        self.conv1 = BasicConv2d(in_chans, 64, kernel_size=7, stride=2, padding=3)
        self.maxpool1 = nn.MaxPool2d(3, stride=2, ceil_mode=True)
        self.conv2 = BasicConv2d(64, 64, kernel_size=1)
        self.conv3 = BasicConv2d(64, 192, kernel_size=3, padding=1)
        self.maxpool2 = nn.MaxPool2d(3, stride=2, ceil_mode=True)
        for name, widths in INCEPTION_V1_MODULES.items():
            self.add_module(name, InceptionModule(*widths, branch3_kernel_size=branch3_kernel_size))
            if name == "inception3b":
                self.maxpool3 = nn.MaxPool2d(3, stride=2, ceil_mode=True)
            elif name == "inception4e":
                self.maxpool4 = nn.MaxPool2d(2, stride=2, ceil_mode=True)

        self.aux1: InceptionAux | None = None
        self.aux2: InceptionAux | None = None
        if aux_logits:
            self.aux1 = InceptionAux(512, num_classes, dropout=dropout_aux)  # after 4a
            self.aux2 = InceptionAux(528, num_classes, dropout=dropout_aux)  # after 4d

        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.dropout = nn.Dropout(p=dropout)
        self.fc = nn.Linear(1024, num_classes)
        self.num_features = 1024

        # torchvision's initialisation.
        for m in self.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                nn.init.trunc_normal_(m.weight, mean=0.0, std=0.01, a=-2, b=2)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    @property
    def aux_logits(self) -> bool:
        return self.aux1 is not None

    def _transform_input(self, x: torch.Tensor) -> torch.Tensor:
        # ImageNet-normalised input -> (pixel - 0.5) / 0.5, what torchvision's ported weights expect.
        mean = x.new_tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
        std = x.new_tensor(IMAGENET_STD).view(1, 3, 1, 1)
        return (x * std + mean - 0.5) / 0.5

    def _features(self, x: torch.Tensor, with_aux: bool) -> tuple[torch.Tensor, list[torch.Tensor]]:
        if self.transform_input:
            x = self._transform_input(x)
        x = self.maxpool1(self.conv1(x))
        x = self.maxpool2(self.conv3(self.conv2(x)))
        x = self.maxpool3(self.inception3b(self.inception3a(x)))
        aux: list[torch.Tensor] = []
        x = self.inception4a(x)
        if with_aux:
            aux.append(self.aux1(x))
        x = self.inception4d(self.inception4c(self.inception4b(x)))
        if with_aux:
            aux.append(self.aux2(x))
        x = self.maxpool4(self.inception4e(x))
        return self.inception5b(self.inception5a(x)), aux

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self._features(x, with_aux=False)[0]

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = self.dropout(torch.flatten(self.avgpool(x), 1))
        return x if pre_logits else self.fc(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor | AuxOutputs:
        if self.training and self.aux_logits:
            features, aux = self._features(x, with_aux=True)
            return AuxOutputs(self.forward_head(features), aux, self.aux_weight)
        return self.forward_head(self.forward_features(x))

    def get_classifier(self) -> nn.Linear:
        return self.fc

    def reset_classifier(self, num_classes: int, dropout: float = 0.2, keep_aux: bool = False) -> None:
        """New ``num_classes`` head. The side classifiers are dropped (as torchvision does for
        pretrained inference) unless ``keep_aux``, which gives them new output layers too."""
        factory = {"device": self.fc.weight.device, "dtype": self.fc.weight.dtype}  # where the old head was
        self.dropout = nn.Dropout(dropout).train(self.training)  # fresh modules start in training mode
        self.fc = nn.Linear(self.num_features, num_classes, **factory)
        if keep_aux and self.aux1 is not None and self.aux2 is not None:
            self.aux1.fc2 = nn.Linear(self.aux1.fc2.in_features, num_classes, **factory)
            self.aux2.fc2 = nn.Linear(self.aux2.fc2.in_features, num_classes, **factory)
        else:
            self.aux1 = self.aux2 = None

    def stages(self) -> list[nn.Module]:
        stem = nn.Sequential(self.conv1, self.maxpool1, self.conv2, self.conv3, self.maxpool2)
        group3 = nn.Sequential(self.inception3a, self.inception3b, self.maxpool3)
        group4 = nn.Sequential(*(getattr(self, f"inception4{letter}") for letter in "abcde"), self.maxpool4)
        group5 = nn.Sequential(self.inception5a, self.inception5b)
        return [stem, group3, group4, group5]


GOOGLENET_CFG = ModelCfg(
    min_size=15,
    torchvision="googlenet",
    imagenet_top1=69.778,
    extra={
        "imagenet_top1_source": "torchvision GoogLeNet_Weights.IMAGENET1K_V1",
        "torchvision_kwargs": {"tv_layout": True},
    },
)


@register_model("googlenet", GOOGLENET_CFG)
def googlenet(num_classes: int = 1000, in_chans: int = 3, **kwargs) -> GoogLeNet:
    """GoogLeNet / Inception v1; kwargs: ``aux_logits=True``, ``aux_weight=0.3``, ``tv_layout=False``
    (True: torchvision's 3x3 "5x5" branch, to load its checkpoints), ``transform_input`` (default:
    ``tv_layout``), ``dropout=0.2``, ``dropout_aux=0.7``."""
    model = GoogLeNet(num_classes=num_classes, in_chans=in_chans, **kwargs)
    model.default_cfg = GOOGLENET_CFG
    return model
