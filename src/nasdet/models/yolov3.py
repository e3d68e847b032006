"""YOLOv3 (Redmon & Farhadi, 2018) on any nasdet backbone with levels at strides 8, 16, 32.

The neck and head are darknet's ``cfg/yolov3.cfg`` (MMDetection's ``YOLOV3Neck``/``YOLOV3Head``
with their defaults): for each scale from coarse to fine, a detection block of five convs
(1x1, 3x3, 1x1, 3x3, 1x1; the 3x3s twice as wide), then a 3x3 conv and a 1x1 conv (with bias) to
``A * (5 + K)`` outputs per cell; a 1x1 conv and a 2x nearest upsample take the block's output to
the next finer scale, where it is concatenated (first) with the backbone's level. Every conv but
the output ones is conv (no bias) + BatchNorm + LeakyReLU(0.1).

Conventions (those of nasdet's other detectors, so the trainer and evaluator work unchanged):
``num_classes`` counts the background, dataset classes are labels ``1..K`` (``K = num_classes -
1``). YOLOv3 has no background logit (objectness plays that part): the head predicts K class
logits and the detector returns labels ``1..K``, never 0. Every per-level list is ordered fine
to coarse (stride 8, 16, 32), as ``feature_info`` is. Anchor and box sizes are in input pixels.

Images (a list of (3, H, W) float tensors in [0, 1]) are resized to ``input_size`` x
``input_size`` without keeping the aspect ratio (torchvision's ``GeneralizedRCNNTransform`` with
``fixed_size``, as torchvision's SSD does; darknet and MMDetection letterbox instead), normalised
with ``image_mean``/``image_std``, and boxes are mapped back to each original image's size.

Training (``model(images, targets)`` returns a loss dict) is described in
:mod:`nasdet.models.yolov3_loss`. Inference: ``sigmoid`` decoding (centre ``(cell + sigmoid(t_xy))
* stride``, size ``anchor * exp(t_wh)``), predictions with objectness below ``conf_thresh`` are
dropped, score = objectness x class probability (several classes per box possible), scores over
``score_thresh``, the best ``topk_candidates`` per image, per-class NMS
(``torchvision.ops.batched_nms``), then ``detections_per_img`` -- MMDetection's ``test_cfg``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.models.detection.transform import GeneralizedRCNNTransform
from torchvision.ops import batched_nms, clip_boxes_to_image

from nasdet.models.backbone import check_backbone
from nasdet.models.darknet import conv_bn_leaky
from nasdet.models.yolov3_loss import decode_boxes, flatten_maps, grid_priors, yolov3_loss

# darknet's yolov3.cfg anchors (w, h) at a 416 px input, 3 per scale, fine to coarse
COCO_ANCHORS: tuple[tuple[tuple[int, int], ...], ...] = (
    ((10, 13), (16, 30), (33, 23)),
    ((30, 61), (62, 45), (59, 119)),
    ((116, 90), (156, 198), (373, 326)),
)
ANCHOR_INPUT_SIZE = 416
STRIDES = (8, 16, 32)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def detection_block(in_channels: int, out_channels: int) -> nn.Sequential:
    """Five convs 1x1, 3x3, 1x1, 3x3, 1x1 (the 3x3s output ``2 * out_channels``)."""
    c, c2 = out_channels, 2 * out_channels
    return nn.Sequential(
        conv_bn_leaky(in_channels, c, 1),
        conv_bn_leaky(c, c2, 3),
        conv_bn_leaky(c2, c, 1),
        conv_bn_leaky(c, c2, 3),
        conv_bn_leaky(c2, c, 1),
    )


class YOLOv3Neck(nn.Module):
    """YOLOv3's top-down path (lists fine to coarse).

    Args:
        in_channels: backbone level widths, fine to coarse (Darknet-53: 256, 512, 1024).
        out_channels: each scale's detection block width (default ``in_channels[i] // 2``:
            128, 256, 512 for Darknet-53; MMDetection's MobileNetV2 config: 96, 96, 96).

    ``forward`` takes the backbone's levels (fine to coarse) and returns the blocks' outputs.
    """

    def __init__(self, in_channels: Sequence[int], out_channels: Sequence[int] | None = None):
        super().__init__()
        out = list(out_channels) if out_channels is not None else [c // 2 for c in in_channels]
        if len(out) != len(in_channels):
            raise ValueError(f"out_channels {out} needs one width per level {list(in_channels)}")
        n = len(out)
        # the upsampled coarser path (width out[i]) is concatenated before the level's features
        self.blocks = nn.ModuleList(
            detection_block(in_channels[i] + (out[i] if i < n - 1 else 0), out[i]) for i in range(n)
        )
        self.laterals = nn.ModuleList(conv_bn_leaky(out[i + 1], out[i], 1) for i in range(n - 1))
        self.out_channels = out

    def forward(self, feats: Sequence[Tensor]) -> list[Tensor]:
        outs: list[Tensor] = [feats[-1]] * len(feats)
        x = self.blocks[-1](feats[-1])
        outs[-1] = x
        for i in range(len(feats) - 2, -1, -1):
            up = F.interpolate(self.laterals[i](x), size=feats[i].shape[-2:], mode="nearest")
            x = self.blocks[i](torch.cat([up, feats[i]], dim=1))
            outs[i] = x
        return outs


class YOLOv3Head(nn.Module):
    """Per scale a 3x3 conv (BN, LeakyReLU) then a 1x1 conv to ``num_anchors * (5 + K)`` maps.

    Args:
        in_channels: neck widths, fine to coarse.
        num_anchors: anchors per cell (3).
        num_classes: background included; the head predicts ``K = num_classes - 1`` logits.
        mid_channels: width of each 3x3 conv (default ``2 * in_channels[i]``).
        strides: the scales' strides, for MMDetection's objectness bias prior
            ``logit(8 / (608 / stride) ** 2)``; class biases start at ``logit(1 / K)``.

    The channels of a cell are ``[a][t_x, t_y, t_w, t_h, objectness, class logits...]``.
    """

    def __init__(
        self,
        in_channels: Sequence[int],
        num_anchors: int,
        num_classes: int,
        *,
        mid_channels: Sequence[int] | None = None,
        strides: Sequence[int] = STRIDES,
    ) -> None:
        super().__init__()
        if num_classes < 2:
            raise ValueError(f"num_classes counts the background: at least 2, got {num_classes}")
        mid = list(mid_channels) if mid_channels is not None else [2 * c for c in in_channels]
        self.num_anchors, self.num_classes = num_anchors, num_classes
        attribs = 5 + num_classes - 1
        self.convs = nn.ModuleList(
            nn.Sequential(conv_bn_leaky(c, m, 3), nn.Conv2d(m, num_anchors * attribs, 1))
            for c, m in zip(in_channels, mid, strict=True)
        )
        for seq, stride in zip(self.convs, strides, strict=True):
            pred = seq[1]
            nn.init.normal_(pred.weight, std=0.01)
            bias = pred.bias.detach().view(num_anchors, attribs)
            bias.zero_()
            bias[:, 4] = _logit(8 / (608 / stride) ** 2)
            bias[:, 5:] = _logit(1 / (num_classes - 1))

    def forward(self, feats: Sequence[Tensor]) -> list[Tensor]:
        return [conv(x) for conv, x in zip(self.convs, feats, strict=True)]


def _logit(p: float) -> float:
    return math.log(p / (1 - p)) if p < 1 else 0.0


class YOLOv3(nn.Module):
    """YOLOv3 detector with torchvision's detector interface.

    Args:
        backbone: a nasdet backbone with exactly three levels at strides 8, 16, 32.
        num_classes: background included (K dataset classes: ``K + 1``).
        neck: default ``YOLOv3Neck(level widths)``.
        head: default ``YOLOv3Head(neck widths, 3, num_classes)``.
        anchors: (w, h) per anchor, one group per scale (fine to coarse), in pixels of an
            ``anchor_input_size`` input; they are scaled by ``input_size / anchor_input_size``
            (at 416 they are darknet's; darknet and MMDetection keep them fixed in pixels
            instead, nasdet scales them so that a resolution change keeps their match to
            objects, which are resized with the image).
        input_size: side of the square network input, in pixels.
        image_mean, image_std: normalisation of [0, 1] images (default ImageNet's; darknet's
            Darknet-53 uses 0 and 1).
        score_thresh, conf_thresh, nms_thresh, topk_candidates, detections_per_img: inference
            (see the module docstring).
        ignore_thresh: training; see :mod:`nasdet.models.yolov3_loss`.

    ``forward(images, targets=None)``: in training mode a dict ``loss_xy``, ``loss_wh``,
    ``loss_obj``, ``loss_cls``; in eval mode one dict per image with ``boxes`` (x1, y1, x2, y2 in
    that image's pixels), ``scores`` and ``labels`` (1..K).
    """

    def __init__(
        self,
        backbone: nn.Module,
        num_classes: int,
        *,
        neck: nn.Module | None = None,
        head: nn.Module | None = None,
        anchors: Sequence[Sequence[tuple[float, float]]] = COCO_ANCHORS,
        anchor_input_size: int = ANCHOR_INPUT_SIZE,
        input_size: int = 416,
        image_mean: Sequence[float] | None = None,
        image_std: Sequence[float] | None = None,
        score_thresh: float = 0.05,
        conf_thresh: float = 0.005,
        nms_thresh: float = 0.45,
        topk_candidates: int = 1000,
        detections_per_img: int = 100,
        ignore_thresh: float = 0.5,
    ) -> None:
        super().__init__()
        info = check_backbone(backbone)
        strides = tuple(s.stride for s in info)
        if strides != STRIDES:
            raise ValueError(
                f"YOLOv3 needs a backbone with three levels at strides 8, 16, 32; got {strides}"
            )
        per_scale = {len(group) for group in anchors}
        if len(anchors) != len(strides) or len(per_scale) != 1:
            raise ValueError("anchors needs one group per scale, each with the same count")
        self.backbone = backbone
        self.neck = neck if neck is not None else YOLOv3Neck([s.channels for s in info])
        if head is None:
            head = YOLOv3Head(self.neck.out_channels, per_scale.pop(), num_classes)
        self.head = head
        self.num_classes = num_classes
        self.strides = strides
        scale = input_size / anchor_input_size
        wh = torch.tensor(anchors, dtype=torch.float32) * scale  # (levels, A, 2)
        self.register_buffer("anchors", wh, persistent=False)
        self.transform = GeneralizedRCNNTransform(
            input_size,
            input_size,
            list(image_mean or IMAGENET_MEAN),
            list(image_std or IMAGENET_STD),
            size_divisible=1,
            fixed_size=(input_size, input_size),
        )
        self.ignore_thresh = ignore_thresh
        self.score_thresh, self.conf_thresh = score_thresh, conf_thresh
        self.nms_thresh, self.topk_candidates = nms_thresh, topk_candidates
        self.detections_per_img = detections_per_img

    def raw_outputs(self, x: Tensor) -> list[Tensor]:
        """Backbone, neck and head on a normalised batch: one (B, A*(5+K), H/s, W/s) map per
        scale, fine to coarse (what the cost model and an ONNX export measure)."""
        return self.head(self.neck(list(self.backbone(x).values())))

    def forward(
        self, images: list[Tensor], targets: list[dict[str, Tensor]] | None = None
    ) -> dict[str, Tensor] | list[dict[str, Tensor]]:
        if self.training:
            if targets is None:
                raise ValueError("in training mode YOLOv3 needs targets")
            for t in targets:
                boxes = t["boxes"]
                if boxes.dim() != 2 or boxes.shape[-1] != 4:
                    raise ValueError(f"target boxes must be (N, 4), got {tuple(boxes.shape)}")
        original_sizes = [(int(img.shape[-2]), int(img.shape[-1])) for img in images]
        batch, targets = self.transform(images, targets)
        maps = self.raw_outputs(batch.tensors)
        if self.training:
            assert targets is not None
            return yolov3_loss(
                maps, self.anchors, self.strides, targets, ignore_thresh=self.ignore_thresh
            )
        detections = self.postprocess_detections(maps, batch.image_sizes)
        return self.transform.postprocess(detections, batch.image_sizes, original_sizes)

    @torch.no_grad()
    def postprocess_detections(
        self, maps: list[Tensor], image_sizes: list[tuple[int, int]]
    ) -> list[dict[str, Tensor]]:
        """Detections per image in network-input pixels (see the module docstring)."""
        preds = flatten_maps(maps, self.anchors.shape[1])
        grid, anchor_wh, stride = grid_priors(maps, self.anchors, self.strides)
        boxes_all = decode_boxes(preds[..., :4], grid, anchor_wh, stride)
        k = self.num_classes - 1
        out = []
        for boxes, pred, size in zip(boxes_all, preds, image_sizes, strict=True):
            obj = pred[:, 4].sigmoid()
            keep = obj >= self.conf_thresh
            boxes, obj, cls = boxes[keep], obj[keep], pred[keep, 5:].sigmoid()
            scores = (cls * obj[:, None]).flatten()
            idx = torch.nonzero(scores > self.score_thresh).squeeze(1)
            if idx.numel() > self.topk_candidates:
                idx = idx[scores[idx].topk(self.topk_candidates).indices]
            boxes = clip_boxes_to_image(boxes[idx // k], size)
            scores, labels = scores[idx], idx % k + 1
            kept = batched_nms(boxes, scores, labels, self.nms_thresh)[: self.detections_per_img]
            out.append({"boxes": boxes[kept], "scores": scores[kept], "labels": labels[kept]})
        return out
