"""Constrained evolution search: SPOS / DetNAS / MMRazor ``EvolutionSearchLoop`` on the store.

Each generation is a population of ``num_candidates`` distinct genotypes that satisfy the cost
constraints and were never scored before in the step:

- generation 0: random samples;
- generation g > 0: ``num_mutation`` mutants and ``num_crossover`` crossovers of the ``top_k``
  best done records of all earlier generations (by ``score_key``, maximised), then random samples
  up to ``num_candidates``.

Every proposal is checked against the constraints with the cheap ``cost`` function before it is
scored; infeasible and duplicate proposals are counted and logged, not stored. At most
``max_tries`` proposals are tried per generation (mutants and crossovers get at most half, so a
converged population still fills up with random samples): an impossible constraint ends quickly.
With no feasible genotype in generation 0 the search raises :class:`InfeasibleConstraints`; a later
generation that runs out of tries goes on with what it has.

A generation's candidates are recorded ``pending``, then scored in one :meth:`Executor.run` call (a
Ray executor scores them in parallel); each outcome is committed as it arrives. Generation g draws
from ``random.Random(seed * 1_000_003 + g)`` and looks only at records of earlier generations, so
after a kill a rerun regenerates the same candidate lists: finished generations are skipped, done
candidates are not scored again, and candidates a dead process left ``running`` are scored. Stored
candidates count as feasible without a new ``cost`` call; should a cost that is not reproducible
(measured latency) change the list, the stored pending candidates it lacks are scored as well.
Records of the step without a ``generation`` (another algorithm's) count as earlier ones.

A candidate that fails does not stop its generation, but the next one is not proposed from a
population with holes: the search raises :class:`~nasdet.errors.WorkFailed` after the generation.
A rerun scores the failed candidates again and goes on as if they had never failed.
"""

from __future__ import annotations

import logging
import math
import random
from collections import Counter
from collections.abc import Callable, Hashable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, TypeVar

from nasdet.errors import ConfigError
from nasdet.search._evolution_proposals import (
    Candidate,
    CheckCost,
    infeasible_message,
    propose_generation,
    score_of,
)
from nasdet.search.driver import record_failure, work_failed
from nasdet.search.executors import Executor, Outcome, Task
from nasdet.search.hparams import log_candidate
from nasdet.search.progress import CandidateProgress
from nasdet.search.records import Record, RecordStore

__all__ = [
    "EvolutionSettings",
    "InfeasibleConstraints",
    "Space",
    "evolution_search",
    "top_records",
]

log = logging.getLogger(__name__)

G = TypeVar("G", bound=Hashable)


@dataclass(frozen=True)
class EvolutionSettings:
    """Settings of :func:`evolution_search` (MMRazor ``EvolutionSearchLoop`` names).

    Attributes:
        num_candidates: population of each generation.
        top_k: parents: the best ``top_k`` done records of all generations so far.
        num_mutation: mutants per generation (each of one random parent).
        mutate_prob: per-choice mutation probability, passed to :meth:`Space.mutate`.
        num_crossover: crossovers per generation (each of two distinct random parents).
        crossover_prob: per-choice probability of taking the second parent's choice.
        max_epochs: generations.
        max_tries: proposals (random, mutation and crossover together) tried per generation;
            mutants and crossovers use at most half of them, in proportion to their counts.
        score_key: the metric maximised (``mAP``...).

    Raises:
        ConfigError: a count or probability out of range.
    """

    num_candidates: int = 50
    top_k: int = 10
    num_mutation: int = 25
    mutate_prob: float = 0.1
    num_crossover: int = 25
    crossover_prob: float = 0.5
    max_epochs: int = 20
    max_tries: int = 1000
    score_key: str = "mAP"

    def __post_init__(self) -> None:
        for name in ("num_candidates", "top_k", "max_epochs", "max_tries"):
            if getattr(self, name) < 1:
                raise ConfigError(f"evolution: {name} must be >= 1, got {getattr(self, name)}")
        if self.num_mutation < 0 or self.num_crossover < 0:
            raise ConfigError(
                f"evolution: num_mutation and num_crossover must be >= 0, got "
                f"{self.num_mutation}, {self.num_crossover}"
            )
        if self.num_mutation + self.num_crossover > self.num_candidates:
            raise ConfigError(
                f"evolution: num_mutation + num_crossover ({self.num_mutation} + "
                f"{self.num_crossover}) must be <= num_candidates ({self.num_candidates})"
            )
        for name in ("mutate_prob", "crossover_prob"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ConfigError(f"evolution: {name} must be in [0, 1], got {getattr(self, name)}")
        if not self.score_key:
            raise ConfigError("evolution: score_key must name a metric, e.g. 'mAP'")


class Space(Protocol[G]):
    """What a search space offers the evolution: ``G`` is a frozen, hashable genotype whose
    ``str`` is its canonical form and ``parse(str(g)) == g``."""

    def sample(self, rng: random.Random) -> G: ...

    def mutate(self, g: G, rng: random.Random, prob: float) -> G: ...

    def crossover(self, a: G, b: G, rng: random.Random, prob: float) -> G: ...

    def parse(self, text: str) -> G: ...


class InfeasibleConstraints(ConfigError):
    """No sampled architecture satisfies the search constraints; the message is one line."""


def top_records(
    store: RecordStore, step: str, k: int | None = None, score_key: str = "mAP"
) -> list[Record]:
    """The ``k`` (all when ``None``) done records of ``step`` with the highest ``score_key``,
    best first; ties go to the older record, a missing or NaN score ranks last."""
    ranked = sorted(store.records(step, status="done"), key=lambda r: -score_of(r, score_key))
    return ranked if k is None else ranked[:k]


def best_score(store: RecordStore, step: str, score_key: str) -> str | None:
    """``"<score_key> <best value>"`` among the done records of ``step``; ``None`` before one."""
    top = top_records(store, step, 1, score_key)
    value = top[0].metrics.get(score_key) if top else None
    return None if value is None else f"{score_key} {value:,.4g}"


def evolution_search(
    store: RecordStore,
    step: str,
    *,
    space: Space[G],
    cost: Callable[[G], Mapping[str, float]],
    check_cost: CheckCost | None,
    payload: Callable[[G], dict[str, Any]],
    score: Callable[[dict[str, Any]], dict[str, Any]],
    executor: Executor,
    settings: EvolutionSettings,
    seed: int = 0,
    constraints_text: str = "",
    tensorboard_dir: Path | None = None,
) -> list[Record]:
    """Run (or resume) the evolution of ``step``; return every done record, best score first.

    Args:
        store: the run's record store; candidates are recorded in ``step`` with
            ``extra={"generation": g, "origin": "random" | "mutation" | "crossover"}`` (and the
            crossover's ``parents`` ids; ``parent_id`` is the first parent's record).
        space: sampling, mutation, crossover and parsing of genotypes.
        cost: a genotype's cheap cost (params, FLOPs...), computed before it is scored and stored
            as the record's ``cost``.
        check_cost: a one-line reason when a cost breaks the constraints, else ``None``.
        payload: the plain data ``score`` needs for a genotype; ``"genotype": str(g)`` is added.
        score: runs in the executor; returns ``{"metrics": {...}}``, optionally with ``"cost"``
            (merged into the record's cost) and ``"weights_path"``.
        executor: scores each generation's candidates in one :meth:`Executor.run` call.
        settings: population sizes, probabilities, generations, tries and the score key.
        seed: generation ``g`` draws from ``random.Random(seed * 1_000_003 + g)``.
        constraints_text: the constraints as the user wrote them, for error messages.
        tensorboard_dir: where each scored candidate becomes a TensorBoard run with its HParams
            entry (:func:`nasdet.search.hparams.log_candidate`); ``None``: none are written.

    Raises:
        InfeasibleConstraints: generation 0 found no feasible genotype in ``max_tries``.
        ConfigError: ``score`` returned no ``settings.score_key`` metric (the record is kept).
        WorkFailed: a candidate failed; raised after the rest of its generation is scored.
    """
    revived = store.reset_running(step)
    if revived:
        log.info("%s: %d candidate(s) interrupted by a kill will be scored again", step, revived)
    retried = store.reset_failed(step)
    if retried:
        log.info("%s: %d failed candidate(s) will be evaluated again", step, retried)
    key = settings.score_key
    for gen in range(settings.max_epochs):
        records = store.records(step)
        earlier = [r for r in records if _generation(r) < gen]
        stored = {r.genotype: r for r in records if _generation(r) == gen}  # when resuming
        rng = random.Random(seed * 1_000_003 + gen)
        proposals = propose_generation(space, settings, gen, earlier, stored, cost, check_cost, rng)
        if gen == 0 and proposals.feasible == 0:
            raise InfeasibleConstraints(infeasible_message(proposals, constraints_text))
        if len(proposals.candidates) < settings.num_candidates:
            log.warning(
                "%s generation %d: only %d of %d candidates after max_tries=%d proposals (%s); "
                "going on with these",
                step,
                gen,
                len(proposals.candidates),
                settings.num_candidates,
                proposals.tried,
                proposals.rejections(),
            )
        todo, finished = _record_candidates(store, step, gen, proposals.candidates)
        todo += _orphans(space, step, gen, stored, proposals.candidates)
        if todo:
            _score_generation(
                store, step, gen, todo, payload, score, executor, key, tensorboard_dir
            )
        scores = [score_of(r, key) for r in top_records(store, step, settings.top_k, key)]
        origins = Counter(c.origin for c in proposals.candidates)
        log.info(
            "%s generation %d/%d: %d scored, %d already finished (%d mutation, %d crossover, "
            "%d random; %s); best %s %.4f, top-%d mean %.4f",
            step,
            gen,
            settings.max_epochs - 1,
            len(todo),
            finished,
            origins["mutation"],
            origins["crossover"],
            origins["random"],
            proposals.rejections(),
            key,
            scores[0] if scores else math.nan,
            len(scores),
            sum(scores) / len(scores) if scores else math.nan,
        )
        ours = [r for r in store.records(step) if _generation(r) == gen]
        failed = [r for r in ours if r.status == "failed"]
        if failed:
            raise work_failed(store, step, failed, len(ours), f" of generation {gen}")
    return top_records(store, step, None, key)


def _generation(rec: Record) -> int:
    """The record's generation; records of other algorithms count as before generation 0."""
    gen = rec.extra.get("generation")
    return gen if isinstance(gen, int) else -1


def _record_candidates(
    store: RecordStore, step: str, gen: int, candidates: list[Candidate[G]]
) -> tuple[list[tuple[int, Candidate[G]]], int]:
    """Store the candidates (a resumed run finds them stored); return the pending ones with their
    record ids, and how many are already finished (done or failed)."""
    todo: list[tuple[int, Candidate[G]]] = []
    finished = 0
    for cand in candidates:
        extra: dict[str, Any] = {"generation": gen, "origin": cand.origin}
        if cand.origin == "crossover":
            extra["parents"] = list(cand.parents)
        rec = store.add(
            step,
            cand.text,
            parent_id=cand.parents[0] if cand.parents else None,
            cost=cand.cost,
            extra=extra,
            exist_ok=True,
        )
        if _generation(rec) != gen:  # only a store of a run with other settings or seed
            log.warning(
                "%s generation %d: %s is already record #%d of generation %s; not scored again",
                step,
                gen,
                cand.text,
                rec.id,
                rec.extra.get("generation"),
            )
        elif rec.status == "pending":
            todo.append((rec.id, cand))
        else:
            finished += 1
    return todo, finished


def _orphans(
    space: Space[G], step: str, gen: int, stored: dict[str, Record], candidates: list[Candidate[G]]
) -> list[tuple[int, Candidate[G]]]:
    """Pending records of generation ``gen`` the regenerated list lacks: possible on resume only
    when ``cost`` is not reproducible (measured latency). They are scored all the same."""
    listed = {c.text for c in candidates}
    orphans = [r for r in stored.values() if r.status == "pending" and r.genotype not in listed]
    if orphans:
        log.warning(
            "%s generation %d: %d pending candidate(s) not regenerated on resume (is the cost "
            "reproducible?); scoring them all the same",
            step,
            gen,
            len(orphans),
        )
    return [
        (r.id, Candidate(space.parse(r.genotype), r.genotype, r.cost, r.extra.get("origin", "")))
        for r in orphans
    ]


def _score_generation(
    store: RecordStore,
    step: str,
    gen: int,
    todo: list[tuple[int, Candidate[G]]],
    payload: Callable[[G], dict[str, Any]],
    score: Callable[[dict[str, Any]], dict[str, Any]],
    executor: Executor,
    score_key: str,
    tensorboard_dir: Path | None,
) -> None:
    """Score the pending candidates in one executor run, committing each outcome as it comes."""

    def tasks() -> Iterator[Task]:
        for rid, cand in todo:
            if store.claim(rid):
                yield Task(rid, {**payload(cand.genotype), "genotype": cand.text})

    outcomes = executor.run(score, tasks())
    progress = CandidateProgress(f"{step} generation {gen}", len(todo))
    try:
        for outcome in outcomes:
            _commit(store, step, outcome, score_key, tensorboard_dir)
            progress.finished(best_score(store, step, score_key))
    finally:
        progress.close()
        close = getattr(outcomes, "close", None)
        if callable(close):  # cancels tasks still in flight after an error
            close()


def _commit(
    store: RecordStore, step: str, outcome: Outcome, score_key: str, tensorboard_dir: Path | None
) -> None:
    rid = outcome.record_id
    if not outcome.ok:
        record_failure(store, step, outcome)
        return
    result = outcome.result
    try:
        if not isinstance(result.get("metrics"), Mapping):
            raise ValueError("the score function returned no 'metrics' dict")
        rec = store.finish(
            rid, result["metrics"], weights_path=result.get("weights_path"), cost=result.get("cost")
        )
    except ValueError as exc:
        store.fail(rid, f"bad score result: {exc}")
        log.warning("%s #%d failed: bad score result: %s", step, rid, exc)
        return
    if score_key not in rec.metrics:
        raise ConfigError(
            f"evolution: score_key {score_key!r} is not among the metrics the score function "
            f"returned ({', '.join(sorted(rec.metrics)) or 'none'}); set score_key to one of them"
        )
    if tensorboard_dir is not None:
        log_candidate(tensorboard_dir, rec)  # its HParams entry
    log.info("%s #%d %s done: %s %.4f", step, rid, rec.genotype, score_key, rec.metrics[score_key])
