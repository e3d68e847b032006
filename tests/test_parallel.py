"""SP-NAS parallel phase: ParallelCode, SpNasP sampling / mutation, the ParallelFPN neck."""

from __future__ import annotations

import random
from collections import Counter

import pytest
import torch
from torch import nn
from torchvision.models.resnet import BasicBlock, Bottleneck

from nasdet.cost import count_flops
from nasdet.errors import CheckpointError
from nasdet.methods.spnas.neck_space import (
    ParallelCode,
    mutate_parallel,
    parallel_weights,
    sample_parallel_code,
)
from nasdet.methods.spnas.nets import SerialBackbone
from nasdet.methods.spnas.parallel_fpn import (
    ParallelFPN,
    branch_flops,
    levels_branch_flops,
    load_serial_detector_weights,
)
from nasdet.models import baselines, detectors
from nasdet.models.backbone import FPNBackbone

R18 = "11-21-21-21"
LEVELS = (3, 4, 5)


def tiny_body(block: str = "basic") -> SerialBackbone:
    """ResNet-18-like (basic: widths 8-16-32-64) or -50-like (bottleneck: 16-32-64-128)."""
    torch.manual_seed(0)
    width = 8 if block == "basic" else 4
    return SerialBackbone(R18, block=block, base_width=width, levels=LEVELS)


def randomize(model: nn.Module, seed: int = 0) -> nn.Module:
    """Random values in every parameter and BN statistic, so zero-initialised parts show."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, t in model.state_dict().items():
            if t.is_floating_point():
                new = torch.rand(t.shape, generator=g) + 0.5 if "running_var" in name else None
                t.copy_(new if new is not None else torch.randn(t.shape, generator=g) * 0.1)
    return model


# --- ParallelCode -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "value", ["0-1-2-3", " 0-1-2-3 ", "[0, 1, 2, 3]", [0, 1, 2, 3], (0, 1, 2, 3)]
)
def test_code_parses_both_forms_to_canonical_string(value) -> None:
    code = ParallelCode.parse(value)
    assert code == ParallelCode((0, 1, 2, 3))
    assert str(code) == code.to_json() == "0-1-2-3"
    assert ParallelCode.parse(str(code)) == ParallelCode.from_json(code.to_json()) == code
    assert hash(code) == hash(ParallelCode([0, 1, 2, 3]))
    assert (code.num_levels, code.total_blocks, code[3]) == (4, 6, 3)


def test_code_multi_digit_counts_round_trip() -> None:
    code = ParallelCode.parse("12-0")
    assert code.blocks == (12, 0) and str(code) == "12-0"


@pytest.mark.parametrize(
    "value", ["", "0--1", "-1-2", "0-a", "1.5", "[1, -1]", "[1.0, 2]", "[true]", "[1,", 3, None]
)
def test_code_rejects_malformed_values(value) -> None:
    with pytest.raises(ValueError, match="parallel code"):
        ParallelCode.parse(value)


def test_code_checks_levels_and_max_blocks() -> None:
    with pytest.raises(ValueError, match="3 feature levels"):
        ParallelCode.parse("0-1", num_levels=3)
    with pytest.raises(ValueError, match=r"level 1 has 4 blocks.*0\.\.3"):
        ParallelCode.parse("0-4-1", num_levels=3, max_blocks_per_level=3)
    assert ParallelCode.parse([0, 3, 1], num_levels=3, max_blocks_per_level=3).blocks == (0, 3, 1)
    with pytest.raises(ValueError, match="non-negative"):
        ParallelCode((True, 1))


# --- sampling -----------------------------------------------------------------------------


def test_weights_are_normalised_inverse_flops() -> None:
    flops = [400.0, 100.0, 25.0]
    inv = [1 / f for f in flops]
    assert parallel_weights(flops) == pytest.approx([w / sum(inv) for w in inv])
    with pytest.raises(ValueError, match="positive"):
        parallel_weights([1.0, 0.0])


def test_addition_frequencies_follow_inverse_flops() -> None:
    rng, flops = random.Random(0), [300.0, 100.0, 50.0, 600.0]
    n = 6000
    hits = Counter(
        sample_parallel_code(rng, flops, max_blocks_per_level=3, num_additions=1).blocks.index(1)
        for _ in range(n)
    )
    for level, weight in enumerate(parallel_weights(flops)):
        assert hits[level] / n == pytest.approx(weight, abs=0.02)


def test_default_sampling_adds_a_random_number_of_blocks() -> None:
    rng = random.Random(1)
    codes = [sample_parallel_code(rng, [4.0, 2.0, 1.0], max_blocks_per_level=2) for _ in range(300)]
    totals = {c.total_blocks for c in codes}
    assert min(totals) >= 1 and max(totals) == 6 and len(totals) == 6
    assert all(max(c.blocks) <= 2 and c.num_levels == 3 for c in codes)


def test_sampled_codes_respect_the_flops_budget() -> None:
    rng, flops, base, budget = random.Random(2), [30.0, 20.0, 10.0], 1000.0, 1075.0
    codes = [
        sample_parallel_code(rng, flops, max_blocks_per_level=3, max_flops=budget, base_flops=base)
        for _ in range(500)
    ]
    assert all(c.flops(flops, base) <= budget for c in codes)
    assert max(c.flops(flops, base) for c in codes) > budget - 10  # budget is reached, not avoided


def test_infeasible_budget_is_an_error_and_tight_budget_gives_zeros() -> None:
    rng = random.Random(0)
    with pytest.raises(ValueError, match="infeasible"):
        sample_parallel_code(rng, [1.0, 2.0], max_blocks_per_level=2, max_flops=9, base_flops=10)
    code = sample_parallel_code(
        rng, [5.0, 6.0], max_blocks_per_level=2, max_flops=12, base_flops=10
    )
    assert code == ParallelCode.zeros(2)


def test_mutation_changes_one_level_by_one_within_bounds() -> None:
    rng = random.Random(3)
    for _ in range(300):
        parent = ParallelCode(tuple(rng.randint(0, 3) for _ in range(4)))
        child = mutate_parallel(parent, rng, max_blocks_per_level=3)
        diffs = [c - p for c, p in zip(child.blocks, parent.blocks, strict=True) if c != p]
        assert len(diffs) == 1 and abs(diffs[0]) == 1
        assert all(0 <= n <= 3 for n in child.blocks)


def test_mutation_respects_the_budget_and_fails_when_nothing_is_valid() -> None:
    rng, flops = random.Random(4), [10.0, 1.0]
    for _ in range(50):  # 1-0 costs 10: only 0-0 (remove) or 1-1 (add 1) fit 11 FLOPs
        child = mutate_parallel(
            "1-0", rng, max_blocks_per_level=3, levels_flops=flops, max_flops=11
        )
        assert child in {ParallelCode((0, 0)), ParallelCode((1, 1))}
    with pytest.raises(ValueError, match="no \\+-1 change"):
        mutate_parallel("0-0", rng, max_blocks_per_level=0)
    with pytest.raises(ValueError, match="levels_flops"):
        mutate_parallel("0-0", rng, max_blocks_per_level=2, max_flops=5.0)


# --- ParallelFPN --------------------------------------------------------------------------


def test_fresh_branches_leave_the_fpn_output_unchanged() -> None:
    body = randomize(tiny_body())
    parallel = ParallelFPN(body, "1-2-3", 32, extra="p6p7").eval()
    plain = FPNBackbone(body, 32, extra="p6p7").eval()
    plain.fpn.load_state_dict(parallel.fpn.state_dict())
    x = torch.rand(2, 3, 64, 96)
    with torch.no_grad():
        want, got = plain(x), parallel(x)
    assert list(got) == ["p3", "p4", "p5", "p6", "p7"]
    assert parallel.level_names == ["p3", "p4", "p5"]
    assert parallel.feature_info == plain.feature_info and parallel.out_channels == 32
    for key in want:
        torch.testing.assert_close(got[key], want[key], atol=0, rtol=0)


@pytest.mark.parametrize(("block", "cls"), [("basic", BasicBlock), ("bottleneck", Bottleneck)])
def test_branches_copy_the_level_block_type_and_width(block: str, cls: type) -> None:
    body = tiny_body(block)
    neck = ParallelFPN(body, [0, 2, 1], 32)
    assert neck.branch_levels == ["c4", "c5"] and str(neck.code) == "0-2-1"
    for key, spec in zip(["c4", "c5"], body.feature_info[1:], strict=True):
        blocks = list(neck.branches[key].blocks)
        assert all(type(b) is cls for b in blocks)
        template = getattr(body, f"layer{int(key[1:]) - 1}")[-1]
        for b in blocks:
            for (name, p), q in zip(b.named_parameters(), template.parameters(), strict=True):
                assert p.shape == q.shape, name
        assert blocks[0].conv1.in_channels == spec.channels


def test_grown_branch_keeps_the_parent_function() -> None:
    body = randomize(tiny_body())
    parent = randomize(ParallelFPN(body, "1-0-1", 32), seed=1).eval()
    child = ParallelFPN(body, "2-0-1", 32).eval()
    missing, unexpected = child.load_state_dict(parent.state_dict(), strict=False)
    assert not unexpected and all(k.startswith("branches.c3.blocks.1.") for k in missing)
    x = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        for key, value in parent(x).items():
            torch.testing.assert_close(child(x)[key], value, atol=1e-6, rtol=0)


def test_body_and_code_are_checked() -> None:
    with pytest.raises(ValueError, match="3 feature levels"):
        ParallelFPN(tiny_body(), "1-1", 32)
    with pytest.raises(ValueError, match="0..2"):
        ParallelFPN(tiny_body(), "1-3-1", 32, max_blocks_per_level=2)
    with pytest.raises(ValueError, match="BasicBlock or Bottleneck"):
        ParallelFPN(baselines.mobilenet_v3_small(width_mult=0.5), "0-1-0", 32)


def test_torchvision_resnet_body_works() -> None:
    body = baselines.resnet18(width_mult=0.25)  # IntermediateLayerGetter, layer2..4 -> c3..c5
    neck = ParallelFPN(body, "1-0-1", 32).eval()
    out = neck(torch.rand(1, 3, 64, 64))
    assert [v.shape[-1] for v in out.values()] == [8, 4, 2]
    assert neck.branches["c5"].blocks[0].conv1.in_channels == 128


def _targets(n: int, size: int) -> list[dict[str, torch.Tensor]]:
    boxes = torch.tensor([[4.0, 6.0, 30.0, 40.0], [20.0, 10.0, size - 2.0, size - 5.0]])
    return [{"boxes": boxes, "labels": torch.tensor([1, 2])} for _ in range(n)]


@pytest.mark.parametrize("name", ["fasterrcnn", "fcos"])
def test_detectors_train_and_infer_on_a_parallel_fpn(name: str) -> None:
    extra = "pool" if name == "fasterrcnn" else "p6p7"
    neck = ParallelFPN(tiny_body(), "1-0-2", 32, extra=extra)
    kwargs = {"representation_size": 64} if name == "fasterrcnn" else {"num_convs": 1}
    model = getattr(detectors, name)(neck, 3, min_size=64, max_size=64, **kwargs)
    images = [torch.rand(3, 64, 64), torch.rand(3, 64, 64)]
    losses = model(images, _targets(2, 64))
    sum(losses.values()).backward()
    branch_params = list(neck.branches.parameters())
    assert branch_params and all(p.grad is not None for p in branch_params)
    assert any(p.grad.abs().sum() > 0 for p in branch_params)  # the fusion norm learns first
    model.eval()
    with torch.no_grad():
        out = model(images)
    assert len(out) == 2 and {"boxes", "scores", "labels"} <= set(out[0])


def test_neck_flops_grow_with_the_code_by_branch_flops() -> None:
    body = tiny_body("bottleneck")
    size = (72, 56)  # not a multiple of 32: level maps round up
    x = torch.rand(1, 3, *size)
    body_flops = count_flops(body, x).flops
    per_block = levels_branch_flops(body, size)
    assert per_block == [branch_flops(body, lv, size) for lv in LEVELS]
    assert per_block[0] == branch_flops(body, "c3", size) > 0
    neck_flops = []
    for code in ["0-0-0", "1-0-0", "1-1-0", "1-1-2", "3-1-2"]:
        torch.manual_seed(0)
        neck = ParallelFPN(body, code, 32)
        neck_flops.append(count_flops(neck, x).flops - body_flops)
        extra = sum(n * f for n, f in zip(neck.code.blocks, per_block, strict=True))
        assert neck_flops[-1] == neck_flops[0] + extra
    assert neck_flops == sorted(set(neck_flops))


def test_serial_detector_weights_load_by_name() -> None:
    serial = detectors.fcos(FPNBackbone(tiny_body(), 32, "p6p7"), 3, min_size=64, max_size=64)
    state = randomize(serial).state_dict()
    neck = ParallelFPN(tiny_body(), "2-0-1", 32, "p6p7")
    parallel = detectors.fcos(neck, 3, min_size=64, max_size=64)
    loaded, new = load_serial_detector_weights(parallel, state)
    branch_keys = [k for k in parallel.state_dict() if k.startswith("backbone.branches.")]
    assert (loaded, new) == (len(state), len(branch_keys)) and new > 0
    for key, value in state.items():
        torch.testing.assert_close(parallel.state_dict()[key], value, atol=0, rtol=0)
    x = torch.rand(1, 3, 64, 64)
    serial.eval(), parallel.eval()
    with torch.no_grad():
        want, got = serial.backbone(x), parallel.backbone(x)
    for key in want:
        torch.testing.assert_close(got[key], want[key], atol=0, rtol=0)


def test_serial_weight_loading_errors() -> None:
    serial_state = detectors.fcos(FPNBackbone(tiny_body(), 32, "p6p7"), 3).state_dict()
    parallel = detectors.fcos(ParallelFPN(tiny_body(), "1-0-0", 32, "p6p7"), 3)
    with pytest.raises(CheckpointError, match="unexpected key 'extra'"):
        load_serial_detector_weights(parallel, {**serial_state, "extra": torch.zeros(1)})
    bad = dict(serial_state)
    bad["backbone.fpn.inner_blocks.0.0.weight"] = torch.zeros(1)
    with pytest.raises(CheckpointError, match="inner_blocks.0.0.weight' has shape"):
        load_serial_detector_weights(parallel, bad)
    del bad["backbone.fpn.inner_blocks.0.0.weight"]
    with pytest.raises(CheckpointError, match="is missing"):
        load_serial_detector_weights(parallel, bad)
    with pytest.raises(ValueError, match="no ParallelFPN"):
        load_serial_detector_weights(nn.Linear(1, 1), {})
