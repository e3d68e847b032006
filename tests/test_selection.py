"""The rule that picks the final architecture from a step's candidates (search.selection)."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from nasdet.search import Record
from nasdet.search.selection import Selection, select


def rec(i: int, m: float, params: float, flops: float | None = None) -> Record:
    cost = {"params": params} if flops is None else {"params": params, "flops": flops}
    return make(i, {"mAP": m}, cost)


def make(i: int, metrics: dict, cost: dict) -> Record:
    return Record(id=i, step="s", genotype=f"g{i}", parent_id=None, status="done",
                  metrics=metrics, cost=cost, weights_path=None, error=None, created_at=0.0,
                  started_at=None, finished_at=None, worker=None, extra={})  # fmt: skip


# a convex front over (params, mAP) whose knee is obvious: mAP rises fast up to 3M params, then
# barely; plus two dominated points that no rule may pick
FRONT = [
    rec(1, 0.20, 1e6),
    rec(2, 0.40, 2e6),
    rec(3, 0.50, 3e6),  # the knee
    rec(4, 0.52, 6e6),
    rec(5, 0.53, 10e6),  # the best and the largest
    rec(6, 0.45, 8e6),  # dominated by 4
    rec(7, 0.10, 5e6),  # dominated by 2
]
OBJ = ["mAP", "params"]


def test_best_takes_the_highest_metric() -> None:
    c = select(FRONT, OBJ, Selection(rule="best"))
    assert c.record.id == 5 and c.rule == "best"


def test_best_breaks_ties_by_cost() -> None:
    recs = [rec(1, 0.5, 3e6), rec(2, 0.5, 2e6), rec(3, 0.4, 1e6)]
    assert select(recs, OBJ, Selection(rule="best")).record.id == 2


def test_knee_is_farthest_from_the_chord_of_the_front() -> None:
    c = select(FRONT, OBJ, Selection(rule="knee"))
    assert c.record.id == 3
    # normalised over the front's extremes: (x, y) = ((p - 1M) / 9M, (m - .2) / .33); the knee
    # maximises y - x (distance to the chord from (0, 0) to (1, 1)), computed here directly
    scores = {r.id: (r.metrics["mAP"] - 0.20) / 0.33 - (r.cost["params"] - 1e6) / 9e6
              for r in FRONT[:5]}  # fmt: skip
    assert max(scores, key=scores.get) == 3
    assert "knee" in c.reason and "params" in c.reason


def test_knee_uses_the_named_cost_and_ignores_dominated_points() -> None:
    # on flops the curve is different: the knee moves
    recs = [rec(1, 0.20, 1e6, 1e9), rec(2, 0.40, 2e6, 1.5e9), rec(3, 0.50, 3e6, 5e9),
            rec(4, 0.52, 6e6, 8e9), rec(5, 0.53, 10e6, 10e9)]  # fmt: skip
    assert select(recs, OBJ, Selection(rule="knee")).record.id == 3
    assert select(recs, ["mAP", "flops"], Selection(rule="knee", cost="flops")).record.id == 2


def test_knee_of_a_short_front_falls_back_to_best() -> None:
    recs = [rec(1, 0.2, 1e6), rec(2, 0.4, 2e6)]
    c = select(recs, OBJ, Selection(rule="knee"))
    assert c.record.id == 2 and "fewer than 3" in c.reason


def test_within_takes_the_cheapest_close_to_the_best() -> None:
    assert select(FRONT, OBJ, Selection(rule="within", tolerance=0.02)).record.id == 4
    assert select(FRONT, OBJ, Selection(rule="within", tolerance=0.035)).record.id == 3
    assert select(FRONT, OBJ, Selection(rule="within", tolerance=0.001)).record.id == 5


def test_auto_is_best_under_constraints_and_knee_without() -> None:
    assert select(FRONT, OBJ, Selection(), constrained=True).record.id == 5
    c = select(FRONT, OBJ, Selection(), constrained=False)
    assert c.record.id == 3 and c.rule == "knee"


def test_never_the_largest_member_by_default() -> None:
    c = select(FRONT, OBJ, Selection())
    largest = max(FRONT, key=lambda r: r.cost["params"])
    assert c.record.id != largest.id


def test_records_without_the_metric_are_skipped_and_none_is_an_error() -> None:
    broken = make(9, {}, {"params": 1.0})
    assert select([*FRONT, broken], OBJ, Selection(rule="best")).record.id == 5
    with pytest.raises(ValueError, match="no candidate"):
        select([broken], OBJ, Selection(rule="best"))


def test_a_cost_key_the_records_lack_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match="latency_ms"):
        select(FRONT, OBJ, Selection(rule="knee", cost="latency_ms"))


def test_config_rejects_unknown_rules_and_bad_tolerance() -> None:
    with pytest.raises(ValidationError):
        Selection(rule="largest")
    with pytest.raises(ValidationError):
        Selection(rule="within", tolerance=0)
