"""COCO bounding-box evaluation (the 12 standard stats) with two interchangeable backends.

``evaluate_coco`` runs the COCO bbox protocol with either faster-coco-eval (C++, the default) or
pycocotools (the reference implementation). Both receive the same validated, normalised inputs, so
they agree on every stat up to the order of floating-point sums (~1e-16; the tests check 1e-12).
``detections_to_coco`` turns torchvision detector outputs into COCO result dicts.

All stats are fractions in [0, 1]. As in pycocotools, a stat is ``-1.0`` when no category has any
(non-crowd) ground truth in the stat's area range, e.g. ``AP_small`` on a dataset without small
objects (all 12 are -1 without any ground truth): it means "undefined", not "bad", and must not be
averaged with other values.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import math
import time
from collections.abc import Mapping, Sequence
from numbers import Integral, Real
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

from nasdet.errors import DataError

__all__ = [
    "RESULT_COLUMNS",
    "STAT_KEYS",
    "CocoBackend",
    "detections_to_array",
    "detections_to_coco",
    "evaluate_coco",
    "load_json",
]

logger = logging.getLogger(__name__)

STAT_KEYS: tuple[str, ...] = (
    "mAP",
    "AP50",
    "AP75",
    "AP_small",
    "AP_medium",
    "AP_large",
    "AR1",
    "AR10",
    "AR100",
    "AR_small",
    "AR_medium",
    "AR_large",
)
"""The 12 COCO bbox stats, in the order of pycocotools' ``COCOeval.stats``."""

CocoBackend = Literal["faster", "pycocotools"]

RESULT_COLUMNS: tuple[str, ...] = ("image_id", "x", "y", "w", "h", "score", "category_id")
"""The columns of results given as one (N, 7) array (pycocotools' ``loadNumpyAnnotations``
layout): a whole evaluation's detections without a Python dict per detection."""

_GT_SOURCE = "ground truth"
_DT_SOURCE = "detections"


def load_json(path: str | Path, *, what: str) -> Any:
    """Read a JSON file; any failure becomes a :class:`DataError` naming the file.

    ``what`` describes the expected content ("COCO instances JSON") for the message.
    """
    path = Path(path)
    try:
        with path.open(encoding="utf-8") as f:
            return json.load(f)
    except FileNotFoundError:
        raise DataError(f"{path}: file not found; pass the path of a {what}") from None
    except json.JSONDecodeError as err:
        raise DataError(
            f"{path}: not valid JSON (line {err.lineno}, column {err.colno}: {err.msg}); "
            f"regenerate the {what}"
        ) from None
    except (OSError, UnicodeDecodeError) as err:
        raise DataError(f"{path}: cannot read the {what} ({err})") from None


def _is_int(value: object) -> bool:
    # type() fast paths: validation runs on every detection, ABC isinstance checks are slow.
    return type(value) is int or (isinstance(value, Integral) and not isinstance(value, bool))


def _is_real(value: object) -> bool:
    if isinstance(value, float):  # includes np.float64
        return math.isfinite(value)
    if isinstance(value, int):
        return not isinstance(value, bool)
    return isinstance(value, Real) and not isinstance(value, bool) and math.isfinite(value)


def _as_box(value: object) -> list[float] | None:
    """``[x, y, w, h]`` as floats when ``value`` is a valid COCO box, else ``None``."""
    if isinstance(value, np.ndarray):
        value = value.tolist()
    if type(value) not in (list, tuple) and (
        not isinstance(value, Sequence) or isinstance(value, str)
    ):
        return None
    if len(value) != 4 or not all(_is_real(v) for v in value) or value[2] < 0 or value[3] < 0:
        return None
    return [float(v) for v in value]


def _ids_of(items: object, key: str, source: str) -> list[int]:
    """The ``id`` of every dict in ``items`` (the ``images`` or ``categories`` list)."""
    if not isinstance(items, list):
        raise DataError(f"{source}: '{key}' must be a list of objects with an integer 'id'")
    ids = []
    for i, item in enumerate(items):
        if not isinstance(item, Mapping) or not _is_int(item.get("id")):
            raise DataError(f"{source}: {key}[{i}] has no integer 'id'; fix the {key} list")
        ids.append(int(item["id"]))
    if len(set(ids)) != len(ids):
        raise DataError(f"{source}: '{key}' has duplicate ids; every id must be unique")
    return ids


def _normalize_gt(gt: Mapping[str, Any] | str | Path) -> tuple[dict[str, Any], str]:
    """Validate a COCO instances dict (or file) and return a normalised copy and its name.

    The copy shares the ``images`` / ``categories`` entries but has fresh annotation dicts holding
    only what bbox evaluation reads, with ids renumbered ``1..N`` (pycocotools treats id 0 as
    "unmatched") and ``iscrowd`` defaulting to 0. The caller's dict is never modified.
    """
    if isinstance(gt, str | Path):
        source = str(gt)
        gt = load_json(gt, what="COCO instances JSON")
    else:
        source = _GT_SOURCE
    if not isinstance(gt, Mapping):
        kind = type(gt).__name__
        raise DataError(f"{source}: a COCO instances JSON must be an object, got {kind}")
    for key in ("images", "annotations", "categories"):
        if key not in gt:
            raise DataError(
                f"{source}: missing '{key}'; a COCO instances JSON needs "
                "'images', 'annotations' and 'categories'"
            )
    img_ids = set(_ids_of(gt["images"], "images", source))
    cat_ids = set(_ids_of(gt["categories"], "categories", source))
    if not isinstance(gt["annotations"], list):
        raise DataError(f"{source}: 'annotations' must be a list")
    anns = []
    for i, ann in enumerate(gt["annotations"]):
        if type(ann) is not dict and not isinstance(ann, Mapping):
            raise DataError(f"{source}: annotations[{i}] is not an object")
        missing = [k for k in ("image_id", "category_id", "bbox", "area") if k not in ann]
        if missing:
            raise DataError(
                f"{source}: annotations[{i}] lacks {missing}; every annotation needs "
                "image_id, category_id, bbox [x, y, w, h] and area (pixels^2)"
            )
        box = _as_box(ann["bbox"])
        if box is None or not _is_real(ann["area"]):
            raise DataError(
                f"{source}: annotations[{i}] needs bbox [x, y, w, h] with w, h >= 0 "
                "and a finite numeric area"
            )
        if ann["image_id"] not in img_ids:
            raise DataError(
                f"{source}: annotations[{i}] has image_id {ann['image_id']!r}, "
                "which is not in 'images'"
            )
        if ann["category_id"] not in cat_ids:
            raise DataError(
                f"{source}: annotations[{i}] has category_id "
                f"{ann['category_id']!r}, which is not in 'categories'"
            )
        anns.append(
            {
                "id": i + 1,
                "image_id": int(ann["image_id"]),
                "category_id": int(ann["category_id"]),
                "bbox": box,
                "area": float(ann["area"]),
                "iscrowd": int(bool(ann.get("iscrowd", 0))),
            }
        )
    dataset = {"images": gt["images"], "categories": gt["categories"], "annotations": anns}
    return dataset, source


def _normalize_detections(
    detections: Sequence[Mapping[str, Any]] | np.ndarray | str | Path,
    img_ids: set[int],
    cat_ids: set[int],
    keep_img_ids: set[int],
) -> list[dict[str, Any]]:
    """Validate COCO result dicts and return fresh copies of those on ``keep_img_ids``.

    Raises :class:`DataError` naming the file (or "detections") and the offending entry for a
    missing key, a malformed box or score, or an image / category id unknown to the ground truth.
    """
    if isinstance(detections, np.ndarray):
        return _normalize_array(detections, img_ids, cat_ids, keep_img_ids)
    if isinstance(detections, str | Path):
        source = str(detections)
        detections = load_json(detections, what="COCO results JSON")
    else:
        source = _DT_SOURCE
    if not isinstance(detections, Sequence) or isinstance(detections, str | Mapping):
        raise DataError(
            f"{source}: COCO results must be a list of objects with image_id, "
            "category_id, bbox [x, y, w, h] and score"
        )
    out = []
    for i, det in enumerate(detections):
        if type(det) is not dict and not isinstance(det, Mapping):
            raise DataError(f"{source}: entry {i} is not an object")
        missing = [k for k in ("image_id", "category_id", "bbox", "score") if k not in det]
        if missing:
            raise DataError(
                f"{source}: entry {i} lacks {missing}; each result needs image_id, "
                "category_id, bbox [x, y, w, h] and score"
            )
        image_id, category_id = det["image_id"], det["category_id"]
        if not _is_int(image_id) or int(image_id) not in img_ids:
            raise _bad_entry(source, i, "image_id", image_id, cat_ids)
        if not _is_int(category_id) or int(category_id) not in cat_ids:
            raise _bad_entry(source, i, "category_id", category_id, cat_ids)
        box = _as_box(det["bbox"])
        if box is None:
            raise _bad_entry(source, i, "bbox", det["bbox"], cat_ids)
        if not _is_real(det["score"]):
            raise _bad_entry(source, i, "score", det["score"], cat_ids)
        if int(image_id) in keep_img_ids:
            out.append(
                {
                    "image_id": int(image_id),
                    "category_id": int(category_id),
                    "bbox": box,
                    "score": float(det["score"]),
                }
            )
    return out


def _bad_entry(source: str, i: int, key: str, value: object, cat_ids: set[int]) -> DataError:
    """The error for entry ``i`` of the results whose ``key`` is invalid."""
    why = {
        "image_id": "which is not an image of the ground truth; evaluate against the dataset the "
        "detections were made on",
        "category_id": f"which is not a category of the ground truth (ids {sorted(cat_ids)}); "
        "map labels with the dataset's cat_ids (see detections_to_coco)",
        "bbox": "expected [x, y, w, h] with finite values and w, h >= 0",
        "score": "expected a finite number",
    }[key]
    sep = "; " if key in ("bbox", "score") else ", "
    return DataError(f"{source}: entry {i} has {key} {value!r}{sep}{why}")


def _normalize_array(
    array: np.ndarray, img_ids: set[int], cat_ids: set[int], keep_img_ids: set[int]
) -> list[dict[str, Any]]:
    """:func:`_normalize_detections` for results as one (N, 7) array (the layout of
    :data:`RESULT_COLUMNS`), validated with array operations: the same checks in the same
    order, and the same error for the first invalid entry."""
    if array.ndim != 2 or array.shape[1] != len(RESULT_COLUMNS):
        raise DataError(
            f"{_DT_SOURCE}: an array of results must be (N, 7) with columns "
            f"{', '.join(RESULT_COLUMNS)}; got shape {tuple(array.shape)}"
        )
    a = np.asarray(array, dtype=np.float64)
    image, box, score, category = a[:, 0], a[:, 1:5], a[:, 5], a[:, 6]
    checks = (
        ("image_id", ~np.isin(image, sorted(img_ids))),
        ("category_id", ~np.isin(category, sorted(cat_ids))),
        ("bbox", ~(np.isfinite(box).all(axis=1) & (box[:, 2] >= 0) & (box[:, 3] >= 0))),
        ("score", ~np.isfinite(score)),
    )
    bad = np.logical_or.reduce([mask for _, mask in checks])
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        key = next(key for key, mask in checks if mask[i])
        value = {"image_id": _number(image[i]), "category_id": _number(category[i]),
                 "bbox": box[i].tolist(), "score": float(score[i])}[key]  # fmt: skip
        raise _bad_entry(_DT_SOURCE, i, key, value, cat_ids)
    kept = a[np.isin(image, sorted(keep_img_ids))]
    return _rows_to_dicts(kept)


def _number(value: float) -> int | float:
    """An id read from a float array: an int when it is integral (as it is shown in errors)."""
    return int(value) if float(value).is_integer() else float(value)


def _rows_to_dicts(array: np.ndarray) -> list[dict[str, Any]]:
    """COCO result dicts of the rows of a validated (N, 7) results array."""
    return [
        {"image_id": int(i), "category_id": int(c), "bbox": [x, y, w, h], "score": s}
        for i, x, y, w, h, s, c in array.tolist()
    ]


def _log_library_output(backend: str, text: str) -> None:
    for line in text.splitlines():
        if line.strip():
            logger.debug("[%s] %s", backend, line)


def _make_evaluator(
    backend: CocoBackend, dataset: dict[str, Any], dets: list[dict[str, Any]]
) -> Any:
    """A bbox ``COCOeval`` of ``backend`` over ``dataset`` and ``dets`` (not yet run)."""
    if backend == "faster":
        from faster_coco_eval import COCO, COCOeval_faster

        coco_gt = COCO(dataset, print_function=logger.debug)
        coco_dt = coco_gt.loadRes(dets)  # builds an empty result set for []
        return COCOeval_faster(coco_gt, coco_dt, iouType="bbox", print_function=logger.debug)

    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    coco_gt = COCO()
    coco_gt.dataset = dataset
    coco_gt.createIndex()
    if dets:
        coco_dt = coco_gt.loadRes(dets)
    else:
        # loadRes([]) crashes (it inspects anns[0]); build the empty result set it would have
        # built (same images and categories, no annotations); COCOeval handles it normally.
        coco_dt = COCO()
        coco_dt.dataset = {**dataset, "annotations": []}
        coco_dt.createIndex()
    return COCOeval(coco_gt, coco_dt, iouType="bbox")


def evaluate_coco(
    gt: Mapping[str, Any] | str | Path,
    detections: Sequence[Mapping[str, Any]] | np.ndarray | str | Path,
    *,
    backend: CocoBackend = "faster",
    img_ids: Sequence[int] | None = None,
) -> dict[str, float]:
    """Compute the 12 COCO bbox stats of ``detections`` against ``gt``.

    Args:
        gt: a COCO instances dict (``images``, ``annotations`` with ``image_id``, ``category_id``,
            ``bbox`` [x, y, w, h] in pixels, ``area`` in pixels^2, optional ``iscrowd``;
            ``categories``) or the path of such a JSON file. It is not modified.
        detections: COCO result dicts (``image_id``, ``category_id``, ``bbox`` [x, y, w, h] in
            pixels, ``score``), the path of a results JSON, or one (N, 7) float array with the
            columns :data:`RESULT_COLUMNS` (:func:`detections_to_array`; checked with array
            operations, so large result sets are validated quickly). An empty list is valid
            (every AP and AR is then 0, or -1 where undefined).
        backend: ``"faster"`` (faster-coco-eval, C++) or ``"pycocotools"`` (reference).
        img_ids: evaluate only these images (a subset of the dataset); detections on other
            images of ``gt`` are ignored. ``None`` evaluates every image of ``gt``.

    Returns:
        ``{key: value for key in STAT_KEYS}``, fractions in [0, 1]; ``-1.0`` where no category has
        ground truth in that area range (pycocotools' convention for "undefined").

    Raises:
        DataError: unreadable / malformed input, a detection on an image or category that ``gt``
            does not have, or an ``img_ids`` entry that is not an image of ``gt``.
    """
    if backend not in ("faster", "pycocotools"):
        raise ValueError(f"backend must be 'faster' or 'pycocotools', got {backend!r}")
    start = time.perf_counter()
    dataset, gt_source = _normalize_gt(gt)
    all_img_ids = {int(img["id"]) for img in dataset["images"]}
    cat_ids = {int(cat["id"]) for cat in dataset["categories"]}
    if img_ids is None:
        eval_img_ids = sorted(all_img_ids)
    else:
        unknown = [i for i in img_ids if not _is_int(i) or int(i) not in all_img_ids]
        if unknown:
            raise DataError(
                f"img_ids contains {unknown[0]!r}, which is not an image of "
                f"{gt_source}; pass ids from its 'images' list"
            )
        eval_img_ids = sorted({int(i) for i in img_ids})
        if not eval_img_ids:
            raise DataError("img_ids is empty; pass None to evaluate every image")
    dets = _normalize_detections(detections, all_img_ids, cat_ids, set(eval_img_ids))

    captured = io.StringIO()
    with contextlib.redirect_stdout(captured):  # both libraries print progress and the summary
        evaluator = _make_evaluator(backend, dataset, dets)
        evaluator.params.imgIds = eval_img_ids
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    _log_library_output(backend, captured.getvalue())
    values = evaluator.stats[: len(STAT_KEYS)]

    stats = {key: float(v) for key, v in zip(STAT_KEYS, values, strict=True)}
    logger.debug(
        "COCO bbox eval [%s]: %d images, %d detections, mAP %.4f, AP50 %.4f (%.3f s)",
        backend,
        len(eval_img_ids),
        len(dets),
        stats["mAP"],
        stats["AP50"],
        time.perf_counter() - start,
    )
    return stats


def detections_to_array(
    outputs: Sequence[Mapping[str, torch.Tensor]],
    image_ids: Sequence[int],
    cat_ids: Sequence[int],
) -> np.ndarray:
    """Torchvision detector outputs as one float64 (N, 7) results array, columns
    :data:`RESULT_COLUMNS`, which :func:`evaluate_coco` takes as it is.

    Args:
        outputs: one dict per image with ``boxes`` (N, 4) XYXY in pixels, ``scores`` (N,) and
            ``labels`` (N,) int64 in ``0..K`` (torchvision convention: 0 is the background;
            RetinaNet/FCOS keep a background logit and may emit it — such boxes are dropped).
        image_ids: the COCO image id of each output, same length as ``outputs``.
        cat_ids: ``cat_ids[l - 1]`` is the COCO category id of label ``l`` (may be
            non-contiguous), as exposed by nasdet datasets.

    Returns:
        Per kept detection, in the order of the outputs: image id, the box as [x, y, w, h]
        (unrounded pixels, converted in float64), score, category id.

    Raises:
        DataError: a label outside ``0..len(cat_ids)`` (the model's ``num_classes`` does not
            match the dataset), or ``outputs`` and ``image_ids`` of different lengths.
    """
    return _to_array(outputs, image_ids, cat_ids, "detections_to_array")


def _to_array(
    outputs: Sequence[Mapping[str, torch.Tensor]],
    image_ids: Sequence[int],
    cat_ids: Sequence[int],
    caller: str,
) -> np.ndarray:
    """:func:`detections_to_array`; its errors begin with ``caller``, the function called."""
    if len(outputs) != len(image_ids):
        raise DataError(
            f"{caller}: {len(outputs)} outputs but {len(image_ids)} "
            "image ids; pass one image id per output"
        )
    num_labels = len(cat_ids)
    categories = torch.tensor([float(c) for c in cat_ids], dtype=torch.float64)
    rows = [torch.zeros((0, len(RESULT_COLUMNS)), dtype=torch.float64)]
    for output, image_id in zip(outputs, image_ids, strict=True):
        boxes = torch.as_tensor(output["boxes"]).detach().to("cpu", torch.float64).reshape(-1, 4)
        scores = torch.as_tensor(output["scores"]).detach().to("cpu", torch.float64).reshape(-1)
        labels = torch.as_tensor(output["labels"]).detach().to("cpu", torch.int64).reshape(-1)
        if not len(boxes) == len(scores) == len(labels):
            raise DataError(
                f"{caller}: image {image_id} has {len(boxes)} boxes, "
                f"{len(scores)} scores and {len(labels)} labels; they must match"
            )
        keep = labels != 0
        boxes, scores, labels = boxes[keep], scores[keep], labels[keep]
        if len(labels) and (int(labels.min()) < 1 or int(labels.max()) > num_labels):
            bad = labels[(labels < 1) | (labels > num_labels)][0]
            raise DataError(
                f"{caller}: image {image_id} has label {int(bad)}, outside "
                f"1..{num_labels}; the model's num_classes must be len(cat_ids) + 1"
            )
        boxes[:, 2:] -= boxes[:, :2]
        image = torch.full((len(labels), 1), float(int(image_id)), dtype=torch.float64)
        rows.append(torch.cat([image, boxes, scores[:, None], categories[labels - 1, None]], 1))
    return torch.cat(rows).numpy()


def detections_to_coco(
    outputs: Sequence[Mapping[str, torch.Tensor]],
    image_ids: Sequence[int],
    cat_ids: Sequence[int],
) -> list[dict[str, Any]]:
    """Convert torchvision detector outputs to COCO result dicts: the rows of
    :func:`detections_to_array` (same arguments and errors) as
    ``{"image_id", "category_id", "bbox": [x, y, w, h], "score"}`` dicts with unrounded float
    coordinates in pixels."""
    return _rows_to_dicts(_to_array(outputs, image_ids, cat_ids, "detections_to_coco"))
