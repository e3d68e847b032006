"""DetNAS ShuffleNetV2: genotype round trips and sampling, units, static backbone and supernet."""

from __future__ import annotations

import random

import pytest
import torch

from nasdet.methods.detnas.nets import (
    ChoiceBlock,
    ShuffleNetV2Backbone,
    ShuffleNetV2Supernet,
    ShuffleUnit,
    XceptionUnit,
    make_unit,
    stage_widths,
)
from nasdet.methods.detnas.space import (
    CHOICES,
    STAGE_DEPTHS,
    ShuffleNetCode,
    ShuffleNetSpace,
    handcrafted,
)
from nasdet.models.backbone import ShapeSpec, check_backbone

CODE = "3573-5x77-33x3x357-7x33"
SPACE = ShuffleNetSpace()
TINY = {"widths": (16, 32, 64, 128), "stem_channels": 8}  # stride-2 units need out > in


def _codes(n: int, seed: int = 0) -> list[ShuffleNetCode]:
    rng = random.Random(seed)
    return [SPACE.sample(rng) for _ in range(n)]


# --- genotype ---------------------------------------------------------------------------------


def test_parse_str_round_trip() -> None:
    code = ShuffleNetCode.parse(CODE)
    assert str(code) == CODE
    assert code.depths == STAGE_DEPTHS and code.num_blocks == 20
    assert code.stages[0] == (0, 1, 2, 0) and code.stages[1] == (1, 3, 2, 2)
    assert code.choice_names[5] == "shuffle_xception"
    assert ShuffleNetCode.parse(code) is code
    assert ShuffleNetCode.parse("x-35").depths == (1, 2)
    for c in _codes(200):
        assert ShuffleNetCode.parse(str(c)) == c


def test_mutable_cfg_and_yaml_round_trip() -> None:
    cfg = ShuffleNetCode.parse(CODE).to_mutable_cfg()
    assert len(cfg) == 20
    assert cfg["backbone.layers.0.2"] == {"chosen": "shuffle_7x7"}
    assert cfg["backbone.layers.3.1"] == {"chosen": "shuffle_xception"}
    for c in _codes(100, seed=1):
        assert ShuffleNetCode.from_mutable_cfg(c.to_mutable_cfg()) == c
        assert ShuffleNetCode.from_yaml(c.to_yaml()) == c
    odd = ShuffleNetCode.parse("x-357x-5")
    assert ShuffleNetCode.from_yaml(odd.to_yaml()) == odd
    # key order does not matter; MMRazor 0.x keys and one-item lists are read too
    shuffled = dict(reversed(list(cfg.items())))
    assert str(ShuffleNetCode.from_mutable_cfg(shuffled)) == CODE
    old = {"stage_0_block_0": {"chosen": ["shuffle_5x5"]}, "stage_1_block_0": {"chosen": ["x"]}}
    with pytest.raises(ValueError, match="chosen 'x' is not one of shuffle_3x3"):
        ShuffleNetCode.from_mutable_cfg(old)
    old["stage_1_block_0"]["chosen"] = ["shuffle_xception"]
    assert str(ShuffleNetCode.from_mutable_cfg(old)) == "5-x"


def test_mutable_cfg_errors() -> None:
    cfg = ShuffleNetCode.parse(CODE).to_mutable_cfg()
    bad = dict(cfg, **{"backbone.layers.1.1": {"chosen": "shuffle_9x9"}})
    with pytest.raises(ValueError, match="shuffle_9x9"):
        ShuffleNetCode.from_mutable_cfg(bad)
    missing = {k: v for k, v in cfg.items() if k != "backbone.layers.2.3"}
    with pytest.raises(ValueError, match=r"misses 1 block.*backbone\.layers\.2\.3"):
        ShuffleNetCode.from_mutable_cfg(missing)
    last_missing = {k: v for k, v in cfg.items() if k != "backbone.layers.3.3"}
    with pytest.raises(ValueError, match=r"backbone\.layers\.3\.3"):
        ShuffleNetCode.from_mutable_cfg(last_missing, depths=STAGE_DEPTHS)
    with pytest.raises(ValueError, match="not a ShuffleNet block"):
        ShuffleNetCode.from_mutable_cfg(dict(cfg, **{"neck.foo": {"chosen": "shuffle_3x3"}}))


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("3573-5x77-33y3x357-7x33", r"'y' at position 13 \(stage 3, block 3\).*'3', '5', '7', 'x'"),
        ("35735", None),
        ("3573--5x77", "stage 2 is empty"),
        ("3573-5X77", "'X' at position 7"),
        (3573, "must be a string"),
    ],
)
def test_parse_errors(text: object, message: str | None) -> None:
    if message is None:  # well-formed but outside the DetNAS space
        with pytest.raises(ValueError, match=r"depths \(5,\); the space has \(4, 4, 8, 4\)"):
            SPACE.parse(text)
    else:
        with pytest.raises(ValueError, match=message):
            ShuffleNetCode.parse(text)  # type: ignore[arg-type]


def test_code_validation_hash_and_equality() -> None:
    with pytest.raises(ValueError, match="19 choices but depths"):
        ShuffleNetCode((0,) * 19)
    with pytest.raises(ValueError, match="choice 4 of block 2"):
        ShuffleNetCode((0, 0, 4, 0), (2, 2))
    with pytest.raises(ValueError, match="at least one block"):
        ShuffleNetCode((0, 0), (2, 0))
    a = ShuffleNetCode.parse(CODE)
    b = ShuffleNetCode(list(a.choices), list(a.depths))  # lists are converted to tuples
    assert a == b and hash(a) == hash(b) and len({a, b, handcrafted()}) == 2
    assert ShuffleNetCode((0, 1, 2, 3), (2, 2)) != ShuffleNetCode((0, 1, 2, 3), (1, 3))
    assert str(handcrafted()) == "3333-3333-33333333-3333"
    assert SPACE.size == 4**20
    with pytest.raises(ValueError, match="num_choices"):
        ShuffleNetSpace(num_choices=5)


def test_sample_mutate_crossover() -> None:
    rng = random.Random(0)
    samples = _codes(300)
    assert all(SPACE.contains(c) for c in samples)
    counts = [sum(c.choices.count(k) for c in samples) for k in range(4)]
    assert all(1300 < n < 1700 for n in counts)  # 6000 genes, ~1500 per choice
    for parent in samples[:200]:
        for prob in (0.0, 0.1, 1.0):
            child = SPACE.mutate(parent, rng, prob)
            assert SPACE.contains(child) and child != parent
            diff = sum(x != y for x, y in zip(child.choices, parent.choices, strict=True))
            if prob == 0.0:
                assert diff == 1
            if prob == 1.0:
                assert diff == 20
    small = ShuffleNetSpace(num_choices=2)
    child = small.mutate(handcrafted(), rng, prob=1.0)
    assert child.choices == (1,) * 20
    a, b = samples[0], samples[1]
    kids = [SPACE.crossover(a, b, rng) for _ in range(50)]
    for kid in kids:
        assert all(g in (x, y) for g, x, y in zip(kid.choices, a.choices, b.choices, strict=True))
    assert SPACE.crossover(a, b, rng, prob=0.0) == a and SPACE.crossover(a, b, rng, prob=1.0) == b
    assert len(set(kids)) > 40
    with pytest.raises(ValueError, match="depths"):
        SPACE.mutate(ShuffleNetCode.parse("33-33"), rng)


# --- modules ----------------------------------------------------------------------------------


@pytest.mark.parametrize("choice", range(4))
@pytest.mark.parametrize(("in_ch", "out_ch", "stride"), [(8, 16, 2), (16, 16, 1), (24, 40, 2)])
def test_unit_shapes(choice: int, in_ch: int, out_ch: int, stride: int) -> None:
    unit = make_unit(choice, in_ch, out_ch, stride)
    assert isinstance(unit, XceptionUnit if choice == 3 else ShuffleUnit)
    assert (unit.proj is None) == (stride == 1)
    y = unit(torch.randn(2, in_ch, 12, 12))
    assert y.shape == (2, out_ch, 12 // stride, 12 // stride)


def test_unit_errors_and_widths() -> None:
    with pytest.raises(ValueError, match="in_ch == out_ch"):
        make_unit(0, 16, 32, 1)
    with pytest.raises(ValueError, match="out_ch > in_ch"):
        make_unit(1, 16, 16, 2)
    with pytest.raises(ValueError, match="choice must be in 0..3"):
        make_unit(4, 16, 32, 2)
    assert stage_widths(1.0) == (64, 160, 320, 640)
    assert stage_widths(0.5) == (32, 80, 160, 320)
    assert all(w % 8 == 0 for w in stage_widths(0.3))
    with pytest.raises(ValueError, match="levels"):
        ShuffleNetV2Backbone(handcrafted(), levels=(3, 2))
    with pytest.raises(ValueError, match="levels"):
        ShuffleNetV2Supernet(levels=(2, 6))
    with pytest.raises(ValueError, match="one width per stage"):
        ShuffleNetV2Backbone(handcrafted(), widths=(64, 160, 320))


def test_feature_info_and_partial_levels() -> None:
    net = ShuffleNetV2Backbone(ShuffleNetCode.parse(CODE), **TINY, levels=(3, 4))
    assert check_backbone(net) == [ShapeSpec(32, 8), ShapeSpec(64, 16)]
    assert net.out_channels == [32, 64] and len(net.stages) == 3  # stage 4 (c5) not built
    out = net(torch.randn(1, 3, 64, 64))
    assert list(out) == ["c3", "c4"] and out["c4"].shape == (1, 64, 4, 4)
    sup = ShuffleNetV2Supernet(**TINY)
    assert sup.feature_info[0] == ShapeSpec(16, 4) and sup.feature_info[-1] == ShapeSpec(128, 32)
    assert isinstance(sup.stages[2][7], ChoiceBlock) and len(sup.stages[2][7].choices) == 4


def test_every_supernet_parameter_gets_a_gradient() -> None:
    torch.manual_seed(0)
    net = ShuffleNetV2Supernet(**TINY)
    x = torch.randn(2, 3, 64, 64)
    rng = random.Random(0)
    for _ in range(40):
        net.sample_active_subnet(rng)
        loss = sum((f * torch.randn_like(f)).mean() for f in net(x).values())
        loss.backward()
    no_grad = [n for n, p in net.named_parameters() if p.grad is None or not p.grad.abs().sum()]
    assert not no_grad, f"{len(no_grad)} parameters got no gradient, e.g. {no_grad[:3]}"


def _count(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def test_active_subnet_matches_supernet() -> None:
    torch.manual_seed(0)
    net = ShuffleNetV2Supernet(**TINY)
    x = torch.randn(2, 3, 64, 64)
    rng = random.Random(3)
    with torch.no_grad():  # non-trivial BN running statistics
        for _ in range(8):
            net.sample_active_subnet(rng)
            net(x)
    with pytest.raises(ValueError, match="depths"):
        net.set_active_subnet(ShuffleNetCode.parse("33-33"))
    for _ in range(3):
        code = net.sample_active_subnet(rng)
        assert net.active_subnet == code
        net.eval()
        sub = net.get_active_subnet()
        assert not sub.training and sub.code == code and sub.feature_info == net.feature_info
        chosen = sum(_count(block.choices[block.active]) for stage in net.stages for block in stage)
        assert _count(sub) == chosen + _count(net.stem)
        with torch.no_grad():
            a, b = net(x), sub(x)
        assert list(a) == list(b) == ["c2", "c3", "c4", "c5"]
        for k in a:
            torch.testing.assert_close(a[k], b[k], atol=1e-6, rtol=0)
        sub.stem[0].weight.data.add_(1.0)  # weights are copies, not shared
        assert not torch.equal(sub.stem[0].weight, net.stem[0].weight)
        net.train()
        assert net.get_active_subnet().training
    net.stem[1].eval()  # a frozen BN stays frozen in the copy
    sub = net.get_active_subnet()
    assert sub.training and sub.stages[0][0].training and not sub.stem[1].training


def test_full_width_builds_and_runs_224() -> None:
    assert len(CHOICES) == 4
    sup = ShuffleNetV2Supernet(widths=stage_widths(1.0)).eval()
    sup.set_active_subnet(CODE)
    net = sup.get_active_subnet()
    assert [s.channels for s in net.feature_info] == [64, 160, 320, 640]
    with torch.no_grad():
        out = net(torch.randn(1, 3, 224, 224))
    assert out["c5"].shape == (1, 640, 7, 7) and out["c2"].shape == (1, 64, 56, 56)
    assert 1.0e6 < _count(net) < 2.5e6 and 5e6 < _count(sup) < 9e6
