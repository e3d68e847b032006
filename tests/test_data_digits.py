"""The bundled digits generators: format, determinism, disjoint pools, tight boxes."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from nasdet.data.digits import (
    ALPHA_THRESHOLD,
    DIGIT_CATEGORY_IDS,
    MAX_DIGITS,
    MAX_SIDE,
    MIN_SIDE,
    digit_alpha,
    digit_pools,
    make_digits,
    make_digits_classification,
    tight_box,
)

TRAIN, VAL = 24, 8


@pytest.fixture(scope="module")
def digits(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_digits(tmp_path_factory.mktemp("digits"), train=TRAIN, val=VAL, seed=3)


def _load(root: Path, split: str) -> dict:
    return json.loads((root / "annotations" / f"instances_{split}.json").read_text())


def _files(root: Path) -> dict[str, bytes]:
    files = sorted(p for p in root.rglob("*") if p.is_file())
    return {str(p.relative_to(root)): p.read_bytes() for p in files}


def test_layout_and_coco_fields(digits: Path) -> None:
    train, val = _load(digits, "train"), _load(digits, "val")
    assert len(train["images"]) == TRAIN and len(val["images"]) == VAL
    names = [img["file_name"] for img in train["images"] + val["images"]]
    assert len(set(names)) == len(names)
    assert [c["id"] for c in train["categories"]] == [2 * d + 1 for d in range(10)]
    assert [c["name"] for c in train["categories"]] == [str(d) for d in range(10)]
    for img in train["images"]:
        assert set(img) >= {"id", "file_name", "width", "height"}
        with Image.open(digits / "images" / img["file_name"]) as im:
            assert im.size == (img["width"], img["height"]) == (128, 128)
            assert im.mode == "RGB"
    for ann in train["annotations"]:
        assert set(ann) >= {"id", "image_id", "category_id", "bbox", "area", "iscrowd"}
        assert ann["iscrowd"] == 0 and ann["category_id"] in DIGIT_CATEGORY_IDS
        assert all(isinstance(v, float) for v in ann["bbox"])
        assert ann["area"] == pytest.approx(ann["bbox"][2] * ann["bbox"][3])
    ann_ids = [a["id"] for a in train["annotations"]]
    assert len(set(ann_ids)) == len(ann_ids)


def test_boxes_inside_image_not_overlapping_and_counted(digits: Path) -> None:
    data = _load(digits, "train")
    per_image: dict[int, list[list[float]]] = {img["id"]: [] for img in data["images"]}
    for ann in data["annotations"]:
        x, y, w, h = ann["bbox"]
        assert 0 <= x and 0 <= y and x + w <= 128 and y + h <= 128
        assert 0 < w <= MAX_SIDE and 0 < h <= MAX_SIDE
        per_image[ann["image_id"]].append([x, y, x + w, y + h])
    counts = [len(b) for b in per_image.values()]
    assert min(counts) >= 1 and max(counts) <= MAX_DIGITS
    assert len(set(counts)) > 1  # several digits per image, not always the same number
    for boxes in per_image.values():
        for i, a in enumerate(boxes):
            for b in boxes[i + 1 :]:
                assert min(a[2], b[2]) <= max(a[0], b[0]) or min(a[3], b[3]) <= max(a[1], b[1])


def test_digit_colour_differs_from_background_inside_box(digits: Path) -> None:
    data = _load(digits, "train")
    ann = data["annotations"][0]
    img = next(i for i in data["images"] if i["id"] == ann["image_id"])
    pixels = np.asarray(Image.open(digits / "images" / img["file_name"]), dtype=np.float64)
    x, y, w, h = (int(v) for v in ann["bbox"])
    assert pixels[y : y + h, x : x + w].std(axis=(0, 1)).max() > 10  # strokes visible


def test_tight_box_is_tight() -> None:
    from sklearn.datasets import load_digits

    sample = load_digits().images[7] / 16.0
    for side in (MIN_SIDE, 30, MAX_SIDE):
        alpha = digit_alpha(sample, side)
        x, y, w, h = tight_box(alpha)
        inside = np.zeros_like(alpha, dtype=bool)
        inside[y : y + h, x : x + w] = True
        assert (alpha[~inside] <= ALPHA_THRESHOLD).all()
        for edge in (alpha[y, x : x + w], alpha[y + h - 1, x : x + w],
                     alpha[y : y + h, x], alpha[y : y + h, x + w - 1]):
            assert edge.max() > ALPHA_THRESHOLD
    with pytest.raises(ValueError):
        tight_box(np.zeros((8, 8)))


def test_pools_disjoint_stratified_and_seeded() -> None:
    train, val = digit_pools(0)
    assert not set(train) & set(val)
    assert len(train) + len(val) == 1797
    assert 0.15 < len(val) / 1797 < 0.25
    from sklearn.datasets import load_digits

    targets = load_digits().target
    assert set(targets[val]) == set(range(10)) == set(targets[train])
    assert np.array_equal(digit_pools(0)[1], val)
    assert not np.array_equal(digit_pools(1)[1], val)


def test_val_split_draws_only_from_val_pool(digits: Path) -> None:
    train_pool, val_pool = digit_pools(3)
    used_train = {a["sklearn_index"] for a in _load(digits, "train")["annotations"]}
    used_val = {a["sklearn_index"] for a in _load(digits, "val")["annotations"]}
    assert used_train <= set(train_pool.tolist())
    assert used_val <= set(val_pool.tolist())
    assert not used_train & used_val


def test_category_matches_the_drawn_digit(digits: Path) -> None:
    from sklearn.datasets import load_digits

    targets = load_digits().target
    for ann in _load(digits, "train")["annotations"]:
        assert ann["category_id"] == 2 * int(targets[ann["sklearn_index"]]) + 1


def test_deterministic_bytes(tmp_path: Path) -> None:
    a = _files(make_digits(tmp_path / "a", train=5, val=2, seed=11))
    b = _files(make_digits(tmp_path / "b", train=5, val=2, seed=11))
    c = _files(make_digits(tmp_path / "c", train=5, val=2, seed=12))
    assert a == b
    assert a.keys() == c.keys() and a != c


def test_bad_arguments(tmp_path: Path) -> None:
    with pytest.raises(ValueError):
        make_digits(tmp_path, train=-1)
    with pytest.raises(ValueError):
        make_digits(tmp_path, size=8)


def test_classification_layout_and_determinism(tmp_path: Path) -> None:
    out = make_digits_classification(tmp_path / "a", per_class_train=3, per_class_val=2, seed=5)
    for split, n in (("train", 3), ("val", 2)):
        assert sorted(p.name for p in (out / split).iterdir()) == [str(d) for d in range(10)]
        for d in range(10):
            files = sorted((out / split / str(d)).glob("*.png"))
            assert len(files) == n
            with Image.open(files[0]) as im:
                assert im.size == (32, 32) and im.mode == "RGB"
    again = make_digits_classification(tmp_path / "b", per_class_train=3, per_class_val=2, seed=5)
    assert _files(out) == _files(again)
