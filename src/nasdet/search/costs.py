"""The cost of a candidate detector, as the search records it."""

from __future__ import annotations

import torch
from torch import nn

from nasdet.cost import detector_cost, measure_latency


def candidate_cost(model: nn.Module, size: int, *, latency: bool = False) -> dict[str, float]:
    """Params and FLOPs/MACs (whole detector and backbone) at ``size`` x ``size`` input; with
    ``latency``, also ``latency_ms``: the median CPU latency of one image (torch.benchmark)."""
    cost = detector_cost(model, (size, size))
    keys = ("params", "flops", "macs", "backbone_params", "backbone_flops", "backbone_macs")
    out = {k: float(getattr(cost, k)) for k in keys}
    if latency:
        image = torch.rand(3, size, size)
        out["latency_ms"] = measure_latency(model, [image], min_run_time=0.3).median_ms
    return out
