"""The report's interactive parts read from records: hover texts, the lineage tree, training
curves, the timeline of candidates per worker, and a ``nasdet compare`` summary.

Each function returns HTML (figures from :mod:`nasdet.report.plots`) or plain data the page
renders; record text is escaped here.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from html import escape
from typing import Any

from nasdet.report import plots
from nasdet.report.plots import Bar, Point
from nasdet.report.sections import Section, Table
from nasdet.search.records import Record

__all__ = [
    "compare_figures",
    "compare_section",
    "curves_html",
    "record_hover",
    "timeline_html",
    "tree_html",
]

Fmt = Callable[[str, Any], str]  # a value of a key as escaped HTML text
Hover = Callable[[Record], str]  # a record's hover text (HTML)


def record_hover(rec: Record, keys: Sequence[str], fmt: Fmt) -> str:
    """What hovering a record's point shows: id, step, genotype, the values of ``keys`` it has,
    parent and weights path (HTML, escaped)."""
    values = rec.values()
    lines = [f"<b>#{rec.id}</b> {escape(rec.step)} ({escape(rec.status)})", escape(rec.genotype)]
    lines += [f"{escape(k)}: {fmt(k, values[k])}" for k in keys if values.get(k) is not None]
    lines.append("parent: " + ("—" if rec.parent_id is None else f"#{rec.parent_id}"))
    lines.append(f"weights: {escape(rec.weights_path or '—')}")
    return "<br>".join(lines)


def tree_html(
    records: Sequence[Record], lineage_ids: Sequence[int], y_key: str, hover: Hover
) -> str:
    """The records with a number for ``y_key`` as a parent → child tree, the winner's lineage
    (``lineage_ids``, root first) in green; ``""`` when fewer than two are drawn."""
    shown = {r.id: r for r in records if isinstance(r.metrics.get(y_key), int | float)}
    if len(shown) < 2:
        return ""
    nodes = [(r.id, r.parent_id, float(r.metrics[y_key]), hover(r)) for r in shown.values()]
    fig = plots.tree_figure(
        nodes, [i for i in lineage_ids if i in shown], y_key=y_key, title=f"lineage tree: {y_key}"
    )
    return plots.figure_html(
        fig, "every done candidate linked to its parent; hover a point for its record"
    )


def curves_html(records: Sequence[Record], hover: Hover) -> str:
    """Training loss per epoch of each record whose ``extra["history"]`` holds one (the
    trainer's per-epoch entries: ``loss``, ``lr``...); a note when none does."""
    curves = []
    for rec in records:
        history = [e for e in rec.extra.get("history") or () if isinstance(e, Mapping)]
        points = [(i + 1, float(e["loss"])) for i, e in enumerate(history) if "loss" in e]
        if points:
            epochs, losses = zip(*points, strict=True)
            curves.append((f"#{rec.id} {rec.genotype}", epochs, losses, hover(rec)))
    if not curves:
        return (
            '<p class="muted">no candidate of these steps kept a per-epoch history (SP-NAS '
            "candidates do; DetNAS, OFA and latency candidates are scored on the supernet "
            "without training).</p>"
        )
    fig = plots.curves_figure(curves, y_label="train loss", title="training loss per candidate")
    return plots.figure_html(
        fig, "click a legend entry to hide a candidate, double-click to show it alone"
    )


def _span(rec: Record) -> tuple[float, float | None] | None:
    """Start and end of a record's evaluation: the actor's times when the async search gave
    them, else claim and finish; ``None`` if it never started."""
    start, end = rec.extra.get("eval_started"), rec.extra.get("eval_finished")
    if isinstance(start, int | float) and isinstance(end, int | float):
        return float(start), float(end)
    return None if rec.started_at is None else (rec.started_at, rec.finished_at)


def timeline_html(records: Sequence[Record], hover: Hover) -> str:
    """A Gantt chart of the evaluations per worker (the async search's actor, else the
    ``host:pid`` that claimed the record), a still-running one up to the last start or finish
    the records hold (so that the same records give the same page), and how busy each worker
    was between its first start and its last end."""
    spans = {r.id: s for r in records if (s := _span(r)) is not None}
    if not spans:
        return '<p class="muted">no candidate has started.</p>'
    t0 = min(s[0] for s in spans.values())
    now = max(t for s in spans.values() for t in s if t is not None)
    bars = []
    for rec in records:
        if rec.id not in spans:
            continue
        start, end = spans[rec.id]
        worker = str(rec.extra.get("actor") or rec.worker or "—")
        group = rec.step if rec.status == "done" else f"{rec.step} ({rec.status})"
        took = f"{end - start:.1f} s" if end is not None else "running, drawn to the last event"
        bars.append(
            Bar(worker, start - t0, (end if end is not None else now) - t0, group,
                f"{hover(rec)}<br>start +{start - t0:.1f} s, {took}")
        )  # fmt: skip
    rows = []
    for worker in dict.fromkeys(b.worker for b in bars):
        mine = [b for b in bars if b.worker == worker]
        window = max(b.end for b in mine) - min(b.start for b in mine)
        busy = sum(b.end - b.start for b in mine)
        share = f"{100 * busy / window:.0f} %" if window > 0 else "—"
        rows.append(f"<li>{escape(worker)}: {len(mine)} candidate(s), busy {share}</li>")
    fig = plots.timeline_figure(bars, title="candidates per worker")
    return plots.figure_html(fig, "a gap in a row is time that worker had no candidate") + (
        f"<p>busy share between each worker's first start and last end:</p><ul>{''.join(rows)}</ul>"
    )


def compare_figures(summary: Mapping[str, Any]) -> list[str]:
    """Mean ± std of the compare's metric against each cost it measured (``flops``,
    ``params``, ``latency_ms``), one point per architecture, from ``compare.json`` data."""
    metric = summary.get("metric", "mAP")
    archs = [a for a in summary["architectures"] if a["metrics"].get(metric) and a["cost"]]
    figures = []
    for x_key in ("flops", "params", "latency_ms"):
        shown = [a for a in archs if x_key in a["cost"]]
        if not shown:
            continue
        points = [
            Point(float(a["cost"][x_key]), a["metrics"][metric]["mean"], a["label"]) for a in shown
        ]
        errors = [a["metrics"][metric]["std"] for a in shown]
        fig = plots.errorbar_figure(
            points, errors, x_key=x_key, y_key=metric, title=f"{metric} (mean ± std) vs {x_key}"
        )
        figures.append(plots.figure_html(fig, "bars: ± one std over seeds"))
    return figures


def compare_section(summary: Mapping[str, Any], source: str) -> Section:
    """The equal-budget comparison of ``compare.json`` (read from ``source``) in short: each
    architecture's metric over seeds and cost, and the paired differences."""
    metric = summary.get("metric", "mAP")
    rows = []
    for a in summary["architectures"]:
        m, cost = a["metrics"].get(metric), a["cost"]
        done = sum(r["status"] == "done" for r in a["runs"])
        rows.append([
            a["label"], f"{done}/{len(a['runs'])}",
            None if m is None else m["mean"], None if m is None else m["std"],
            cost.get("params"), cost["flops"] / 1e9 if "flops" in cost else None,
        ])  # fmt: skip
    tables = [Table(["architecture", "seeds done", f"{metric} mean", "std", "params", "GFLOPs"],
                    rows, f"every architecture trained with one budget ({source})")]  # fmt: skip
    if summary.get("pairs"):
        pairs = [[p["a"], p["b"], p["mean"], p["std"], p["p"]] for p in summary["pairs"]]
        tables.append(Table(["a", "b", f"mean Δ{metric} (a − b)", "std Δ", "p (paired t)"], pairs))
    return Section("Equal-budget comparison (nasdet compare)", tables=tables)
