"""OFA + SSD on the bundled digits: pipeline time, supernet ranking quality (Kendall tau),
progressive shrinking (supernet subnets vs stand-alone), asynchronous search scaling, and the
searched subnet vs the hand-designed net over 3 seeds.

Parts (all by default; each resumes where it stopped):

- ``pipeline``: ``nasdet run configs/ofa_ssd_digits.yaml`` (target <= 30 min on 2 CPU cores);
- ``standalone``: >= 10 subnets spread over FLOPs (the largest, the smallest and random subnets
  at evenly spaced FLOPs) trained stand-alone from scratch for ``--rank-epochs`` on the
  supernet's training images, 2 seeds each, scored on val (two processes of one thread each);
  and the largest and smallest trained for the supernet's epochs (the shrinking check);
- ``async``: the search step alone with ``parallelism`` 1 and 2 (Ray actors), same budget:
  candidates per minute and each worker's idle time between candidates;
- ``result``: the searched subnet and the hand-designed net (kernel 3, expand 4, depth 3) of
  the pipeline trained with the final budget for seeds 1 and 2 (seed 0 is the pipeline's);
- ``report``: the markdown;
- ``compare`` (not run by default): the same two nets (the configs of the pipeline's final
  trainings) trained from scratch with the final budget for seeds 0, 1 and 2 by ``nasdet
  compare``, two at a time on Ray (mean ± sd, paired t-test, verdict); its own fragment
  (``--compare-out``).

    python benchmarks/ofa_digits.py --out docs/benchmarks/ofa.md
    python benchmarks/ofa_digits.py --parts compare --compare-out docs/benchmarks/ofa_compare.md
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import random
import shutil
import statistics
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

from _common import machine_line, write_fragment
from _compare import compare_fragment, run_compare

from nasdet.methods import load_run_config
from nasdet.methods.ofa import evolve
from nasdet.methods.ofa.config import TrainConfig
from nasdet.methods.ofa.scoring import SubnetCost, payload_for, score_subnet, setup
from nasdet.methods.ofa.space import OFAGenotype
from nasdet.search.constraints import Constraints
from nasdet.search.records import RecordStore

ROOT = Path(__file__).resolve().parents[1]


def ranking_set(
    cfg: Any, cache: Path, n: int = 10, pool: int = 60, seed: int = 0
) -> list[OFAGenotype]:
    """The largest, the smallest and ``n - 2`` of ``pool`` random subnets at evenly spaced FLOPs
    (kept in ``cache``)."""
    if cache.is_file():
        return [OFAGenotype.parse(t) for t in json.loads(cache.read_text())]
    found = _ranking_set(cfg, n, pool, seed)
    cache.parent.mkdir(parents=True, exist_ok=True)
    cache.write_text(json.dumps([str(g) for g in found]))
    return found


def _ranking_set(cfg: Any, n: int, pool: int, seed: int) -> list[OFAGenotype]:
    space = evolve.space_of(cfg)
    cost = SubnetCost(cfg.model, 11, Constraints(), cfg.model.min_size, cfg.train.batch_size)
    rng = random.Random(seed)
    drawn = sorted(
        {space.sample(rng).canonical() for _ in range(pool)}, key=lambda g: cost(g)["flops"]
    )
    picks = [drawn[round(i * (len(drawn) - 1) / (n - 3))] for i in range(n - 2)]
    out = [space.largest().canonical(), space.smallest().canonical(), *picks]
    return list(dict.fromkeys(out))


def _train(job: dict[str, Any]) -> dict[str, Any]:
    import torch

    from nasdet.training import train_step

    torch.set_num_threads(1)
    out = Path(job["out"])
    done = out / "result.json"
    if not done.is_file():
        res = train_step(TrainConfig.model_validate(job["config"]), out)
        done.write_text(json.dumps({"metrics": res.metrics, "seconds": res.train_seconds}))
    return {"key": job["key"], **json.loads(done.read_text())}


def subnet_job(
    cfg: Any,
    genotype: OFAGenotype,
    seed: int,
    epochs: int,
    runs: Path,
    *,
    search_fraction: float,
    tag: str,
) -> dict[str, Any]:
    """Plain data for :func:`_train`: the subnet's training config with ``seed``."""
    config = cfg.base()
    config["seed"] = seed
    config["data"]["search_fraction"] = search_fraction
    config["model"]["backbone"] = cfg.model.backbone.subnet(genotype).model_dump(mode="json")
    config["train"]["epochs"] = epochs
    config["train"]["tensorboard"] = False
    return {
        "key": f"{tag}|{genotype}|{seed}",
        "config": config,
        # the epochs name the directory: another --rank-epochs never reuses these results
        "out": str(runs / tag / f"{genotype}_s{seed}_e{epochs}"),
    }


def run_jobs(jobs: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Train in two processes of one thread each (throughput; not a timing)."""
    os.environ["OMP_NUM_THREADS"] = "1"
    with ProcessPoolExecutor(max_workers=2) as pool:
        return {r["key"]: r for r in pool.map(_train, jobs)}


def supernet_estimates(cfg: Any, supernet: Path, genotypes: list[OFAGenotype]) -> dict[str, dict]:
    """Each subnet scored on the trained supernet after BN recalibration, as the search scores
    it: on the search split and on val."""
    s = cfg.search
    state = setup(payload_for(supernet, cfg.base(), s.bn_mode, s.calibrate_samples))
    out = {}
    for g in genotypes:
        p = {"genotype": str(g), "bn_mode": s.bn_mode, "calibrate_samples": s.calibrate_samples}
        with_search = state.data
        search = score_subnet(state, p)["metrics"]["mAP"]
        state.data = dataclasses.replace(with_search, search=None)  # scored on val
        val = score_subnet(state, p)["metrics"]["mAP"]
        state.data = with_search
        out[str(g)] = {"search": search, "val": val}
    return out


def async_scaling(
    cfg: Any, supernet: Path, runs: Path, workers: int, budget: int, cpus: int | None = None
) -> dict:
    """The search step alone with ``workers`` actors and ``budget`` evaluations, on a local Ray
    instance of ``cpus`` CPUs (default: the machine's; each actor gets ``cpus // workers``
    torch threads)."""
    out = runs / f"ofa_async_p{workers}_c{cpus or os.cpu_count()}"
    result = out / "timing.json"
    if result.is_file():
        return json.loads(result.read_text())
    shutil.rmtree(out, ignore_errors=True)
    pop = max(2, budget // 2)
    search = cfg.search.model_copy(
        update={
            "trainer_cfg": cfg.search.trainer_cfg.model_copy(
                update={"parallelism": workers, "num_epochs": 1}
            ),
            "executor": "ray",  # one actor for parallelism 1 too: the same overhead
            "population_size": pop,
        }
    )
    run_cfg = cfg.model_copy(update={"search": search})
    store = RecordStore(out / "records.sqlite")
    import ray

    ray.init(num_cpus=cpus or os.cpu_count(), include_dashboard=False)
    try:
        start = time.perf_counter()
        evolve.search(run_cfg, store, out, supernet)
        wall = time.perf_counter() - start
    finally:
        ray.shutdown()
    recs = store.records("search", status="done")
    first = min(r.extra["eval_started"] for r in recs)
    last = max(r.extra["eval_finished"] for r in recs)
    summary = json.loads((out / "output" / "search" / "summary.json").read_text())
    timing = {
        "workers": workers,
        "cpus": cpus or os.cpu_count(),
        "candidates": len(recs),
        "scoring_s": last - first,
        "wall_s": wall,
        "per_min": 60 * len(recs) / (last - first),
        "worker_summary": summary.get("workers", {}),
    }
    result.write_text(json.dumps(timing, indent=2))
    return timing


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", type=Path, default=ROOT / "configs" / "ofa_ssd_digits.yaml")
    p.add_argument("--runs", type=Path, default=ROOT / "runs" / "benchmarks")
    p.add_argument("--parts", default="pipeline,standalone,async,result,report")
    p.add_argument("--budget", type=int, default=40, help="evaluations of the async benchmark")
    p.add_argument(
        "--rank-epochs",
        type=int,
        default=8,
        help="stand-alone epochs of the ranking (the supernet's 8; at 4 two seeds disagree)",
    )
    p.add_argument("--run-dir", type=Path, help="the pipeline's run (default RUNS/ofa_digits)")
    p.add_argument("--out", type=Path, help="write the markdown here")
    p.add_argument("--compare-out", type=Path, help="write the compare part's markdown here")
    p.add_argument("--workers", type=int, default=2, help="the compare's trainings at once (Ray)")
    args = p.parse_args()
    parts = args.parts.split(",")
    cfg = load_run_config(args.config)
    run_dir = args.run_dir or args.runs / "ofa_digits"
    timing = run_dir / "benchmark_time.json"
    if "pipeline" in parts:
        from nasdet.pipeline import run_pipeline

        start = time.perf_counter()
        run_pipeline(cfg, run_dir)
        if not timing.is_file():
            timing.write_text(json.dumps({"minutes": (time.perf_counter() - start) / 60}))
    supernet = run_dir / "output" / "supernet_train" / "supernet.pth"
    epochs = cfg.supernet_epochs
    genotypes = ranking_set(cfg, args.runs / "ofa_ranking_set.json")
    shrink_jobs = [
        subnet_job(
            cfg,
            g,
            seed,
            epochs,
            args.runs,
            search_fraction=cfg.data.search_fraction,
            tag="ofa_shrink",
        )
        for g in genotypes[:2]
        for seed in (0, 1)
    ]
    jobs = [
        subnet_job(
            cfg,
            g,
            seed,
            args.rank_epochs,
            args.runs,
            search_fraction=cfg.data.search_fraction,
            tag="ofa_standalone",
        )
        for g in genotypes
        for seed in (0, 1)
    ]
    store = RecordStore(run_dir / "records.sqlite")
    finals = {r.extra.get("role"): r for r in store.records("final_train", status="done")}
    ft = cfg.final_train.final_trainer_cfg
    result_jobs = [
        subnet_job(
            cfg,
            OFAGenotype.parse(finals[role].genotype),
            seed,
            ft.epochs or cfg.train.epochs,
            args.runs,
            search_fraction=0.0,
            tag=f"ofa_result_{role}",
        )
        for role in ("searched", "baseline")
        if role in finals
        for seed in (1, 2)
    ]
    if "compare" in parts:
        text = compare_part(cfg, finals, args.runs / "ofa_compare", args.workers)
        print(text)
        if args.compare_out:
            write_fragment(args.compare_out, text)
    if "shrink" in parts:
        run_jobs(shrink_jobs)
    if "standalone" in parts:
        run_jobs(shrink_jobs + jobs)
    if "result" in parts:
        run_jobs(result_jobs)
    scaling = []
    if "async" in parts or "report" in parts:
        scaling = [
            async_scaling(cfg, supernet, args.runs, 1, args.budget),
            async_scaling(cfg, supernet, args.runs, 2, args.budget),
            async_scaling(cfg, supernet, args.runs, 1, args.budget, cpus=1),
        ]
    if "report" not in parts:
        return
    done = [j for j in jobs if (Path(j["out"]) / "result.json").is_file()]
    jobs = jobs if len(done) == len(jobs) else []  # the ranking only when complete
    shrunk = [j for j in shrink_jobs if (Path(j["out"]) / "result.json").is_file()]
    shrink_jobs = shrink_jobs if len(shrunk) == len(shrink_jobs) else []
    trained = run_jobs(jobs + shrink_jobs)  # results only: every job is done by now
    results = run_jobs(result_jobs)
    estimates = supernet_estimates(cfg, supernet, genotypes)
    cost = SubnetCost(cfg.model, 11, Constraints(), cfg.model.min_size, cfg.train.batch_size)
    text = markdown(
        cfg, genotypes, estimates, trained, results, finals, scaling, cost, timing, args.rank_epochs
    )
    print(text)
    if args.out:
        write_fragment(args.out, text)


def compare_part(cfg: Any, finals: dict[str, Any], out: Path, workers: int) -> str:
    """``nasdet compare`` of the pipeline's hand-designed and searched nets, from the configs
    their final trainings wrote (one budget: the final training's), seeds 0, 1, 2; markdown."""
    configs = {}
    for role, label in (("baseline", "hand-designed"), ("searched", "searched")):
        if role not in finals:
            raise SystemExit(f"compare: the pipeline has no final {role} training: run pipeline")
        configs[label] = Path(finals[role].weights_path).parent / "config.yaml"
    summary = run_compare(out, configs, workers=workers)
    genotypes = {r: f"`{finals[r].genotype}`" for r in ("baseline", "searched")}
    intro = (
        f"`configs/ofa_ssd_digits.yaml`: the pipeline's searched subnet (FLOPs limit "
        f"{cfg.search.constraints.max_flops / 1e6:.1f} M, the hand-designed net's) "
        f"{genotypes['searched']} against the hand-designed net {genotypes['baseline']}, "
        "each trained from scratch with the final training's budget by `nasdet compare` "
        "(FLOPs of the whole detector):"
    )
    command = (
        "python benchmarks/ofa_digits.py --parts pipeline,compare --compare-out "
        "docs/benchmarks/ofa_compare.md"
    )
    return compare_fragment(intro, summary, "hand-designed", command)


def _mean_sd(xs: list[float]) -> str:
    sd = statistics.stdev(xs) if len(xs) > 1 else 0.0
    return f"{statistics.mean(xs):.3f} ± {sd:.3f}"


def markdown(
    cfg, genotypes, estimates, trained, results, finals, scaling, cost, timing, rank_epochs
) -> str:
    from scipy.stats import kendalltau

    size = cfg.model.min_size
    ranked = all(f"ofa_standalone|{g}|0" in trained for g in genotypes)
    alone = {
        str(g): [trained[f"ofa_standalone|{g}|{s}"]["metrics"]["mAP"] for s in (0, 1)]
        for g in genotypes
        if ranked
    }
    xs = [estimates[str(g)]["search"] for g in genotypes]
    ys = [statistics.mean(alone[str(g)]) for g in genotypes] if ranked else []
    tau = kendalltau(xs, ys).statistic if ranked else float("nan")
    rows = [
        "| subnet | MFLOPs | supernet mAP (search split) | stand-alone mAP (val, 2 seeds) |",
        "|---|---:|---:|---:|",
    ]
    for g in genotypes:
        trained_map = _mean_sd(alone[str(g)]) if ranked else "not measured"
        rows.append(
            f"| `{g}` | {cost(g)['flops'] / 1e6:.1f} | {estimates[str(g)]['search']:.3f} "
            f"| {trained_map} |"
        )
    shrink = [
        "| subnet | from the supernet (val) | stand-alone (val) | relative gap |",
        "|---|---:|---:|---:|",
    ]
    for name, g in (("largest", genotypes[0]), ("smallest", genotypes[1])):
        if f"ofa_shrink|{g}|0" not in trained:
            shrink.append(f"| {name} `{g}` | {estimates[str(g)]['val']:.3f} | not measured | |")
            continue
        full = [trained[f"ofa_shrink|{g}|{s}"]["metrics"]["mAP"] for s in (0, 1)]
        sup, mean = estimates[str(g)]["val"], statistics.mean(full)
        gap = (sup - mean) / mean if mean else float("nan")
        shrink.append(f"| {name} `{g}` | {sup:.3f} | {_mean_sd(full)} | {gap:+.1%} |")
    res = ["| model | genotype | MFLOPs | params | val mAP (3 seeds) |", "|---|---|---:|---:|---:|"]
    for role, label in (("searched", "OFA searched"), ("baseline", "hand-designed k3/e4/d3")):
        if role not in finals:
            continue
        rec = finals[role]
        maps = [rec.metrics["mAP"]] + [
            results[f"ofa_result_{role}|{rec.genotype}|{s}"]["metrics"]["mAP"] for s in (1, 2)
        ]
        res.append(
            f"| {label} | `{rec.genotype}` | {rec.cost['flops'] / 1e6:.1f} | "
            f"{rec.cost['params']:,.0f} | {_mean_sd(maps)} |"
        )
    lines = []
    minutes = json.loads(timing.read_text())["minutes"] if timing.is_file() else float("nan")
    lines += [
        f"`configs/ofa_ssd_digits.yaml` ({cfg.model.detector}, OFA MobileNetV3 supernet x"
        f"{cfg.model.backbone.width_mult}, {size}px): pipeline wall time **{minutes:.1f} "
        "min** (target <= 30).",
        "",
    ]
    lines += [
        f"**Result** (FLOPs limit {cfg.search.constraints.max_flops / 1e6:.1f} M = the "
        "hand-designed net's; same final training, from scratch; mean ± sd over seeds "
        "0, 1, 2):",
        "",
        *res,
        "",
    ]
    lines += [
        (
            f"**Ranking**: Kendall tau between supernet-estimated mAP and stand-alone mAP "
            f"({rank_epochs} epochs from scratch, mean of 2 seeds) over {len(genotypes)} "
            f"subnets: **tau = {tau:.2f}** (target >= 0.7)."
            if ranked
            else f"**Ranking**: not measured yet (`--parts standalone,report`: {len(genotypes)} "
            f"subnets x 2 seeds trained stand-alone for {rank_epochs} epochs). The supernet's "
            "estimates of the chosen subnets:"
        ),
        "",
        *rows,
        "",
    ]
    lines += [
        "**Shrinking works**: the largest and smallest subnets taken from the supernet (BN "
        "recalibrated, no fine-tuning) vs the same trained stand-alone for the supernet's "
        f"{cfg.supernet_epochs} epochs, 2 seeds (target: within 10 % relative mAP):",
        "",
        *shrink,
        "",
    ]
    if scaling:
        one, two, single = scaling
        idle = max((w.get("max_gap_s", 0.0) for w in two["worker_summary"].values()), default=0)
        busy = [w["busy_s"] / w["span_s"] for w in two["worker_summary"].values() if w["span_s"]]
        lines += [
            "**Async scaling** (the search step alone, "
            f"{two['candidates']} candidates, local Ray): {one['per_min']:.2f} candidates/min "
            f"with `parallelism: 1` (one actor with 2 torch threads), {two['per_min']:.2f} with "
            f"`parallelism: 2` (two actors, one thread each): "
            f"**{two['per_min'] / one['per_min']:.2f}x** (target >= 1.7x). One actor with one "
            f"thread: {single['per_min']:.2f}/min, so two workers give "
            f"{two['per_min'] / single['per_min']:.2f}x the one-thread rate. With 2 workers each "
            f"was busy {min(busy):.0%}-{max(busy):.0%} of its span; the longest wait of a worker "
            f"between two candidates was {idle:.2f} s (no generation barrier).",
            "",
        ]
    lines += [
        "Command: `python benchmarks/ofa_digits.py --out docs/benchmarks/ofa.md`  ",
        f"Machine: {machine_line()}",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
