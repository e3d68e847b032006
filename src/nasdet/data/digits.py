"""A small, bundled detection set made from scikit-learn's handwritten digits (no download).

``make_digits`` writes a COCO-format detection set: 128x128 RGB images holding 1-4 non-overlapping
digits (side 16-44 px) in colours that contrast with a textured background. Category ids are
deliberately non-contiguous (``2 * digit + 1``) so that the category-id <-> label mapping of the
dataset classes is exercised every day. ``make_digits_classification`` writes an ImageFolder set of
single digits for backbone (re-)pretraining.

The 1797 scikit-learn samples are split, per class and by seed, into disjoint train and val pools
(80 % / 20 %); the val split of both generators only draws from the val pool, so a model never sees
a validation digit's handwriting in training (with the same seed for both generators, not even
during pretraining). Output is deterministic: the same arguments give the same bytes.

A set appears atomically (:mod:`nasdet.data._publish`): it is written into a temporary sibling
folder renamed into place once complete, so ``out`` either does not exist or holds a complete set,
whatever kills the writer. A complete set carries ``MANIFEST`` (``nasdet-digits.json``), the
generator's arguments: ``ensure_digits`` / ``ensure_digits_classification`` reuse a set made with
the same arguments and generate it otherwise, safely from several processes at once.
"""

from __future__ import annotations

import json
import logging
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from nasdet.data._publish import MANIFEST, publish, reusable
from nasdet.progress import track

__all__ = [
    "ALPHA_THRESHOLD",
    "DIGIT_CATEGORY_IDS",
    "MANIFEST",
    "digit_alpha",
    "digit_pools",
    "ensure_digits",
    "ensure_digits_classification",
    "make_digits",
    "make_digits_classification",
    "tight_box",
]

log = logging.getLogger(__name__)

#: Category id of digit ``d`` is ``DIGIT_CATEGORY_IDS[d] == 2 * d + 1`` (non-contiguous on purpose).
DIGIT_CATEGORY_IDS: tuple[int, ...] = tuple(2 * d + 1 for d in range(10))
#: A digit pixel is "visible" (inside its box) when its alpha exceeds this value (alpha in [0, 1]).
ALPHA_THRESHOLD = 0.1
VAL_POOL_FRACTION = 0.2
MIN_SIDE, MAX_SIDE = 16, 44  # digit side in px for the detection set (128 px images)
MAX_DIGITS = 4
PLACEMENT_TRIES = 50  # bounded rejection sampling of a digit position
COLOUR_CANDIDATES = 16
MIN_LUMA_CONTRAST = 0.35  # |luma(digit colour) - luma(local background)|, luma in [0, 1]
_LUMA = np.array([0.299, 0.587, 0.114])
FORMAT_VERSION = 1  # bump when the generators' output changes: older sets are then regenerated
# Stream ids mixed into the seed so that each split / image has its own random stream.
_POOLS, _DET_TRAIN, _DET_VAL, _CLS_TRAIN, _CLS_VAL = range(5)


@lru_cache(maxsize=1)
def _sklearn_digits() -> tuple[np.ndarray, np.ndarray]:
    """The scikit-learn digits: images (1797, 8, 8) float in [0, 1] and targets (1797,) int."""
    from sklearn.datasets import load_digits

    bunch = load_digits()
    images = np.asarray(bunch.images, dtype=np.float64) / 16.0
    return images, np.asarray(bunch.target, dtype=np.int64)


def digit_pools(seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Disjoint (train_pool, val_pool) index arrays into scikit-learn's 1797 digits.

    Split per class (20 % of every class goes to val), deterministic for ``seed``; both arrays are
    sorted and together cover all samples.
    """
    _, targets = _sklearn_digits()
    rng = np.random.default_rng([seed, _POOLS])
    train, val = [], []
    for digit in range(10):
        idx = rng.permutation(np.flatnonzero(targets == digit))
        n_val = int(round(len(idx) * VAL_POOL_FRACTION))
        val.append(idx[:n_val])
        train.append(idx[n_val:])
    return np.sort(np.concatenate(train)), np.sort(np.concatenate(val))


@lru_cache(maxsize=64)
def _interp_matrix(n_in: int, n_out: int) -> np.ndarray:
    """(n_out, n_in) matrix of 1-D bilinear resampling with half-pixel centres (edges clamped)."""
    src = np.clip((np.arange(n_out) + 0.5) * n_in / n_out - 0.5, 0, n_in - 1)
    i0 = np.floor(src).astype(np.int64)
    i1 = np.minimum(i0 + 1, n_in - 1)
    w = src - i0
    m = np.zeros((n_out, n_in))
    np.add.at(m, (np.arange(n_out), i0), 1 - w)
    np.add.at(m, (np.arange(n_out), i1), w)
    return m


def _resize(a: np.ndarray, height: int, width: int) -> np.ndarray:
    """Bilinear resize of the last two axes of ``a`` to (height, width)."""
    return _interp_matrix(a.shape[-2], height) @ a @ _interp_matrix(a.shape[-1], width).T


def digit_alpha(sample: np.ndarray, side: int) -> np.ndarray:
    """Alpha mask (side, side) in [0, 1] of an 8x8 digit in [0, 1], upscaled bilinearly."""
    return np.clip(_resize(sample, side, side), 0.0, 1.0)


def tight_box(alpha: np.ndarray, threshold: float = ALPHA_THRESHOLD) -> tuple[int, int, int, int]:
    """Tight box ``(x, y, w, h)`` in px of the pixels of ``alpha`` above ``threshold``.

    The box covers whole pixels: column ``x`` is the first visible one and ``x + w`` is one past
    the last. Raises ``ValueError`` when no pixel is visible.
    """
    mask = alpha > threshold
    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    if rows.size == 0:
        raise ValueError("digit has no visible pixel")
    return int(cols[0]), int(rows[0]), int(cols[-1] - cols[0] + 1), int(rows[-1] - rows[0] + 1)


def _background(rng: np.random.Generator, size: int) -> np.ndarray:
    """Textured background (3, size, size) in [0, 1]: base colour + low-frequency noise + ramp."""
    base = rng.uniform(0.0, 1.0, size=(3, 1, 1))
    grid = int(rng.integers(3, 9))
    low = rng.normal(0.0, rng.uniform(0.05, 0.25), size=(3, grid, grid))
    theta = rng.uniform(0.0, 2 * np.pi)
    coords = (np.arange(size) + 0.5) / size - 0.5
    ramp = np.cos(theta) * coords[None, :] + np.sin(theta) * coords[:, None]
    ramp = ramp[None] * rng.uniform(0.0, 0.4) * rng.uniform(0.5, 1.0, size=(3, 1, 1))
    return np.clip(base + _resize(low, size, size) + ramp, 0.0, 1.0)


def _contrasting_colour(rng: np.random.Generator, background: np.ndarray) -> np.ndarray:
    """An RGB colour (3,) in [0, 1] whose luma differs from ``background``'s mean by >= 0.35."""
    luma_bg = float(_LUMA @ background.reshape(3, -1).mean(axis=1))
    candidates = rng.uniform(0.0, 1.0, size=(COLOUR_CANDIDATES, 3))
    ok = np.flatnonzero(np.abs(candidates @ _LUMA - luma_bg) >= MIN_LUMA_CONTRAST)
    if ok.size:
        return candidates[ok[0]]
    return np.zeros(3) if luma_bg > 0.5 else np.ones(3)


def _paste(image: np.ndarray, alpha: np.ndarray, x: int, y: int, rng: np.random.Generator) -> None:
    """Blend a digit of ``alpha`` at (x, y) into ``image`` (3, H, W) in place."""
    side = alpha.shape[0]
    region = image[:, y : y + side, x : x + side]
    colour = _contrasting_colour(rng, region)
    region[...] = region * (1 - alpha) + colour[:, None, None] * alpha


def _finish(image: np.ndarray, rng: np.random.Generator) -> Image.Image:
    """Add pixel noise and quantise (3, H, W) float in [0, 1] to an 8-bit RGB PIL image."""
    image = image + rng.normal(0.0, rng.uniform(0.0, 0.04), size=image.shape)
    pixels = np.round(np.clip(image, 0.0, 1.0) * 255).astype(np.uint8)
    return Image.fromarray(np.ascontiguousarray(pixels.transpose(1, 2, 0)), mode="RGB")


def _overlaps(x: int, y: int, side: int, placed: list[tuple[int, int, int]]) -> bool:
    """Whether the square (x, y, side) px intersects any already placed square."""
    return any(x < px + s and px < x + side and y < py + s and py < y + side
               for px, py, s in placed)


def _detection_image(
    rng: np.random.Generator, pool: np.ndarray, size: int
) -> tuple[Image.Image, list[tuple[int, list[float], int]]]:
    """One detection image and its objects ``(digit, [x, y, w, h] px, sklearn index)``."""
    samples, targets = _sklearn_digits()
    image = _background(rng, size)
    max_side = min(MAX_SIDE, size)
    placed: list[tuple[int, int, int]] = []
    objects = []
    for _ in range(int(rng.integers(1, MAX_DIGITS + 1))):
        side = int(rng.integers(min(MIN_SIDE, max_side), max_side + 1))
        for _ in range(PLACEMENT_TRIES):
            x, y = (int(v) for v in rng.integers(0, size - side + 1, size=2))
            if not _overlaps(x, y, side, placed):
                break
        else:  # no free spot after PLACEMENT_TRIES: this image gets one digit fewer
            continue
        index = int(rng.choice(pool))
        alpha = digit_alpha(samples[index], side)
        _paste(image, alpha, x, y, rng)
        bx, by, bw, bh = tight_box(alpha)
        placed.append((x, y, side))
        objects.append((int(targets[index]), [float(x + bx), float(y + by), float(bw), float(bh)],
                        index))
    return _finish(image, rng), objects


def _save_png(image: Image.Image, path: Path) -> None:
    """Write one generated image (fast PNG compression)."""
    image.save(path, format="PNG", compress_level=1)


def _write_detection_split(
    out: Path, split: str, count: int, pool: np.ndarray, size: int, seed: int, stream: int
) -> None:
    images, annotations = [], []
    for i in track(range(count), f"digits {split}"):
        rng = np.random.default_rng([seed, stream, i])
        image, objects = _detection_image(rng, pool, size)
        file_name = f"{split}_{i:06d}.png"
        _save_png(image, out / "images" / file_name)
        images.append({"id": i + 1, "file_name": file_name, "width": size, "height": size})
        for digit, bbox, index in objects:
            annotations.append({
                "id": len(annotations) + 1, "image_id": i + 1,
                "category_id": DIGIT_CATEGORY_IDS[digit], "bbox": bbox,
                "area": bbox[2] * bbox[3], "iscrowd": 0, "sklearn_index": index,
            })
    data = {
        "info": {"description": f"nasdet digits ({split}, seed {seed})", "version": "1"},
        "images": images,
        "annotations": annotations,
        "categories": [{"id": cid, "name": str(d)} for d, cid in enumerate(DIGIT_CATEGORY_IDS)],
    }
    (out / "annotations" / f"instances_{split}.json").write_text(json.dumps(data))


def make_digits(
    out: Path, *, train: int = 3000, val: int = 500, size: int = 128, seed: int = 0
) -> Path:
    """Write the COCO-format digits detection set under ``out`` and return ``out``.

    Layout: ``out/annotations/instances_{train,val}.json`` and
    ``out/images/{train,val}_NNNNNN.png``.
    ``train``/``val`` are image counts, ``size`` the square image side in px (>= 16). Boxes are
    XYWH float px, tight around the digit's pixels with alpha > ``ALPHA_THRESHOLD``; each
    annotation also records ``sklearn_index``, the scikit-learn sample it was drawn from.
    Always writes afresh, atomically (see the module docstring; a manifest ``MANIFEST`` of the
    arguments is added): a digits set already at ``out`` is replaced; a non-empty folder that is
    not one raises ``DataError`` and is left alone.
    """
    return _make_detection(Path(out), train, val, size, seed, keep_same=False)


def ensure_digits(
    root: Path, *, train: int = 3000, val: int = 500, size: int = 128, seed: int = 0
) -> Path:
    """``root`` holding the digits detection set of these arguments (see :func:`make_digits`):
    returned as is when it already does, else generated there atomically — also when other
    processes do the same at once — replacing a digits set made with other arguments
    (``DataError`` for a non-empty folder that is not a digits set)."""
    root = Path(root)
    if reusable(root, _detection_manifest(train, val, size, seed)):
        return root
    return _make_detection(root, train, val, size, seed, keep_same=True)


def _make_detection(
    out: Path, train: int, val: int, size: int, seed: int, *, keep_same: bool
) -> Path:
    if train < 0 or val < 0:
        raise ValueError(f"image counts must be >= 0, got train={train}, val={val}")
    if size < MIN_SIDE:
        raise ValueError(f"size must be >= {MIN_SIDE} px, got {size}")
    train_pool, val_pool = digit_pools(seed)

    def write(folder: Path) -> None:
        (folder / "annotations").mkdir()
        (folder / "images").mkdir()
        _write_detection_split(folder, "train", train, train_pool, size, seed, _DET_TRAIN)
        _write_detection_split(folder, "val", val, val_pool, size, seed, _DET_VAL)

    log.info("writing digits detection set to %s (%d train, %d val images)", out, train, val)
    manifest = _detection_manifest(train, val, size, seed)
    return publish(out, manifest, write, keep_same=keep_same)


def _detection_manifest(train: int, val: int, size: int, seed: int) -> dict[str, Any]:
    return {"generator": "make_digits", "version": FORMAT_VERSION, "train": train, "val": val,
            "size": size, "seed": seed}


def make_digits_classification(
    out: Path, *, per_class_train: int = 200, per_class_val: int = 50, size: int = 32, seed: int = 0
) -> Path:
    """Write an ImageFolder set ``out/{train,val}/<digit>/NNNNN.png`` of single digits; return out.

    Each ``size`` x ``size`` px image holds one digit (side ``size // 2`` to ``size - 4`` px) in a
    contrasting colour on a textured background; val digits come from the val pool only.
    ``per_class_*`` are image counts per digit. Always writes afresh, atomically, like
    :func:`make_digits`.
    """
    return _make_classification(
        Path(out), per_class_train, per_class_val, size, seed, keep_same=False
    )


def ensure_digits_classification(
    root: Path,
    *,
    per_class_train: int = 200,
    per_class_val: int = 50,
    size: int = 32,
    seed: int = 0,
) -> Path:
    """``root`` holding the digits classification set of these arguments (see
    :func:`make_digits_classification`): returned as is when it already does, else generated
    there, as :func:`ensure_digits` does."""
    root = Path(root)
    if reusable(root, _classification_manifest(per_class_train, per_class_val, size, seed)):
        return root
    return _make_classification(root, per_class_train, per_class_val, size, seed, keep_same=True)


def _make_classification(
    out: Path, per_class_train: int, per_class_val: int, size: int, seed: int, *, keep_same: bool
) -> Path:
    if per_class_train < 0 or per_class_val < 0:
        raise ValueError("per-class image counts must be >= 0")
    if size < 8:
        raise ValueError(f"size must be >= 8 px, got {size}")
    train_pool, val_pool = digit_pools(seed)

    def write(folder: Path) -> None:
        _write_classification_split(
            folder, "train", per_class_train, train_pool, size, seed, _CLS_TRAIN
        )
        _write_classification_split(folder, "val", per_class_val, val_pool, size, seed, _CLS_VAL)

    manifest = _classification_manifest(per_class_train, per_class_val, size, seed)
    publish(out, manifest, write, keep_same=keep_same)
    log.info("wrote digits classification set to %s", out)
    return out


def _classification_manifest(
    per_class_train: int, per_class_val: int, size: int, seed: int
) -> dict[str, Any]:
    return {"generator": "make_digits_classification", "version": FORMAT_VERSION,
            "per_class_train": per_class_train, "per_class_val": per_class_val, "size": size,
            "seed": seed}


def _write_classification_split(
    out: Path, split: str, per_class: int, pool: np.ndarray, size: int, seed: int, stream: int
) -> None:
    samples, targets = _sklearn_digits()
    for digit in range(10):
        folder = out / split / str(digit)
        folder.mkdir(parents=True)
        class_pool = pool[targets[pool] == digit]
        for i in range(per_class):
            rng = np.random.default_rng([seed, stream, digit, i])
            image = _background(rng, size)
            side = int(rng.integers(size // 2, max(size // 2, size - 4) + 1))
            x, y = (int(v) for v in rng.integers(0, size - side + 1, size=2))
            _paste(image, digit_alpha(samples[int(rng.choice(class_pool))], side), x, y, rng)
            _save_png(_finish(image, rng), folder / f"{i:05d}.png")
