"""The backbone contract shared by every detector nasdet builds.

A backbone is an ``nn.Module`` whose forward takes a float tensor (B, 3, H, W) and returns an
``OrderedDict[str, Tensor]``. It publishes, without a dummy forward pass:

- ``feature_info``: one :class:`ShapeSpec` (channels, stride) per returned level, in order;
- ``out_channels``: an int when every level has the same width (after an FPN), else the list.

:class:`FeatureBackbone` turns a classification network into such a backbone (levels ``c2..c5``
with strides 4..32); :class:`FPNBackbone` adds a torchvision ``FeaturePyramidNetwork`` on top
(levels ``p3..``, one width) and keeps the parts apart as ``.body`` and ``.fpn``, like torchvision's
``BackboneWithFPN``, so the cost model can measure the backbone alone.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from torch import Tensor, nn
from torchvision.models._utils import IntermediateLayerGetter
from torchvision.ops.feature_pyramid_network import (
    FeaturePyramidNetwork,
    LastLevelMaxPool,
    LastLevelP6P7,
)

ExtraLevels = Literal["none", "pool", "p6p7"]


@dataclass(frozen=True)
class ShapeSpec:
    """Width and stride (in input pixels) of one feature level."""

    channels: int
    stride: int


LEVELS = (2, 3, 4, 5)  # the feature levels a classification body offers (strides 4..32)


def select_levels(
    children: Sequence[tuple[str, int, int]], levels: Sequence[int]
) -> tuple[dict[str, str], list[ShapeSpec]]:
    """Pick, for each level L, the last child whose output stride is 2**L.

    Args:
        children: (child name, output stride, output channels) in execution order.
        levels: feature levels wanted, increasing, each in 2..5.
    """
    bad = [lv for lv in levels if lv not in LEVELS]
    if bad or list(levels) != sorted(set(levels)):
        raise ValueError(f"levels must be increasing values in {LEVELS}, got {list(levels)}")
    return_layers, info = {}, []
    for lv in levels:
        name, stride, ch = [c for c in children if c[1] == 2**lv][-1]
        return_layers[name] = f"c{lv}"
        info.append(ShapeSpec(ch, stride))
    return return_layers, info


def check_backbone(backbone: nn.Module) -> list[ShapeSpec]:
    """Return ``backbone.feature_info`` after checking the contract; ``ValueError`` says what is
    missing."""
    missing = [a for a in ("out_channels", "feature_info") if not hasattr(backbone, a)]
    if missing:
        raise ValueError(
            f"{type(backbone).__name__} is not a nasdet backbone: it has no "
            f"{' and no '.join(missing)} attribute. A backbone publishes `out_channels` and "
            "`feature_info` (a list of ShapeSpec(channels, stride), one per returned level) "
            "and returns an OrderedDict[str, Tensor]."
        )
    info = list(backbone.feature_info)
    if not info or not all(isinstance(s, ShapeSpec) for s in info):
        raise ValueError(
            f"{type(backbone).__name__}.feature_info must be a non-empty ShapeSpec list"
        )
    strides = [s.stride for s in info]
    if any(b != 2 * a for a, b in zip(strides, strides[1:], strict=False)):
        raise ValueError(
            f"{type(backbone).__name__}: feature strides must double level by level, got {strides}"
        )
    return info


class FeatureBackbone(IntermediateLayerGetter):
    """Runs the children of ``model`` in order and returns the outputs named in ``return_layers``.

    Parameter names stay those of ``model`` (e.g. ``layer1.0.conv1.weight``), so a torchvision
    classification state dict loads by name. Children after the last returned one are dropped.

    Args:
        model: a module whose direct children run in sequence (a torchvision ResNet, the
            ``features`` Sequential of a MobileNet, ...).
        return_layers: child name -> output key (``{"layer2": "c3", ...}``).
        feature_info: the (channels, stride) of each returned level, in ``return_layers`` order.
    """

    def __init__(
        self, model: nn.Module, return_layers: dict[str, str], feature_info: Sequence[ShapeSpec]
    ) -> None:
        if len(return_layers) != len(feature_info):
            raise ValueError("return_layers and feature_info must have one entry per level")
        super().__init__(model, return_layers)
        self.feature_info = list(feature_info)
        self.out_channels = [s.channels for s in self.feature_info]


class FPNBackbone(nn.Module):
    """A backbone followed by torchvision's FeaturePyramidNetwork.

    Args:
        body: a backbone honouring the contract (levels named ``cN``).
        out_channels: FPN width (every output level has it).
        extra: ``"none"``; ``"pool"`` adds a max-pooled level ``pool`` (Faster R-CNN's, not used
            by its RoI pooling); ``"p6p7"`` adds two stride-2 conv levels ``p6, p7`` after the last
            (RetinaNet's / FCOS's).

    Output keys are the body's with ``c`` replaced by ``p`` (``c3 -> p3``), then the extras.
    """

    def __init__(self, body: nn.Module, out_channels: int, extra: ExtraLevels = "none") -> None:
        super().__init__()
        info = check_backbone(body)
        extra_block: nn.Module | None
        if extra == "pool":
            extra_block, extra_names = LastLevelMaxPool(), ["pool"]
        elif extra == "p6p7":
            extra_block, extra_names = LastLevelP6P7(out_channels, out_channels), ["p6", "p7"]
        elif extra == "none":
            extra_block, extra_names = None, []
        else:
            raise ValueError(f"extra must be 'none', 'pool' or 'p6p7', got {extra!r}")
        self.body = body
        self.fpn = FeaturePyramidNetwork(
            [s.channels for s in info], out_channels, extra_blocks=extra_block
        )
        last = info[-1].stride
        self.feature_info = [ShapeSpec(out_channels, s.stride) for s in info] + [
            ShapeSpec(out_channels, last * 2**i) for i in range(1, len(extra_names) + 1)
        ]
        self.out_channels = out_channels
        self.extra_names = extra_names

    def forward(self, x: Tensor) -> OrderedDict[str, Tensor]:
        feats = self.fpn(self.body(x))
        return OrderedDict((_p_name(k), v) for k, v in feats.items())

    @property
    def level_names(self) -> list[str]:
        """Names of the pyramid levels built from body levels (extras excluded)."""
        n = len(self.feature_info) - len(self.extra_names)
        return [f"p{s.stride.bit_length() - 1}" for s in self.feature_info[:n]]


def _p_name(key: str) -> str:
    return "p" + key[1:] if key.startswith("c") else key


class ExtraLevelsBackbone(nn.Module):
    """A backbone with extra stride-2 levels appended (SSD's extra feature layers).

    Each extra level is 1x1 conv (halve) -> 3x3 stride-2 conv, BN and ReLU, as in SSD's extras.
    With ``depthwise`` the 3x3 conv is depthwise and a 1x1 conv to the level's width follows
    (SSDLite's extras; MMDetection's ``SSDNeck(use_depthwise=True)``), each with BN and ReLU.

    Args:
        body: a backbone honouring the contract.
        extra_channels: width of each extra level; ``()`` adds none.
        depthwise: SSDLite's depthwise-separable extras.
    """

    def __init__(
        self, body: nn.Module, extra_channels: Sequence[int] = (), *, depthwise: bool = False
    ) -> None:
        super().__init__()
        info = check_backbone(body)
        self.body = body
        self.extras = nn.ModuleList()
        in_ch, stride = info[-1].channels, info[-1].stride
        self.feature_info = list(info)
        for ch in extra_channels:
            mid = max(ch // 2, 8)
            if depthwise:
                convs = [
                    nn.Conv2d(in_ch, mid, 1, bias=False),
                    nn.Conv2d(mid, mid, 3, stride=2, padding=1, groups=mid, bias=False),
                    nn.Conv2d(mid, ch, 1, bias=False),
                ]
            else:
                convs = [
                    nn.Conv2d(in_ch, mid, 1, bias=False),
                    nn.Conv2d(mid, ch, 3, stride=2, padding=1, bias=False),
                ]
            layers: list[nn.Module] = []
            for conv in convs:
                layers += [conv, nn.BatchNorm2d(conv.out_channels), nn.ReLU(inplace=True)]
            self.extras.append(nn.Sequential(*layers))
            in_ch, stride = ch, stride * 2
            self.feature_info.append(ShapeSpec(ch, stride))
        self.extra_names = [f"c{s.stride.bit_length() - 1}" for s in self.feature_info[len(info) :]]
        self.out_channels = [s.channels for s in self.feature_info]

    def forward(self, x: Tensor) -> OrderedDict[str, Tensor]:
        feats = self.body(x)
        last = next(reversed(feats.values()))
        for name, extra in zip(self.extra_names, self.extras, strict=True):
            last = extra(last)
            feats[name] = last
        return feats
