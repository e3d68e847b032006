"""Figures of a search run as base64 PNG strings, drawn with matplotlib's Agg canvas.

No ``pyplot``: each figure is a standalone :class:`~matplotlib.figure.Figure` rendered off screen,
so nothing depends on a display, a global backend or figure state left between calls. Values are
passed as stored (parameters, FLOPs, mAP in [0, 1]) and scaled for the axes here.
"""

from __future__ import annotations

import base64
import io
from collections.abc import Sequence
from dataclasses import dataclass

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

__all__ = ["Point", "axis_scale", "errorbar_plot", "lineage_plot", "pareto_plot"]

_FIGSIZE = (6.0, 4.0)  # inches
_DPI = 100


@dataclass(frozen=True)
class Point:
    """One labelled point in stored units: ``x`` a cost, ``y`` a metric."""

    x: float
    y: float
    label: str = ""


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


def _png_base64(fig: Figure) -> str:
    FigureCanvasAgg(fig)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=_DPI)
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def pareto_plot(
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
) -> str:
    """Scatter of every candidate with the Pareto front drawn as a staircase.

    Args:
        points: every done candidate (x: cost ``x_key`` to minimise, y: ``y_key`` to maximise).
        front: the non-dominated candidates (connected, in increasing cost).
        x_key, y_key: the keys plotted, for axis scale and labels (see :func:`axis_scale`).
        title: figure title (shown as is; no math text).
        baseline: drawn as a star with its label, if given.
        winner: circled and labelled, if given.
        labels: the x and y axis labels, that axis's values then shown as given (``None`` or
            default: from :func:`axis_scale` of the key).
        winner_name: the winner's name in the legend.
        x_line: a vertical line at this x (stored units) with its legend label (a limit).

    Returns:
        The PNG image, base64-encoded.
    """
    x_div, x_label = axis_scale(x_key)
    y_div, y_label = axis_scale(y_key)
    if labels is not None and labels[0] is not None:
        x_div, x_label = 1.0, labels[0]
    if labels is not None and labels[1] is not None:
        y_div, y_label = 1.0, labels[1]
    fig = Figure(figsize=_FIGSIZE, layout="constrained")
    ax = fig.add_subplot()
    ax.scatter(
        [p.x / x_div for p in points],
        [p.y / y_div for p in points],
        s=18,
        color="#9aa5b1",
        alpha=0.8,
        label=f"candidates ({len(points)})",
    )
    if front:
        ordered = sorted(front, key=lambda p: (p.x, p.y))
        xs, ys = [p.x / x_div for p in ordered], [p.y / y_div for p in ordered]
        ax.step(xs, ys, where="post", color="#d9480f", linewidth=1.5)
        ax.scatter(xs, ys, s=36, color="#d9480f", zorder=3, label=f"Pareto front ({len(front)})")
    if baseline is not None:
        bx, by = baseline.x / x_div, baseline.y / y_div
        ax.scatter(
            [bx],
            [by],
            marker="*",
            s=220,
            color="#1864ab",
            edgecolor="black",
            linewidth=0.6,
            zorder=4,
            label="baseline",
        )
        ax.annotate(
            baseline.label or "baseline",
            (bx, by),
            xytext=(6, -12),
            textcoords="offset points",
            fontsize=8,
            parse_math=False,
        )
    if winner is not None:
        wx, wy = winner.x / x_div, winner.y / y_div
        ax.scatter(
            [wx],
            [wy],
            s=160,
            facecolors="none",
            edgecolors="#2b8a3e",
            linewidth=2,
            zorder=5,
            label=winner_name,
        )
        ax.annotate(
            winner.label or winner_name,
            (wx, wy),
            xytext=(6, 6),
            textcoords="offset points",
            fontsize=8,
            color="#2b8a3e",
            parse_math=False,
        )
    if x_line is not None:
        ax.axvline(x_line[0] / x_div, color="#c92a2a", linestyle="--", linewidth=1, label=x_line[1])
    ax.set_xlabel(x_label, parse_math=False)
    ax.set_ylabel(y_label, parse_math=False)
    ax.set_title(title, fontsize=10, parse_math=False)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8, loc="lower right" if labels is None else "best")
    return _png_base64(fig)


def lineage_plot(
    chain: Sequence[Point],
    *,
    x_key: str,
    y_key: str,
    labels: tuple[str | None, str | None] | None = None,
) -> str:
    """The winner's ancestry as arrows from each parent to its child, labelled with ids.

    Args:
        chain: ancestors root first, the winner last (``label`` e.g. ``"#12"``).
        x_key, y_key: the keys plotted (see :func:`axis_scale`).
        labels: as for :func:`pareto_plot`.

    Returns:
        The PNG image, base64-encoded.
    """
    x_div, x_label = axis_scale(x_key)
    y_div, y_label = axis_scale(y_key)
    if labels is not None and labels[0] is not None:
        x_div, x_label = 1.0, labels[0]
    if labels is not None and labels[1] is not None:
        y_div, y_label = 1.0, labels[1]
    fig = Figure(figsize=(_FIGSIZE[0], _FIGSIZE[1] * 0.8), layout="constrained")
    ax = fig.add_subplot()
    xs, ys = [p.x / x_div for p in chain], [p.y / y_div for p in chain]
    ax.scatter(xs, ys, s=30, color="#495057", zorder=3)
    ax.scatter(xs[-1:], ys[-1:], s=120, facecolors="none", edgecolors="#2b8a3e", linewidth=2)
    for i in range(1, len(chain)):
        ax.annotate(
            "",
            (xs[i], ys[i]),
            (xs[i - 1], ys[i - 1]),
            arrowprops={"arrowstyle": "->", "color": "#868e96"},
        )
    for x, y, point in zip(xs, ys, chain, strict=True):
        ax.annotate(
            point.label,
            (x, y),
            xytext=(5, 4),
            textcoords="offset points",
            fontsize=8,
            parse_math=False,
        )
    ax.set_xlabel(x_label, parse_math=False)
    ax.set_ylabel(y_label, parse_math=False)
    ax.set_title("lineage of the winner (root → winner)", fontsize=10)
    ax.grid(True, alpha=0.3)
    return _png_base64(fig)


def errorbar_plot(
    points: Sequence[Point],
    errors: Sequence[float | None],
    *,
    x_key: str,
    y_key: str,
    title: str,
) -> str:
    """Labelled points with vertical error bars (e.g. mean mAP ± std over seeds against a
    cost), one colour each.

    Args:
        points: x and y in stored units (see :func:`axis_scale`), ``label`` annotated.
        errors: the half-length of each point's bar in ``y`` units (``None``: no bar).
        x_key, y_key: the keys plotted, for axis scale and labels.
        title: figure title (shown as is).

    Returns:
        The PNG image, base64-encoded.
    """
    x_div, x_label = axis_scale(x_key)
    y_div, y_label = axis_scale(y_key)
    fig = Figure(figsize=_FIGSIZE, layout="constrained")
    ax = fig.add_subplot()
    for point, err in zip(points, errors, strict=True):
        ax.errorbar(
            [point.x / x_div],
            [point.y / y_div],
            yerr=None if err is None else [err / y_div],
            fmt="o",
            capsize=4,
            label=point.label,
        )
        ax.annotate(
            point.label,
            (point.x / x_div, point.y / y_div),
            xytext=(6, 4),
            textcoords="offset points",
            fontsize=8,
            parse_math=False,
        )
    ax.set_xlabel(x_label, parse_math=False)
    ax.set_ylabel(y_label, parse_math=False)
    ax.set_title(title, fontsize=10, parse_math=False)
    ax.grid(True, alpha=0.3)
    return _png_base64(fig)
