"""``nasdet compare``: train every architecture of a :class:`~nasdet.compare.inputs.ComparePlan`
at every seed into one output directory, then summarise.

``<out>`` holds ``compare.yaml`` (the inputs the compare started with: a rerun with other
architectures, seeds or budget is refused with one line), ``records.sqlite`` (one record per
(architecture, seed) in step ``compare``, committed after each training, so a killed compare
resumes where it stopped and a finished one trains nothing again), ``runs/<label>/seed<k>/`` (each
training's files, as ``nasdet train`` writes them), ``compare.json`` and ``report.html``.
"""

from __future__ import annotations

import logging
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from nasdet.atomic import write_json_atomic, write_text_atomic
from nasdet.compare.inputs import Architecture, ComparePlan
from nasdet.compare.summary import summarize
from nasdet.engine.train import CHECKPOINT
from nasdet.errors import ConfigError, WorkFailed
from nasdet.pipeline import VOLATILE_KEYS, changed_keys
from nasdet.search.records import RECORDS_FILENAME, Record, RecordStore
from nasdet.training import train_step

__all__ = ["INPUTS_FILENAME", "RESULT_FILENAME", "STEP", "CompareResult", "run_compare"]

log = logging.getLogger(__name__)

STEP = "compare"
INPUTS_FILENAME = "compare.yaml"
RESULT_FILENAME = "compare.json"


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
    latency: bool = False,
    threads: int | None = None,
    progress: Callable[[str], None] | None = None,
) -> CompareResult:
    """Train what is not done yet, then write ``compare.json`` and ``report.html``.

    ``latency``: also time each architecture on the CPU (median ms per image, ``threads``
    intra-op threads). ``progress`` receives one line per training started or skipped.

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
    trained, i = 0, 0
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
            say(f"[{i}/{total}] training {arch.label} seed {seed}")
            _train(plan, arch, seed, rec, store, out)
            trained += 1
    records = store.records(STEP)
    summary = summarize(plan, records, out, latency=latency, threads=threads)
    json_path = write_json_atomic(out / RESULT_FILENAME, summary)
    from nasdet.compare.report import write_compare_report

    report = write_compare_report(out, summary)
    failed = summary["failed"]
    if failed:
        names = ", ".join(f"{f['label']} seed {f['seed']}" for f in failed)
        raise WorkFailed(
            f"{len(failed)} training(s) failed ({names}); no verdict — their errors are in "
            f"{out / RESULT_FILENAME} and {store.path}; rerun the same command to retry them"
        )
    return CompareResult(summary, Path(json_path), report, trained)


def _train(
    plan: ComparePlan, arch: Architecture, seed: int, rec: Record, store: RecordStore, out: Path
) -> None:
    """Train ``arch`` at ``seed`` and commit the record (done, or failed with its traceback)."""
    store.claim(rec.id)
    run_dir = out / "runs" / arch.label / f"seed{seed}"
    try:
        cfg = plan.config_for(arch, seed)
        result = train_step(cfg, run_dir, resume=(run_dir / CHECKPOINT).is_file())
    except Exception as e:  # noqa: BLE001 - a failed training is recorded; the others go on
        line = (str(e).strip().splitlines() or [type(e).__name__])[0]
        log.error("%s seed %d failed: %s: %s", arch.label, seed, type(e).__name__, line)
        store.fail(rec.id, f"{type(e).__name__}: {line}", traceback.format_exc())
        return
    store.finish(
        rec.id,
        result.metrics,
        weights_path=result.model_path,
        cost={"params": float(result.params)},
        extra={"train_seconds": result.train_seconds},
    )
