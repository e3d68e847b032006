"""Dataset checker: every problem of a COCO or VOC detection set, one line each, never a traceback.

A :class:`Problem` is *fatal* when the data cannot be used as is (missing or corrupt image, image
size that does not match the annotation, malformed file, unknown / duplicate id, box lying
entirely outside its image, empty split). Non-fatal problems are repaired on the fly by the
datasets:

- a box extending more than ``OUTSIDE_TOLERANCE`` px outside its image is clamped to it;
- a box with zero or negative width / height is dropped in training (kept in evaluation).

The datasets run these checks at construction and raise ``DataError`` on the first fatal one.
Image files are opened with PIL and ``verify()``-ed (cheap: no decoding, except for a JPEG without
an end-of-image marker, which is decoded to tell a truncated file from trailing bytes).
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from nasdet.data._problem import OUTSIDE_TOLERANCE, Problem, check_box, check_image_file, fmt_box
from nasdet.data._vocxml import VOC_CLASSES, inspect_voc

__all__ = ["OUTSIDE_TOLERANCE", "VOC_CLASSES", "Problem", "check_coco", "check_voc",
           "inspect_coco", "inspect_voc"]


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _load_json(ann_file: Path, problems: list[Problem]) -> Any:
    file = str(ann_file)
    try:
        return json.loads(ann_file.read_bytes())
    except FileNotFoundError:
        problems.append(Problem(file, "", "annotation file not found", "check the path", True,
                                "missing_file"))
    except json.JSONDecodeError as err:
        problems.append(Problem(file, "", f"not valid JSON (line {err.lineno}, column {err.colno}:"
                                f" {err.msg})", "repair or regenerate the file", True, "bad_json"))
    except (OSError, ValueError) as err:
        problems.append(Problem(file, "", f"cannot read the file ({err})",
                                "check the file and its permissions", True, "bad_json"))
    return None


def _records(data: dict, key: str, kind: str, required: Sequence[str], file: str,
             problems: list[Problem]) -> dict[int, dict]:
    """Well-formed records of ``data[key]`` by id; problems for the others and duplicates."""
    good: dict[int, dict] = {}
    seen: set[int] = set()
    for j, rec in enumerate(data[key]):
        rid = rec.get("id") if isinstance(rec, dict) else None
        where = f"{kind} {rid}" if _is_int(rid) else f"{kind} at index {j}"
        if not isinstance(rec, dict):
            problems.append(Problem(file, where, f"is a {type(rec).__name__}, not an object",
                                    "fix or delete it", True, "bad_record"))
            continue
        missing = [k for k in required if k not in rec]
        if missing:
            problems.append(Problem(file, where, f"missing required key '{missing[0]}'",
                                    "add it", True, "missing_key"))
            continue
        if not _is_int(rid):
            problems.append(Problem(file, where, f"id {rid!r} is not an integer", "fix it", True,
                                    "bad_value"))
            continue
        if rid in seen:
            problems.append(Problem(file, where, f"duplicate {kind} id {rid}",
                                    "give every " + kind + " a unique id", True, "duplicate_id"))
            continue
        seen.add(rid)
        good[rid] = rec
    return good


def _check_image_records(images: dict[int, dict], file: str, problems: list[Problem]) -> None:
    for iid, img in list(images.items()):
        w, h, name = img["width"], img["height"], img["file_name"]
        if not (isinstance(name, str) and name):
            problems.append(Problem(file, f"image {iid}", f"file_name {name!r} is not a file name",
                                    "fix it", True, "bad_value"))
            del images[iid]
        elif not (_is_int(w) and _is_int(h) and w > 0 and h > 0):
            problems.append(Problem(file, f"image {iid}", f"width/height {w!r}x{h!r} are not "
                                    "positive integers", "fix them", True, "bad_value"))
            del images[iid]


def _check_annotations(data: dict, images: dict[int, dict], cats: dict[int, dict], file: str,
                       problems: list[Problem]) -> None:
    anns = _records(data, "annotations", "annotation", ("id", "image_id", "category_id", "bbox"),
                    file, problems)
    for aid, ann in anns.items():
        where = f"annotation {aid}"
        bbox = ann["bbox"]
        if ann["image_id"] not in images:
            problems.append(Problem(file, where, f"refers to unknown image {ann['image_id']!r}",
                                    "fix image_id or delete the annotation", True, "unknown_image"))
        elif ann["category_id"] not in cats:
            problems.append(Problem(file, where,
                                    f"refers to unknown category {ann['category_id']!r}",
                                    "fix category_id or add the category", True,
                                    "unknown_category"))
        elif not (isinstance(bbox, list) and len(bbox) == 4
                  and all(isinstance(v, int | float) and math.isfinite(v) for v in bbox)):
            problems.append(Problem(file, where, f"bbox {bbox!r} is not 4 finite numbers "
                                    "[x, y, width, height]", "fix it", True, "bad_box"))
        else:
            x, y, w, h = (float(v) for v in bbox)
            img = images[ann["image_id"]]
            check_box((x, y, x + w, y + h), (img["width"], img["height"]), fmt_box(bbox), file,
                      where, problems)


def inspect_coco(
    ann_file: Path, images: Path, *, check_images: bool = True
) -> tuple[list[Problem], dict | None]:
    """Problems of a COCO detection set, and its parsed JSON (None when it cannot be read).

    ``check_images=False`` skips opening the image files (for a quick look at a big set).
    """
    ann_file, images = Path(ann_file), Path(images)
    file = str(ann_file)
    problems: list[Problem] = []
    data = _load_json(ann_file, problems)
    if data is None:
        return problems, None
    if not isinstance(data, dict):
        problems.append(Problem(file, "", f"top level is a {type(data).__name__}, expected an "
                                "object with images, annotations, categories",
                                "write a COCO detection file", True, "bad_record"))
        return problems, None
    for key in ("images", "annotations", "categories"):
        if not isinstance(data.get(key), list):
            what = f"missing required key '{key}'" if key not in data else f"'{key}' is not a list"
            problems.append(Problem(file, "", what, f"add a '{key}' list", True, "missing_key"))
    if problems:
        return problems, data
    cats = _records(data, "categories", "category", ("id", "name"), file, problems)
    if not data["categories"]:
        problems.append(Problem(file, "", "no categories", "add the categories", True,
                                "no_categories"))
    imgs = _records(data, "images", "image", ("id", "file_name", "width", "height"), file,
                    problems)
    _check_image_records(imgs, file, problems)
    if not data["images"]:
        problems.append(Problem(file, "", "no images (empty split)", "add images or use another "
                                "annotation file", True, "empty_split"))
    _check_annotations(data, imgs, cats, file, problems)
    if check_images:
        if not images.is_dir():
            problems.append(Problem(str(images), "", "image directory not found",
                                    "check the images path", True, "missing_image"))
        else:
            for iid, img in imgs.items():
                check_image_file(images / img["file_name"], (img["width"], img["height"]),
                                 f"image {iid}", problems)
    return problems, data


def check_coco(ann_file: Path, images: Path) -> list[Problem]:
    """Every problem of the COCO detection set ``ann_file`` whose images live under ``images``."""
    return inspect_coco(ann_file, images)[0]


def check_voc(
    root: Path, image_sets: Sequence[str] | None = None, classes: Sequence[str] | None = None
) -> list[Problem]:
    """Every problem of the Pascal VOC set at ``root`` (Annotations/, JPEGImages/, ImageSets/Main/).

    ``image_sets``: the splits to check (default: every ``ImageSets/Main/*.txt`` without ``_`` in
    its name, i.e. not the per-class lists); ``classes``: allowed names (default: the 20 VOC ones).
    """
    return inspect_voc(root, image_sets, classes)[0]
