"""Tables and ``report.html`` of a compare, from its ``compare.json`` data.

The tables are :class:`~nasdet.report.sections.Table` values of plain text and numbers: the
command line prints them, the page renders them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from nasdet.compare.summary import METRIC, SHOWN_STATS
from nasdet.report.html import section_html, write_page
from nasdet.report.interactive import compare_figures
from nasdet.report.sections import Section, Table

__all__ = ["architecture_table", "cell_text", "pairs_table", "write_compare_report"]


def _pm(spread: dict[str, Any] | None) -> str | None:
    if spread is None:
        return None
    std = "—" if spread["std"] is None else f"{spread['std']:.4f}"
    return f"{spread['mean']:.4f} ± {std}"


def cell_text(value: object) -> str:
    """A table cell as text: ``None`` a dash, an int with thousands separators, a float with
    four significant decimals."""
    if value is None:
        return "—"
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        return f"{value:.4g}" if abs(value) < 1e-3 and value != 0 else f"{value:.4f}"
    return str(value)


def architecture_table(summary: dict[str, Any]) -> Table:
    """One row per architecture: done seeds, mean ± std of each COCO stat present, params,
    GFLOPs, CPU latency (when measured) and the budget keys overridden."""
    archs = summary["architectures"]
    stats = [k for k in SHOWN_STATS if any(a["metrics"].get(k) for a in archs)]
    latency = any("latency_ms" in a["cost"] for a in archs)
    headers = ["architecture", "seeds done", *(f"{k} (mean ± std)" for k in stats)]
    headers += ["params", "GFLOPs", *(["latency (ms)"] if latency else []), "overridden"]
    rows = []
    for a in archs:
        cost = a["cost"]
        done = sum(r["status"] == "done" for r in a["runs"])
        row: list[object] = [a["label"], f"{done}/{len(a['runs'])}"]
        row += [_pm(a["metrics"].get(k)) for k in stats]
        row += [
            int(cost["params"]) if "params" in cost else None,
            cost["flops"] / 1e9 if "flops" in cost else None,
        ]
        if latency:
            row.append(cost.get("latency_ms"))
        row.append(", ".join(a["overridden"]) or None)
        rows.append(row)
    best = max(
        (i for i, a in enumerate(archs) if a["metrics"].get(METRIC)),
        key=lambda i: archs[i]["metrics"][METRIC]["mean"],
        default=None,
    )
    caption = (
        f"{len(summary['seeds'])} seed(s) each ({', '.join(map(str, summary['seeds']))}); "
        "std: sample standard deviation over seeds; FLOPs: 2 per multiply-add, one image of "
        f"the budget's input size; highest mean {METRIC} highlighted"
    )
    return Table(headers, rows, caption, () if best is None else (best,))


def pairs_table(summary: dict[str, Any]) -> Table:
    """One row per pair (a, b): the mean and std over seeds of ``a - b`` in mAP and the paired
    t-test (``scipy.stats.ttest_rel``)."""
    rows = [
        [p["a"], p["b"], p["mean"], p["std"], p["t"], p["p"], len(p["seeds"])]
        for p in summary["pairs"]
    ]
    headers = ["a", "b", f"mean Δ{METRIC} (a − b)", "std Δ", "t", "p (two-sided)", "seeds"]
    caption = (
        f"paired over the same seeds: Δ{METRIC} per seed, its mean and sample std, and the "
        "paired t-test; — where undefined (one seed, or no spread)"
    )
    return Table(headers, rows, caption)


def write_compare_report(out: str | Path, summary: dict[str, Any]) -> Path:
    """Write ``out/report.html``: the architectures, plots of mAP against each cost, the pairs,
    the budget and any failed training."""
    budget = summary["budget"]
    overridden = [a for a in summary["architectures"] if a["overridden"]]
    budget_text = (
        f"Every architecture was trained with the data, train and eval sections and input size "
        f"{budget['model']['min_size']}/{budget['model']['max_size']} of {budget['source']}"
        + (" (--budget)." if budget["explicit"] else " (the first config).")
        + (" The budget replaced what some configs gave: see the table." if overridden else "")
    )
    budget_table = Table(
        ["architecture", "source", "kind", "budget keys replaced"],
        [[a["label"], a["source"], a["kind"], ", ".join(a["overridden"]) or None]
         for a in summary["architectures"]],
    )  # fmt: skip
    body = [
        section_html(Section("Architectures", tables=[architecture_table(summary)]), 0),
        '<section id="plots"><div class="plots">'
        + "".join(compare_figures(summary))
        + "</div></section>",
    ]
    if summary["pairs"]:
        body.append(
            section_html(
                Section(f"Paired differences of {METRIC}", tables=[pairs_table(summary)]), 1
            )
        )
    elif summary["failed"]:
        failed = Table(
            ["architecture", "seed", "error"],
            [[f["label"], f["seed"], f["error"]] for f in summary["failed"]],
        )
        body.append(section_html(Section("Failed trainings (no verdict)", tables=[failed]), 1))
    body.append(section_html(Section("Budget", budget_text, tables=[budget_table]), 2))
    note = f"{summary['out']}; seeds {', '.join(map(str, summary['seeds']))}"
    return write_page(out, title="nasdet compare", body=body, note=note)
