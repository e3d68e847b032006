"""Tests of nasdet.engine.coco_eval: backend agreement, hand-computable stats, errors."""

from __future__ import annotations

import copy
import json
import random
from pathlib import Path

import numpy as np
import pytest
import torch

from nasdet.engine.coco_eval import (
    STAT_KEYS,
    detections_to_array,
    detections_to_coco,
    evaluate_coco,
)
from nasdet.errors import DataError

FIXTURES = Path(__file__).parent / "fixtures"
MIXED_GT = FIXTURES / "coco_mixed_gt.json"
MIXED_DETS = FIXTURES / "coco_mixed_dets.json"
BACKENDS = ("faster", "pycocotools")


def _ann(ann_id: int, image_id: int, cat: int, box: list[float], crowd: int = 0) -> dict:
    return {
        "id": ann_id,
        "image_id": image_id,
        "category_id": cat,
        "bbox": box,
        "area": box[2] * box[3],
        "iscrowd": crowd,
    }


def _det(image_id: int, cat: int, box: list[float], score: float) -> dict:
    return {"image_id": image_id, "category_id": cat, "bbox": box, "score": score}


def _gt(anns: list[dict], n_images: int = 2, cat_ids: tuple[int, ...] = (3, 7)) -> dict:
    return {
        "images": [{"id": i, "width": 640, "height": 480} for i in range(1, n_images + 1)],
        "categories": [{"id": c, "name": f"c{c}"} for c in cat_ids],
        "annotations": anns,
    }


def _random_coco(seed: int, n_images: int = 40) -> tuple[dict, list[dict]]:
    """Small synthetic GT (crowd boxes, empty images, ids 2/5/9/17) and noisy detections."""
    rng = random.Random(seed)
    cat_ids = (2, 5, 9, 17)
    anns, dets = [], []
    for image_id in range(1, n_images + 1):
        for _ in range(rng.choice((0, 0, 1, 3, 6))):
            w, h = rng.uniform(4, 300), rng.uniform(4, 300)
            box = [rng.uniform(0, 640 - w), rng.uniform(0, 480 - h), w, h]
            cat = rng.choice(cat_ids)
            crowd = int(rng.random() < 0.08)
            anns.append(_ann(len(anns) + 1, image_id, cat, box, crowd))
            for _ in range(rng.choice((0, 1, 1, 2))):
                jit = [v + rng.gauss(0, 0.1) * s for v, s in zip(box, (w, h, w, h), strict=True)]
                jit[2], jit[3] = abs(jit[2]), abs(jit[3])
                wrong = rng.random() < 0.1
                dets.append(
                    _det(image_id, rng.choice(cat_ids) if wrong else cat, jit, rng.random())
                )
        for _ in range(rng.randint(0, 3)):
            w, h = rng.uniform(4, 200), rng.uniform(4, 200)
            dets.append(
                _det(
                    image_id,
                    rng.choice(cat_ids),
                    [rng.uniform(0, 600), rng.uniform(0, 400), w, h],
                    rng.random(),
                )
            )
    return _gt(anns, n_images, cat_ids), dets


def _assert_same(a: dict[str, float], b: dict[str, float], tol: float = 1e-12) -> None:
    assert list(a) == list(b) == list(STAT_KEYS)
    for key in STAT_KEYS:
        assert a[key] == pytest.approx(b[key], abs=tol), key


# --- the two backends agree -------------------------------------------------------------------


def test_backends_agree_on_hand_made_fixture() -> None:
    fast = evaluate_coco(MIXED_GT, MIXED_DETS, backend="faster")
    ref = evaluate_coco(MIXED_GT, MIXED_DETS, backend="pycocotools")
    _assert_same(fast, ref)
    assert 0.0 < fast["mAP"] < fast["AP50"] < 1.0  # a non-trivial operating point
    assert all(0.0 < fast[k] < 1.0 for k in STAT_KEYS)  # every area range has GT


@pytest.mark.parametrize("seed", [0, 1])
def test_backends_agree_on_random_data(seed: int) -> None:
    gt, dets = _random_coco(seed)
    _assert_same(
        evaluate_coco(gt, dets, backend="faster"), evaluate_coco(gt, dets, backend="pycocotools")
    )


def test_backends_agree_on_image_subset() -> None:
    kw = {"img_ids": [11, 12, 14]}
    _assert_same(
        evaluate_coco(MIXED_GT, MIXED_DETS, backend="faster", **kw),
        evaluate_coco(MIXED_GT, MIXED_DETS, backend="pycocotools", **kw),
    )


@pytest.mark.parametrize("backend", BACKENDS)
def test_empty_detections(backend: str) -> None:
    stats = evaluate_coco(MIXED_GT, [], backend=backend)
    assert stats == {k: 0.0 for k in STAT_KEYS}
    small_only = _gt([_ann(1, 1, 3, [0, 0, 10, 10])])
    stats = evaluate_coco(small_only, [], backend=backend)
    assert stats["AP_small"] == stats["mAP"] == stats["AR100"] == 0.0
    assert stats["AP_medium"] == stats["AP_large"] == stats["AR_large"] == -1.0


# --- hand-computable answers -----------------------------------------------------------------


@pytest.mark.parametrize("backend", BACKENDS)
def test_perfect_detections(backend: str) -> None:
    with MIXED_GT.open() as f:
        gt = json.load(f)
    dets = [
        _det(a["image_id"], a["category_id"], a["bbox"], 0.5 + a["id"] / 100)
        for a in gt["annotations"]
        if not a["iscrowd"]
    ]
    stats = evaluate_coco(gt, dets, backend=backend)
    for key in STAT_KEYS:
        if key != "AR1":
            assert stats[key] == pytest.approx(1.0, abs=1e-12), key
    # AR1 keeps one detection per image and category: image 10 has two persons, 11 two cars,
    # 12 two dogs, so recall is person 3/4, car 2/3, dog 2/3, kite 2/2.
    assert stats["AR1"] == pytest.approx((3 / 4 + 2 / 3 + 2 / 3 + 1) / 4)


@pytest.mark.parametrize("backend", BACKENDS)
def test_all_detections_on_the_wrong_class(backend: str) -> None:
    gt = _gt([_ann(1, 1, 3, [0, 0, 50, 50]), _ann(2, 2, 7, [10, 10, 200, 200])])
    dets = [_det(1, 7, [0, 0, 50, 50], 0.9), _det(2, 3, [10, 10, 200, 200], 0.8)]
    stats = evaluate_coco(gt, dets, backend=backend)
    assert stats["AP_small"] == -1.0
    assert all(stats[k] == 0.0 for k in STAT_KEYS if k not in ("AP_small", "AR_small"))


@pytest.mark.parametrize("backend", BACKENDS)
def test_ap50_perfect_but_ap75_partial(backend: str) -> None:
    # Image 1: exact hit (IoU 1). Image 2: a 100x62 box on a 100x100 GT (IoU 0.62), lower score.
    gt = _gt([_ann(1, 1, 3, [0, 0, 100, 100]), _ann(2, 2, 3, [0, 0, 100, 100])])
    dets = [_det(1, 3, [0, 0, 100, 100], 0.9), _det(2, 3, [0, 0, 100, 62], 0.8)]
    stats = evaluate_coco(gt, dets, backend=backend)
    # IoU thresholds 0.50, 0.55, 0.60: both TP, AP 1. From 0.65 on: recall 1/2 at precision 1,
    # so 51 of the 101 recall points (0.00..0.50) have precision 1.
    half = 51 / 101
    assert stats["AP50"] == 1.0
    assert stats["AP75"] == pytest.approx(half)
    assert stats["mAP"] == pytest.approx((3 * 1.0 + 7 * half) / 10)
    assert stats["AP_large"] == pytest.approx(stats["mAP"])
    assert stats["AR100"] == stats["AR1"] == pytest.approx((3 * 1.0 + 7 * 0.5) / 10)
    assert stats["AP_small"] == stats["AP_medium"] == stats["AR_small"] == -1.0


@pytest.mark.parametrize("backend", BACKENDS)
def test_detection_on_crowd_box_is_ignored(backend: str) -> None:
    gt = _gt([_ann(1, 1, 3, [0, 0, 100, 100]), _ann(2, 1, 3, [200, 0, 300, 300], crowd=1)])
    dets = [_det(1, 3, [250, 50, 100, 100], 0.95), _det(1, 3, [0, 0, 100, 100], 0.9)]
    assert evaluate_coco(gt, dets, backend=backend)["mAP"] == pytest.approx(1.0)
    del gt["annotations"][1]  # without the crowd box, the first detection is a false positive
    assert evaluate_coco(gt, dets, backend=backend)["AP50"] == pytest.approx(0.5)


@pytest.mark.parametrize("backend", BACKENDS)
def test_img_ids_restricts_the_evaluation(backend: str) -> None:
    gt = _gt([_ann(1, 1, 3, [0, 0, 100, 100]), _ann(2, 2, 3, [0, 0, 100, 100])])
    dets = [_det(1, 3, [0, 0, 100, 100], 0.9), _det(2, 7, [0, 0, 100, 100], 0.99)]
    assert evaluate_coco(gt, dets, backend=backend, img_ids=[1])["mAP"] == pytest.approx(1.0)
    assert evaluate_coco(gt, dets, backend=backend, img_ids=[2])["mAP"] == 0.0


def test_inputs_untouched_and_nothing_printed(capfd: pytest.CaptureFixture[str]) -> None:
    gt, dets = _random_coco(3, n_images=5)
    gt["annotations"][0]["id"] = 0  # pycocotools would treat id 0 as "unmatched"
    gt_copy, dets_copy = copy.deepcopy(gt), copy.deepcopy(dets)
    for backend in BACKENDS:
        evaluate_coco(gt, dets, backend=backend)
        evaluate_coco(gt, [], backend=backend)
    assert gt == gt_copy and dets == dets_copy
    out, err = capfd.readouterr()
    assert out == ""


# --- errors ----------------------------------------------------------------------------------


def test_detection_on_unknown_image_or_category(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"detections: entry 1 has image_id 99\b"):
        evaluate_coco(MIXED_GT, [_det(10, 3, [0, 0, 5, 5], 0.5), _det(99, 3, [0, 0, 5, 5], 0.5)])
    path = tmp_path / "results.json"
    path.write_text(json.dumps([_det(10, 4, [0, 0, 5, 5], 0.5)]))
    with pytest.raises(DataError, match=rf"{path}: entry 0 has category_id 4\b"):
        evaluate_coco(MIXED_GT, path, backend="pycocotools")


@pytest.mark.parametrize(
    ("det", "pattern"),
    [
        ({"image_id": 10, "category_id": 3, "bbox": [0, 0, 5, 5]}, r"lacks \['score'\]"),
        ({"image_id": 10, "category_id": 3, "bbox": [0, 0, 5], "score": 0.5}, "bbox"),
        ({"image_id": 10, "category_id": 3, "bbox": [0, 0, -5, 5], "score": 0.5}, "bbox"),
        ({"image_id": 10, "category_id": 3, "bbox": [0, 0, 5, 5], "score": float("nan")}, "score"),
    ],
)
def test_malformed_detection(det: dict, pattern: str) -> None:
    with pytest.raises(DataError, match=pattern):
        evaluate_coco(MIXED_GT, [det])


def test_malformed_files(tmp_path: Path) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text('{"images": [')
    with pytest.raises(DataError, match=rf"{bad}: not valid JSON"):
        evaluate_coco(bad, [])
    with pytest.raises(DataError, match=rf"{bad}: not valid JSON"):
        evaluate_coco(MIXED_GT, bad)
    with pytest.raises(DataError, match="missing.json: file not found"):
        evaluate_coco(tmp_path / "missing.json", [])
    no_anns = tmp_path / "no_anns.json"
    no_anns.write_text(json.dumps({"images": [], "categories": []}))
    with pytest.raises(DataError, match=rf"{no_anns}: missing 'annotations'"):
        evaluate_coco(no_anns, [])
    gt = _gt([_ann(1, 1, 3, [0, 0, 5, 5])])
    del gt["annotations"][0]["area"]
    with pytest.raises(DataError, match=r"ground truth: annotations\[0\] lacks \['area'\]"):
        evaluate_coco(gt, [])
    with pytest.raises(DataError, match="img_ids contains 5"):
        evaluate_coco(_gt([]), [], img_ids=[1, 5])


# --- detections_to_coco ----------------------------------------------------------------------


def test_detections_to_coco_maps_labels_and_boxes() -> None:
    outputs = [
        {
            "boxes": torch.tensor([[10.25, 20.5, 30.75, 60.125], [0.0, 0.0, 1.5, 2.5]]),
            "scores": torch.tensor([0.75, 0.25]),
            "labels": torch.tensor([2, 1]),
        },
        {
            "boxes": torch.zeros((0, 4)),
            "scores": torch.zeros(0),
            "labels": torch.zeros(0, dtype=torch.int64),
        },
    ]
    results = detections_to_coco(outputs, [42, 43], cat_ids=[5, 90])
    assert results == [
        {"image_id": 42, "category_id": 90, "bbox": [10.25, 20.5, 20.5, 39.625], "score": 0.75},
        {"image_id": 42, "category_id": 5, "bbox": [0.0, 0.0, 1.5, 2.5], "score": 0.25},
    ]
    with pytest.raises(DataError, match="label 3, outside 1..2"):
        detections_to_coco([dict(outputs[0], labels=torch.tensor([3, 1]))], [1], [5, 90])
    # label 0 is torchvision's background (RetinaNet/FCOS may emit it): dropped, not mapped
    background = detections_to_coco([dict(outputs[0], labels=torch.tensor([0, 1]))], [7], [5, 90])
    assert background == [
        {"image_id": 7, "category_id": 5, "bbox": [0.0, 0.0, 1.5, 2.5], "score": 0.25}
    ]
    with pytest.raises(DataError, match="^detections_to_coco: 2 outputs but 1 image ids"):
        detections_to_coco(outputs, [1], [5, 90])
    with pytest.raises(DataError, match="^detections_to_array: image 1 has label 3, outside"):
        detections_to_array([dict(outputs[0], labels=torch.tensor([3, 1]))], [1], [5, 90])


def test_detections_to_coco_round_trip_is_perfect() -> None:
    with MIXED_GT.open() as f:
        gt = json.load(f)
    cat_ids = [c["id"] for c in gt["categories"]]
    outputs, image_ids = [], []
    for image in gt["images"]:
        anns = [a for a in gt["annotations"] if a["image_id"] == image["id"] and not a["iscrowd"]]
        xyxy = [[x, y, x + w, y + h] for x, y, w, h in (a["bbox"] for a in anns)]
        outputs.append(
            {
                "boxes": torch.tensor(xyxy, dtype=torch.float32).reshape(-1, 4),
                "scores": torch.linspace(0.9, 0.5, len(anns)),
                "labels": torch.tensor(
                    [cat_ids.index(a["category_id"]) + 1 for a in anns], dtype=torch.int64
                ),
            }
        )
        image_ids.append(image["id"])
    stats = evaluate_coco(gt, detections_to_coco(outputs, image_ids, cat_ids))
    assert stats["mAP"] == stats["AP75"] == stats["AR100"] == pytest.approx(1.0)


# --- detections as one (N, 7) array -------------------------------------------------------------


def _as_array(dets: list[dict]) -> np.ndarray:
    """pycocotools' result-array layout: image_id, x, y, w, h, score, category_id."""
    rows = [[d["image_id"], *d["bbox"], d["score"], d["category_id"]] for d in dets]
    return np.asarray(rows, dtype=np.float64).reshape(-1, 7)


@pytest.mark.parametrize("backend", BACKENDS)
def test_array_detections_score_exactly_like_dicts(backend: str) -> None:
    gt, dets = _random_coco(3)
    kw = {"backend": backend, "img_ids": [1, 2, 5, 8, 13, 21, 34]}
    assert evaluate_coco(gt, _as_array(dets), **kw) == evaluate_coco(gt, dets, **kw)
    assert evaluate_coco(gt, _as_array(dets), backend=backend) == evaluate_coco(
        gt, dets, backend=backend
    )
    empty = evaluate_coco(gt, np.zeros((0, 7)), backend=backend)
    assert empty == evaluate_coco(gt, [], backend=backend)


def test_detections_to_array_is_detections_to_coco() -> None:
    gen = torch.Generator().manual_seed(0)
    outputs = []
    for n in (5, 0, 17):
        xy = torch.rand(n, 2, generator=gen) * 100
        wh = torch.rand(n, 2, generator=gen) * 50
        scores = torch.rand(n, generator=gen)
        labels = torch.randint(0, 4, (n,), generator=gen)
        outputs.append({"boxes": torch.cat([xy, xy + wh], 1), "scores": scores, "labels": labels})
    cat_ids = [4, 9, 11]
    array = detections_to_array(outputs, [3, 1, 2], cat_ids)
    dicts = detections_to_coco(outputs, [3, 1, 2], cat_ids)
    assert array.shape == (len(dicts), 7) and array.dtype == np.float64
    assert [[d["image_id"], *d["bbox"], d["score"], d["category_id"]] for d in dicts] == (
        array.tolist()
    )
    with pytest.raises(DataError, match="label 4, outside 1..3"):
        detections_to_array([dict(outputs[0], labels=torch.full((5,), 4))], [1], cat_ids)


@pytest.mark.parametrize(
    ("row", "pattern"),
    [
        ([99, 0, 0, 5, 5, 0.5, 3], r"detections: entry 1 has image_id 99\b"),
        ([10.5, 0, 0, 5, 5, 0.5, 3], r"entry 1 has image_id 10.5\b"),
        ([10, 0, 0, 5, 5, 0.5, 4], r"entry 1 has category_id 4\b"),
        ([10, 0, 0, -5, 5, 0.5, 3], r"entry 1 has bbox \[0.0, 0.0, -5.0, 5.0\]"),
        ([10, 0, float("inf"), 5, 5, 0.5, 3], r"entry 1 has bbox"),
        ([10, 0, 0, 5, 5, float("nan"), 3], r"entry 1 has score nan"),
    ],
)
def test_malformed_detection_array(row: list[float], pattern: str) -> None:
    good = [10, 0, 0, 5, 5, 0.5, 3]
    with pytest.raises(DataError, match=pattern):
        evaluate_coco(MIXED_GT, np.asarray([good, row], dtype=np.float64))


def test_detection_array_of_the_wrong_shape() -> None:
    with pytest.raises(DataError, match=r"detections: an array of results must be \(N, 7\)"):
        evaluate_coco(MIXED_GT, np.zeros((3, 6)))
