"""Assemble torchvision detectors around any backbone that honours the nasdet contract.

Each builder takes modules and keyword arguments (no config objects) and returns the torchvision
model itself: ``FasterRCNN``, ``RetinaNet``, ``FCOS`` or ``SSD``. Widths and strides come from
``backbone.feature_info``; nothing runs a dummy forward pass.

Conventions: ``num_classes`` counts the background (dataset classes are labels 1..K, so
``num_classes = K + 1``), as torchvision's COCO models do. Anchor sizes are in input pixels; by
default a level's anchor size is ``anchor_base * stride`` (torchvision's choices are 8 for Faster
R-CNN, 4 for RetinaNet, 1 for FCOS).
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import partial

from torch import nn
from torchvision.models.detection import FCOS, FasterRCNN, RetinaNet
from torchvision.models.detection.anchor_utils import AnchorGenerator, DefaultBoxGenerator
from torchvision.models.detection.faster_rcnn import FastRCNNPredictor, TwoMLPHead
from torchvision.models.detection.fcos import FCOSHead
from torchvision.models.detection.retinanet import RetinaNetHead
from torchvision.models.detection.rpn import RPNHead
from torchvision.models.detection.ssd import SSD, SSDHead
from torchvision.models.detection.ssdlite import SSDLiteHead
from torchvision.ops import MultiScaleRoIAlign

from nasdet.models.backbone import FPNBackbone, check_backbone


def anchor_sizes(
    strides: Sequence[int], base: float, scales: Sequence[float] = (1.0,)
) -> tuple[tuple[int, ...], ...]:
    """Per-level anchor sizes in pixels: ``round(base * stride * scale)`` for each scale."""
    return tuple(tuple(max(1, round(base * s * k)) for k in scales) for s in strides)


def _anchor_generator(
    backbone: nn.Module, base: float, aspect_ratios: Sequence[float], scales: Sequence[float]
) -> AnchorGenerator:
    strides = [s.stride for s in check_backbone(backbone)]
    sizes = anchor_sizes(strides, base, scales)
    return AnchorGenerator(sizes, (tuple(aspect_ratios),) * len(sizes))


def _require_fpn(backbone: nn.Module, detector: str) -> None:
    check_backbone(backbone)
    if not isinstance(backbone.out_channels, int):
        raise ValueError(
            f"{detector} needs a backbone whose levels share one width (wrap it in FPNBackbone); "
            f"got out_channels={backbone.out_channels}"
        )


def fasterrcnn(
    backbone: FPNBackbone,
    num_classes: int,
    *,
    min_size: int = 800,
    max_size: int = 1333,
    anchor_base: float = 8.0,
    aspect_ratios: Sequence[float] = (0.5, 1.0, 2.0),
    representation_size: int = 1024,
    rpn_pre_nms_top_n: tuple[int, int] = (2000, 1000),
    rpn_post_nms_top_n: tuple[int, int] = (2000, 1000),
    rpn_batch_size_per_image: int = 256,
    box_batch_size_per_image: int = 512,
    score_thresh: float = 0.05,
    nms_thresh: float = 0.5,
    detections_per_img: int = 100,
) -> FasterRCNN:
    """Faster R-CNN with an FPN backbone (RoIAlign over the FPN levels, extras excluded).

    ``rpn_pre_nms_top_n`` / ``rpn_post_nms_top_n`` are (training, testing) proposal counts per
    level / per image; ``representation_size`` is the width of the two-MLP box head.
    """
    _require_fpn(backbone, "Faster R-CNN")
    anchors = _anchor_generator(backbone, anchor_base, aspect_ratios, (1.0,))
    ch = backbone.out_channels
    roi_pool = MultiScaleRoIAlign(
        featmap_names=backbone.level_names, output_size=7, sampling_ratio=2
    )
    return FasterRCNN(
        backbone,
        min_size=min_size,
        max_size=max_size,
        rpn_anchor_generator=anchors,
        rpn_head=RPNHead(ch, anchors.num_anchors_per_location()[0]),
        rpn_pre_nms_top_n_train=rpn_pre_nms_top_n[0],
        rpn_pre_nms_top_n_test=rpn_pre_nms_top_n[1],
        rpn_post_nms_top_n_train=rpn_post_nms_top_n[0],
        rpn_post_nms_top_n_test=rpn_post_nms_top_n[1],
        rpn_batch_size_per_image=rpn_batch_size_per_image,
        box_roi_pool=roi_pool,
        box_head=TwoMLPHead(ch * 7 * 7, representation_size),
        box_predictor=FastRCNNPredictor(representation_size, num_classes),
        box_batch_size_per_image=box_batch_size_per_image,
        box_score_thresh=score_thresh,
        box_nms_thresh=nms_thresh,
        box_detections_per_img=detections_per_img,
    )


def retinanet(
    backbone: FPNBackbone,
    num_classes: int,
    *,
    min_size: int = 800,
    max_size: int = 1333,
    anchor_base: float = 4.0,
    aspect_ratios: Sequence[float] = (0.5, 1.0, 2.0),
    score_thresh: float = 0.05,
    nms_thresh: float = 0.5,
    detections_per_img: int = 100,
) -> RetinaNet:
    """RetinaNet: three anchor scales (2^0, 2^1/3, 2^2/3) x ``aspect_ratios`` per location."""
    _require_fpn(backbone, "RetinaNet")
    anchors = _anchor_generator(
        backbone, anchor_base, aspect_ratios, (1.0, 2 ** (1 / 3), 2 ** (2 / 3))
    )
    head = RetinaNetHead(backbone.out_channels, anchors.num_anchors_per_location()[0], num_classes)
    return RetinaNet(
        backbone,
        num_classes,
        min_size=min_size,
        max_size=max_size,
        anchor_generator=anchors,
        head=head,
        score_thresh=score_thresh,
        nms_thresh=nms_thresh,
        detections_per_img=detections_per_img,
    )


def fcos(
    backbone: FPNBackbone,
    num_classes: int,
    *,
    min_size: int = 800,
    max_size: int = 1333,
    anchor_base: float = 1.0,
    num_convs: int = 4,
    score_thresh: float = 0.2,
    nms_thresh: float = 0.6,
    detections_per_img: int = 100,
) -> FCOS:
    """FCOS (anchor-free; one "anchor" per location whose size sets the level's regression range
    ``[4, 8] x size``); ``num_convs`` is the depth of each head tower."""
    _require_fpn(backbone, "FCOS")
    if backbone.out_channels % 32:
        raise ValueError(
            "FCOS's head normalises with GroupNorm(32, C): the FPN width must be a multiple of "
            f"32, got {backbone.out_channels}"
        )
    anchors = _anchor_generator(backbone, anchor_base, (1.0,), (1.0,))
    head = FCOSHead(backbone.out_channels, 1, num_classes, num_convs=num_convs)
    return FCOS(
        backbone,
        num_classes,
        min_size=min_size,
        max_size=max_size,
        anchor_generator=anchors,
        head=head,
        score_thresh=score_thresh,
        nms_thresh=nms_thresh,
        detections_per_img=detections_per_img,
    )


def ssd(
    backbone: nn.Module,
    num_classes: int,
    *,
    size: int = 300,
    lite: bool = False,
    min_ratio: float = 0.2,
    max_ratio: float = 0.95,
    score_thresh: float = 0.01,
    nms_thresh: float = 0.45,
    detections_per_img: int = 200,
) -> SSD:
    """SSD (or SSDLite with ``lite=True``: depthwise-separable heads) on the backbone's levels.

    Inputs are resized to ``size`` x ``size``. Default boxes use aspect ratios [2] on the first
    and last level and [2, 3] between, with scales spread linearly over [min_ratio, max_ratio]
    of the image side.
    """
    info = check_backbone(backbone)
    channels = [s.channels for s in info]
    n = len(channels)
    ratios = [[2] if i in (0, n - 1) else [2, 3] for i in range(n)]
    boxes = DefaultBoxGenerator(ratios, min_ratio=min_ratio, max_ratio=max_ratio)
    num_anchors = boxes.num_anchors_per_location()
    if lite:
        norm = partial(nn.BatchNorm2d, eps=0.001, momentum=0.03)
        head: nn.Module = SSDLiteHead(channels, num_anchors, num_classes, norm)
    else:
        head = SSDHead(channels, num_anchors, num_classes)
    return SSD(
        backbone,
        boxes,
        (size, size),
        num_classes,
        head=head,
        score_thresh=score_thresh,
        nms_thresh=nms_thresh,
        detections_per_img=detections_per_img,
    )


def head_towers(head: nn.Module) -> list[tuple[str, int]]:
    """The conv towers of a RetinaNet or FCOS head, classification first: each one's path below
    the head and how many modules of its ``nn.Sequential`` make one conv (RetinaNet's
    ``Conv2dNormActivation``: 1; FCOS's conv, GroupNorm and ReLU: 3). ``[]`` for other heads
    (SSD's, SSDLite's, YOLOv3's have no stack of equal-width convs)."""
    if isinstance(head, RetinaNetHead):
        group = 1
    elif isinstance(head, FCOSHead):
        group = 3
    else:
        return []
    return [("classification_head.conv", group), ("regression_head.conv", group)]


def tower_convs(head: nn.Module) -> int:
    """Convs per tower of a RetinaNet or FCOS head (0 for other heads)."""
    towers = head_towers(head)
    if not towers:
        return 0
    path, group = towers[0]
    return len(head.get_submodule(path)) // group


def skip_head_convs(head: nn.Module, skip: Sequence[int]) -> None:
    """Replace the tower convs ``skip`` of a RetinaNet or FCOS head by identities, in place:
    classification tower convs are 0..n-1, regression tower convs n..2n-1. Each skipped conv's
    modules become ``nn.Identity`` at their positions, so every other parameter keeps its name
    (``classification_head.conv.2.0.weight``...). ``ValueError`` for a head without towers or an
    index out of range."""
    towers, n = head_towers(head), tower_convs(head)
    if not towers:
        raise ValueError(f"{type(head).__name__} has no conv towers to skip (retinanet, fcos do)")
    for i in skip:
        if not 0 <= i < 2 * n:
            raise ValueError(f"head conv {i} does not exist: the towers have convs 0..{2 * n - 1}")
        path, group = towers[i // n]
        tower = head.get_submodule(path)
        for j in range((i % n) * group, (i % n + 1) * group):
            tower[j] = nn.Identity()
