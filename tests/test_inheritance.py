"""SP-NAS weight inheritance says what it leaves at initialisation (nothing silently dropped)."""

from __future__ import annotations

import logging

import torch

from nasdet.build import build_detector
from nasdet.methods.spnas.candidate import transfer_weights
from nasdet.methods.spnas.config import Model


def _detector(**model: object) -> torch.nn.Module:
    arch = {
        "detector": "fcos",
        "backbone": {"name": "serial", "code": "11-21-21-21", "block": "basic", "base_width": 8},
        "fpn_channels": 32,
        "min_size": 64,
        "max_size": 64,
        **model,
    }
    return build_detector(Model.model_validate(arch), 5, load_weights=False)


def test_new_and_reshaped_tensors_are_reported(caplog) -> None:
    torch.manual_seed(0)
    parent = _detector()
    child = _detector(neck={"name": "parallel_fpn", "code": "0-1-0"})
    with caplog.at_level(logging.INFO):
        t = transfer_weights(child, parent)
    assert t.new and all(k.startswith("backbone.branches.") for k in t.new)
    assert not t.reshaped
    state = child.state_dict()
    for k in t.inherited:
        torch.testing.assert_close(state[k], parent.state_dict()[k])
    assert f"{len(t.new)} new (backbone.branches." in caplog.text

    wide = _detector(fpn_channels=64)
    t = transfer_weights(wide, parent)
    names = {name for name, _, _ in t.reshaped}
    assert "backbone.fpn.inner_blocks.0.0.weight" in names
    shapes = {name: (c, p) for name, c, p in t.reshaped}
    assert shapes["backbone.fpn.inner_blocks.0.0.weight"] == ((64, 16, 1, 1), (32, 16, 1, 1))
    assert "reshaped (backbone." in t.summary()
    assert not t.new  # same names, other shapes
