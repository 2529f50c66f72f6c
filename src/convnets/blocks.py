"""The building blocks of the case-study networks, each named for what it is.

Blocks are ``nn.Sequential`` subclasses or small modules whose sub-module names follow
torchvision's, so torchvision state dicts load into them without renaming keys.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial

import torch
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
            inplace = act_layer in (nn.ReLU, nn.ReLU6, nn.SiLU)
            layers.append(act_layer(inplace=True) if inplace else act_layer())
        super().__init__(*layers)
        self.out_channels = out_channels


# --- Residual blocks (ResNet): BasicBlock, IdentityBlock, ConvBlock --------------------------
# Attribute names (conv1/bn1/.../downsample) are torchvision's BasicBlock/Bottleneck ones, so a
# torchvision ResNet state dict loads into models/resnet.py with strict=True and no renaming.


def conv_shortcut(in_channels: int, out_channels: int, stride: int = 1) -> nn.Sequential:
    """The projection shortcut: 1x1 strided conv -> BN, no activation (torchvision's ``downsample``)."""
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, kernel_size=1, stride=stride, bias=False),
        nn.BatchNorm2d(out_channels),
    )


class BasicBlock(nn.Module):
    """Two 3x3 conv-BN layers plus a shortcut, ReLU after the addition (ResNet-18/34).

    The shortcut is the input itself when shapes match. When ``stride != 1`` or the channel count
    changes and no ``downsample`` is given, a 1x1 projection (:func:`conv_shortcut`) is built, making
    this the basic-block analogue of :class:`ConvBlock`. Pass any module as ``downsample`` for other
    shortcuts (e.g. the parameter-free "option A" of the CIFAR ResNets). ``residual=False`` drops the
    shortcut altogether: the "plain" twin used to show why deep plain nets train worse.
    """

    expansion: int = 1

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        stride: int = 1,
        downsample: nn.Module | None = None,
        residual: bool = True,
    ) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, 1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        if residual and downsample is None and (stride != 1 or in_channels != out_channels):
            downsample = conv_shortcut(in_channels, out_channels, stride)
        self.downsample = downsample
        self.residual = residual
        self.stride = stride
        self.out_channels = out_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        if self.residual:
            out += x if self.downsample is None else self.downsample(x)
        return self.relu(out)


class _Bottleneck(nn.Module):
    """1x1 (reduce) -> 3x3 -> 1x1 (expand) residual branch, each conv followed by BN; ReLU after the
    first two and after the shortcut addition (none on the branch's last BN, none on the shortcut)."""

    expansion: int = 4  # out_channels / mid_channels in the ResNet-50/101/152 stages

    def __init__(
        self,
        in_channels: int,
        mid_channels: int,
        out_channels: int,
        stride: int,
        downsample: nn.Module | None,
        stride_in_1x1: bool,
    ) -> None:
        super().__init__()
        stride_1x1, stride_3x3 = (stride, 1) if stride_in_1x1 else (1, stride)
        self.conv1 = nn.Conv2d(in_channels, mid_channels, 1, stride_1x1, bias=False)
        self.bn1 = nn.BatchNorm2d(mid_channels)
        self.conv2 = nn.Conv2d(mid_channels, mid_channels, 3, stride_3x3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(mid_channels)
        self.conv3 = nn.Conv2d(mid_channels, out_channels, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(out_channels)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample
        self.stride = stride
        self.out_channels = out_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        out += shortcut
        return self.relu(out)


class IdentityBlock(_Bottleneck):
    """Bottleneck block whose shortcut is the input itself: input and output shapes are equal.

    ``in_channels`` -> 1x1 to ``mid_channels`` -> 3x3 -> 1x1 back to ``in_channels``; stride 1.
    """

    def __init__(self, in_channels: int, mid_channels: int) -> None:
        super().__init__(in_channels, mid_channels, in_channels, 1, None, stride_in_1x1=False)


class ConvBlock(_Bottleneck):
    """Bottleneck block whose shortcut is a 1x1 strided conv + BN (no activation), used where the
    shape changes (first block of each ResNet-50/101/152 stage).

    ``stride_in_1x1=False`` (default) strides the 3x3 conv as torchvision's "ResNet v1.5" does;
    ``True`` strides the first 1x1 as in He et al. 2015 (a 1x1 stride-2 conv skips 3/4 of the input).
    """

    def __init__(
        self,
        in_channels: int,
        mid_channels: int,
        out_channels: int,
        stride: int = 2,
        stride_in_1x1: bool = False,
    ) -> None:
        super().__init__(
            in_channels,
            mid_channels,
            out_channels,
            stride,
            conv_shortcut(in_channels, out_channels, stride),
            stride_in_1x1=stride_in_1x1,
        )


# --- Inception module (GoogLeNet) -------------------------------------------------------------


class BasicConv2d(nn.Module):
    """Conv (no bias) -> BN(eps=1e-3) -> ReLU with torchvision's GoogLeNet keys ``conv`` / ``bn``."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int,
        stride: int = 1,
        padding: int | None = None,
    ) -> None:
        super().__init__()
        if padding is None:
            padding = same_padding(kernel_size)
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size, stride, padding, bias=False)
        self.bn = nn.BatchNorm2d(out_channels, eps=0.001)
        self.out_channels = out_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu_(self.bn(self.conv(x)))


class InceptionModule(nn.Module):
    """Four parallel branches concatenated on channels (Szegedy et al. 2014, Fig. 2b):

    - ``branch1``: 1x1 conv to ``ch1x1``
    - ``branch2``: 1x1 to ``ch3x3red`` -> 3x3 to ``ch3x3``
    - ``branch3``: 1x1 to ``ch5x5red`` -> 5x5 to ``ch5x5``
    - ``branch4``: 3x3 max-pool (stride 1) -> 1x1 to ``pool_proj``

    The 1x1 "reduce" convs are the bottlenecks that make the 3x3/5x5 branches affordable.
    ``branch3_kernel_size=3`` reproduces torchvision's GoogLeNet, whose "5x5" branch is a 3x3
    (pytorch/vision#906, kept there for checkpoint compatibility).
    """

    def __init__(
        self,
        in_channels: int,
        ch1x1: int,
        ch3x3red: int,
        ch3x3: int,
        ch5x5red: int,
        ch5x5: int,
        pool_proj: int,
        branch3_kernel_size: int = 5,
    ) -> None:
        super().__init__()
        self.branch1 = BasicConv2d(in_channels, ch1x1, kernel_size=1)
        self.branch2 = nn.Sequential(
            BasicConv2d(in_channels, ch3x3red, kernel_size=1),
            BasicConv2d(ch3x3red, ch3x3, kernel_size=3),
        )
        self.branch3 = nn.Sequential(
            BasicConv2d(in_channels, ch5x5red, kernel_size=1),
            BasicConv2d(ch5x5red, ch5x5, kernel_size=branch3_kernel_size),
        )
        self.branch4 = nn.Sequential(
            nn.MaxPool2d(kernel_size=3, stride=1, padding=1, ceil_mode=True),
            BasicConv2d(in_channels, pool_proj, kernel_size=1),
        )
        self.out_channels = ch1x1 + ch3x3 + ch5x5 + pool_proj

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.branch1(x), self.branch2(x), self.branch3(x), self.branch4(x)], dim=1)


# --- Depthwise-separable (MobileNet v1), InvertedResidual (v2), SqueezeExcitation, MBConv ------


def make_divisible(value: float, divisor: int = 8, min_value: int | None = None) -> int:
    """Round a channel count to the nearest multiple of ``divisor`` (never below ``min_value``).

    The TensorFlow MobileNet/EfficientNet rule, identical to torchvision's ``_make_divisible`` (a
    private helper there, hence this copy): rounding never drops more than 10% of the channels.
    """
    min_value = divisor if min_value is None else min_value
    rounded = max(min_value, int(value + divisor / 2) // divisor * divisor)
    if rounded < 0.9 * value:
        rounded += divisor
    return rounded


class DepthwiseSeparableConv(nn.Sequential):
    """MobileNet v1's unit: a depthwise 3x3 conv (one filter per channel, ``groups=in_channels``)
    that filters, then a pointwise 1x1 conv that combines channels, each followed by BN and ReLU.

    It costs ``k*k*C_in + C_in*C_out`` weights instead of a full conv's ``k*k*C_in*C_out``.
    Keys: ``depthwise.0/1`` and ``pointwise.0/1`` (conv, bn).
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        stride: int = 1,
        kernel_size: int = 3,
        act_layer: type[nn.Module] = nn.ReLU,
        norm_layer: Callable[..., nn.Module] = nn.BatchNorm2d,
    ) -> None:
        super().__init__()
        self.depthwise = ConvBNAct(
            in_channels, in_channels, kernel_size, stride, groups=in_channels,
            act_layer=act_layer, norm_layer=norm_layer,
        )  # fmt: skip
        self.pointwise = ConvBNAct(in_channels, out_channels, 1, act_layer=act_layer, norm_layer=norm_layer)
        self.out_channels = out_channels


class InvertedResidual(nn.Module):
    """MobileNet v2's inverted residual with a linear bottleneck.

    1x1 expansion to ``in_channels * expand_ratio`` (skipped when the ratio is 1) -> depthwise 3x3
    -> 1x1 *linear* projection: BN but no activation, because ReLU on the narrow bottleneck would
    destroy information. The input is added back only when ``stride == 1`` and ``in == out``.
    Keys follow torchvision's ``InvertedResidual``: ``conv.0`` ... with the projection as a bare
    ``Conv2d`` and ``BatchNorm2d`` (the last two indices).
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        stride: int = 1,
        expand_ratio: float = 6,
        act_layer: type[nn.Module] = nn.ReLU6,
        norm_layer: Callable[..., nn.Module] = nn.BatchNorm2d,
    ) -> None:
        super().__init__()
        if stride not in (1, 2):
            raise ValueError(f"InvertedResidual stride must be 1 or 2, got {stride}")
        hidden = int(round(in_channels * expand_ratio))
        self.use_res_connect = stride == 1 and in_channels == out_channels
        layers: list[nn.Module] = []
        if expand_ratio != 1:
            layers.append(ConvBNAct(in_channels, hidden, 1, act_layer=act_layer, norm_layer=norm_layer))
        layers += [
            ConvBNAct(hidden, hidden, 3, stride, groups=hidden, act_layer=act_layer, norm_layer=norm_layer),
            nn.Conv2d(hidden, out_channels, 1, bias=False),
            norm_layer(out_channels),
        ]
        self.conv = nn.Sequential(*layers)
        self.out_channels = out_channels
        self.stride = stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv(x)
        return x + out if self.use_res_connect else out


class SqueezeExcitation(nn.Module):
    """Squeeze-and-excitation: global-average-pool ("squeeze") -> 1x1 conv ``fc1`` -> activation ->
    1x1 conv ``fc2`` -> sigmoid gives one weight per channel, which rescales the input ("excite").

    The same module as torchvision's ``ops.SqueezeExcitation`` (attributes and keys ``fc1``/``fc2``,
    as its EfficientNet uses), written out here because importing ``torchvision.ops`` at model-build
    time imports all of torchvision and ``torch._dynamo`` (+1.5-2 s for every ``predict``/``evaluate``).
    """

    def __init__(
        self,
        channels: int,
        squeeze_channels: int,
        act_layer: Callable[..., nn.Module] = nn.ReLU,
        gate_layer: Callable[..., nn.Module] = nn.Sigmoid,
    ) -> None:
        super().__init__()
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc1 = nn.Conv2d(channels, squeeze_channels, 1)
        self.fc2 = nn.Conv2d(squeeze_channels, channels, 1)
        self.activation = act_layer()
        self.scale_activation = gate_layer()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        scale = self.scale_activation(self.fc2(self.activation(self.fc1(self.avgpool(x)))))
        return scale * x


class StochasticDepth(nn.Module):
    """torchvision's ``ops.StochasticDepth``, imported only when a training step drops a branch
    (see :class:`SqueezeExcitation` for why not at module level)."""

    def __init__(self, p: float, mode: str) -> None:
        super().__init__()
        self.p, self.mode = p, mode

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0.0:
            return x
        from torchvision.ops import stochastic_depth  # start-up: torchvision on first use

        return stochastic_depth(x, self.p, self.mode, self.training)

    def extra_repr(self) -> str:
        return f"p={self.p}, mode={self.mode}"


class MBConv(nn.Module):
    """EfficientNet's mobile inverted bottleneck: 1x1 expansion (skipped for ratio 1) -> depthwise
    k x k -> squeeze-and-excitation -> linear 1x1 projection, SiLU activations.

    The SE bottleneck is ``in_channels * se_ratio`` wide (of the block's *input*, as in the paper and
    torchvision). On the residual path the branch is dropped per sample with probability
    ``stochastic_depth_prob`` during training (stochastic depth, torchvision's "row" mode). Keys follow
    torchvision's ``MBConv``: ``block.0`` ... ``block.N``.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int = 3,
        stride: int = 1,
        expand_ratio: float = 6,
        se_ratio: float = 0.25,
        stochastic_depth_prob: float = 0.0,
        norm_layer: Callable[..., nn.Module] = nn.BatchNorm2d,
    ) -> None:
        super().__init__()
        if stride not in (1, 2):
            raise ValueError(f"MBConv stride must be 1 or 2, got {stride}")
        self.use_res_connect = stride == 1 and in_channels == out_channels
        expanded = make_divisible(in_channels * expand_ratio)
        layers: list[nn.Module] = []
        if expanded != in_channels:
            layers.append(ConvBNAct(in_channels, expanded, 1, act_layer=nn.SiLU, norm_layer=norm_layer))
        layers += [
            ConvBNAct(
                expanded, expanded, kernel_size, stride, groups=expanded,
                act_layer=nn.SiLU, norm_layer=norm_layer,
            ),
            SqueezeExcitation(
                expanded, max(1, int(in_channels * se_ratio)), act_layer=partial(nn.SiLU, inplace=True)
            ),
            ConvBNAct(expanded, out_channels, 1, act_layer=None, norm_layer=norm_layer),
        ]  # fmt: skip
        self.block = nn.Sequential(*layers)
        self.stochastic_depth = StochasticDepth(stochastic_depth_prob, "row")
        self.out_channels = out_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.block(x)
        if self.use_res_connect:
            out = self.stochastic_depth(out) + x
        return out
