"""Tests of nasdet.engine.voc_eval against hand-computed values and a py-faster-rcnn transcript."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from nasdet.engine.voc_eval import evaluate_voc, voc_ap
from nasdet.errors import DataError


def _gt(boxes: list[list[float]], labels: list[int], difficult: list[bool] | None = None) -> tuple:
    difficult = [False] * len(labels) if difficult is None else difficult
    return (
        np.array(boxes, dtype=np.float64).reshape(-1, 4),
        np.array(labels, dtype=np.int64),
        np.array(difficult, dtype=bool),
    )


def _det(boxes: list[list[float]], scores: list[float], labels: list[int]) -> tuple:
    return (
        np.array(boxes, dtype=np.float64).reshape(-1, 4),
        np.array(scores),
        np.array(labels, dtype=np.int64),
    )


EMPTY_DET = _det([], [], [])

# --- voc_ap ----------------------------------------------------------------------------------

# Three detections by decreasing score, TP, FP, TP, on a class with 3 positives:
# recall 1/3, 1/3, 2/3 and precision 1, 1/2, 2/3.
# Area (VOC2010+): envelope 1 on (0, 1/3], 2/3 on (1/3, 2/3], 0 after -> 1/3 + 2/9 = 5/9.
# 11-point (VOC2007): recall >= 0, .1, .2, .3 -> 1; >= .4, .5, .6 -> 2/3; >= .7 .. 1 -> 0
# -> (4 + 3 * 2/3) / 11 = 6/11.
REC3 = np.array([1 / 3, 1 / 3, 2 / 3])
PREC3 = np.array([1.0, 1 / 2, 2 / 3])


def test_voc_ap_hand_computed_curve() -> None:
    assert voc_ap(REC3, PREC3, use_07_metric=False) == pytest.approx(5 / 9)
    assert voc_ap(REC3, PREC3, use_07_metric=True) == pytest.approx(6 / 11)


def test_voc_ap_edge_cases() -> None:
    assert voc_ap(np.zeros(0), np.zeros(0), use_07_metric=False) == 0.0
    assert voc_ap(np.zeros(0), np.zeros(0), use_07_metric=True) == 0.0
    assert voc_ap(np.array([0.5, 1.0]), np.array([1.0, 1.0]), use_07_metric=False) == 1.0
    assert voc_ap(np.array([0.5, 1.0]), np.array([1.0, 1.0]), use_07_metric=True) == 1.0
    # A recall of exactly 0.3 reaches the 0.3 threshold (np.arange(0, 1.1, 0.1) would miss it).
    rec = np.array([1, 2, 3]) / 10
    assert voc_ap(rec, np.ones(3), use_07_metric=True) == pytest.approx(4 / 11)
    with pytest.raises(ValueError, match="shape"):
        voc_ap(np.zeros(2), np.zeros(3), use_07_metric=False)


# --- evaluate_voc: hand-computed -------------------------------------------------------------


@pytest.mark.parametrize(("use_07", "expected"), [(False, 5 / 9), (True, 6 / 11)])
def test_three_detection_curve(use_07: bool, expected: float) -> None:
    gt = [_gt([[0, 0, 9, 9]], [1]), _gt([[20, 20, 29, 29], [40, 40, 49, 49]], [1, 1])]
    dets = [
        _det([[0, 0, 9, 9]], [0.9], [1]),
        _det([[100, 100, 110, 110], [20, 20, 29, 29]], [0.8, 0.7], [1, 1]),
    ]
    result = evaluate_voc(gt, dets, num_classes=3, use_07_metric=use_07)
    assert result["per_class_ap"][0] == pytest.approx(expected)
    assert result["per_class_ap"][1] is None  # class 2 has no ground truth: excluded
    assert result["mAP50"] == pytest.approx(expected)


def test_difficult_boxes_are_ignored() -> None:
    # Class 1: a normal and a difficult box; the top detection hits the difficult one.
    # Class 2: only a difficult box, so it has no positives and no AP.
    gt = [_gt([[0, 0, 9, 9], [50, 50, 69, 69], [100, 0, 119, 19]], [1, 1, 2], [False, True, True])]
    dets = [_det([[50, 50, 69, 69], [0, 0, 9, 9], [100, 0, 119, 19]], [0.95, 0.9, 0.8], [1, 1, 2])]
    result = evaluate_voc(gt, dets, num_classes=3)
    assert result["per_class_ap"] == [pytest.approx(1.0), None]
    assert result["mAP50"] == pytest.approx(1.0)
    # The same boxes without the difficult flags: the detection is a TP, recall 1/2 at top.
    gt_plain = [_gt(gt[0][0].tolist(), [1, 1, 2])]
    assert evaluate_voc(gt_plain, dets, num_classes=3)["per_class_ap"][0] == pytest.approx(1.0)
    dets_fp = [_det([[200, 200, 220, 220], [0, 0, 9, 9]], [0.95, 0.9], [1, 1])]
    # FP then TP on 2 positives: recall 0, 1/2; precision 0, 1/2 -> area 1/2 * 1/2.
    assert evaluate_voc(gt_plain, dets_fp, num_classes=3)["per_class_ap"][0] == pytest.approx(0.25)


@pytest.mark.parametrize(
    ("use_07", "expected"), [(False, 0.5 + 0.5 * 2 / 3), (True, (6 + 5 * 2 / 3) / 11)]
)
def test_duplicate_detection_is_a_false_positive(use_07: bool, expected: float) -> None:
    # TP, duplicate (FP), TP on 2 positives: recall 1/2, 1/2, 1; precision 1, 1/2, 2/3.
    gt = [_gt([[0, 0, 9, 9]], [1]), _gt([[0, 0, 9, 9]], [1])]
    dets = [
        _det([[0, 0, 9, 9], [0, 0, 9, 9]], [0.9, 0.8], [1, 1]),
        _det([[0, 0, 9, 9]], [0.7], [1]),
    ]
    result = evaluate_voc(gt, dets, num_classes=2, use_07_metric=use_07)
    assert result["mAP50"] == pytest.approx(expected)


def test_best_box_taken_is_a_false_positive_even_if_another_overlaps() -> None:
    # py-faster-rcnn compares a detection with its highest-IoU box only.
    gt = [_gt([[0, 0, 99, 99], [10, 0, 109, 99]], [1, 1])]
    dets = [_det([[0, 0, 99, 99], [2, 0, 101, 99]], [0.9, 0.8], [1, 1])]
    # second detection: IoU 0.96 with the taken box 1, 0.85 with box 2 -> FP, recall stays 1/2
    assert evaluate_voc(gt, dets, num_classes=2)["mAP50"] == pytest.approx(0.5)


def test_pixel_offset_and_strict_threshold() -> None:
    gt = [_gt([[0, 0, 9, 9]], [1])]
    # +1: 10 x 5.5 / 100 = 0.55 > 0.5 (TP); continuous: 9 x 4.5 / 81 = 0.5, not > 0.5 (FP).
    dets = [_det([[0, 0, 9, 4.5]], [0.9], [1])]
    assert evaluate_voc(gt, dets, num_classes=2, pixel_offset=1.0)["mAP50"] == 1.0
    assert evaluate_voc(gt, dets, num_classes=2)["mAP50"] == 0.0  # default: continuous boxes
    # IoU exactly 0.5 (10 x 5 / 100 with +1) is not a match.
    dets = [_det([[0, 0, 9, 4]], [0.9], [1])]
    assert evaluate_voc(gt, dets, num_classes=2, pixel_offset=1.0)["mAP50"] == 0.0
    assert evaluate_voc(gt, dets, num_classes=2, pixel_offset=1.0, iou_threshold=0.4)[
        "mAP50"
    ] == pytest.approx(1.0)


def test_continuous_boxes_reproduce_devkit_ious() -> None:
    # Raw inclusive XML boxes with +1 give the same result as nasdet's continuous
    # (xmin - 1, ymin - 1, xmax, ymax) boxes without it.
    raw_gt = [_gt([[1, 1, 10, 10], [30, 5, 41, 20]], [1, 1])]
    raw_dets = [_det([[1, 1, 10, 5], [30, 5, 41, 13], [31, 6, 41, 20]], [0.9, 0.8, 0.7], [1, 1, 1])]
    shift = np.array([-1.0, -1.0, 0.0, 0.0])
    cont_gt = [(raw_gt[0][0] + shift, *raw_gt[0][1:])]
    cont_dets = [(raw_dets[0][0] + shift, *raw_dets[0][1:])]
    for use_07 in (False, True):
        raw = evaluate_voc(raw_gt, raw_dets, 2, use_07_metric=use_07, pixel_offset=1.0)
        cont = evaluate_voc(cont_gt, cont_dets, 2, use_07_metric=use_07)
        assert raw == cont
        assert 0.0 < raw["mAP50"] < 1.0


def test_classes_without_detections_or_ground_truth() -> None:
    gt = [_gt([[0, 0, 9, 9], [20, 20, 39, 39]], [1, 2]), _gt([], [])]
    dets = [_det([[0, 0, 9, 9]], [0.9], [1]), _det([[0, 0, 9, 9]], [0.3], [3])]
    result = evaluate_voc(gt, dets, num_classes=4)
    # class 1 perfect, class 2 missed (0, counted), class 3 has only a false positive, no GT.
    assert result["per_class_ap"] == [1.0, 0.0, None]
    assert result["mAP50"] == pytest.approx(0.5)
    assert math.isnan(evaluate_voc([_gt([], [])], [EMPTY_DET], num_classes=2)["mAP50"])


def test_accepts_tensors() -> None:
    gt = [(torch.tensor([[0.0, 0, 9, 9]]), torch.tensor([1]), torch.tensor([False]))]
    dets = [(torch.tensor([[0.0, 0, 9, 9]]), torch.tensor([0.5]), torch.tensor([1]))]
    assert evaluate_voc(gt, dets, num_classes=2)["mAP50"] == 1.0


def test_errors() -> None:
    gt = [_gt([[0, 0, 9, 9]], [1])]
    with pytest.raises(DataError, match="1 ground-truth images but 2 detection entries"):
        evaluate_voc(gt, [EMPTY_DET, EMPTY_DET], num_classes=2)
    with pytest.raises(DataError, match=r"detections\[0\] has label 2, outside 1..1"):
        evaluate_voc(gt, [_det([[0, 0, 9, 9]], [0.9], [2])], num_classes=2)
    with pytest.raises(DataError, match=r"gt\[0\] has label 0"):
        evaluate_voc([_gt([[0, 0, 9, 9]], [0])], [EMPTY_DET], num_classes=2)
    with pytest.raises(DataError, match=r"detections\[0\] boxes has shape \(1, 3\)"):
        evaluate_voc(gt, [(np.zeros((1, 3)), np.ones(1), np.ones(1, dtype=int))], num_classes=2)
    with pytest.raises(DataError, match="1 boxes, 2 scores"):
        evaluate_voc(gt, [_det([[0, 0, 9, 9]], [0.9, 0.8], [1])], num_classes=2)


# --- against a transcript of py-faster-rcnn's voc_eval --------------------------------------


def _reference_voc_eval(gt: list, dets: list, cls: int, use_07: bool) -> float:
    """py-faster-rcnn ``voc_eval`` for one class, transcribed (stable sort for ties)."""
    recs = {}
    npos = 0
    for i, (boxes, labels, diff) in enumerate(gt):
        sel = labels == cls
        recs[i] = {"bbox": boxes[sel], "difficult": diff[sel], "det": [False] * int(sel.sum())}
        npos += int((~diff[sel]).sum())
    image_ids, confidence, bb = [], [], []
    for i, (boxes, scores, labels) in enumerate(dets):
        for box, score in zip(boxes[labels == cls], scores[labels == cls], strict=True):
            image_ids.append(i)
            confidence.append(score)
            bb.append(box)
    order = np.argsort(-np.array(confidence), kind="stable")
    tp, fp = np.zeros(len(order)), np.zeros(len(order))
    for d, k in enumerate(order):
        r, b = recs[image_ids[k]], bb[k]
        ovmax, bbgt = -np.inf, r["bbox"]
        if bbgt.size > 0:
            iw = np.maximum(np.minimum(bbgt[:, 2], b[2]) - np.maximum(bbgt[:, 0], b[0]) + 1.0, 0)
            ih = np.maximum(np.minimum(bbgt[:, 3], b[3]) - np.maximum(bbgt[:, 1], b[1]) + 1.0, 0)
            inters = iw * ih
            uni = (
                (b[2] - b[0] + 1.0) * (b[3] - b[1] + 1.0)
                + (bbgt[:, 2] - bbgt[:, 0] + 1.0) * (bbgt[:, 3] - bbgt[:, 1] + 1.0)
                - inters
            )
            overlaps = inters / uni
            ovmax, jmax = np.max(overlaps), np.argmax(overlaps)
        if ovmax > 0.5:
            if not r["difficult"][jmax]:
                if not r["det"][jmax]:
                    tp[d] = 1.0
                    r["det"][jmax] = True
                else:
                    fp[d] = 1.0
        else:
            fp[d] = 1.0
    fp, tp = np.cumsum(fp), np.cumsum(tp)
    rec = tp / float(npos)
    prec = tp / np.maximum(tp + fp, np.finfo(np.float64).eps)
    return voc_ap(rec, prec, use_07_metric=use_07)


@pytest.mark.parametrize("use_07", [False, True])
def test_matches_py_faster_rcnn_on_random_data(use_07: bool) -> None:
    rng = np.random.default_rng(0)
    gt, dets = [], []
    for _ in range(30):
        n = int(rng.integers(0, 6))
        xy = rng.uniform(0, 300, (n, 2)).round()
        boxes = np.concatenate([xy, xy + rng.uniform(5, 150, (n, 2)).round()], axis=1)
        labels = rng.integers(1, 4, n)
        gt.append((boxes, labels, rng.random(n) < 0.2))
        keep = rng.random(n) < 0.8
        noisy = boxes[keep] + rng.normal(0, 6, (int(keep.sum()), 4))
        extra = rng.uniform(0, 400, (int(rng.integers(0, 4)), 2))
        extra = np.concatenate([extra, extra + 40], axis=1)
        d_boxes = np.concatenate([noisy, noisy[:1] + 2, extra])
        d_labels = np.concatenate([labels[keep], labels[keep][:1], rng.integers(1, 4, len(extra))])
        dets.append((d_boxes, rng.random(len(d_boxes)), d_labels))
    result = evaluate_voc(gt, dets, num_classes=4, use_07_metric=use_07, pixel_offset=1.0)
    expected = [_reference_voc_eval(gt, dets, c, use_07) for c in (1, 2, 3)]
    assert result["per_class_ap"] == pytest.approx(expected, abs=1e-12)
    assert 0.2 < result["mAP50"] < 0.95  # a non-trivial mix of TPs, FPs and misses
