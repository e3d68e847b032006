"""``nasdet compare``: train every architecture of a :class:`~nasdet.compare.inputs.ComparePlan`
at every seed into one output directory, then summarise.

``<out>`` holds ``compare.yaml`` (the inputs the compare started with: a rerun with other
architectures, seeds or budget is refused with one line), ``records.sqlite`` (one record per
(architecture, seed) in step ``compare``, committed after each training, so a killed compare
resumes where it stopped and a finished one trains nothing again), ``runs/<label>/seed<k>/`` (each
training's files, as ``nasdet train`` writes them, and its log ``train.log``, written by
whichever process trains it), ``compare.json`` and ``report.html``.

The trainings are independent, so an :class:`~nasdet.search.executors.Executor` runs them: one
after another here (the default), or several at once on Ray workers (``nasdet compare --executor
ray --workers N``). Only this process writes the record store; a worker trains and returns its
metrics, and each result is committed as it arrives.
"""

from __future__ import annotations

import logging
import traceback
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from nasdet.atomic import write_json_atomic, write_text_atomic
from nasdet.compare.inputs import Architecture, ComparePlan, train_config
from nasdet.compare.summary import summarize
from nasdet.engine.train import CHECKPOINT
from nasdet.errors import ConfigError, WorkFailed
from nasdet.logfile import log_file
from nasdet.pipeline import VOLATILE_KEYS, changed_keys
from nasdet.search.executors import Executor, InProcessExecutor, Outcome, Task, error_line
from nasdet.search.records import RECORDS_FILENAME, RecordStore
from nasdet.training import train_step

__all__ = [
    "INPUTS_FILENAME",
    "RESULT_FILENAME",
    "STEP",
    "TRAIN_LOG",
    "CompareResult",
    "run_compare",
    "train_task",
]

log = logging.getLogger(__name__)

STEP = "compare"
INPUTS_FILENAME = "compare.yaml"
RESULT_FILENAME = "compare.json"
TRAIN_LOG = "train.log"


@dataclass(frozen=True)
class CompareResult:
    """What :func:`run_compare` produced: the ``compare.json`` data, its path, the report's and
    how many trainings ran now (the others were done before)."""

    summary: dict[str, Any]
    json_path: Path
    report: Path
    trained: int


def record_name(label: str, seed: int) -> str:
    """The record's genotype text of ``label`` at ``seed``."""
    return f"{label} seed={seed}"


def check_inputs(plan: ComparePlan, out: Path) -> None:
    """Refuse a resume whose inputs changed (one line naming the keys; the budget keys that
    change no result, such as ``data.num_workers``, may change); then keep them."""
    path = out / INPUTS_FILENAME
    new = plan.inputs()
    if path.is_file():
        old = yaml.safe_load(path.read_text()) or {}
        changed = changed_keys(old, new, tuple(f"budget.{k}" for k in VOLATILE_KEYS))
        if changed:
            shown = ", ".join(changed[:6]) + (
                f" and {len(changed) - 6} more" if len(changed) > 6 else ""
            )
            raise ConfigError(
                f"{path}: this compare started with other inputs ({shown} changed) — rerun with "
                "the same architectures, seeds and budget to resume, or use another --out"
            )
    write_text_atomic(path, yaml.safe_dump(new, sort_keys=False))


def run_compare(
    plan: ComparePlan,
    out: str | Path,
    *,
    executor: Executor | None = None,
    latency: bool = False,
    threads: int | None = None,
    progress: Callable[[str], None] | None = None,
) -> CompareResult:
    """Train what is not done yet, then write ``compare.json`` and ``report.html``.

    ``executor``: runs the trainings (default: one after another in this process; a
    :class:`~nasdet.search.executors.RayExecutor` runs ``max_workers`` at once; the caller
    closes it). ``latency``: also time each architecture on the CPU (median ms per image,
    ``threads`` intra-op threads). ``progress`` receives one line per training started,
    skipped or finished.

    Raises:
        ConfigError: the inputs differ from those ``out`` was started with.
        WorkFailed: a training failed (after the others ran and the files were written; the
            summary then has no pairs).
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    check_inputs(plan, out)
    store = RecordStore(out / RECORDS_FILENAME)
    store.reset_running(STEP)  # a killed compare's training: redone (from its checkpoint)
    store.reset_failed(STEP)  # a rerun tries the failed ones again
    say = progress or log.info
    total = len(plan.architectures) * len(plan.seeds)
    todo: list[tuple[int, Architecture, int, int]] = []  # (position, arch, seed, record id)
    i = 0
    for arch in plan.architectures:
        for seed in plan.seeds:
            i += 1
            rec = store.add(
                STEP,
                record_name(arch.label, seed),
                extra={"label": arch.label, "seed": seed, "source": str(arch.source)},
                exist_ok=True,
            )
            if rec.status == "done":
                say(f"[{i}/{total}] {arch.label} seed {seed}: done before, skipped")
                continue
            todo.append((i, arch, seed, rec.id))
    names = {rid: (arch.label, seed) for _, arch, seed, rid in todo}
    trained = 0
    ex = executor if executor is not None else InProcessExecutor()  # the caller closes theirs
    for outcome in ex.run(train_task, _tasks(plan, todo, store, out, total, say)):
        _commit(store, outcome, *names[outcome.record_id], say)
        trained += 1
    records = store.records(STEP)
    summary = summarize(plan, records, out, latency=latency, threads=threads)
    json_path = write_json_atomic(out / RESULT_FILENAME, summary)
    from nasdet.compare.report import write_compare_report

    report = write_compare_report(out, summary)
    failed = summary["failed"]
    if failed:
        names_text = ", ".join(f"{f['label']} seed {f['seed']}" for f in failed)
        raise WorkFailed(
            f"{len(failed)} training(s) failed ({names_text}); no verdict — their errors are in "
            f"{out / RESULT_FILENAME} and {store.path}; rerun the same command to retry them"
        )
    return CompareResult(summary, Path(json_path), report, trained)


def _tasks(
    plan: ComparePlan,
    todo: list[tuple[int, Architecture, int, int]],
    store: RecordStore,
    out: Path,
    total: int,
    say: Callable[[str], None],
) -> Iterator[Task]:
    """One task per training still to do, claimed when the executor pulls it (so a record is
    ``running`` only while a worker has it). A config that cannot be made is that record's
    failure, here."""
    for position, arch, seed, rid in todo:
        store.claim(rid)
        try:
            cfg = plan.config_for(arch, seed)
        except Exception as e:  # noqa: BLE001 - recorded; the others go on
            _fail(store, rid, arch.label, seed, error_line(e), traceback.format_exc())
            continue
        run_dir = out / "runs" / arch.label / f"seed{seed}"
        say(f"[{position}/{total}] training {arch.label} seed {seed} (log: {run_dir / TRAIN_LOG})")
        yield Task(rid, {"config": cfg.model_dump(mode="json"), "run_dir": str(run_dir)})


def train_task(payload: dict[str, Any]) -> dict[str, Any]:
    """Where a worker runs: train ``payload["config"]`` into ``payload["run_dir"]`` (from its
    checkpoint when a killed training left one); its metrics, model file, params and seconds.
    What the training logs (epochs, progress lines, a failure's traceback) goes to the run
    directory's ``train.log``, in the worker's process too."""
    cfg = train_config(payload["config"])
    run_dir = Path(payload["run_dir"])
    with log_file(run_dir / TRAIN_LOG):
        result = train_step(cfg, run_dir, resume=(run_dir / CHECKPOINT).is_file())
    return {
        "metrics": dict(result.metrics),
        "model": str(result.model_path),
        "params": float(result.params),
        "train_seconds": result.train_seconds,
    }


def _commit(
    store: RecordStore, outcome: Outcome, label: str, seed: int, say: Callable[[str], None]
) -> None:
    """Commit one training's outcome (done, or failed with its traceback)."""
    if not outcome.ok:
        _fail(store, outcome.record_id, label, seed, outcome.error or "failed", outcome.traceback)
        return
    r = outcome.result
    store.finish(
        outcome.record_id,
        r["metrics"],
        weights_path=r["model"],
        cost={"params": r["params"]},
        extra={"train_seconds": r["train_seconds"]},
    )
    say(f"{label} seed {seed}: mAP {r['metrics'].get('mAP', float('nan')):.3f}")


def _fail(store: RecordStore, rid: int, label: str, seed: int, error: str, tb: str | None) -> None:
    """Log and record one training's failure (its one-line error and traceback)."""
    log.error("%s seed %d failed: %s", label, seed, error)
    store.fail(rid, error, tb)
