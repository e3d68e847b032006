"""FLOP / MAC counting with :class:`torch.utils.flop_counter.FlopCounterMode`.

Conventions used everywhere in :mod:`nasdet.cost`:

* **FLOPs** are what ``FlopCounterMode`` reports: 2 FLOPs per multiply-accumulate of the matrix
  ops it knows (convolutions, ``mm``/``addmm``/``bmm``/``baddbmm``, attention). Element-wise ops
  (activations, BN in eval mode, additions, bias, pooling, interpolation, NMS) count as 0.
* **MACs** are ``FLOPs // 2``. torchvision's weight metadata ``_ops`` (documented as "GFLOPS") is in
  fact GMACs in this sense: ``resnet50`` measures 4.089 GMACs at 1x3x224x224 and its
  ``meta["_ops"]`` is 4.089.
* Counts are for the inputs given (batch included): pass a batch of 1 for per-image numbers.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from nasdet.cost._utils import eval_mode

logger = logging.getLogger(__name__)

__all__ = ["FlopCount", "count_flops"]


@dataclass(frozen=True)
class FlopCount:
    """Forward-pass cost of one call.

    Attributes:
        flops: floating point operations, 2 per multiply-accumulate (``FlopCounterMode``'s unit).
        macs: multiply-accumulates, ``flops // 2`` (the unit of torchvision's ``_ops``).
        by_module: FLOPs (not MACs) per submodule, keyed by ``named_modules()`` name; ``""`` is the
            module itself. Parent entries include their children. Only submodules with a non-zero
            count appear.
    """

    flops: int
    macs: int
    by_module: dict[str, int] = field(default_factory=dict, compare=False, repr=False)

    @property
    def gflops(self) -> float:
        """FLOPs in units of 1e9."""
        return self.flops / 1e9

    @property
    def gmacs(self) -> float:
        """MACs in units of 1e9 (comparable with torchvision's ``meta["_ops"]``)."""
        return self.macs / 1e9


def count_flops(module: nn.Module, *inputs: Any) -> FlopCount:
    """Count the FLOPs and MACs of ``module(*inputs)``.

    The module runs once in eval mode under ``torch.no_grad()``; the training flag of every
    submodule is restored afterwards. Inputs are passed unchanged, so they must already be on the
    module's device (a detector takes a list of (3, H, W) images).

    Returns:
        :class:`FlopCount` with ``flops`` (2 per MAC) and ``macs`` for exactly these inputs.
    """
    counter = FlopCounterMode(display=False)
    with eval_mode(module), torch.no_grad(), counter:
        module(*inputs)
    flops = int(counter.get_total_flops())
    by_module = _per_module(counter, type(module).__name__)
    logger.debug("%s: %d FLOPs (%d MACs)", type(module).__name__, flops, flops // 2)
    return FlopCount(flops=flops, macs=flops // 2, by_module=by_module)


def _per_module(counter: FlopCounterMode, root: str) -> dict[str, int]:
    """Rename FlopCounterMode's ``"Root.sub.name"`` keys to ``named_modules`` names."""
    result: dict[str, int] = {}
    for key, per_op in counter.get_flop_counts().items():
        if key == "Global":
            continue
        if key == root:
            name = ""
        elif key.startswith(root + "."):
            name = key[len(root) + 1 :]
        else:  # pragma: no cover - tracker naming we do not know; keep it as is
            name = key
        total = int(sum(per_op.values()))
        if total:
            result[name] = total
    return result
