"""PASCAL VOC detection AP, following py-faster-rcnn's ``voc_eval`` (the VOC devkit's logic).

Conventions (those of py-faster-rcnn / the devkit unless said otherwise):

- **The +1 pixel.** The devkit reads boxes as inclusive integer pixel indices, so a width is
  ``xmax - xmin + 1`` and IoUs carry the same ``+ 1``. nasdet's VOC loader stores continuous
  boxes ``(xmin - 1, ymin - 1, xmax, ymax)`` (``nasdet.data._vocxml``), whose plain width
  ``x2 - x1`` already *is* the devkit's ``xmax - xmin + 1``: on those boxes (and on detector
  outputs, which are continuous) the plain IoU equals the devkit's, so the default is
  ``pixel_offset=0.0``. Pass ``pixel_offset=1.0`` for raw XML coordinates, as py-faster-rcnn does.
- **Matching.** Per class, detections are taken by decreasing score (stable sort: ties keep their
  input order, image by image). Each is compared with the ground-truth box of highest IoU in its
  image; it is a true positive when that IoU is strictly greater than ``iou_threshold`` and the
  box is not yet taken, a false positive when the box is taken (duplicate) or the IoU is too low.
  A detection whose best box is *difficult* is neither: it is dropped from the PR curve.
- **Difficult** boxes do not count towards the number of positives.
- **AP.** ``use_07_metric=True`` is VOC2007's 11-point interpolated AP (mean of the max precision
  at recall >= 0, 0.1, ..., 1); otherwise the VOC2010+ area under the monotone PR envelope.
  The 11 thresholds are exactly ``k / 10`` (py-faster-rcnn's ``np.arange(0, 1.1, 0.1)`` makes
  0.3, 0.6 and 0.7 slightly larger, so a recall of exactly 0.3 missed its threshold).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from nasdet.errors import DataError

__all__ = ["evaluate_voc", "voc_ap"]

logger = logging.getLogger(__name__)

GtImage = tuple[Any, Any, Any]
"""``(boxes (N, 4) XYXY, labels (N,) int, difficult (N,) bool)`` for one image."""
DetImage = tuple[Any, Any, Any]
"""``(boxes (M, 4) XYXY, scores (M,), labels (M,) int)`` for one image."""


def voc_ap(recall: np.ndarray, precision: np.ndarray, *, use_07_metric: bool) -> float:
    """Average precision of one class from its cumulative PR curve.

    Args:
        recall: recall after each detection, by decreasing score (non-decreasing, in [0, 1]).
        precision: precision after each detection, same length.
        use_07_metric: VOC2007 11-point interpolation if true, else the VOC2010+ area under the
            interpolated (monotone non-increasing) PR curve.

    Returns:
        AP as a fraction in [0, 1]; 0.0 for an empty curve.
    """
    recall = np.asarray(recall, dtype=np.float64).reshape(-1)
    precision = np.asarray(precision, dtype=np.float64).reshape(-1)
    if recall.shape != precision.shape:
        raise ValueError(f"recall {recall.shape} and precision {precision.shape} differ in shape")
    if use_07_metric:
        total = 0.0
        for k in range(11):
            above = recall >= k / 10
            total += float(precision[above].max()) if above.any() else 0.0
        return total / 11
    mrec = np.concatenate(([0.0], recall, [1.0]))
    mpre = np.concatenate(([0.0], precision, [0.0]))
    mpre = np.maximum.accumulate(mpre[::-1])[::-1]  # precision envelope, right to left
    steps = np.flatnonzero(mrec[1:] != mrec[:-1])
    return float(np.sum((mrec[steps + 1] - mrec[steps]) * mpre[steps + 1]))


def _box_iou(box: np.ndarray, boxes: np.ndarray, pixel_offset: float) -> np.ndarray:
    """IoU of one XYXY ``box`` (4,) with ``boxes`` (G, 4), widths ``x2 - x1 + pixel_offset``."""
    iw = np.minimum(boxes[:, 2], box[2]) - np.maximum(boxes[:, 0], box[0]) + pixel_offset
    ih = np.minimum(boxes[:, 3], box[3]) - np.maximum(boxes[:, 1], box[1]) + pixel_offset
    inter = np.maximum(iw, 0.0) * np.maximum(ih, 0.0)
    area = (box[2] - box[0] + pixel_offset) * (box[3] - box[1] + pixel_offset)
    areas = (boxes[:, 2] - boxes[:, 0] + pixel_offset) * (boxes[:, 3] - boxes[:, 1] + pixel_offset)
    return inter / (area + areas - inter)


def _array(value: Any, dtype: Any, shape_tail: tuple[int, ...], what: str) -> np.ndarray:
    arr = np.asarray(value, dtype=dtype)
    if arr.size == 0:
        return arr.reshape((0, *shape_tail))
    if arr.ndim != 1 + len(shape_tail) or arr.shape[1:] != shape_tail:
        expected = "(N, 4)" if shape_tail else "(N,)"
        raise DataError(f"{what} has shape {arr.shape}; expected {expected}")
    return arr


def _check_labels(labels: np.ndarray, num_classes: int, what: str) -> None:
    if labels.size and (labels.min() < 1 or labels.max() >= num_classes):
        bad = labels[(labels < 1) | (labels >= num_classes)][0]
        raise DataError(
            f"{what} has label {int(bad)}, outside 1..{num_classes - 1}; num_classes "
            "counts the background (K + 1), labels are 1..K"
        )


def _match_image(
    gt_boxes: np.ndarray,
    gt_difficult: np.ndarray,
    det_boxes: np.ndarray,
    iou_threshold: float,
    pixel_offset: float,
) -> tuple[np.ndarray, np.ndarray]:
    """Greedy VOC matching of one image and class; detections must be sorted by score.

    Returns boolean ``(tp, fp)`` of shape (M,); a detection that is neither hit a difficult box.
    """
    tp = np.zeros(len(det_boxes), dtype=bool)
    fp = np.zeros(len(det_boxes), dtype=bool)
    if len(gt_boxes) == 0:
        fp[:] = True
        return tp, fp
    taken = np.zeros(len(gt_boxes), dtype=bool)
    for d, box in enumerate(det_boxes):
        ious = _box_iou(box, gt_boxes, pixel_offset)
        best = int(np.argmax(ious))
        if ious[best] > iou_threshold:
            if gt_difficult[best]:
                continue
            if taken[best]:
                fp[d] = True
            else:
                tp[d] = taken[best] = True
        else:
            fp[d] = True
    return tp, fp


def evaluate_voc(
    gt: Sequence[GtImage],
    detections: Sequence[DetImage],
    num_classes: int,
    *,
    iou_threshold: float = 0.5,
    use_07_metric: bool = False,
    pixel_offset: float = 0.0,
) -> dict[str, Any]:
    """VOC mAP over a dataset, per py-faster-rcnn (see the module docstring for conventions).

    Args:
        gt: per image ``(boxes (N, 4) XYXY pixels, labels (N,) in 1..K, difficult (N,) bool)``.
        detections: per image, same order as ``gt``, ``(boxes (M, 4) XYXY pixels, scores (M,),
            labels (M,) in 1..K)``. Numpy arrays or CPU tensors.
        num_classes: ``K + 1``, counting the background as every nasdet detector does.
        iou_threshold: a detection matches when IoU > this (strictly), 0.5 for VOC.
        use_07_metric: VOC2007 11-point AP instead of the VOC2010+ area under the PR curve.
        pixel_offset: added to widths and heights: 0.0 for continuous boxes (nasdet's VOC
            loader, detector outputs), 1.0 for the raw inclusive pixel indices of VOC XML.

    Returns:
        ``{"mAP50": float, "per_class_ap": list[float | None]}``: ``per_class_ap[i]`` is the AP
        of label ``i + 1`` as a fraction, ``None`` for a class without non-difficult ground truth
        (excluded from the mean). ``mAP50`` is NaN when no class has ground truth. The key says
        "50" for the default threshold; it holds the mAP at ``iou_threshold`` whatever it is.

    Raises:
        DataError: ``gt`` and ``detections`` of different lengths, malformed arrays, or a label
            outside ``1..num_classes - 1``.
    """
    if len(gt) != len(detections):
        raise DataError(
            f"evaluate_voc: {len(gt)} ground-truth images but {len(detections)} "
            "detection entries; pass one (possibly empty) entry per image"
        )
    if num_classes < 2:
        raise DataError(
            f"evaluate_voc: num_classes={num_classes}; it counts the background, so "
            "it must be at least 2"
        )
    num_pos = np.zeros(num_classes, dtype=np.int64)
    # per class: lists of (scores, tp, fp) chunks, one per image, in image order
    chunks: list[list[tuple[np.ndarray, np.ndarray, np.ndarray]]] = [[] for _ in range(num_classes)]
    for i, ((g_boxes, g_labels, g_diff), (d_boxes, d_scores, d_labels)) in enumerate(
        zip(gt, detections, strict=True)
    ):
        g_boxes = _array(g_boxes, np.float64, (4,), f"gt[{i}] boxes")
        g_labels = _array(g_labels, np.int64, (), f"gt[{i}] labels")
        g_diff = _array(g_diff, bool, (), f"gt[{i}] difficult")
        d_boxes = _array(d_boxes, np.float64, (4,), f"detections[{i}] boxes")
        d_scores = _array(d_scores, np.float64, (), f"detections[{i}] scores")
        d_labels = _array(d_labels, np.int64, (), f"detections[{i}] labels")
        if not len(g_boxes) == len(g_labels) == len(g_diff):
            raise DataError(
                f"gt[{i}]: {len(g_boxes)} boxes, {len(g_labels)} labels and "
                f"{len(g_diff)} difficult flags; they must match"
            )
        if not len(d_boxes) == len(d_scores) == len(d_labels):
            raise DataError(
                f"detections[{i}]: {len(d_boxes)} boxes, {len(d_scores)} scores and "
                f"{len(d_labels)} labels; they must match"
            )
        _check_labels(g_labels, num_classes, f"gt[{i}]")
        _check_labels(d_labels, num_classes, f"detections[{i}]")
        np.add.at(num_pos, g_labels[~g_diff], 1)
        for c in np.unique(d_labels):
            sel = np.flatnonzero(d_labels == c)
            sel = sel[np.argsort(-d_scores[sel], kind="stable")]
            in_class = g_labels == c
            tp, fp = _match_image(
                g_boxes[in_class], g_diff[in_class], d_boxes[sel], iou_threshold, pixel_offset
            )
            chunks[c].append((d_scores[sel], tp, fp))

    per_class_ap: list[float | None] = []
    for c in range(1, num_classes):
        if num_pos[c] == 0:
            per_class_ap.append(None)
            continue
        if chunks[c]:
            scores = np.concatenate([s for s, _, _ in chunks[c]])
            order = np.argsort(-scores, kind="stable")
            is_tp = np.concatenate([t for _, t, _ in chunks[c]])[order]
            is_fp = np.concatenate([f for _, _, f in chunks[c]])[order]
            counted = is_tp | is_fp  # detections on difficult boxes leave the curve unchanged
            tp = np.cumsum(is_tp[counted])
            fp = np.cumsum(is_fp[counted])
            recall = tp / num_pos[c]
            precision = tp / (tp + fp)
        else:
            recall = precision = np.zeros(0)
        per_class_ap.append(voc_ap(recall, precision, use_07_metric=use_07_metric))

    valid = [ap for ap in per_class_ap if ap is not None]
    if not valid:
        logger.warning("evaluate_voc: no class has non-difficult ground truth; mAP is NaN")
    m_ap = float(np.mean(valid)) if valid else math.nan
    logger.debug(
        "VOC eval: %d images, %d classes with GT, mAP@%.2f %.4f (%s)",
        len(gt),
        len(valid),
        iou_threshold,
        m_ap,
        "07 11-point" if use_07_metric else "area",
    )
    return {"mAP50": m_ap, "per_class_ap": per_class_ap}
