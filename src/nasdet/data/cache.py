"""Keep a dataset's decoded items in memory, within a byte budget.

A weight-sharing search scores every candidate on the same images: the search split and the
images BN is recalibrated on. Decoding them again for each candidate (PNG/JPEG decode, the
transforms, ``tv_tensors`` wrapping) is work repeated hundreds of times; :class:`CachedSubset`
does it once per process, for as many items as fit in ``max_bytes``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch.utils.data import Dataset, Subset

__all__ = ["CachedSubset", "item_nbytes"]


def item_nbytes(item: Any) -> int:
    """Bytes held by the tensors of ``item`` (tensors inside tuples, lists and dicts counted)."""
    if isinstance(item, torch.Tensor):
        return item.nbytes
    if isinstance(item, dict):
        return sum(item_nbytes(v) for v in item.values())
    if isinstance(item, tuple | list):
        return sum(item_nbytes(v) for v in item)
    return 0


class CachedSubset(Subset):
    """``Subset(dataset, indices)`` that keeps each item it returns, until ``max_bytes`` are held.

    The first access of an index loads it from ``dataset``; while the items kept so far plus this
    one hold at most ``max_bytes`` (see :func:`item_nbytes`), it is kept and later accesses return
    the same objects. Items beyond the budget are loaded every time, so a split too large for
    the budget still works, only slower. ``indices`` defaults to every item.

    Use it only over deterministic transforms (evaluation transforms; training transforms
    without random flips): a kept item is one draw of the transforms, frozen. Consumers must not
    modify the returned tensors in place (torchvision detectors do not). Being a ``Subset``, it
    keeps ``evaluate``'s view of the base dataset (its ground truth and category ids).
    """

    def __init__(
        self, dataset: Dataset, indices: Sequence[int] | None = None, *, max_bytes: int
    ) -> None:
        if max_bytes < 0:
            raise ValueError(f"max_bytes must be >= 0, got {max_bytes}")
        super().__init__(dataset, list(range(len(dataset))) if indices is None else indices)
        self.max_bytes = max_bytes
        self.nbytes = 0
        self._items: dict[int, Any] = {}

    def __getitem__(self, idx: int) -> Any:
        if isinstance(idx, list):
            return self.__getitems__(idx)
        if idx < 0:
            idx += len(self)
        item = self._items.get(idx)
        if item is None:
            item = self.dataset[self.indices[idx]]
            size = item_nbytes(item)
            if self.nbytes + size <= self.max_bytes:
                self._items[idx] = item
                self.nbytes += size
        return item

    def __getitems__(self, indices: list[int]) -> list[Any]:
        return [self[i] for i in indices]

    @property
    def cached(self) -> int:
        """How many items are kept."""
        return len(self._items)
