"""`nasdet run` with a latency config end to end for ENOT's other detectors on tiny data: a YOLOv3
(Darknet-53) and a RetinaNet (ResNet-50) baseline through baseline → pretrain → search → tune."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml
from conftest import tiny_config

from nasdet.build import build_detector
from nasdet.cli import main
from nasdet.methods.latency.config import Model
from nasdet.methods.latency.latency import build_table
from nasdet.methods.latency.nets import space_body, to_space_detector
from nasdet.models.io import read_model_file, read_weights
from nasdet.search.records import RecordStore

MODELS = {
    "yolov3_darknet53": {
        "detector": "yolov3",
        "backbone": {"name": "darknet53", "width_mult": 0.125},
        "min_size": 64,
        "max_size": 64,
    },
    "retinanet_resnet50": {
        "detector": "retinanet",
        "backbone": {"name": "resnet50", "width_mult": 0.125},
        "fpn_channels": 16,
        "min_size": 64,
        "max_size": 64,
    },
}


def _target(model: dict) -> float:
    """Halfway between the space's minimum and the baseline's MMAC at 64 px."""
    space = to_space_detector(build_detector(Model.model_validate(model), 11))
    lut = build_table(space, 64, "mmac")
    return (lut.minimum + lut.baseline) / 2


@pytest.mark.parametrize("name", sorted(MODELS))
def test_pipeline_runs_and_meets_the_target(name: str, digits_root: Path, tmp_path: Path) -> None:
    target = _target(MODELS[name])
    cfg = tiny_config(digits_root, epochs=1)
    cfg.update(
        method="latency",
        model=MODELS[name],
        latency="mmac",
        space={"multipliers": [0.5, 0.25]},
        baseline={},
        pretrain={},
        search={"target_latency": target, "epochs": 1, "samples_per_step": 2},
        tune={},
    )
    path = tmp_path / "latency.yaml"
    path.write_text(yaml.safe_dump(cfg))
    out = tmp_path / "run"
    assert main(["-q", "run", str(path), "--out", str(out)]) == 0
    result = json.loads((out / "result.json").read_text())
    assert result["cost"]["latency_lut"] <= target
    store = RecordStore(out / "records.sqlite")
    (tuned,) = store.records("tune", status="done")
    searched = store.records("search", status="done")
    assert searched[0].extra["arch"] == [0] * len(tuned.extra["arch"])  # the baseline first
    meta = read_model_file(out / "output" / "search" / "search_space.pt")["meta"]
    assert tuned.extra["arch"] == meta["searched_arch"]
    # tune started from the chosen variants' weights, cut from the space
    init = read_weights(out / "output" / "tune" / "init_from_space.pt")
    space = read_model_file(out / "output" / "search" / "search_space.pt")["state_dict"]
    body = "backbone." if MODELS[name]["detector"] == "yolov3" else "backbone.body."
    head = [k for k in init if not k.startswith(body)]
    assert head and all(torch.equal(init[k], space[k]) for k in head)
    spacenet = to_space_detector(build_detector(Model.model_validate(MODELS[name]), 11))
    assert len(tuned.extra["arch"]) == len(space_body(spacenet).blocks())
