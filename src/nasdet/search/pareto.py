"""Pareto fronts and hypervolume over search objectives, computed by ``moocore``.

An objective is a metric or cost key and a direction. :func:`parse_objectives` reads a config's
``objective_keys`` (``['mAP', 'params']``); points are mappings from those keys to numbers, such as
:meth:`nasdet.search.records.Record.values`. Maximised objectives are negated before they reach
``moocore``, which minimises every coordinate.
"""

from __future__ import annotations

import csv
import logging
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import moocore
import numpy as np

from nasdet.atomic import open_atomic
from nasdet.search.records import Record

__all__ = [
    "PARETO_FILENAME",
    "Objective",
    "as_objectives",
    "default_maximize",
    "hypervolume",
    "pareto_front",
    "pareto_records",
    "parse_objectives",
    "write_pareto_csv",
]

logger = logging.getLogger(__name__)

PARETO_FILENAME = "pareto.csv"
# Known keys. Maximised: mAP and any AP*/AR* (COCO: AP50, AP_small, AR100...; VOC: VOC_AP50,
# VOC07_AP50, mAP50). Minimised: params, flops, macs (optionally backbone_*) and latency*
# (optionally onnx_*), as nasdet.cost reports them.
_MAXIMIZED = re.compile(r"(VOC(07)?_)?(mAP|AP|AR).*")
_MINIMIZED = re.compile(r"(backbone_)?(params|flops|macs)|(onnx_)?latency.*")
_KNOWN = (
    "mAP, AP*, AR*, VOC_AP*, VOC07_AP* (maximised); params, flops, macs, backbone_params, "
    "backbone_flops, backbone_macs, latency*, onnx_latency* (minimised)"
)


@dataclass(frozen=True)
class Objective:
    """One search objective: a metric/cost key and whether larger is better."""

    key: str
    maximize: bool

    def __str__(self) -> str:
        """``"+key"`` when maximised, ``"-key"`` when minimised (what :func:`parse_objectives`
        reads back)."""
        return ("+" if self.maximize else "-") + self.key


def default_maximize(key: str) -> bool:
    """Whether a known objective key is maximised; ``ValueError`` for an unknown key."""
    if _MAXIMIZED.fullmatch(key):
        return True
    if _MINIMIZED.fullmatch(key):
        return False
    raise ValueError(
        f"unknown objective key {key!r}; known: {_KNOWN}; prefix any key with '+' to maximise "
        "or '-' to minimise it"
    )


def parse_objectives(keys: Sequence[str]) -> list[Objective]:
    """Objectives from a config's ``objective_keys``, e.g. ``['mAP', 'params']``.

    Known keys get their direction (see :func:`default_maximize`). A ``+`` prefix makes a key
    maximised and a ``-`` prefix minimised, overriding the default and allowing any other key
    (``'+accuracy'``, ``'-energy_mj'``).

    Raises:
        ValueError: no keys, a repeated key, or an unknown key without ``+``/``-``.
    """
    if isinstance(keys, str):
        raise ValueError(f"objective keys must be a list of names, got the string {keys!r}")
    objectives: list[Objective] = []
    for raw in keys:
        text = str(raw).strip()
        sign = text[0] if text[:1] in ("+", "-") else ""
        key = text[len(sign) :].strip()
        if not key:
            raise ValueError(f"empty objective key {raw!r}")
        maximize = sign == "+" if sign else default_maximize(key)
        if any(o.key == key for o in objectives):
            raise ValueError(f"objective key {key!r} given twice in {list(keys)}")
        objectives.append(Objective(key, maximize))
    if not objectives:
        raise ValueError("no objective keys given; e.g. ['mAP', 'params']")
    return objectives


def check_objectives(keys: list[str]) -> list[str]:
    """``keys`` when :func:`parse_objectives` accepts them and one is maximised (a metric to
    rank by); ``ValueError`` otherwise (for config validators)."""
    primary_metric(keys)
    return keys


def primary_metric(keys: Sequence[str]) -> str:
    """The first maximised objective of ``keys`` (the metric candidates are ranked by)."""
    for objective in parse_objectives(keys):
        if objective.maximize:
            return objective.key
    raise ValueError(f"objective keys {list(keys)} have no metric to maximise (e.g. mAP)")


def as_objectives(objectives: Sequence[Objective | str]) -> list[Objective]:
    """``objectives`` as :class:`Objective` s (strings parsed by :func:`parse_objectives`)."""
    if all(isinstance(o, Objective) for o in objectives) and objectives:
        return list(objectives)  # type: ignore[arg-type]
    return parse_objectives([str(o) for o in objectives])


def _number(value: Any, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float | np.number):
        raise ValueError(f"{where} is {value!r}, not a number")
    value = float(value)
    if not math.isfinite(value):
        raise ValueError(f"{where} is {value}, not finite")
    return value


def _minimization_matrix(
    points: Sequence[Mapping[str, Any]], objectives: Sequence[Objective]
) -> np.ndarray:
    """(n, m) float64 array of the objectives, maximised ones negated."""
    signs = np.array([-1.0 if o.maximize else 1.0 for o in objectives])
    rows = np.empty((len(points), len(objectives)), dtype=np.float64)
    for i, point in enumerate(points):
        for j, obj in enumerate(objectives):
            if obj.key not in point:
                raise ValueError(f"point {i} has no objective {obj.key!r} (has {sorted(point)})")
            rows[i, j] = _number(point[obj.key], f"point {i} objective {obj.key!r}")
    return rows * signs


def pareto_front(
    points: Sequence[Mapping[str, Any]], objectives: Sequence[Objective | str]
) -> list[int]:
    """Indices of the non-dominated points, in input order.

    A point is dominated when another is at least as good in every objective and better in one.
    Duplicates (equal in every objective) do not dominate each other: every copy of a front point
    is on the front, so no equally good genotype is dropped.

    Args:
        points: one mapping per candidate holding every objective key (extra keys are ignored).
        objectives: :class:`Objective` list, or keys as :func:`parse_objectives` reads them.

    Raises:
        ValueError: a point lacks an objective, or a value is not a finite number.
    """
    objectives = as_objectives(objectives)
    if not points:
        return []
    matrix = _minimization_matrix(points, objectives)
    mask = moocore.is_nondominated(matrix, keep_weakly=True)
    return [int(i) for i in np.flatnonzero(mask)]


def hypervolume(
    points: Sequence[Mapping[str, Any]],
    objectives: Sequence[Objective | str],
    reference: Mapping[str, float],
) -> float:
    """Volume of objective space the points dominate, bounded by ``reference``.

    The result is in the product of the objectives' units (e.g. mAP × parameters): normalise
    the values first to compare runs with other references. Points not strictly better than the
    reference in every objective add nothing; no points give 0.

    Args:
        points: mappings holding every objective key.
        objectives: :class:`Objective` list, or keys as :func:`parse_objectives` reads them.
        reference: worst value of each objective (e.g. ``{"mAP": 0.0, "params": 50e6}``).

    Raises:
        ValueError: a point or the reference lacks an objective, or a value is not finite.
    """
    objectives = as_objectives(objectives)
    missing = [o.key for o in objectives if o.key not in reference]
    if missing:
        raise ValueError(f"hypervolume reference has no value for {missing}")
    ref = _minimization_matrix([reference], objectives)[0]
    if not points:
        return 0.0
    return float(moocore.hypervolume(_minimization_matrix(points, objectives), ref=ref))


def _objective_values(record: Record, objectives: Sequence[Objective]) -> dict[str, Any] | None:
    """The record's objective values, or ``None`` when one is missing or not a finite number."""
    values = record.values()
    try:
        for obj in objectives:
            _number(values.get(obj.key), obj.key)
    except ValueError:
        return None
    return {obj.key: values[obj.key] for obj in objectives}


def pareto_records(
    records: Sequence[Record], objectives: Sequence[Objective | str]
) -> list[Record]:
    """The ``done`` records on the Pareto front, in input order.

    Objective values come from :meth:`Record.values` (``cost`` and ``metrics`` merged, metrics
    winning). Records that are not done, or lack an objective / have a non-finite one, are left
    out (logged at debug level). Duplicates are kept as :func:`pareto_front` says.
    """
    objectives = as_objectives(objectives)
    candidates: list[Record] = []
    points: list[dict[str, Any]] = []
    for record in records:
        values = _objective_values(record, objectives) if record.status == "done" else None
        if values is None:
            logger.debug("record %d (%s) left out of the Pareto front", record.id, record.status)
            continue
        candidates.append(record)
        points.append(values)
    return [candidates[i] for i in pareto_front(points, objectives)]


def write_pareto_csv(
    path: str | Path, records: Sequence[Record], objectives: Sequence[Objective | str]
) -> list[Record]:
    """Write the Pareto-front records of ``records`` to a CSV file, atomically.

    Columns: ``id, step, genotype, parent_id``, one per objective key (values as stored), then
    ``weights_path``; one row per :func:`pareto_records` result, in input order. The file is
    written beside its target and renamed over it, so readers never see half a file.

    Args:
        path: the CSV file, or an existing directory meaning ``path / "pareto.csv"``.

    Returns:
        The records written.
    """
    objectives = as_objectives(objectives)
    path = Path(path)
    if path.is_dir():
        path = path / PARETO_FILENAME
    front = pareto_records(records, objectives)
    with open_atomic(path, "w") as handle:
        writer = csv.writer(handle)
        writer.writerow(
            ["id", "step", "genotype", "parent_id", *(o.key for o in objectives)] + ["weights_path"]
        )
        for rec in front:
            values = rec.values()
            row = [rec.id, rec.step, rec.genotype, rec.parent_id]
            row += [values[o.key] for o in objectives] + [rec.weights_path]
            writer.writerow(["" if v is None else v for v in row])
    logger.info("wrote %d Pareto record(s) of %d to %s", len(front), len(records), path)
    return front
