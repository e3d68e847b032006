"""Named reference detectors (``nasdet:NAME``): the table, their structure, and ``nasdet cost``."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn
from torchvision.models import get_model_weights

from nasdet.cli import main
from nasdet.cost import count_params, is_detector
from nasdet.errors import ConfigError
from nasdet.models.backbone import ShapeSpec
from nasdet.models.named import NAMED, build_named, default_input_size, list_named

YOLOV3_81_CLASSES = 61_949_149  # darknet's yolov3.cfg (80 classes + background); see test_yolov3


def test_table_lists_every_builder() -> None:
    assert list_named() == sorted(NAMED)
    assert {"yolov3_darknet53", "yolov3_mobilenetv2", "ssd_mobilenetv2"} <= set(NAMED)
    assert default_input_size("ssd_mobilenetv2") == 320
    with pytest.raises(ConfigError, match="known are retinanet_resnet50_fpn, ssd_mobilenetv2"):
        build_named("nasdet:yolo")


@pytest.mark.parametrize("name", sorted(NAMED))
def test_named_builds_are_detectors(name: str) -> None:
    with torch.device("meta"):  # structure and parameter counts only
        model = build_named(name, num_classes=5)
    assert is_detector(model)
    assert model.transform.min_size == (default_input_size(name),)


def test_named_structures() -> None:
    with torch.device("meta"):
        yolo_mnv2 = build_named("yolov3_mobilenetv2")
        ssd = build_named("ssd_mobilenetv2")
        retina = build_named("retinanet_resnet50_fpn")
    # MMDetection's yolov3_mobilenetv2: MobileNetV2 out_indices (2, 4, 6), neck/head widths 96
    assert yolo_mnv2.backbone.feature_info == [
        ShapeSpec(32, 8),
        ShapeSpec(96, 16),
        ShapeSpec(320, 32),
    ]
    assert yolo_mnv2.neck.out_channels == [96, 96, 96]
    # MMDetection's ssdlite_mobilenetv2: levels 96 (stride 16), 1280 (32), extras 512..128
    assert [s.channels for s in ssd.backbone.feature_info] == [96, 1280, 512, 256, 256, 128]
    assert [s.stride for s in ssd.backbone.feature_info] == [16, 32, 64, 128, 256, 512]
    depthwise = [m for m in ssd.backbone.extras.modules() if isinstance(m, nn.Conv2d)][1]
    assert depthwise.groups == depthwise.in_channels  # SSDLite's depthwise extras
    # torchvision's metadata counts FrozenBatchNorm2d (buffers); weights=None builds BatchNorm2d
    bn_affine = sum(
        m.weight.numel() + m.bias.numel() for m in retina.modules() if isinstance(m, nn.BatchNorm2d)
    )
    meta = get_model_weights("retinanet_resnet50_fpn").DEFAULT.meta
    assert count_params(retina) - bn_affine == meta["num_params"]


def test_cost_of_named_yolov3(capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["cost", "--model", "nasdet:yolov3_darknet53", "--num-classes", "80"]
    assert main([*argv, "--input", "3x416x416", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["params"] == pytest.approx(61.9e6, abs=0.05e6)
    # 80 classes with the background is 79 object classes: one class map fewer per anchor than
    # darknet's 80-class model (3 anchors x (1024 + 512 + 256) weights + 3 biases per scale)
    assert report["params"] == YOLOV3_81_CLASSES - 3 * (1024 + 512 + 256) - 3 * 3
    assert report["model_input_size"] == [416, 416]
    assert report["flops"] == pytest.approx(65.9e9, rel=0.01)
    assert 0 < report["backbone_flops"] < report["flops"]


def test_cost_named_mistakes(capsys: pytest.CaptureFixture[str]) -> None:
    def err() -> str:
        return capsys.readouterr().err.strip().splitlines()[-1]

    assert main(["cost", "--model", "nasdet:yolov4"]) == 2
    assert "known are retinanet_resnet50_fpn, ssd_mobilenetv2, yolov3_darknet53" in err()
    assert main(["cost", "--model", "nasdet:ssd_mobilenetv2", "--input", "3x320x240"]) == 2
    assert "square" in err()
    assert main(["cost", "--model", "runs/model.pt", "--num-classes", "3"]) == 2
    assert "--num-classes is for" in err()


def test_cost_num_classes_reaches_torchvision_builders(capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["cost", "--model", "torchvision:resnet18", "--num-classes", "10", "--input", "3x64x64"]
    assert main([*argv, "--json"]) == 0
    # resnet18's 1000-way fc (512 x 1000 + 1000) becomes 10-way
    assert json.loads(capsys.readouterr().out)["params"] == 11_689_512 - 990 * 513
