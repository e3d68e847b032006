"""The one-line verdict of a run: its winner against the baseline it was compared with.

A run trains each net once (one seed), so the line says that it decides nothing on its own and
names ``nasdet compare``, which trains both over several seeds and tests the difference.
"""

from __future__ import annotations

from collections.abc import Mapping

__all__ = ["verdict"]

_SEEDS = "one seed: `nasdet compare` trains both over several seeds for a verdict with its spread"


def verdict(
    metrics: Mapping[str, float],
    cost: Mapping[str, float],
    base_metrics: Mapping[str, float],
    base_cost: Mapping[str, float],
    metric: str,
    cost_key: str = "params",
) -> str:
    """``the searched net dominates the baseline: mAP 0.52 vs 0.50 (+0.02), params 0.80x (...)``,
    or the trade-off it is, or that it does NOT beat the baseline."""
    values = {
        metric: (metrics.get(metric), base_metrics.get(metric)),
        cost_key: (cost.get(cost_key), base_cost.get(cost_key)),
    }
    missing = [k for k, (a, b) in values.items() if a is None or b is None]
    if missing:
        return f"no verdict: {missing[0]} is missing for the winner or the baseline"
    m, bm = float(metrics[metric]), float(base_metrics[metric])
    c, bc = float(cost[cost_key]), float(base_cost[cost_key])
    ratio = f"{c / bc:.2f}x" if bc else "n/a"
    facts = f"{metric} {m:.4f} vs {bm:.4f} ({m - bm:+.4f}), {cost_key} {ratio} ({_SEEDS})"
    if m >= bm and c <= bc and (m > bm or c < bc):
        return f"the searched net dominates the baseline: {facts}"
    if m < bm and c < bc:
        return f"trade-off: the searched net is cheaper but less accurate: {facts}"
    if m > bm and c > bc:
        return f"trade-off: the searched net is more accurate but larger: {facts}"
    if m == bm and c == bc:
        why = "equal"
    elif m < bm:
        why = "less accurate and not cheaper"
    else:
        why = "larger and not more accurate"
    return f"the searched net does NOT beat the baseline: {why}: {facts}"
