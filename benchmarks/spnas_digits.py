"""SP-NAS on the bundled digits: search time, and the winner vs the starting architecture trained
with the same total budget.

Runs ``nasdet run configs/spnas_digits.yaml`` (wall time, target <= 30 min on 2 CPU cores), then
trains the starting architecture from scratch for as many detection epochs as the winner
received along its lineage (fine-tune + each ancestor's candidate epochs + full training) and
compares both on the val split. The search wins if it Pareto-dominates on (mAP up, params and
FLOPs down).

With ``--compare`` both architectures are also trained from scratch with that budget for seeds
0, 1 and 2 by ``nasdet compare`` (mean ± sd, paired t-test, verdict), two trainings at a time on
local Ray workers (``--workers``), which the markdown then shows below the one-seed table; the
one-seed row of the start is then the compare's run at the config's seed (the same training),
not a second one. About 75 min on 2 CPU cores (search 11 min, compare about 60 min).

The search's wall time is kept in ``<runs>/spnas_digits.timing.json`` when the search ran in one
go, so a rerun (which finds the search done) still reports it.

    python benchmarks/spnas_digits.py --out docs/benchmarks/spnas.md
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from _common import machine_line, write_fragment
from _compare import compare_markdown, run_compare

import nasdet
from nasdet.cost import measure_cost
from nasdet.methods import TrainConfig, load_run_config
from nasdet.methods.spnas.steps import base_config, start_architecture
from nasdet.pipeline import run_pipeline
from nasdet.report import lineage
from nasdet.report.verdict import dominates
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


@dataclass(frozen=True)
class Baseline:
    """The start architecture trained with the winner's budget at one seed."""

    metrics: dict[str, float]
    params: int
    model_path: Path
    minutes: float
    where: str  # how it was trained, for the text


def one_seed_baseline(
    summary: dict[str, Any] | None, base: dict[str, Any], seed: int, out: Path
) -> Baseline:
    """The compare's run of the start at ``seed`` when there is one (the same config and
    training), else a training of ``base`` here (2 threads)."""
    if summary is not None and seed in summary["seeds"]:
        start = next(a for a in summary["architectures"] if a["label"] == "start")
        run = next(r for r in start["runs"] if r["seed"] == seed)
        where = f" (the compare's seed-{seed} run of the start)"
        return Baseline(run["metrics"], int(start["cost"]["params"]), Path(run["model"]),
                        run["train_seconds"] / 60, where)  # fmt: skip
    begin = time.perf_counter()
    trained = train_step(TrainConfig.model_validate(base), out)
    return Baseline(trained.metrics, trained.params, Path(trained.model_path),
                    (time.perf_counter() - begin) / 60, "")  # fmt: skip


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", type=Path, default=ROOT / "configs" / "spnas_digits.yaml")
    p.add_argument("--runs", type=Path, default=ROOT / "runs" / "benchmarks")
    p.add_argument("--out", type=Path, help="write the markdown here")
    p.add_argument("--compare", action="store_true", help="also 3 seeds through nasdet compare")
    p.add_argument("--workers", type=int, default=2, help="--compare's trainings at once (Ray)")
    args = p.parse_args()
    cfg = load_run_config(args.config)
    out = args.runs / "spnas_digits"
    timing = args.runs / "spnas_digits.timing.json"
    resumed = (out / "records.sqlite").exists()
    start = time.perf_counter()
    result = run_pipeline(cfg, out)
    search_minutes = (time.perf_counter() - start) / 60
    if not resumed:
        timing.write_text(json.dumps({"search_minutes": search_minutes}))
    elif timing.is_file():
        search_minutes = json.loads(timing.read_text())["search_minutes"]
    else:  # resumed after a kill: only the last part was timed
        search_minutes = float("nan")
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
    won = result.final
    summary = None
    if args.compare:  # the winner's architecture (its model file) from scratch, like the start
        summary = run_compare(
            args.runs / "spnas_compare",
            {"start": base, "winner": Path(won.weights_path)},
            workers=args.workers,
        )
    ws = one_seed_baseline(summary, base, cfg.seed, args.runs / "spnas_baseline")
    ws_cost = measure_cost(nasdet.load_model(ws.model_path), cfg.model.min_size)
    costs = [(won.cost["params"], ws.params), (won.cost["flops"], ws_cost["flops"])]
    wins = dominates(won.metrics["mAP"], ws.metrics["mAP"], costs)
    code = str(won.genotype).replace("|", r"\|")  # a bare "|" would split the table's cell
    rows = [
        "| model | architecture | params | GMACs | detection epochs | val mAP | val AP50 |",
        "|---|---|---:|---:|---:|---:|---:|",
        f"| start architecture, trained {epochs} epochs | `{base['model']['backbone']['code']}` "
        f"| {ws.params:,} | {ws_cost['macs'] / 1e9:.3f} | {epochs} | {ws.metrics['mAP']:.3f} "
        f"| {ws.metrics['AP50']:.3f} |",
        f"| SP-NAS winner | `{code}` | {won.cost['params']:,.0f} "
        f"| {won.cost['macs'] / 1e9:.3f} | {epochs} | {won.metrics['mAP']:.3f} "
        f"| {won.metrics['AP50']:.3f} |",
    ]
    if summary is not None:
        rows += ["", "**3 seeds** (`nasdet compare`, both from scratch):", "",
                 compare_markdown(summary, first="start")]  # fmt: skip
    counts = {s: len(store.records(s)) for s in cfg.steps}
    text = "\n".join(
        [
            f"`configs/spnas_digits.yaml`: steps {', '.join(cfg.steps)}; candidates per step "
            f"{json.dumps(counts)}. Search wall time **{search_minutes:.1f} min** (target <= 30); "
            f"baseline training {ws.minutes:.1f} min{ws.where}.",
            "",
            *rows,
            "",
            f"Winner's lineage (step:genotype(epochs)): {' -> '.join(chain)}.  ",
            f"One seed, on (mAP, params, FLOPs): the search's result Pareto-dominates the start "
            f"architecture at equal budget: **{'yes' if wins else 'no'}**.",
            "",
            f"Command: `python benchmarks/spnas_digits.py{' --compare' if args.compare else ''}`  ",
            f"Machine: {machine_line()}",
        ]
    )
    print(text)
    if args.out:
        write_fragment(args.out, text)


if __name__ == "__main__":
    main()
