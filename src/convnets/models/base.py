"""The contract every model in the zoo follows.

The training, transfer-learning, cost and export layers only talk to models through this
interface, so a new family needs nothing but a subclass and a registry entry.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import NamedTuple

import torch
from torch import nn

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# "inception" style: pixels scaled to [-1, 1] (Keras/TF preprocess_input convention).
INCEPTION_MEAN = (0.5, 0.5, 0.5)
INCEPTION_STD = (0.5, 0.5, 0.5)


@dataclass
class ModelCfg:
    """What a model needs to be fed: default input size and normalisation."""

    input_size: tuple[int, int, int] = (3, 224, 224)  # C, H, W at the published resolution
    mean: tuple[float, ...] = IMAGENET_MEAN
    std: tuple[float, ...] = IMAGENET_STD
    min_size: int = 32  # smallest H/W the downsampling allows
    torchvision: str | None = None  # name of the same architecture in torchvision.models, if any
    imagenet_top1: float | None = None  # published ImageNet top-1 (for `convnets pick`)
    extra: dict = field(default_factory=dict)


class AuxOutputs(NamedTuple):
    """Training-mode output of networks with auxiliary side classifiers (GoogLeNet)."""

    logits: torch.Tensor
    aux: list[torch.Tensor]
    aux_weight: float = 0.3


class ConvNet(nn.Module):
    """Base class: features -> head, with the hooks transfer learning needs.

    Subclasses set ``num_features`` (channels entering the classifier) and implement
    ``forward_features``, ``forward_head``, ``get_classifier``, ``reset_classifier`` and ``stages``.
    """

    default_cfg: ModelCfg = ModelCfg()
    num_features: int = 0

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Input images -> last feature map (N, C, h, w), before global pooling."""
        raise NotImplementedError

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """Feature map -> logits; with ``pre_logits`` the pooled vector fed to the last Linear."""
        raise NotImplementedError

    def forward(self, x: torch.Tensor):  # noqa: D401 - torch signature
        return self.forward_head(self.forward_features(x))

    def get_classifier(self) -> nn.Linear:
        """The final Linear layer."""
        raise NotImplementedError

    def reset_classifier(self, num_classes: int, dropout: float = 0.2) -> None:
        """Replace the head with global-average-pool -> dropout -> new Linear (transfer learning)."""
        raise NotImplementedError

    def stages(self) -> list[nn.Module]:
        """The base as ordered groups, input side first (what ``--fine-tune-last N`` counts)."""
        raise NotImplementedError

    def feature_map_module(self) -> nn.Module | None:
        """The module whose output is the last spatial feature map (N, C, h, w), for a model whose
        ``forward_features`` does not return that map (a wrapped torchvision network pools inside its
        own forward, so its ``forward_features`` is the pooled vector as a 1x1 map); ``None`` when
        ``forward_features`` is that map, as for every family written here. Grad-CAM reads it."""
        return None
