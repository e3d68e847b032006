"""Sections a method adds to the run report: its own tables and scatter plots, as plain data.

The report knows nothing of a method; a method that has more to show than the generic page
(per-step Pareto fronts, lineage) returns :class:`Section` values in
:attr:`nasdet.method.MethodResult.sections` and the page renders them after the summary.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from nasdet.report.plots import Point

__all__ = ["Point", "Scatter", "Section", "Table"]


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
