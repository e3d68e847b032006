"""Tests of nasdet.cost.memory: the peak memory of one training step.

The CPU estimate is checked against hand computations (parameters, gradients, optimizer state and
the tensors autograd saves); the CUDA measurement runs wherever CUDA is available.
"""

from __future__ import annotations

import json

import pytest
import torch
from test_cost import tiny_fcos
from torch import nn

from nasdet.cost import TrainingMemory, training_memory
from nasdet.errors import ConfigError

MIB = 2**20


def tiny_net() -> nn.Sequential:
    """conv 3->8 (3x3, bias) + ReLU + conv 8->4 (3x3, bias): 224 + 292 = 516 parameters."""
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 4, 3, padding=1))


def parts_sum(mem: TrainingMemory) -> int:
    return mem.params_bytes + mem.grads_bytes + mem.optimizer_bytes + mem.activations_bytes


@pytest.mark.parametrize(("optimizer", "state_copies"), [("sgd", 1), ("adamw", 2)])
def test_estimate_of_tiny_net_matches_hand_computation(optimizer: str, state_copies: int) -> None:
    mem = training_memory(tiny_net(), (16, 16), batch_size=2, optimizer=optimizer)
    params = (8 * 3 * 9 + 8 + 4 * 8 * 9 + 4) * 4  # float32
    assert mem.params_bytes == params
    assert mem.grads_bytes == params
    assert mem.optimizer_bytes == state_copies * params
    # autograd saves the input of each conv (the batch, then the ReLU output, which is also what
    # ReLU saves: one storage) and the conv weights (parameters, not activations)
    assert mem.activations_bytes == (2 * 3 * 16 * 16 + 2 * 8 * 16 * 16) * 4
    assert mem.peak_bytes == parts_sum(mem)
    assert mem.mib == mem.peak_bytes / MIB
    assert (mem.method, mem.batch_size, mem.image_size) == ("estimated:cpu", 2, (16, 16))
    assert mem.optimizer == optimizer and not mem.measured


def test_frozen_parameters_have_no_gradient_or_optimizer_state() -> None:
    net = tiny_net()
    net[0].requires_grad_(False)
    mem = training_memory(net, 16, batch_size=1)
    assert mem.params_bytes == 516 * 4
    assert mem.grads_bytes == mem.optimizer_bytes == 292 * 4


def test_image_tensor_gives_the_sample_and_channels() -> None:
    mem = training_memory(tiny_net(), torch.rand(3, 8, 12), batch_size=3)
    assert mem.image_size == (8, 12)
    assert mem.activations_bytes == 3 * (3 + 8) * 8 * 12 * 4


def test_detector_estimate_parts_add_up_and_activations_grow_linearly() -> None:
    model = tiny_fcos()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    two = training_memory(model, 64, batch_size=2)
    four = training_memory(model, 64, batch_size=4)
    assert two.peak_bytes == parts_sum(two) and four.peak_bytes == parts_sum(four)
    params = sum(p.numel() * p.element_size() for p in model.parameters())
    assert two.params_bytes == four.params_bytes == params
    assert two.grads_bytes == params and two.optimizer_bytes == params
    assert four.activations_bytes == pytest.approx(2 * two.activations_bytes, rel=0.05)
    assert four.activations_bytes > two.activations_bytes > 0
    # the model is untouched: same weights, same BN statistics, same training flag
    assert model.training
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_detector_estimate_is_reproducible_and_json_ready() -> None:
    model = tiny_fcos()
    first = training_memory(model, (64, 48), batch_size=2, optimizer="adamw")
    assert training_memory(model, (64, 48), batch_size=2, optimizer="adamw") == first
    data = json.loads(json.dumps(first.as_dict()))
    assert data["method"] == "estimated:cpu" and data["image_size"] == [64, 48]
    assert data["peak_bytes"] == first.peak_bytes


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"batch_size": 0}, "batch_size"),
        ({"batch_size": 1, "optimizer": "adam"}, "optimizer 'adam'"),
    ],
)
def test_bad_arguments_are_one_line_errors(kwargs: dict, match: str) -> None:
    with pytest.raises(ConfigError, match=match) as info:
        training_memory(tiny_net(), 16, **kwargs)
    assert "\n" not in str(info.value)


def test_unavailable_cuda_is_a_config_error() -> None:
    if torch.cuda.is_available():
        pytest.skip("CUDA is available here")
    with pytest.raises(ConfigError, match="CUDA"):
        training_memory(tiny_net(), 16, batch_size=1, device="cuda")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_measures_one_real_training_step() -> None:
    model = tiny_fcos()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    mem = training_memory(model, 64, batch_size=2, optimizer="adamw", device="cuda")
    assert mem.method == "measured:cuda" and mem.measured
    params = sum(p.numel() * p.element_size() for p in model.parameters())
    assert mem.params_bytes == params and mem.grads_bytes == params
    assert mem.optimizer_bytes >= 2 * params  # exp_avg and exp_avg_sq (+ step counters)
    assert mem.activations_bytes > 0
    # the peak holds at least the weights, the optimizer state and the gradients
    assert mem.peak_bytes >= params + mem.grads_bytes + 2 * params
    bigger = training_memory(model, 64, batch_size=8, optimizer="adamw", device="cuda")
    assert bigger.peak_bytes > mem.peak_bytes
    # a copy was trained: the model itself is unchanged and still on the CPU
    assert next(model.parameters()).device.type == "cpu"
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
