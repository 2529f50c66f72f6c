"""The building blocks of the case-study networks, each named for what it is.

Blocks are ``nn.Sequential`` subclasses or small modules whose sub-module names follow
torchvision's, so torchvision state dicts load into them without renaming keys.
"""

from __future__ import annotations

from torch import nn


def same_padding(kernel_size: int, dilation: int = 1) -> int:
    """Padding that keeps H and W for stride 1 ("same" in the lectures)."""
    return (kernel_size - 1) // 2 * dilation


class ConvBNAct(nn.Sequential):
    """Convolution -> BatchNorm -> activation; keys ``0`` (conv), ``1`` (bn) as torchvision's
    ``Conv2dNormActivation``. ``act_layer=None`` gives a linear (no activation) projection."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int = 3,
        stride: int = 1,
        groups: int = 1,
        act_layer: type[nn.Module] | None = nn.ReLU,
        norm_layer: type[nn.Module] | None = nn.BatchNorm2d,
        padding: int | None = None,
        bias: bool | None = None,
    ) -> None:
        if padding is None:
            padding = same_padding(kernel_size)
        if bias is None:
            bias = norm_layer is None
        layers: list[nn.Module] = [
            nn.Conv2d(in_channels, out_channels, kernel_size, stride, padding, groups=groups, bias=bias)
        ]
        if norm_layer is not None:
            layers.append(norm_layer(out_channels))
        if act_layer is not None:
            layers.append(act_layer(inplace=True) if act_layer in (nn.ReLU, nn.ReLU6, nn.SiLU) else act_layer())
        super().__init__(*layers)
        self.out_channels = out_channels


# --- Residual blocks (ResNet): BasicBlock, IdentityBlock, ConvBlock --------------------------

# --- Inception module (GoogLeNet) -------------------------------------------------------------

# --- Depthwise-separable (MobileNet v1), InvertedResidual (v2), SqueezeExcitation, MBConv ------
