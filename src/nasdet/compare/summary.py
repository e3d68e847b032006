"""The ``compare.json`` data of a compare: per architecture the mean ± std of each COCO stat
over seeds and its cost, and per pair of architectures the paired difference of mAP.

The schema (``SCHEMA``; docs/usage.md lists every key) is plain JSON: floats or ``null``, never
NaN. COCO stats are fractions in [0, 1]; a stat that is ``-1`` (undefined: no ground truth in
its area range) in any seed has no spread (``null``).
"""

from __future__ import annotations

import itertools
import logging
from pathlib import Path
from typing import Any

from nasdet.compare.inputs import ComparePlan, budget_view
from nasdet.compare.stats import paired_difference, spread
from nasdet.search.records import Record

__all__ = ["METRIC", "SCHEMA", "SHOWN_STATS", "summarize"]

log = logging.getLogger(__name__)

SCHEMA = 1
METRIC = "mAP"  # the metric the pairs are tested on
SHOWN_STATS = ("mAP", "AP50", "AP75", "AP_small", "AP_medium", "AP_large")


def summarize(
    plan: ComparePlan,
    records: list[Record],
    out: Path,
    *,
    latency: bool = False,
    threads: int | None = None,
) -> dict[str, Any]:
    """``compare.json`` of ``records`` (the step's, any status) for ``plan``; the costs are
    measured on each architecture's first trained model (``latency``: CPU median ms too)."""
    by_name = {(r.extra.get("label"), r.extra.get("seed")): r for r in records}
    archs, failed = [], []
    for arch in plan.architectures:
        runs = []
        for seed in plan.seeds:
            rec = by_name.get((arch.label, seed))
            status = rec.status if rec is not None else "pending"
            runs.append(
                {
                    "seed": seed,
                    "status": status,
                    "metrics": dict(rec.metrics) if rec is not None else {},
                    "model": rec.weights_path if rec is not None else None,
                    "train_seconds": rec.extra.get("train_seconds") if rec is not None else None,
                    "error": rec.error if rec is not None else None,
                }
            )
            if status == "failed":
                failed.append({"label": arch.label, "seed": seed, "error": rec.error})
        done = [r for r in runs if r["status"] == "done"]
        archs.append(
            {
                "label": arch.label,
                "source": str(arch.source),
                "kind": arch.kind,
                "model": arch.model,
                "overridden": list(arch.overridden),
                "runs": runs,
                "metrics": _stat_spreads(done),
                "cost": _cost(done, plan, latency, threads),
            }
        )
    complete = not failed and all(r["status"] == "done" for a in archs for r in a["runs"])
    return {
        "schema": SCHEMA,
        "out": str(out),
        "metric": METRIC,
        "seeds": list(plan.seeds),
        "budget": {
            "source": str(plan.budget_source),
            "explicit": plan.explicit_budget,
            **budget_view(plan.budget.model_dump(mode="json")),
        },
        "complete": complete,
        "architectures": archs,
        "pairs": _pairs(archs, plan.seeds) if complete else [],
        "failed": failed,
    }


def _stat_spreads(done: list[dict[str, Any]]) -> dict[str, Any]:
    """Mean, std and n of each shown stat over the done seeds (``None`` where undefined)."""
    out: dict[str, Any] = {}
    for key in SHOWN_STATS:
        values = [r["metrics"].get(key) for r in done]
        if not values or any(v is None for v in values):
            continue
        if any(v < 0 for v in values):  # -1: undefined on this dataset
            out[key] = None
            continue
        out[key] = spread(values).as_dict()
    return out


def _pairs(archs: list[dict[str, Any]], seeds: list[int]) -> list[dict[str, Any]]:
    """Every pair (a before b in the given order): the paired difference a - b of mAP."""
    pairs = []
    for a, b in itertools.combinations(archs, 2):
        va = [r["metrics"][METRIC] for r in a["runs"]]
        vb = [r["metrics"][METRIC] for r in b["runs"]]
        diff = paired_difference(va, vb, seeds)
        pairs.append({"a": a["label"], "b": b["label"], "metric": METRIC, **diff.as_dict()})
    return pairs


def _cost(
    done: list[dict[str, Any]], plan: ComparePlan, latency: bool, threads: int | None
) -> dict[str, Any]:
    """params, flops, macs (and ``latency_ms``) of the first done seed's model, on one square
    image of the budget's ``min_size`` (FLOPs: 2 per multiply-add; latency: median ms, CPU)."""
    if not done or not done[0]["model"]:
        return {}
    import nasdet
    from nasdet.cost import measure_cost

    size = int(plan.budget.model.min_size)
    model = nasdet.load_model(done[0]["model"])
    cost = measure_cost(model, size, latency=latency, threads=threads)
    keys = ("params", "flops", "macs", *(("latency_ms",) if latency else ()))
    return {"input_size": size, **{k: cost[k] for k in keys}}
