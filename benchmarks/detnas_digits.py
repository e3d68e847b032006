"""DetNAS on the bundled digits: pipeline time, supernet ranking quality (Kendall tau), supernet
overhead, search cost per candidate, and the searched subnet vs the hand-crafted ShuffleNetV2.

Parts (all by default; each resumes where it stopped):

- ``pipeline``: ``nasdet run configs/detnas_digits.yaml`` (target <= 30 min on 2 CPU cores);
- ``standalone``: >= 10 architectures spread over the space (every block 3x3 / 5x5 / 7x7 /
  Xception, plus seeded random codes) trained stand-alone from scratch for ``--epochs`` with each
  of ``--seeds`` (default 0 and 1; seed 0's results of earlier runs are reused) and scored on
  the search split; the ranking uses the mean over the seeds;
- ``report``: the same architectures scored on the trained supernet (BN recalibrated), Kendall
  tau (target >= 0.6) and its plot; training-step time supernet vs extracted subnet (target <=
  1.15x); one candidate's one-shot scoring vs training it stand-alone with the final-training
  schedule (target >= 100x); the pipeline's searched vs hand-crafted result;
- ``compare`` (not run by default: 34 min measured for the three nets): the pipeline's searched
  subnet against the hand-crafted ShuffleNetV2 (every block 3x3, the cheapest net of the space)
  and against that net widened to the searched net's FLOPs, each trained from scratch with
  ``subnet_train``'s budget for seeds 0, 1 and 2 by ``nasdet compare`` (mean ± sd, paired
  t-test, verdicts); the report then shows it in place of the pipeline's one-seed result;
- ``ablation`` (not run by default: hours): the ranking under each supernet training or scoring
  variant of ``_detnas_ablation.VARIANTS`` (``--variants``), a table of Kendall tau.

    python benchmarks/detnas_digits.py --parts pipeline,standalone,compare,report --epochs 6 \
        --seeds 0,1 --out docs/benchmarks/detnas.md
    python benchmarks/detnas_digits.py --parts standalone,ablation --epochs 6 \
        --ablation-out docs/benchmarks/detnas_ablation.md
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import time
from pathlib import Path

import torch
from _common import machine_line, write_fragment
from _compare import compare_markdown, run_compare
from _detnas_ablation import markdown as ablation_markdown
from _detnas_ablation import names_of, run_ablation

from nasdet.build import build_datasets, build_detector, make_trainer
from nasdet.cost import measure_cost
from nasdet.data import collate
from nasdet.engine.evaluate import evaluate
from nasdet.methods import load_run_config
from nasdet.methods.detnas.scoring import load_supernet, score_subnet, subnet_architecture
from nasdet.methods.detnas.space import ShuffleNetCode, ShuffleNetSpace, handcrafted
from nasdet.pipeline import run_pipeline
from nasdet.search.records import RecordStore
from nasdet.search.supernet import export_subnet

ROOT = Path(__file__).resolve().parents[1]


def architectures(space: ShuffleNetSpace, n_random: int, seed: int = 0) -> list[ShuffleNetCode]:
    """The four uniform networks and ``n_random`` seeded random codes."""
    uniform = [ShuffleNetCode((c,) * space.num_blocks, space.depths) for c in range(4)]
    rng = random.Random(seed)
    codes = list(uniform)
    while len(codes) < len(uniform) + n_random:
        code = space.sample(rng)
        if code not in codes:
            codes.append(code)
    return codes


def standalone(cfg, codes, epochs: int, runs: Path, seeds=(0,), *, train: bool = True) -> dict:
    """Train each code from scratch (``epochs``) with each seed of ``seeds`` and score it on the
    search split (the same split for every seed: the config's seed draws it); with
    ``train=False`` only the results already there. Per code, the mean over the seeds:
    ``metrics`` (mAP and the other COCO stats), ``cost``, ``train_seconds``, and ``per_seed``
    (each seed's mAP); a code lacking a seed's result is left out. Seed s of ``epochs`` lives in
    ``detnas_standalone/e<epochs>/seed<s>/<code>``: other epochs never reuse these results."""
    results = {}
    for code in codes:
        per_seed = []
        for seed in seeds:
            folder = runs / "detnas_standalone" / f"e{epochs}" / f"seed{seed}" / str(code)
            done = folder / "result.json"
            if not done.is_file() and train:
                done.write_text(json.dumps(train_standalone(cfg, code, seed, epochs, folder)))
            if done.is_file():
                per_seed.append(json.loads(done.read_text()))
        if len(per_seed) < len(seeds):
            continue
        keys = per_seed[0]["metrics"]
        metrics = {k: statistics.mean(r["metrics"][k] for r in per_seed) for k in keys}
        results[str(code)] = {
            "metrics": metrics,
            "cost": per_seed[0]["cost"],
            "train_seconds": statistics.mean(r["train_seconds"] for r in per_seed),
            "per_seed": [r["metrics"]["mAP"] for r in per_seed],
        }
    return results


def train_standalone(cfg, code: ShuffleNetCode, seed: int, epochs: int, folder: Path) -> dict:
    """Train ``code``'s detector from scratch (weights and data order from ``seed``) on the
    training split of the config's seed, score it on the search split; ``metrics``, ``cost`` and
    ``train_seconds``. Resumes from ``folder``'s checkpoint after a kill."""
    arch = subnet_architecture(cfg.model, code)
    torch.manual_seed(seed)
    data = build_datasets(cfg.data, seed=cfg.seed)  # the same split for every seed
    model = build_detector(arch, len(data.categories) + 1)
    trainer = make_trainer(model, data.train, cfg.model_copy(update={"seed": seed}), folder,
                           epochs=epochs, tensorboard=False)  # fmt: skip
    start = time.perf_counter()
    trainer.fit(resume=trainer.checkpoint_path.is_file())
    seconds = time.perf_counter() - start
    metrics = evaluate(model, data.search, batch_size=cfg.eval.batch_size,
                       device=trainer.device, backend=cfg.eval.backend)  # fmt: skip
    return {"metrics": metrics, "cost": measure_cost(model.cpu(), arch.min_size),
            "train_seconds": seconds}  # fmt: skip


def step_times(models, images, targets, rounds: int = 6, steps: int = 4) -> list[float]:
    """Median seconds of one SGD training step (forward, backward, update) of each model on the
    batch; the models take turns (``rounds`` x ``steps`` timed steps each, after 3 warm-up
    steps) so that drift of the machine hits all of them alike."""
    opts = []
    for model in models:
        model.train()
        opts.append(torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=1e-4))
    times: list[list[float]] = [[] for _ in models]

    def step(i: int) -> float:
        start = time.perf_counter()
        loss = sum(models[i](images, targets).values())
        opts[i].zero_grad(set_to_none=True)
        loss.backward()
        opts[i].step()
        return time.perf_counter() - start

    for i in range(len(models)):
        for _ in range(3):
            step(i)
    for _ in range(rounds):
        for i in range(len(models)):
            times[i].extend(step(i) for _ in range(steps))
    return [statistics.median(t) for t in times]


def overhead(cfg, supernet_path: Path) -> tuple[float, float]:
    """Training-step seconds of the supernet (one fixed path) and of the extracted subnet."""
    from nasdet.methods.detnas.steps import base_config

    supernet, data, _ = load_supernet(str(supernet_path), json.dumps(base_config(cfg)))
    code = ShuffleNetSpace(supernet.backbone.body.space.depths).sample(random.Random(1))
    supernet.backbone.body.set_active_subnet(code)
    subnet, _ = export_subnet(supernet, cfg.model, code, len(data.categories) + 1)
    images, targets = collate([data.train[i] for i in range(cfg.train.batch_size)])
    images, targets = list(images), list(targets)
    a, b = step_times([supernet, subnet], images, targets)
    supernet.eval()
    return a, b


def seeds_tau(trained: dict, codes, tau) -> float | None:
    """The reference's own noise: Kendall tau of the first two stand-alone seeds' mAP against
    each other over ``codes`` (None: fewer than two seeds)."""
    if not codes or any(len(trained[str(c)]["per_seed"]) < 2 for c in codes):
        return None
    return tau(*([trained[str(c)]["per_seed"][i] for c in codes] for i in (0, 1)))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", type=Path, default=ROOT / "configs" / "detnas_digits.yaml")
    p.add_argument("--runs", type=Path, default=ROOT / "runs" / "benchmarks")
    p.add_argument("--parts", default="pipeline,standalone,report")
    p.add_argument("--epochs", type=int, default=6, help="stand-alone training epochs")
    p.add_argument("--random", type=int, default=6, help="random codes besides the 4 uniform")
    p.add_argument("--seeds", default="0,1", help="stand-alone training seeds (mean ranked)")
    p.add_argument("--variants", default="all", help="ablation variants (comma-separated)")
    p.add_argument("--ablation-out", type=Path, help="write the ablation's markdown here")
    p.add_argument("--spnas-records", type=Path,
                   default=ROOT / "runs" / "benchmarks" / "spnas_digits" / "records.sqlite")
    p.add_argument("--out", type=Path, help="write the markdown here")
    args = p.parse_args()
    parts = args.parts.split(",")
    seeds = [int(x) for x in args.seeds.split(",")]
    cfg = load_run_config(args.config)
    out = args.runs / "detnas_digits"
    timing = out / "benchmark_time.json"
    if "pipeline" in parts:
        start = time.perf_counter()
        run_pipeline(cfg, out)
        if not timing.is_file():
            timing.write_text(json.dumps({"minutes": (time.perf_counter() - start) / 60}))
    space = ShuffleNetSpace(tuple(cfg.model.backbone.depths or (4, 4, 8, 4)))
    codes = architectures(space, args.random)
    if "standalone" in parts:
        standalone(cfg, codes, args.epochs, args.runs, seeds)
    from scipy.stats import kendalltau

    def tau_of(xs: list[float], ys: list[float]) -> float:
        return float(kendalltau(xs, ys).statistic) if len(xs) >= 2 else float("nan")

    if "ablation" in parts:
        trained = standalone(cfg, codes, args.epochs, args.runs, seeds, train=False)
        ranked = [c for c in codes if str(c) in trained]
        if not ranked:
            raise SystemExit("ablation: no stand-alone results yet — run --parts standalone")
        rows = run_ablation(cfg, ranked, {k: v["metrics"]["mAP"] for k, v in trained.items()},
                            args.runs, out, names_of(args.variants), tau_of)  # fmt: skip
        seed_tau = seeds_tau(trained, ranked, tau_of)
        variants = "" if args.variants == "all" else f" --variants {args.variants}"
        text = ablation_markdown(rows, len(ranked), seeds, args.epochs, seed_tau) + (
            f"\n\nCommand: `python benchmarks/detnas_digits.py --parts ablation --epochs "
            f"{args.epochs} --seeds {args.seeds}{variants}`  \nMachine: {machine_line()}"
        )
        print(text)
        if args.ablation_out:
            write_fragment(args.ablation_out, text)
    from nasdet.methods.detnas.steps import base_config

    compared = out / "compare" / "compare" / "compare.json"
    if "compare" in parts:
        run_compare(out / "compare", compare_configs(cfg, RecordStore(out / "records.sqlite")))
    if "report" not in parts:
        return

    supernet_path = out / "output" / "supernet_train" / "supernet.pth"
    trained = standalone(cfg, codes, args.epochs, args.runs, seeds, train=False)
    codes = [c for c in codes if str(c) in trained]  # the ranking needs stand-alone results
    step = cfg.evolution_search
    estimates = {}
    score_s = []  # one candidate's scoring, called directly (no executor), alone on the machine
    for code in codes:
        start = time.perf_counter()
        res = score_subnet({"supernet": str(supernet_path), "config": base_config(cfg),
                            "genotype": str(code), "bn_mode": step.bn_mode,
                            "calibrate_samples": step.calibrate_samples})  # fmt: skip
        score_s.append(time.perf_counter() - start)
        estimates[str(code)] = res["metrics"]["mAP"]
    direct_s = statistics.median(score_s[1:]) if len(score_s) > 1 else None  # [0]: loads
    xs = [estimates[str(c)] for c in codes]
    ys = [trained[str(c)]["metrics"]["mAP"] for c in codes]
    tau = tau_of(xs, ys)
    # the reference's own noise: how the stand-alone seeds rank the same nets against each other
    seed_tau = seeds_tau(trained, codes, tau_of)
    if codes:
        _plot(xs, ys, tau, ROOT / "docs" / "benchmarks" / "detnas_ranking.png")

    sup_s, sub_s = overhead(cfg, supernet_path)
    store = RecordStore(out / "records.sqlite")
    scored = store.records("evolution_search", status="done")
    per_candidate = statistics.mean(r.duration_s for r in scored)
    spnas_s = None
    if args.spnas_records.is_file():
        sp = RecordStore(args.spnas_records)
        durations = [r.duration_s for r in sp.records("serial", status="done") if r.duration_s]
        spnas_s = statistics.mean(durations) if durations else None
    trained_rows = {r.extra.get("role"): r for r in store.records("subnet_train", status="done")}
    minutes = json.loads(timing.read_text())["minutes"] if timing.is_file() else float("nan")
    summary = json.loads(compared.read_text()) if compared.is_file() else None
    # the parts whose results the report shows: the command that reproduces it (each resumes)
    made = ["pipeline", *(["standalone"] if codes else []), *(["compare"] if summary else []),
            "report"]  # fmt: skip
    command = (f"python benchmarks/detnas_digits.py --parts {','.join(made)} --epochs "
               f"{args.epochs} --seeds {args.seeds} --out {args.out}")  # fmt: skip
    text = _markdown(cfg, codes, estimates, trained, tau, sup_s, sub_s, per_candidate, spnas_s,
                     trained_rows, minutes, len(scored), args.epochs, seeds, summary,
                     command, direct_s, seed_tau)  # fmt: skip
    print(text)
    if args.out:
        write_fragment(args.out, text)


def _plot(xs: list[float], ys: list[float], tau: float, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(4.5, 4))
    ax.scatter(xs, ys)
    ax.set_xlabel("supernet-estimated mAP (search split)")
    ax.set_ylabel("stand-alone trained mAP (search split)")
    ax.set_title(f"DetNAS ranking on digits: Kendall tau {tau:.2f}")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def compare_configs(cfg, store: RecordStore) -> dict[str, dict]:
    """The train configs of ``nasdet compare``, with ``subnet_train``'s budget (every training
    image, its epochs): the hand-crafted ShuffleNetV2 (every block 3x3: the cheapest net of the
    space), the pipeline's searched subnet, and the hand-crafted net widened to the searched
    net's cost (:func:`widened_handcrafted`), the comparison DetNAS itself makes."""
    from nasdet.methods.detnas.steps import base_config

    searched = [r for r in store.records("subnet_train", status="done")
                if r.extra.get("role") == "searched"]  # fmt: skip
    if not searched:
        raise SystemExit("compare: the pipeline trained no searched subnet: run --parts pipeline")
    depths = tuple(cfg.model.backbone.depths or (4, 4, 8, 4))
    space = ShuffleNetSpace(depths)
    models = {"handcrafted": subnet_architecture(cfg.model, handcrafted(depths)),
              "searched": subnet_architecture(cfg.model, space.parse(searched[0].genotype))}
    models["handcrafted-wide"] = widened_handcrafted(cfg, models["handcrafted"],
                                                     models["searched"])  # fmt: skip
    configs = {}
    for label, model in models.items():
        config = base_config(cfg)
        config["data"]["search_fraction"] = 0.0
        config["model"] = model.model_dump(mode="json")
        if cfg.subnet_train is not None and cfg.subnet_train.epochs:
            config["train"]["epochs"] = cfg.subnet_train.epochs
        configs[label] = config
    return configs


def widened_handcrafted(cfg, base, searched):
    """``base`` (the hand-crafted net's model section) at the smallest ``width_mult``, in steps
    of 0.01 above its own, whose whole detector costs at least the searched net's FLOPs at the
    input size (the hand-designed alternative to searching: widen the standard net until it
    spends the same compute)."""
    from nasdet.build import num_classes

    size, classes = cfg.model.min_size, num_classes(cfg.data)

    def flops(model) -> float:
        return measure_cost(build_detector(model, classes, load_weights=False).eval(),
                            size)["flops"]  # fmt: skip

    target, width = flops(searched), base.backbone.width_mult
    for step in range(1, 301):
        spec = base.backbone.model_copy(update={"width_mult": round(width + 0.01 * step, 2)})
        wide = base.model_copy(update={"backbone": spec})
        if flops(wide) >= target:
            return wide
    raise SystemExit(f"compare: no width_mult up to {width + 3:.2f} reaches {target:.0f} FLOPs")


def _seeds_text(seeds) -> str:
    if len(seeds) == 1:
        return f"one seed ({seeds[0]})"
    return f"mean of seeds {', '.join(map(str, seeds))}"


def _markdown(cfg, codes, estimates, trained, tau, sup_s, sub_s, per_candidate, spnas_s,
              rows, minutes, n_scored, epochs, seeds, summary=None,
              command="python benchmarks/detnas_digits.py", direct_s=None,
              seed_tau=None) -> str:  # fmt: skip
    size = cfg.model.min_size
    table = ["| architecture | backbone MFLOPs | supernet mAP | stand-alone mAP (each seed) |",
             "|---|---:|---:|---:|"]  # fmt: skip
    for code in codes:
        t = trained[str(code)]
        each = ", ".join(f"{m:.3f}" for m in t["per_seed"]) if len(t["per_seed"]) > 1 else ""
        table.append(f"| `{code}` | {t['cost']['backbone_flops'] / 1e6:.1f} | "
                     f"{estimates[str(code)]:.3f} | {t['metrics']['mAP']:.3f}"
                     f"{f' ({each})' if each else ''} |")  # fmt: skip
    result = ["| model | architecture | params | backbone MFLOPs | detector MFLOPs | val mAP |",
              "|---|---|---:|---:|---:|---:|"]  # fmt: skip
    for role in ("baseline", "searched"):
        r = rows.get(role)
        if r is not None:
            result.append(
                f"| {'hand-crafted ShuffleNetV2' if role == 'baseline' else 'DetNAS searched'} "
                f"| `{r.genotype}` | {r.cost['params']:,.0f} | "
                f"{r.cost['backbone_flops'] / 1e6:.1f} | {r.cost['flops'] / 1e6:.1f} | "
                f"{r.metrics['mAP']:.3f} |"
            )
    # issue 12's measure: one candidate's one-shot scoring against training that candidate
    # stand-alone with the final-training schedule (the pipeline's searched subnet, alone)
    final = rows.get("searched")
    if final is not None and final.duration_s:
        t = final.duration_s
        cost = [
            f"**Search cost** (target >= 100x): training the searched candidate stand-alone with "
            f"the final-training schedule (`subnet_train`: "
            f"{cfg.subnet_train.epochs or cfg.train.epochs} epochs on every training image, then "
            f"scored on val) took {t:.0f} s. Scoring one candidate on the supernet took "
            f"{per_candidate:.1f} s in the pipeline's search (mean of its records, executor and "
            f"record store included; {60 / per_candidate:.1f} candidates/min): "
            f"**{t / per_candidate:.0f}x cheaper**."
        ]
        if direct_s:
            cost.append(
                f"Scored one by one in this report (the ranking's architectures, the scoring "
                f"function called directly, median) a candidate takes {direct_s:.1f} s: "
                f"**{t / direct_s:.0f}x**."
            )
    else:
        cost = [f"**Search cost**: {per_candidate:.1f} s to score one candidate on the supernet; "
                "the final training's time is unknown (no `subnet_train` record)."]  # fmt: skip
    if spnas_s:
        cost.append(f"One SP-NAS candidate (its training, same machine) takes {spnas_s:.0f} s, "
                    f"{spnas_s / per_candidate:.0f}x.")  # fmt: skip
    if summary is not None:
        result = [compare_markdown(summary, first="handcrafted",
                                   also=[("handcrafted-wide", "searched")])]  # fmt: skip
        result_head = ("**Result** (`nasdet compare`: each trained from scratch with "
                       "`subnet_train`'s budget, 3 seeds; FLOPs of the whole detector at "
                       f"{size}x{size}):")  # fmt: skip
    else:
        result_head = (f"**Result** (same training budget, from scratch, val split, one seed; "
                       f"FLOPs at {size}x{size}; `--parts compare` trains 3 seeds):")  # fmt: skip
    return "\n".join([
        f"`configs/detnas_digits.yaml` ({cfg.model.detector}, ShuffleNetV2 supernet x"
        f"{cfg.model.backbone.width_mult}, {size}px): pipeline wall time **{minutes:.1f} min** "
        f"(target <= 30), {n_scored} candidates scored.",
        "",
        result_head,
        "",
        *result,
        "",
        (f"**Ranking quality**: not measured yet (run `--parts standalone,report`: "
         f"{epochs}-epoch stand-alone training of 10 architectures)." if not codes else
        f"**Ranking quality**: Kendall tau between supernet-estimated mAP (BN recalibrated on "
        f"{cfg.evolution_search.calibrate_samples} training images) and stand-alone mAP "
        f"({epochs} epochs from scratch, {_seeds_text(seeds)}), both on "
        f"the search split, over {len(codes)} "
        f"architectures: **tau = {tau:.2f}** (target >= 0.6). Plot: "
        "`docs/benchmarks/detnas_ranking.png`." + (
            f" The stand-alone seeds {seeds[0]} and {seeds[1]} rank the same architectures at "
            f"tau = {seed_tau:.2f} against each other (the reference's own noise)."
            if seed_tau is not None else "")),
        "",
        *(table if codes else []),
        "",
        f"**Supernet overhead**: one training step (batch {cfg.train.batch_size}) of the "
        f"supernet with a fixed path {sup_s * 1e3:.0f} ms vs the extracted subnet "
        f"{sub_s * 1e3:.0f} ms: **{sup_s / sub_s:.2f}x** (target <= 1.15).",
        "",
        " ".join(cost),
        "",
        f"Command: `{command}`  ",
        f"Machine: {machine_line()}",
    ])


if __name__ == "__main__":
    main()
