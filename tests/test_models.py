"""Backbones publish correct metadata; every detector trains and predicts on every backbone."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from nasdet.build import build_detector
from nasdet.methods import Model as ModelConfig
from nasdet.models.backbone import ExtraLevelsBackbone, FPNBackbone, ShapeSpec, check_backbone
from nasdet.models.baselines import BASELINES, resnet18, resnet50, shufflenet_v2_widths

NUM_CLASSES = 4  # 3 classes + background


def _targets(n: int) -> list[dict[str, torch.Tensor]]:
    return [
        {
            "boxes": torch.tensor([[8.0, 10.0, 40.0, 44.0], [50.0, 60.0, 90.0, 100.0]]),
            "labels": torch.tensor([1, 3]),
        }
        for _ in range(n)
    ]


@pytest.mark.parametrize("name", sorted(BASELINES))
@pytest.mark.parametrize("width", [1.0, 0.25])
def test_feature_info_matches_outputs(name: str, width: float) -> None:
    body = BASELINES[name](width_mult=width, levels=(2, 3, 4, 5))
    out = body(torch.randn(1, 3, 64, 96))
    assert list(out) == ["c2", "c3", "c4", "c5"]
    got = [ShapeSpec(v.shape[1], 64 // v.shape[-2]) for v in out.values()]
    assert got == body.feature_info
    assert [s.stride for s in got] == [4, 8, 16, 32]
    assert body.out_channels == [s.channels for s in got]


def test_width_multiplier_shrinks_resnet18() -> None:
    full, quarter = resnet18(), resnet18(width_mult=0.25)
    assert [s.channels for s in full.feature_info] == [128, 256, 512]
    assert [s.channels for s in quarter.feature_info] == [32, 64, 128]
    n_full = sum(p.numel() for p in full.parameters())
    n_quarter = sum(p.numel() for p in quarter.parameters())
    assert n_full == 11_176_512  # torchvision resnet18 without fc (11,689,512 - 513,000)
    assert n_quarter < n_full / 12


def test_resnet_keeps_torchvision_names() -> None:
    import torchvision

    ref = torchvision.models.resnet50(weights=None).state_dict()
    ours = resnet50(levels=(2, 3, 4, 5)).state_dict()
    assert set(ours) == {k for k in ref if not k.startswith("fc.")}
    assert all(ours[k].shape == ref[k].shape for k in ours)


def test_shufflenet_widths_follow_torchvision_table() -> None:
    assert shufflenet_v2_widths(1.0) == [24, 116, 232, 464, 1024]
    assert shufflenet_v2_widths(0.5) == [24, 48, 96, 192, 1024]
    assert all(c % 4 == 0 for c in shufflenet_v2_widths(0.3)[1:4])


def test_contract_violation_names_missing_attribute() -> None:
    with pytest.raises(ValueError, match="no out_channels and no feature_info"):
        check_backbone(nn.ReLU())
    with pytest.raises(ValueError, match="levels share one width"):
        from nasdet.models.detectors import fcos

        fcos(resnet18(width_mult=0.25), NUM_CLASSES)


def test_fpn_backbone_levels_and_extras() -> None:
    fpn = FPNBackbone(resnet18(width_mult=0.25), 32, extra="p6p7")
    out = fpn(torch.randn(1, 3, 128, 128))
    assert list(out) == ["p3", "p4", "p5", "p6", "p7"]
    assert [v.shape[-1] for v in out.values()] == [16, 8, 4, 2, 1]
    assert fpn.feature_info[-1] == ShapeSpec(32, 128)
    assert fpn.level_names == ["p3", "p4", "p5"]


def test_ssd_extra_levels() -> None:
    bb = ExtraLevelsBackbone(resnet18(width_mult=0.25), [64, 32]).eval()
    out = bb(torch.randn(1, 3, 128, 128))
    assert list(out) == ["c3", "c4", "c5", "c6", "c7"]
    assert [ShapeSpec(v.shape[1], 128 // v.shape[-1]) for v in out.values()] == bb.feature_info


DETECTORS = ["fasterrcnn", "retinanet", "fcos", "ssd", "ssdlite", "yolov3"]


@pytest.mark.parametrize("detector", DETECTORS)
@pytest.mark.parametrize("backbone", sorted(BASELINES))
def test_detector_trains_and_predicts(detector: str, backbone: str) -> None:
    torch.manual_seed(0)
    only = {  # settings that apply to one kind of detector (others are rejected)
        "fasterrcnn": {"fpn_channels": 16, "representation_size": 32},
        "retinanet": {"fpn_channels": 16},
        "fcos": {"fpn_channels": 32},
        "ssd": {"ssd_extra_channels": [32]},
        "ssdlite": {"ssd_extra_channels": [32]},
        "yolov3": {},
    }
    cfg = ModelConfig(
        detector=detector,
        backbone={"name": backbone, "width_mult": 0.25 if "resnet" in backbone else 0.5},
        min_size=128,
        max_size=128,
        **only[detector],
    )
    model = build_detector(cfg, NUM_CLASSES)
    model.train()
    images = [torch.rand(3, 128, 128), torch.rand(3, 128, 128)]
    losses = model(images, _targets(2))
    loss = sum(losses.values())
    assert torch.isfinite(loss)
    loss.backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert sum(g is not None and bool(g.abs().sum() > 0) for g in grads) > 0.8 * len(grads)
    model.eval()
    with torch.no_grad():
        out = model([torch.rand(3, 128, 128)])
    assert set(out[0]) == {"boxes", "scores", "labels"}
    assert out[0]["boxes"].shape[1] == 4
    labels = out[0]["labels"]
    # RetinaNet/FCOS keep a (never-positive) background logit, as torchvision's COCO models do,
    # so an untrained one may emit label 0; the evaluator drops it.
    assert labels.numel() == 0 or (0 <= int(labels.min()) and int(labels.max()) < NUM_CLASSES)
