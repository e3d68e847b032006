"""The OFA cost table (fixed + per-block params and FLOPs) equals measure_cost of built subnets."""

from __future__ import annotations

import random

import pytest

from nasdet.build import build_detector
from nasdet.cost import measure_cost
from nasdet.methods.ofa.config import Model
from nasdet.methods.ofa.cost_table import measure_table
from nasdet.methods.ofa.scoring import SubnetCost, subnet_architecture
from nasdet.search.constraints import Constraints

ARCHS = {
    "ssdlite": {
        "detector": "ssdlite",
        "backbone": {"name": "ofa_supernet", "width_mult": 0.25, "levels": [4, 5]},
        "ssd_extra_channels": [32],
        "min_size": 64,
        "max_size": 64,
    },
    "fcos_mbv2": {
        "detector": "fcos",
        "backbone": {"name": "ofa_supernet", "backbone_type": "mbv2_backbone", "width_mult": 0.25},
        "fpn_channels": 32,
        "min_size": 64,
        "max_size": 64,
    },
}
KEYS = ("params", "flops", "macs", "backbone_params", "backbone_flops", "backbone_macs")


@pytest.mark.parametrize("name", list(ARCHS))
def test_table_sums_equal_measured_cost(name: str) -> None:
    arch = Model.model_validate(ARCHS[name])
    table = measure_table(arch, 11, 64)
    space = arch.backbone.space
    rng = random.Random(0)
    for g in [space.largest(), space.smallest(), *(space.sample(rng) for _ in range(3))]:
        model = build_detector(subnet_architecture(arch, g), 11, load_weights=False).eval()
        measured = measure_cost(model, 64)
        predicted = table(g)
        assert {k: predicted[k] for k in KEYS} == {k: float(measured[k]) for k in KEYS}, g


def test_subnet_cost_uses_the_table_only_without_measured_limits() -> None:
    arch = Model.model_validate(ARCHS["ssdlite"])
    cost = SubnetCost(arch, 11, Constraints(max_flops=1e9), input_size=64, batch_size=2)
    g = arch.backbone.space.largest()
    cost(g)
    assert cost._table is not None
    timed = SubnetCost(arch, 11, Constraints(max_latency_ms=1e6), input_size=64, batch_size=2)
    assert "latency_ms" in timed(g) and timed._table is None
