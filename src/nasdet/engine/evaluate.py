"""Run a detector over a dataset and score it.

:func:`predict` returns the detector's outputs per image; :func:`evaluate` turns them into COCO
results (labels mapped back to the dataset's category ids) and returns the 12 COCO stats through
faster-coco-eval (or pycocotools), plus VOC AP50 (07 11-point and area) for VOC datasets.
Both take ``bn_mode="train"`` to score with batch statistics ("BN in train mode", see
:func:`nasdet.engine.bn.bn_batch_stats`).
"""

from __future__ import annotations

import logging
from contextlib import nullcontext
from typing import Any, Literal

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, Subset

from nasdet.data import collate
from nasdet.engine.bn import bn_batch_stats
from nasdet.engine.coco_eval import detections_to_array, evaluate_coco
from nasdet.progress import track

log = logging.getLogger(__name__)


def base_dataset(dataset: Dataset) -> Any:
    """The dataset under any ``Subset`` wrappers (it holds categories and ground truth)."""
    while isinstance(dataset, Subset):
        dataset = dataset.dataset
    return dataset


def subset_indices(dataset: Dataset) -> list[int]:
    """Indices into :func:`base_dataset` that ``dataset`` covers."""
    if isinstance(dataset, Subset):
        inner = subset_indices(dataset.dataset)
        return [inner[i] for i in dataset.indices]
    return list(range(len(dataset)))


@torch.no_grad()
def predict(
    model: nn.Module,
    dataset: Dataset,
    *,
    batch_size: int = 16,
    device: torch.device | str = "cpu",
    num_workers: int = 0,
    bn_mode: Literal["eval", "train"] = "eval",
) -> tuple[list[dict[str, torch.Tensor]], list[int]]:
    """Detector outputs (on the CPU) and the image id of every image of ``dataset``, in order.

    ``bn_mode="train"``: BatchNorm layers normalise with each batch's statistics (their running
    statistics are left unchanged); the outputs then depend on ``batch_size``.
    """
    if bn_mode not in ("eval", "train"):
        raise ValueError(f"bn_mode must be 'eval' or 'train', got {bn_mode!r}")
    device = torch.device(device)
    was_training = model.training
    model.eval().to(device)
    bn_context = bn_batch_stats(model) if bn_mode == "train" else nullcontext()
    loader = DataLoader(
        dataset, batch_size=batch_size, shuffle=False, collate_fn=collate, num_workers=num_workers
    )
    outputs: list[dict[str, torch.Tensor]] = []
    image_ids: list[int] = []
    with bn_context:
        for images, targets in track(loader, "evaluate"):
            with torch.autocast(device.type, enabled=device.type == "cuda"):
                out = model([img.to(device) for img in images])
            outputs += [
                {k: v.float().cpu() if v.is_floating_point() else v.cpu() for k, v in o.items()}
                for o in out
            ]
            image_ids += [int(t["image_id"]) for t in targets]
    model.train(was_training)
    return outputs, image_ids


def evaluate(
    model: nn.Module,
    dataset: Dataset,
    *,
    batch_size: int = 16,
    device: torch.device | str = "cpu",
    backend: str = "faster",
    num_workers: int = 0,
    bn_mode: Literal["eval", "train"] = "eval",
) -> dict[str, float]:
    """COCO bbox stats (``mAP``, ``AP50``, ... as fractions) of ``model`` on ``dataset``.

    For a VOC dataset, ``VOC_AP50`` (area under the PR curve) and ``VOC07_AP50`` (11-point) are
    added; difficult boxes are ignored there. ``bn_mode`` as in :func:`predict`.
    """
    base = base_dataset(dataset)
    outputs, image_ids = predict(
        model,
        dataset,
        batch_size=batch_size,
        device=device,
        num_workers=num_workers,
        bn_mode=bn_mode,
    )
    results = detections_to_array(outputs, image_ids, base.cat_ids)  # no dict per detection
    gt = base.coco_gt(image_ids)  # only the scored images: a subset of a large set is cheap
    stats = evaluate_coco(gt, results, backend=backend, img_ids=image_ids)
    if hasattr(base, "voc_gt"):
        stats.update(_voc_stats(base, dataset, outputs))
    return stats


def _voc_stats(base: Any, dataset: Dataset, outputs: list[dict[str, torch.Tensor]]) -> dict:
    from nasdet.engine.voc_eval import evaluate_voc

    gt_all = base.voc_gt()
    gt = [gt_all[i] for i in subset_indices(dataset)]
    dets = [(o["boxes"].numpy(), o["scores"].numpy(), o["labels"].numpy()) for o in outputs]
    num_classes = len(base.categories) + 1
    return {
        "VOC_AP50": evaluate_voc(gt, dets, num_classes, use_07_metric=False)["mAP50"],
        "VOC07_AP50": evaluate_voc(gt, dets, num_classes, use_07_metric=True)["mAP50"],
    }
