"""The latency method's search space made from a baseline, and its latency model: variant 0 is
the baseline, which channels the pruned variants keep, the LUT and the expected latency's
gradient."""

from __future__ import annotations

import random

import pytest
import torch

from nasdet.build import build_detector
from nasdet.cost.flops import count_flops
from nasdet.cost.latency import measure_latency
from nasdet.methods import Model
from nasdet.methods.latency.latency import LatencyTable, Network, build_table, cached_table
from nasdet.methods.latency.nets import (
    VariantBlock,
    ir_importance,
    kept_channels,
    to_space_detector,
)
from nasdet.methods.latency.parts import LatencySpaceSpec
from nasdet.methods.latency.search import reinforce_loss
from nasdet.methods.latency.space import LatencyArch
from nasdet.models.io import read_model_file, save_model

BASELINE = {
    "detector": "ssdlite",
    "backbone": {"name": "mobilenet_v2", "width_mult": 0.25, "levels": [4, 5]},
    "ssd_extra_channels": [32],
    "min_size": 64,
    "max_size": 64,
}


def _baseline(seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    model = build_detector(Model.model_validate(BASELINE), 11)
    for m in model.modules():  # non-trivial BN statistics
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.1, 0.1)
            m.running_var.uniform_(0.5, 1.5)
    return model.eval()


def test_arch_round_trips_as_string_and_list() -> None:
    arch = LatencyArch((0, 3, 6, 1))
    assert str(arch) == "[0, 3, 6, 1]"
    assert LatencyArch.parse(str(arch)) == arch == LatencyArch.parse("0-3-6-1")
    assert LatencyArch.parse(arch.to_list()) == arch
    with pytest.raises(ValueError, match="list of ints"):
        LatencyArch.parse("0-x")
    space = LatencySpaceSpec(width_mult=0.25, levels=[4, 5]).build().space
    with pytest.raises(ValueError, match="block 0 has variants 0..5"):
        space.parse([6] + [0] * (len(space.num_variants) - 1))


def test_variant0_equals_the_baseline(tmp_path) -> None:
    baseline = _baseline()
    ckpt = save_model(
        tmp_path / "baseline.pt", baseline, architecture=BASELINE, categories=list("0123456789"),
        cat_ids=list(range(1, 11)),
    )  # fmt: skip
    model = build_detector(Model.model_validate(BASELINE), 11, load_weights=False)
    model.load_state_dict(read_model_file(ckpt)["state_dict"])
    space = to_space_detector(model.eval())
    body = space.backbone.body
    assert len(body.blocks()) == 16  # MobileNetV2's inverted residuals with an expansion conv
    body.set_active_subnet(body.space.baseline)
    x = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        want = Network(_baseline())(x)
        got = Network(space)(x)
    for k in want:
        torch.testing.assert_close(got[k], want[k], rtol=0, atol=0)
    # the static net of variant 0 everywhere is the baseline, parameter names included
    static = body.get_active_subnet()
    assert static.state_dict().keys() == _baseline().backbone.body.state_dict().keys()


def test_pruned_variants_keep_the_most_important_channels() -> None:
    body = to_space_detector(_baseline()).backbone.body
    block: VariantBlock = body.blocks()[0]
    original = block.variants[0]
    hidden = original.conv[2].weight.shape[1]
    imp = ir_importance(original)
    assert block.multipliers[:3] == (1.0, 0.9, 0.75)
    for v, m in enumerate(block.multipliers[1:], start=1):
        if m == 0.0:
            continue
        keep = kept_channels(original, m)
        k = max(1, round(m * hidden))
        assert len(keep) == k
        assert imp[keep].min() >= imp.topk(k).values.min()  # the k largest L1 norms
        pruned = block.variants[v]
        torch.testing.assert_close(pruned.conv[2].weight, original.conv[2].weight[:, keep])
        torch.testing.assert_close(pruned.conv[0][0].weight, original.conv[0][0].weight[keep])
        torch.testing.assert_close(
            pruned.conv[1][1].running_var, original.conv[1][1].running_var[keep]
        )
    skips = [b for b in body.blocks() if b.multipliers[-1] == 0.0]
    assert all(b.variants[0].use_res_connect for b in skips)
    assert len(skips) == 10  # MobileNetV2's residual blocks


def test_expected_latency_gradient() -> None:
    lut = LatencyTable("mmac", 64, 5.0, [[3.0, 2.0, 0.0], [4.0, 1.0]])
    logits = [
        torch.tensor([0.3, -0.2, 0.5], requires_grad=True),
        torch.tensor([1.0, 0.0], requires_grad=True),
    ]
    e = lut.expected(logits)
    e.backward()
    for alpha, row in zip(logits, lut.table, strict=True):
        p = torch.softmax(alpha.detach(), 0)
        c = torch.tensor(row)
        expected_b = (p * c).sum()
        torch.testing.assert_close(alpha.grad, p * (c - expected_b))  # p_v (LUT_v - E_b)
    assert lut.minimum == 5.0 + 0.0 + 1.0 and lut.baseline == 12.0
    assert lut.predict(LatencyArch((1, 1))) == 8.0


def test_reinforce_estimates_the_gradient_of_the_expected_task_loss() -> None:
    """For an additive loss the exact gradient of E_p[loss] is known; the leave-one-out
    REINFORCE estimate over many draws matches it, and a search with it finds the best arch."""
    costs = [torch.tensor([0.5, 0.1, 0.9]), torch.tensor([0.2, 0.7])]

    def loss(a: LatencyArch) -> float:
        return float(sum(c[v] for c, v in zip(costs, a.choices, strict=True)))

    logits = [
        torch.tensor([0.3, -0.2, 0.5], requires_grad=True),
        torch.tensor([1.0, 0.0], requires_grad=True),
    ]
    exact = sum((torch.softmax(a, 0) * c).sum() for a, c in zip(logits, costs, strict=True))
    want = torch.autograd.grad(exact, logits)
    est = reinforce_loss(logits, loss, 20000, torch.Generator().manual_seed(0))
    got = torch.autograd.grad(est, logits)
    for g, w in zip(got, want, strict=True):
        torch.testing.assert_close(g, w, atol=0.01, rtol=0.0)
    with pytest.raises(ValueError):  # the baseline needs two draws at least
        reinforce_loss(logits, loss, 1, torch.Generator())
    alphas = [torch.zeros(3, requires_grad=True), torch.zeros(2, requires_grad=True)]
    opt = torch.optim.Adam(alphas, lr=0.05, betas=(0.0, 0.999))
    gen = torch.Generator().manual_seed(1)
    for _ in range(200):
        opt.zero_grad()
        reinforce_loss(alphas, loss, 4, gen).backward()
        opt.step()
    assert [int(a.argmax()) for a in alphas] == [1, 0]


def test_lut_mmac_predicts_the_whole_network(tmp_path) -> None:
    space = to_space_detector(_baseline())
    body = space.backbone.body
    lut = cached_table(tmp_path / "lut.json", space, 64, "mmac")
    assert (tmp_path / "lut.json").is_file()
    assert cached_table(tmp_path / "lut.json", space, 64, "mmac") == lut
    rng = random.Random(0)
    for _ in range(3):
        arch = body.space.sample(rng)
        body.set_active_subnet(arch)
        static = count_flops(Network(space), torch.zeros(1, 3, 64, 64))
        assert lut.predict(arch) == pytest.approx(static.macs / 1e6, rel=1e-6)
    assert lut.minimum < lut.baseline


def test_lut_measured_cpu_sanity() -> None:
    """Measured latencies are positive, and the prediction of a random architecture is compared
    with the whole network's measured latency (logged; no timing asserts in unit tests)."""
    space = to_space_detector(_baseline(), [0.5])
    lut = build_table(space, 64, "measured:cpu", min_run_time=0.01)
    assert lut.unit == "ms"
    assert all(v >= 0 for row in lut.table for v in row) and lut.baseline > 0
    body = space.backbone.body
    arch = body.space.sample(random.Random(1))
    body.set_active_subnet(arch)
    measured = measure_latency(Network(space), torch.zeros(1, 3, 64, 64), threads=1,
                               min_run_time=0.05).median_ms  # fmt: skip
    assert measured > 0 and lut.predict(arch) > 0
    print(f"predicted {lut.predict(arch):.3f} ms, measured {measured:.3f} ms")


def test_distillation_from_the_baseline_is_zero_at_variant0() -> None:
    from nasdet.methods.latency.teacher import BaselineDistill

    space = to_space_detector(_baseline()).train()
    for m in space.modules():  # frozen statistics: the student then computes the teacher's
        if isinstance(m, torch.nn.BatchNorm2d):
            m.eval()
    hook = BaselineDistill(_baseline(), kd_ratio=1.0, kind="softmax")
    images = [torch.rand(3, 64, 64)]
    targets = [{"boxes": torch.tensor([[4.0, 4.0, 30.0, 30.0]]), "labels": torch.tensor([3])}]
    (losses,) = list(hook(space, images, targets, 0))
    assert float(losses["loss_kd"].detach()) == pytest.approx(0.0, abs=1e-6)
    space.backbone.body.set_active_subnet(LatencyArch((4,) * 16))
    (losses,) = list(hook(space, images, targets, 0))
    assert float(losses["loss_kd"].detach()) > 0 and "classification" in losses
