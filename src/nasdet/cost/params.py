"""Parameter counts."""

from __future__ import annotations

from torch import nn


def count_params(module: nn.Module, *, trainable_only: bool = False) -> int:
    """Number of scalar parameters of ``module`` (buffers such as BN running stats excluded).

    Shared parameters are counted once (``nn.Module.parameters`` deduplicates them), matching
    torchvision's ``meta["num_params"]``. With ``trainable_only`` only parameters with
    ``requires_grad`` are counted.
    """
    return sum(p.numel() for p in module.parameters() if p.requires_grad or not trainable_only)
