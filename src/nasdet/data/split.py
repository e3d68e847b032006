"""Index splits and batching helpers for detection datasets."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
from torch import Tensor

__all__ = ["collate", "known_image_ids", "split_indices"]


def known_image_ids(image_ids: Iterable[int], known: Iterable[int], source: object) -> set[int]:
    """``image_ids`` as a set; ``ValueError`` naming ``source`` for the first one (in order of
    id) that is not among ``known``."""
    keep = set(image_ids)
    unknown = sorted(keep - set(known))
    if unknown:
        raise ValueError(f"image id {unknown[0]} is not in {source}")
    return keep


def split_indices(n: int, fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """Carve a search-validation portion out of ``n`` training images (aw_nas's ``data_portion``).

    Returns ``(kept, carved)``: sorted, disjoint index lists covering ``range(n)``, ``carved``
    holding ``round(n * fraction)`` indices, at least one and at most ``n - 1`` when
    ``fraction > 0``. Deterministic for ``seed``. Raises ``ValueError`` when ``fraction`` is
    outside [0, 1) or when ``fraction > 0`` and ``n < 2``.
    """
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    if not 0.0 <= fraction < 1.0:
        raise ValueError(f"split fraction must be in [0, 1), got {fraction}")
    if fraction == 0.0:
        return list(range(n)), []
    if n < 2:
        raise ValueError(f"cannot split {n} image(s) with fraction {fraction}: need at least 2")
    n_carved = min(max(int(round(n * fraction)), 1), n - 1)
    order = np.random.default_rng(seed).permutation(n)
    return sorted(int(i) for i in order[n_carved:]), sorted(int(i) for i in order[:n_carved])


def collate(batch: Sequence[tuple[Tensor, dict[str, Any]]]) -> tuple[list[Tensor], list[dict]]:
    """Collate ``(image, target)`` items into ``(images, targets)`` lists (sizes may differ)."""
    images = [item[0] for item in batch]
    targets = [item[1] for item in batch]
    return images, targets
