"""Pascal VOC detection dataset (any root with Annotations/, JPEGImages/, ImageSets/Main/).

torchvision's ``VOCDetection`` forces a ``VOCdevkit/VOC20xx`` path and returns raw dicts, so this
subclasses ``VisionDataset`` and only borrows its XML parser. Boxes: VOC's 1-based inclusive pixel
indices become continuous XYXY px ``(xmin - 1, ymin - 1, xmax, ymax)``. Labels are ``1..K`` in the
order of ``classes``; ``cat_ids`` is ``[1..K]``. ``difficult`` objects are removed in training and
returned as a bool ``"difficult"`` tensor in evaluation.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torchvision import tv_tensors
from torchvision.datasets import VisionDataset
from torchvision.transforms.v2 import functional as F

from nasdet.data._problem import raise_if_fatal, summarize
from nasdet.data._vocxml import VOC_CLASSES, inspect_voc
from nasdet.data.split import known_image_ids
from nasdet.data.transforms import eval_transforms, train_transforms

__all__ = ["VOC_CLASSES", "VOCDetectionDataset"]

log = logging.getLogger(__name__)


def _clamped(boxes: np.ndarray, size: tuple[int, int] | None) -> np.ndarray:
    """(N, 4) XYXY px boxes clamped to a (width, height) px image (unchanged if size unknown)."""
    boxes = boxes.reshape(-1, 4)
    if size is not None:
        boxes[:, 0::2] = boxes[:, 0::2].clip(0, size[0])
        boxes[:, 1::2] = boxes[:, 1::2].clip(0, size[1])
    return boxes


class VOCDetectionDataset(VisionDataset):
    """The ``image_set`` split (``ImageSets/Main/<image_set>.txt``) of a VOC-layout set at ``root``.

    ``classes`` defaults to the 20 VOC classes; an object of another class is a ``DataError``
    naming its XML file. ``transforms`` defaults to ``train_transforms()`` / ``eval_transforms()``
    by mode and is called as ``transforms(pil_image, target)``. ``image_ids`` are the int indices
    ``0..len-1`` (``voc_ids`` holds the VOC id strings). ``check_images=False`` skips opening every
    image at construction. Raises ``DataError`` on a fatal problem (see ``nasdet.data.check``).
    """

    def __init__(
        self, root: Path, image_set: str, *, train: bool, classes: Sequence[str] | None = None,
        transforms: Callable[..., Any] | None = None, check_images: bool = True,
    ) -> None:
        if transforms is None:
            transforms = train_transforms() if train else eval_transforms()
        super().__init__(root, transforms=transforms)
        self.train, self.image_set = train, image_set
        self.categories: list[str] = list(VOC_CLASSES if classes is None else classes)
        if len(set(self.categories)) != len(self.categories) or not self.categories:
            raise ValueError(f"classes must be unique and non-empty, got {self.categories}")
        self.cat_ids: list[int] = list(range(1, len(self.categories) + 1))
        command = f"nasdet data check --voc {root} --image-set {image_set}"
        problems, entries = inspect_voc(Path(root), [image_set], self.categories,
                                        check_images=check_images)
        raise_if_fatal(problems, command)
        self._entries = entries[image_set]
        self.voc_ids: list[str] = [e.image_id for e in self._entries]
        self.image_ids: list[int] = list(range(len(self._entries)))
        label_of = {name: i + 1 for i, name in enumerate(self.categories)}
        self._boxes = [_clamped(np.array([o.box for o in e.objects], dtype=np.float32), e.size)
                       for e in self._entries]
        self._labels = [np.array([label_of[o.name] for o in e.objects], dtype=np.int64)
                        for e in self._entries]
        self._difficult = [np.array([o.difficult for o in e.objects], dtype=bool)
                           for e in self._entries]
        dropped = sum(int((((b[:, 2] <= b[:, 0]) | (b[:, 3] <= b[:, 1])) & ~d).sum())
                      for b, d in zip(self._boxes, self._difficult, strict=True))
        summary = summarize(problems, dropped if train else 0)
        if summary:
            log.warning("%s: %s; run `%s` for the list", root, summary, command)

    def __len__(self) -> int:
        return len(self._entries)

    def __getitem__(self, index: int) -> tuple[Any, dict[str, Any]]:
        index = int(index)
        with Image.open(self._entries[index].image) as im:
            image = im.convert("RGB")
        canvas_size = (image.height, image.width)
        boxes = F.clamp_bounding_boxes(tv_tensors.BoundingBoxes(
            torch.from_numpy(self._boxes[index]), format=tv_tensors.BoundingBoxFormat.XYXY,
            canvas_size=canvas_size)).as_subclass(torch.Tensor)
        labels = torch.from_numpy(self._labels[index])
        difficult = torch.from_numpy(self._difficult[index])
        if self.train:
            keep = ~difficult & (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
            boxes, labels = boxes[keep], labels[keep]
        target: dict[str, Any] = {
            "boxes": tv_tensors.BoundingBoxes(boxes, format=tv_tensors.BoundingBoxFormat.XYXY,
                                              canvas_size=canvas_size),
            "labels": labels,
            "image_id": index,
        }
        if not self.train:
            target["difficult"] = difficult
        if self.transforms is not None:
            image, target = self.transforms(image, target)
        return image, target

    def voc_gt(self) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
        """Per image ``(boxes (N, 4) XYXY float32 px, labels (N,) int64, difficult (N,) bool)``."""
        return [(b.copy(), lab.copy(), d.copy())
                for b, lab, d in zip(self._boxes, self._labels, self._difficult, strict=True)]

    def coco_gt(self, image_ids: Iterable[int] | None = None) -> dict:
        """The ground truth as a COCO dict (image id = index, category id = label); with
        ``image_ids``, only those images and their annotations (every category kept), as
        :meth:`CocoDetectionDataset.coco_gt <nasdet.data.CocoDetectionDataset.coco_gt>`.

        Difficult objects are marked ``"iscrowd": 1`` (and ``"ignore": 1``): pycocotools and
        faster-coco-eval derive "ignore" from ``iscrowd`` alone, so this is how COCO-style AP
        leaves them out (a detection on one is neither a hit nor a false positive). VOC AP
        (``voc_gt()``) treats them the devkit's way.
        """
        keep = set(self.image_ids) if image_ids is None else known_image_ids(
            image_ids, self.image_ids, f"{self.root} ({self.image_set})")
        images, annotations = [], []
        for i, entry in enumerate(self._entries):
            if i not in keep:
                continue
            width, height = entry.size or Image.open(entry.image).size
            images.append({"id": i, "file_name": str(entry.image.relative_to(self.root)),
                           "width": width, "height": height})
            for box, label, difficult in zip(self._boxes[i], self._labels[i], self._difficult[i],
                                             strict=True):
                x1, y1, x2, y2 = (float(v) for v in box)
                ann = {"id": len(annotations) + 1, "image_id": i, "category_id": int(label),
                       "bbox": [x1, y1, x2 - x1, y2 - y1], "area": (x2 - x1) * (y2 - y1),
                       "iscrowd": int(difficult)}
                if difficult:
                    ann["ignore"] = 1
                annotations.append(ann)
        categories = [{"id": cid, "name": name}
                      for cid, name in zip(self.cat_ids, self.categories, strict=True)]
        return {"images": images, "annotations": annotations, "categories": categories}
