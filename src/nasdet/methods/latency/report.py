"""The latency run's own report sections (:mod:`nasdet.report.sections`): the baseline against
the searched net, the per-block choices and the latency-vs-mAP plot of the search."""

from __future__ import annotations

import json
import math
from pathlib import Path

from nasdet.methods.latency.config import LatencyRunConfig
from nasdet.methods.latency.latency import unit_of
from nasdet.report.sections import Point, Scatter, Section, Table
from nasdet.search.records import Record, RecordStore

METRIC = "mAP"
SEARCH_STEPS = ("search_with_resolution", "search")


def _arch_text(arch: object) -> str:
    return json.dumps(arch) if isinstance(arch, list) else "—"


def comparison(
    cfg: LatencyRunConfig, base: Record | None, tuned: Record | None, chosen: Record | None
) -> Table:
    """Baseline against searched, one row each: who trained it, architecture, input side, mAP,
    AP50, LUT cost and its ratio to the baseline's, parameters. The searched row is the tune
    record (trained with ``train``, as the baseline), else the search's choice (space weights)."""
    unit = unit_of(cfg.latency)
    rows: list[list[object]] = []
    base_cost = base.cost.get("latency_lut") if base is not None else None
    known = tuned or chosen
    n_blocks = len(known.extra["arch"]) if known is not None else None
    for name, rec, how in (
        ("baseline", base, "baseline step (train)"),
        ("searched", tuned or chosen, "tune (train)" if tuned else "search (space weights)"),
    ):
        if rec is None:
            continue
        arch = rec.extra.get("arch") or (
            [0] * n_blocks if name == "baseline" and n_blocks else None
        )
        cost = rec.cost.get("latency_lut")
        ratio = cost / base_cost if cost is not None and base_cost else None
        params = rec.cost.get("params")
        rows.append(
            [
                name, how, _arch_text(arch), int(rec.extra.get("resolution", cfg.model.min_size)),
                rec.metrics.get(METRIC), rec.metrics.get("AP50"), cost,
                None if ratio is None else f"{ratio:.1%}",
                None if params is None else int(params),
            ]
        )  # fmt: skip
    caption = (
        f"Both trained with the run's train section (the same setup) when the baseline and tune "
        f"steps ran; LUT cost: {cfg.latency} ({unit}), the sum of the per-block table at the "
        "input side (latency: measured:* gives measured ms)."
    )
    headers = ["model", "trained by", "architecture", "resolution (px)", METRIC, "AP50",
               f"LUT cost ({unit})", "vs baseline", "params"]  # fmt: skip
    return Table(headers, rows, caption, marked=[len(rows) - 1] if rows else [])


def choices(path: Path, unit: str) -> Table | None:
    """The per-block choices ``choices.json`` of a search step (``None`` without it)."""
    if not path.is_file():
        return None
    rows = [
        [r["block"], r["variant"], "skip" if r["width"] == 0 else float(r["width"]),
         float(r["cost"]), float(r["baseline_cost"]), float(r["cost"] - r["baseline_cost"])]
        for r in json.loads(path.read_text())
    ]  # fmt: skip
    headers = ["block", "variant", "width", f"cost ({unit})", f"baseline block ({unit})", "Δ"]
    caption = f"Per-block choices of the searched architecture ({path.parent.name}): variant 0 is "
    caption += "the baseline's block; width is the hidden-channel multiplier."
    changed = [i for i, r in enumerate(rows) if r[1] != 0]
    return Table(headers, rows, caption, marked=changed)


def visited(cfg: LatencyRunConfig, records: list[Record], chosen: Record | None) -> Scatter:
    """Latency (LUT) against mAP of every architecture the search evaluated; the baseline
    (variant 0 everywhere, at ``model.min_size`` when visited) and the chosen one marked."""
    unit = unit_of(cfg.latency)
    done = [
        r for r in records
        if r.status == "done" and "latency_lut" in r.cost and math.isfinite(
            r.metrics.get(METRIC, math.nan))
    ]  # fmt: skip

    def point(r: Record, label: str = "") -> Point:
        return Point(float(r.cost["latency_lut"]), float(r.metrics[METRIC]), label)

    bases = [r for r in done if r.extra.get("role") == "baseline"]
    base = next((r for r in bases if r.extra.get("resolution") == cfg.model.min_size), None)
    base = base or (bases[0] if bases else None)
    sides = sorted({int(r.extra.get("resolution", 0)) for r in done})
    target = cfg.search_cfg.target_latency if cfg.search_cfg is not None else None
    return Scatter(
        [point(r) for r in done],
        x_label=f"latency_lut ({unit}, {cfg.latency})",
        y_label=f"{METRIC} (search split, space weights)",
        title=f"architectures visited by the search at {', '.join(map(str, sides))} px",
        baseline=point(base, f"baseline @{base.extra.get('resolution')}") if base else None,
        chosen=point(chosen, f"chosen @{chosen.extra.get('resolution')}") if chosen else None,
        x_line=(target, f"target {target:g} {unit}") if target is not None else None,
        caption="Each point an architecture the search evaluated with the pretrained space's "
        "weights (before tune); the star the baseline's blocks, the circle the architecture "
        "chosen.",
    )


def sections(
    cfg: LatencyRunConfig,
    store: RecordStore,
    out: Path,
    *,
    base: Record | None,
    tuned: Record | None,
    chosen: Record | None,
) -> list[Section]:
    """The latency sections of ``report.html`` from the run's records and ``choices.json``."""
    step = next((s for s in SEARCH_STEPS if store.records(s)), None)
    if chosen is None and step is not None and tuned is not None:  # tune of an earlier search
        chosen = next(
            (r for r in store.records(step, status="done") if r.genotype == tuned.genotype), None
        )
    tables = [comparison(cfg, base, tuned, chosen)]
    text = "" if base is not None else (
        "No baseline step in this run: the baseline row is missing (its model file was trained "
        "elsewhere, pretrain.baseline_ckpt)."
    )  # fmt: skip
    plots = []
    if step is not None:
        table = choices(out / "output" / step / "choices.json", unit_of(cfg.latency))
        tables += [table] if table is not None else []
        plots.append(visited(cfg, store.records(step), chosen))
    return [Section("Latency search: baseline vs searched", text, tables, plots)]
