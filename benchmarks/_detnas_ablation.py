"""The DetNAS ranking ablation (``detnas_digits.py --parts ablation``): which supernet training or
scoring change lifts Kendall tau between supernet-estimated and stand-alone mAP.

Each variant trains the supernet of the benchmark's config with one change (``nasdet run
--steps supernet_train`` into ``<runs>/detnas_ablation/<variant>``, resumable), scores the
ranking part's architectures on it (BN recalibrated; cached in ``scores.json``) and is compared
with the stand-alone mAP (mean over the stand-alone seeds).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from nasdet.methods import load_run_config
from nasdet.methods.detnas.scoring import score_subnet
from nasdet.methods.detnas.space import ShuffleNetCode
from nasdet.pipeline import run_pipeline


@dataclass(frozen=True)
class Variant:
    """One ablation arm: ``supernet_train`` keys changed from the config (``epochs_factor``
    multiplies its epochs); ``reuse``: score the supernet of that variant instead of training
    one; ``calibrate_factor`` multiplies the BN recalibration images; ``splits``: the images
    the supernet estimate is measured on (the image-weighted mean of the splits' mAP)."""

    name: str
    text: str
    supernet_train: dict[str, Any] = field(default_factory=dict)
    epochs_factor: int = 1
    reuse: str | None = None
    calibrate_factor: int = 1
    splits: tuple[str, ...] = ("search",)


VARIANTS = (
    Variant("uniform", "SPOS, one uniform path per step (the config as it is)"),
    Variant(
        "strict_fair", "FairNAS strict fairness, 4 forwards per step", {"sampling": "strict_fair"}
    ),
    Variant(
        "sandwich",
        "largest + smallest + 2 random paths per step",
        {"sampling": "sandwich", "num_random": 2},
    ),
    Variant(
        "sandwich_distill",
        "sandwich + in-place distillation from the largest",
        {"sampling": "sandwich", "num_random": 2, "distill": True},
    ),
    Variant("uniform_2x_epochs", "uniform, twice the supernet epochs", epochs_factor=2),
    Variant(
        "more_images",
        "the uniform supernet, 8x the BN recalibration images, scored on search + val",
        reuse="uniform",
        calibrate_factor=8,
        splits=("search", "val"),
    ),
)


def variant_config(cfg: Any, variant: Variant) -> Any:
    """The benchmark's run config with the variant's supernet_train keys, supernet_train only."""
    raw = cfg.model_dump(mode="json")
    section = {**raw["supernet_train"], **variant.supernet_train}
    section["epochs"] = (section["epochs"] or cfg.train.epochs) * variant.epochs_factor
    raw.update(supernet_train=section, pipeline=["supernet_train"])
    return type(cfg).model_validate(raw)


def supernet(
    cfg: Any, variant: Variant, runs: Path, pipeline_run: Path
) -> tuple[Path, tuple[float, int | None]]:
    """The variant's trained supernet (trained here unless done) and its training minutes with
    the torch threads it trained with (NaN, None: not trained here). The uniform variant reuses
    the ``pipeline`` part's supernet when that run has the same config."""
    if variant.reuse is not None:
        return supernet(cfg, _by_name(variant.reuse), runs, pipeline_run)
    vcfg = variant_config(cfg, variant)
    same = pipeline_run / "output" / "supernet_train" / "supernet.pth"
    if not variant.supernet_train and variant.epochs_factor == 1 and same.is_file():
        stored = load_run_config(pipeline_run / "config.yaml").model_dump(mode="json")
        mine = cfg.model_dump(mode="json")
        if {**stored, "pipeline": None} == {**mine, "pipeline": None}:
            return same, (float("nan"), None)
    out = runs / "detnas_ablation" / variant.name
    timing = out / "train_time.json"
    start = time.perf_counter()
    run_pipeline(vcfg, out)
    if not timing.is_file():
        minutes = (time.perf_counter() - start) / 60
        timing.write_text(json.dumps({"minutes": minutes, "threads": torch.get_num_threads()}))
    took = json.loads(timing.read_text())
    return out / "output" / "supernet_train" / "supernet.pth", (
        took["minutes"],
        took.get("threads"),
    )


def _by_name(name: str) -> Variant:
    return next(v for v in VARIANTS if v.name == name)


def estimates(
    cfg: Any, variant: Variant, supernet_path: Path, codes: list[ShuffleNetCode], out: Path
) -> dict[str, float]:
    """Supernet-estimated mAP of each code (cached in ``out/scores.json``)."""
    from nasdet.methods.detnas.steps import base_config

    cache = out / "scores.json"
    scores = json.loads(cache.read_text()) if cache.is_file() else {}
    step = cfg.evolution_search
    sizes = _split_sizes(cfg)
    for code in codes:
        if str(code) in scores:
            continue
        res = score_subnet({
            "supernet": str(supernet_path), "config": base_config(cfg), "genotype": str(code),
            "bn_mode": step.bn_mode, "calibrate_samples": step.calibrate_samples
            * variant.calibrate_factor, "splits": list(variant.splits),
        })  # fmt: skip
        per = res["per_split"]
        weights = [sizes[s] for s in variant.splits]
        scores[str(code)] = sum(
            per[s]["mAP"] * w for s, w in zip(variant.splits, weights, strict=True)
        ) / sum(weights)
        out.mkdir(parents=True, exist_ok=True)
        cache.write_text(json.dumps(scores, indent=1))
    return {str(c): scores[str(c)] for c in codes}


def _split_sizes(cfg: Any) -> dict[str, int]:
    from nasdet.build import build_datasets

    data = build_datasets(cfg.data, seed=cfg.seed)
    return {"search": len(data.search) if data.search is not None else 0, "val": len(data.val)}


def run_ablation(
    cfg: Any,
    codes: list[ShuffleNetCode],
    standalone_map: dict[str, float],
    runs: Path,
    pipeline_run: Path,
    names: list[str],
    tau: Callable[[list[float], list[float]], float],
) -> list[dict[str, Any]]:
    """Train, score and rank every variant named; one row per variant."""
    rows = []
    for variant in (_by_name(n) for n in names):
        path, (minutes, threads) = supernet(cfg, variant, runs, pipeline_run)
        est = estimates(cfg, variant, path, codes, runs / "detnas_ablation" / variant.name)
        xs = [est[str(c)] for c in codes]
        ys = [standalone_map[str(c)] for c in codes]
        rows.append({"variant": variant.name, "text": variant.text, "reuse": variant.reuse,
                     "minutes": minutes, "threads": threads, "tau": tau(xs, ys),
                     "estimates": est})  # fmt: skip
    return rows


def markdown(
    rows: list[dict[str, Any]],
    n_codes: int,
    seeds: list[int],
    epochs: int,
    seed_tau: float | None = None,
) -> str:
    """The ablation table; ``seed_tau``: the stand-alone seeds' tau against each other."""
    noise = (
        f" The reference's own noise: the first two seeds rank the same nets at tau "
        f"{seed_tau:.2f} against each other."
        if seed_tau is not None
        else ""
    )
    lines = [
        f"**Ranking ablation**: Kendall tau between the supernet-estimated mAP and the stand-alone "
        f"mAP ({epochs} epochs from scratch, mean of seeds {', '.join(map(str, seeds))}) over "
        f"{n_codes} architectures.{noise}",
        "",
        "| variant | what changes | supernet training (min, torch threads) | Kendall tau |",
        "|---|---|---:|---:|",
    ]
    for r in rows:
        if r["reuse"]:
            minutes = f"({r['reuse']}'s supernet)"
        elif r["minutes"] != r["minutes"]:
            minutes = "(the pipeline's supernet)"
        else:
            threads = r.get("threads")
            minutes = f"{r['minutes']:.1f}" + (f" ({threads} thread{'s' * (threads != 1)})"
                                               if threads else "")  # fmt: skip
        tau = f"{r['tau']:.2f}"
        if r["tau"] != r["tau"]:  # NaN: no order to compare
            same = set(r["estimates"].values())
            tau = f"n/a (every estimate {same.pop():.3f})" if len(same) == 1 else "n/a (ties)"
        lines.append(f"| `{r['variant']}` | {r['text']} | {minutes} | {tau} |")
    return "\n".join(lines)


def names_of(text: str) -> list[str]:
    """The variants of a comma-separated list (``all``: every one), in table order."""
    known = [v.name for v in VARIANTS]
    if text == "all":
        return known
    names = [n.strip() for n in text.split(",") if n.strip()]
    unknown = [n for n in names if n not in known]
    if unknown:
        raise SystemExit(f"--variants: unknown {', '.join(unknown)} (known: {', '.join(known)})")
    return names
