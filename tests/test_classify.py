"""Backbone classification pre-training (nasdet.engine.classify): seeded, RNG-neutral."""

from __future__ import annotations

import random
from pathlib import Path

import pytest
import torch
from torch import nn

from nasdet.data.digits import make_digits_classification
from nasdet.engine.classify import pretrain_backbone
from nasdet.models.baselines import resnet18


@pytest.fixture(scope="module")
def digits_cls(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("digits_cls")
    return make_digits_classification(root, per_class_train=2, per_class_val=1, size=16, seed=0)


def _pretrained(root: Path, *, seed: int, caller_seed: int) -> tuple[dict, float, list[int]]:
    """A freshly built (seeded) backbone pre-trained with ``seed`` while the caller's global
    RNGs were seeded with ``caller_seed``: its weights, the accuracy and the steps seen."""
    torch.manual_seed(0)
    body = resnet18(width_mult=0.125)
    torch.manual_seed(caller_seed)
    random.seed(caller_seed)
    steps: list[int] = []
    acc = pretrain_backbone(
        body, root, epochs=2, batch_size=8, lr=0.05, image_size=16, seed=seed,
        before_step=steps.append,
    )
    return {k: v.clone() for k, v in body.state_dict().items()}, acc, steps


def test_pretraining_is_determined_by_its_seed(digits_cls: Path) -> None:
    a, acc_a, steps = _pretrained(digits_cls, seed=0, caller_seed=1)
    b, acc_b, _ = _pretrained(digits_cls, seed=0, caller_seed=2)
    c, _, _ = _pretrained(digits_cls, seed=1, caller_seed=1)

    assert steps == list(range(2 * 3))  # 20 images in batches of 8, 2 epochs
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert acc_a == acc_b
    assert not all(torch.equal(a[k], c[k]) for k in a)


def test_pretraining_leaves_the_callers_rng_alone(digits_cls: Path) -> None:
    body = resnet18(width_mult=0.125)
    torch.manual_seed(7)
    random.seed(7)
    torch_state, python_state = torch.get_rng_state(), random.getstate()
    pretrain_backbone(body, digits_cls, epochs=1, batch_size=8, image_size=16, seed=3)
    assert torch.equal(torch.get_rng_state(), torch_state)
    assert random.getstate() == python_state


def test_dropout_in_the_backbone_is_seeded_too(digits_cls: Path) -> None:
    class Dropping(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.body = resnet18(width_mult=0.125)
            self.feature_info = self.body.feature_info
            self.drop = nn.Dropout(0.5)

        def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
            return {k: self.drop(v) for k, v in self.body(x).items()}

    weights = []
    for caller_seed in (1, 2):
        torch.manual_seed(0)
        net = Dropping()
        torch.manual_seed(caller_seed)
        pretrain_backbone(net, digits_cls, epochs=1, batch_size=8, image_size=16, seed=0)
        weights.append(net.state_dict())
    assert all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0])
