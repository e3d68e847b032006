"""The dataset checker: each problem kind is found on a hand-made broken fixture."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
from PIL import Image

from nasdet.data import Problem, check_coco, check_voc, make_digits

CLEAN = {
    "images": [
        {"id": 1, "file_name": "a.png", "width": 64, "height": 48},
        {"id": 2, "file_name": "b.jpg", "width": 32, "height": 32},
    ],
    "annotations": [
        {"id": 1, "image_id": 1, "category_id": 5, "bbox": [2, 3, 10, 10], "area": 100,
         "iscrowd": 0},
        {"id": 2, "image_id": 2, "category_id": 9, "bbox": [0, 0, 32, 32.5], "area": 1040,
         "iscrowd": 1},  # 0.5 px over the edge: within tolerance
    ],
    "categories": [{"id": 5, "name": "a"}, {"id": 9, "name": "b"}],
}


def write_coco(root: Path, data: dict | str = CLEAN) -> tuple[Path, Path]:
    (root / "images").mkdir(parents=True, exist_ok=True)
    for name, size in (("a.png", (64, 48)), ("b.jpg", (32, 32))):
        Image.new("RGB", size, (90, 160, 20)).save(root / "images" / name)
    ann = root / "instances.json"
    ann.write_text(data if isinstance(data, str) else json.dumps(data))
    return ann, root / "images"


def codes(problems: list[Problem]) -> list[tuple[str, bool]]:
    return [(p.code, p.fatal) for p in problems]


def broken(**changes: object) -> dict:
    """CLEAN with ``section=[records]`` replaced or ``section__i={...}`` merged into record i."""
    data = copy.deepcopy(CLEAN)
    for key, value in changes.items():
        if "__" in key:
            section, index = key.split("__")
            data[section][int(index)].update(value)  # type: ignore[arg-type]
        else:
            data[key] = value
    return data


def test_clean_sets_have_no_problems(tmp_path: Path) -> None:
    assert check_coco(*write_coco(tmp_path / "hand")) == []
    root = make_digits(tmp_path / "digits", train=6, val=2)
    for split in ("train", "val"):
        assert check_coco(root / "annotations" / f"instances_{split}.json", root / "images") == []


def test_problem_str_is_one_line() -> None:
    p = Problem("annotations/instances_train.json", "annotation 17", "box [10, 5, 0, 8] has zero "
                "area", "fix or delete it", False, "zero_area")
    assert str(p) == ("annotations/instances_train.json: annotation 17: box [10, 5, 0, 8] has zero"
                      " area — fix or delete it")
    assert str(Problem("x.json", "", "not valid JSON", "repair it", True)) == (
        "x.json: not valid JSON — repair it")


@pytest.mark.parametrize("text, code", [
    ('{"images": [', "bad_json"),
    ("[1, 2]", "bad_record"),
    ('{"images": [], "categories": []}', "missing_key"),
])
def test_malformed_json_is_one_problem(tmp_path: Path, text: str, code: str) -> None:
    problems = check_coco(*write_coco(tmp_path, text))
    assert codes(problems) == [(code, True)]
    assert "\n" not in str(problems[0])


def test_bad_json_names_line(tmp_path: Path) -> None:
    (problem,) = check_coco(*write_coco(tmp_path, '{\n"images": [,]}'))
    assert "line 2" in problem.what


def test_missing_annotation_file_and_image_dir(tmp_path: Path) -> None:
    assert codes(check_coco(tmp_path / "nope.json", tmp_path)) == [("missing_file", True)]
    ann, _ = write_coco(tmp_path)
    assert codes(check_coco(ann, tmp_path / "no_images")) == [("missing_image", True)]


def test_truncated_png_and_jpeg_and_non_image(tmp_path: Path) -> None:
    ann, images = write_coco(tmp_path)
    png = (images / "a.png").read_bytes()
    (images / "a.png").write_bytes(png[: len(png) // 2])
    jpg = (images / "b.jpg").read_bytes()
    (images / "b.jpg").write_bytes(jpg[: len(jpg) // 2])
    problems = check_coco(ann, images)
    assert codes(problems) == [("corrupt_image", True)] * 2
    assert problems[0].file == str(images / "a.png") and problems[0].record == "image 1"
    (images / "a.png").write_text("not an image")
    assert ("corrupt_image", True) in codes(check_coco(ann, images))


def test_jpeg_with_trailing_bytes_is_fine(tmp_path: Path) -> None:
    ann, images = write_coco(tmp_path)
    with open(images / "b.jpg", "ab") as f:
        f.write(b"\0" * 2000)
    assert check_coco(ann, images) == []


def test_missing_image_and_wrong_size(tmp_path: Path) -> None:
    ann, images = write_coco(tmp_path)
    (images / "a.png").unlink()
    Image.new("RGB", (33, 32)).save(images / "b.jpg")
    problems = check_coco(ann, images)
    assert codes(problems) == [("missing_image", True), ("size_mismatch", True)]
    assert "33x32" in problems[1].what and "32x32" in problems[1].what


@pytest.mark.parametrize("changes, expected", [
    ({"annotations__0": {"category_id": 6}}, ("unknown_category", True)),
    ({"annotations__0": {"image_id": 7}}, ("unknown_image", True)),
    ({"annotations__1": {"id": 1}}, ("duplicate_id", True)),
    ({"images__1": {"id": 1}}, ("duplicate_id", True)),
    ({"categories__1": {"id": 5}}, ("duplicate_id", True)),
    ({"annotations__0": {"bbox": [1, 2, 3]}}, ("bad_box", True)),
    ({"annotations__0": {"bbox": [1, 2, "3", 4]}}, ("bad_box", True)),
    ({"annotations__0": {"bbox": [1, 2, float("nan"), 4]}}, ("bad_box", True)),
    ({"annotations__0": {"bbox": [10, 5, 0, 8]}}, ("zero_area", False)),
    ({"annotations__0": {"bbox": [10, 5, -3, 8]}}, ("zero_area", False)),
    ({"annotations__0": {"bbox": [60, 40, 10, 10]}}, ("box_partly_outside", False)),
    ({"annotations__0": {"bbox": [64, 10, 10, 10]}}, ("box_outside", True)),
    ({"annotations__0": {"bbox": [-20, -20, 10, 10]}}, ("box_outside", True)),
    ({"images__0": {"width": 0}}, ("bad_value", True)),
    ({"images__0": {"id": "1"}}, ("bad_value", True)),
    ({"annotations": [{"id": 3, "image_id": 1, "bbox": [1, 1, 2, 2]}]}, ("missing_key", True)),
    ({"images": [], "annotations": []}, ("empty_split", True)),
    ({"categories": [], "annotations": []}, ("no_categories", True)),
    ({"annotations": [3]}, ("bad_record", True)),
])
def test_record_problems(tmp_path: Path, changes: dict, expected: tuple[str, bool]) -> None:
    ann, images = write_coco(tmp_path, broken(**changes))
    problems = check_coco(ann, images)
    assert expected in codes(problems), [str(p) for p in problems]
    assert all("\n" not in str(p) for p in problems)


def test_zero_area_message(tmp_path: Path) -> None:
    ann, images = write_coco(tmp_path, broken(annotations__0={"id": 17, "bbox": [10, 5, 0, 8]}))
    (problem,) = check_coco(ann, images)
    assert str(problem).startswith(f"{ann}: annotation 17: box [10, 5, 0, 8] has zero area — ")


# ----------------------------------------------------------------------------------------- VOC
def write_voc(root: Path) -> Path:
    for sub in ("Annotations", "JPEGImages", "ImageSets/Main"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    for image_id, objects in (("1", "<object><name>dog</name><difficult>1</difficult><bndbox>"
                                    "<xmin>1</xmin><ymin>2</ymin><xmax>20</xmax><ymax>30</ymax>"
                                    "</bndbox></object>"), ("2", "")):
        Image.new("RGB", (40, 30)).save(root / "JPEGImages" / f"{image_id}.jpg")
        (root / "Annotations" / f"{image_id}.xml").write_text(
            f"<annotation><filename>{image_id}.jpg</filename><size><width>40</width>"
            f"<height>30</height><depth>3</depth></size>{objects}</annotation>")
    main = root / "ImageSets" / "Main"
    (main / "train.txt").write_text("1\n2\n")
    (main / "val.txt").write_text("2\n")
    (main / "dog_train.txt").write_text("1  1\n2 -1\n")  # per-class list: not an image set
    return root


def set_xml(root: Path, image_id: str, body: str) -> None:
    (root / "Annotations" / f"{image_id}.xml").write_text(body)


def test_voc_clean(tmp_path: Path) -> None:
    root = write_voc(tmp_path)
    assert check_voc(root) == []
    assert check_voc(root, ["val"], classes=["cat"]) == []


@pytest.mark.parametrize("body, code", [
    ("<annotation><object><name>dog</name>", "bad_xml"),
    ("<notvoc/>", "bad_xml"),
    ("<annotation><object><name>dog</name></object></annotation>", "bad_record"),
    ("<annotation><object><name>dog</name><bndbox><xmin>a</xmin><ymin>1</ymin><xmax>2</xmax>"
     "<ymax>2</ymax></bndbox></object></annotation>", "bad_record"),
    ("<annotation><object><name>unicorn</name><bndbox><xmin>1</xmin><ymin>1</ymin><xmax>2</xmax>"
     "<ymax>2</ymax></bndbox></object></annotation>", "unknown_category"),
    ("<annotation><object><name>dog</name><bndbox><xmin>50</xmin><ymin>1</ymin><xmax>60</xmax>"
     "<ymax>2</ymax></bndbox></object></annotation>", "box_outside"),
    ("<annotation><size><width>41</width><height>30</height></size></annotation>",
     "size_mismatch"),
])
def test_voc_fatal_problems(tmp_path: Path, body: str, code: str) -> None:
    root = write_voc(tmp_path)
    set_xml(root, "2", body)
    problems = check_voc(root, ["train"])
    assert codes(problems) == [(code, True)], [str(p) for p in problems]
    at_fault = root / ("JPEGImages/2.jpg" if code == "size_mismatch" else "Annotations/2.xml")
    assert problems[0].file == str(at_fault)


def test_voc_zero_area_is_not_fatal(tmp_path: Path) -> None:
    root = write_voc(tmp_path)
    set_xml(root, "2", "<annotation><object><name>dog</name><bndbox><xmin>5</xmin><ymin>1</ymin>"
            "<xmax>4</xmax><ymax>9</ymax></bndbox></object></annotation>")
    assert codes(check_voc(root, ["train"])) == [("zero_area", False)]


def test_voc_files_and_splits(tmp_path: Path) -> None:
    root = write_voc(tmp_path)
    main = root / "ImageSets" / "Main"
    (main / "test.txt").write_text("\n\n")
    assert codes(check_voc(root, ["test"])) == [("empty_split", True)]
    assert codes(check_voc(root, ["nope"])) == [("missing_file", True)]
    (main / "val.txt").write_text("2\n2\n3\n")
    assert codes(check_voc(root, ["val"])) == [("duplicate_id", False), ("missing_file", True)]
    jpg = (root / "JPEGImages" / "1.jpg").read_bytes()
    (root / "JPEGImages" / "1.jpg").write_bytes(jpg[: len(jpg) // 2])
    (root / "JPEGImages" / "2.jpg").unlink()
    assert codes(check_voc(root, ["train"])) == [("corrupt_image", True), ("missing_image", True)]


def test_voc_layout_problems(tmp_path: Path) -> None:
    assert codes(check_voc(tmp_path)) == [("missing_file", True)] * 2
    root = write_voc(tmp_path / "voc")
    for f in (root / "ImageSets" / "Main").glob("*.txt"):
        f.unlink()
    assert codes(check_voc(root)) == [("empty_split", True)]
