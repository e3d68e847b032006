"""One proposal at a time for :func:`~nasdet.search.async_evolution.async_evolution_search`: the
population, parents, children, constraint and duplicate checks, the predictor's screening, and
the search's summary.

A proposal depends only on the stored records of the step and on
``proposal_rng(seed, number of stored records, 0)``, so a resumed search makes the proposals an
uninterrupted one makes from the same records.
"""

from __future__ import annotations

import logging
import math
import random
from collections import Counter
from collections.abc import Callable, Hashable, Mapping
from typing import TYPE_CHECKING, Any

from nasdet.search._evolution_proposals import Proposals, infeasible_message, score_of
from nasdet.search.actors import worker_summary
from nasdet.search.driver import proposal_rng
from nasdet.search.evolution import InfeasibleConstraints
from nasdet.search.executors import Outcome
from nasdet.search.predictor import AccuracyPredictor, kendall_tau
from nasdet.search.records import Record, RecordStore

if TYPE_CHECKING:
    from nasdet.search.async_evolution import AsyncEvolutionSettings, AsyncSpace

log = logging.getLogger("nasdet.search.async_evolution")

Make = Callable[[], tuple[Any, str, tuple[int, ...]]]


class SteadyState:
    """Proposes and stores the step's next candidate; counts what it rejected."""

    def __init__(
        self,
        store: RecordStore,
        step: str,
        space: AsyncSpace[Any],
        cost: Callable[[Any], Mapping[str, float]],
        check_cost: Callable[[dict[str, float]], str | None] | None,
        settings: AsyncEvolutionSettings,
        constraints_text: str,
        predictor: AccuracyPredictor | None,
    ) -> None:
        self.store, self.step, self.space, self.settings = store, step, space, settings
        self.cost, self.check_cost, self.constraints_text = cost, check_cost, constraints_text
        self.predictor = predictor
        self._parsed: dict[str, Any] = {}  # genotype text -> genotype
        self._keys: dict[str, Hashable] = {}  # genotype text -> duplicate key
        self.infeasible = 0
        self.duplicates = 0
        self.reasons: Counter[str] = Counter()
        self.stopped_early = False
        self.fits: list[int] = []
        self._fit: int | None = None

    def parse(self, text: str) -> Any:
        if text not in self._parsed:
            self._parsed[text] = self.space.parse(text)
        return self._parsed[text]

    def key(self, text: str, g: Any = None) -> Hashable:
        """``g.canonical()`` if the genotype has one, else its text."""
        if text not in self._keys:
            canonical = getattr(self.parse(text) if g is None else g, "canonical", None)
            self._keys[text] = canonical() if callable(canonical) else text
        return self._keys[text]

    def propose(self) -> Record | None:
        """Store (``pending``) and return the next candidate; ``None`` when ``max_tries`` found
        nothing new and feasible (logged).

        Raises:
            InfeasibleConstraints: nothing feasible for the step's first record.
        """
        s = self.settings
        records = self.store.records(self.step)
        n = len(records)
        rng = proposal_rng(s.seed, n, 0)
        done = [r for r in records if r.status == "done"]
        population = sorted(done, key=lambda r: -score_of(r, s.score_key))[: s.population_size]
        parents = population[: max(1, round(s.parent_ratio * len(population)))]
        book: Proposals[Any] = Proposals(
            earlier={r.genotype for r in records},
            stored={},
            cost=lambda g: dict(self.cost(g)),
            check_cost=self.check_cost,
            max_tries=s.max_tries,
        )
        taken = {self.key(r.genotype) for r in records}
        fit = None
        if n >= s.population_size and parents:
            fit = self._refit(done)
            want = self.predictor.screen if fit is not None and self.predictor else 1
            self._draw(book, self._child_maker(parents, rng), want, taken, max(1, s.max_tries // 2))
        if not book.candidates:
            self._draw(book, lambda: (self.space.sample(rng), "random", ()), 1, taken, s.max_tries)
            fit = None
        self.infeasible += sum(book.reasons.values())
        self.duplicates += book.duplicates
        self.reasons.update(book.reasons)
        if not book.candidates:
            if n == 0:
                raise InfeasibleConstraints(infeasible_message(book, self.constraints_text))
            self.stopped_early = True
            log.warning(
                "%s: no new feasible genotype in max_tries=%d (%s); stopping at %d of %d records",
                self.step,
                s.max_tries,
                book.rejections(),
                n,
                s.max_evaluations,
            )
            return None
        extra: dict[str, Any] = {"seen": len(done)}
        cand = book.candidates[0]
        if fit is not None and self.predictor is not None:
            predicted = self.predictor.predict(
                [self.space.encode(c.genotype) for c in book.candidates]
            )
            best = max(range(len(predicted)), key=lambda i: predicted[i])  # first on ties
            cand = book.candidates[best]
            extra.update(predicted=predicted[best], predictor_fit=fit)
        extra["origin"] = cand.origin
        if cand.parents:
            extra["parents"] = list(cand.parents)
        rec = self.store.add(
            self.step,
            cand.text,
            parent_id=cand.parents[0] if cand.parents else None,
            cost=cand.cost,
            extra=extra,
        )
        log.debug("%s #%d %s proposed (%s)", self.step, rec.id, rec.genotype, cand.origin)
        return rec

    def _child_maker(self, parents: list[Record], rng: random.Random) -> Make:
        s, space = self.settings, self.space

        def child() -> tuple[Any, str, tuple[int, ...]]:
            if rng.random() < s.mutation_ratio or len(parents) < 2:
                p = rng.choice(parents)
                return space.mutate(self.parse(p.genotype), rng, s.mutate_prob), "mutation", (p.id,)
            a, b = rng.sample(parents, 2)
            g = space.crossover(self.parse(a.genotype), self.parse(b.genotype), rng)
            return g, "crossover", (a.id, b.id)

        return child

    def _draw(
        self, book: Proposals[Any], make: Make, count: int, taken: set[Hashable], tries: int
    ) -> None:
        """Offer ``make()`` proposals until ``count`` are kept, ``tries`` more were made or the
        proposal's ``max_tries`` are used up (bounded: each loop is one more try)."""
        stop = min(book.max_tries, book.tried + tries)
        while len(book.candidates) < count and book.tried < stop:
            g, origin, parents = make()
            key = self.key(str(g), g)
            if key in taken:
                book.tried += 1
                book.duplicates += 1
                continue
            taken.add(key)
            book.offer(g, origin, parents)

    def _refit(self, done: list[Record]) -> int | None:
        """Fit the predictor on the first ``fit_size`` scored records (in the order they were
        scored) if that size changed; the size of the fit in effect (``None``: no fit yet)."""
        if self.predictor is None:
            return None
        usable = sorted(
            (r for r in done if math.isfinite(score_of(r, self.settings.score_key))),
            key=lambda r: (r.finished_at or 0.0, r.id),
        )
        size = self.predictor.fit_size(len(usable))
        if size is None or size == self._fit:
            return size
        if self._fit is not None:
            log.info("%s: predictor %s", self.step, self._tau_line(self._fit))
        train = usable[:size]
        self.predictor.fit(
            [self.space.encode(self.parse(r.genotype)) for r in train],
            [score_of(r, self.settings.score_key) for r in train],
        )
        self._fit = size
        self.fits.append(size)
        log.info("%s: predictor fitted on %d scored records", self.step, size)
        return size

    def _screened(self, fit: int | None = None) -> list[Record]:
        """Done records a predictor screened (of the fit of size ``fit``, or any)."""
        return [
            r
            for r in self.store.records(self.step, status="done")
            if "predicted" in r.extra and fit in (None, r.extra.get("predictor_fit"))
        ]

    def _tau(self, recs: list[Record]) -> float:
        return kendall_tau(
            [r.extra["predicted"] for r in recs],
            [score_of(r, self.settings.score_key) for r in recs],
        )

    def _tau_line(self, fit: int) -> str:
        recs = self._screened(fit)
        return f"fit on {fit}: Kendall tau {self._tau(recs):.3f} on {len(recs)} held-out scores"

    def summary(self, outcomes: list[Outcome], failures: int) -> dict[str, Any]:
        """The result summary (see :class:`~nasdet.search.async_evolution.AsyncEvolutionResult`)."""
        key = self.settings.score_key
        done = self.store.records(self.step, status="done")
        predictor = None
        if self.predictor is not None:
            screened = self._screened()
            fits = sorted({r.extra["predictor_fit"] for r in screened})
            predictor = {
                "fits": list(self.fits),
                "held_out": len(screened),
                "kendall_tau": self._tau(screened),
                "tau_per_fit": {f: self._tau(self._screened(f)) for f in fits},
            }
        return {
            "evaluations": len(done),
            "scored": len(outcomes),
            "failures": failures,
            "infeasible": self.infeasible,
            "duplicates": self.duplicates,
            "stopped_early": self.stopped_early,
            "best": max((score_of(r, key) for r in done), default=None),
            "workers": worker_summary(outcomes),
            "predictor": predictor,
        }
