"""Reading and checking Pascal VOC annotations (shared by the checker and the dataset).

Coordinates: VOC stores 1-based inclusive pixel indices; records hold continuous XYXY px
coordinates ``(xmin - 1, ymin - 1, xmax, ymax)`` so that a box covering the whole W x H image is
``(0, 0, W, H)`` (detectron2's convention).
"""

from __future__ import annotations

import math
import xml.etree.ElementTree as ET
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from torchvision.datasets import VOCDetection

from nasdet.data._problem import Problem, check_box, check_image_file, fmt_box

VOC_CLASSES: tuple[str, ...] = (
    "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
    "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train",
    "tvmonitor",
)  # fmt: skip


class VocXmlError(Exception):
    """The XML cannot be used at all; ``what`` and ``fix`` describe why (internal)."""

    def __init__(self, what: str, fix: str, code: str) -> None:
        super().__init__(what)
        self.what, self.fix, self.code = what, fix, code


@dataclass
class VocObject:
    """One ``<object>`` (``index``-th in its file): class name, XYXY box in px, difficult flag."""

    index: int
    name: str
    box: tuple[float, float, float, float]
    difficult: bool


@dataclass
class VocRecord:
    """One parsed annotation file; ``size`` is (width, height) px from ``<size>`` or None."""

    filename: str | None
    size: tuple[int, int] | None
    objects: list[VocObject] = field(default_factory=list)
    object_errors: list[tuple[int, str, str]] = field(default_factory=list)  # (index, what, fix)


def _number(node: Any, key: str) -> float:
    if not isinstance(node, dict) or not isinstance(node.get(key), str):
        raise ValueError(f"missing <{key}>")
    try:
        return float(node[key])
    except ValueError:
        raise ValueError(f"<{key}> is not a number: {node[key]!r}") from None


def _parse_object(index: int, obj: Any) -> VocObject:
    """One ``<object>`` dict from ``parse_voc_xml``; ``ValueError`` says what is wrong."""
    if not isinstance(obj, dict):
        raise ValueError("has no children")
    name = obj.get("name")
    if not isinstance(name, str) or not name.strip():
        raise ValueError("missing <name>")
    bndbox = obj.get("bndbox")
    if not isinstance(bndbox, dict):
        raise ValueError("missing <bndbox>")
    xmin, ymin, xmax, ymax = (_number(bndbox, k) for k in ("xmin", "ymin", "xmax", "ymax"))
    difficult = obj.get("difficult", "0")
    try:
        is_difficult = bool(int(float(difficult))) if isinstance(difficult, str) else False
    except ValueError:
        raise ValueError(f"<difficult> is not 0 or 1: {difficult!r}") from None
    return VocObject(index, name.strip(), (xmin - 1, ymin - 1, xmax, ymax), is_difficult)


def _parse_size(ann: dict[str, Any]) -> tuple[int, int] | None:
    size = ann.get("size")
    try:
        width, height = int(_number(size, "width")), int(_number(size, "height"))
    except ValueError:
        return None
    return (width, height) if width > 0 and height > 0 else None


def read_voc_xml(path: Path) -> VocRecord:
    """Parse ``path`` with ``VOCDetection.parse_voc_xml``; raise ``VocXmlError`` if unusable.

    Problems with single objects do not raise: they are listed in ``record.object_errors``.
    """
    try:
        root = ET.parse(path).getroot()
    except FileNotFoundError:
        raise VocXmlError("annotation file not found", "add it or remove the id from the image "
                          "set", "missing_file") from None
    except ET.ParseError as err:
        line, col = err.position
        raise VocXmlError(f"malformed XML (line {line}, column {col})",
                          "repair or regenerate the file", "bad_xml") from None
    except OSError as err:
        raise VocXmlError(f"cannot read file ({err.strerror})", "check its permissions",
                          "bad_xml") from None
    if root.tag != "annotation":
        raise VocXmlError(f"root element is <{root.tag}>, expected <annotation>",
                          "write a Pascal VOC annotation", "bad_xml")
    ann = VOCDetection.parse_voc_xml(root).get("annotation")
    if not isinstance(ann, dict):
        ann = {}
    filename = ann.get("filename") if isinstance(ann.get("filename"), str) else None
    record = VocRecord(filename=filename, size=_parse_size(ann))
    objects = ann.get("object", [])
    for k, obj in enumerate(objects if isinstance(objects, list) else [objects]):
        try:
            record.objects.append(_parse_object(k, obj))
        except ValueError as err:
            record.object_errors.append((k, str(err), "fix or delete the object"))
    return record


@dataclass
class VocEntry:
    """One image of an image set: its id, files, size (width, height) px and valid objects."""

    image_id: str
    xml: Path
    image: Path
    size: tuple[int, int] | None
    objects: list[VocObject]


def _read_image_set(path: Path, problems: list[Problem]) -> list[str]:
    """Ids listed in an ``ImageSets/Main/<set>.txt`` file (first token of each line)."""
    try:
        lines = path.read_text().splitlines()
    except FileNotFoundError:
        problems.append(Problem(str(path), "", "image set file not found",
                                "create it or choose an existing split", True, "missing_file"))
        return []
    except (OSError, UnicodeDecodeError) as err:
        problems.append(Problem(str(path), "", f"cannot read the file ({err})",
                                "check the file", True, "missing_file"))
        return []
    ids: list[str] = []
    seen: set[str] = set()
    for n, line in enumerate(lines, 1):
        tokens = line.split()
        if not tokens:
            continue
        if tokens[0] in seen:
            problems.append(Problem(str(path), f"line {n}", f"duplicate id {tokens[0]!r}",
                                    "delete the line", False, "duplicate_id"))
            continue
        seen.add(tokens[0])
        ids.append(tokens[0])
    if not ids and path.is_file():
        problems.append(Problem(str(path), "", "empty image set (no image ids)",
                                "list image ids, one a line", True, "empty_split"))
    return ids


def _image_path(root: Path, image_id: str, record: VocRecord) -> Path:
    """``JPEGImages/<id>.jpg``, else ``JPEGImages/<filename>`` from the XML when that exists."""
    default = root / "JPEGImages" / f"{image_id}.jpg"
    if default.is_file() or not record.filename:
        return default
    alt = root / "JPEGImages" / record.filename
    return alt if alt.is_file() else default


def _inspect_entry(root: Path, image_id: str, classes: set[str], check_images: bool,
                   problems: list[Problem]) -> VocEntry | None:
    xml = root / "Annotations" / f"{image_id}.xml"
    try:
        record = read_voc_xml(xml)
    except VocXmlError as err:
        problems.append(Problem(str(xml), "", err.what, err.fix, True, err.code))
        return None
    for k, what, fix in record.object_errors:
        problems.append(Problem(str(xml), f"object {k}", what, fix, True, "bad_record"))
    image = _image_path(root, image_id, record)
    size = record.size
    if check_images:
        size = check_image_file(image, record.size, f"image {image_id}", problems) or size
    for obj in record.objects:
        where = f"object {obj.index} ({obj.name})"
        if obj.name not in classes:
            problems.append(Problem(str(xml), where, f"unknown class {obj.name!r}",
                                    "fix the name or add it to the dataset's classes", True,
                                    "unknown_category"))
        x1, y1, x2, y2 = obj.box
        check_box(obj.box, size or (math.inf, math.inf), fmt_box((x1 + 1, y1 + 1, x2, y2)),
                  str(xml), where, problems)
    return VocEntry(image_id, xml, image, size, record.objects)


def inspect_voc(
    root: Path, image_sets: Sequence[str] | None = None, classes: Sequence[str] | None = None,
    *, check_images: bool = True,
) -> tuple[list[Problem], dict[str, list[VocEntry]]]:
    """Problems of a Pascal VOC set, and its readable entries per image set.

    ``image_sets`` default: every ``ImageSets/Main/*.txt`` without ``_`` in its name (the
    per-class lists have one); ``classes`` default: ``VOC_CLASSES``.
    """
    root = Path(root)
    known = set(VOC_CLASSES if classes is None else classes)
    main = root / "ImageSets" / "Main"
    problems: list[Problem] = []
    for folder in (root / "Annotations", main):
        if not folder.is_dir():
            problems.append(Problem(str(folder), "", "directory not found", "expected a Pascal VOC "
                                    "layout: Annotations/, JPEGImages/, ImageSets/Main/", True,
                                    "missing_file"))
    if problems:
        return problems, {}
    if image_sets is None:
        image_sets = sorted(p.stem for p in main.glob("*.txt") if "_" not in p.stem)
        if not image_sets:
            problems.append(Problem(str(main), "", "no image sets (*.txt)",
                                    "add train.txt / val.txt listing image ids", True,
                                    "empty_split"))
    entries: dict[str, list[VocEntry]] = {}
    seen: dict[str, VocEntry | None] = {}  # an id listed by several sets is checked once
    for name in image_sets:
        entries[name] = []
        for image_id in _read_image_set(main / f"{name}.txt", problems):
            if image_id not in seen:
                seen[image_id] = _inspect_entry(root, image_id, known, check_images, problems)
            if seen[image_id] is not None:
                entries[name].append(seen[image_id])
    return problems, entries
