"""CIFAR ResNets and their plain twins (He et al. 2016, "Deep Residual Learning", §4.2).

The network behind the paper's degradation experiment (Fig. 1, Fig. 6)::

    3x3 conv, 16 channels                         32x32
    stage 1: n basic blocks, 16 channels          32x32
    stage 2: n basic blocks, 32 channels          16x16   (first block strides 2)
    stage 3: n basic blocks, 64 channels           8x8    (first block strides 2)
    global average pool -> fully connected

Each basic block holds two 3x3 conv layers, so the depth (counting conv + fc layers) is
``6n + 2``: 20, 32, 44, 56, 110 for n = 3, 5, 7, 9, 18. The residual and plain versions have
exactly the same layers; the plain one simply has no shortcut connections, which is what lets
the experiment isolate the effect of the shortcut.

Where the shape changes (stride 2, channels doubling) the paper compares two shortcuts:

- option A (default, used for every CIFAR result): the identity, subsampled by 2 and padded with
  zero channels -- no parameters at all (:class:`ZeroPadShortcut`);
- option B: a 1x1 conv (stride 2) + BN projection, identity elsewhere (``shortcut="B"``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..blocks import BasicBlock, ConvBNAct, conv_shortcut
from .base import ConvNet, ModelCfg
from .registry import register_model

__all__ = ["CifarResNet", "ZeroPadShortcut", "cifar_resnet", "CIFAR10_MEAN", "CIFAR10_STD", "STANDARD_DEPTHS"]

CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2470, 0.2435, 0.2616)

STANDARD_DEPTHS = (20, 32, 44, 56, 110)

# He et al. 2016, Table 6: CIFAR-10 test error (%) of the residual nets (110: best of 5 runs).
_PAPER_CIFAR10_ERROR = {20: 8.75, 32: 7.51, 44: 7.17, 56: 6.97, 110: 6.43}
# Table 6 parameter counts (option A, 10 classes).
_PAPER_PARAMS = {20: "0.27M", 32: "0.46M", 44: "0.66M", 56: "0.85M", 110: "1.7M"}


class ZeroPadShortcut(nn.Module):
    """Option A shortcut: keep every ``stride``-th pixel, then pad the new channels with zeros.

    Parameter-free, so the residual network has exactly the parameters of its plain twin.
    """

    def __init__(self, in_channels: int, out_channels: int, stride: int = 2) -> None:
        super().__init__()
        if out_channels < in_channels:
            raise ValueError(f"option A can only add channels, got {in_channels} -> {out_channels}")
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.stride = stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.stride != 1:
            x = x[:, :, :: self.stride, :: self.stride]
        extra = self.out_channels - self.in_channels
        # F.pad pads the last dims first: (W_left, W_right, H_top, H_bottom, C_front, C_back).
        return F.pad(x, (0, 0, 0, 0, 0, extra)) if extra else x

    def extra_repr(self) -> str:
        return f"{self.in_channels}, {self.out_channels}, stride={self.stride}"


def _num_blocks(depth: int) -> int:
    if depth < 8 or (depth - 2) % 6:
        raise ValueError(f"CIFAR ResNet depth must be 6n+2 with n >= 1 (8, 14, 20, 32, ...), got {depth}")
    return (depth - 2) // 6


class CifarResNet(ConvNet):
    """The CIFAR-10 ResNet of depth ``6n + 2`` (``plain=True``: the same stack without shortcuts).

    Args:
        depth: number of weighted layers, ``6n + 2``.
        num_classes: outputs of the final Linear layer.
        in_chans: input channels (1 for grey-scale digits, 3 for colour).
        plain: drop every shortcut connection (the "plain" baseline of Fig. 6).
        shortcut: ``"A"`` zero-padding identity or ``"B"`` 1x1 projection where shapes change.
        widths: channels of the stem/stage 1, stage 2 and stage 3.
    """

    default_cfg = ModelCfg(input_size=(3, 32, 32), mean=CIFAR10_MEAN, std=CIFAR10_STD, min_size=8)

    def __init__(
        self,
        depth: int = 20,
        num_classes: int = 10,
        in_chans: int = 3,
        plain: bool = False,
        shortcut: str = "A",
        widths: tuple[int, int, int] = (16, 32, 64),
    ) -> None:
        super().__init__()
        shortcut = shortcut.upper()
        if shortcut not in ("A", "B"):
            raise ValueError(f"shortcut must be 'A' (zero-padding) or 'B' (projection), got {shortcut!r}")
        n = _num_blocks(depth)
        self.depth = depth
        self.plain = plain
        self.shortcut = None if plain else shortcut

        self.stem = ConvBNAct(in_chans, widths[0], kernel_size=3)
        channels = widths[0]
        layers = []
        for stage, width in enumerate(widths):
            blocks = []
            for i in range(n):
                stride = 2 if stage > 0 and i == 0 else 1
                blocks.append(self._block(channels, width, stride))
                channels = width
            layers.append(nn.Sequential(*blocks))
        self.layer1, self.layer2, self.layer3 = layers
        self.num_features = channels
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.dropout = nn.Identity()
        self.fc = nn.Linear(channels, num_classes)
        self._init_weights()

    def _block(self, in_channels: int, out_channels: int, stride: int) -> BasicBlock:
        if self.plain:
            return BasicBlock(in_channels, out_channels, stride, residual=False)
        downsample = None
        if stride != 1 or in_channels != out_channels:
            if self.shortcut == "A":
                downsample = ZeroPadShortcut(in_channels, out_channels, stride)
            else:
                downsample = conv_shortcut(in_channels, out_channels, stride)
        return BasicBlock(in_channels, out_channels, stride, downsample=downsample)

    def _init_weights(self) -> None:
        # He et al. 2015 ("Delving deep into rectifiers") initialisation, which the ResNet paper uses:
        # N(0, 2/n) with n = k*k*in_channels, so ReLU layers keep the forward signal's variance.
        for m in self.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                nn.init.kaiming_normal_(m.weight, mode="fan_in", nonlinearity="relu")
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        x = self.layer1(x)
        x = self.layer2(x)
        return self.layer3(x)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = torch.flatten(self.avgpool(x), 1)
        x = self.dropout(x)
        return x if pre_logits else self.fc(x)

    def get_classifier(self) -> nn.Linear:
        return self.fc

    def reset_classifier(self, num_classes: int, dropout: float = 0.2) -> None:
        # The head already is global-average-pool -> Linear; only the dropout is new.
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.fc = nn.Linear(self.num_features, num_classes)

    def stages(self) -> list[nn.Module]:
        return [self.stem, self.layer1, self.layer2, self.layer3]


def cifar_resnet(
    depth: int,
    *,
    plain: bool = False,
    shortcut: str = "A",
    num_classes: int = 10,
    in_chans: int = 3,
    **kwargs,
) -> CifarResNet:
    """A CIFAR ResNet (or, with ``plain=True``, its plain twin) of any depth ``6n + 2``."""
    model = CifarResNet(depth, num_classes, in_chans, plain=plain, shortcut=shortcut, **kwargs)
    model.model_name = f"{'plain' if plain else 'resnet'}{depth}"
    return model


def _register(depth: int, plain: bool) -> None:
    name = f"{'plain' if plain else 'resnet'}{depth}"
    extra = {"depth": depth, "family": "cifar_resnet", "paper_params": _PAPER_PARAMS[depth]}
    if not plain:
        extra["paper_cifar10_error"] = _PAPER_CIFAR10_ERROR[depth]
    cfg = ModelCfg(input_size=(3, 32, 32), mean=CIFAR10_MEAN, std=CIFAR10_STD, min_size=8, extra=extra)

    def build(num_classes: int = 10, in_chans: int = 3, **kwargs) -> CifarResNet:
        if plain and "shortcut" in kwargs:
            wanted = kwargs["shortcut"]
            raise ValueError(f"{name} has no shortcuts; use resnet{depth} for shortcut={wanted!r}")
        return cifar_resnet(depth, plain=plain, num_classes=num_classes, in_chans=in_chans, **kwargs)

    build.__name__ = name
    build.__doc__ = (
        f"{'Plain' if plain else 'Residual'} CIFAR network of depth {depth} (He et al. 2016 §4.2)"
        + ("." if plain else "; ``shortcut='A'`` (zero-padding, default) or ``'B'`` (projection).")
    )
    register_model(name, cfg)(build)


for _depth in STANDARD_DEPTHS:
    _register(_depth, plain=False)
    _register(_depth, plain=True)


# Any depth 6n+2 by name (what `convnets train --model cifar_plain --model-kwargs '{"depth": 8}'` and the
# depth experiment use for the depths the paper does not list; config.json then records the depth).
_GENERIC_CFG = dict(input_size=(3, 32, 32), mean=CIFAR10_MEAN, std=CIFAR10_STD, min_size=8)


@register_model("cifar_resnet", ModelCfg(**_GENERIC_CFG, extra={"family": "cifar_resnet", "depth": "6n+2"}))
def _cifar_resnet_any(num_classes: int = 10, in_chans: int = 3, depth: int = 20, **kwargs) -> CifarResNet:
    """Residual CIFAR network of any depth 6n+2 (``depth`` keyword, default 20)."""
    return cifar_resnet(depth, plain=False, num_classes=num_classes, in_chans=in_chans, **kwargs)


@register_model("cifar_plain", ModelCfg(**_GENERIC_CFG, extra={"family": "cifar_resnet", "depth": "6n+2"}))
def _cifar_plain_any(num_classes: int = 10, in_chans: int = 3, depth: int = 20, **kwargs) -> CifarResNet:
    """Plain (no shortcuts) CIFAR network of any depth 6n+2 (``depth`` keyword, default 20)."""
    return cifar_resnet(depth, plain=True, num_classes=num_classes, in_chans=in_chans, **kwargs)
