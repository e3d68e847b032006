"""Darknet-53, the backbone of YOLOv3 (Redmon & Farhadi, "YOLOv3: An Incremental Improvement",
2018; darknet's ``cfg/yolov3.cfg``), and darknet's convolution unit.

Darknet-53 is a 3x3 stem conv (32 channels) followed by five stages; each stage is a 3x3 stride-2
conv that doubles the width (64, 128, 256, 512, 1024) and then 1, 2, 8, 8, 4 residual blocks
(1x1 conv to half the width, 3x3 conv back, plus the input): 1 + 5 + 2 * 23 = 52 convolutions (the
53rd layer of the classifier is its fully connected layer, not built here).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence

from torch import Tensor, nn
from torchvision.models._utils import _make_divisible

from nasdet.models.backbone import FeatureBackbone, select_levels

DARKNET53_DEPTHS = (1, 2, 8, 8, 4)  # residual blocks per stage (strides 2, 4, 8, 16, 32)
LEAKY_SLOPE = 0.1


def conv_bn_leaky(
    in_channels: int, out_channels: int, kernel_size: int, stride: int = 1
) -> nn.Sequential:
    """darknet's convolutional layer: conv (no bias, "same" padding), BatchNorm, LeakyReLU(0.1)."""
    return nn.Sequential(
        OrderedDict(
            conv=nn.Conv2d(
                in_channels,
                out_channels,
                kernel_size,
                stride=stride,
                padding=kernel_size // 2,
                bias=False,
            ),
            bn=nn.BatchNorm2d(out_channels),
            act=nn.LeakyReLU(LEAKY_SLOPE, inplace=True),
        )
    )


class DarknetResidual(nn.Module):
    """``x + conv3x3(conv1x1(x))``, the 1x1 conv halving the width."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv1 = conv_bn_leaky(channels, channels // 2, 1)
        self.conv2 = conv_bn_leaky(channels // 2, channels, 3)

    def forward(self, x: Tensor) -> Tensor:
        return x + self.conv2(self.conv1(x))


class Darknet(nn.Sequential):
    """The Darknet feature extractor: children ``stem``, ``stage1`` .. ``stage5`` run in order.

    Args:
        depths: residual blocks of each stage (Darknet-53: 1, 2, 8, 8, 4).
        widths: stem width, then each stage's width (Darknet-53: 32, 64, 128, 256, 512, 1024).
    """

    def __init__(self, depths: Sequence[int], widths: Sequence[int]) -> None:
        if len(widths) != len(depths) + 1:
            raise ValueError(f"widths needs one entry more than depths (the stem), got {widths}")
        layers: OrderedDict[str, nn.Module] = OrderedDict(stem=conv_bn_leaky(3, widths[0], 3))
        for i, depth in enumerate(depths):
            down = conv_bn_leaky(widths[i], widths[i + 1], 3, stride=2)
            blocks = [DarknetResidual(widths[i + 1]) for _ in range(depth)]
            layers[f"stage{i + 1}"] = nn.Sequential(down, *blocks)
        super().__init__(layers)


def darknet53_widths(width_mult: float = 1.0) -> list[int]:
    """Stem and stage widths 32, 64, .., 1024 x ``width_mult``, rounded to multiples of 8."""
    return [_make_divisible(32 * width_mult * 2**i, 8) for i in range(6)]


def darknet53(*, width_mult: float = 1.0, levels: Sequence[int] = (3, 4, 5)) -> FeatureBackbone:
    """Darknet-53 as a nasdet backbone: level ``cL`` is the output of stage L (stride 2**L).

    Levels 3, 4, 5 (YOLOv3's) have 256, 512, 1024 channels x ``width_mult``; level 2 is stage 2
    (128 channels, stride 4). Stage 1 and the stem always run but are never returned.
    """
    widths = darknet53_widths(width_mult)
    children = [(f"stage{i}", 2**i, widths[i]) for i in range(2, 6)]
    return FeatureBackbone(Darknet(DARKNET53_DEPTHS, widths), *select_levels(children, levels))
