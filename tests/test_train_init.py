"""train_step's ``init_weights`` (start from a whole-detector state dict) and ``backbone_lr``
(freeze the backbone body or give it its own learning rate), used by OFA's final training."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from nasdet.build import build_detector
from nasdet.config import parse_config
from nasdet.engine.optim import make_optimizer
from nasdet.errors import CheckpointError
from nasdet.models.io import atomic_save, read_weights
from nasdet.training import train_step
from tests.conftest import tiny_config


def _model(digits_root: Path) -> torch.nn.Module:
    return build_detector(parse_config(tiny_config(digits_root)).model, 11)


def test_backbone_lr_groups(digits_root: Path) -> None:
    model = _model(digits_root)
    body = {id(p) for p in model.backbone.body.parameters()}
    opt = make_optimizer(model, "sgd", lr=0.1, backbone_lr=0.01)
    rest, base = opt.param_groups
    assert rest["lr"] == 0.1 and base["lr"] == 0.01
    assert {id(p) for p in base["params"]} == body
    assert not body & {id(p) for p in rest["params"]}


def test_backbone_lr_zero_freezes_the_body(digits_root: Path) -> None:
    model = _model(digits_root)
    opt = make_optimizer(model, "sgd", lr=0.1, backbone_lr=0.0)
    assert len(opt.param_groups) == 1
    assert not any(p.requires_grad for p in model.backbone.body.parameters())
    trained = {id(p) for p in opt.param_groups[0]["params"]}
    assert trained and not trained & {id(p) for p in model.backbone.body.parameters()}


@pytest.mark.slow
def test_init_weights_and_frozen_body(digits_root: Path, tmp_path: Path) -> None:
    cfg = parse_config(tiny_config(digits_root, epochs=1))
    torch.manual_seed(123)
    start = build_detector(cfg.model, 11).state_dict()
    init = tmp_path / "init.pth"
    atomic_save(start, init)
    result = train_step(cfg, tmp_path / "run", init_weights=init, backbone_lr=0.0)
    trained = read_weights(result.model_path)["state_dict"]
    body = [k for k in start if k.startswith("backbone.body.") and "running" not in k
            and "num_batches" not in k]  # fmt: skip
    assert body and all(torch.equal(trained[k], start[k]) for k in body)  # frozen: unchanged
    head = [k for k in start if k.startswith("head.") and k.endswith("weight")]
    assert any(not torch.equal(trained[k], start[k]) for k in head)  # trained from init


def test_init_weights_of_another_model_is_one_line(digits_root: Path, tmp_path: Path) -> None:
    cfg = parse_config(tiny_config(digits_root, epochs=1))
    bad = tmp_path / "bad.pth"
    atomic_save({"x": torch.zeros(1)}, bad)
    with pytest.raises(CheckpointError, match="bad.pth: key .* is missing"):
        train_step(cfg, tmp_path / "run", init_weights=bad)
