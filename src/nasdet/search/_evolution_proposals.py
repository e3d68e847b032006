"""One generation's proposals for :func:`~nasdet.search.evolution.evolution_search`: mutants,
crossovers and random samples, checked against the constraints and deduplicated, and the one-line
message for constraints nothing satisfies.

Everything here depends only on its arguments (the records of earlier generations, the
generation's seeded generator), so a resumed search regenerates the same lists.
"""

from __future__ import annotations

import math
import random
import re
from collections import Counter
from collections.abc import Callable, Hashable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Generic, TypeVar

from nasdet.search.records import Record

if TYPE_CHECKING:
    from nasdet.search.evolution import EvolutionSettings, Space

G = TypeVar("G", bound=Hashable)

CheckCost = Callable[[dict[str, float]], "str | None"]


@dataclass
class Candidate(Generic[G]):
    """A proposal kept for a generation: the genotype, its canonical text and cost, and where it
    came from (the parent record ids of a mutant or crossover)."""

    genotype: G
    text: str
    cost: dict[str, float]
    origin: str  # "random", "mutation" or "crossover"
    parents: tuple[int, ...] = ()


@dataclass
class Proposals(Generic[G]):
    """One generation's proposals: the accepted candidates and what was rejected, and why."""

    earlier: set[str]  # genotypes of earlier generations (any status) and already proposed
    stored: dict[str, dict[str, Any]]  # genotype -> cost of this generation's stored candidates
    cost: Callable[[Any], dict[str, float]]
    check_cost: CheckCost | None
    max_tries: int
    candidates: list[Candidate[G]] = field(default_factory=list)
    tried: int = 0
    feasible: int = 0
    duplicates: int = 0
    reasons: Counter[str] = field(default_factory=Counter)
    cheapest: dict[str, float] = field(default_factory=dict)

    def rejections(self) -> str:
        """``"12 infeasible (most common: ...), 3 duplicates"``."""
        common = self.reasons.most_common(1)
        why = f" (most common: {common[0][0]})" if common else ""
        return f"{sum(self.reasons.values())} infeasible{why}, {self.duplicates} duplicates"

    def offer(self, g: G, origin: str, parents: tuple[int, ...] = ()) -> None:
        """Try one proposal: keep it if new and feasible."""
        self.tried += 1
        text = str(g)
        if text in self.earlier:
            self.duplicates += 1
            return
        self.earlier.add(text)  # from now on, a second proposal of it is a duplicate
        if text in self.stored:  # feasible when first proposed: not measured again on resume
            cost, reason = self.stored[text], None
        else:
            cost = dict(self.cost(g))
            reason = self.check_cost(cost) if self.check_cost else None
        if reason:
            self.reasons[" ".join(str(reason).split())] += 1
            for key, value in cost.items():
                if isinstance(value, int | float) and not math.isnan(value):
                    self.cheapest[key] = min(value, self.cheapest.get(key, math.inf))
            return
        self.feasible += 1
        self.candidates.append(Candidate(g, text, cost, origin, parents))

    def fill(
        self,
        make: Callable[[], tuple[G, tuple[int, ...]]],
        origin: str,
        count: int,
        tries: int | None = None,
    ) -> None:
        """Offer proposals from ``make`` until ``count`` of ``origin`` are kept, or this call has
        used ``tries`` (default: no limit of its own) or the generation's tries run out."""
        kept = sum(1 for c in self.candidates if c.origin == origin)
        stop = self.max_tries if tries is None else min(self.max_tries, self.tried + tries)
        while kept < count and self.tried < stop:  # bounded: every offer is one more try
            before = len(self.candidates)
            g, parents = make()
            self.offer(g, origin, parents)
            kept += len(self.candidates) - before


def score_of(rec: Record, score_key: str) -> float:
    value = rec.metrics.get(score_key)
    return -math.inf if value is None or math.isnan(value) else float(value)


def propose_generation(
    space: Space[G],
    settings: EvolutionSettings,
    gen: int,
    earlier: list[Record],
    stored: dict[str, Record],
    cost: Callable[[G], Mapping[str, float]],
    check_cost: CheckCost | None,
    rng: random.Random,
) -> Proposals[G]:
    """Generation ``gen``'s candidates, from ``earlier`` records only (same list on resume)."""
    proposals: Proposals[G] = Proposals(
        earlier={r.genotype for r in earlier},
        stored={text: rec.cost for text, rec in stored.items()},
        cost=lambda g: dict(cost(g)),
        check_cost=check_cost,
        max_tries=settings.max_tries,
    )
    if gen > 0:
        done = sorted(
            (r for r in earlier if r.status == "done"),
            key=lambda r: -score_of(r, settings.score_key),
        )
        parents = [(r.id, space.parse(r.genotype)) for r in done[: settings.top_k]]

        def mutant() -> tuple[G, tuple[int, ...]]:
            pid, g = rng.choice(parents)
            return space.mutate(g, rng, settings.mutate_prob), (pid,)

        def child() -> tuple[G, tuple[int, ...]]:
            (ia, a), (ib, b) = rng.sample(parents, 2)
            return space.crossover(a, b, rng, settings.crossover_prob), (ia, ib)

        # mutants and crossovers may use half the tries at most, in proportion to their counts:
        # near convergence most are duplicates, and random samples must still fill the population
        share = settings.max_tries / (2 * settings.num_candidates)
        if parents:
            tries = max(1, int(share * settings.num_mutation))
            proposals.fill(mutant, "mutation", settings.num_mutation, tries)
        if len(parents) >= 2:
            tries = max(1, int(share * settings.num_crossover))
            proposals.fill(child, "crossover", settings.num_crossover, tries)
    missing = settings.num_candidates - len(proposals.candidates)
    proposals.fill(lambda: (space.sample(rng), ()), "random", missing)
    return proposals


def infeasible_message(proposals: Proposals[Any], constraints_text: str) -> str:
    """One line: how many were tried, the cheapest value of each constrained key, the reason."""
    parts = [constraints_text.strip()] if constraints_text.strip() else []
    keys = _constrained_keys(list(proposals.cheapest), constraints_text)
    if keys:
        cheapest = ", ".join(f"{k} {_num(proposals.cheapest[k])}" for k in keys)
        parts.append(f"cheapest seen: {cheapest}")
    if proposals.reasons:
        reason, count = proposals.reasons.most_common(1)[0]
        parts.append(f"most common reason: {reason} ({count} of {proposals.tried})")
    detail = f" ({'; '.join(parts)})" if parts else ""
    message = (
        f"no architecture of {proposals.tried} sampled satisfies the constraints{detail} — "
        "loosen search.constraints"
    )
    return " ".join(message.split())


def _constrained_keys(keys: list[str], text: str) -> list[str]:
    """Cost keys named in the constraints text (``flops`` in ``flops <= 3e8``, else in
    ``max_flops``); all of them when it names none."""
    exact = [k for k in keys if re.search(rf"(?<![\w.]){re.escape(k)}(?![\w.])", text)]
    loose = [k for k in keys if re.search(rf"(?<![A-Za-z0-9]){re.escape(k)}(?![A-Za-z0-9])", text)]
    return exact or loose or sorted(keys)


def _num(value: float) -> str:
    """``2100000.0`` as ``2.1e6``, ``12.0`` as ``12``."""
    return re.sub(r"e\+?(-?)0*(\d)", r"e\1\2", f"{value:.3g}")
