"""``nasdet run``: one method's steps into a run directory, then ``report.html`` and
``result.json``; rerunning the same command resumes what a kill stopped.

The method comes from the run config's ``method:`` (see :mod:`nasdet.methods`). This module owns
what every method's run shares:

- ``config.yaml`` holds the config the run started with. A rerun with a config that differs in a
  key that changes results is refused with one line naming the keys, unless ``restart_from``
  names the step to redo from: its records and outputs, and those of the steps after it, are
  removed and the new config is kept.
- After the method's steps, the winner's model file is copied to ``<out>/model.pt`` and
  ``result.json`` names it with its metrics, cost and the report.
"""

from __future__ import annotations

import logging
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from nasdet.atomic import copy_atomic, write_json_atomic, write_text_atomic
from nasdet.config import parse_config
from nasdet.engine.distributed import current
from nasdet.errors import ConfigError
from nasdet.method import Method, MethodResult
from nasdet.methods import method_of
from nasdet.report.run import write_run_report
from nasdet.report.sections import sections_to_json
from nasdet.search.pareto import primary_metric
from nasdet.search.records import Record, RecordStore

log = logging.getLogger(__name__)

# keys that may change between a run and its resume without changing any result
VOLATILE_KEYS = (
    "pipeline",
    "data.num_workers",
    "train.tensorboard",
    "train.checkpoint_every",
    "train.device",
    "eval.batch_size",
    "eval.backend",
    "eval.cache_mib",
)


@dataclass(frozen=True)
class RunResult:
    """What :func:`run_pipeline` produced: the method's result, the report, the winner's file."""

    out_dir: Path
    final: Record | None
    report: Path | None
    model: Path | None
    baseline: Record | None = None
    baseline_note: str = ""
    primary_metric: str = "mAP"


def run_pipeline(cfg: Any, out_dir: str | Path, *, restart_from: str | None = None) -> RunResult:
    """Run the steps of the run config ``cfg`` into ``out_dir`` (see the module docstring)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    method = method_of(cfg)
    if current().world_size > 1 and not set(cfg.steps) <= set(method.torchrun_steps):
        if not method.torchrun_steps:
            raise ConfigError(f"{method.name} has no step that runs under torchrun (DDP)")
        allowed = ",".join(method.torchrun_steps)
        raise ConfigError(
            f"under torchrun only {allowed} runs (DDP): pass --steps {allowed}, then run the "
            "other steps without torchrun"
        )
    check_resume(method, cfg, out, restart_from)
    result = method.run(cfg, out)
    if result.final is None or not current().is_main:
        return RunResult(out, result.final, None, None)
    report = _report(out, method, result)
    return _finish(out, result, report, title=f"nasdet {method.title}")


def check_resume(method: Method, cfg: Any, out: Path, restart_from: str | None) -> None:
    """Refuse a resume whose config changed (one line naming the keys), or, with
    ``restart_from``, remove that step's and the later steps' results; then keep ``cfg`` as the
    run's ``config.yaml``."""
    path = out / "config.yaml"
    new = cfg.model_dump(mode="json")
    if restart_from is not None and restart_from not in method.config.STEPS:
        raise ConfigError(
            f"--restart-from: {method.name} has no step {restart_from!r} — "
            f"its steps are {', '.join(method.config.STEPS)}"
        )
    if path.is_file():
        changed = changed_keys(
            _stored_config(method, path), new, VOLATILE_KEYS + method.volatile_keys
        )
        if changed and restart_from is None:
            shown = ", ".join(changed[:6]) + (
                f" and {len(changed) - 6} more" if len(changed) > 6 else ""
            )
            raise ConfigError(
                f"{path}: this run started with another config ({shown} changed) — rerun with "
                "the same config to resume, pass --restart-from STEP to redo STEP and the steps "
                "after it with this config, or use another --out"
            )
    if restart_from is not None and current().is_main:
        _remove_steps(out, method.config.STEPS[method.config.STEPS.index(restart_from) :])
    if current().is_main:
        write_text_atomic(path, yaml.safe_dump(new, sort_keys=False))


def _stored_config(method: Method, path: Path) -> dict[str, Any]:
    """The run's stored config, as the current schema dumps it (so that defaults added or
    layouts changed since are not reported as changes)."""
    raw = yaml.safe_load(path.read_text()) or {}
    try:
        return parse_config(raw, source=str(path), schema=method.config).model_dump(mode="json")
    except ConfigError:
        return raw


def changed_keys(old: Any, new: Any, ignore: tuple[str, ...] = (), prefix: str = "") -> list[str]:
    """Dotted keys whose values differ between two plain-data configs (``ignore`` and the keys
    under them left out)."""
    if prefix.rstrip(".") in ignore:
        return []
    if isinstance(old, dict) and isinstance(new, dict):
        keys = sorted(set(old) | set(new), key=str)
        return [
            k
            for key in keys
            for k in changed_keys(old.get(key), new.get(key), ignore, f"{prefix}{key}.")
        ]
    return [] if old == new else [prefix.rstrip(".")]


def _remove_steps(out: Path, steps: tuple[str, ...]) -> None:
    store = RecordStore(out / "records.sqlite")
    for step in steps:
        removed = store.delete_step(step)
        folder = out / "output" / step
        if folder.exists():
            shutil.rmtree(folder)
        if removed or folder.exists():
            log.info("--restart-from: removed step %s (%d records and its outputs)", step, removed)


def _report(out: Path, method: Method, result: MethodResult) -> Path:
    return write_run_report(
        out,
        RecordStore(out / "records.sqlite"),
        steps=result.report_steps,
        objectives=result.objectives,
        title=f"nasdet {method.title}",
        winner_id=result.final.id if result.final else None,
        baseline=result.baseline,
        baseline_note=result.baseline_note,
        sections=result.sections,
        units=result.units,
    )


def _finish(out: Path, result: MethodResult, report: Path, *, title: str) -> RunResult:
    """Copy the winner's model file to ``<out>/model.pt``; write ``result.json`` (with what
    the report showed, so that ``nasdet report`` writes the same page again)."""
    final = result.final
    source = result.model or final.weights_path
    if final is None or source is None:
        raise ValueError("the method named a winner without a model file")
    model = out / "model.pt"
    copy_atomic(source, model)
    summary = None
    if result.baseline is not None:
        b = result.baseline
        summary = {"genotype": b.genotype, "metrics": b.metrics, "cost": b.cost}
    write_json_atomic(
        out / "result.json",
        {
            "winner": final.genotype,
            "record": final.id,
            "metrics": final.metrics,
            "cost": final.cost,
            "model": str(model),
            "trained_in": str(source),
            "primary_metric": primary_metric(result.objectives),
            "baseline": summary,
            "baseline_note": result.baseline_note,
            "report": str(report),
            "report_steps": list(result.report_steps),
            "objectives": list(result.objectives),
            "title": title,
            "units": dict(result.units),
            "sections": sections_to_json(result.sections),
        },
    )
    return RunResult(
        out,
        final,
        report,
        model,
        baseline=result.baseline,
        baseline_note=result.baseline_note,
        primary_metric=primary_metric(result.objectives),
    )
