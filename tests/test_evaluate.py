"""evaluate(): detector outputs -> COCO results -> stats, on COCO, VOC and subsets."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from test_data_voc import IMAGES, write_voc
from torch import nn
from torch.utils.data import Subset

from nasdet.data import CocoDetectionDataset, VOCDetectionDataset, eval_transforms
from nasdet.engine.coco_eval import detections_to_array, evaluate_coco
from nasdet.engine.evaluate import evaluate, predict, subset_indices


class Oracle(nn.Module):
    """A "detector" that returns the ground truth of each image it is given (by position)."""

    def __init__(self, dataset, indices: list[int], *, shift: float = 0.0, label_offset: int = 0):
        super().__init__()
        self.targets = [dataset[i][1] for i in indices]
        self.calls = 0
        self.shift, self.label_offset = shift, label_offset

    def forward(self, images):
        out = []
        for _ in images:
            t = self.targets[self.calls]
            self.calls += 1
            n = len(t["labels"])
            boxes = t["boxes"].as_subclass(torch.Tensor)
            size = (boxes[:, 2:] - boxes[:, :2]).repeat(1, 2)
            out.append(
                {
                    "boxes": boxes + self.shift * size,  # shift: a fraction of the box size
                    "scores": torch.linspace(1.0, 0.5, n),
                    "labels": (t["labels"] + self.label_offset - 1) % 10 + 1
                    if self.label_offset
                    else t["labels"],
                }
            )
        return out


def _val(digits_root: Path) -> CocoDetectionDataset:
    return CocoDetectionDataset(
        digits_root / "images",
        digits_root / "annotations" / "instances_val.json",
        train=False,
        transforms=eval_transforms(),
    )


def test_perfect_detections_score_one(digits_root: Path) -> None:
    val = _val(digits_root)
    stats = evaluate(Oracle(val, list(range(len(val)))), val, batch_size=5)
    assert stats["mAP"] == pytest.approx(1.0)
    assert stats["AR100"] == pytest.approx(1.0)


def test_wrong_class_scores_zero_and_shift_lowers_ap75(digits_root: Path) -> None:
    val = _val(digits_root)
    everything = list(range(len(val)))
    assert evaluate(Oracle(val, everything, label_offset=1), val)["mAP"] == 0.0
    # boxes moved by 10% of their size in x and y: IoU 0.81 / 1.19 = 0.68 with the truth
    shifted = evaluate(Oracle(val, everything, shift=0.1), val)
    assert shifted["AP50"] == pytest.approx(1.0)
    assert shifted["AP75"] == 0.0


def test_subset_is_scored_on_its_own_images(digits_root: Path) -> None:
    val = _val(digits_root)
    part = Subset(val, [5, 1, 7])
    assert subset_indices(Subset(part, [2, 0])) == [7, 5]
    # perfect on the subset's images: the other images' ground truth must not count as missed
    assert evaluate(Oracle(val, [5, 1, 7]), part)["mAP"] == pytest.approx(1.0)


def test_subset_stats_equal_the_full_ground_truth_restricted_by_img_ids(digits_root: Path) -> None:
    """evaluate() hands the evaluator only the subset's ground truth: the stats must be those of
    the whole set's ground truth with img_ids, for imperfect detections too."""
    val = _val(digits_root)
    indices = [9, 2, 4, 0]
    part = Subset(val, indices)
    outputs, image_ids = predict(Oracle(val, indices, shift=0.1), part)
    results = detections_to_array(outputs, image_ids, val.cat_ids)
    direct = evaluate_coco(val.coco_gt(), results, img_ids=image_ids)
    assert 0.0 < direct["mAP"] < 1.0
    assert evaluate(Oracle(val, indices, shift=0.1), part) == direct


def test_voc_adds_voc_ap_and_ignores_difficult(tmp_path: Path) -> None:
    root = write_voc(tmp_path, IMAGES, {"train": list(IMAGES)})
    ds = VOCDetectionDataset(root, "train", train=False, transforms=eval_transforms())
    # the oracle also "detects" the difficult person box: neither a hit nor a false positive
    stats = evaluate(Oracle(ds, list(range(len(ds)))), ds)
    assert stats["VOC_AP50"] == pytest.approx(1.0)
    assert stats["VOC07_AP50"] == pytest.approx(1.0)
    assert stats["mAP"] == pytest.approx(1.0)
