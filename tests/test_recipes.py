"""Every recipe in configs/recipes/ (a paper's or a peer tool's full setup: GPU-sized) parses,
builds its model, and runs each of its steps for a few iterations on the bundled digits.

The shrinking keeps the recipe's network and step settings and changes only what sizes the run:
the input side (at most 128 px), the data (8 training digits images, half of them held out for
the search where a step searches; batch 2), epochs (1), the search budget and the device (CPU).
What changes per method is in :data:`SHRINK`."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from nasdet.build import build_detector
from nasdet.cli import main
from nasdet.methods import load_run_config
from nasdet.search.records import RecordStore

RECIPES = sorted((Path(__file__).resolve().parents[1] / "configs" / "recipes").glob("*.yaml"))


def _ofa(raw: dict[str, Any]) -> dict[str, Any]:
    st = raw["supernet_train"]
    st["epochs"] = 1
    st["evaluator_cfg"]["batch_size"] = 2
    st["evaluator_cfg"]["data_portion"] = [0.0, 0.5, 0.5]
    s = raw["search"]
    s["trainer_cfg"] = {"num_epochs": 0, "parallelism": 1}
    s["population_size"] = 2
    s["calibrate_samples"] = 2
    s["constraints"].pop("max_latency_ms", None)
    ft = raw["final_train"]["final_trainer_cfg"]
    ft.update({"batch_size": 2, "epochs": 1})
    return raw


def _baseline_and_minimum(raw: dict[str, Any], side: int, classes: int) -> tuple[float, float]:
    """The LUT cost of the recipe's baseline and of its space's cheapest net at ``side``."""
    from nasdet.methods.latency.config import Model
    from nasdet.methods.latency.latency import build_table
    from nasdet.methods.latency.parts import space_spec

    model = Model.model_validate(raw["model"])
    space = raw.get("space", {})
    spec = space_spec(model.backbone, space.get("multipliers", [0.5]), space.get("skip", True))
    detector = build_detector(
        model.model_copy(update={"backbone": spec}), classes, load_weights=False
    )
    table = build_table(detector, side, raw.get("latency", "mmac"))
    return table.baseline, table.minimum


def _latency(raw: dict[str, Any]) -> dict[str, Any]:
    """This run's own baseline step; 1 epoch per step; at most 128 px, the resolution ranges
    [96, 128]; the target the same fraction of the baseline at 128 px (digits: 10 classes) as
    the recipe's at its size (VOC: 20 classes), checked to be above the space's minimum."""
    search = next(k for k in ("search", "search_with_resolution") if raw.get(k))
    pretrain = next(k for k in ("pretrain", "multiresolution_pretrain") if raw.get(k))
    base, _ = _baseline_and_minimum(raw, raw["model"]["min_size"], 21)
    fraction = raw[search]["target_latency"] / base
    raw["model"].update({"min_size": 128, "max_size": 128})
    raw["baseline"] = {}
    raw[pretrain].update({"baseline_ckpt": None, "epochs": 1})
    raw[search].update({"epochs": 1, "max_extra_epochs": 0, "samples_per_step": 2})
    for section in (raw[pretrain], raw[search]):
        if "resolution_range" in section:
            section["resolution_range"] = [96, 128]
    base, _ = _baseline_and_minimum(raw, 128, 11)
    _, minimum = _baseline_and_minimum(raw, 96, 11)
    raw[search]["target_latency"] = fraction * base
    assert minimum < fraction * base < base, (minimum, fraction * base, base)
    return raw


SHRINK: dict[str, Callable[[dict[str, Any]], dict[str, Any]]] = {"ofa": _ofa, "latency": _latency}


def test_every_method_with_recipes_has_a_shrink() -> None:
    for path in RECIPES:
        method = yaml.safe_load(path.read_text()).get("method", "spnas")
        assert method in SHRINK, f"{path.name}: add how to shrink a {method} recipe to SHRINK"


@pytest.mark.parametrize("path", RECIPES, ids=[p.stem for p in RECIPES])
def test_recipe_parses_builds_and_runs(path: Path, tmp_path: Path) -> None:
    cfg = load_run_config(path)  # as shipped
    build_detector(cfg.model, 21, load_weights=False)
    raw = yaml.safe_load(path.read_text())
    raw = SHRINK[raw.get("method", "spnas")](raw)
    raw["data"] = {"format": "digits", "root": str(tmp_path / "digits"), "train": 8, "val": 4,
                   "size": 96}  # fmt: skip
    raw["train"].update({"epochs": 1, "batch_size": 2, "device": "cpu", "tensorboard": False,
                         "warmup_iters": 1})  # fmt: skip
    raw["eval"] = {"batch_size": 4}
    if raw["model"].get("min_size", 0) > 128:  # the recipe's network at a CPU-sized input
        raw["model"].update({"min_size": 128, "max_size": 128})
        for section in raw.values():
            constraints = section.get("constraints") if isinstance(section, dict) else None
            if isinstance(constraints, dict) and constraints.get("input_size"):
                constraints["input_size"] = 128
    small = tmp_path / path.name
    small.write_text(yaml.safe_dump(raw))
    out = tmp_path / "run"
    assert main(["-q", "run", str(small), "--out", str(out)]) == 0
    store = RecordStore(out / "records.sqlite")
    shrunk = load_run_config(small)
    for step in shrunk.steps:
        assert store.records(step, status="done"), f"{path.name}: step {step} left no record"
