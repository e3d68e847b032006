"""Every recipe in configs/recipes/ (a paper's or a peer tool's full setup: GPU-sized) parses,
builds its model, and runs each of its steps for a few iterations on a tiny stand-in written in
the recipe's dataset layout (COCO or Pascal VOC: a few bundled digits images exported to it).

The shrinking keeps the recipe's network and step settings and changes only paths and what sizes
the run: the input side (at most 128 px), the data (8 training images, half of them held out for
the search where the recipe holds some out; batch 2: 2 iterations an epoch; for the COCO Faster
R-CNN recipes 64 px, 4 images, batch 1), epochs (1), the search budget, the device (CPU), and
the files a recipe starts from (a classification set: 10 digits of 32 px per split;
torchvision's R50-FPN COCO checkpoint: random values in its exact key structure). What changes
per method is in :data:`SHRINK`."""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml
from PIL import Image
from test_data_voc import xml_text

from nasdet.build import build_detector
from nasdet.cli import main
from nasdet.data import VOC_CLASSES, make_digits, make_digits_classification
from nasdet.methods import load_run_config
from nasdet.search.records import RecordStore

RECIPES = sorted((Path(__file__).resolve().parents[1] / "configs" / "recipes").glob("*.yaml"))


def _coco_stand_in(root: Path, train: int, val: int) -> dict[str, Any]:
    """``train`` and ``val`` digits images of 96 px in COCO layout; the data section's paths."""
    make_digits(root, train=train, val=val, size=96, seed=0)
    ann, images = root / "annotations", str(root / "images")
    return {"train_ann": str(ann / "instances_train.json"), "train_images": images,
            "val_ann": str(ann / "instances_val.json"), "val_images": images}  # fmt: skip


def _voc_stand_in(root: Path, train: int, val: int, train_set: str, val_set: str) -> dict[str, Any]:
    """The same images in Pascal VOC layout (JPEGImages/, Annotations/, ImageSets/Main/), digit d
    named as VOC class d; the data section's root."""
    coco = root.parent / "coco_export"
    _coco_stand_in(coco, train, val)
    for sub in ("Annotations", "JPEGImages", "ImageSets/Main"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    for split, image_set in (("train", train_set), ("val", val_set)):
        data = json.loads((coco / "annotations" / f"instances_{split}.json").read_text())
        names = {c["id"]: VOC_CLASSES[int(c["name"])] for c in data["categories"]}
        ids = []
        for img in data["images"]:
            voc_id = f"{split}_{img['id']:06d}"
            ids.append(voc_id)
            Image.open(coco / "images" / img["file_name"]).convert("RGB").save(
                root / "JPEGImages" / f"{voc_id}.jpg", quality=95
            )
            objects = [
                (names[a["category_id"]], round(a["bbox"][0]) + 1, round(a["bbox"][1]) + 1,
                 round(a["bbox"][0] + a["bbox"][2]), round(a["bbox"][1] + a["bbox"][3]), 0)
                for a in data["annotations"] if a["image_id"] == img["id"]
            ]  # fmt: skip
            xml = xml_text(f"{voc_id}.jpg", (img["width"], img["height"]), objects)
            (root / "Annotations" / f"{voc_id}.xml").write_text(xml)
        (root / "ImageSets" / "Main" / f"{image_set}.txt").write_text("\n".join(ids) + "\n")
    return {"root": str(root)}


def _classification_stand_in(root: Path) -> str:
    """An ImageFolder of 10 train and 10 val digits of 32 px (a batch of 5: 2 iterations)."""
    make_digits_classification(root, per_class_train=1, per_class_val=1, size=32, seed=0)
    return str(root)


_LEGACY = (  # torchvision >= 0.13 names -> the checkpoint's (pattern, replacement)
    (re.compile(r"^backbone\.fpn\.(inner|layer)_blocks\.(\d)\.0\."), r"backbone.fpn.\1_blocks.\2."),
    (re.compile(r"^rpn\.head\.conv\.0\.0\."), "rpn.head.conv."),
)


def _torchvision_r50_fpn_coco(path: Path) -> str:
    """A file with the exact structure of torchvision's fasterrcnn_resnet50_fpn_coco-258fb6c6.pth
    (a bare state dict, frozen BN without num_batches_tracked, the pre-0.13 FPN and RPN names,
    91 classes) holding random values."""
    from test_convert import _frozen_random_norms
    from torchvision.models.detection import fasterrcnn_resnet50_fpn

    torch.manual_seed(0)
    model = fasterrcnn_resnet50_fpn(weights=None, weights_backbone=None)
    _frozen_random_norms(model)
    state = {}
    for key, value in model.state_dict().items():
        for pattern, legacy in _LEGACY:
            key = pattern.sub(legacy, key)
        state[key] = value
    torch.save(state, path)
    return str(path)


def _tiny_inputs(raw: dict[str, Any]) -> None:
    """For a detector on COCO's 800 x 1333 (a CPU minute per step at 128 px): 64 px, 4
    training images (2 held out where the recipe holds some out) and 2 val images, batch 1;
    cost limits measured at 64 px."""
    raw["model"].update({"min_size": 64, "max_size": 64})
    raw["train"]["batch_size"] = 1
    raw["data"]["stand_in"] = (4, 2)
    for section in raw.values():
        constraints = section.get("constraints") if isinstance(section, dict) else None
        if isinstance(constraints, dict) and constraints.get("input_size"):
            constraints["input_size"] = 64


def _spnas(raw: dict[str, Any], tmp: Path) -> dict[str, Any]:
    """Every step once: 1 serial and 1 parallel candidate, 1 reignition; 1 epoch each."""
    _tiny_inputs(raw)
    s = raw["search"]
    s.update({"epochs": 1, "fully_train_epochs": 1, "executor": "inprocess", "workers": None,
              "max_reignite": min(s.get("max_reignite", 2), 1)})  # fmt: skip
    if "reignition" in raw.get("pipeline", raw):
        s["classification_data"] = _classification_stand_in(tmp / "cls")
        s.update({"reignition_epochs": 1, "reignition_batch_size": 5, "reignition_image_size": 32})
    for name in ("fine_tune", "serial", "reignition", "parallel", "fully_train"):
        step = raw.get(name) or {}
        if step.get("trainer", {}).get("epochs"):
            step["trainer"]["epochs"] = 1
        if step.get("search_algorithm"):
            step["search_algorithm"]["max_sample"] = 1
    model = (raw.get("fine_tune") or {}).get("model", {})
    if model.get("model_desc", {}).get("convert_pretrained"):
        model["pretrained_model_file"] = _torchvision_r50_fpn_coco(tmp / "r50_fpn_coco.pth")
    return raw


def _detnas(raw: dict[str, Any], tmp: Path) -> dict[str, Any]:
    """Pre-training and training 1 epoch each; a search of 2 candidates for 1 generation."""
    _tiny_inputs(raw)
    pre = raw.get("supernet_pretrain")
    if pre:
        pre.update({"epochs": 1, "batch_size": 5, "image_size": 32,
                    "data": _classification_stand_in(tmp / "cls")})  # fmt: skip
    if raw.get("supernet_train"):
        raw["supernet_train"]["epochs"] = 1
    es = raw["evolution_search"]
    es.update({"num_candidates": 2, "top_k": 1, "num_mutation": 1, "num_crossover": 1,
               "max_epochs": 1, "calibrate_samples": 2})  # fmt: skip
    sub = raw["subnet_train"]
    sub.update({k: 1 for k in ("pretrain_epochs", "epochs") if sub.get(k)})
    return raw


def _ofa(raw: dict[str, Any], tmp: Path) -> dict[str, Any]:
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


def _latency(raw: dict[str, Any], tmp: Path) -> dict[str, Any]:
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


SHRINK: dict[str, Callable[[dict[str, Any], Path], dict[str, Any]]] = {
    "ofa": _ofa,
    "latency": _latency,
    "spnas": _spnas,
    "detnas": _detnas,
}


def test_every_method_with_recipes_has_a_shrink() -> None:
    for path in RECIPES:
        method = yaml.safe_load(path.read_text()).get("method", "spnas")
        assert method in SHRINK, f"{path.name}: add how to shrink a {method} recipe to SHRINK"


@pytest.mark.parametrize("path", RECIPES, ids=[p.stem for p in RECIPES])
def test_recipe_parses_builds_and_runs(path: Path, tmp_path: Path) -> None:
    cfg = load_run_config(path)  # as shipped
    build_detector(cfg.model, 21, load_weights=False)
    raw = yaml.safe_load(path.read_text())
    raw["train"].update({"epochs": 1, "batch_size": 2, "device": "cpu", "tensorboard": False,
                         "warmup_iters": 1})  # fmt: skip
    raw = SHRINK[raw.get("method", "spnas")](raw, tmp_path)
    data = raw["data"]
    train, val = data.pop("stand_in", (8, 4))
    if data.get("search_fraction"):
        data["search_fraction"] = 0.5
    data["num_workers"] = 0
    if data["format"] == "coco":
        data.update(_coco_stand_in(tmp_path / "coco", train, val))
    elif data["format"] == "voc":
        sets = data.get("train_set", "train"), data.get("val_set", "val")
        data.update(_voc_stand_in(tmp_path / "voc", train, val, *sets))
    else:
        raise AssertionError(f"{path.name}: a recipe is for COCO or VOC data, not {data['format']}")
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


def test_coco_checkpoint_keeps_the_rows_of_the_data_categories() -> None:
    """The SP-NAS recipe's start keeps its trained head: torchvision's 91 COCO slots are cut down
    to a COCO set's categories by id (label i + 1 <- category cat_ids[i]; background stays 0)."""
    from types import SimpleNamespace

    from torchvision.models.detection.faster_rcnn import FastRCNNPredictor

    from nasdet.methods.spnas.convert import keep_coco_classes

    torch.manual_seed(0)
    full = FastRCNNPredictor(16, 91)
    model = SimpleNamespace(roi_heads=SimpleNamespace(box_predictor=full))
    assert keep_coco_classes(model, [1, 3, 90])  # type: ignore[arg-type]
    cut = model.roi_heads.box_predictor
    assert cut.cls_score.out_features == 4 and cut.bbox_pred.out_features == 16
    for label, slot in enumerate([0, 1, 3, 90]):
        assert torch.equal(cut.cls_score.weight[label], full.cls_score.weight[slot])
        assert torch.equal(cut.bbox_pred.bias[4 * label : 4 * label + 4],
                           full.bbox_pred.bias[4 * slot : 4 * slot + 4])  # fmt: skip
    assert not keep_coco_classes(model, [1, 3])  # no longer torchvision's 91-slot layout
    other = SimpleNamespace(roi_heads=SimpleNamespace(box_predictor=FastRCNNPredictor(16, 91)))
    assert not keep_coco_classes(other, [1, 91])  # type: ignore[arg-type]  # 91 has no slot
