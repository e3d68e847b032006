"""SerialBackbone: torchvision ResNet equivalence, contract metadata, weight inheritance."""

from __future__ import annotations

import random

import pytest
import torch
import torchvision
from torch import nn
from torchvision.models._utils import IntermediateLayerGetter
from torchvision.ops import FrozenBatchNorm2d

from nasdet.methods.spnas.nets import SerialBackbone, freeze_inherited, inherit_weights
from nasdet.methods.spnas.space import SerialCode, mutate_expand
from nasdet.models.backbone import FPNBackbone, ShapeSpec

R50 = "111-2111-211111-211"
R18 = "11-21-21-21"
RETURN = {f"layer{i}": f"c{i + 1}" for i in range(1, 5)}


def randomize_norms(model: nn.Module, seed: int = 0) -> nn.Module:
    """Random affine parameters and running statistics in every BN, so a misplaced one shows."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d | FrozenBatchNorm2d):
                n = m.weight.shape[0]
                m.weight.copy_(torch.rand(n, generator=g) + 0.5)
                m.bias.copy_(torch.randn(n, generator=g) * 0.1)
                m.running_mean.copy_(torch.randn(n, generator=g) * 0.1)
                m.running_var.copy_(torch.rand(n, generator=g) + 0.5)
    return model


@pytest.mark.parametrize(
    ("code", "block", "factory"),
    [
        (R50, "bottleneck", torchvision.models.resnet50),
        (R18, "basic", torchvision.models.resnet18),
        (R50, "resnext", torchvision.models.resnext50_32x4d),
    ],
)
def test_code_is_the_torchvision_resnet(code: str, block: str, factory) -> None:
    torch.manual_seed(0)
    ref = randomize_norms(factory(weights=None)).eval()
    state = {k: v for k, v in ref.state_dict().items() if not k.startswith("fc.")}
    ours = SerialBackbone(code, block=block).eval()
    assert set(ours.state_dict()) == set(state)
    ours.load_state_dict(state, strict=True)
    x = torch.randn(2, 3, 32, 64)
    with torch.no_grad():
        want, got = IntermediateLayerGetter(ref, RETURN)(x), ours(x)
    assert list(got) == ["c2", "c3", "c4", "c5"]
    for key in want:
        torch.testing.assert_close(got[key], want[key], atol=1e-6, rtol=0)
    assert ours.feature_info == [ShapeSpec(v.shape[1], 32 // v.shape[-2]) for v in got.values()]


@pytest.mark.parametrize("block", ["bottleneck", "basic", "resnext"])
def test_contract_levels_and_gradients(block: str) -> None:
    body = SerialBackbone(
        "11-21-211-21-2", block=block, base_width=16, groups=4, width_per_group=16
    )
    out = body(torch.randn(2, 3, 64, 64))
    assert list(out) == ["c2", "c3", "c4", "c5", "c6"]
    expansion = 1 if block == "basic" else 4
    assert body.feature_info == [ShapeSpec(16 * 2**i * expansion, 2 ** (i + 2)) for i in range(5)]
    assert [tuple(v.shape[1:]) for v in out.values()] == [
        (s.channels, 64 // s.stride, 64 // s.stride) for s in body.feature_info
    ]
    assert body.out_channels == [s.channels for s in body.feature_info]
    assert "layer5.0.downsample.0.weight" in body.state_dict()
    sum(v.float().mean() for v in out.values()).backward()
    assert all(p.grad is not None for p in body.parameters())


def test_levels_select_outputs_and_drop_later_stages() -> None:
    body = SerialBackbone(R50, block="basic", base_width=8, levels=(3, 4))
    assert list(body(torch.randn(1, 3, 64, 64))) == ["c3", "c4"]
    assert body.feature_info == [ShapeSpec(16, 8), ShapeSpec(32, 16)]
    assert not hasattr(body, "layer4")
    fpn = FPNBackbone(SerialBackbone(R50, base_width=8), 16, extra="pool")
    assert list(fpn(torch.randn(1, 3, 64, 64))) == ["p2", "p3", "p4", "p5", "pool"]
    with pytest.raises(ValueError, match="levels must be increasing values in"):
        SerialBackbone(R50, levels=(3, 6))
    with pytest.raises(ValueError, match="must start with one stride-2"):
        SerialBackbone("11-11")
    with pytest.raises(ValueError, match="block must be one of"):
        SerialBackbone(R50, block="dense")  # type: ignore[arg-type]


def _outputs(model: nn.Module, x: torch.Tensor) -> dict[str, torch.Tensor]:
    with torch.no_grad():
        return dict(model.eval()(x))


@pytest.mark.parametrize("block", ["bottleneck", "basic", "resnext"])
@pytest.mark.parametrize("norm", [nn.BatchNorm2d, FrozenBatchNorm2d])
def test_expand_is_an_identity_morphism(block: str, norm: type[nn.Module]) -> None:
    torch.manual_seed(0)
    kwargs = dict(block=block, base_width=8, groups=2, width_per_group=32, norm_layer=norm)
    parent = randomize_norms(SerialBackbone("11-211-21-21", **kwargs))
    x = torch.randn(2, 3, 64, 64)
    want = _outputs(parent, x)
    rng = random.Random(0)
    for _ in range(3):
        child = parent.derive(mutate_expand(parent.code, rng))
        report = inherit_weights(child, parent)
        assert len(report.identity_blocks) == 1 and not report.dropped
        assert report.num_inherited == len(parent.state_dict())
        got = _outputs(child, x)
        assert list(got) == list(want)
        for key in want:
            torch.testing.assert_close(got[key], want[key], atol=1e-5, rtol=0)
        parent = child


def test_swap_inherits_all_but_the_moved_block() -> None:
    torch.manual_seed(0)
    parent = randomize_norms(SerialBackbone(R50, base_width=8))
    child = parent.derive(SerialCode.parse("1111-211-211111-211"))
    report = inherit_weights(child, parent)
    assert report.identity_blocks == ("layer1.3",)
    assert {k.split(".")[0] + "." + k.split(".")[1] for k in report.dropped} == {"layer2.3"}
    assert report.num_new == len([k for k in child.state_dict() if k.startswith("layer1.3.")])
    x = torch.randn(1, 3, 64, 64)
    want, got = _outputs(parent, x), _outputs(child, x)
    torch.testing.assert_close(got["c2"], want["c2"], atol=1e-5, rtol=0)  # gained an identity
    assert not torch.allclose(got["c3"], want["c3"])  # lost a block
    assert got["c5"].shape == want["c5"].shape
    neck = FPNBackbone(child, 8)  # inside a larger module, the prefix locates the backbone
    assert freeze_inherited(neck, report, prefix="body.") > 0
    assert all(p.requires_grad for p in neck.fpn.parameters())
    assert all(p.requires_grad for p in child.layer1[3].parameters())
    assert not child.layer1[0].conv1.weight.requires_grad


def test_add_stage_keeps_levels_and_freeze_keeps_new_blocks_trainable() -> None:
    torch.manual_seed(0)
    parent = randomize_norms(SerialBackbone(R50, block="basic", base_width=8))
    child = parent.derive(SerialCode.parse(R50 + "-21"))
    report = inherit_weights(child, parent)
    assert report.identity_blocks == ("layer5.1",)
    assert all(k.startswith("layer5.") for k in report.new)
    x = torch.randn(1, 3, 128, 128)
    want, got = _outputs(parent, x), _outputs(child, x)
    assert list(got) == ["c2", "c3", "c4", "c5", "c6"]
    for key in want:
        assert torch.equal(got[key], want[key])
    frozen = freeze_inherited(child, report)
    trainable = {n for n, p in child.named_parameters() if p.requires_grad}
    assert frozen == len([n for n, _ in child.named_parameters()]) - len(trainable)
    assert trainable and all(n.startswith("layer5.") for n in trainable)


def test_other_block_type_inherits_only_the_stem() -> None:
    parent = SerialBackbone(R18, block="basic", base_width=8)
    child = SerialBackbone(R18, block="bottleneck", base_width=8)
    report = inherit_weights(child, parent)
    assert set(report.inherited) == {
        k for k in child.state_dict() if k.startswith(("conv1", "bn1"))
    }
    assert "layer1.0.conv1.weight" in report.dropped
