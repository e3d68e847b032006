"""Figures of a search run as interactive plotly figures, embedded in a page as HTML.

Each builder returns a :class:`plotly.graph_objects.Figure`; :func:`figure_div` turns one into a
``<div>`` and the script that draws it, without plotly.js itself: :func:`page_html` inlines
plotly.js once per page (when the page has a figure), so the file opens offline and stays one
file. Values are passed as stored (parameters, FLOPs, mAP in [0, 1]) and scaled for the axes
here. Hover texts are HTML that plotly shows as is (``<br>`` for lines): callers escape what they
take from records.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cache
from html import escape

import plotly.graph_objects as go
import plotly.io as pio

__all__ = [
    "Bar",
    "Point",
    "axis_scale",
    "curves_figure",
    "errorbar_figure",
    "figure_div",
    "figure_html",
    "page_html",
    "pareto_figure",
    "timeline_figure",
    "tree_figure",
]

_GREY, _ORANGE, _BLUE, _GREEN, _RED = "#9aa5b1", "#d9480f", "#1864ab", "#2b8a3e", "#c92a2a"
_PLOT_CLASS = "plotly-graph-div"  # the class plotly gives a figure's <div>


@dataclass(frozen=True)
class Point:
    """One labelled point in stored units: ``x`` a cost, ``y`` a metric; ``hover`` is the HTML
    shown on hover (escaped by the caller), else the label and the values."""

    x: float
    y: float
    label: str = ""
    hover: str = ""


@dataclass(frozen=True)
class Bar:
    """One candidate's evaluation on a worker: ``start`` and ``end`` in seconds from the
    run's first start, a ``group`` (its colour: step or status) and the hover HTML."""

    worker: str
    start: float
    end: float
    group: str
    hover: str


def axis_scale(key: str) -> tuple[float, str]:
    """Divisor and axis label for a metric or cost key.

    ``params`` are shown in millions, ``flops``/``macs`` in billions (G), latencies in ms as
    stored; anything else as stored.
    """
    base = key.removeprefix("backbone_")
    if base == "params":
        return 1e6, f"{key} (M)"
    if base in ("flops", "macs"):
        return 1e9, f"{key.replace('flops', 'FLOPs').replace('macs', 'MACs')} (G)"
    if "latency" in key:
        return 1.0, f"{key} (ms)"
    return 1.0, key


def _scales(
    x_key: str, y_key: str, labels: tuple[str | None, str | None] | None
) -> tuple[float, str, float, str]:
    (x_div, x_label), (y_div, y_label) = axis_scale(x_key), axis_scale(y_key)
    if labels is not None and labels[0] is not None:
        x_div, x_label = 1.0, labels[0]
    if labels is not None and labels[1] is not None:
        y_div, y_label = 1.0, labels[1]
    return x_div, x_label, y_div, y_label


@cache
def _template() -> go.layout.Template:
    """A white theme, given whole: plotly's named templates take a second to load."""
    axis = {"gridcolor": "#e9ecef", "linecolor": "#adb5bd", "zeroline": False}
    return go.layout.Template(
        layout={
            "plot_bgcolor": "white",
            "paper_bgcolor": "white",
            "font": {"family": "system-ui, sans-serif", "size": 12, "color": "#212529"},
            "colorway": ["#1864ab", "#d9480f", "#2b8a3e", "#862e9c", "#e67700", "#0b7285",
                         "#c2255c", "#5c940d", "#495057", "#364fc7"],
            "xaxis": axis,
            "yaxis": axis,
        }
    )  # fmt: skip


def _figure() -> go.Figure:
    return go.Figure(layout={"template": _template()})


def _layout(fig: go.Figure, title: str, x_label: str, y_label: str, height: int = 420) -> None:
    fig.update_layout(
        title={"text": escape(title), "font": {"size": 14}, "x": 0.01, "xanchor": "left"},
        xaxis_title=escape(x_label),
        yaxis_title=escape(y_label),
        height=height,
        margin={"l": 60, "r": 20, "t": 50, "b": 50},
        hoverlabel={"align": "left"},
        legend={"font": {"size": 11}},
    )


def _hover(point: Point, x_label: str, y_label: str) -> str:
    if point.hover:
        return point.hover
    head = f"{escape(point.label)}<br>" if point.label else ""
    return f"{head}{escape(x_label)}: {point.x:.4g}<br>{escape(y_label)}: {point.y:.4g}"


def _markers(
    points: Sequence[Point], x_div: float, y_div: float, labels: tuple[str, str], **trace: object
) -> go.Scatter:
    return go.Scatter(
        x=[p.x / x_div for p in points],
        y=[p.y / y_div for p in points],
        hovertext=[_hover(p, *labels) for p in points],
        hovertemplate="%{hovertext}<extra></extra>",
        **trace,
    )


def pareto_figure(
    points: Sequence[Point],
    front: Sequence[Point],
    *,
    x_key: str,
    y_key: str,
    title: str,
    baseline: Point | None = None,
    winner: Point | None = None,
    labels: tuple[str | None, str | None] | None = None,
    winner_name: str = "winner",
    x_line: tuple[float, str] | None = None,
) -> go.Figure:
    """Scatter of every candidate with the Pareto front drawn as a staircase.

    Args:
        points: every done candidate (x: cost ``x_key`` to minimise, y: ``y_key`` to maximise).
        front: the non-dominated candidates (connected, in increasing cost).
        x_key, y_key: the keys plotted, for axis scale and labels (see :func:`axis_scale`).
        title: figure title (plain text).
        baseline: drawn as a star, if given.
        winner: circled, if given.
        labels: the x and y axis labels, that axis's values then shown as given (``None`` or
            default: from :func:`axis_scale` of the key).
        winner_name: the winner's name in the legend.
        x_line: a vertical line at this x (stored units) with its legend label (a limit).
    """
    x_div, x_label, y_div, y_label = _scales(x_key, y_key, labels)
    axes = (x_label, y_label)
    fig = _figure()
    fig.add_trace(
        _markers(points, x_div, y_div, axes, mode="markers", name=f"candidates ({len(points)})",
                 marker={"color": _GREY, "size": 8, "opacity": 0.8})
    )  # fmt: skip
    if front:
        ordered = sorted(front, key=lambda p: (p.x, p.y))
        fig.add_trace(
            _markers(ordered, x_div, y_div, axes, mode="lines+markers", line_shape="hv",
                     name=f"Pareto front ({len(front)})",
                     marker={"color": _ORANGE, "size": 10}, line={"color": _ORANGE})
        )  # fmt: skip
    if baseline is not None:
        fig.add_trace(
            _markers([baseline], x_div, y_div, axes, mode="markers", name="baseline",
                     marker={"symbol": "star", "size": 18, "color": _BLUE,
                             "line": {"color": "black", "width": 1}})
        )  # fmt: skip
    if winner is not None:
        fig.add_trace(
            _markers([winner], x_div, y_div, axes, mode="markers", name=escape(winner_name),
                     marker={"symbol": "circle-open", "size": 20, "color": _GREEN,
                             "line": {"width": 3}})
        )  # fmt: skip
    if x_line is not None:
        fig.add_vline(x=x_line[0] / x_div, line={"color": _RED, "dash": "dash", "width": 1})
        fig.add_trace(  # the limit's legend entry
            go.Scatter(x=[None], y=[None], mode="lines", name=escape(x_line[1]),
                       line={"color": _RED, "dash": "dash"})
        )  # fmt: skip
    _layout(fig, title, x_label, y_label)
    return fig


def tree_figure(
    nodes: Sequence[tuple[int, int | None, float, str]],
    highlighted: Sequence[int],
    *,
    y_key: str,
    title: str,
) -> go.Figure:
    """Candidates as a tree: each ``(id, parent_id, y, hover)`` at x = its depth (edges from its
    root among ``nodes``) and y = its metric ``y_key``, linked to its parent; the ``highlighted``
    ids (the winner's lineage) drawn in green."""
    y_div, y_label = axis_scale(y_key)
    parent = {n[0]: n[1] for n in nodes}

    def depth_of(node: int) -> int:  # edges up to the first ancestor not among the nodes
        depth, seen = 0, {node}
        while (up := parent.get(node)) is not None and up in parent and up not in seen:
            node, depth = up, depth + 1
            seen.add(up)
        return depth

    y_of = {n[0]: n[2] / y_div for n in nodes}
    edges_x: list[float | None] = []
    edges_y: list[float | None] = []
    for node, par, _, _ in nodes:
        if par is not None and par in y_of and par != node:
            edges_x += [depth_of(par), depth_of(node), None]
            edges_y += [y_of[par], y_of[node], None]
    fig = _figure()
    fig.add_trace(
        go.Scatter(
            x=edges_x,
            y=edges_y,
            mode="lines",
            hoverinfo="skip",
            line={"color": "#ced4da", "width": 1},
            name="parent → child",
        )
    )
    lit = set(highlighted)
    for name, members, style in (
        ("candidates", [n for n in nodes if n[0] not in lit], {"color": _GREY, "size": 8}),
        ("winner's lineage", [n for n in nodes if n[0] in lit], {"color": _GREEN, "size": 11}),
    ):
        if members:
            fig.add_trace(
                go.Scatter(x=[depth_of(n[0]) for n in members], y=[y_of[n[0]] for n in members],
                           mode="markers", name=name, marker=style,
                           hovertext=[n[3] for n in members],
                           hovertemplate="%{hovertext}<extra></extra>")
            )  # fmt: skip
    chain = [n for n in highlighted if n in y_of]
    if len(chain) >= 2:
        fig.add_trace(go.Scatter(x=[depth_of(n) for n in chain], y=[y_of[n] for n in chain],
                                 mode="lines", hoverinfo="skip", showlegend=False,
                                 name="lineage path",
                                 line={"color": _GREEN, "width": 2}))  # fmt: skip
    _layout(fig, title, "generation (edges from the root)", y_label)
    fig.update_xaxes(dtick=1)
    return fig


def curves_figure(
    curves: Sequence[tuple[str, Sequence[float], Sequence[float], str]],
    *,
    y_label: str,
    title: str,
) -> go.Figure:
    """One line per candidate: ``(name, epochs, values, hover)``; the legend (hidden past 20
    lines) toggles a line, a double click shows one alone."""
    fig = _figure()
    for name, xs, ys, hover in curves:
        fig.add_trace(
            go.Scatter(x=list(xs), y=list(ys), mode="lines+markers", name=escape(name),
                       hovertext=[hover] * len(xs),
                       hovertemplate=f"%{{hovertext}}<br>epoch %{{x}}: {escape(y_label)} "
                                     "%{y:.4g}<extra></extra>")
        )  # fmt: skip
    _layout(fig, title, "epoch", y_label)
    fig.update_layout(showlegend=len(curves) <= 20)
    fig.update_xaxes(dtick=1)
    return fig


def timeline_figure(bars: Sequence[Bar], *, title: str) -> go.Figure:
    """A Gantt chart: one row per worker, one bar per candidate from its start to its end
    (seconds from the run's first start), coloured by ``group``."""
    fig = _figure()
    for group in dict.fromkeys(b.group for b in bars):
        mine = [b for b in bars if b.group == group]
        fig.add_trace(
            go.Bar(y=[b.worker for b in mine], x=[b.end - b.start for b in mine],
                   base=[b.start for b in mine], orientation="h", name=escape(group),
                   hovertext=[b.hover for b in mine],
                   hovertemplate="%{hovertext}<extra></extra>")
        )  # fmt: skip
    workers = len({b.worker for b in bars})
    _layout(fig, title, "seconds from the first start", "worker", 160 + 40 * workers)
    fig.update_layout(barmode="overlay")
    fig.update_yaxes(type="category", automargin=True)
    return fig


def errorbar_figure(
    points: Sequence[Point],
    errors: Sequence[float | None],
    *,
    x_key: str,
    y_key: str,
    title: str,
) -> go.Figure:
    """Labelled points with vertical error bars (e.g. mean mAP ± std over seeds against a
    cost), one colour and legend entry each; ``errors`` are half-lengths in ``y`` units
    (``None``: no bar)."""
    x_div, x_label, y_div, y_label = _scales(x_key, y_key, None)
    fig = _figure()
    for point, err in zip(points, errors, strict=True):
        fig.add_trace(
            _markers([point], x_div, y_div, (x_label, y_label), mode="markers+text",
                     name=escape(point.label), text=[escape(point.label)],
                     textposition="top right", marker={"size": 10},
                     error_y={"type": "data", "array": [0.0 if err is None else err / y_div],
                              "visible": err is not None})
        )  # fmt: skip
    _layout(fig, title, x_label, y_label)
    return fig


def figure_div(fig: go.Figure) -> str:
    """A figure as a ``<div>`` and its drawing script, without plotly.js (see
    :func:`page_html`). The div's id is a hash of the figure, so that the same records give
    the same page."""
    digest = hashlib.sha1(fig.to_json().encode()).hexdigest()[:16]
    return pio.to_html(
        fig,
        full_html=False,
        include_plotlyjs=False,
        div_id=f"plot-{digest}",
        config={"displaylogo": False, "responsive": True},
    )


def figure_html(fig: go.Figure, caption: str = "") -> str:
    """A ``<figure>`` of :func:`figure_div` with a plain-text ``caption``."""
    cap = f"<figcaption>{escape(caption)}</figcaption>" if caption else ""
    return f'<figure class="plot">{figure_div(fig)}{cap}</figure>'


@cache
def _plotly_script() -> str:
    from plotly.offline import get_plotlyjs

    return f'<script type="text/javascript">{get_plotlyjs()}</script>'


def page_html(title: str, css: str, body: Sequence[str]) -> str:
    """A whole page: ``title`` (plain text), inline ``css`` and ``body`` (HTML parts). Where a
    part holds a figure (:func:`figure_div`), plotly.js is inlined once in the head."""
    content = "\n".join(body)
    script = _plotly_script() if _PLOT_CLASS in content else ""
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f"<title>{escape(title)}</title><style>{css}</style>{script}</head>\n<body>\n"
        f"{content}\n</body></html>\n"
    )
