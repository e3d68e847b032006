"""The run report: a self-contained HTML page with Pareto plots, tables and the winner's lineage."""

from __future__ import annotations

from nasdet.report.html import REPORT_FILENAME, lineage, write_report
from nasdet.report.sections import Scatter, Section, Table

__all__ = ["REPORT_FILENAME", "Scatter", "Section", "Table", "lineage", "write_report"]
