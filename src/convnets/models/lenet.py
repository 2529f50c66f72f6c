"""LeNet-5 (LeCun, Bottou, Bengio & Haffner 1998, "Gradient-based learning applied to document
recognition"), and the fully-connected-head base class AlexNet and VGG share.

Layout (32x32 input): C1 5x5 conv -> 6@28x28, S2 2x2 pool -> 6@14x14, C3 5x5 conv -> 16@10x10,
S4 2x2 pool -> 16@5x5, C5 5x5 conv -> 120@1x1, F6 Linear 120 -> 84, output Linear 84 -> classes.
61,706 parameters for 10 classes.

Simplifications of the 1998 paper, as in every modern re-implementation: C3 is fully connected to
S2 (the paper's partial connection table gives 1,516 weights instead of 2,416), S2/S4 are plain
average (or max) pools without the paper's trainable coefficient and bias, the output layer is a
Linear + softmax instead of Euclidean RBF units, and tanh is the plain ``nn.Tanh`` (not 1.7159 tanh(2x/3)).
C5 is a 5x5 convolution (as in the paper, not ``Linear(400, 120)``: same 48,120 parameters); an
adaptive average pool to 5x5 in front of it lets any input from 16x16 up be used (identity at 32x32).
"""

from __future__ import annotations

from collections import OrderedDict

import torch
from torch import nn

from .base import ConvNet, ModelCfg
from .registry import register_model

__all__ = ["FCHeadConvNet", "LeNet5", "lenet5"]


class FCHeadConvNet(ConvNet):
    """A ConvNet whose head is ``avgpool -> flatten -> classifier`` with ``classifier`` an
    ``nn.Sequential`` ending in the output Linear (LeNet-5, AlexNet, VGG).

    Subclasses set ``features``, ``avgpool``, ``classifier``, ``feature_channels`` (channels of the
    last feature map) and ``stage_ends`` (indices in ``features`` where each stage ends, exclusive).
    """

    features: nn.Sequential
    avgpool: nn.Module
    classifier: nn.Sequential
    feature_channels: int
    stage_ends: tuple[int, ...]

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = torch.flatten(self.avgpool(x), 1)
        return self.classifier[:-1](x) if pre_logits else self.classifier(x)

    def get_classifier(self) -> nn.Linear:
        return self.classifier[-1]

    def reset_classifier(self, num_classes: int, dropout: float = 0.2) -> None:
        # The hidden fully-connected layers go too: the transfer head sits on the conv features
        # (Keras' include_top=False + GlobalAveragePooling2D + Dense).
        old = self.get_classifier().weight  # the new layer goes where the old one was
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Sequential(
            nn.Dropout(dropout),
            nn.Linear(self.feature_channels, num_classes, device=old.device, dtype=old.dtype),
        ).train(self.training)  # fresh modules start in training mode; follow the model's
        self.num_features = self.feature_channels

    def stages(self) -> list[nn.Module]:
        starts = (0, *self.stage_ends[:-1])
        groups: list[nn.Module] = [self.features[a:b] for a, b in zip(starts, self.stage_ends)]
        hidden = self.classifier[:-1]
        if any(p.numel() for p in hidden.parameters()):  # the original hidden FC layers, until reset
            groups.append(hidden)
        return groups


_ACTIVATIONS: dict[str, type[nn.Module]] = {"tanh": nn.Tanh, "relu": nn.ReLU}
_POOLS: dict[str, type[nn.Module]] = {"avg": nn.AvgPool2d, "max": nn.MaxPool2d}


class LeNet5(FCHeadConvNet):
    """LeNet-5; ``activation`` is ``"tanh"`` (1998) or ``"relu"``, ``pool`` is ``"avg"`` or ``"max"``."""

    def __init__(
        self,
        num_classes: int = 10,
        in_chans: int = 1,
        activation: str = "tanh",
        pool: str = "avg",
    ) -> None:
        super().__init__()
        if activation not in _ACTIVATIONS:
            raise ValueError(f"lenet5: activation must be one of {sorted(_ACTIVATIONS)}, got {activation!r}")
        if pool not in _POOLS:
            raise ValueError(f"lenet5: pool must be one of {sorted(_POOLS)}, got {pool!r}")
        act, pool_layer = _ACTIVATIONS[activation], _POOLS[pool]
        self.features = nn.Sequential(
            OrderedDict(
                c1=nn.Conv2d(in_chans, 6, kernel_size=5),
                act1=act(),
                s2=pool_layer(kernel_size=2, stride=2),
                c3=nn.Conv2d(6, 16, kernel_size=5),
                act3=act(),
                s4=pool_layer(kernel_size=2, stride=2),
                fit5=nn.AdaptiveAvgPool2d(5),  # identity at 32x32; other sizes give C5 its 5x5 input
                c5=nn.Conv2d(16, 120, kernel_size=5),
                act5=act(),
            )
        )
        self.stage_ends = (3, 6, 9)  # C1+S2 | C3+S4 | C5
        self.feature_channels = 120
        self.avgpool = nn.Identity()  # C5 already leaves a 1x1 map
        self.classifier = nn.Sequential(
            OrderedDict(f6=nn.Linear(120, 84), act6=act(), output=nn.Linear(84, num_classes))
        )
        self.num_features = 84


LENET5_CFG = ModelCfg(input_size=(1, 32, 32), mean=(0.5,), std=(0.5,), min_size=16)


@register_model("lenet5", LENET5_CFG)
def lenet5(num_classes: int = 10, in_chans: int = 1, **kwargs) -> LeNet5:
    """LeNet-5 (1998); kwargs: ``activation="tanh"|"relu"``, ``pool="avg"|"max"``."""
    model = LeNet5(num_classes=num_classes, in_chans=in_chans, **kwargs)
    model.default_cfg = LENET5_CFG
    return model
