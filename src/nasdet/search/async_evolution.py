"""Steady-state (asynchronous) evolution: Once-for-All's evolution finder without generations.

aw_nas runs OFA's search with ``trainer_cfg.parallelism`` workers that each load the supernet
once; here those are an :class:`~nasdet.search.actors.ActorExecutor`'s workers. The search keeps
one candidate in flight per worker (``executor.max_workers``) while the budget lasts:

1. records a killed run left ``running``, and failed ones, go back to ``pending`` and are scored
   first (nothing done is scored again);
2. the first ``population_size`` records are random samples;
3. every time a score arrives it is committed to the record store at once, and ONE new candidate
   is proposed for the freed worker: the population is the best ``population_size`` done
   records, the parents its best ``round(parent_ratio * len(population))`` (at least 1); with
   probability ``mutation_ratio`` a mutant of one random parent, else a crossover of two;
4. a proposal must be new (its ``str``, or its ``canonical()`` when the genotype has one, never
   stored in the step) and satisfy the constraints (``check_cost(cost(g))``) before it is
   stored; infeasible and duplicate proposals are counted and logged, not stored (as in
   :mod:`~nasdet.search.evolution`). Each proposal tries at most ``max_tries`` genotypes (children
   at most half of them, then random samples): when the very first finds nothing feasible the
   search raises :class:`~nasdet.search.evolution.InfeasibleConstraints` (one line); later, it
   stops early with a warning (a converged or exhausted space).

The proposal for the ``n``-th record of the step draws from
``driver.proposal_rng(seed, n, 0)`` and depends only on the stored records, so a killed search
rerun on the same store goes on where it stopped, and, as long as outcomes arrive in the order
the tasks were submitted (one worker, or tasks that finish first in, first out), stores exactly
the records an uninterrupted run stores; a predictor is refitted from the store on the same
records. With real parallel workers the arrival order, hence the population a proposal sees,
varies from run to run: proposals are then reproducible given that order only.

A failed candidate stops new proposals; the ones in flight finish and are committed, then the
search raises :class:`~nasdet.errors.WorkFailed`. A rerun scores the failed ones again and goes on.

With an :class:`~nasdet.search.predictor.AccuracyPredictor`, each child is the best predicted of
``screen`` feasible candidates (each costs a ``cost`` call); see that module.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Hashable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, TypeVar

from nasdet.errors import ConfigError
from nasdet.search._async_proposals import SteadyState
from nasdet.search.actors import ActorExecutor
from nasdet.search.driver import record_failure, work_failed
from nasdet.search.evolution import best_score, top_records
from nasdet.search.executors import Executor, Outcome, Task
from nasdet.search.hparams import log_candidate
from nasdet.search.predictor import AccuracyPredictor
from nasdet.search.progress import CandidateProgress
from nasdet.search.records import Record, RecordStore

__all__ = [
    "AsyncEvolutionResult",
    "AsyncEvolutionSettings",
    "AsyncSpace",
    "async_evolution_search",
]

log = logging.getLogger(__name__)

G = TypeVar("G", bound=Hashable)


@dataclass(frozen=True)
class AsyncEvolutionSettings:
    """Settings of :func:`async_evolution_search` (Once-for-All ``EvolutionFinder`` names).

    Attributes:
        population_size: records kept in the population (the best done ones), and how many
            random samples start the search.
        parent_ratio: share of the population that may be a parent (the best ones).
        mutation_ratio: probability that a child is a mutant (else a crossover).
        mutate_prob: per-choice mutation probability, passed to :meth:`AsyncSpace.mutate`.
        max_evaluations: records of the step in all (the budget; failed ones count until
            scored again).
        max_tries: genotypes tried per proposal (duplicates and infeasible ones included).
        score_key: the metric maximised (``mAP``...).
        seed: with the number of stored records, seeds each proposal.

    Raises:
        ConfigError: a count or ratio out of range.
    """

    population_size: int = 100
    parent_ratio: float = 0.25
    mutation_ratio: float = 0.5
    mutate_prob: float = 0.1
    max_evaluations: int = 500
    max_tries: int = 1000
    score_key: str = "mAP"
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("population_size", "max_evaluations", "max_tries"):
            if getattr(self, name) < 1:
                raise ConfigError(
                    f"async evolution: {name} must be >= 1, got {getattr(self, name)}"
                )
        if not 0.0 < self.parent_ratio <= 1.0:
            raise ConfigError(
                f"async evolution: parent_ratio must be in (0, 1], got {self.parent_ratio}"
            )
        for name in ("mutation_ratio", "mutate_prob"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ConfigError(
                    f"async evolution: {name} must be in [0, 1], got {getattr(self, name)}"
                )
        if not self.score_key:
            raise ConfigError("async evolution: score_key must name a metric, e.g. 'mAP'")


class AsyncSpace(Protocol[G]):
    """What a search space offers the steady-state evolution. ``G`` is a frozen, hashable
    genotype with ``parse(str(g)) == g``; if it has a ``canonical()`` method, two genotypes with
    equal ``canonical()`` count as the same architecture. ``encode`` gives the predictor's
    features (a fixed-length list of floats)."""

    def sample(self, rng: Any) -> G: ...

    def mutate(self, g: G, rng: Any, prob: float) -> G: ...

    def crossover(self, a: G, b: G, rng: Any) -> G: ...

    def parse(self, text: str) -> G: ...

    def encode(self, g: G) -> list[float]: ...


@dataclass(frozen=True)
class AsyncEvolutionResult:
    """What :func:`async_evolution_search` returns.

    Attributes:
        records: the step's done records, best ``score_key`` first.
        summary: ``evaluations`` (done records of the step), ``scored`` and ``failures`` (this
            call), ``infeasible`` and ``duplicates`` (proposals rejected in this call),
            ``stopped_early``, ``best`` (score), ``workers``
            (:func:`~nasdet.search.actors.worker_summary` of this call) and ``predictor``
            (``None``, or ``fits``: the fit sizes of this call, ``held_out``: screened records
            scored, ``kendall_tau`` over them and ``tau_per_fit``).
    """

    records: list[Record]
    summary: dict[str, Any]


def async_evolution_search(
    store: RecordStore,
    step: str,
    *,
    space: AsyncSpace[G],
    cost: Callable[[G], Mapping[str, float]],
    check_cost: Callable[[dict[str, float]], str | None] | None,
    payload: Callable[[G], dict[str, Any]],
    score: Callable[..., dict[str, Any]],
    executor: ActorExecutor | Executor,
    settings: AsyncEvolutionSettings,
    constraints_text: str = "",
    predictor: AccuracyPredictor | None = None,
    tensorboard_dir: Path | None = None,
) -> AsyncEvolutionResult:
    """Run (or resume) the steady-state evolution of ``step``.

    Args:
        store: the run's record store; candidates are recorded in ``step`` with ``extra``:
            ``origin`` (``random``, ``mutation``, ``crossover``), ``parents`` (record ids;
            ``parent_id`` is the first), ``seen`` (done records when it was proposed), with a
            predictor ``predicted`` and ``predictor_fit``; once scored, ``actor``,
            ``eval_started`` and ``eval_finished`` (the worker and its unix seconds).
        space: sampling, mutation, crossover, parsing and encoding of genotypes.
        cost: a genotype's cheap cost (params, FLOPs...), computed before it is stored and
            stored as the record's ``cost``.
        check_cost: a one-line reason when a cost breaks the constraints, else ``None``.
        payload: the plain data ``score`` needs; ``"genotype": str(g)`` is added.
        score: runs on the executor's workers: ``score(state, payload)`` with an
            :class:`~nasdet.search.actors.ActorExecutor`, ``score(payload)`` with a plain
            :class:`~nasdet.search.executors.Executor`; returns ``{"metrics": {...}}``,
            optionally with ``"cost"`` (merged into the record's) and ``"weights_path"``.
        executor: keeps ``executor.max_workers`` candidates in flight.
        settings: population, ratios, budget, tries, score key and seed.
        constraints_text: the constraints as the user wrote them, for error messages.
        predictor: screens children (off when ``None``).
        tensorboard_dir: where each scored candidate becomes a TensorBoard run with its HParams
            entry (:func:`nasdet.search.hparams.log_candidate`); ``None``: none are written.

    Raises:
        InfeasibleConstraints: the first proposal found no feasible genotype in ``max_tries``.
        ConfigError: ``score`` returned no ``settings.score_key`` metric (the record is kept).
        WorkFailed: a candidate failed (raised once the ones in flight are committed).
    """
    revived = store.reset_running(step)
    if revived:
        log.info("%s: %d candidate(s) interrupted by a kill will be scored again", step, revived)
    retried = store.reset_failed(step)
    if retried:
        log.info("%s: %d failed candidate(s) will be evaluated again", step, retried)
    state = SteadyState(store, step, space, cost, check_cost, settings, constraints_text, predictor)
    failed: list[int] = []

    def task(rec: Record) -> Task:
        return Task(rec.id, {**payload(space.parse(rec.genotype)), "genotype": rec.genotype})

    def tasks() -> Iterator[Task]:
        for rec in store.records(step, status="pending"):  # left by a killed or failed run
            if failed:
                return
            if store.claim(rec.id):
                yield task(rec)
        while not failed and store.count(step) < settings.max_evaluations:
            rec = state.propose()
            if rec is None:  # no new feasible genotype: stopped early (logged)
                return
            if store.claim(rec.id):
                yield task(rec)

    outcomes: list[Outcome] = []
    run = executor.run(score, tasks())
    done = store.count(step, status="done")
    progress = CandidateProgress(step, settings.max_evaluations, done)
    try:
        for outcome in run:
            outcomes.append(outcome)
            if not _commit(store, step, outcome, settings.score_key, tensorboard_dir):
                failed.append(outcome.record_id)
            progress.finished(best_score(store, step, settings.score_key))
    finally:
        progress.close()
        close = getattr(run, "close", None)
        if callable(close):  # stops the tasks still in flight after an error
            close()
    summary = state.summary(outcomes, len(failed))
    log.info("%s: %s", step, _summary_line(summary))
    if failed:
        records = store.records(step, status="failed")
        raise work_failed(store, step, records, store.count(step))
    return AsyncEvolutionResult(top_records(store, step, None, settings.score_key), summary)


def _commit(
    store: RecordStore, step: str, outcome: Outcome, score_key: str, tensorboard_dir: Path | None
) -> bool:
    """Commit one outcome; ``False`` if the candidate failed."""
    rid = outcome.record_id
    if not outcome.ok:
        record_failure(store, step, outcome)
        return False
    timing = {"actor": outcome.worker, "eval_started": outcome.started}
    timing["eval_finished"] = outcome.finished
    result = outcome.result
    try:
        if not isinstance(result.get("metrics"), Mapping):
            raise ValueError("the score function returned no 'metrics' dict")
        rec = store.finish(
            rid,
            result["metrics"],
            weights_path=result.get("weights_path"),
            cost=result.get("cost"),
            extra={k: v for k, v in timing.items() if v is not None},
        )
    except ValueError as exc:
        store.fail(rid, f"bad score result: {exc}")
        log.warning("%s #%d failed: bad score result: %s", step, rid, exc)
        return False
    if score_key not in rec.metrics:
        raise ConfigError(
            f"async evolution: score_key {score_key!r} is not among the metrics the score "
            f"function returned ({', '.join(sorted(rec.metrics)) or 'none'}); set score_key to "
            "one of them"
        )
    if tensorboard_dir is not None:
        log_candidate(tensorboard_dir, rec)  # its HParams entry
    log.info("%s #%d %s done: %s %.4f", step, rid, rec.genotype, score_key, rec.metrics[score_key])
    return True


def _summary_line(summary: dict[str, Any]) -> str:
    pred = summary["predictor"]
    tau = f", predictor tau {pred['kendall_tau']:.3f} on {pred['held_out']}" if pred else ""
    gaps = [w["max_gap_s"] for w in summary["workers"].values()]
    best = "none" if summary["best"] is None else f"{summary['best']:.4f}"
    return (
        f"{summary['evaluations']} scored in all ({summary['scored']} now, "
        f"{summary['failures']} failed), {summary['infeasible']} infeasible and "
        f"{summary['duplicates']} duplicate proposals, best {best}"
        f", longest worker wait {max(gaps, default=math.nan):.3f} s{tau}"
    )
