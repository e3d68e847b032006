"""Unit tests of nasdet.cost: params, exact FLOP/MAC formulas, latency and ONNX structure.

No timing thresholds here: speed targets live in benchmarks/.
"""

from __future__ import annotations

import json
import math
from collections import OrderedDict

import onnx
import pytest
import torch
from torch import Tensor, nn
from torchvision.models.detection import FCOS, fcos_resnet50_fpn
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.backbone_utils import BackboneWithFPN

from nasdet.cost import (
    COST_KEYS,
    FlopCount,
    Latency,
    OnnxMismatchError,
    cost_report,
    count_flops,
    count_params,
    detector_cost,
    export_onnx,
    format_input_size,
    measure_cost,
    measure_latency,
    onnx_latency,
    onnx_runtime,
    parse_input_size,
    torchvision_model,
    training_memory,
)
from nasdet.errors import ConfigError

FAST = 0.05  # seconds of timing: enough for structure checks


class TwoLevel(nn.Module):
    """Tiny backbone honouring the contract: (B, 3, H, W) -> OrderedDict of two feature maps."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, stride=2, padding=1), nn.BatchNorm2d(8))
        self.down = nn.Conv2d(8, 16, 3, stride=2, padding=1)

    def forward(self, x: Tensor) -> OrderedDict[str, Tensor]:
        c1 = torch.relu(self.stem(x))
        return OrderedDict([("0", c1), ("1", self.down(c1))])


def test_count_params_all_and_trainable() -> None:
    model = nn.Sequential(nn.Linear(3, 4), nn.Linear(4, 2))  # 3*4+4 + 4*2+2 = 26
    assert count_params(model) == 26
    model[0].requires_grad_(False)
    assert count_params(model, trainable_only=True) == 10
    assert count_params(model) == 26


def test_count_params_excludes_buffers() -> None:
    assert count_params(nn.BatchNorm2d(8)) == 16  # running stats are buffers


def test_conv2d_macs_exact() -> None:
    conv = nn.Conv2d(3, 8, kernel_size=3, stride=1, padding=1)
    cost = count_flops(conv, torch.zeros(2, 3, 16, 16))
    macs = 2 * 8 * 16 * 16 * (3 * 3 * 3)  # batch * C_out * H_out * W_out * (C_in/groups * kh * kw)
    assert cost == FlopCount(flops=2 * macs, macs=macs)


def test_strided_depthwise_conv_macs_exact() -> None:
    conv = nn.Conv2d(8, 8, kernel_size=3, stride=2, padding=1, groups=8, bias=False)
    cost = count_flops(conv, torch.zeros(1, 8, 15, 15))
    assert cost.macs == 8 * 8 * 8 * (1 * 3 * 3)  # output 8x8, one input channel per group
    assert cost.flops == 2 * cost.macs


def test_linear_macs_exact() -> None:
    cost = count_flops(nn.Linear(10, 5), torch.zeros(4, 10))
    assert cost.macs == 4 * 10 * 5
    assert cost.flops == 400
    assert math.isclose(cost.gmacs, 200e-9)


def test_count_flops_restores_training_flag_and_breaks_down_by_module() -> None:
    model = TwoLevel().train()
    model.stem.eval()
    cost = count_flops(model, torch.zeros(1, 3, 32, 32))
    assert model.training and not model.stem.training and model.down.training
    stem = 8 * 16 * 16 * 27
    down = 16 * 8 * 8 * 72
    assert cost.macs == stem + down
    assert cost.by_module[""] == cost.flops
    assert cost.by_module["stem.0"] == 2 * stem
    assert cost.by_module["down"] == 2 * down


def test_measure_latency_structure() -> None:
    model = TwoLevel().train()
    lat = measure_latency(model, torch.rand(1, 3, 32, 32), threads=1, min_run_time=FAST)
    assert isinstance(lat, Latency)
    assert lat.median_ms > 0 and lat.iqr_ms >= 0 and lat.runs >= 1
    assert (lat.threads, lat.device, lat.backend) == (1, "cpu", "torch")
    assert model.training
    assert json.loads(json.dumps(lat.as_dict()))["backend"] == "torch"


def test_measure_latency_unavailable_cuda_is_a_config_error() -> None:
    if torch.cuda.is_available():
        pytest.skip("CUDA is available here")
    with pytest.raises(ConfigError, match="CUDA"):
        measure_latency(nn.Identity(), torch.zeros(1), device="cuda", min_run_time=FAST)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_measure_latency_cuda_moves_back() -> None:
    model = TwoLevel()
    lat = measure_latency(model, torch.rand(1, 3, 32, 32), device="cuda", min_run_time=FAST)
    assert lat.device.startswith("cuda") and lat.median_ms > 0
    assert next(model.parameters()).device.type == "cpu"


def test_export_onnx_ordereddict_output(tmp_path) -> None:
    model = TwoLevel().eval()
    path = export_onnx(model, torch.rand(1, 3, 32, 32), tmp_path / "sub" / "two.onnx")
    assert path.is_file()
    graph = onnx.load(str(path)).graph
    assert [o.name for o in graph.output] == ["output0", "output1"]
    assert [i.name for i in graph.input] == ["input"]


def test_onnx_latency_matches_and_times() -> None:
    model = TwoLevel().train()
    lat = onnx_latency(model, torch.rand(1, 3, 32, 32), threads=1, min_run_time=FAST)
    assert (lat.backend, lat.device, lat.threads) == ("onnxruntime", "cpu", 1)
    assert lat.median_ms > 0 and lat.iqr_ms >= 0 and lat.runs >= 5
    assert model.training


def test_onnx_legacy_exporter_fallback(monkeypatch) -> None:
    monkeypatch.setattr(onnx_runtime, "_use_dynamo", lambda: False)
    with pytest.warns((DeprecationWarning, FutureWarning, UserWarning)):
        lat = onnx_latency(TwoLevel(), torch.rand(1, 3, 32, 32), threads=1, min_run_time=FAST)
    assert lat.median_ms > 0


class Drifting(nn.Module):
    """Returns x * (number of forward calls so far): export and eager run disagree."""

    def __init__(self) -> None:
        super().__init__()
        self.calls = 0

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        self.calls += 1
        return {"out": x * float(self.calls)}


def test_onnx_mismatch_raises() -> None:
    with pytest.raises(OnnxMismatchError, match="output 0"):
        onnx_latency(Drifting(), torch.ones(1, 3, 4, 4), min_run_time=FAST)


@pytest.mark.parametrize(
    ("text", "expected"),
    [("3x224x224", (3, 224, 224)), ("1X28x28", (1, 28, 28)), (" 3x320x240 ", (3, 320, 240))],
)
def test_parse_input_size(text: str, expected: tuple[int, int, int]) -> None:
    assert parse_input_size(text) == expected
    assert format_input_size(expected) == "x".join(map(str, expected))


@pytest.mark.parametrize("text", ["", "224", "320x240", "3x0x224", "3x-1x2", "axbxc", "1x2x3x4"])
def test_parse_input_size_rejects(text: str) -> None:
    with pytest.raises(ConfigError, match="input size"):
        parse_input_size(text)


def test_torchvision_model_unknown_name_suggests() -> None:
    with pytest.raises(ConfigError, match="resnet50") as info:
        torchvision_model("torchvision:resnet5O")
    assert "\n" not in str(info.value)


def test_torchvision_model_builds_random_weights() -> None:
    model = torchvision_model("torchvision:mobilenet_v3_small")
    assert count_params(model) == 2542856  # torchvision meta["num_params"]


def test_cost_report_classifier_json_ready() -> None:
    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.Flatten(), nn.Linear(4 * 8 * 8, 2))
    report = cost_report(model, (3, 8, 8), latency=True, onnx=True, threads=1, min_run_time=FAST)
    assert json.loads(json.dumps(report)) == report
    assert report["input"] == "3x8x8" and report["detector"] is False
    assert report["params"] == count_params(model)
    assert report["macs"] == 4 * 8 * 8 * 27 + 256 * 2
    assert report["flops"] == 2 * report["macs"]
    assert report["threads"] == 1 and report["device"] == "cpu"
    assert report["latency_ms_median"] > 0 and report["onnx_latency_ms_median"] > 0
    assert report["onnx_module"] == "model"


def tiny_fcos() -> FCOS:
    """FCOS on TwoLevel + FPN (32 channels: FCOS uses GroupNorm(32)); images resized to 64x64."""
    backbone = BackboneWithFPN(
        TwoLevel(), {"stem": "0", "down": "1"}, in_channels_list=[8, 16], out_channels=32
    )
    anchors = AnchorGenerator(sizes=((8,), (16,), (32,)), aspect_ratios=((1.0,),) * 3)
    return FCOS(backbone, num_classes=3, min_size=64, max_size=64, anchor_generator=anchors)


def test_detector_cost_uses_body_on_transformed_tensor() -> None:
    model = tiny_fcos()
    cost = detector_cost(model, (48, 40))
    # min_size 64 resizes 48x40 to 64x53 (max_size caps nothing), padding to 32 gives 64x64
    assert cost.input_size == (48, 40) and cost.model_input_size == (64, 64)
    assert cost.backbone_macs == 8 * 32 * 32 * 27 + 16 * 16 * 16 * 72  # TwoLevel at 64x64
    assert cost.backbone_params == count_params(model.backbone.body)
    assert cost.params > count_params(model.backbone) > cost.backbone_params
    assert cost.macs > cost.backbone_macs
    assert model.training


def test_cost_report_detector_latency_and_onnx_backbone() -> None:
    report = cost_report(
        tiny_fcos(), (3, 48, 40), latency=True, onnx=True, threads=1, min_run_time=FAST
    )
    assert json.loads(json.dumps(report)) == report
    assert report["detector"] is True and report["model_input_size"] == [64, 64]
    assert {"backbone_params", "backbone_flops", "backbone_macs"} <= report.keys()
    assert report["latency_ms_median"] > 0 and report["latency_ms_iqr"] >= 0
    assert report["onnx_latency_ms_median"] > 0 and report["onnx_module"] == "backbone"
    assert (report["threads"], report["device"]) == (1, "cpu")


def test_cost_report_detector_needs_rgb() -> None:
    with pytest.raises(ConfigError, match="3-channel"):
        cost_report(tiny_fcos(), (1, 48, 40))


DETECTOR_KEYS = {"params", "flops", "macs", "backbone_params", "backbone_flops", "backbone_macs"}


def test_measure_cost_torchvision_fcos_keys_and_backbone_share() -> None:
    model = fcos_resnet50_fpn(
        weights=None, weights_backbone=None, num_classes=3, min_size=64, max_size=64
    )
    cost = measure_cost(model, 64)
    assert set(cost) == DETECTOR_KEYS and set(cost) <= set(COST_KEYS)
    assert all(isinstance(v, float) for v in cost.values())
    assert cost["params"] == count_params(model)
    assert cost["backbone_params"] == count_params(model.backbone.body)
    assert 0 < cost["backbone_flops"] < cost["flops"] and cost["flops"] == 2 * cost["macs"]
    # ResNet-50 body at 64x64: torchvision's 4.089 GMACs at 224x224, less the classifier's
    # 2048*1000 MACs, scaled by (64/224)**2
    body_macs = (4.089e9 - 2048 * 1000) * (64 / 224) ** 2
    assert cost["backbone_macs"] == pytest.approx(body_macs, rel=0.01)


def test_measure_cost_latency_and_memory_on_request() -> None:
    model = tiny_fcos()
    cost = measure_cost(
        model, 48, latency=True, backbone_latency=True, memory_batch=2, threads=1, min_run_time=FAST
    )
    assert set(cost) == DETECTOR_KEYS | {
        "latency_ms", "backbone_latency_ms", "memory_mb", "memory_measured"
    }  # fmt: skip
    assert cost["latency_ms"] > cost["backbone_latency_ms"] > 0
    memory = training_memory(model, 48, batch_size=2)
    assert cost["memory_mb"] == memory.mib and cost["memory_measured"] == 0.0
    assert cost == {**cost, **measure_cost(model, 48)}  # the same counts with or without extras
    assert model.training
