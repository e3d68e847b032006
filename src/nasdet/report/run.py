"""``report.html`` of a run directory: the one function behind the report ``nasdet run`` writes
when it ends and ``nasdet report RUN_DIR``, which regenerates it at any time, mid-run included."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from nasdet.errors import ConfigError
from nasdet.report.html import write_report
from nasdet.report.sections import Section, sections_from_json
from nasdet.run_dir import CONFIG_FILENAME, open_run_dir, run_objectives, run_steps
from nasdet.search.records import Record, RecordStore

__all__ = ["COMPARE_FILENAME", "find_compare", "regenerate_report", "write_run_report"]

COMPARE_FILENAME = "compare.json"  # nasdet compare's summary (nasdet.compare.run)


def find_compare(run_dir: str | Path) -> tuple[str, dict[str, Any]] | None:
    """The ``nasdet compare`` summary kept with a run: ``RUN_DIR/compare.json``, else the first
    ``RUN_DIR/*/compare.json`` by name (a compare run with ``--out RUN_DIR/<name>``); its path
    and data, or ``None`` when there is none.

    Raises:
        ConfigError: the file is not a compare summary (not JSON, or no ``architectures``).
    """
    run_dir = Path(run_dir)
    found = [run_dir / COMPARE_FILENAME, *sorted(run_dir.glob(f"*/{COMPARE_FILENAME}"))]
    path = next((p for p in found if p.is_file()), None)
    if path is None:
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ConfigError(f"{path}: not readable as JSON ({exc}) — rerun nasdet compare") from exc
    if not isinstance(data, dict) or not isinstance(data.get("architectures"), list):
        raise ConfigError(
            f"{path}: no 'architectures' list — not a nasdet compare summary; move it away"
        )
    return str(path), data


def write_run_report(
    out_dir: str | Path,
    store: RecordStore,
    *,
    steps: Sequence[str],
    objectives: Sequence[str],
    title: str,
    winner_id: int | None = None,
    baseline: Record | Mapping[str, Any] | None = None,
    baseline_note: str = "",
    sections: Sequence[Section] = (),
    units: Mapping[str, str] | None = None,
) -> Path:
    """Write ``out_dir/report.html`` (see :func:`~nasdet.report.html.write_report`), with the
    equal-budget comparison of :func:`find_compare` when ``out_dir`` holds one.

    Args:
        baseline: the reference model, a record or a mapping of values (flat or under
            ``metrics`` / ``cost``); labelled ``baseline_note``, else ``baseline #<id>``.
    """
    shown = None
    if baseline is not None:
        values = baseline.values() if isinstance(baseline, Record) else dict(baseline)
        default = f"baseline #{baseline.id}" if isinstance(baseline, Record) else "baseline"
        shown = {**values, "name": baseline_note or default}
    return write_report(
        out_dir,
        store,
        steps=steps,
        objectives=objectives,
        baseline=shown,
        winner_id=winner_id,
        title=title,
        sections=sections,
        units=units,
        compare=find_compare(out_dir),
    )


def regenerate_report(run_dir: str | Path, *, title: str = "nasdet search") -> Path:
    """Rewrite ``run_dir/report.html`` from what the directory holds, without writing to its
    record store (opened read-only): safe while the run goes on.

    A finished run's ``result.json`` gives the steps, objectives, winner and baseline its end
    report had; mid-run, every step with records is shown (in the order they started) with the
    objectives of :func:`~nasdet.run_dir.run_objectives`, and no winner or baseline.

    Raises:
        ConfigError: not a run directory (no ``config.yaml`` or no ``records.sqlite``).
    """
    run = open_run_dir(run_dir)
    if not run.config:
        raise ConfigError(
            f"{run.path}: no {CONFIG_FILENAME} — not the --out of a `nasdet run`, nothing to report"
        )
    result = run.result or {}
    steps = result.get("report_steps") or run_steps(run.store)
    baseline = None
    if isinstance(result.get("baseline"), Mapping):
        baseline = {k: result["baseline"].get(k) for k in ("metrics", "cost")}
    return write_run_report(
        run.path,
        run.store,
        steps=steps,
        objectives=run_objectives(run),
        title=result.get("title") or title,
        winner_id=result.get("record"),
        baseline=baseline,
        baseline_note=result.get("baseline_note") or "",
        sections=sections_from_json(result.get("sections") or ()),
        units=result.get("units") or None,
    )
