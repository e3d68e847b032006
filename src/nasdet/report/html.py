"""The run report: one self-contained HTML page summarising a search from its record store.

The page has inline CSS and interactive plotly figures, with plotly.js inlined once (nothing is
fetched), so it can be mailed or opened offline. Hovering a candidate's point shows its record.
Every text taken from records (steps, genotypes, errors, paths) is HTML-escaped.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from html import escape
from pathlib import Path
from typing import Any

from nasdet.atomic import write_text_atomic
from nasdet.report import interactive, plots
from nasdet.report._format import (
    CSS,
    fmt_duration,
    fmt_time,
    fmt_value,
    html_table,
    is_number,
)
from nasdet.report.plots import Point
from nasdet.report.sections import Scatter, Section, Table
from nasdet.search.pareto import Objective, pareto_records, parse_objectives
from nasdet.search.records import Record, RecordStore, RecordStoreError

__all__ = [
    "REPORT_FILENAME",
    "lineage",
    "section_html",
    "write_page",
    "write_report",
]

logger = logging.getLogger(__name__)

REPORT_FILENAME = "report.html"
_COST_AXES = ("params", "flops")
_STATUSES = ("done", "failed", "infeasible", "pending", "running")


# -- lineage ---------------------------------------------------------------------------------


def _lineage(store: RecordStore, record_id: int) -> tuple[list[Record], str | None]:
    """Ancestors root first and, when the chain is cut short, why."""
    chain = [store.get(record_id)]
    seen = {record_id}
    while (parent_id := chain[-1].parent_id) is not None:
        if parent_id in seen:
            note = f"record {chain[-1].id} has parent {parent_id}, already in the chain (a cycle)"
            break
        try:
            chain.append(store.get(parent_id))
        except RecordStoreError:
            note = f"parent {parent_id} of record {chain[-1].id} is not in the store"
            break
        seen.add(parent_id)
    else:
        note = None
    if note:
        logger.warning("lineage of record %d stops: %s", record_id, note)
    return chain[::-1], note


def lineage(store: RecordStore, record_id: int) -> list[Record]:
    """The chain of parents of a record, root first, the record itself last.

    Follows ``parent_id`` across steps. A parent missing from the store, or a cycle, ends the
    chain at the last record reached (logged as a warning) instead of failing.

    Raises:
        RecordStoreError: ``record_id`` itself is not in the store.
    """
    return _lineage(store, record_id)[0]


def _record_cells(ctx: _Context, rec: Record, keys: Sequence[str]) -> list[str]:
    values = rec.values()
    parent = "—" if rec.parent_id is None else str(rec.parent_id)
    return [str(rec.id), escape(rec.genotype), parent, *(ctx.fmt(k, values.get(k)) for k in keys)]


# -- sections --------------------------------------------------------------------------------


def _baseline_point(baseline: Record | Mapping[str, Any] | None) -> tuple[str, dict[str, Any]]:
    """Label and flat values of the baseline (a record, or a mapping of values and ``name``)."""
    if baseline is None:
        return "", {}
    if isinstance(baseline, Record):
        return f"baseline #{baseline.id}", baseline.values()
    values: dict[str, Any] = {}
    for nested in ("cost", "metrics"):
        if isinstance(baseline.get(nested), Mapping):
            values.update(baseline[nested])
    values.update({k: v for k, v in baseline.items() if is_number(v)})
    return str(baseline.get("name") or baseline.get("label") or "baseline"), values


def _cost_axes(records: Sequence[Record], objectives: Sequence[Objective]) -> list[str]:
    """Minimised objectives, then params and flops, that some done record has a number for."""
    keys = [o.key for o in objectives if not o.maximize] + list(_COST_AXES)
    keys = list(dict.fromkeys(keys))
    return [k for k in keys if any(is_number(r.values().get(k)) for r in records)]


def _summary(ctx: _Context) -> str:
    recs = [r for step in ctx.steps for r in ctx.by_step[step]]
    started = [r.created_at for r in recs]
    finished = [r.finished_at for r in recs if r.finished_at is not None]
    span = max(finished) - min(started) if started and finished else None
    busy = sum(r.duration_s or 0.0 for r in recs)
    done = [r for r in recs if r.status == "done" and is_number(r.metrics.get(ctx.y_key))]
    best = max(done, key=lambda r: r.metrics[ctx.y_key], default=None)
    items = [
        f"<li>steps run: {escape(', '.join(ctx.steps)) or '—'}</li>",
        f"<li>candidates: {len(recs)}; from {fmt_time(min(started, default=None))} to "
        f"{fmt_time(max(finished, default=None))}; wall time {fmt_duration(span)}, evaluation time "
        f"{fmt_duration(busy)} (sum over candidates)</li>",
        f"<li>objectives: {escape(', '.join(str(o) for o in ctx.objectives))}</li>",
    ]
    if best is not None:
        items.append(
            f"<li>best {escape(ctx.y_key)}: {ctx.fmt(ctx.y_key, best.metrics[ctx.y_key])} "
            f"(record {best.id}, step {escape(best.step)}, <code>{escape(best.genotype)}</code>)"
            "</li>"
        )
    if ctx.winner is not None:
        w = ctx.winner
        items.append(
            f"<li>winner: record {w.id} (step {escape(w.step)}), <code>{escape(w.genotype)}</code>"
            + "".join(f", {escape(k)} {ctx.fmt(k, w.values().get(k))}" for k in ctx.table_keys)
            + "</li>"
        )
    if ctx.baseline_label:
        items.append(
            f"<li>baseline: {escape(ctx.baseline_label)}"
            + "".join(f", {escape(k)} {ctx.fmt(k, ctx.baseline.get(k))}" for k in ctx.table_keys)
            + "</li>"
        )
    rows = []
    for step in ctx.steps:
        counts = {s: 0 for s in _STATUSES}
        for r in ctx.by_step[step]:
            counts[r.status] += 1
        times = [r.duration_s for r in ctx.by_step[step] if r.duration_s is not None]
        rows.append(
            [
                escape(step),
                str(len(ctx.by_step[step])),
                *(str(counts[s]) for s in _STATUSES),
                str(len(ctx.fronts[step])),
                fmt_duration(sum(times) if times else None),
            ]
        )
    table = html_table(
        ["step", "candidates", *_STATUSES, "Pareto", "evaluation time"],
        rows,
        ["", *["num"] * (len(_STATUSES) + 2)],
    )
    return f'<section id="summary"><h2>Summary</h2><ul>{"".join(items)}</ul>{table}</section>'


def _step_section(ctx: _Context, index: int, step: str) -> str:
    records = ctx.by_step[step]
    done = [r for r in records if r.status == "done"]
    parts = [f'<section id="step-{index}"><h2>Step: {escape(step)}</h2>']
    if not done:
        parts.append('<p class="muted">no candidate of this step finished.</p></section>')
        return "".join(parts)
    figures = []
    for x_key in _cost_axes(done, ctx.objectives):
        figures.append(_pareto_figure(ctx, step, done, x_key))
    parts.append(f'<div class="plots">{"".join(f for f in figures if f)}</div>')
    front = ctx.fronts[step]
    parts.append(f"<h3>Pareto front ({len(front)} of {len(done)} done)</h3>")
    keys = ctx.table_keys
    rows = [_record_cells(ctx, r, keys) + [escape(r.weights_path or "—")] for r in front]
    win = ctx.winner.id if ctx.winner else None
    parts.append(
        html_table(
            ["id", "genotype", "parent", *keys, "weights"],
            rows,
            ["num", "geno", "num", *["num"] * len(keys), "path"],
            ["winner" if r.id == win else "" for r in front],
        )
    )
    parts.append("</section>")
    return "".join(parts)


def _pareto_figure(ctx: _Context, step: str, done: Sequence[Record], x_key: str) -> str:
    pair = [Objective(ctx.y_key, True), Objective(x_key, False)]
    plotted = [r for r in done if all(is_number(r.values().get(o.key)) for o in pair)]
    if not plotted:
        return ""

    def point(rec: Record, label: str = "") -> Point:
        values = rec.values()
        return Point(float(values[x_key]), float(values[ctx.y_key]), label, ctx.hover(rec))

    base = None
    if all(is_number(ctx.baseline.get(k)) for k in (x_key, ctx.y_key)) and ctx.baseline_label:
        base = Point(float(ctx.baseline[x_key]), float(ctx.baseline[ctx.y_key]), ctx.baseline_label)
    winner = ctx.winner if ctx.winner and ctx.winner.id in {r.id for r in plotted} else None
    fig = plots.pareto_figure(
        [point(r) for r in plotted],
        [point(r) for r in pareto_records(plotted, pair)],
        x_key=x_key,
        y_key=ctx.y_key,
        title=f"{step}: {ctx.y_key} vs {x_key}",
        baseline=base,
        winner=point(winner, f"winner #{winner.id}") if winner else None,
        labels=ctx.labels(x_key, ctx.y_key),
    )
    caption = f"{step}: {ctx.y_key} against {x_key}; the front is over these two axes"
    return plots.figure_html(fig, caption)


def _lineage_section(ctx: _Context, store: RecordStore) -> str:
    parts = ['<section id="lineage"><h2>Lineage</h2>']
    chain: list[Record] = []
    if ctx.winner is None:
        why = "no winner given"
        if ctx.winner_id is not None:
            why = f"winner record {ctx.winner_id} is not in the store"
        parts.append(f'<p class="muted">{why}.</p>')
    else:
        chain, note = _lineage(store, ctx.winner.id)
        parts.append(_chain_table(ctx, chain))
        if note:
            parts.append(f'<p class="muted">the chain stops early: {escape(note)}.</p>')
    records = [r for step in ctx.steps for r in ctx.by_step[step]]
    seen = {r.id for r in records}
    records += [r for r in chain if r.id not in seen]  # ancestors from steps not reported
    parts.append(interactive.tree_html(records, [r.id for r in chain], ctx.y_key, ctx.hover))
    parts.append("</section>")
    return "".join(parts)


def _chain_table(ctx: _Context, chain: Sequence[Record]) -> str:
    keys = ctx.table_keys
    rows, prev = [], None
    for rec in chain:
        y = rec.metrics.get(ctx.y_key)
        gain = f"{y - prev:+.4f}" if is_number(y) and is_number(prev) else "—"
        rows.append([escape(rec.step), *_record_cells(ctx, rec, keys), gain])
        prev = y
    return (
        f"<h3>The winner's lineage</h3><p>{len(chain)} record(s), root first; each was derived "
        "from the one above.</p>"
        + html_table(
            ["step", "id", "genotype", "parent", *keys, f"Δ {ctx.y_key}"],
            rows,
            ["", "num", "geno", "num", *["num"] * (len(keys) + 1)],
            [""] * (len(rows) - 1) + ["winner"],
        )
    )


def _runs_section(ctx: _Context) -> str:
    records = [r for step in ctx.steps for r in ctx.by_step[step]]
    return (
        '<section id="training"><h2>Training curves</h2>'
        + interactive.curves_html(records, ctx.hover)
        + '</section><section id="timeline"><h2>Timeline of candidates per worker</h2>'
        + interactive.timeline_html(records, ctx.hover)
        + "</section>"
    )


def _compare_section(source: str, summary: Mapping[str, Any]) -> str:
    section = interactive.compare_section(summary, source)
    return _section_html(section, "compare", interactive.compare_figures(summary))


def _failures_section(ctx: _Context) -> str:
    bad = [r for s in ctx.steps for r in ctx.by_step[s] if r.status in ("failed", "infeasible")]
    parts = [f'<section id="failures"><h2>Failed and infeasible candidates ({len(bad)})</h2>']
    if bad:
        rows = [
            [str(r.id), escape(r.step), r.status, escape(r.genotype), escape(r.error or "")]
            for r in bad
        ]
        parts.append(
            html_table(
                ["id", "step", "status", "genotype", "error"], rows, ["num", "", "", "geno", "err"]
            )
        )
    else:
        parts.append('<p class="muted">none.</p>')
    parts.append("</section>")
    return "".join(parts)


def _cell(value: object) -> str:
    if value is None:
        return '<span class="muted">—</span>'
    if isinstance(value, float) and is_number(value):
        return f"{value:.4f}"
    return escape(str(value))


def _table_html(table: Table) -> str:
    cells = [[_cell(v) for v in row] for row in table.rows]
    classes = [
        "num" if all(isinstance(row[j], int | float) for row in table.rows if row[j] is not None)
        else ""
        for j in range(len(table.headers))
    ]  # fmt: skip
    marked = ["winner" if i in set(table.marked) else "" for i in range(len(cells))]
    caption = f"<p>{escape(table.caption)}</p>" if table.caption else ""
    return caption + html_table(table.headers, cells, classes, marked)


def _scatter_html(plot: Scatter) -> str:
    if not plot.points:
        return ""
    fig = plots.pareto_figure(
        plot.points,
        [],
        x_key=plot.x_label,
        y_key=plot.y_label,
        title=plot.title,
        baseline=plot.baseline,
        winner=plot.chosen,
        labels=(plot.x_label, plot.y_label),
        winner_name="chosen",
        x_line=plot.x_line,
    )
    return plots.figure_html(fig, plot.caption)


def _method_section(index: int, section: Section) -> str:
    return _section_html(section, f"method-{index}")


def _section_html(section: Section, anchor: str, more_figures: Sequence[str] = ()) -> str:
    parts = [f'<section id="{anchor}"><h2>{escape(section.title)}</h2>']
    if section.text:
        parts.append(f"<p>{escape(section.text)}</p>")
    parts.extend(_table_html(t) for t in section.tables)
    figures = "".join([*(_scatter_html(p) for p in section.plots), *more_figures])
    if figures:
        parts.append(f'<div class="plots">{figures}</div>')
    parts.append("</section>")
    return "".join(parts)


# -- page ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Context:
    """What every section needs, read from the store once."""

    steps: list[str]
    by_step: dict[str, list[Record]]
    fronts: dict[str, list[Record]]
    objectives: list[Objective]
    y_key: str
    table_keys: list[str]
    winner_id: int | None
    winner: Record | None
    baseline_label: str
    baseline: dict[str, Any]
    units: Mapping[str, str]

    def fmt(self, key: str, value: Any) -> str:
        """``value`` of ``key`` as HTML text, in the unit the run gave for it if any."""
        return fmt_value(key, value, self.units.get(key))

    def labels(self, x_key: str, y_key: str) -> tuple[str | None, str | None]:
        """Axis labels of the keys the run gave a unit for (values then as stored); ``None``
        for the others."""
        x, y = (f"{k} ({self.units[k]})" if k in self.units else None for k in (x_key, y_key))
        return x, y

    def hover(self, rec: Record) -> str:
        """What hovering ``rec``'s point shows (id, genotype, metrics, cost, parent, weights)."""
        return interactive.record_hover(rec, self.table_keys, self.fmt)


def write_report(
    out_dir: str | Path,
    store: RecordStore,
    *,
    steps: Sequence[str],
    objectives: Sequence[str] = ("mAP", "params"),
    baseline: Record | Mapping[str, Any] | None = None,
    winner_id: int | None = None,
    title: str = "nasdet search",
    sections: Sequence[Section] = (),
    units: Mapping[str, str] | None = None,
    compare: tuple[str, Mapping[str, Any]] | None = None,
) -> Path:
    """Write ``out_dir/report.html``, a self-contained page about a search run.

    The page has a summary (steps, status counts, times, best metric, winner, baseline); per
    step a plot of the metric against each cost axis present (the objectives to minimise, then
    ``params`` and ``flops``) with the front over those two axes, the baseline and the winner,
    and a table of the step's Pareto front over all ``objectives``; the lineage of the winner
    and a tree of every candidate's parent; the training curves of the candidates that kept
    them; the timeline of candidates per worker; the equal-budget comparison, if given; and
    the failed and infeasible candidates with their errors. The plots are interactive:
    hovering a candidate shows its record.

    Args:
        out_dir: the folder to write into (created if missing).
        store: the run's records.
        steps: the steps to report, in the order they ran; other steps' records appear only as
            ancestors of the winner.
        objectives: objective keys as :func:`nasdet.search.pareto.parse_objectives` reads them;
            the first maximised one (``mAP``) is the plots' y axis.
        baseline: a reference model: a record, or a mapping of values (``mAP``, ``params``,
            ``flops``... flat or under ``metrics`` / ``cost``) with an optional ``name``.
        winner_id: the record chosen as the search's result, marked everywhere; a missing
            record is logged and left out.
        title: the page title.
        sections: a method's own sections (:mod:`nasdet.report.sections`), shown after the
            summary.
        units: the unit of a metric or cost key whose stored value is shown as is (e.g.
            ``{"latency_lut": "MMAC"}``), instead of the unit :func:`~nasdet.report.plots.
            axis_scale` infers from the key's name.
        compare: the path and data of a ``nasdet compare`` summary (``compare.json``).

    Returns:
        The path of the written file (replaced atomically).
    """
    objs = parse_objectives(objectives)
    y_key = next((o.key for o in objs if o.maximize), "mAP")
    steps = list(dict.fromkeys(steps))
    by_step = {step: store.records(step) for step in steps}
    done = [r for step in steps for r in by_step[step] if r.status == "done"]
    keys = [y_key, *(o.key for o in objs if o.maximize), *_cost_axes(done, objs)]
    winner = None
    if winner_id is not None:
        try:
            winner = store.get(winner_id)
        except RecordStoreError:
            logger.warning("report: winner record %d is not in %s", winner_id, store.path)
    label, base_values = _baseline_point(baseline)
    ctx = _Context(
        steps=steps,
        by_step=by_step,
        fronts={step: pareto_records(by_step[step], objs) for step in steps},
        objectives=objs,
        y_key=y_key,
        table_keys=list(dict.fromkeys(keys)),
        winner_id=winner_id,
        winner=winner,
        baseline_label=label,
        baseline=base_values,
        units=dict(units or {}),
    )
    body = [
        f"<h1>{escape(title)}</h1>",
        f'<p class="muted">records: {escape(str(store.path))}; written {fmt_time(time.time())}</p>',
        _summary(ctx),
        *(_method_section(i, section) for i, section in enumerate(sections)),
        *(_step_section(ctx, i, step) for i, step in enumerate(steps)),
        _lineage_section(ctx, store),
        _runs_section(ctx),
        *([] if compare is None else [_compare_section(*compare)]),
        _failures_section(ctx),
    ]
    path = Path(out_dir) / REPORT_FILENAME
    write_text_atomic(path, plots.page_html(title, CSS, body))
    logger.info("wrote the report of %d step(s) to %s", len(steps), path)
    return path


# -- pages of other commands ----------------------------------------------------------------


def section_html(section: Section, index: int = 0) -> str:
    """One :class:`Section` as HTML (``id="method-<index>"``), as the run report shows it."""
    return _method_section(index, section)


def write_page(out_dir: str | Path, *, title: str, body: Sequence[str], note: str = "") -> Path:
    """Write ``out_dir/report.html``: a self-contained page (the run report's CSS) with
    ``title``, a muted ``note`` line (plain text) and ``body`` (HTML parts, e.g.
    :func:`section_html`); returns its path (replaced atomically)."""
    parts = [f"<h1>{escape(title)}</h1>"]
    if note:
        parts.append(f'<p class="muted">{escape(note)}; written {fmt_time(time.time())}</p>')
    path = Path(out_dir) / REPORT_FILENAME
    write_text_atomic(path, plots.page_html(title, CSS, [*parts, *body]))
    return path
