"""Baseline detectors on the bundled digits: mAP, AP50, params, FLOPs, training minutes.

Trains each config with `nasdet train` semantics (``nasdet.training.train_step``), measures its
cost with ``nasdet.cost.detector_cost`` at the config's input size, and keeps one row per config
in ``--results`` (JSON) so configs can be run one at a time; the table is rebuilt from all rows.
Target: the small baseline (configs/baseline_digits.yaml, 12 epochs) reaches mAP >= 0.40 on the
val split within 10 minutes of 2-core CPU training.

    python benchmarks/baselines.py --only baseline_digits --out docs/benchmarks/baselines.md
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
from _common import machine_line, write_fragment

from nasdet.build import build_detector, num_classes
from nasdet.config import load_config
from nasdet.cost import detector_cost
from nasdet.methods import TrainConfig
from nasdet.training import train_step

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = {
    "baseline_digits": ROOT / "configs" / "baseline_digits.yaml",
    "fcos_r18_20ep": ROOT / "configs" / "baselines" / "fcos_r18_20ep_digits.yaml",
    "retinanet_r18": ROOT / "configs" / "baselines" / "retinanet_r18_digits.yaml",
    "ssdlite_mnv3": ROOT / "configs" / "baselines" / "ssdlite_mnv3_digits.yaml",
    "fcos_shufflenet": ROOT / "configs" / "baselines" / "fcos_shufflenet_digits.yaml",
    "fasterrcnn_r18": ROOT / "configs" / "baselines" / "fasterrcnn_r18_digits.yaml",
}


def run_one(name: str, config: Path, runs: Path) -> dict:
    cfg = load_config(config, TrainConfig)
    size = (cfg.model.min_size, cfg.model.min_size)
    cost = detector_cost(build_detector(cfg.model, num_classes(cfg.data), load_weights=False), size)
    start = time.perf_counter()
    result = train_step(cfg, runs / name)
    wall = time.perf_counter() - start
    return {
        "name": name,
        "config": str(config.relative_to(ROOT)),
        "detector": cfg.model.detector,
        "backbone": f"{cfg.model.backbone.name} x{cfg.model.backbone.width_mult}",
        "epochs": cfg.train.epochs,
        "params": cost.params,
        "gmacs": cost.macs / 1e9,
        "backbone_gmacs": cost.backbone_macs / 1e9,
        "input": f"{size[0]}x{size[1]}",
        "train_minutes": result.train_seconds / 60,
        "wall_minutes": wall / 60,
        "mAP": result.metrics["mAP"],
        "AP50": result.metrics["AP50"],
        "machine": machine_line(),
    }


def table(rows: list[dict]) -> str:
    lines = [
        "| config | detector | backbone | params | GMACs (detector / backbone) | epochs "
        "| train min | mAP | AP50 |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| `{r['config']}` | {r['detector']} | {r['backbone']} | {r['params']:,} "
            f"| {r['gmacs']:.3f} / {r['backbone_gmacs']:.3f} | {r['epochs']} "
            f"| {r['train_minutes']:.1f} | {r['mAP']:.3f} | {r['AP50']:.3f} |"
        )
    machines = sorted({r["machine"] for r in rows})
    return "\n".join(
        [
            "Bundled digits (`nasdet data digits` defaults: 3000 train / 500 val images, 128 px), "
            "val split; GMACs at the input size (128x128); 'train min' is the time spent in "
            "training epochs (evaluation excluded), on the CPU.",
            "",
            *lines,
            "",
            "Command: `python benchmarks/baselines.py` (one row per config; `--only NAME` runs one)"
            "  ",
            *[f"Machine: {m}" for m in machines],
        ]
    )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--only", nargs="+", choices=sorted(CONFIGS), help="run only these configs")
    p.add_argument("--runs", type=Path, default=ROOT / "runs" / "benchmarks")
    p.add_argument("--results", type=Path, default=ROOT / "docs" / "benchmarks" / "baselines.json")
    p.add_argument("--out", type=Path, help="write the markdown table here")
    args = p.parse_args()
    torch.manual_seed(0)
    rows = json.loads(args.results.read_text()) if args.results.is_file() else []
    for name in args.only or list(CONFIGS):
        row = run_one(name, CONFIGS[name], args.runs)
        rows = [r for r in rows if r["name"] != name] + [row]
        rows.sort(key=lambda r: list(CONFIGS).index(r["name"]))
        args.results.parent.mkdir(parents=True, exist_ok=True)
        args.results.write_text(json.dumps(rows, indent=2) + "\n")
        print(table(rows))
        if args.out:
            write_fragment(args.out, table(rows))


if __name__ == "__main__":
    main()
