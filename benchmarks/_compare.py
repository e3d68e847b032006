"""The "result" part every method's benchmark shares: architectures trained with one identical
budget over several seeds by ``nasdet compare`` (resumable: rerunning skips the done trainings),
and its summary (``compare.json``) as a markdown table with each pair's paired t-test.

    summary = run_compare(runs / "detnas_compare", {"handcrafted": cfg_a, "searched": cfg_b})
    text = compare_markdown(summary, first="handcrafted")
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml
from _common import machine_line

SEEDS = (0, 1, 2)


def run_compare(
    out: Path,
    configs: dict[str, dict[str, Any] | Path],
    seeds=SEEDS,
    threads: int = 2,
    workers: int = 1,
) -> dict[str, Any]:
    """``nasdet compare`` of the labelled architectures over ``seeds``, in ``out``; its
    ``compare.json``. Each is a train config (``{data, model, train, ...}``; the first one's
    budget is everyone's) or a model file a run wrote (its architecture, from scratch). With
    ``workers`` > 1 the trainings run that many at once on a local Ray instance
    (``--executor ray``: each worker reserves one CPU and trains with one thread). A compare
    with a failed training exits 1: that stops the benchmark with the command's last lines."""
    out.mkdir(parents=True, exist_ok=True)
    args = []
    for label, config in configs.items():
        if isinstance(config, Path):
            args.append(f"{label}={config}")
            continue
        path = out.parent / f"{out.name}.{label}.yaml"
        path.write_text(yaml.safe_dump(config, sort_keys=False))
        args.append(f"{label}={path}")
    cmd = [sys.executable, "-m", "nasdet", "compare", *args, "--out", str(out / "compare"),
           "--seeds", ",".join(str(s) for s in seeds)]  # fmt: skip
    if workers > 1:
        cmd += ["--executor", "ray", "--workers", str(workers)]
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    log = out / "compare.log"
    with log.open("a") as f:
        rc = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, env=env).returncode
    if rc != 0:
        tail = log.read_text().splitlines()[-5:]
        raise SystemExit(f"nasdet compare failed (exit {rc}); {log}:\n" + "\n".join(tail))
    return json.loads((out / "compare" / "compare.json").read_text())


def _pm(stat: dict[str, Any] | None, scale: float = 1.0, digits: int = 3) -> str:
    if stat is None:
        return "-"
    sd = stat.get("std")
    sd_text = f" ± {sd * scale:.{digits}f}" if sd is not None else ""
    return f"{stat['mean'] * scale:.{digits}f}{sd_text}"


def verdict(a: dict[str, Any], b: dict[str, Any], pair: dict[str, Any] | None) -> str:
    """Whether ``b`` dominates ``a`` (mAP not lower on average, FLOPs and params not higher),
    and whether its mAP difference is significant at p < 0.05."""
    ma, mb = a["metrics"]["mAP"]["mean"], b["metrics"]["mAP"]["mean"]
    cheaper = all(b["cost"][k] <= a["cost"][k] for k in ("flops", "params"))
    sig = pair is not None and pair.get("p") is not None and pair["p"] < 0.05
    if mb >= ma and cheaper:
        note = "" if sig else " (mAP gap not significant)"
        return f"{b['label']} dominates {a['label']}{note}"
    worse = [w for w, bad in (("less accurate", mb < ma), ("not cheaper", not cheaper)) if bad]
    return (
        f"{b['label']} does NOT dominate {a['label']}: "
        + " and ".join(worse)
        + (" (significant, p < 0.05)" if sig and mb < ma else "")
    )


def compare_markdown(
    summary: dict[str, Any], first: str, also: Sequence[tuple[str, str]] = ()
) -> str:
    """Per architecture mean ± sd of mAP and AP50 over the seeds, params and GFLOPs; per pair the
    mean ± sd of the per-seed mAP difference (points), t and p; the verdict of each against
    ``first`` (the hand-designed net), then of each ``(base, label)`` of ``also`` (labels that
    the summary lacks are skipped)."""
    archs = summary["architectures"]
    seeds = summary["seeds"]
    lines = [
        f"| model | params | GFLOPs | val mAP ({len(seeds)} seeds) | val AP50 |",
        "|---|---:|---:|---:|---:|",
    ]
    for a in archs:
        lines.append(
            f"| {a['label']} | {a['cost']['params']:,.0f} | {a['cost']['flops'] / 1e9:.3f} | "
            f"{_pm(a['metrics']['mAP'])} | {_pm(a['metrics'].get('AP50'))} |"
        )
    pairs = {(p["a"], p["b"]): p for p in summary.get("pairs", [])}
    if pairs:
        lines += ["", "| a | b | mAP a − b (points) | t | p |", "|---|---|---:|---:|---:|"]
        for p in pairs.values():
            t = "-" if p.get("t") is None else f"{p['t']:.2f}"
            pv = "-" if p.get("p") is None else f"{p['p']:.3f}"
            sd = "" if p.get("std") is None else f" ± {p['std'] * 100:.1f}"
            lines.append(f"| {p['a']} | {p['b']} | {p['mean'] * 100:+.1f}{sd} | {t} | {pv} |")
    base = next(a for a in archs if a["label"] == first)
    lines.append("")
    judged = [(base, a) for a in archs if a is not base]
    by_label = {a["label"]: a for a in archs}
    judged += [(by_label[b], by_label[a]) for b, a in also if b in by_label and a in by_label]
    for b, a in judged:
        pair = pairs.get((b["label"], a["label"])) or pairs.get((a["label"], b["label"]))
        lines.append(f"Verdict: **{verdict(b, a, pair)}**.  ")
    budget = summary["budget"]
    lines.append(
        f"Budget: {budget['train'].get('epochs')} epochs, batch {budget['train'].get('batch_size')}"
        f", seeds {', '.join(str(s) for s in seeds)} (`nasdet compare`, out "
        f"`{summary['out']}`)."
    )
    return "\n".join(lines)


def compare_fragment(intro: str, summary: dict[str, Any], first: str, command: str) -> str:
    """A compare part's whole fragment: ``intro`` (what is compared), the tables and verdicts of
    :func:`compare_markdown` against ``first``, the command and the machine."""
    return "\n".join(
        [
            intro,
            "",
            compare_markdown(summary, first=first),
            "",
            f"Command: `{command}`  ",
            f"Machine: {machine_line()}",
        ]
    )
