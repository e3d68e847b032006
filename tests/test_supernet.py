"""The supernet protocol and the generic subnet export (with DetNAS's ShuffleNetV2 supernet)."""

from __future__ import annotations

import random

import pytest
import torch

from nasdet.build import build_detector
from nasdet.methods import Model
from nasdet.search.supernet import Supernet, export_subnet, supernet_spec

ARCH = {
    "detector": "fcos",
    "backbone": {
        "name": "shufflenet_supernet",
        "width_mult": 0.25,
        "depths": [1, 2, 2, 1],
        "levels": [3, 4, 5],
    },
    "fpn_channels": 32,
    "min_size": 64,
    "max_size": 64,
}


def _supernet() -> torch.nn.Module:
    torch.manual_seed(0)
    model = build_detector(Model.model_validate(ARCH), 5, load_weights=False).eval()
    for m in model.modules():  # BN statistics that differ per unit, so a wrong copy shows
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 1.5)
    return model


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_export_equals_the_active_path(seed: int) -> None:
    supernet = _supernet()
    arch = Model.model_validate(ARCH)
    assert isinstance(supernet.backbone.body, Supernet)
    genotype = supernet.backbone.body.sample_active_subnet(random.Random(seed))
    model, sub = export_subnet(supernet, arch, genotype, 5)
    assert sub.backbone.name == "shufflenet_nas" and sub.backbone.code == str(genotype)
    assert not any(".choices." in k for k in model.state_dict())
    images = [torch.rand(3, 64, 64) for _ in range(2)]
    with torch.no_grad():
        a, b = supernet.backbone(torch.stack(images)), model.backbone(torch.stack(images))
        dets_a, dets_b = supernet(images), model(images)
    for k in a:
        torch.testing.assert_close(a[k], b[k])
    for x, y in zip(dets_a, dets_b, strict=True):
        torch.testing.assert_close(x["scores"], y["scores"])
    # the export is a copy: changing it leaves the supernet as it was
    next(model.parameters()).data.add_(1.0)
    with torch.no_grad():
        torch.testing.assert_close(supernet.backbone(torch.stack(images))["p3"], a["p3"])


def test_fresh_subnet_and_genotype_parsing() -> None:
    supernet = _supernet()
    spec = supernet_spec(Model.model_validate(ARCH))
    code = spec.parse_genotype("3-5x-7x-3")
    supernet.backbone.body.set_active_subnet(code)
    fresh = supernet.backbone.body.get_active_subnet(preserve_weight=False)
    kept = supernet.backbone.body.get_active_subnet()
    assert fresh.state_dict().keys() == kept.state_dict().keys()
    assert not torch.equal(fresh.stem[0].weight, kept.stem[0].weight)
    assert spec.parse_genotype(code_yaml := _yaml(code)) == code, code_yaml
    with pytest.raises(ValueError, match="depths"):
        spec.parse_genotype("33-33-33-33")


def test_not_a_supernet() -> None:
    with pytest.raises(ValueError, match="not a supernet"):
        supernet_spec(Model.model_validate({"backbone": {"name": "resnet18"}}))


def _yaml(code: object) -> str:
    return code.to_yaml()  # type: ignore[attr-defined]
