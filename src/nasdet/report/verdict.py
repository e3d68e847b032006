"""The one-line verdict of a run: its winner against the baseline it was compared with.

A run trains each net once (one seed), so the line says that it decides nothing on its own and
names ``nasdet compare``, which trains both over several seeds and tests the difference.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

__all__ = ["dominates", "verdict"]

_SEEDS = "one seed: `nasdet compare` trains both over several seeds for a verdict with its spread"


def dominates(value: float, base_value: float, costs: Sequence[tuple[float, float]]) -> bool:
    """Pareto dominance of a net over a baseline: its metric ``value`` (higher is better) no
    lower than ``base_value``, none of its ``costs`` (``(cost, baseline's cost)`` pairs) larger,
    and the metric or one cost strictly better."""
    if value < base_value or any(c > bc for c, bc in costs):
        return False
    return value > base_value or any(c < bc for c, bc in costs)


def verdict(
    metrics: Mapping[str, float],
    cost: Mapping[str, float],
    base_metrics: Mapping[str, float],
    base_cost: Mapping[str, float],
    metric: str,
    cost_keys: Sequence[str] = ("params", "flops"),
) -> str:
    """``the searched net dominates the baseline: mAP 0.52 vs 0.50 (+0.02), params 0.80x, flops
    1.00x (...)``, or the trade-off it is, or that it does NOT beat the baseline.

    Every cost of ``cost_keys`` measured for both nets counts: the searched net is cheaper when
    none of them is larger and one is smaller, and larger when any of them is larger (fewer
    parameters but more FLOPs is a trade-off, not a win). A cost measured for neither net is
    left out; one measured for only one of them gives no verdict.
    """
    if metrics.get(metric) is None or base_metrics.get(metric) is None:
        return f"no verdict: {metric} is missing for the winner or the baseline"
    keys = []
    for key in cost_keys:
        a, b = cost.get(key), base_cost.get(key)
        if a is None and b is None:
            continue
        if a is None or b is None:
            return f"no verdict: {key} is missing for the winner or the baseline"
        keys.append(key)
    if not keys:
        return f"no verdict: no cost ({', '.join(cost_keys)}) was measured for either net"
    m, bm = float(metrics[metric]), float(base_metrics[metric])
    pairs = [(float(cost[k]), float(base_cost[k])) for k in keys]
    ratios = ", ".join(f"{k} {c / bc:.2f}x" if bc else f"{k} n/a"
                       for k, (c, bc) in zip(keys, pairs, strict=True))  # fmt: skip
    facts = f"{metric} {m:.4f} vs {bm:.4f} ({m - bm:+.4f}), {ratios} ({_SEEDS})"
    if dominates(m, bm, pairs):
        return f"the searched net dominates the baseline: {facts}"
    larger = any(c > bc for c, bc in pairs)
    cheaper = not larger and any(c < bc for c, bc in pairs)
    if m < bm and cheaper:
        return f"trade-off: the searched net is cheaper but less accurate: {facts}"
    if m > bm and larger:
        return f"trade-off: the searched net is more accurate but larger: {facts}"
    if m == bm and not larger:
        why = "equal"
    elif m < bm:
        why = "less accurate and not cheaper"
    else:
        why = "larger and not more accurate"
    return f"the searched net does NOT beat the baseline: {why}: {facts}"
