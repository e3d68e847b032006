"""The bundled digits generators: format, determinism, disjoint pools, tight boxes."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from nasdet.data import digits as digits_mod
from nasdet.data.digits import (
    ALPHA_THRESHOLD,
    DIGIT_CATEGORY_IDS,
    MAX_DIGITS,
    MAX_SIDE,
    MIN_SIDE,
    digit_alpha,
    digit_pools,
    ensure_digits,
    ensure_digits_classification,
    make_digits,
    make_digits_classification,
    tight_box,
)
from nasdet.errors import DataError

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


# ---------------------------------------------------------------------- atomic generation


SAVE_PNG = digits_mod._save_png


class Killed(Exception):
    """Stands for a kill in the middle of writing a set."""


def _die_after(monkeypatch: pytest.MonkeyPatch, n: int) -> list[Path]:
    """Make the image writer raise after ``n`` images; returns the list of paths written."""
    written: list[Path] = []
    save = SAVE_PNG

    def save_then_die(image: Image.Image, path: Path) -> None:
        if len(written) == n:
            raise Killed
        save(image, path)
        written.append(path)

    monkeypatch.setattr(digits_mod, "_save_png", save_then_die)
    return written


def _siblings(path: Path) -> list[str]:
    return sorted(p.name for p in path.parent.iterdir() if p.name != path.name)


def _make_cls(root: Path) -> Path:
    return make_digits_classification(root, per_class_train=2, per_class_val=1, size=16, seed=5)


def _ensure_cls(root: Path) -> Path:
    return ensure_digits_classification(root, per_class_train=2, per_class_val=1, size=16, seed=5)


def _make_det(root: Path) -> Path:
    return make_digits(root, train=3, val=2, size=32, seed=5)


def _ensure_det(root: Path) -> Path:
    return ensure_digits(root, train=3, val=2, size=32, seed=5)


SETS = [(_make_cls, _ensure_cls), (_make_det, _ensure_det)]


@pytest.mark.parametrize(("make", "ensure"), SETS)
def test_a_killed_generation_leaves_nothing_and_is_redone(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, make, ensure
) -> None:
    reference = _files(make(tmp_path / "reference"))
    root = tmp_path / "work" / "set"
    for generate in (make, ensure):
        written = _die_after(monkeypatch, 3)
        with pytest.raises(Killed):
            generate(root)
        assert len(written) == 3  # it was killed mid-way ...
        assert not root.exists()  # ... and the target does not exist
        assert _siblings(root) == []  # nor does the half-written temporary folder
    monkeypatch.undo()

    assert ensure(root) == root
    assert _files(root) == reference


@pytest.mark.parametrize(("make", "ensure"), SETS)
def test_existing_sets_are_reused_or_replaced(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, make, ensure
) -> None:
    reference = _files(make(tmp_path / "reference"))
    root = make(tmp_path / "work" / "set")
    _die_after(monkeypatch, 0)
    assert ensure(root) == root  # complete, same arguments: nothing is written
    monkeypatch.undo()
    (root / "extra.txt").write_text("x")
    assert make(root) == root  # make writes afresh and replaces the set
    assert _files(root) == reference and _siblings(root) == []


def test_ensure_replaces_a_set_made_with_other_arguments(tmp_path: Path) -> None:
    root = make_digits_classification(tmp_path / "set", per_class_train=1, per_class_val=1,
                                      size=16, seed=5)
    assert _files(_ensure_cls(root)) == _files(_make_cls(tmp_path / "reference"))


@pytest.mark.parametrize(("make", "ensure"), SETS)
def test_a_folder_that_is_not_a_digits_set_is_left_alone(tmp_path: Path, make, ensure) -> None:
    root = tmp_path / "mine"
    root.mkdir()
    (root / "notes.txt").write_text("keep me")
    for generate in (make, ensure):
        with pytest.raises(DataError, match="not a digits set written by nasdet"):
            generate(root)
    assert _files(root) == {"notes.txt": b"keep me"} and _siblings(root) == []
    empty = tmp_path / "empty"
    empty.mkdir()
    assert make(empty) == empty and (empty / "nasdet-digits.json").is_file()


@pytest.mark.parametrize(("make", "ensure"), SETS)
def test_concurrent_calls_give_one_complete_set(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, make, ensure
) -> None:
    reference = _files(make(tmp_path / "reference"))
    root = tmp_path / "shared" / "set"
    both_writing = threading.Barrier(3, timeout=60)
    save = SAVE_PNG
    first = threading.local()

    def save_together(image: Image.Image, path: Path) -> None:
        if not getattr(first, "done", False):  # every writer holds here until all are writing
            first.done = True
            both_writing.wait()
        save(image, path)

    monkeypatch.setattr(digits_mod, "_save_png", save_together)
    results: list[object] = []

    def run(generate) -> None:
        try:
            results.append(generate(root))
        except Exception as e:  # reported by the assertion below
            results.append(e)

    threads = [threading.Thread(target=run, args=(g,)) for g in (ensure, ensure, make)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert results == [root, root, root]
    assert _files(root) == reference and _siblings(root) == []


def test_a_hard_kill_leaves_no_target(tmp_path: Path) -> None:
    root = tmp_path / "work" / "set"
    code = (
        "import sys; from nasdet.data.digits import ensure_digits_classification as e; "
        "e(sys.argv[1], per_class_train=400, per_class_val=1, size=16, seed=5)"
    )
    proc = subprocess.Popen([sys.executable, "-c", code, str(root)])
    try:
        deadline = time.monotonic() + 120
        while not any(len(list(t.rglob("*.png"))) >= 20 for t in root.parent.glob(".set.*.tmp")):
            assert proc.poll() is None and time.monotonic() < deadline, "never got mid-way"
            time.sleep(0.05)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait()
    assert not root.exists()
    assert [p.suffix for p in root.parent.iterdir()] == [".tmp"]  # what a hard kill leaves
    assert _files(_ensure_cls(root)) == _files(_make_cls(tmp_path / "reference"))
