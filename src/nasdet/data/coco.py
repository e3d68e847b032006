"""COCO-format detection dataset (torchvision ``CocoDetection`` + ``transforms.v2``).

Items follow docs/design.md: ``(image, target)`` with a float32 ``tv_tensors.Image`` in [0, 1] and
``target = {"boxes": BoundingBoxes XYXY px, "labels": int64 1..K, "image_id": int}`` plus
``"iscrowd"`` (int64) in evaluation mode. Category ids (possibly non-contiguous) map to labels
``1..K`` in increasing id order: ``cat_ids[label - 1]`` is the category id of ``label``.
"""

from __future__ import annotations

import contextlib
import copy
import io
import logging
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import torch
from pycocotools.coco import COCO
from torch.utils.data import Dataset
from torchvision import tv_tensors
from torchvision.datasets import CocoDetection, VisionDataset, wrap_dataset_for_transforms_v2
from torchvision.transforms.v2 import functional as F

from nasdet.data._problem import Problem, raise_if_fatal, summarize
from nasdet.data.check import inspect_coco
from nasdet.data.split import known_image_ids
from nasdet.data.transforms import eval_transforms, train_transforms

__all__ = ["CocoDetectionDataset"]

log = logging.getLogger(__name__)


class _CocoFromDict(CocoDetection):
    """``CocoDetection`` over an already-parsed annotation dict (the JSON is read only once)."""

    def __init__(self, root: Path, data: dict) -> None:
        VisionDataset.__init__(self, root)
        coco = COCO()
        coco.dataset = data
        with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints progress
            coco.createIndex()
        self.coco = coco
        self.ids = sorted(coco.imgs)


def _fill_defaults(data: dict) -> None:
    """Give every annotation ``iscrowd`` (0) and ``area`` (box w * h px²) when missing."""
    for ann in data["annotations"]:
        ann.setdefault("iscrowd", 0)
        ann.setdefault("area", float(ann["bbox"][2] * ann["bbox"][3]))


def _degenerate_after_clamp(bbox: list[float], width: int, height: int) -> bool:
    x, y, w, h = bbox
    return min(x + w, width) <= max(x, 0) or min(y + h, height) <= max(y, 0)


class CocoDetectionDataset(Dataset):
    """A COCO detection set: ``images`` folder and ``ann_file`` JSON.

    ``train=True`` removes crowd boxes and boxes of zero area (after clamping to the image; one
    counted warning at construction); ``train=False`` keeps every box and returns ``iscrowd``.
    ``transforms`` defaults to ``train_transforms()`` / ``eval_transforms()`` by mode; it is called
    as ``transforms(pil_image, target)``. Boxes are clamped to the image before the transforms.
    ``check_images=False`` skips opening every image file at construction (the JSON is still
    checked). Raises ``DataError`` when the set has a fatal problem (see ``nasdet.data.check``).
    """

    def __init__(
        self, images: Path, ann_file: Path, *, train: bool,
        transforms: Callable[..., Any] | None = None, check_images: bool = True,
    ) -> None:
        self.images, self.ann_file, self.train = Path(images), Path(ann_file), train
        command = f"nasdet data check --coco {self.ann_file} --images {self.images}"
        problems, data = inspect_coco(self.ann_file, self.images, check_images=check_images)
        raise_if_fatal(problems, command)
        assert data is not None  # no fatal problem means the JSON was read
        _fill_defaults(data)
        self._data = data
        cats = sorted(data["categories"], key=lambda c: c["id"])
        self.cat_ids: list[int] = [c["id"] for c in cats]
        self.categories: list[str] = [str(c["name"]) for c in cats]
        self._label_of = {cid: i + 1 for i, cid in enumerate(self.cat_ids)}
        base = _CocoFromDict(self.images, data)
        self.image_ids: list[int] = list(base.ids)
        self._dataset = wrap_dataset_for_transforms_v2(
            base, target_keys={"boxes", "labels", "image_id", "iscrowd"}
        )
        if transforms is None:
            transforms = train_transforms() if train else eval_transforms()
        self.transforms = transforms
        self._warn(problems, command)

    def _warn(self, problems: list[Problem], command: str) -> None:
        """One warning counting the non-fatal problems (boxes clamped / dropped)."""
        images = {img["id"]: img for img in self._data["images"]}
        dropped = sum(
            1 for ann in self._data["annotations"]
            if not ann["iscrowd"] and _degenerate_after_clamp(
                ann["bbox"], images[ann["image_id"]]["width"], images[ann["image_id"]]["height"])
        ) if self.train else 0
        summary = summarize(problems, dropped)
        if summary:
            log.warning("%s: %s; run `%s` for the list", self.ann_file, summary, command)

    def __len__(self) -> int:
        return len(self.image_ids)

    def __getitem__(self, index: int) -> tuple[Any, dict[str, Any]]:
        image, raw = self._dataset[int(index)]
        target = self._target(raw, (image.height, image.width))
        if self.transforms is not None:
            image, target = self.transforms(image, target)
        return image, target

    def _target(self, raw: dict[str, Any], canvas_size: tuple[int, int]) -> dict[str, Any]:
        """Map category ids to labels, clamp boxes, and (training) drop crowd / empty boxes."""
        if "boxes" in raw:
            boxes = F.clamp_bounding_boxes(raw["boxes"].to(torch.float32))
            labels = torch.tensor([self._label_of[c] for c in raw["labels"].tolist()],
                                  dtype=torch.int64)
            iscrowd = torch.tensor([int(bool(c)) for c in raw["iscrowd"]], dtype=torch.int64)
        else:  # an image without annotations
            boxes = torch.zeros((0, 4), dtype=torch.float32)
            labels = torch.zeros(0, dtype=torch.int64)
            iscrowd = torch.zeros(0, dtype=torch.int64)
        if self.train:
            keep = (iscrowd == 0) & (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
            boxes, labels = boxes[keep], labels[keep]
        boxes = tv_tensors.BoundingBoxes(boxes.as_subclass(torch.Tensor),
                                         format=tv_tensors.BoundingBoxFormat.XYXY,
                                         canvas_size=canvas_size)
        target: dict[str, Any] = {"boxes": boxes, "labels": labels, "image_id": raw["image_id"]}
        if not self.train:
            target["iscrowd"] = iscrowd
        return target

    def coco_gt(self, image_ids: Iterable[int] | None = None) -> dict:
        """The ground truth as a COCO dict (a copy of the JSON, ``iscrowd``/``area`` filled in).

        ``image_ids``: only these images and their annotations (every category kept), which is
        all an evaluator of a subset reads; copying and indexing the rest of a large set costs
        more than scoring a few hundred images. ``ValueError`` for an id the set does not have.
        """
        if image_ids is None:
            return copy.deepcopy(self._data)
        keep = known_image_ids(image_ids, self.image_ids, self.ann_file)
        data = {k: v for k, v in self._data.items() if k not in ("images", "annotations")}
        data["images"] = [img for img in self._data["images"] if img["id"] in keep]
        data["annotations"] = [a for a in self._data["annotations"] if a["image_id"] in keep]
        return copy.deepcopy(data)
