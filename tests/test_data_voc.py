"""VOCDetectionDataset on a hand-made Pascal VOC layout."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from pycocotools.coco import COCO
from torchvision import tv_tensors

from nasdet.data import VOC_CLASSES, VOCDetectionDataset
from nasdet.errors import DataError

# (name, xmin, ymin, xmax, ymax, difficult) in VOC's 1-based pixel indices.
Obj = tuple[str, int, int, int, int, int]


def xml_text(filename: str, size: tuple[int, int] | None, objects: list[Obj]) -> str:
    parts = [f"<annotation><folder>VOC</folder><filename>{filename}</filename>"]
    if size:
        parts.append(f"<size><width>{size[0]}</width><height>{size[1]}</height>"
                     "<depth>3</depth></size>")
    for name, x1, y1, x2, y2, difficult in objects:
        parts.append(f"<object><name>{name}</name><pose>Left</pose><truncated>0</truncated>"
                     f"<difficult>{difficult}</difficult><bndbox><xmin>{x1}</xmin>"
                     f"<ymin>{y1}</ymin><xmax>{x2}</xmax><ymax>{y2}</ymax></bndbox></object>")
    return "".join(parts) + "</annotation>"


def write_voc(root: Path, images: dict[str, tuple[str, tuple[int, int], list[Obj]]],
              sets: dict[str, list[str]]) -> Path:
    """Write images ``{id: (file name, (w, h), objects)}`` and image sets under ``root``."""
    for sub in ("Annotations", "JPEGImages", "ImageSets/Main"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    for image_id, (filename, size, objects) in images.items():
        Image.new("RGB", size, (10, 120, 200)).save(root / "JPEGImages" / filename)
        (root / "Annotations" / f"{image_id}.xml").write_text(xml_text(filename, size, objects))
    for name, ids in sets.items():
        (root / "ImageSets" / "Main" / f"{name}.txt").write_text("".join(f"{i}\n" for i in ids))
    return root


IMAGES = {
    "000001": ("000001.jpg", (60, 50), [("dog", 10, 12, 30, 40, 0), ("person", 1, 1, 60, 50, 1)]),
    "000002": ("000002.jpg", (40, 40), []),
    "000003": ("000003.png", (30, 20), [("person", 2, 2, 10, 10, 0)]),
}


@pytest.fixture
def voc(tmp_path: Path) -> Path:
    return write_voc(tmp_path, IMAGES, {"train": list(IMAGES), "val": ["000002"]})


def test_attributes(voc: Path) -> None:
    ds = VOCDetectionDataset(voc, "train", train=True)
    assert ds.categories == list(VOC_CLASSES) and ds.cat_ids == list(range(1, 21))
    assert ds.image_ids == [0, 1, 2] and len(ds) == 3
    assert ds.voc_ids == ["000001", "000002", "000003"]
    assert len(VOCDetectionDataset(voc, "val", train=False)) == 1


def test_train_item_drops_difficult(voc: Path) -> None:
    image, target = VOCDetectionDataset(voc, "train", train=True)[0]
    assert isinstance(image, tv_tensors.Image) and image.dtype == torch.float32
    assert image.shape == (3, 50, 60)
    assert isinstance(target["boxes"], tv_tensors.BoundingBoxes)
    assert target["boxes"].canvas_size == (50, 60)
    assert target["boxes"].tolist() == [[9, 11, 30, 40]]  # 1-based indices -> continuous px
    assert target["labels"].tolist() == [VOC_CLASSES.index("dog") + 1]
    assert target["image_id"] == 0 and "difficult" not in target


def test_eval_item_returns_difficult(voc: Path) -> None:
    _, target = VOCDetectionDataset(voc, "train", train=False)[0]
    assert target["boxes"].tolist() == [[9, 11, 30, 40], [0, 0, 60, 50]]
    assert target["labels"].tolist() == [12, 15]
    assert target["difficult"].dtype == torch.bool
    assert target["difficult"].tolist() == [False, True]


@pytest.mark.parametrize("train", [True, False])
def test_empty_image_kept_and_png_found_via_xml(voc: Path, train: bool) -> None:
    ds = VOCDetectionDataset(voc, "train", train=train)
    _, target = ds[1]
    assert target["boxes"].shape == (0, 4) and target["labels"].shape == (0,)
    image, _ = ds[2]
    assert image.shape == (3, 20, 30)


def test_custom_classes(voc: Path) -> None:
    ds = VOCDetectionDataset(voc, "train", train=False, classes=["person", "dog"])
    assert ds.categories == ["person", "dog"] and ds.cat_ids == [1, 2]
    assert ds[0][1]["labels"].tolist() == [2, 1]


def test_unknown_class_is_data_error_naming_the_xml(voc: Path) -> None:
    with pytest.raises(DataError, match=r"000001\.xml.*unknown class 'dog'"):
        VOCDetectionDataset(voc, "train", train=True, classes=["person"])


def test_missing_image_set_is_data_error(voc: Path) -> None:
    with pytest.raises(DataError, match="nasdet data check --voc"):
        VOCDetectionDataset(voc, "test", train=False)


def test_voc_gt(voc: Path) -> None:
    gt = VOCDetectionDataset(voc, "train", train=True).voc_gt()
    assert len(gt) == 3
    boxes, labels, difficult = gt[0]
    assert boxes.dtype == np.float32 and labels.dtype == np.int64 and difficult.dtype == bool
    np.testing.assert_array_equal(boxes, [[9, 11, 30, 40], [0, 0, 60, 50]])
    assert labels.tolist() == [12, 15] and difficult.tolist() == [False, True]
    assert gt[1][0].shape == (0, 4)


def test_coco_gt_marks_difficult_ignored(voc: Path) -> None:
    gt = VOCDetectionDataset(voc, "train", train=True).coco_gt()
    assert [img["id"] for img in gt["images"]] == [0, 1, 2]
    assert gt["images"][0] == {"id": 0, "file_name": "JPEGImages/000001.jpg", "width": 60,
                               "height": 50}
    dog, person = gt["annotations"][:2]
    assert dog["bbox"] == [9, 11, 21, 29] and dog["category_id"] == 12 and "ignore" not in dog
    assert person["iscrowd"] == 1 and person["ignore"] == 1  # COCO evaluators ignore crowd
    assert [c["id"] for c in gt["categories"]] == list(range(1, 21))
    coco = COCO()
    coco.dataset = gt
    coco.createIndex()  # evaluators can index it
    assert len(coco.getAnnIds(imgIds=[0])) == 2


def test_coco_gt_of_some_images(voc: Path) -> None:
    ds = VOCDetectionDataset(voc, "train", train=True)
    gt = ds.coco_gt([2, 1])
    assert [img["id"] for img in gt["images"]] == [1, 2]
    assert [(a["id"], a["image_id"], a["category_id"]) for a in gt["annotations"]] == [(1, 2, 15)]
    assert gt["categories"] == ds.coco_gt()["categories"]
    with pytest.raises(ValueError, match="image id 3 is not in"):
        ds.coco_gt([3])


def test_zero_area_box_dropped_in_training_with_one_warning(tmp_path: Path, caplog) -> None:
    images = {"a": ("a.jpg", (20, 20), [("cat", 5, 5, 4, 9, 0), ("cat", 2, 2, 8, 8, 0)])}
    root = write_voc(tmp_path, images, {"train": ["a"]})
    with caplog.at_level(logging.WARNING, logger="nasdet"):
        ds = VOCDetectionDataset(root, "train", train=True)
    assert len([r for r in caplog.records if r.levelno == logging.WARNING]) == 1
    assert "dropped 1 zero-area boxes" in caplog.records[0].getMessage()
    assert ds[0][1]["boxes"].tolist() == [[1, 1, 8, 8]]
    assert len(VOCDetectionDataset(root, "train", train=False)[0][1]["boxes"]) == 2
