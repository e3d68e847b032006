"""Latency-constrained search (``method: latency``, ENOT's flow) on the bundled digits with the
``ssd_mobilenetv2`` baseline: the LUT's accuracy, the pipeline's wall time, the searched net
against the baseline at a target of 0.6 x its latency over 3 tune seeds, and search with
resolution against search without.

Parts (all by default; each resumes where it stopped):

- ``lut``: the LUT's prediction against the whole network measured alone, over 20 random
  architectures plus the baseline and the cheapest, at the config's resolution, for
  ``--lut-kinds`` (``mmac``, ``measured:cpu`` and ``measured:onnxruntime``, one thread each;
  ``measured:cpu/alone``: the former torch table of variants timed alone, to compare): MAPE
  (target <= 5 %) and build time. Kept in ``<run-dir>/lut_check.json`` per kind (delete it, or
  a kind in it, to measure again). The LUT check alone:
  ``python benchmarks/latency_digits.py --parts lut,report``;
- ``pipeline``: ``nasdet run configs/latency_digits.yaml`` (baseline, pretrain, search, tune;
  target <= 30 min on 2 CPU cores), with each step's wall time from the run's log;
- ``resolution``: the same from the pipeline's baseline with ``multiresolution_pretrain`` and
  ``search_with_resolution`` over ``--range`` (same target);
- ``seeds``: the baseline trained (``nasdet train``) and the searched net tuned (``nasdet run``
  with the ``tune`` step from the search's ``ss_checkpoint``) for seeds 1 and 2, two processes of
  one thread at a time (seed 0 is the pipeline's); ``resolution-seeds``: the same for the net
  searched with resolution; ``scratch``: the searched architecture trained from scratch with the
  baseline's setup for seeds 0, 1 and 2 (the equal-budget comparison); ``baseline-tuned``: the
  baseline's architecture (variant 0 everywhere) tuned from the same space checkpoint as the
  searched net, seeds 0, 1 and 2 (ENOT's protocol applied to both: the fair form of its
  comparison);
- ``report``: the markdown;
- ``compare`` (not run by default): the equal-budget comparison through ``nasdet compare``: the
  baseline and the pipeline's searched architecture, both trained from scratch with the
  baseline's setup (the configs the pipeline's ``baseline`` and ``tune`` steps wrote) for seeds
  0, 1 and 2, two at a time on Ray (mean ± sd, paired t-test, verdict); its own fragment
  (``--compare-out``). The tuned rows (ENOT's protocol: weights from the space) stay the
  ``seeds`` parts': ``nasdet compare`` trains from scratch.

    python benchmarks/latency_digits.py --out docs/benchmarks/latency.md
    python benchmarks/latency_digits.py --parts compare --compare-out \
        docs/benchmarks/latency_compare.md
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import yaml
from _common import machine_line, write_fragment
from _compare import compare_fragment, run_compare

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "configs" / "latency_digits.yaml"
NASDET = [sys.executable, "-m", "nasdet"]
SEEDS = (0, 1, 2)


def _env(threads: int) -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}


# ----------------------------------------------------------------------------- lut
ALONE = "/alone"  # a kind's suffix: torch's variants timed alone (the former LUT), to compare


def measured_costs(
    detector: Any, size: int, archs: list[Any], kind: str, min_run_time: float, rounds: int = 10
) -> list[list[float]]:
    """Each architecture's whole network (``Network``, batch 1, one thread) measured alone:
    ``rounds`` passes over all of them (``min_run_time / rounds`` s each; their median is the
    measurement), so that a slow spell of a shared machine hits them all alike. onnxruntime's
    sessions are exported once per architecture. Returns each one's passes."""
    import torch

    from nasdet.cost.latency import summarize_times
    from nasdet.cost.onnx_runtime import onnx_session, time_session
    from nasdet.methods.latency.latency import Network, _cost

    body = detector.backbone.body
    x = torch.zeros(1, 3, size, size)
    net = Network(detector)
    if kind == "mmac":
        rounds = 1
    sessions = []
    if kind == "measured:onnxruntime":
        for arch in archs:
            body.set_active_subnet(arch)
            sessions.append(onnx_session(net, x, threads=1))
    passes: list[list[float]] = [[] for _ in archs]
    for _ in range(rounds):
        for i, arch in enumerate(archs):
            body.set_active_subnet(arch)
            if sessions:
                times = time_session(*sessions[i], min_run_time=min_run_time / rounds)
                passes[i].append(summarize_times(times)[0])
            else:
                passes[i].append(_cost(net, x, kind, min_run_time / rounds))
    body.set_active_subnet(body.space.baseline)
    return passes


def lut_check(
    cfg: Any,
    dest: Path,
    kinds: tuple[str, ...] = ("mmac", "measured:cpu", "measured:onnxruntime"),
    n: int = 20,
    min_run_time: float = 0.5,
) -> dict[str, Any]:
    """LUT-predicted against measured whole-network cost for ``n`` random architectures plus
    the baseline and the cheapest (one thread; kept in ``dest``, per kind: a kind already in it
    is not measured again, unless its LUT changed since: ``measured_since_change``). A kind
    ending in ``/alone`` is torch's former LUT, each variant timed alone."""
    from nasdet.methods.latency.latency import LUT_FORMAT, measured_since_change

    out: dict[str, Any] = json.loads(dest.read_text()) if dest.is_file() else {}
    made = out.get("lut_format", 1)  # the format of the kinds that do not record their own
    out["kinds"] = {
        label: {**k, "lut_format": k.get("lut_format", made)}
        for label, k in out.get("kinds", {}).items()
        if measured_since_change(label.removesuffix(ALONE), k.get("lut_format", made))
    }
    if all(k in out["kinds"] for k in kinds):
        return out
    import torch

    from nasdet.build import build_detector
    from nasdet.methods.latency.common import space_model
    from nasdet.methods.latency.latency import build_table
    from nasdet.methods.latency.space import LatencyArch

    torch.set_num_threads(1)
    torch.manual_seed(0)
    size = cfg.model.min_size
    detector = build_detector(space_model(cfg), 11, load_weights=False).eval()
    body = detector.backbone.body
    rng = random.Random(0)
    archs = [body.space.baseline] + [body.space.sample(rng) for _ in range(n)]
    cheapest = LatencyArch(tuple(n - 1 for n in body.space.num_variants))  # fewest MMACs
    every = [*archs, cheapest]
    out = {"resolution": size, "n": len(every), "kinds": {}, **out, "lut_format": LUT_FORMAT}
    todo = [k for k in kinds if k not in out["kinds"]]
    for kind in dict.fromkeys(k.removesuffix(ALONE) for k in todo):
        tables = {}
        for label in (k for k in todo if k.removesuffix(ALONE) == kind):
            t0 = time.perf_counter()
            alone = label.endswith(ALONE)
            table = build_table(detector, size, kind, min_run_time=min_run_time, alone=alone)
            tables[label] = (table, time.perf_counter() - t0)
        passes = measured_costs(detector, size, every, kind, 2 * min_run_time)
        measured = [statistics.median(p) for p in passes]
        # the measurement's own noise: the interquartile range of an architecture's passes
        noise = [_iqr(p) / m if m else 0.0 for p, m in zip(passes, measured, strict=True)]
        for label, (table, built) in tables.items():
            out["kinds"][label] = {
                **_accuracy(table, every, measured, built),
                "measured_noise": statistics.mean(noise),
                "lut_format": LUT_FORMAT,
            }
            k = out["kinds"][label]
            print(
                f"LUT {label}: MAPE {k['mape']:.2%} (max {k['max_ape']:.2%}; of the ratios to "
                f"the baseline {k['ratio_mape']:.2%}), built in {built:.0f} s"
            )
        dest.parent.mkdir(parents=True, exist_ok=True)
        dest.write_text(json.dumps(out, indent=1))
    return out


def _iqr(values: list[float]) -> float:
    if len(values) < 2:
        return 0.0
    q1, _, q3 = statistics.quantiles(values, n=4, method="inclusive")
    return q3 - q1


def _accuracy(table: Any, archs: list[Any], measured: list[float], built: float) -> dict[str, Any]:
    """The LUT's errors against ``measured`` (the baseline first): absolute percentage errors,
    and those of the ratios to the baseline (``lut / lut_baseline`` against ``measured /
    measured_baseline``: blind to a machine that is uniformly slower while the LUT is built
    than while the networks are timed)."""
    rows = [
        {"arch": a.to_list(), "lut": table.predict(a), "measured": m}
        for a, m in zip(archs, measured, strict=True)
    ]
    errors = [abs(r["lut"] - r["measured"]) / r["measured"] for r in rows]
    lut0, m0 = rows[0]["lut"], rows[0]["measured"]
    ratio = [abs(r["lut"] / lut0 / (r["measured"] / m0) - 1) for r in rows[1:]]
    return {
        "unit": table.unit,
        "mape": statistics.mean(errors),
        "max_ape": max(errors),
        "ratio_mape": statistics.mean(ratio),
        "build_s": built,
        "baseline": table.baseline,
        "minimum": table.minimum,
        "rows": rows,
    }


# ----------------------------------------------------------------------------- runs
def _run(args: list[str], log: Path, threads: int) -> float:
    """Run a nasdet command (its output in ``log``); wall seconds; raises on failure."""
    t0 = time.perf_counter()
    with log.open("w") as f:
        proc = subprocess.run(
            [*NASDET, *args],
            stdout=f,
            stderr=subprocess.STDOUT,
            env=_env(threads),
            cwd=ROOT,
            check=False,
        )
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(args)} failed ({proc.returncode}): see {log}")
    return time.perf_counter() - t0


def step_times(log: Path) -> dict[str, float]:
    """Each step's wall seconds from a run's ``nasdet.log`` (``== step X ==`` lines)."""
    stamps: list[tuple[str, datetime]] = []
    last = None
    day = timedelta(0)
    for line in log.read_text().splitlines():
        m = re.search(r"(\d\d:\d\d:\d\d)", line[:32])
        if not m:
            continue
        t = datetime.strptime(m.group(1), "%H:%M:%S") + day
        if last is not None and t < last:
            day += timedelta(days=1)
            t += timedelta(days=1)
        last = t
        s = re.search(r"== step (\w+) ==", line)
        if s:
            stamps.append((s.group(1), t))
    out = {}
    for (name, t), nxt in zip(stamps, [*stamps[1:], ("end", last)], strict=True):
        out[name] = (nxt[1] - t).total_seconds()
    return out


def run_config(raw: dict[str, Any], run: Path, name: str, threads: int = 2) -> dict[str, Any]:
    """``nasdet run`` of ``raw`` into ``run/name`` on ``threads`` threads; its timing (kept)."""
    done = run / f"{name}.timing.json"
    if done.is_file():
        return json.loads(done.read_text())
    out = run / name
    out.mkdir(parents=True, exist_ok=True)
    path = run / f"{name}.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    wall = _run(["run", str(path), "--out", str(out)], run / f"{name}.log", threads=threads)
    timing = {"minutes": wall / 60, "steps": step_times(out / "nasdet.log")}
    done.write_text(json.dumps(timing))
    return timing


def resolution_config(raw: dict[str, Any], run: Path, lo_hi: list[int]) -> dict[str, Any]:
    """The pipeline's config with multiresolution pretrain and search with resolution, from the
    pipeline's baseline."""
    new = json.loads(json.dumps(raw))
    pre, search = new.pop("pretrain"), new.pop("search")
    new.pop("baseline", None)
    pre["baseline_ckpt"] = str(run / "pipeline" / "output" / "baseline" / "model.pt")
    new["multiresolution_pretrain"] = {**pre, "resolution_range": lo_hi}
    new["search_with_resolution"] = {
        **search,
        "resolution_range": lo_hi,
        "resolution_tolerance": 0.005,
    }
    tune = new.pop("tune")
    new["tune"] = tune
    return new


def _seed_job(job: dict[str, Any]) -> dict[str, Any]:
    try:
        return {"name": job["name"], "mAP": _map_of(job)}
    except (OSError, ValueError, KeyError):
        pass
    out = Path(job["out"])
    out.mkdir(parents=True, exist_ok=True)
    path = out.with_suffix(".yaml")
    path.write_text(yaml.safe_dump(job["config"], sort_keys=False))
    cmd = "train" if job["kind"] == "train" else "run"
    _run([cmd, str(path), "--out", str(out)], out.with_suffix(".log"), threads=1)
    return {"name": job["name"], "mAP": _map_of(job)}


def _map_of(job: dict[str, Any]) -> float:
    if job["kind"] == "train":
        return float(json.loads((Path(job["out"]) / "metrics.json").read_text())["metrics"]["mAP"])
    from nasdet.search.records import RecordStore

    path = Path(job["out"]) / "records.sqlite"
    if not path.is_file():  # opening a store creates it
        raise FileNotFoundError(path)
    store = RecordStore(path)
    (rec,) = store.records("tune", status="done")
    return float(rec.metrics["mAP"])


def seed_jobs(
    raw: dict[str, Any],
    run: Path,
    which: tuple[str, ...] = ("baseline", "pipeline", "resolution", "scratch", "baseline-tuned"),
) -> list[dict[str, Any]]:
    jobs = []
    base = {k: raw[k] for k in ("data", "model", "train") if k in raw}
    for s in SEEDS:
        if "baseline" in which and s != SEEDS[0]:
            jobs.append(
                {
                    "name": f"baseline|{s}",
                    "kind": "train",
                    "out": str(run / "seeds" / f"baseline_{s}"),
                    "config": {**base, "seed": s},
                }
            )
        for name, step, init in (
            ("pipeline", "search", "search_space"),
            ("resolution", "search_with_resolution", "search_space"),
            ("scratch", "search", "scratch"),
            ("baseline-tuned", "search", "search_space"),
        ):
            own = name in ("pipeline", "resolution")  # seed 0 is the run's own tune
            if name not in which or (own and s == SEEDS[0]):
                continue
            src = name if own else "pipeline"
            ckpt = run / src / "output" / step / "search_space.pt"
            if not ckpt.is_file():
                continue
            tune = {
                **raw.get("tune", {}),
                "ss_checkpoint": str(ckpt),
                # the baseline's architecture (variant 0 everywhere), tuned like the searched net
                "searched_arch": _baseline_arch(ckpt) if name == "baseline-tuned" else None,
                "init": init,
            }
            cfg = {
                **{
                    k: v
                    for k, v in raw.items()
                    if k
                    not in (
                        "baseline",
                        "pretrain",
                        "search",
                        "multiresolution_pretrain",
                        "search_with_resolution",
                        "tune",
                        "pipeline",
                    )
                },
                "seed": s,
                "tune": tune,
                "pipeline": ["tune"],
            }
            jobs.append(
                {
                    "name": f"{name}|{s}",
                    "kind": "tune",
                    "out": str(run / "seeds" / f"{name}_{s}"),
                    "config": cfg,
                }
            )
    return jobs


def _baseline_arch(ckpt: Path) -> list[int]:
    """Variant 0 for every searchable block of the space in ``ckpt``: the baseline."""
    from nasdet.models.io import read_model_file

    return [0] * len(read_model_file(ckpt)["meta"]["searched_arch"])


def seeds(raw: dict[str, Any], run: Path, which: tuple[str, ...]) -> dict[str, float]:
    with ThreadPoolExecutor(2) as pool:
        return {r["name"]: r["mAP"] for r in pool.map(_seed_job, seed_jobs(raw, run, which))}


# ----------------------------------------------------------------------------- report
def cpu_latency(run: Path, dest: Path) -> dict[str, dict[str, float]]:
    """CPU latency (torch, one thread, batch 1, backbone + head as the LUT times them) of the
    baseline's and the tuned nets' model files (kept in ``dest``). When a net is there that
    ``dest`` lacks, all are timed again in one run, so that their ratios compare nets timed under
    the same conditions."""
    files = {
        "baseline": run / "pipeline" / "output" / "baseline" / "model.pt",
        "pipeline": run / "pipeline" / "output" / "tune" / "model.pt",
        "resolution": run / "resolution" / "output" / "tune" / "model.pt",
    }
    files = {k: v for k, v in files.items() if v.is_file()}
    if dest.is_file():
        kept = json.loads(dest.read_text())
        if set(files) <= set(kept):
            return kept
    import torch

    from nasdet.build import load_model
    from nasdet.cost.latency import measure_latency
    from nasdet.methods import Model
    from nasdet.methods.latency.latency import Network

    torch.set_num_threads(1)
    out = {}
    for name, path in files.items():
        detector = load_model(path, Model)
        side = detector.transform.fixed_size[0]
        x = torch.zeros(1, 3, side, side)
        lat = measure_latency(Network(detector), x, device="cpu", threads=1, min_run_time=2.0)
        out[name] = {"ms": lat.median_ms, "side": side}
        print(f"{name}: {lat.median_ms:.2f} ms at {side} px")
    dest.write_text(json.dumps(out))
    return out


def _records(out: Path) -> dict[str, Any]:
    from nasdet.search.records import RecordStore

    store = RecordStore(out / "records.sqlite")
    return {r.step + "|" + r.genotype: r for r in store.records(status="done")}


def _ms(timed: dict[str, dict[str, float]], name: str) -> str:
    if name not in timed:
        return "not measured"
    ms = timed[name]["ms"]
    base = timed.get("baseline", {}).get("ms")
    return f"{ms:.1f} ({ms / base:.2f})" if base else f"{ms:.1f}"


def _of(seeds_map: dict[str, float], key: str, which) -> dict[int, float]:  # noqa: ANN001
    """``{seed: mAP}`` of the trained ``key|seed`` entries among ``which``."""
    return {s: seeds_map[f"{key}|{s}"] for s in which if f"{key}|{s}" in seeds_map}


def _drop(base: dict[int, float], maps: dict[int, float]) -> str:
    """Baseline mean − ``maps`` mean, in mAP points."""
    if not base or not maps:
        return ""
    return f"{(statistics.mean(base.values()) - statistics.mean(maps.values())) * 100:+.1f} pts"


def _paired(first: str, a: dict[int, float], second: str, b: dict[int, float]) -> str:
    """A table row: ``b − a`` over the seeds both have, mean ± sd in points, paired t-test."""
    from scipy.stats import ttest_rel

    common = sorted(set(a) & set(b))
    diffs = [(b[s] - a[s]) * 100 for s in common]
    if len(common) < 2:
        return f"| {first} | {second} | {len(common)} | {diffs[0]:+.1f} | - | - |"
    res = ttest_rel([b[s] for s in common], [a[s] for s in common])
    sd = statistics.stdev(diffs)
    return (
        f"| {first} | {second} | {len(common)} | {statistics.mean(diffs):+.1f} ± {sd:.1f} | "
        f"{res.statistic:.2f} | {res.pvalue:.3f} |"
    )


def _mean_sd(xs: list[float]) -> str:
    sd = statistics.stdev(xs) if len(xs) > 1 else 0.0
    return f"{statistics.mean(xs):.3f} ± {sd:.3f}"


def markdown(
    raw: dict[str, Any],
    run: Path,
    lut: dict[str, Any] | None,
    seeds_map: dict[str, float],
    timed: dict[str, dict[str, float]],
) -> str:
    lines = []
    unit = "MMAC"
    pipe = run / "pipeline.timing.json"
    if pipe.is_file():
        t = json.loads(pipe.read_text())
        steps = ", ".join(f"{k} {v / 60:.1f}" for k, v in t["steps"].items())
        lines += [
            "`configs/latency_digits.yaml` (ssd_mobilenetv2 "
            f"x{raw['model']['backbone']['width_mult']} at {raw['model']['min_size']} px, "
            f"target {raw['search']['target_latency']} {unit} "
            f"= 0.6 x the baseline's): pipeline wall time **{t['minutes']:.1f} min** (target "
            f"<= 30); per step (min): {steps}.",
            "",
        ]
        if "baseline" in t["steps"] and "pretrain" in t["steps"]:
            ratio = t["steps"]["pretrain"] / t["steps"]["baseline"]
            lines += [
                f"Pretrain cost: {ratio:.2f} x the baseline's training wall time for the same "
                f"number of epochs ({raw['pretrain'].get('epochs')} vs "
                f"{raw['train']['epochs']}); the seed says 5-7 x is typical (for ENOT's longer "
                "pretraining).",
                "",
            ]
    rows = [
        "| model | arch | side | LUT MMAC | ratio | CPU ms (ratio) | val mAP | drop |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    base_maps: dict[int, float] = {}
    base_cost = None
    per_seed: dict[str, dict[int, float]] = {}
    for name, label in (
        ("pipeline", "searched, tuned from the space (ENOT)"),
        ("resolution", "searched with resolution, tuned from the space"),
    ):
        if not (run / name / "records.sqlite").is_file():
            continue
        recs = _records(run / name)
        if name == "pipeline" and "baseline|baseline" in recs:
            b = recs["baseline|baseline"]
            base_cost = b.cost["latency_lut"]
            base_maps = {SEEDS[0]: b.metrics["mAP"]} | _of(seeds_map, "baseline", SEEDS[1:])
            rows.append(
                f"| baseline, trained from scratch | all 0 | {raw['model']['min_size']} | "
                f"{base_cost:.1f} | 1.00 | {_ms(timed, 'baseline')} | "
                f"{_mean_sd(list(base_maps.values()))} ({len(base_maps)} seeds) | |"
            )
            tuned = _of(seeds_map, "baseline-tuned", SEEDS)
            if tuned:
                per_seed["baseline-tuned"] = tuned
                rows.append(
                    f"| baseline, tuned from the space like the searched nets | all 0 | "
                    f"{raw['model']['min_size']} | {base_cost:.1f} | 1.00 | "
                    f"{_ms(timed, 'baseline')} | {_mean_sd(list(tuned.values()))} "
                    f"({len(tuned)} seeds) | {_drop(base_maps, tuned)} |"
                )
        tunes = [r for k, r in recs.items() if k.startswith("tune|")]
        if not tunes:
            continue
        t = tunes[0]
        ratio = t.cost["latency_lut"] / base_cost if base_cost else float("nan")
        variants = [(name, label, {SEEDS[0]: t.metrics["mAP"]})]
        if name == "pipeline":
            variants.append(("scratch", "searched, trained from scratch", {}))
        for key, text, first in variants:
            maps = first | _of(seeds_map, key, SEEDS if key == "scratch" else SEEDS[1:])
            if not maps:
                continue
            per_seed[key] = maps
            rows.append(
                f"| {text} | `{t.extra['arch']}` | {t.extra['resolution']} | "
                f"{t.cost['latency_lut']:.1f} | {ratio:.2f} | {_ms(timed, name)} | "
                f"{_mean_sd(list(maps.values()))} ({len(maps)} seeds) | "
                f"{_drop(base_maps, maps)} |"
            )
    pairs = [
        ("baseline, trained from scratch", base_maps, "searched, trained from scratch",
         per_seed.get("scratch")),
        ("baseline, tuned from the space", per_seed.get("baseline-tuned"),
         "searched, tuned from the space", per_seed.get("pipeline")),
        ("searched without resolution, tuned", per_seed.get("pipeline"),
         "searched with resolution, tuned", per_seed.get("resolution")),
    ]  # fmt: skip
    paired = [_paired(*p) for p in pairs if p[1] and p[3]]
    if len(rows) > 2:
        lines += [
            "**Searched against the baseline** (the baseline trained from scratch with `train`; "
            "the searched nets tuned with the same `train` from the space's weights, as ENOT "
            "does, so they inherit the baseline's and the pretrain's epochs; the row 'baseline, "
            "tuned from the space' gives the baseline's own architecture that same tune from the "
            "same space checkpoint, the fair form of ENOT's comparison; the row 'from "
            "scratch' is the searched architecture alone at the baseline's budget; mean ± sd "
            "over seeds; drop = mean of the baseline trained from scratch − the row's mean, "
            "target <= 2 mAP points at 0.6 x the baseline's latency; CPU ms: backbone + head at "
            "batch 1 on one thread, torch, median):",
            "",
            *rows,
            "",
        ]
    if paired:
        lines += [
            "**Paired by seed** (difference = second − first, in mAP points; a paired t-test "
            "over the seeds both have, `scipy.stats.ttest_rel`):",
            "",
            "| first | second | seeds | difference | t | p |",
            "|---|---|---:|---:|---:|---:|",
            *paired,
            "",
        ]
    if lut:
        lr = [
            "| latency model | unit | baseline | minimum | LUT build (s) | MAPE | max error "
            "| MAPE of ratios to the baseline | measurement noise |",
            "|---|---|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for label, k in lut["kinds"].items():
            name = f"`{label.removesuffix(ALONE)}`" + (
                " variants timed alone (former)" if label.endswith(ALONE) else ""
            )
            ratio = f"{k['ratio_mape']:.2%}" if "ratio_mape" in k else "-"
            noise = f"{k['measured_noise']:.2%}" if "measured_noise" in k else "-"
            lr.append(
                f"| {name} | {k['unit']} | {k['baseline']:.3f} | {k['minimum']:.3f} | "
                f"{k['build_s']:.0f} | **{k['mape']:.2%}** | {k['max_ape']:.2%} | {ratio} | "
                f"{noise} |"
            )
        lines += [
            f"**LUT accuracy** at {lut['resolution']} px: the LUT's prediction (fixed part + "
            "each block's variant: torch's timed in place inside whole-network forwards, "
            "onnxruntime's in place too, from its profiler over whole exported networks; the "
            "rows 'timed alone (former)' each variant alone) against the "
            f"whole network timed alone, over {lut['n']} architectures (20 random, the baseline, "
            "the cheapest), batch 1, one thread, each network timed in 10 interleaved passes "
            "(median); target: MAPE <= 5 %. The ratios to the baseline compare "
            "LUT / LUT's baseline against measured / measured baseline, which a "
            "machine uniformly slower while the LUT is built than while the networks are timed "
            "does not move; the measurement noise is the mean interquartile range of a "
            "network's passes over their median (an error below it cannot be seen):",
            "",
            *lr,
            "",
        ]
    lines += [
        "Command: `python benchmarks/latency_digits.py --out docs/benchmarks/latency.md`  ",
        f"Machine: {machine_line()}",
    ]
    return "\n".join(lines)


def compare_part(raw: dict[str, Any], run: Path, workers: int) -> str:
    """``nasdet compare`` of the baseline and the pipeline's searched architecture, both from
    scratch with the baseline's setup (the configs of the pipeline's ``baseline`` and ``tune``
    trainings), seeds 0, 1, 2; markdown."""
    steps = run / "pipeline" / "output"
    configs = {
        "baseline": steps / "baseline" / "config.yaml",
        "searched": steps / "tune" / "config.yaml",
    }
    for path in configs.values():
        if not path.is_file():
            raise SystemExit(f"compare: {path} not found: run --parts pipeline first")
    summary = run_compare(run / "compare", configs, workers=workers)
    (rec,) = [r for key, r in _records(run / "pipeline").items() if key.startswith("tune|")]
    intro = (
        f"`configs/latency_digits.yaml`: the baseline ({raw['model']['backbone']['name']}, "
        f"{raw['model']['min_size']} px) against the pipeline's searched architecture "
        f"`{rec.extra.get('arch')}` (target {raw['search']['target_latency']:g} "
        f"{raw.get('latency', 'mmac')}), both trained from scratch with the baseline's "
        "setup by `nasdet compare` (the equal-budget comparison; FLOPs of the whole "
        "detector):"
    )
    command = (
        "python benchmarks/latency_digits.py --parts pipeline,compare --compare-out "
        "docs/benchmarks/latency_compare.md"
    )
    return compare_fragment(intro, summary, "baseline", command)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default=str(ROOT / "docs" / "benchmarks" / "latency.md"))
    p.add_argument("--run-dir", default=str(ROOT / "runs" / "benchmarks" / "latency_digits"))
    p.add_argument("--parts", default="lut,pipeline,resolution,seeds,resolution-seeds,report")
    p.add_argument("--lut-kinds", default="mmac,measured:cpu,measured:onnxruntime")
    p.add_argument("--range", default="96,160", help="resolution range of the resolution part")
    p.add_argument(
        "--threads", type=int, default=2, help="threads of a pipeline run (1 on a shared machine)"
    )
    p.add_argument("--compare-out", type=Path, help="write the compare part's markdown here")
    p.add_argument("--workers", type=int, default=2, help="the compare's trainings at once (Ray)")
    args = p.parse_args()
    parts = set(args.parts.split(","))
    run = Path(args.run_dir)
    run.mkdir(parents=True, exist_ok=True)
    raw = yaml.safe_load(CONFIG.read_text())
    lut = None
    if "lut" in parts:
        from nasdet.methods import load_run_config

        kinds = tuple(args.lut_kinds.split(","))
        lut = lut_check(load_run_config(CONFIG), run / "lut_check.json", kinds)
    elif (run / "lut_check.json").is_file():
        lut = json.loads((run / "lut_check.json").read_text())
    if "pipeline" in parts:
        print("pipeline:", run_config(raw, run, "pipeline", args.threads))
    if "resolution" in parts:
        lo_hi = [int(v) for v in args.range.split(",")]
        config = resolution_config(raw, run, lo_hi)
        print("resolution:", run_config(config, run, "resolution", args.threads))
    if "compare" in parts:
        text = compare_part(raw, run, args.workers)
        print(text)
        if args.compare_out:
            write_fragment(args.compare_out, text)
    seeds_map = seeds(raw, run, ("baseline", "pipeline")) if "seeds" in parts else {}
    if "scratch" in parts:
        seeds_map.update(seeds(raw, run, ("scratch",)))
    if "baseline-tuned" in parts:
        seeds_map.update(seeds(raw, run, ("baseline-tuned",)))
    if "resolution-seeds" in parts:
        seeds_map.update(seeds(raw, run, ("resolution",)))
    if "report" in parts:
        if not seeds_map:
            seeds_map = {}
            for j in seed_jobs(raw, run):
                try:
                    seeds_map[j["name"]] = _map_of(j)
                except (OSError, ValueError, KeyError):
                    pass  # not trained yet
        timed = cpu_latency(run, run / "cpu_latency.json")
        write_fragment(args.out, markdown(raw, run, lut, seeds_map, timed))
        print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
