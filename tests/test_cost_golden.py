"""Golden tests: our params and MACs equal torchvision's weight metadata.

torchvision's ``meta["_ops"]`` is documented as "GFLOPS" but counts one op per multiply-accumulate
of convolutions and matmuls (its script in ``test/common_extended_utils.py``), i.e. GMACs in
nasdet's units: ``FlopCounterMode`` FLOPs / 2 match it, FLOPs themselves are 2x larger.

Classifiers are measured on 1x3x224x224. torchvision measured detectors whole, in eval mode, on one
image of their curated size (ssdlite320: a 3x320x320 image through transform, backbone, head and
postprocess); the transform and postprocess add no counted ops, so ``detector_cost(m, (320, 320))``
is the same measurement.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torchvision.models import get_model_weights

from nasdet.cost import DetectorCost, count_flops, count_params, detector_cost, torchvision_model

REL_TOL = 0.01
CLASSIFIERS = ["resnet18", "resnet50", "mobilenet_v2", "mobilenet_v3_large", "shufflenet_v2_x1_0"]


def _meta(name: str) -> dict:
    return get_model_weights(name).DEFAULT.meta


@pytest.mark.parametrize("name", CLASSIFIERS)
def test_classifier_matches_torchvision_metadata(name: str) -> None:
    model = torchvision_model(name)
    meta = _meta(name)
    assert count_params(model) == meta["num_params"]
    cost = count_flops(model, torch.rand(1, 3, 224, 224))
    assert cost.gmacs == pytest.approx(meta["_ops"], rel=REL_TOL)
    # "_ops" are MACs, not FLOPs: the FLOP count is twice as large
    assert cost.gflops == pytest.approx(2 * meta["_ops"], rel=REL_TOL)


SSDLITE = "ssdlite320_mobilenet_v3_large"


@pytest.fixture(scope="module")
def ssdlite() -> nn.Module:
    return torchvision_model(SSDLITE)


@pytest.fixture(scope="module")
def ssdlite_cost_320(ssdlite: nn.Module) -> DetectorCost:
    return detector_cost(ssdlite, (320, 320))


def test_ssdlite_matches_torchvision_metadata(
    ssdlite: nn.Module, ssdlite_cost_320: DetectorCost
) -> None:
    meta = _meta(SSDLITE)
    cost = ssdlite_cost_320
    assert cost.params == meta["num_params"]
    assert cost.macs / 1e9 == pytest.approx(meta["_ops"], rel=REL_TOL)
    assert cost.flops == 2 * cost.macs
    assert cost.model_input_size == (320, 320) and cost.input_size == (320, 320)
    # SSDLite's backbone has no `.body`: the whole feature extractor (MobileNetV3 + extras)
    assert cost.backbone_params == count_params(ssdlite.backbone)
    assert 0 < cost.backbone_macs < cost.macs
    assert cost.backbone_flops == 2 * cost.backbone_macs
    assert ssdlite.training  # restored after the eval-mode measurement


def test_ssdlite_resizes_any_input_to_320(
    ssdlite: nn.Module, ssdlite_cost_320: DetectorCost
) -> None:
    cost = detector_cost(ssdlite, (480, 640))
    assert cost.input_size == (480, 640) and cost.model_input_size == (320, 320)
    assert cost.macs == ssdlite_cost_320.macs


def test_fpn_detector_backbone_is_body_on_transformed_input() -> None:
    model = torchvision_model("fasterrcnn_mobilenet_v3_large_320_fpn")
    cost = detector_cost(model, (240, 320))
    # min_size 320 resizes 240x320 to 320x427, then batching pads to a multiple of 32
    assert cost.model_input_size == (320, 448)
    assert cost.backbone_params == count_params(model.backbone.body)
    body = count_flops(model.backbone.body, torch.rand(1, 3, 320, 448))
    assert cost.backbone_macs == body.macs
    assert cost.params > cost.backbone_params and cost.macs > cost.backbone_macs
    report = cost.as_dict()
    assert report["model_input_size"] == [320, 448] and report["input_size"] == [240, 320]
