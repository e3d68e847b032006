"""Sections a method adds to the run report: its own tables and scatter plots, as plain data.

The report knows nothing of a method; a method that has more to show than the generic page
(per-step Pareto fronts, lineage) returns :class:`Section` values in
:attr:`nasdet.method.MethodResult.sections` and the page renders them after the summary.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from nasdet.report.plots import Point

__all__ = ["Point", "Scatter", "Section", "Table", "sections_from_json", "sections_to_json"]


@dataclass(frozen=True)
class Table:
    """A table of plain values: text is escaped, an ``int`` shown as is, a ``float`` with four
    decimals, ``None`` as a dash. ``marked`` rows (indices) are highlighted."""

    headers: Sequence[str]
    rows: Sequence[Sequence[object]]
    caption: str = ""
    marked: Sequence[int] = ()


@dataclass(frozen=True)
class Scatter:
    """Points in the units of their axis labels (shown as given), with an optional baseline
    (a star) and chosen point (circled)."""

    points: Sequence[Point]
    x_label: str
    y_label: str
    title: str
    baseline: Point | None = None
    chosen: Point | None = None
    caption: str = ""
    x_line: tuple[float, str] | None = None  # a limit drawn as a vertical line, and its label


@dataclass(frozen=True)
class Section:
    """One section of the page: a title, a paragraph of plain text, tables, then plots."""

    title: str
    text: str = ""
    tables: Sequence[Table] = field(default_factory=tuple)
    plots: Sequence[Scatter] = field(default_factory=tuple)


def sections_to_json(sections: Sequence[Section]) -> list[dict[str, Any]]:
    """Sections as JSON-ready data (``result.json`` keeps them for ``nasdet report``)."""
    return [asdict(s) for s in sections]


def _point(d: dict[str, Any] | None) -> Point | None:
    return None if d is None else Point(**d)


def sections_from_json(data: Sequence[dict[str, Any]]) -> list[Section]:
    """The inverse of :func:`sections_to_json`."""
    out = []
    for s in data:
        tables = tuple(Table(**t) for t in s.get("tables", ()))
        plots = tuple(
            Scatter(
                **{
                    **p,
                    "points": tuple(Point(**q) for q in p["points"]),
                    "baseline": _point(p.get("baseline")),
                    "chosen": _point(p.get("chosen")),
                    "x_line": tuple(p["x_line"]) if p.get("x_line") is not None else None,
                }
            )
            for p in s.get("plots", ())
        )
        out.append(Section(title=s["title"], text=s.get("text", ""), tables=tables, plots=plots))
    return out
