"""Hand-crafted baseline backbones from torchvision classification networks (and Darknet-53,
YOLOv3's, from :mod:`nasdet.models.darknet`).

Each builder returns a :class:`~nasdet.models.backbone.FeatureBackbone` with levels ``c2..c5``
(strides 4, 8, 16, 32; ``levels`` picks a subset) and a width multiplier so CPU-sized variants
exist. Parameter names are torchvision's (for MobileNets, without the ``features.`` prefix), so a
torchvision ImageNet state dict the user names can be loaded by name
(:func:`nasdet.models.io.load_backbone_weights`). Models are always built with ``weights=None``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torchvision
from torch import nn
from torchvision.models._utils import _make_divisible
from torchvision.models.resnet import BasicBlock, Bottleneck, ResNet

from nasdet.models.backbone import FeatureBackbone, select_levels
from nasdet.models.darknet import darknet53


def _resnet_widths(width_mult: float) -> list[int]:
    """Stage widths (``planes``) of a ResNet: 64, 128, 256, 512 x width_mult, rounded to 8."""
    return [_make_divisible(64 * width_mult * 2**i, 8) for i in range(4)]


def _resnet(block: type[nn.Module], layers: list[int], width_mult: float) -> ResNet:
    """torchvision's ResNet with every stage width scaled by ``width_mult``."""
    model = ResNet(block, layers)
    if width_mult != 1.0:
        widths = _resnet_widths(width_mult)
        model.inplanes = widths[0]
        model.conv1 = nn.Conv2d(3, widths[0], kernel_size=7, stride=2, padding=3, bias=False)
        model.bn1 = nn.BatchNorm2d(widths[0])
        model.layer1 = model._make_layer(block, widths[0], layers[0])
        for i in (1, 2, 3):
            setattr(
                model, f"layer{i + 1}", model._make_layer(block, widths[i], layers[i], stride=2)
            )
        for m in model.modules():  # the same initialisation ResNet.__init__ applies
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.constant_(m.weight, 1)
                nn.init.constant_(m.bias, 0)
    return model


def _resnet_backbone(
    block: type[BasicBlock | Bottleneck],
    layers: list[int],
    width_mult: float,
    levels: Sequence[int],
) -> FeatureBackbone:
    widths = _resnet_widths(width_mult)
    children = [("maxpool", 4, widths[0])] + [
        (f"layer{i + 1}", 2 ** (i + 2), widths[i] * block.expansion) for i in range(4)
    ]
    return FeatureBackbone(_resnet(block, layers, width_mult), *select_levels(children, levels))


def resnet18(*, width_mult: float = 1.0, levels: Sequence[int] = (3, 4, 5)) -> FeatureBackbone:
    """ResNet-18 (basic blocks 2-2-2-2); width_mult 0.25 gives 16-32-64-128 channels."""
    return _resnet_backbone(BasicBlock, [2, 2, 2, 2], width_mult, levels)


def resnet50(*, width_mult: float = 1.0, levels: Sequence[int] = (3, 4, 5)) -> FeatureBackbone:
    """ResNet-50 (bottleneck blocks 3-4-6-3); level widths 256-512-1024-2048 x width_mult."""
    return _resnet_backbone(Bottleneck, [3, 4, 6, 3], width_mult, levels)


def _mobilenet_backbone(features: nn.Sequential, levels: Sequence[int]) -> FeatureBackbone:
    """Levels of a MobileNet ``features`` Sequential; strides from the blocks' ``_is_cn`` flag."""
    children, stride = [], 1
    for i, block in enumerate(features):
        if i == 0 or getattr(block, "_is_cn", False):
            stride *= 2
        children.append((str(i), stride, block.out_channels))
    return FeatureBackbone(features, *select_levels(children, levels))


def mobilenet_v2(
    *, width_mult: float = 1.0, levels: Sequence[int] = (3, 4, 5), last_conv: bool = True
) -> FeatureBackbone:
    """MobileNetV2 (torchvision's ``width_mult``); c5 is the final 1x1 conv (1280 x max(1, w)).

    With ``last_conv=False`` that conv is dropped and c5 is the last inverted-residual block
    (320 x w channels): levels 3, 4, 5 then have 32, 96, 320 channels, MMDetection's MobileNetV2
    ``out_indices=(2, 4, 6)`` (its YOLOv3 configs)."""
    model = torchvision.models.mobilenet_v2(weights=None, width_mult=width_mult)
    features = model.features if last_conv else model.features[:-1]
    return _mobilenet_backbone(features, levels)


def mobilenet_v3_large(
    *, width_mult: float = 1.0, levels: Sequence[int] = (3, 4, 5)
) -> FeatureBackbone:
    """MobileNetV3-Large (torchvision's ``width_mult``); c5 is the final 1x1 conv (960 x w)."""
    model = torchvision.models.mobilenet_v3_large(weights=None, width_mult=width_mult)
    return _mobilenet_backbone(model.features, levels)


def mobilenet_v3_small(
    *, width_mult: float = 1.0, levels: Sequence[int] = (3, 4, 5)
) -> FeatureBackbone:
    """MobileNetV3-Small (torchvision's ``width_mult``)."""
    model = torchvision.models.mobilenet_v3_small(weights=None, width_mult=width_mult)
    return _mobilenet_backbone(model.features, levels)


# torchvision's ShuffleNetV2 stage widths per published multiplier.
_SHUFFLENET_WIDTHS = {
    0.5: [24, 48, 96, 192, 1024],
    1.0: [24, 116, 232, 464, 1024],
    1.5: [24, 176, 352, 704, 1024],
    2.0: [24, 244, 488, 976, 2048],
}


def shufflenet_v2_widths(width_mult: float) -> list[int]:
    """Stage widths [stem, stage2, stage3, stage4, conv5] for a width multiplier.

    The published multipliers use torchvision's table; others scale the x1.0 widths (rounded to a
    multiple of 4, as the channel split needs even halves) and, below 1, the final conv too.
    """
    if width_mult in _SHUFFLENET_WIDTHS:
        return list(_SHUFFLENET_WIDTHS[width_mult])
    base = _SHUFFLENET_WIDTHS[1.0]
    stages = [_make_divisible(c * width_mult, 4) for c in base[1:4]]
    conv5 = _make_divisible(1024 * min(width_mult, 1.0), 8)
    return [min(24, _make_divisible(24 * width_mult, 8)) if width_mult < 1 else 24, *stages, conv5]


def shufflenet_v2(*, width_mult: float = 1.0, levels: Sequence[int] = (3, 4, 5)) -> FeatureBackbone:
    """ShuffleNetV2 (repeats 4-8-4); c2 is the stem after max-pooling, c5 the final 1x1 conv."""
    widths = shufflenet_v2_widths(width_mult)
    model = torchvision.models.ShuffleNetV2([4, 8, 4], widths)
    children = [
        ("maxpool", 4, widths[0]),
        ("stage2", 8, widths[1]),
        ("stage3", 16, widths[2]),
        ("stage4", 32, widths[3]),
        ("conv5", 32, widths[4]),
    ]
    return FeatureBackbone(model, *select_levels(children, levels))


# The baseline backbones by config name: the one place that maps a name to its builder.
BASELINES: dict[str, Callable[..., FeatureBackbone]] = {
    "resnet18": resnet18,
    "resnet50": resnet50,
    "mobilenet_v2": mobilenet_v2,
    "mobilenet_v3_large": mobilenet_v3_large,
    "mobilenet_v3_small": mobilenet_v3_small,
    "shufflenet_v2": shufflenet_v2,
    "darknet53": darknet53,
}
