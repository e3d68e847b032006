"""A run directory read from outside the run: ``nasdet status`` and ``nasdet report``.

Everything here reads: the record store is opened read-only (SQLite ``mode=ro``), so it is safe
while ``nasdet run`` is writing to the same directory from another process, and never creates a
store where there is none.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from nasdet.errors import ConfigError
from nasdet.search.pareto import parse_objectives
from nasdet.search.progress import fmt_duration
from nasdet.search.records import RECORDS_FILENAME, STATUSES, Record, RecordStore

CONFIG_FILENAME = "config.yaml"
RESULT_FILENAME = "result.json"
STATUS_SCHEMA = 1  # the "schema" of status_of()'s dict; raised when a key changes meaning
_BUDGET_KEYS = ("max_sample", "max_evaluations")


@dataclass(frozen=True)
class RunDir:
    """What a run directory holds.

    Attributes:
        path: the directory.
        config: ``config.yaml`` as the run wrote it (plain data; ``{}`` when absent).
        result: ``result.json`` (written when the run finished), or ``None``.
        store: the record store, opened read-only.
    """

    path: Path
    config: dict[str, Any]
    result: dict[str, Any] | None
    store: RecordStore


def open_run_dir(path: str | Path) -> RunDir:
    """Open the run directory ``path`` of ``nasdet run --out`` for reading.

    Raises:
        ConfigError: no such directory, or no ``records.sqlite`` in it (one line, with what to
            do); RecordStoreError: the store is unreadable or empty.
    """
    path = Path(path)
    if not path.is_dir():
        raise ConfigError(f"{path}: no such run directory — give the --out of a `nasdet run`")
    if not (path / RECORDS_FILENAME).is_file():
        raise ConfigError(
            f"{path}: no {RECORDS_FILENAME} — not a run directory, or its run has not started "
            "recording yet; give the --out of a `nasdet run`"
        )
    config: dict[str, Any] = {}
    if (path / CONFIG_FILENAME).is_file():
        config = yaml.safe_load((path / CONFIG_FILENAME).read_text()) or {}
    result = None
    if (path / RESULT_FILENAME).is_file():
        result = json.loads((path / RESULT_FILENAME).read_text())
    return RunDir(path, config, result, RecordStore.open_readonly(path / RECORDS_FILENAME))


def run_steps(store: RecordStore) -> list[str]:
    """The steps that have records, in the order they started (their first record's id)."""
    return list(dict.fromkeys(r.step for r in store.records()))


def run_objectives(run: RunDir, records: list[Record] | None = None) -> list[str]:
    """The run's Pareto objectives: ``result.json``'s (a finished run), else the first
    ``objective_keys`` of ``config.yaml``, else ``mAP`` and the numeric cost keys of the done
    ``records`` (default: all records)."""
    if run.result and run.result.get("objectives"):
        return list(run.result["objectives"])
    found = next(_find_key(run.config, "objective_keys"), None)
    if isinstance(found, list) and found:
        return [str(k) for k in found]
    done = [
        r for r in (records if records is not None else run.store.records()) if r.status == "done"
    ]
    costs = {k for r in done for k, v in r.cost.items() if _is_number(v)}
    return ["mAP", *sorted(costs)]


def status_of(run: RunDir, now: float | None = None) -> dict[str, Any]:
    """Where a run stands, as plain data (``nasdet status --json``; see docs/usage.md).

    Per step (in the order the steps started): record counts by status, the running records
    with their worker and seconds running, the best done record per objective (max for a
    maximised one such as ``mAP``, min otherwise) and, while records are left, an ETA in
    seconds: mean duration of the done candidates × the candidates left (pending ones, or what
    the step's ``max_sample`` / ``max_evaluations`` in ``config.yaml`` leaves, whichever is
    more), divided by the distinct workers seen in the step; ``None`` when it cannot be
    estimated (nothing done yet).
    """
    now = time.time() if now is None else now
    records = run.store.records()
    objectives = run_objectives(run, records)
    steps = []
    for step in run_steps(run.store):
        recs = [r for r in records if r.step == step]
        steps.append(_step_status(step, recs, objectives, _budget(run.config, step), now))
    current = next((s["step"] for s in reversed(steps) if s["left"]), None)
    return {
        "schema": STATUS_SCHEMA,
        "run_dir": str(run.path),
        "method": run.config.get("method"),
        "finished": run.result is not None,
        "now": now,
        "objectives": objectives,
        "current_step": current,
        "steps": steps,
    }


def _step_status(
    step: str, recs: list[Record], objectives: list[str], budget: int | None, now: float
) -> dict[str, Any]:
    counts = {s: sum(r.status == s for r in recs) for s in STATUSES}
    running = [
        {
            "id": r.id,
            "genotype": r.genotype,
            "worker": r.worker,
            "started_at": r.started_at,
            "running_s": None if r.started_at is None else max(now - r.started_at, 0.0),
        }
        for r in recs
        if r.status == "running"
    ]
    best = {}
    for obj in parse_objectives(objectives):
        scored = [r for r in recs if r.status == "done" and _is_number(r.values().get(obj.key))]
        if scored:
            pick = max if obj.maximize else min
            rec = pick(scored, key=lambda r, k=obj.key: r.values()[k])
            best[obj.key] = {"id": rec.id, "genotype": rec.genotype, "value": rec.values()[obj.key]}
    sampled = [r for r in recs if not r.extra.get("root")]  # a step's starting points: no work
    times = [r.duration_s for r in sampled if r.status == "done" and r.duration_s is not None]
    mean = sum(times) / len(times) if times else None
    workers = len({r.worker for r in sampled if r.worker is not None})
    left = counts["pending"]
    if budget is not None:
        used = sum(r.status not in ("pending", "infeasible") for r in sampled)
        left = max(left, budget - used)
    eta = None
    if not left and not running:
        eta = 0.0
    elif mean is not None and workers:
        in_flight = sum(max(mean - (r["running_s"] or 0.0), 0.0) for r in running)
        eta = (left * mean + in_flight) / workers
    return {
        "step": step,
        "counts": counts,
        "total": len(recs),
        "budget": budget,
        "left": left + len(running),
        "running": running,
        "best": best,
        "mean_duration_s": mean,
        "workers": workers,
        "eta_s": eta,
    }


def _budget(config: Mapping[str, Any], step: str) -> int | None:
    """A candidate budget in the step's config section (``max_sample``, ``max_evaluations``)."""
    section = config.get(step)
    for key in _BUDGET_KEYS:
        found = next(_find_key(section, key), None)
        if isinstance(found, int) and not isinstance(found, bool):
            return found
    return None


def _find_key(data: Any, key: str) -> Iterator[Any]:
    """Values of ``key`` anywhere in nested plain data, depth first in file order."""
    if isinstance(data, Mapping):
        for k, v in data.items():
            if k == key:
                yield v
            yield from _find_key(v, key)
    elif isinstance(data, list):
        for v in data:
            yield from _find_key(v, key)


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


# -- text ------------------------------------------------------------------------------------


def status_table(status: Mapping[str, Any], sep: str = ", ") -> tuple[list[str], list[list[str]]]:
    """Header and rows (plain text) of a :func:`status_of` dict, one row per step; ``sep``
    separates the objectives in the "best so far" cell."""
    header = ["step", *STATUSES, "ETA", "best so far"]
    rows = []
    for s in status["steps"]:
        best = sep.join(f"{key} {_fmt(b['value'])} (#{b['id']})" for key, b in s["best"].items())
        eta = (
            "—"
            if not s["left"]
            else fmt_duration(s["eta_s"])
            if s["eta_s"] is not None
            else "unknown"
        )
        rows.append([s["step"], *(str(s["counts"][k]) for k in STATUSES), eta, best or "—"])
    return header, rows


def status_lines(status: Mapping[str, Any]) -> tuple[str, list[str]]:
    """The title line and one line per running record of a :func:`status_of` dict."""
    state = (
        "finished" if status["finished"] else "in progress" if status["current_step"] else "idle"
    )
    title = (
        f"{status['run_dir']} ({status['method'] or 'unknown method'}): {state}; "
        f"objectives {', '.join(status['objectives'])}"
    )
    lines = []
    for s in status["steps"]:
        for r in s["running"]:
            since = (
                time.strftime("%H:%M:%S", time.localtime(r["started_at"]))
                if r["started_at"]
                else "?"
            )
            lines.append(
                f"running: {s['step']} #{r['id']} {r['genotype']} on {r['worker'] or '?'} for "
                f"{fmt_duration(r['running_s'])} (since {since})"
            )
    return title, lines


def _fmt(value: float) -> str:
    if isinstance(value, int) or abs(value) >= 1000:
        return f"{value:,.0f}"
    return f"{value:.4g}"
