"""Report test helpers: a record store of an async search with histories, a compare summary,
and the figures of a page read back from its ``Plotly.newPlot`` calls."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from nasdet.search import Record, RecordStore


def figures(page: str) -> list[tuple[list[dict[str, Any]], dict[str, Any]]]:
    """The data and layout of every ``Plotly.newPlot(id, data, layout, config)`` on a page."""
    decoder = json.JSONDecoder()
    out = []
    for match in re.finditer(r"Plotly\.newPlot\(\s*", page):
        _, i = decoder.raw_decode(page, match.end())  # the div id
        data, i = decoder.raw_decode(page, page.index("[", i))
        layout, _ = decoder.raw_decode(page, page.index("{", i))
        out.append((data, layout))
    return out


def hovers(data: list[dict[str, Any]]) -> list[str]:
    return [h for trace in data for h in trace.get("hovertext") or ()]


def async_run(root: Path) -> tuple[RecordStore, list[Record]]:
    """Four candidates trained by two async actors (times given), with per-epoch histories."""
    root.mkdir(parents=True, exist_ok=True)
    store = RecordStore(root)  # root/records.sqlite
    recs: list[Record] = []
    for i, (actor, start, end) in enumerate(
        [("actor-0", 100.0, 130.0), ("actor-1", 101.0, 120.0), ("actor-1", 140.0, 150.0),
         ("actor-0", 131.0, 160.0)]
    ):  # fmt: skip
        parent = recs[0].id if recs else None
        rec = store.add("search", f"g{i}", parent)
        assert store.claim(rec.id)
        history = [{"loss": 2.0 - 0.5 * e - 0.1 * i, "lr": 0.01, "seconds": 3.0} for e in range(3)]
        extra = {"actor": actor, "eval_started": start, "eval_finished": end, "history": history}
        cost = {"params": 1e6 * (i + 1), "flops": 2e9 * (i + 1)}
        recs.append(store.finish(rec.id, {"mAP": 0.1 * (i + 1)}, f"w{i}.pt", cost, extra=extra))
    return store, recs


COMPARE = {
    "schema": 1, "metric": "mAP", "seeds": [0, 1],
    "architectures": [
        {"label": lab, "runs": [{"seed": 0, "status": "done"}, {"seed": 1, "status": "done"}],
         "metrics": {"mAP": {"mean": m, "std": 0.01, "n": 2}},
         "cost": {"params": p, "flops": 2.0 * p}}
        for lab, m, p in (("baseline", 0.30, 2e6), ("searched <a>", 0.33, 1e6))
    ],
    "pairs": [{"a": "baseline", "b": "searched <a>", "metric": "mAP", "seeds": [0, 1],
               "mean": -0.03, "std": 0.005, "t": -8.5, "p": 0.07}],
}  # fmt: skip
