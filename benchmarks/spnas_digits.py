"""SP-NAS on the bundled digits: search time, and the winner vs the starting architecture trained
with the same total budget.

Runs ``nasdet run configs/spnas_digits.yaml`` (wall time, target <= 30 min on 2 CPU cores), then
trains the starting architecture from scratch for as many detection epochs as the winner
received along its lineage (fine-tune + each ancestor's candidate epochs + full training) and
compares both on the val split. The search wins if it Pareto-dominates on (mAP up, params down).

With ``--compare`` (about 4 h on 2 CPU cores) both architectures are also trained from scratch
with that budget for seeds 0, 1 and 2 by ``nasdet compare`` (mean ± sd, paired t-test, verdict),
which the markdown then shows below the one-seed table.

    python benchmarks/spnas_digits.py --out docs/benchmarks/spnas.md
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from _common import machine_line, write_fragment
from _compare import compare_markdown, run_compare

import nasdet
from nasdet.cost import measure_cost
from nasdet.methods import TrainConfig, load_run_config
from nasdet.methods.spnas.steps import base_config, start_architecture
from nasdet.pipeline import run_pipeline
from nasdet.report import lineage
from nasdet.search.driver import is_root
from nasdet.search.records import RecordStore
from nasdet.training import train_step

ROOT = Path(__file__).resolve().parents[1]


def lineage_epochs(store: RecordStore, record_id: int) -> tuple[int, list[str]]:
    """Detection training epochs along the record's lineage (reignition's classification epochs
    are not counted), and a readable chain."""
    chain = lineage(store, record_id)
    seen, total, steps = set(), 0, []
    for rec in chain:
        payload = rec.extra.get("payload", {})
        key = (rec.step, rec.genotype)
        if key in seen or "epochs" not in payload or is_root(rec):
            continue
        seen.add(key)
        total += int(payload["epochs"])
        steps.append(f"{rec.step}:{rec.genotype}({payload['epochs']})")
    return total, steps


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", type=Path, default=ROOT / "configs" / "spnas_digits.yaml")
    p.add_argument("--runs", type=Path, default=ROOT / "runs" / "benchmarks")
    p.add_argument("--out", type=Path, help="write the markdown here")
    p.add_argument("--compare", action="store_true", help="also 3 seeds through nasdet compare")
    args = p.parse_args()
    cfg = load_run_config(args.config)
    out = args.runs / "spnas_digits"
    start = time.perf_counter()
    result = run_pipeline(cfg, out)
    search_minutes = (time.perf_counter() - start) / 60
    store = RecordStore(out / "records.sqlite")
    epochs, chain = lineage_epochs(store, result.final.id)
    if args.out:  # the search's part now, in case the baseline run is interrupted
        write_fragment(args.out, f"Search wall time {search_minutes:.1f} min; winner "
                       f"`{result.final.genotype}` val mAP {result.final.metrics['mAP']:.3f}, "
                       f"{result.final.cost['params']:,.0f} params; lineage {' -> '.join(chain)}."
                       f"  \nSame-budget baseline: not measured yet.  \nMachine: {machine_line()}")

    base = base_config(cfg)
    base["data"]["search_fraction"] = 0.0
    base["model"] = start_architecture(cfg).model_dump(mode="json")
    base["train"]["epochs"] = epochs
    start = time.perf_counter()
    baseline = train_step(TrainConfig.model_validate(base), args.runs / "spnas_baseline")
    baseline_minutes = (time.perf_counter() - start) / 60

    won, ws = result.final, baseline
    ws_cost = measure_cost(nasdet.load_model(ws.model_path), cfg.model.min_size)
    dominates = (
        won.metrics["mAP"] >= ws.metrics["mAP"]
        and won.cost["params"] <= ws.params
        and (won.metrics["mAP"] > ws.metrics["mAP"] or won.cost["params"] < ws.params)
    )
    rows = [
        "| model | architecture | params | GMACs | detection epochs | val mAP | val AP50 |",
        "|---|---|---:|---:|---:|---:|---:|",
        f"| start architecture, trained {epochs} epochs | `{base['model']['backbone']['code']}` "
        f"| {ws.params:,} | {ws_cost['macs'] / 1e9:.3f} | {epochs} | {ws.metrics['mAP']:.3f} "
        f"| {ws.metrics['AP50']:.3f} |",
        f"| SP-NAS winner | `{won.genotype}` | {won.cost['params']:,.0f} "
        f"| {won.cost['macs'] / 1e9:.3f} | {epochs} | {won.metrics['mAP']:.3f} "
        f"| {won.metrics['AP50']:.3f} |",
    ]
    if args.compare:  # the winner's architecture (its model file) from scratch, like the start
        summary = run_compare(
            args.runs / "spnas_compare", {"start": base, "winner": Path(won.weights_path)}
        )
        rows += ["", "**3 seeds** (`nasdet compare`, both from scratch):", "",
                 compare_markdown(summary, first="start")]  # fmt: skip
    counts = {s: len(store.records(s)) for s in cfg.steps}
    text = "\n".join(
        [
            f"`configs/spnas_digits.yaml`: steps {', '.join(cfg.steps)}; candidates per step "
            f"{json.dumps(counts)}. Search wall time **{search_minutes:.1f} min** (target <= 30); "
            f"baseline training {baseline_minutes:.1f} min.",
            "",
            *rows,
            "",
            f"Winner's lineage (step:genotype(epochs)): {' -> '.join(chain)}.  ",
            f"Search result Pareto-dominates the start architecture at equal budget: "
            f"**{'yes' if dominates else 'no'}**.",
            "",
            "Command: `python benchmarks/spnas_digits.py`  ",
            f"Machine: {machine_line()}",
        ]
    )
    print(text)
    if args.out:
        write_fragment(args.out, text)


if __name__ == "__main__":
    main()
