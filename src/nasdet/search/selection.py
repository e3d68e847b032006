"""The stated rule that picks a search's final architecture from its scored candidates.

Taking the best-scoring member of a Pareto front over (metric, cost) takes its most expensive
member. Each method's config therefore names a rule, ``selection``::

    selection:
      rule: auto        # auto | best | knee | within
      tolerance: 0.01   # within: metric points below the best that may be given up
      cost: params      # knee / within: the cost key (default: the first minimised objective)

- ``best``: the highest metric (ties: the lower cost). Every candidate a search scores already
  meets its constraints, so this is "the best within the constraints".
- ``knee``: on the front over (metric, cost), both scaled to [0, 1] by the front's extremes, the
  member farthest above the chord from the cheapest to the best member (the largest
  ``metric - cost`` after scaling; ties: the cheaper). A front of fewer than 3 members has no
  knee: ``best`` is taken and the reason says so.
- ``within``: the cheapest candidate whose metric is at least ``best - tolerance``.
- ``auto`` (default): ``best`` when the search had a cost limit (the user stated the budget),
  ``knee`` when it had none.

:func:`select` returns the record with the rule applied and a one-line reason that the run logs
and reports.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from pydantic import Field

from nasdet.config import Strict
from nasdet.search.pareto import Objective, as_objectives, pareto_front
from nasdet.search.records import Record

__all__ = ["Choice", "Selection", "choose", "select"]

log = logging.getLogger(__name__)


class Selection(Strict):
    """How the final architecture is picked from the scored candidates (see the module doc)."""

    rule: Literal["auto", "best", "knee", "within"] = Field(
        "auto", description="auto: best under cost limits, else the knee of the front"
    )
    tolerance: float = Field(
        0.01, gt=0, description="within: metric points below the best that may be given up"
    )
    cost: str | None = Field(
        None, description="knee / within: cost key (default: the first minimised objective)"
    )


@dataclass(frozen=True)
class Choice:
    """The chosen record, the rule that chose it and why (one line)."""

    record: Record
    rule: str
    reason: str


def select(
    records: Sequence[Record],
    objectives: Sequence[Objective | str],
    selection: Selection,
    constrained: bool = False,
) -> Choice:
    """Apply ``selection`` to ``records`` (the scored candidates of one step).

    Args:
        records: candidates; those without the metric are skipped.
        objectives: the step's objectives; the first maximised one is the metric.
        selection: the rule.
        constrained: whether the search had cost limits (``auto`` then means ``best``).

    Raises:
        ValueError: no candidate has the metric, or some lack the cost key ``knee`` or
            ``within`` needs.
    """
    objs = as_objectives(objectives)
    metric = next((o.key for o in objs if o.maximize), None)
    if metric is None:
        raise ValueError(f"objectives {[str(o) for o in objs]} have no metric to maximise")
    scored = [r for r in records if isinstance(r.metrics.get(metric), int | float)]
    if not scored:
        raise ValueError(f"selection: no candidate has the metric {metric!r}")
    rule = selection.rule
    if rule == "auto":
        rule = "best" if constrained else "knee"
    cost = selection.cost or next((o.key for o in objs if not o.maximize), "params")
    if rule != "best":
        lacking = [r.id for r in scored if not isinstance(r.values().get(cost), int | float)]
        if lacking:
            raise ValueError(
                f"selection.cost: records {lacking[:5]} have no cost {cost!r}; set "
                "selection.cost to a key they have (e.g. params, flops) or rule: best"
            )

    def m(r: Record) -> float:
        return float(r.metrics[metric])

    def c(r: Record) -> float:  # (0 for a record without it: only ``best`` allows that)
        value = r.values().get(cost, 0.0)
        return float(value) if isinstance(value, int | float) else 0.0

    best = max(scored, key=lambda r: (m(r), -c(r)))
    if rule == "best":
        return Choice(best, "best", f"best {metric} ({m(best):.4f})")
    if rule == "within":
        floor = m(best) - selection.tolerance
        pick = min((r for r in scored if m(r) >= floor), key=lambda r: (c(r), -m(r)))
        return Choice(
            pick,
            "within",
            f"cheapest in {cost} ({c(pick):.4g}) with {metric} >= best - {selection.tolerance:g}"
            f" ({m(pick):.4f} vs best {m(best):.4f})",
        )
    pts = [{metric: m(r), cost: c(r)} for r in scored]
    axes = [Objective(metric, True), Objective(cost, False)]
    front = [scored[i] for i in pareto_front(pts, axes)]
    unique = {(m(r), c(r)) for r in front}
    if len(unique) < 3:
        return Choice(
            best,
            "knee",
            f"front over ({metric}, {cost}) has fewer than 3 members, so no knee: best {metric} "
            f"({m(best):.4f})",
        )
    lo_m, hi_m = min(map(m, front)), max(map(m, front))
    lo_c, hi_c = min(map(c, front)), max(map(c, front))

    def height(r: Record) -> float:
        return (m(r) - lo_m) / (hi_m - lo_m) - (c(r) - lo_c) / (hi_c - lo_c)

    pick = max(front, key=lambda r: (height(r), -c(r)))
    return Choice(
        pick,
        "knee",
        f"knee of the front over ({metric}, {cost}): {metric} {m(pick):.4f} at {cost} "
        f"{c(pick):.4g} (best {m(best):.4f} at {c(best):.4g})",
    )


def choose(
    records: Sequence[Record],
    objectives: Sequence[Objective | str],
    selection: Selection,
    constrained: bool,
    step: str,
) -> Choice:
    """:func:`select`, logged as ``<step>: chose record <id> <genotype> — <reason>``."""
    choice = select(records, objectives, selection, constrained)
    log.info("%s: chose record %d %s — %s", step, choice.record.id, choice.record.genotype,
             choice.reason)  # fmt: skip
    return choice
