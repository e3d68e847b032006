"""TensorBoard view of a search: each finished candidate as one run with its training curves and
an HParams entry (genotype, step, parent → metrics and cost), so that TensorBoard's HParams tab
lists the candidates side by side.

A candidate's run is ``<log_dir>/candidate_<id>``; :func:`~nasdet.search.driver.run_search` uses
``<step_dir>/tensorboard``, so ``tensorboard --logdir RUN_DIR/output`` shows every step.
"""

from __future__ import annotations

import math
import numbers
import shutil
from pathlib import Path
from typing import Any

from nasdet.search.records import Record

__all__ = ["hparams_of", "log_candidate", "metrics_of"]


def _numbers(values: dict[str, Any]) -> dict[str, float]:
    return {
        k: float(v)
        for k, v in values.items()
        if isinstance(v, numbers.Real) and not isinstance(v, bool) and math.isfinite(float(v))
    }


def hparams_of(rec: Record) -> dict[str, Any]:
    """The HParams columns of a candidate: ``id``, ``step``, ``genotype`` and ``parent``
    (``"none"`` for a root)."""
    parent = "none" if rec.parent_id is None else str(rec.parent_id)
    return {"id": rec.id, "step": rec.step, "genotype": rec.genotype, "parent": parent}


def metrics_of(rec: Record) -> dict[str, float]:
    """The HParams metrics of a candidate: its finite metrics and numeric costs, as stored
    (``mAP`` in [0, 1], ``params`` a count, ``flops`` per image), tagged ``metrics/<key>`` and
    ``cost/<key>``."""
    out = {f"metrics/{k}": v for k, v in _numbers(rec.metrics).items()}
    out.update({f"cost/{k}": v for k, v in _numbers(rec.cost).items()})
    return out


def log_candidate(log_dir: str | Path, rec: Record) -> Path:
    """Write ``rec``'s run under ``log_dir``: ``train/loss`` and ``train/lr`` per epoch from
    ``extra["history"]`` (the trainer's entries, when the candidate kept them), each of
    :func:`metrics_of` as a scalar, and the HParams session of :func:`hparams_of` with those
    metrics. A run left by an earlier try of the same record is replaced. Returns the run's
    folder."""
    from torch.utils.tensorboard import SummaryWriter
    from torch.utils.tensorboard.summary import hparams

    run = Path(log_dir) / f"candidate_{rec.id}"
    if run.exists():
        shutil.rmtree(run)
    metrics = metrics_of(rec)
    writer = SummaryWriter(str(run))
    try:
        history = [e for e in rec.extra.get("history") or () if isinstance(e, dict)]
        for epoch, entry in enumerate(history, start=1):
            for key, value in _numbers(entry).items():
                if key in ("loss", "lr"):
                    writer.add_scalar(f"train/{key}", value, epoch)
        experiment, start, end = hparams(hparams_of(rec), metrics)
        for summary in (experiment, start, end):
            writer.file_writer.add_summary(summary)
        for tag, value in metrics.items():
            writer.add_scalar(tag, value, len(history))
    finally:
        writer.close()
    return run
