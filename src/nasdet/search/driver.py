"""The search loop every algorithm shares.

An algorithm supplies ``propose(store, rng) -> Proposal | None`` (the next genotype to try, given
everything recorded so far); :func:`run_search` does the rest:

1. on start, records a killed run left ``running``, and those that failed in an earlier run, go
   back to ``pending`` and are evaluated first (nothing done is evaluated again);
2. each proposal is deduplicated against the store, recorded, and checked against the resource
   constraints *before* training (an infeasible one is recorded as such, with the reason, and
   does not count toward ``max_sample``; after ``max_proposal_tries`` infeasible or duplicate
   proposals in a row the step stops early with a warning), then claimed. ``propose`` gets a
   generator seeded from stored state only (:func:`proposal_rng`), and the infeasible ones in a
   row are counted in the store, so a killed run resumes to the records an uninterrupted one
   makes (with one worker: with several, proposals also depend on which results are in);
3. candidates are handed to the executor lazily — the next proposal is made only when a worker
   is free, so parents come from the latest Pareto front;
4. each outcome is committed to the record store as it arrives (before the next candidate
   starts on that worker);
5. at the end (of every call, also one with nothing left to evaluate) the step directory gets
   ``pareto.csv`` and ``desc_<id>.json`` for the Pareto members, written atomically; the
   ``desc`` files of records no longer on the front are removed.

On start, temporary files and training folders that killed candidates left in the step
directory are removed (:func:`clean_leftovers`).

A candidate that fails does not stop the step: every other one is still evaluated and committed.
But a step that ends with a failed candidate raises :class:`~nasdet.errors.WorkFailed` (after
writing the outputs of the done ones) instead of returning a Pareto front, so no winner is named
from a search with holes; the traceback is logged and kept in the record's ``extra``.
"""

from __future__ import annotations

import logging
import random
import shutil
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from nasdet.atomic import write_json_atomic
from nasdet.errors import WorkFailed
from nasdet.search.executors import Executor, Outcome, Task
from nasdet.search.hparams import log_candidate
from nasdet.search.pareto import Objective, pareto_records, parse_objectives, write_pareto_csv
from nasdet.search.progress import CandidateProgress, best_so_far, front_size
from nasdet.search.records import Record, RecordStore

log = logging.getLogger(__name__)
# what an evaluate function may return besides metrics, cost and weights_path, kept in extra
RESULT_EXTRAS = ("inherited", "new", "left_at_init", "train_seconds", "history")


@dataclass(frozen=True)
class Proposal:
    """A candidate to evaluate: its genotype string, parent record, and the payload for the
    evaluate function (without ``out``; e.g. SP-NAS's ``evaluate_candidate``)."""

    genotype: str
    parent_id: int | None
    payload: dict[str, Any]
    cost: dict[str, float] = field(default_factory=dict)


Propose = Callable[[RecordStore, random.Random], "Proposal | None"]
CheckCost = Callable[[dict[str, float]], "str | None"]


def run_search(
    store: RecordStore,
    step: str,
    step_dir: Path,
    *,
    propose: Propose,
    evaluate: Callable[[dict[str, Any]], dict[str, Any]],
    executor: Executor,
    max_sample: int,
    objectives: Sequence[Objective | str],
    check_cost: CheckCost | None = None,
    seed: int = 0,
    max_proposal_tries: int = 50,
) -> list[Record]:
    """Evaluate up to ``max_sample`` proposals of ``step`` (root records excluded); returns the
    Pareto members of the step's done records.

    Raises:
        WorkFailed: a candidate of the step failed (all others were evaluated and committed,
            and the step outputs written); a rerun evaluates the failed ones again.
    """
    step_dir.mkdir(parents=True, exist_ok=True)
    shown = parse_objectives([str(o) for o in objectives])  # what the log line of a result shows
    clean_leftovers(step_dir)
    revived = store.reset_running(step)
    if revived:
        log.info("%s: %d candidate(s) interrupted by a kill will be evaluated again", step, revived)
    retried = store.reset_failed(step)
    if retried:
        log.info("%s: %d failed candidate(s) will be evaluated again", step, retried)

    def sampled() -> int:  # infeasible proposals are not trained and do not use the budget
        return sum(1 for r in store.records(step) if not is_root(r) and r.status != "infeasible")

    def tasks() -> Iterator[Task]:
        for rec in store.records(step, status="pending"):  # left by a killed or failed run
            if not _infeasible(store, rec, check_cost) and store.claim(rec.id):
                yield Task(rec.id, _with_out(rec.extra["payload"], step_dir, rec.id))
        duplicates = 0  # proposals since the last stored record that were None or duplicates
        while sampled() < max_sample:
            if _out_of_tries(store, step, duplicates, max_proposal_tries):
                log.warning("%s: stopping early at %d of %d", step, sampled(), max_sample)
                return
            proposal = propose(store, proposal_rng(seed, store.count(step), duplicates))
            if proposal is None or store.find(step, proposal.genotype) is not None:
                duplicates += 1
                continue
            duplicates = 0
            rec = store.add(
                step,
                proposal.genotype,
                parent_id=proposal.parent_id,
                cost=proposal.cost,
                extra={"payload": proposal.payload},
            )
            if not _infeasible(store, rec, check_cost) and store.claim(rec.id):
                log.info(
                    "%s #%d %s (parent #%s) started",
                    step,
                    rec.id,
                    proposal.genotype,
                    proposal.parent_id,
                )
                yield Task(rec.id, _with_out(proposal.payload, step_dir, rec.id))

    finished = sum(
        1 for r in store.records(step) if not is_root(r) and r.status in ("done", "failed")
    )
    progress = CandidateProgress(step, max_sample, finished)
    for outcome in progress.closing(executor.run(evaluate, tasks())):
        if outcome.ok:
            res = outcome.result
            rec = store.finish(
                outcome.record_id,
                res["metrics"],
                weights_path=res["weights_path"],
                cost=res.get("cost"),
                extra={k: res[k] for k in RESULT_EXTRAS if k in res},
            )
            log_candidate(step_dir / "tensorboard", rec)  # curves and its HParams entry
            log.info(
                "%s #%d %s done: %s",
                step,
                rec.id,
                rec.genotype,
                ", ".join(f"{o.key} {rec.values().get(o.key, float('nan')):,.4g}" for o in shown),
            )
        else:
            record_failure(store, step, outcome)
        records = store.records(step)
        progress.finished(best_so_far(records, shown), front_size(records, shown))
    front = write_step_outputs(store, step, step_dir, objectives)
    failed = store.records(step, status="failed")
    if failed:
        raise work_failed(store, step, failed, sampled())
    return front


def record_failure(store: RecordStore, step: str, outcome: Outcome) -> Record:
    """Commit a failed outcome (error and traceback) and log it with its traceback."""
    rec = store.fail(outcome.record_id, outcome.error or "failed", outcome.traceback)
    log.error(
        "%s #%d %s failed: %s\n%s",
        step,
        rec.id,
        rec.genotype,
        rec.error,
        (outcome.traceback or "(no traceback)").rstrip(),
    )
    return rec


def work_failed(
    store: RecordStore, step: str, failed: Sequence[Record], total: int, of: str = ""
) -> WorkFailed:
    """The one-line error of a step (``of``: e.g. ``" of generation 3"``) in which ``failed`` of
    ``total`` candidates failed, naming the first one and where its traceback is."""
    first = failed[0]
    return WorkFailed(
        f"{step}: {len(failed)} of {total} candidates{of} failed; first: #{first.id} "
        f"{first.genotype}: {first.error} — the traceback is in the run log and in "
        f"{store.path} (record {first.id})"
    )


def proposal_rng(seed: int, stored: int, duplicates: int) -> random.Random:
    """The generator handed to ``propose``, seeded from stored state only, so a resumed run makes
    the proposals an uninterrupted one makes: the run's ``seed``, the number of ``stored``
    records of the step (any status, roots included) and the ``duplicates`` (or ``None``)
    proposed since the last record was stored."""
    return random.Random(f"{seed}:{stored}:{duplicates}")  # a str seed is hashed with SHA-512


def _infeasible(store: RecordStore, rec: Record, check_cost: CheckCost | None) -> bool:
    """Check a sampled record's cost; mark it ``infeasible`` (and say so) if it breaks a limit.

    Done for records a killed run left pending too: it may have died between storing and
    checking one."""
    reason = check_cost(dict(rec.cost)) if check_cost and not is_root(rec) else None
    if reason:
        store.mark_infeasible(rec.id, reason)
        log.info("%s #%d %s infeasible: %s", rec.step, rec.id, rec.genotype, reason)
    return bool(reason)


def _out_of_tries(store: RecordStore, step: str, duplicates: int, max_tries: int) -> bool:
    """Whether ``max_tries`` proposals in a row were infeasible (the trailing infeasible records
    of the step, so a kill does not reset the count) or duplicates; logs why when so."""
    infeasible: list[Record] = []
    for rec in reversed(store.records(step)):
        if rec.status != "infeasible":
            break
        infeasible.append(rec)
    if len(infeasible) + duplicates < max_tries:
        return False
    if infeasible:
        log.warning(
            "%s: %d proposals in a row broke the constraints (last: %s) and %d were duplicates: "
            "loosen search.constraints to search further",
            step,
            len(infeasible),
            infeasible[0].error,
            duplicates,
        )
    else:
        log.warning("%s: no new candidate after %d tries", step, duplicates)
    return True


def _with_out(payload: dict[str, Any], step_dir: Path, record_id: int) -> dict[str, Any]:
    return {**payload, "out": str(step_dir / f"model_{record_id}.pth")}


def clean_leftovers(step_dir: Path) -> list[Path]:
    """Remove what killed candidates left in ``step_dir``: ``.train-*`` training folders and
    ``*.tmp`` files of unfinished atomic writes (model, ``pareto.csv``, ``desc`` files).

    Call only when no candidate of the step is running. Returns the removed paths (logged);
    a missing ``step_dir`` has none.
    """
    if not step_dir.is_dir():
        return []
    removed = sorted(
        [p for p in step_dir.glob(".train-*") if p.is_dir() and not p.is_symlink()]
        + [p for p in step_dir.glob("*.tmp") if p.is_file()]
    )
    for path in removed:
        if path.is_dir():
            shutil.rmtree(path)
        else:
            path.unlink(missing_ok=True)
    if removed:
        log.info(
            "%s: removed %d leftover(s) of killed candidates: %s",
            step_dir.name,
            len(removed),
            ", ".join(p.name for p in removed),
        )
    return removed


def write_step_outputs(
    store: RecordStore, step: str, step_dir: Path, objectives: Sequence[Objective | str]
) -> list[Record]:
    """Write ``pareto.csv`` and ``desc_<id>.json`` of the step's Pareto members into
    ``step_dir``, each atomically, and remove the ``desc`` files of records not on the front
    (any more); returns the members."""
    done = store.records(step, status="done")
    front = pareto_records(done, objectives)
    write_pareto_csv(step_dir / "pareto.csv", done, objectives)  # atomic: written aside, renamed
    for rec in front:
        desc = {
            "id": rec.id,
            "step": rec.step,
            "genotype": rec.genotype,
            "parent_id": rec.parent_id,
            "architecture": rec.extra.get("payload", {}).get("architecture"),
            "metrics": rec.metrics,
            "cost": rec.cost,
            "weights_path": rec.weights_path,
        }
        write_json_atomic(step_dir / f"desc_{rec.id}.json", desc)
    members = {f"desc_{rec.id}.json" for rec in front}
    for stale in step_dir.glob("desc_*.json"):  # after the new ones: a kill leaves a superset
        if stale.name not in members:
            stale.unlink()
            log.info("%s: %s removed, no longer on the Pareto front", step, stale.name)
    return front


def is_root(rec: Record) -> bool:
    """Whether ``rec`` is a step's starting point (see :func:`add_root`), not a sampled one."""
    return bool(rec.extra.get("root"))


def add_root(
    store: RecordStore,
    step: str,
    genotype: str,
    *,
    metrics: dict[str, float],
    cost: dict[str, float],
    weights_path: str,
    payload: dict[str, Any],
    parent_id: int | None = None,
) -> Record:
    """Record a starting point of a step as done (idempotent on resume). ``parent_id`` is the
    record of the previous step it comes from, so lineages run across steps."""
    found = store.find(step, genotype)
    if found is not None and found.status == "done":
        return found
    rec = found or store.add(
        step, genotype, parent_id=parent_id, cost=cost, extra={"payload": payload, "root": True}
    )
    store.claim(rec.id)
    return store.finish(rec.id, metrics, weights_path=weights_path, cost=cost)
