"""Reference detectors by name (``nasdet cost --model nasdet:NAME``): users' usual baselines.

:data:`NAMED` is the one table from a name to its builder; every builder is keyword-only,
``builder(*, num_classes, input_size)``, builds random weights (never downloads) and returns a
torchvision-style detector (``.transform``, ``.backbone``). ``num_classes`` counts the background,
as everywhere in nasdet (COCO's 80 classes: 81; torchvision's COCO models use 91, its category ids
1..90); ``input_size`` is the side, in pixels, of the square network input (RetinaNet: the short
side, the long side limited to ``input_size * 1333 / 800``).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable

from torch import nn
from torchvision.models.detection import retinanet_resnet50_fpn as tv_retinanet_resnet50_fpn

from nasdet.errors import ConfigError
from nasdet.models import detectors
from nasdet.models.backbone import ExtraLevelsBackbone
from nasdet.models.baselines import mobilenet_v2
from nasdet.models.darknet import darknet53
from nasdet.models.yolov3 import YOLOv3, YOLOv3Head, YOLOv3Neck

__all__ = ["NAMED", "build_named", "default_input_size", "list_named"]


def yolov3_darknet53(*, num_classes: int = 81, input_size: int = 416) -> YOLOv3:
    """YOLOv3 as in darknet's ``yolov3.cfg``: Darknet-53, neck widths 512/256/128 and head widths
    1024/512/256 (coarse to fine), the 9 COCO anchors; images in [0, 1] are not normalised
    (darknet's). 81 classes (80 + background): 61,949,149 parameters."""
    return YOLOv3(
        darknet53(),
        num_classes,
        input_size=input_size,
        image_mean=(0.0, 0.0, 0.0),
        image_std=(1.0, 1.0, 1.0),
    )


def yolov3_mobilenetv2(*, num_classes: int = 81, input_size: int = 416) -> YOLOv3:
    """MMDetection's ``yolov3_mobilenetv2`` (416 px config): torchvision's MobileNetV2 features up
    to the 320-channel block (levels 32/96/320 channels at strides 8/16/32), neck and head widths
    96 at every scale, the 9 COCO anchors, ImageNet normalisation. MMDetection swaps the
    backbone's ReLU6 for LeakyReLU(0.1), which changes no parameter or FLOP count; torchvision's
    ReLU6 is kept here."""
    neck = YOLOv3Neck([32, 96, 320], [96, 96, 96])
    head = YOLOv3Head(neck.out_channels, 3, num_classes, mid_channels=[96, 96, 96])
    return YOLOv3(
        mobilenet_v2(last_conv=False), num_classes, neck=neck, head=head, input_size=input_size
    )


def ssd_mobilenetv2(*, num_classes: int = 81, input_size: int = 320) -> nn.Module:
    """SSDLite on MobileNetV2 (ENOT's ``ssd_mobilenetv2``, MMDetection's
    ``ssdlite_mobilenetv2``): torchvision's MobileNetV2 features, levels at strides 16 (96
    channels, the last 96-channel block) and 32 (the final 1280-channel conv), four depthwise
    extra levels of 512, 256, 256, 128 channels, torchvision's SSDLite head. Default boxes are
    nasdet's :func:`~nasdet.models.detectors.ssd` ones (torchvision's SSDLite scales 0.2..0.95;
    MMDetection lists its sizes by hand)."""
    body = mobilenet_v2(levels=(4, 5))
    backbone = ExtraLevelsBackbone(body, [512, 256, 256, 128], depthwise=True)
    return detectors.ssd(
        backbone,
        num_classes,
        size=input_size,
        lite=True,
        min_ratio=0.2,
        max_ratio=0.95,
        score_thresh=0.02,
        detections_per_img=200,
    )


def retinanet_resnet50_fpn(*, num_classes: int = 91, input_size: int = 800) -> nn.Module:
    """torchvision's ``retinanet_resnet50_fpn(weights=None, weights_backbone=None)`` (trainable
    BatchNorm, so the BN affine parameters count), short side ``input_size``."""
    return tv_retinanet_resnet50_fpn(
        weights=None,
        weights_backbone=None,
        num_classes=num_classes,
        min_size=input_size,
        max_size=round(input_size * 1333 / 800),
    )


# The named detectors: the one place that maps a name to its builder.
NAMED: dict[str, Callable[..., nn.Module]] = {
    "yolov3_darknet53": yolov3_darknet53,
    "yolov3_mobilenetv2": yolov3_mobilenetv2,
    "ssd_mobilenetv2": ssd_mobilenetv2,
    "retinanet_resnet50_fpn": retinanet_resnet50_fpn,
}


def list_named() -> list[str]:
    """The names :func:`build_named` knows, sorted."""
    return sorted(NAMED)


def _builder(name: str) -> Callable[..., nn.Module]:
    if name not in NAMED:
        raise ConfigError(f"unknown nasdet model '{name}': known are {', '.join(list_named())}")
    return NAMED[name]


def default_input_size(name: str) -> int:
    """The ``input_size`` model ``name`` is built for when none is given, in pixels."""
    return int(inspect.signature(_builder(name)).parameters["input_size"].default)


def build_named(
    name: str, *, num_classes: int | None = None, input_size: int | None = None
) -> nn.Module:
    """Build named model ``name`` (a leading ``nasdet:`` is accepted); ``None`` takes the
    builder's default. :class:`ConfigError` for an unknown name, listing the known ones."""
    name = name.strip().removeprefix("nasdet:")
    builder = _builder(name)
    kwargs = {"num_classes": num_classes, "input_size": input_size}
    return builder(**{k: v for k, v in kwargs.items() if v is not None})
