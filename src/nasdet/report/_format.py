"""HTML helpers of the report: the page's CSS, value formatting in display units, tables."""

from __future__ import annotations

import math
import numbers
import time
from collections.abc import Sequence
from html import escape
from typing import Any

from nasdet.report.plots import axis_scale

__all__ = ["CSS", "fmt_duration", "fmt_time", "fmt_value", "html_table", "is_number"]

CSS = """
body { font: 14px/1.45 system-ui, sans-serif; margin: 2em auto; max-width: 1200px; color: #212529;
       padding: 0 1em; }
h1 { font-size: 1.6em; } h2 { border-bottom: 1px solid #dee2e6; padding-bottom: .2em; }
table { border-collapse: collapse; margin: .5em 0 1.5em; }
th, td { border: 1px solid #dee2e6; padding: .25em .6em; text-align: left; vertical-align: top; }
th { background: #f1f3f5; } td.num { text-align: right; font-variant-numeric: tabular-nums; }
td.geno, td.path, td.err { font-family: ui-monospace, monospace; font-size: 12px;
                           word-break: break-all; max-width: 36em; }
tr.winner { background: #ebfbee; } .muted { color: #868e96; }
.plots { display: grid; grid-template-columns: repeat(auto-fill, minmax(520px, 1fr)); gap: 1em; }
figure { margin: 0 0 1em; } figure.plot { min-width: 0; border: 1px solid #dee2e6; }
figcaption { font-size: 12px; color: #495057; padding: 0 .5em .3em; }
"""


def is_number(value: Any) -> bool:
    """A finite real number (``bool`` excluded; numpy scalars included)."""
    return (
        isinstance(value, numbers.Real)
        and not isinstance(value, bool)
        and math.isfinite(float(value))
    )


def fmt_value(key: str, value: Any, unit: str | None = None) -> str:
    """A value as escaped HTML text, in ``unit`` when given (the value as stored), else in the
    unit :func:`~nasdet.report.plots.axis_scale` gives."""
    if value is None:
        return '<span class="muted">—</span>'
    if not is_number(value):
        return escape(str(value))
    if unit is not None:
        return escape(f"{value:.4g} {unit}")
    div, label = axis_scale(key)
    if div != 1.0:
        return f"{value / div:.3f} {label.rsplit('(', 1)[1].rstrip(')')}"
    if isinstance(value, int):
        return str(value)
    return f"{value:.2f} ms" if "latency" in key else f"{value:.4f}"


def fmt_duration(seconds: float | None) -> str:
    if seconds is None:
        return "—"
    seconds = int(round(seconds))
    return f"{seconds // 3600}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"


def fmt_time(timestamp: float | None) -> str:
    return (
        "—" if timestamp is None else time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(timestamp))
    )


def html_table(
    headers: Sequence[str],
    rows: Sequence[Sequence[str]],
    classes: Sequence[str] = (),
    row_classes: Sequence[str] = (),
) -> str:
    """An HTML table; ``headers`` are plain text (escaped here), cells are HTML already."""
    head = "".join(f"<th>{escape(h)}</th>" for h in headers)
    body = []
    for i, row in enumerate(rows):
        tr_class = f' class="{row_classes[i]}"' if i < len(row_classes) and row_classes[i] else ""
        cells = "".join(
            f'<td class="{classes[j]}">{cell}</td>'
            if j < len(classes) and classes[j]
            else f"<td>{cell}</td>"
            for j, cell in enumerate(row)
        )
        body.append(f"<tr{tr_class}>{cells}</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"
