"""Detection datasets, the bundled digits set, transforms, splits, an in-memory cache and the
dataset checker.

Every dataset follows docs/design.md: ``dataset[i] -> (image, target)`` with labels ``1..K``,
``categories`` (names) and ``cat_ids`` (original category ids) attributes, ``image_ids`` and a
``coco_gt(image_ids=None)`` ground-truth dict for evaluators (of every image, or of some).
"""

from nasdet.data.cache import CachedSubset
from nasdet.data.check import Problem, check_coco, check_voc
from nasdet.data.coco import CocoDetectionDataset
from nasdet.data.digits import (
    DIGIT_CATEGORY_IDS,
    ensure_digits,
    ensure_digits_classification,
    make_digits,
    make_digits_classification,
)
from nasdet.data.split import collate, split_indices
from nasdet.data.transforms import eval_transforms, train_transforms
from nasdet.data.voc import VOC_CLASSES, VOCDetectionDataset

__all__ = [
    "DIGIT_CATEGORY_IDS",
    "VOC_CLASSES",
    "CachedSubset",
    "CocoDetectionDataset",
    "Problem",
    "VOCDetectionDataset",
    "check_coco",
    "check_voc",
    "collate",
    "ensure_digits",
    "ensure_digits_classification",
    "eval_transforms",
    "make_digits",
    "make_digits_classification",
    "split_indices",
    "train_transforms",
]
