"""CocoDetectionDataset, transforms, split_indices and collate."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader
from torchvision import tv_tensors
from torchvision.transforms import v2

from nasdet.data import (
    CocoDetectionDataset,
    collate,
    eval_transforms,
    make_digits,
    split_indices,
    train_transforms,
)
from nasdet.errors import DataError

# Non-contiguous category ids, listed out of order: labels follow increasing id (3, 7, 42).
CATEGORIES = [{"id": 42, "name": "zebra"}, {"id": 3, "name": "cat"}, {"id": 7, "name": "dog"}]
IMAGES = [
    {"id": 10, "file_name": "a.png", "width": 64, "height": 48},
    {"id": 11, "file_name": "empty.png", "width": 32, "height": 32},
    {"id": 5, "file_name": "sub/b.png", "width": 40, "height": 40},
]
ANNOTATIONS = [
    {"id": 1, "image_id": 10, "category_id": 42, "bbox": [2, 3, 10, 10], "area": 100, "iscrowd": 0},
    {"id": 2, "image_id": 10, "category_id": 3, "bbox": [20, 5, 10, 10], "area": 100, "iscrowd": 1},
    {"id": 3, "image_id": 10, "category_id": 7, "bbox": [5, 5, 0, 8], "area": 0, "iscrowd": 0},
    {"id": 4, "image_id": 10, "category_id": 7, "bbox": [50, 40, 30, 20], "area": 600,
     "iscrowd": 0},
    {"id": 5, "image_id": 5, "category_id": 3, "bbox": [1.5, 2.5, 20, 10]},  # no iscrowd / area
]


def write_coco(root: Path, data: dict | None = None) -> tuple[Path, Path]:
    """Write the hand-made set (or ``data``) under ``root``; return (images dir, ann file)."""
    data = data or {"images": IMAGES, "annotations": ANNOTATIONS, "categories": CATEGORIES}
    for img in data["images"]:
        path = root / "images" / img["file_name"]
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (img["width"], img["height"]), (200, 30, 90)).save(path)
    ann = root / "instances.json"
    ann.write_text(json.dumps(data))
    return root / "images", ann


@pytest.fixture
def coco(tmp_path: Path) -> tuple[Path, Path]:
    return write_coco(tmp_path)


def test_attributes_and_label_mapping(coco: tuple[Path, Path]) -> None:
    ds = CocoDetectionDataset(*coco, train=False)
    assert ds.cat_ids == [3, 7, 42]
    assert ds.categories == ["cat", "dog", "zebra"]
    assert ds.image_ids == [5, 10, 11] and len(ds) == 3
    image, target = ds[1]
    assert target["image_id"] == 10
    originals = [a["category_id"] for a in ANNOTATIONS if a["image_id"] == 10]
    assert [ds.cat_ids[label - 1] for label in target["labels"].tolist()] == originals
    assert target["labels"].dtype == torch.int64


def test_item_types(coco: tuple[Path, Path]) -> None:
    image, target = CocoDetectionDataset(*coco, train=True)[1]
    assert isinstance(image, tv_tensors.Image) and image.dtype == torch.float32
    assert image.shape == (3, 48, 64)
    assert 0.0 <= image.min() and image.max() <= 1.0
    boxes = target["boxes"]
    assert isinstance(boxes, tv_tensors.BoundingBoxes) and boxes.dtype == torch.float32
    assert boxes.format == tv_tensors.BoundingBoxFormat.XYXY and boxes.canvas_size == (48, 64)
    assert isinstance(target["image_id"], int)


def test_train_drops_crowd_and_degenerate_and_clamps(coco: tuple[Path, Path]) -> None:
    _, target = CocoDetectionDataset(*coco, train=True)[1]
    assert target["boxes"].tolist() == [[2, 3, 12, 13], [50, 40, 64, 48]]
    assert target["labels"].tolist() == [3, 2]
    assert "iscrowd" not in target


def test_eval_keeps_crowd_and_returns_iscrowd(coco: tuple[Path, Path]) -> None:
    _, target = CocoDetectionDataset(*coco, train=False)[1]
    assert len(target["boxes"]) == 4
    assert target["iscrowd"].tolist() == [0, 1, 0, 0]
    assert target["iscrowd"].dtype == torch.int64
    _, target = CocoDetectionDataset(*coco, train=False)[0]  # annotation without iscrowd
    assert target["iscrowd"].tolist() == [0]
    assert target["boxes"].tolist() == [[1.5, 2.5, 21.5, 12.5]]


@pytest.mark.parametrize("train", [True, False])
def test_images_without_annotations_are_kept(coco: tuple[Path, Path], train: bool) -> None:
    image, target = CocoDetectionDataset(*coco, train=train)[2]
    assert target["image_id"] == 11 and image.shape == (3, 32, 32)
    assert isinstance(target["boxes"], tv_tensors.BoundingBoxes)
    assert target["boxes"].shape == (0, 4) and target["labels"].shape == (0,)


def test_one_counted_warning_for_dropped_boxes(coco, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="nasdet"):
        CocoDetectionDataset(*coco, train=True)
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert "dropped 1 zero-area" in warnings[0].getMessage()


def test_coco_gt_is_the_json_with_defaults(coco: tuple[Path, Path]) -> None:
    ds = CocoDetectionDataset(*coco, train=False)
    gt = ds.coco_gt()
    original = json.loads(coco[1].read_text())
    assert gt["images"] == original["images"] and gt["categories"] == original["categories"]
    assert len(gt["annotations"]) == len(ANNOTATIONS)
    assert gt["annotations"][4]["iscrowd"] == 0 and gt["annotations"][4]["area"] == 200
    gt["annotations"].clear()
    assert len(ds.coco_gt()["annotations"]) == len(ANNOTATIONS)


def test_coco_gt_of_some_images(coco: tuple[Path, Path]) -> None:
    ds = CocoDetectionDataset(*coco, train=False)
    gt = ds.coco_gt([5, 11])
    assert [img["id"] for img in gt["images"]] == [11, 5]  # in the JSON's order
    assert [ann["id"] for ann in gt["annotations"]] == [5]
    assert gt["annotations"][0]["iscrowd"] == 0 and gt["annotations"][0]["area"] == 200
    assert gt["categories"] == ds.coco_gt()["categories"]  # every category, for the AP mean
    gt["images"][0]["width"] = 1
    assert ds.coco_gt([11])["images"][0]["width"] == 32  # a copy
    with pytest.raises(ValueError, match="image id 99 is not in"):
        ds.coco_gt([10, 99])


def test_fatal_problem_raises_data_error(tmp_path: Path) -> None:
    data = {"images": IMAGES, "annotations": ANNOTATIONS + [
        {"id": 9, "image_id": 10, "category_id": 99, "bbox": [1, 1, 2, 2]},
        {"id": 9, "image_id": 10, "category_id": 3, "bbox": [1, 1, 2, 2]},
    ], "categories": CATEGORIES}
    images, ann = write_coco(tmp_path, data)
    with pytest.raises(DataError) as err:
        CocoDetectionDataset(images, ann, train=True)
    message = str(err.value)
    assert "annotation 9" in message and "\n" not in message
    assert f"(and 1 more; run `nasdet data check --coco {ann} --images {images}`)" in message


def test_digits_set_loads_with_non_contiguous_ids(tmp_path: Path) -> None:
    root = make_digits(tmp_path, train=4, val=2, seed=1)
    ds = CocoDetectionDataset(root / "images", root / "annotations" / "instances_train.json",
                              train=True)
    assert ds.cat_ids == [2 * d + 1 for d in range(10)]
    anns = json.loads((root / "annotations" / "instances_train.json").read_text())["annotations"]
    for i, image_id in enumerate(ds.image_ids):
        _, target = ds[i]
        expected = [a["category_id"] for a in anns if a["image_id"] == image_id]
        assert [ds.cat_ids[label - 1] for label in target["labels"].tolist()] == expected
        assert 1 <= target["labels"].min() and target["labels"].max() <= 10


def test_transforms_flip_only_when_asked(coco: tuple[Path, Path]) -> None:
    assert not any(isinstance(t, v2.RandomHorizontalFlip) for t in train_transforms().transforms)
    assert not any(isinstance(t, v2.RandomHorizontalFlip) for t in eval_transforms().transforms)
    ds = CocoDetectionDataset(*coco, train=True, transforms=train_transforms(hflip=1.0))
    _, target = ds[1]
    assert target["boxes"].tolist() == [[52, 3, 62, 13], [0, 40, 14, 48]]
    with pytest.raises(ValueError):
        train_transforms(hflip=1.5)


def test_collate_in_a_data_loader(coco: tuple[Path, Path]) -> None:
    loader = DataLoader(CocoDetectionDataset(*coco, train=True), batch_size=3, collate_fn=collate)
    images, targets = next(iter(loader))
    assert [tuple(im.shape) for im in images] == [(3, 40, 40), (3, 48, 64), (3, 32, 32)]
    assert [t["image_id"] for t in targets] == [5, 10, 11]


def test_split_indices() -> None:
    kept, carved = split_indices(100, 0.2, seed=0)
    assert len(carved) == 20 and sorted(kept + carved) == list(range(100))
    assert split_indices(100, 0.2, seed=0) == (kept, carved)
    assert split_indices(100, 0.2, seed=1) != (kept, carved)
    assert split_indices(10, 0.0, seed=0) == (list(range(10)), [])
    assert [len(p) for p in split_indices(2, 0.01, seed=0)] == [1, 1]
    assert [len(p) for p in split_indices(3, 0.99, seed=0)] == [1, 2]
    for bad in (1.0, -0.1, 1.5):
        with pytest.raises(ValueError, match="fraction"):
            split_indices(10, bad, seed=0)
    with pytest.raises(ValueError):
        split_indices(1, 0.5, seed=0)
