"""Once-for-All: the k/e/d genotype and its space, the elastic ops, the MobileNetV3 / MobileNetV2
supernets and their static subnets, the OFA checkpoint key map and the config sections."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
import torch
from pydantic import ValidationError
from torch import Tensor

from nasdet.build import build_detector
from nasdet.config import FPNNeck, ModelConfig, spec_union
from nasdet.errors import CheckpointError
from nasdet.methods.ofa.convert import load_ofa_checkpoint, ofa_state_dict_to_nasdet
from nasdet.methods.ofa.elastic import DynamicBatchNorm2d, DynamicSeparableConv2d
from nasdet.methods.ofa.nets import (
    OFAMobileNetV2Supernet,
    OFAMobileNetV3Supernet,
    OFASubnetBackbone,
    OFASupernet,
)
from nasdet.methods.ofa.parts import OFASubnetSpec, OFASupernetSpec
from nasdet.methods.ofa.space import OFAGenotype, OFASpace
from nasdet.search.supernet import export_subnet, supernet_spec

LARGEST = "k7777-7777-7777-7777-7777:e6666-6666-6666-6666-6666:d44444"


def _genotype(seed: int = 0) -> OFAGenotype:
    return OFASpace().sample(random.Random(seed))


# ----------------------------------------------------------------------------- genotype
def test_genotype_string_round_trip() -> None:
    for seed in range(5):
        g = _genotype(seed)
        text = str(g)
        assert OFAGenotype.parse(text) == g
        assert str(OFAGenotype.parse(text)) == text
        assert len(g.ks) == 20 and len(g.e) == 20 and len(g.d) == 5
    assert str(OFASpace().largest()) == LARGEST
    assert OFAGenotype.parse(f"  {LARGEST}\n") == OFASpace().largest()


def test_genotype_dict_round_trip_and_pasted_text() -> None:
    g = _genotype(1)
    d = g.to_dict()
    assert set(d) == {"ks", "e", "d"} and isinstance(d["ks"], list)
    assert OFAGenotype.from_dict(d) == g
    assert OFAGenotype.parse(json.dumps(d)) == g  # OFA's dict as JSON
    assert OFAGenotype.parse(str(d)) == g  # as Python prints it (single quotes)
    yaml_text = "ks: " + json.dumps(d["ks"]) + "\ne: " + json.dumps(d["e"]) + f"\nd: {d['d']}\n"
    assert OFAGenotype.parse(yaml_text) == g
    # OFA's arch dicts also carry the resolution (and "wid": None): ignored
    assert OFAGenotype.parse(json.dumps({**d, "image_size": 224, "wid": None})) == g
    floats = {**d, "e": [float(x) for x in d["e"]]}
    assert OFAGenotype.from_dict(floats) == g
    assert hash(g) == hash(OFAGenotype.parse(str(g)))


def test_genotype_generalises_to_other_shapes() -> None:
    g = OFAGenotype.parse("k357-553:e346-666:d31")
    assert (g.n_stages, g.max_depth) == (2, 3)
    assert g.active_blocks() == (0, 1, 2, 3)
    assert str(g.canonical()) == "k357-500:e346-600:d31"
    assert OFAGenotype(ks=[3, 5], e=[4, 6], d=[1, 1]).ks == (3, 5)  # lists become tuples


def test_canonical_and_active_blocks() -> None:
    g = OFAGenotype.parse("k3577-5555-7777-3333-5353:e3466-4444-6666-3333-4646:d23432")
    assert g.active_blocks() == (0, 1, 4, 5, 6, 8, 9, 10, 11, 12, 13, 14, 16, 17)
    c = g.canonical()
    assert str(c) == "k3500-5550-7777-3330-5300:e3400-4440-6666-3330-4600:d23432"
    assert c.canonical() == c
    other = OFAGenotype.parse("k3533-5557-7777-3335-5377:e3434-4446-6666-3336-4666:d23432")
    assert other != g and other.canonical() == c


@pytest.mark.parametrize(
    ("text", "field"),
    [
        ("k7777-7777-7777-7777-7777:e6666-6666-6666-6666-6666:d44454", "d"),
        ("k7777-7777-7777-7777-7776:e6666-6666-6666-6666-6666:d44444", "ks"),
        ("k7777-7777-7777-7777-7770:e6666-6666-6666-6666-6666:d44444", "ks"),
        ("k7777-7777-7777-7777-7777:e6666-6666-6666-6666-6606:d44444", "e"),
        ("k7777-7777-7777-7777-777:e6666-6666-6666-6666-6666:d44444", "ks"),
        ("k7777-7777-7777-7777:e6666-6666-6666-6666:d44444", "ks"),
        ("k7777-7777-7777-7777-7777:e6666-6666-6666-6666:d44444", "e"),
        ("k7777-7777-7777-7777-7777:e6666-6666-6666-6666-6666", "genotype"),
        ("7777", "genotype"),
        ('{"ks": [3, 5], "e": [3, 4]}', "d"),
        ('{"ks": [3, 5], "e": [3, 4], "d": [2], "w": [1]}', "w"),
        ('{"ks": [3, 5], "e": [3, 4.5], "d": [2]}', "e"),
        ('{"ks": [3, 5], "e": [3, true], "d": [2]}', "e"),
        ('{"ks": "35", "e": [3, 4], "d": [2]}', "ks"),
    ],
)
def test_genotype_errors_name_the_field(text: str, field: str) -> None:
    with pytest.raises(ValueError) as err:
        OFAGenotype.parse(text)
    msg = str(err.value)
    assert "\n" not in msg and field in msg, msg


# ----------------------------------------------------------------------------- space
def test_space_sample_contains_and_size() -> None:
    space = OFASpace()
    assert space.size() == (9**2 + 9**3 + 9**4) ** 5  # ~2.2e19, the paper's "10^19"
    rng = random.Random(0)
    for _ in range(20):
        assert space.contains(space.sample(rng))
    assert space.contains(space.smallest()) and space.contains(space.largest().canonical())
    assert str(space.smallest()).endswith(":d22222")
    small = OFASpace(ks_choices=(3,), e_choices=(3, 6), d_choices=(2,))
    assert small.size() == (1 * 2) ** (2 * 5)  # one depth: 2 blocks of 1 x 2 choices per stage
    assert not small.contains(space.largest())
    with pytest.raises(ValueError, match="ks"):
        small.parse(LARGEST)
    with pytest.raises(ValueError, match="d_choices"):
        OFASpace(d_choices=(2, 5))


def test_space_mutate_and_crossover() -> None:
    space, rng = OFASpace(), random.Random(0)
    a, b = space.sample(rng), space.sample(rng)
    assert space.mutate(a, rng, 0.0) == a
    changed = space.mutate(a, rng, 1.0)
    assert space.contains(changed) and changed != a
    child = space.crossover(a, b, rng)
    assert space.contains(child)
    for i in range(20):
        assert child.ks[i] in (a.ks[i], b.ks[i]) and child.e[i] in (a.e[i], b.e[i])
    assert space.crossover(a, b, rng, prob=0.0) == a
    assert space.crossover(a, b, rng, prob=1.0) == b
    # canonical parents (inactive blocks 0) give children whose active blocks are all set
    for _ in range(20):
        kid = space.mutate(space.crossover(a.canonical(), b.canonical(), rng), rng, 0.5)
        assert space.contains(kid)


def test_space_encode() -> None:
    space = OFASpace()
    g = OFAGenotype.parse("k3577-5555-7777-3333-5353:e3466-4444-6666-3333-4646:d23432")
    x = space.encode(g)
    assert len(x) == 20 * (3 + 3) + 5 * 3 == space.encoding_size
    assert sum(x) == 2 * len(g.active_blocks()) + 5
    assert space.encode(g.canonical()) == x
    assert x[:6] == [1.0, 0.0, 0.0, 1.0, 0.0, 0.0]  # block 0: k3, e3
    assert x[12:18] == [0.0] * 6  # block 2 is inactive (d[0] = 2)


# ----------------------------------------------------------------------------- networks
def _prepared(net: OFASupernet, seed: int = 0, size: int = 64) -> OFASupernet:
    """``net`` with perturbed kernel transforms and BN affine parameters, and BN statistics
    from a few train-mode forwards of sampled subnets; in eval mode."""
    torch.manual_seed(seed)
    with torch.no_grad():
        for name, p in net.named_parameters():
            if name.endswith("_matrix"):
                p.add_(0.1 * torch.randn_like(p))
            elif ".bn." in name:
                p.uniform_(0.5, 1.5) if name.endswith("weight") else p.uniform_(-0.2, 0.2)
        net.train()
        rng = random.Random(seed)
        for _ in range(3):
            net.sample_active_subnet(rng)
            net(torch.randn(2, 3, size, size))
    return net.eval()


def _close(a: dict[str, Tensor], b: dict[str, Tensor]) -> None:
    assert list(a) == list(b)
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("kind", ["mbv3", "mbv2"])
def test_static_subnet_equals_the_supernet(kind: str) -> None:
    cls = OFAMobileNetV3Supernet if kind == "mbv3" else OFAMobileNetV2Supernet
    net = _prepared(cls(width_mult=0.25))
    x = torch.randn(2, 3, 64, 64)
    rng = random.Random(1)
    space = net.space
    for g in (space.largest(), space.smallest(), *(space.sample(rng) for _ in range(3))):
        net.set_active_subnet(g)
        sub = net.get_active_subnet()
        assert not sub.training and sub.genotype == g
        with torch.no_grad():
            ref, out = net(x), sub(x)
        _close(ref, out)
        assert [v.shape[1] for v in ref.values()] == net.out_channels == sub.out_channels
        assert [v.shape[-1] for v in ref.values()] == [64 // s.stride for s in net.feature_info]
        alone = OFASubnetBackbone(str(g.canonical()), kind, 0.25, (3, 4, 5))
        alone.load_state_dict(sub.state_dict(), strict=True)  # the genotype alone suffices
        with torch.no_grad():
            _close(alone.eval()(x), ref)
        supernet_ptrs = {t.data_ptr() for t in net.state_dict().values()}
        assert not supernet_ptrs & {t.data_ptr() for t in sub.state_dict().values()}
    assert ref["c5"].shape[1] == (240 if kind == "mbv3" else 80)  # 960 / 320 x 0.25


def test_every_parameter_gets_a_gradient() -> None:
    net = OFAMobileNetV3Supernet(width_mult=0.25).train()
    # the largest, every block 3x3 (both kernel transforms), the smallest and two sampled paths
    net.set_max_net()
    paths = [net.active_genotype(), None, net.space.smallest()]
    rng = random.Random(0)
    paths += [net.space.sample(rng) for _ in range(2)]
    for g in paths:
        if g is None:
            net.set_active_subnet(ks=3, e=6, d=4)
        else:
            net.set_active_subnet(g)
        sum(v.mean() for v in net(torch.randn(2, 3, 32, 32)).values()).backward()
    params = dict(net.named_parameters())
    missing = [n for n, p in params.items() if p.grad is None]
    assert not missing, missing[:5]
    assert any(n.endswith("5to3_matrix") for n in params)


def test_kernel_transform() -> None:
    op = DynamicSeparableConv2d(8, (3, 5, 7))
    assert {n for n, _ in op.named_parameters()} == {"conv.weight", "7to5_matrix", "5to3_matrix"}
    w = op.conv.weight
    torch.testing.assert_close(op.get_active_filter(8, 5), w[:, :, 1:6, 1:6])  # identity: centre
    torch.testing.assert_close(op.get_active_filter(8, 3), w[:, :, 2:5, 2:5])
    net = _prepared(OFAMobileNetV3Supernet(width_mult=0.25))
    x = torch.randn(1, 3, 64, 64)
    matrices = [p for n, p in net.named_parameters() if n.endswith("_matrix")]
    for setting, changes in (({"ks": 7}, False), ({"ks": 5}, True)):
        net.set_active_subnet(ks=setting["ks"], e=6, d=4)
        with torch.no_grad():
            before = net(x)["c5"]
            saved = [m.clone() for m in matrices]
            for m in matrices:
                if m.shape[0] == 25:  # 7to5 only
                    m.add_(0.5 * torch.randn_like(m))
            after = net(x)["c5"]
            for m, s in zip(matrices, saved, strict=True):
                m.copy_(s)
        assert (not torch.allclose(before, after)) == changes


def test_depth_keeps_the_first_blocks() -> None:
    net = OFAMobileNetV3Supernet(width_mult=0.25, depth_list=(1, 2, 3, 4), levels=(3, 4)).eval()
    assert not hasattr(net, "final_expand_layer") and len(net.blocks) == 1 + 4 * 4
    ran: list[int] = []
    for i, block in enumerate(net.blocks):
        block.register_forward_hook(lambda *_, i=i: ran.append(i))
    net.set_active_subnet(d=[2, 3, 1, 4, 2])  # stage 5's depth: kept, not built
    with torch.no_grad():
        out = net(torch.randn(1, 3, 64, 64))
    assert ran == [0, 1, 2, 5, 6, 7, 9, 13, 14, 15, 16] and list(out) == ["c3", "c4"]
    sub = net.get_active_subnet()
    assert len(sub.blocks) == len(ran) and not hasattr(sub, "final_expand_layer")


def test_choices_sampling_and_broadcast() -> None:
    net = OFAMobileNetV3Supernet(width_mult=0.25)
    assert net.active_genotype() == net.space.largest()
    net.set_choices(ks=[7], e=[6])
    net.set_choices(d=[3, 4])  # None keeps the ks / e restriction (progressive shrinking)
    rng = random.Random(0)
    for _ in range(5):
        g = net.sample_active_subnet(rng)
        assert set(g.ks) == {7} and set(g.e) == {6} and set(g.d) <= {3, 4}
    net.set_min_net()
    assert str(net.active_genotype()).endswith(":d33333")
    with pytest.raises(ValueError, match="ks"):
        net.set_choices(ks=[9])
    net.set_active_subnet(ks=3, e=[4] * 20, d=2)  # OFA's lists; ints broadcast
    assert set(net.active_genotype().ks) == {3} and net.active_genotype().d == (2,) * 5
    net.set_active_subnet(d=4)  # the rest is kept
    assert set(net.active_genotype().e) == {4}
    with pytest.raises(ValueError, match="e\\[0\\]"):
        net.set_active_subnet(e=5)
    net.set_active_subnet({"ks": [5] * 20, "e": [3] * 20, "d": [2] * 5})
    assert net.blocks[1].conv.active_kernel_size == 5


def test_re_organize_middle_weights() -> None:
    net = _prepared(OFAMobileNetV3Supernet(width_mult=0.25))
    x = torch.randn(2, 3, 64, 64)
    rng = random.Random(3)
    wide = net.space.sample(rng)
    wide = OFAGenotype(wide.ks, (6,) * 20, wide.d)  # random kernels and depths, widest middle
    narrow = net.space.sample(rng)
    before = {}
    with torch.no_grad():
        for g in (net.space.largest(), wide):
            net.set_active_subnet(g)
            before[g] = net(x)
        net.re_organize_middle_weights()
        for g, ref in before.items():
            net.set_active_subnet(g)
            _close(net(x), ref)  # the function of the widest middle is unchanged
        net.set_active_subnet(narrow)  # a narrower one keeps the most important channels
        _close(net.get_active_subnet()(x), net(x))
    block = net.blocks[5].conv
    importance = block.point_linear.conv.conv.weight.abs().sum(dim=(0, 2, 3))
    assert torch.all(importance[:-1] >= importance[1:])


def test_hard_activations_are_ofas() -> None:
    x = torch.linspace(-5, 5, 101)
    relu6 = torch.nn.functional.relu6
    torch.testing.assert_close(torch.nn.Hardswish()(x), x * relu6(x + 3.0) / 6.0)  # OFA's Hswish
    torch.testing.assert_close(torch.nn.Hardsigmoid()(x), relu6(x + 3.0) / 6.0)  # OFA's Hsigmoid


def test_dynamic_batchnorm_updates_the_active_channels_only() -> None:
    bn = DynamicBatchNorm2d(16).train()
    bn(torch.randn(4, 8, 5, 5) + 3.0)
    assert torch.all(bn.bn.running_mean[:8] > 0.1) and torch.all(bn.bn.running_mean[8:] == 0)
    assert int(bn.bn.num_batches_tracked) == 1


# ----------------------------------------------------------------------------- OFA checkpoint
def _ofa_mbv3_w1_state(older_naming: bool) -> dict[str, Tensor]:
    """Random tensors under the key names and shapes of OFA's released
    ``ofa_mbv3_d234_e346_k357_w1.0`` (``OFAMobileNetV3(ks_list=[3, 5, 7],
    expand_ratio_list=[3, 4, 6], depth_list=[2, 3, 4])``), written out from OFA's source:
    ofa/imagenet_classification/elastic_nn/networks/ofa_mbv3.py (OFAMobileNetV3: first_conv,
    blocks, final_expand_layer, feature_mix_layer, classifier; widths 16, 16, 24, 40, 80, 112,
    160, 960, 1280; SE on stages 2, 4, 5), elastic_nn/modules/dynamic_layers.py
    (DynamicMBConvLayer: inverted_bottleneck / depth_conv (+ se) / point_linear, middle
    make_divisible(in * 6, 8)), elastic_nn/modules/dynamic_op.py (DynamicConv2d.conv,
    DynamicSeparableConv2d.conv + 7to5_matrix / 5to3_matrix, DynamicBatchNorm2d.bn, DynamicSE
    = SEModule.fc.reduce / expand with make_divisible(mid // 4, 8)) and ofa/utils/layers.py
    (ConvLayer conv / bn, MBConvLayer, ResidualBlock.conv, LinearLayer.linear).
    """
    state: dict[str, Tensor] = {}

    def bn(prefix: str, n: int) -> None:
        for name in ("weight", "bias", "running_mean", "running_var"):
            state[f"{prefix}.{name}"] = torch.randn(n)
        state[f"{prefix}.num_batches_tracked"] = torch.tensor(7)

    def div8(v: float) -> int:
        new = max(8, int(v + 4) // 8 * 8)
        return new + 8 if new < 0.9 * v else new

    state["first_conv.conv.weight"] = torch.randn(16, 3, 3, 3)
    bn("first_conv.bn", 16)
    state["blocks.0.conv.depth_conv.conv.weight"] = torch.randn(16, 1, 3, 3)
    bn("blocks.0.conv.depth_conv.bn", 16)
    state["blocks.0.conv.point_linear.conv.weight"] = torch.randn(16, 16, 1, 1)
    bn("blocks.0.conv.point_linear.bn", 16)
    conv = "mobile_inverted_conv" if older_naming else "conv"
    in_ch, i = 16, 1
    for out_ch, se in zip((24, 40, 80, 112, 160), (False, True, False, True, True), strict=True):
        for _ in range(4):
            mid, p = div8(round(in_ch * 6)), f"blocks.{i}.{conv}"
            state[f"{p}.inverted_bottleneck.conv.conv.weight"] = torch.randn(mid, in_ch, 1, 1)
            bn(f"{p}.inverted_bottleneck.bn.bn", mid)
            state[f"{p}.depth_conv.conv.conv.weight"] = torch.randn(mid, 1, 7, 7)
            state[f"{p}.depth_conv.conv.7to5_matrix"] = torch.randn(25, 25)
            state[f"{p}.depth_conv.conv.5to3_matrix"] = torch.randn(9, 9)
            bn(f"{p}.depth_conv.bn.bn", mid)
            if se:
                se_mid = div8(mid // 4)
                state[f"{p}.depth_conv.se.fc.reduce.weight"] = torch.randn(se_mid, mid, 1, 1)
                state[f"{p}.depth_conv.se.fc.reduce.bias"] = torch.randn(se_mid)
                state[f"{p}.depth_conv.se.fc.expand.weight"] = torch.randn(mid, se_mid, 1, 1)
                state[f"{p}.depth_conv.se.fc.expand.bias"] = torch.randn(mid)
            state[f"{p}.point_linear.conv.conv.weight"] = torch.randn(out_ch, mid, 1, 1)
            bn(f"{p}.point_linear.bn.bn", out_ch)
            in_ch, i = out_ch, i + 1
    state["final_expand_layer.conv.weight"] = torch.randn(960, 160, 1, 1)
    bn("final_expand_layer.bn", 960)
    state["feature_mix_layer.conv.weight"] = torch.randn(1280, 960, 1, 1)
    state["classifier.linear.weight"] = torch.randn(1000, 1280)
    state["classifier.linear.bias"] = torch.randn(1000)
    return state


@pytest.mark.parametrize("older_naming", [False, True])
def test_load_ofa_checkpoint(tmp_path: Path, older_naming: bool) -> None:
    state = _ofa_mbv3_w1_state(older_naming)
    path = tmp_path / "ofa_mbv3_d234_e346_k357_w1.0"
    wrapped = {"state_dict": state} if older_naming else state  # released files wrap it
    torch.save(wrapped, path)
    if older_naming:
        net = OFAMobileNetV3Supernet(width_mult=1.0)
        dropped = load_ofa_checkpoint(path, net)
    else:  # through the config section's pretrained_path
        spec = OFASupernetSpec(pretrained_path=path)
        net = spec.build()
        dropped = spec.load_pretrained(net)
    assert sorted(dropped) == [
        "classifier.linear.bias",
        "classifier.linear.weight",
        "feature_mix_layer.conv.weight",
    ]
    own = net.state_dict()
    conv = "mobile_inverted_conv" if older_naming else "conv"
    for ofa_key, key in (
        ("first_conv.conv.weight", "first_conv.conv.weight"),
        ("blocks.0.conv.point_linear.bn.running_var", "blocks.0.conv.point_linear.bn.running_var"),
        (
            f"blocks.7.{conv}.depth_conv.conv.7to5_matrix",
            "blocks.7.conv.depth_conv.conv.7to5_matrix",
        ),
        (
            f"blocks.8.{conv}.depth_conv.se.fc.reduce.bias",
            "blocks.8.conv.depth_conv.se.fc.reduce.bias",
        ),
        (
            f"blocks.20.{conv}.point_linear.conv.conv.weight",
            "blocks.20.conv.point_linear.conv.conv.weight",
        ),
        ("final_expand_layer.bn.weight", "final_expand_layer.bn.weight"),
    ):
        assert torch.equal(own[key], state[ofa_key]), key
    net.eval().set_min_net()
    with torch.no_grad():
        out = net(torch.randn(1, 3, 64, 64))
    assert out["c5"].shape == (1, 960, 2, 2)


def test_ofa_checkpoint_errors(tmp_path: Path) -> None:
    state = _ofa_mbv3_w1_state(False)
    path = tmp_path / "ofa.pth"
    torch.save({"state_dict": {**state, "blocks.3.conv.depth_conv.extra": torch.zeros(1)}}, path)
    with pytest.raises(CheckpointError, match="blocks.3.conv.depth_conv.extra") as err:
        load_ofa_checkpoint(path, OFAMobileNetV3Supernet(width_mult=1.0))
    assert str(path) in str(err.value) and "\n" not in str(err.value)
    del state["blocks.4.conv.depth_conv.bn.bn.weight"]
    torch.save({"state_dict": state}, path)
    with pytest.raises(CheckpointError, match="blocks.4.conv.depth_conv.bn.bn.weight"):
        load_ofa_checkpoint(path, OFAMobileNetV3Supernet(width_mult=1.0))
    with pytest.raises(ValueError, match="width_mult"):
        ofa_state_dict_to_nasdet(state, "mbv3", 1.2)
    # a backbone without stage 5 / level 5 drops those keys
    state = _ofa_mbv3_w1_state(False)
    torch.save(state, path)
    dropped = load_ofa_checkpoint(path, OFAMobileNetV3Supernet(width_mult=1.0, levels=(3, 4)))
    assert (
        "final_expand_layer.conv.weight" in dropped
        and "blocks.20.conv.depth_conv.bn.bn.bias" in dropped
    )


# ----------------------------------------------------------------------------- config sections
SSDLITE = {
    "detector": "ssdlite",
    "backbone": {"name": "ofa_supernet", "width_mult": 0.25, "levels": [3, 4, 5]},
    "min_size": 64,
    "max_size": 64,
}


def test_supernet_spec_builds_and_parses() -> None:
    spec = OFASupernetSpec(width_mult=0.25, depth_list=[2, 4])
    net = spec.build()
    assert isinstance(net, OFAMobileNetV3Supernet) and net.max_depth == 4
    g = spec.parse_genotype(str(spec.space.largest()))
    assert spec.parse_genotype(json.dumps(g.to_dict())) == g
    with pytest.raises(ValueError, match="d\\[0\\] = 3"):
        spec.parse_genotype(LARGEST.replace("d44444", "d34444"))
    sub = spec.subnet(g)
    assert sub.name == "ofa_subnet" and OFAGenotype.parse(sub.genotype) == g.canonical()
    pasted = OFASubnetSpec(genotype=g.to_dict(), width_mult=0.25)  # type: ignore[arg-type]
    assert pasted.genotype == str(g)
    with pytest.raises(ValidationError, match="pretrained_path"):
        OFASupernetSpec(backbone_type="mbv2_backbone", pretrained_path="x.pth")
    with pytest.raises(ValidationError, match="d_choices"):
        OFASupernetSpec(depth_list=[0, 2])
    v2 = OFASupernetSpec(backbone_type="mbv2_backbone", width_mult=0.25, levels=[4, 5]).build()
    assert isinstance(v2, OFAMobileNetV2Supernet) and not v2.blocks[0].residual
    assert [s.stride for s in v2.feature_info] == [16, 32]


def test_export_subnet_on_ssdlite() -> None:
    model_cls = ModelConfig[spec_union((OFASupernetSpec, OFASubnetSpec)), spec_union((FPNNeck,))]
    arch = model_cls.model_validate(SSDLITE)
    torch.manual_seed(0)
    supernet = build_detector(arch, 5, load_weights=False)
    _prepared(supernet.backbone.body)
    supernet.eval()
    genotype = supernet_spec(arch).parse_genotype(str(OFASpace().sample(random.Random(4))))
    model, sub_arch = export_subnet(supernet, arch, genotype, 5)
    assert sub_arch.backbone.name == "ofa_subnet"
    assert model_cls.model_validate(sub_arch.model_dump()) == sub_arch
    images = [torch.rand(3, 64, 64) for _ in range(2)]
    with torch.no_grad():
        _close(supernet.backbone(torch.stack(images)), model.backbone(torch.stack(images)))
        dets_a, dets_b = supernet(images), model(images)
    for a, b in zip(dets_a, dets_b, strict=True):
        torch.testing.assert_close(a["scores"], b["scores"])
        torch.testing.assert_close(a["boxes"], b["boxes"])
