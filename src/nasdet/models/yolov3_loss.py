"""YOLOv3's prediction layout, box decoding, target assignment and loss.

Layout: the head's map of a scale is (B, A * (5 + K), H, W); :func:`flatten_maps` makes all scales
one (B, N, 5 + K) tensor whose slot ``offset[level] + (y * W + x) * A + a`` is anchor ``a`` of cell
(x, y) at that level, levels fine to coarse. Attributes: ``t_x, t_y, t_w, t_h``, objectness,
K class logits.

Decoding (darknet's and MMDetection's ``YOLOBBoxCoder``): centre ``(cell + sigmoid(t_xy)) *
stride``, size ``anchor * exp(t_wh)`` (``t_wh`` clamped to log(1000 / 16) as torchvision's box
coder does), all in input pixels.

Target assignment (darknet's ``yolo_layer``, the paper's section 2.1), per image:

1. each ground-truth box goes to the anchor, among all 9 (all scales), whose shape best matches
   it: IoU of the two boxes centred on the same point (``(w, h)`` only);
2. at that anchor's scale it goes to the cell containing its centre, ``floor(centre / stride)``;
   that slot is positive: objectness target 1, ``t_xy`` target the centre's offset in the cell
   (clamped to [1e-6, 1 - 1e-6]), ``t_wh`` target ``log(box size / anchor size)``, class target
   one-hot of ``label - 1``. When two boxes land on the same slot, the later one in the target
   list keeps it (darknet overwrites in order too);
3. any other slot whose decoded prediction has an IoU above ``ignore_thresh`` (0.5, the paper's
   threshold; yolov3.cfg uses 0.7) with some ground-truth box of the image is ignored by the
   objectness loss; every remaining slot is negative (objectness target 0).

MMDetection's ``GridAssigner`` differs: it ranks the 9 anchors placed at the centre's cells by
full IoU (not shape only), also makes positive any anchor in such a cell with IoU > 0.5, and
ignores by anchor IoU, not prediction IoU.

Loss (MMDetection's YOLOV3Head terms and weights): ``loss_xy`` = 2 x BCE-with-logits(t_xy),
``loss_wh`` = 2 x squared error(t_wh), ``loss_cls`` = BCE-with-logits over the K classes, all on
positive slots; ``loss_obj`` = BCE-with-logits of objectness over positive and negative slots.
Each term is summed over slots and images, then divided by the number of images (MMDetection sums
over the batch without dividing; darknet's ``(2 - w * h)`` box-loss scale is not applied).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor
from torchvision.ops import box_iou

XY_EPS = 1e-6
MAX_LOG_WH = math.log(1000.0 / 16)
LOSS_WEIGHTS = {"loss_xy": 2.0, "loss_wh": 2.0, "loss_obj": 1.0, "loss_cls": 1.0}


def flatten_maps(maps: Sequence[Tensor], num_anchors: int) -> Tensor:
    """(B, A*(5+K), H, W) per level -> (B, N, 5+K), slots ordered as the module docstring says."""
    out = []
    for m in maps:
        b, c, h, w = m.shape
        m = m.view(b, num_anchors, c // num_anchors, h, w).permute(0, 3, 4, 1, 2)
        out.append(m.reshape(b, h * w * num_anchors, c // num_anchors))
    return torch.cat(out, dim=1)


def grid_priors(
    maps: Sequence[Tensor], anchors: Tensor, strides: Sequence[int]
) -> tuple[Tensor, Tensor, Tensor]:
    """Per slot: its cell (x, y) (N, 2), its anchor's (w, h) in pixels (N, 2), its stride (N, 1)."""
    cells, sizes, steps = [], [], []
    num_anchors = anchors.shape[1]
    for m, wh, stride in zip(maps, anchors, strides, strict=True):
        h, w = m.shape[-2:]
        ys, xs = torch.meshgrid(
            torch.arange(h, device=m.device), torch.arange(w, device=m.device), indexing="ij"
        )
        cell = torch.stack([xs, ys], dim=-1).to(m.dtype)[:, :, None, :]
        cells.append(cell.expand(h, w, num_anchors, 2).reshape(-1, 2))
        sizes.append(wh.to(m.dtype)[None, None].expand(h, w, num_anchors, 2).reshape(-1, 2))
        steps.append(torch.full((h * w * num_anchors, 1), float(stride), device=m.device))
    return torch.cat(cells), torch.cat(sizes), torch.cat(steps).to(maps[0].dtype)


def decode_boxes(t: Tensor, cell: Tensor, anchor_wh: Tensor, stride: Tensor) -> Tensor:
    """(..., N, 4) raw ``t_x, t_y, t_w, t_h`` -> (..., N, 4) boxes x1, y1, x2, y2 in pixels."""
    centre = (cell + t[..., :2].sigmoid()) * stride
    size = anchor_wh * t[..., 2:4].clamp(max=MAX_LOG_WH).exp()
    return torch.cat([centre - size / 2, centre + size / 2], dim=-1)


@dataclass(frozen=True)
class Assignment:
    """Positive slots of one image, one row per kept ground-truth box (see the module docstring).

    ``slot`` indexes :func:`flatten_maps`'s N; ``level``, ``cell_x``, ``cell_y``, ``anchor`` say
    where it is; ``gt_index`` is the box's row in the targets; ``txy``/``twh`` the regression
    targets (M, 2)."""

    slot: Tensor
    level: Tensor
    cell_x: Tensor
    cell_y: Tensor
    anchor: Tensor
    gt_index: Tensor
    txy: Tensor
    twh: Tensor


def shape_iou(wh_a: Tensor, wh_b: Tensor) -> Tensor:
    """IoU of boxes of sizes (n, 2) and (m, 2) sharing one centre: (n, m)."""
    inter = torch.minimum(wh_a[:, None], wh_b[None]).prod(-1)
    return inter / (wh_a.prod(-1)[:, None] + wh_b.prod(-1)[None] - inter)


def assign_targets(
    gt_boxes: Tensor,
    anchors: Tensor,
    strides: Sequence[int],
    map_sizes: Sequence[tuple[int, int]],
) -> Assignment:
    """Darknet's assignment of ``gt_boxes`` (n, 4; x1, y1, x2, y2 in input pixels) to slots.

    ``anchors`` is (levels, A, 2) in pixels, ``map_sizes`` the (H, W) of each level's map.
    """
    num_anchors = anchors.shape[1]
    wh = (gt_boxes[:, 2:] - gt_boxes[:, :2]).clamp(min=XY_EPS)
    best = shape_iou(wh, anchors.reshape(-1, 2).to(wh)).argmax(dim=1)
    level, anchor = best // num_anchors, best % num_anchors
    stride = torch.tensor(strides, dtype=wh.dtype, device=wh.device)[level]
    heights = torch.tensor([s[0] for s in map_sizes], device=wh.device)[level]
    widths = torch.tensor([s[1] for s in map_sizes], device=wh.device)[level]
    centre = (gt_boxes[:, :2] + gt_boxes[:, 2:]) / 2 / stride[:, None]
    cell_x = centre[:, 0].floor().long().clamp(min=0).minimum(widths - 1)
    cell_y = centre[:, 1].floor().long().clamp(min=0).minimum(heights - 1)
    sizes = torch.tensor([h * w * num_anchors for h, w in map_sizes], device=wh.device)
    offsets = torch.cumsum(sizes, 0) - sizes
    slot = offsets[level] + (cell_y * widths + cell_x) * num_anchors + anchor
    # one box per slot: the last one listed wins
    order = torch.arange(len(slot), device=slot.device)
    winner = torch.full((int(sizes.sum()),), -1, dtype=torch.long, device=slot.device)
    winner.scatter_reduce_(0, slot, order, reduce="amax")
    keep = winner[slot] == order
    txy = centre - torch.stack([cell_x, cell_y], dim=1).to(centre)
    twh = torch.log(wh / anchors[level, anchor].to(wh))
    return Assignment(
        slot=slot[keep],
        level=level[keep],
        cell_x=cell_x[keep],
        cell_y=cell_y[keep],
        anchor=anchor[keep],
        gt_index=order[keep],
        txy=txy[keep].clamp(XY_EPS, 1 - XY_EPS),
        twh=twh[keep],
    )


def yolov3_loss(
    maps: Sequence[Tensor],
    anchors: Tensor,
    strides: Sequence[int],
    targets: Sequence[dict[str, Tensor]],
    *,
    ignore_thresh: float = 0.5,
) -> dict[str, Tensor]:
    """YOLOv3's losses (see the module docstring) for the head's ``maps`` and ``targets`` (boxes
    in input pixels, ``labels`` in 1..K). Returns ``loss_xy``, ``loss_wh``, ``loss_obj``,
    ``loss_cls``, each weighted and per image."""
    preds = flatten_maps(maps, anchors.shape[1])
    batch, _, attribs = preds.shape
    num_classes = attribs - 5
    cell, anchor_wh, stride = grid_priors(maps, anchors, strides)
    with torch.no_grad():
        boxes = decode_boxes(preds[..., :4].detach(), cell, anchor_wh, stride)
    sizes = [(int(m.shape[-2]), int(m.shape[-1])) for m in maps]
    obj_target = torch.zeros(preds.shape[:2], dtype=preds.dtype, device=preds.device)
    obj_weight = torch.ones_like(obj_target)
    positives, txy, twh, classes = [], [], [], []
    for b, target in enumerate(targets):
        gt, labels = target["boxes"].to(preds.dtype), target["labels"]
        if gt.numel() == 0:
            continue
        if int(labels.min()) < 1 or int(labels.max()) > num_classes:
            raise ValueError(f"target labels must be in 1..{num_classes}, got {labels.tolist()}")
        obj_weight[b, box_iou(boxes[b], gt).amax(dim=1) > ignore_thresh] = 0.0
        a = assign_targets(gt, anchors, strides, sizes)
        obj_target[b, a.slot] = 1.0
        obj_weight[b, a.slot] = 1.0
        positives.append(preds[b, a.slot])
        txy.append(a.txy)
        twh.append(a.twh)
        classes.append(F.one_hot(labels[a.gt_index] - 1, num_classes).to(preds.dtype))
    obj = F.binary_cross_entropy_with_logits(preds[..., 4], obj_target, reduction="none")
    losses = {"loss_obj": (obj * obj_weight).sum()}
    if positives:
        pos = torch.cat(positives)
        losses["loss_xy"] = F.binary_cross_entropy_with_logits(
            pos[:, :2], torch.cat(txy), reduction="sum"
        )
        losses["loss_wh"] = F.mse_loss(pos[:, 2:4], torch.cat(twh), reduction="sum")
        losses["loss_cls"] = F.binary_cross_entropy_with_logits(
            pos[:, 5:], torch.cat(classes), reduction="sum"
        )
    else:  # no box in the batch: zero, but still attached to the graph
        zero = preds.sum() * 0.0
        losses.update(loss_xy=zero, loss_wh=zero, loss_cls=zero)
    return {k: losses[k] * LOSS_WEIGHTS[k] / batch for k in LOSS_WEIGHTS}
