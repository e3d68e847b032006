"""The command line: every command works, and user mistakes end in one line with exit 2."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml
from conftest import tiny_config

from nasdet.cli import main
from nasdet.config import load_config
from nasdet.methods import TrainConfig, load_run_config


def _err_line(capsys: pytest.CaptureFixture[str]) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert err, "expected an error line on stderr"
    return err[-1]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("train:\n  lrr: 0.1\n", "train.lrr: unknown key — did you mean 'lr'?"),
        (
            "model:\n  backbone: {width_mult: -1}\n",
            "model.backbone.width_mult: Input should be greater than 0 (got -1)",
        ),
        ("model: {detector: yolo}\n", "model.detector: Input should be 'fasterrcnn'"),
        ("data: {format: coco}\n", "data.train_ann: required key is missing"),
        ("data: {format: cooc}\n", "data.format: unknown format 'cooc'"),
        ("train: [1, 2\n", "not valid YAML"),
        ("- a\n- b\n", "the top level must be a mapping"),
    ],
)
def test_config_errors_are_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], text: str, expected: str
) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    assert main(["train", str(path), "--out", str(tmp_path / "run")]) == 2
    line = _err_line(capsys)
    assert line.startswith(f"nasdet: error: {path}")
    assert expected in line
    assert "Traceback" not in capsys.readouterr().err


def test_missing_config_and_missing_data(tmp_path: Path, capsys) -> None:
    assert main(["train", str(tmp_path / "nope.yaml")]) == 2
    assert "config file not found" in _err_line(capsys)
    cfg = tmp_path / "coco.yaml"
    cfg.write_text(
        yaml.safe_dump(
            {
                "data": {
                    "format": "coco",
                    "train_ann": str(tmp_path / "a.json"),
                    "train_images": str(tmp_path),
                    "val_ann": str(tmp_path / "b.json"),
                    "val_images": str(tmp_path),
                }
            }
        )
    )
    assert main(["train", str(cfg), "--out", str(tmp_path / "run")]) == 2
    line = _err_line(capsys)
    assert "a.json" in line and "nasdet data check" in line


def test_shipped_configs_validate() -> None:
    root = Path(__file__).resolve().parents[1] / "configs"
    configs = sorted(root.rglob("*.yaml"))
    assert configs
    for path in configs:
        if "method" in yaml.safe_load(path.read_text()) or path.name.startswith("spnas"):
            load_run_config(path)
        else:
            load_config(path, TrainConfig)


def test_train_then_evaluate_model_file(digits_root: Path, tmp_path: Path, capsys) -> None:
    cfg = tmp_path / "tiny.yaml"
    cfg.write_text(yaml.safe_dump(tiny_config(digits_root, epochs=1)))
    out = tmp_path / "run"
    assert main(["-q", "train", str(cfg), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert str(out / "model.pt") in printed
    metrics = json.loads((out / "metrics.json").read_text())["metrics"]
    # evaluating the saved model from the CLI reproduces the training run's val metrics
    ann = digits_root / "annotations" / "instances_val.json"
    assert (
        main(
            [
                "-q",
                "evaluate",
                "--gt",
                str(ann),
                "--model",
                str(out / "model.pt"),
                "--images",
                str(digits_root / "images"),
                "--json",
            ]
        )
        == 0
    )
    stats = json.loads(capsys.readouterr().out)
    assert stats == pytest.approx(metrics, abs=1e-9)


def test_evaluate_results_file_json_keys(tmp_path: Path, capsys) -> None:
    gt = {
        "images": [{"id": 1, "width": 100, "height": 100, "file_name": "a.png"}],
        "annotations": [
            {
                "id": 1,
                "image_id": 1,
                "category_id": 7,
                "bbox": [10, 10, 40, 40],
                "area": 1600,
                "iscrowd": 0,
            }
        ],
        "categories": [{"id": 7, "name": "seven"}],
    }
    dt = [{"image_id": 1, "category_id": 7, "bbox": [10, 10, 40, 40], "score": 0.9}]
    (tmp_path / "gt.json").write_text(json.dumps(gt))
    (tmp_path / "dt.json").write_text(json.dumps(dt))
    assert (
        main(
            [
                "evaluate",
                "--gt",
                str(tmp_path / "gt.json"),
                "--dt",
                str(tmp_path / "dt.json"),
                "--json",
            ]
        )
        == 0
    )
    stats = json.loads(capsys.readouterr().out)
    assert list(stats) == [
        "mAP",
        "AP50",
        "AP75",
        "AP_small",
        "AP_medium",
        "AP_large",
        "AR1",
        "AR10",
        "AR100",
        "AR_small",
        "AR_medium",
        "AR_large",
    ]
    assert stats["mAP"] == pytest.approx(1.0)
    assert stats["AP_small"] == -1.0  # no small ground truth: pycocotools' -1
    (tmp_path / "dt.json").write_text("[{")
    assert (
        main(["evaluate", "--gt", str(tmp_path / "gt.json"), "--dt", str(tmp_path / "dt.json")])
        == 2
    )
    assert "dt.json" in _err_line(capsys)


def test_cost_torchvision_and_config(capsys) -> None:
    assert main(["cost", "--model", "torchvision:resnet18", "--input", "3x224x224", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["params"] == 11_689_512
    assert report["macs"] == report["flops"] // 2
    assert abs(report["macs"] / 1e9 - 1.814) / 1.814 < 0.01
    config = Path(__file__).resolve().parents[1] / "configs" / "baseline_digits.yaml"
    assert main(["cost", str(config), "--json"]) == 0
    det = json.loads(capsys.readouterr().out)
    assert det["input"] == "3x128x128"
    assert 0 < det["backbone_macs"] < det["macs"]
    assert main(["cost", "--model", "torchvision:resnet81"]) == 2
    assert "resnet18" in _err_line(capsys)
    assert main(["cost", "--model", "torchvision:resnet18", "--input", "224x224"]) == 2
    assert "224x224" in _err_line(capsys)


def test_data_digits_and_check(tmp_path: Path, capsys) -> None:
    out = tmp_path / "digits"
    assert (
        main(["data", "digits", "--out", str(out), "--train", "6", "--val", "3", "--size", "64"])
        == 0
    )
    ann = out / "annotations" / "instances_train.json"
    assert main(["data", "check", "--coco", str(ann), "--images", str(out / "images")]) == 0
    capsys.readouterr()
    # break it: a box with zero width and an annotation on an unknown image
    data = json.loads(ann.read_text())
    data["annotations"][0]["bbox"][2] = 0
    data["annotations"][1]["image_id"] = 999
    ann.write_text(json.dumps(data))
    assert main(["data", "check", "--coco", str(ann), "--images", str(out / "images")]) == 1
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 2
    assert any("999" in line for line in lines)
    assert all(str(ann.name) in line for line in lines)


def test_load_model_is_exported() -> None:
    import nasdet

    assert callable(nasdet.load_model)
    assert torch.__version__.startswith("2.14.1")
