"""The latency spaces of ENOT's other detectors: YOLOv3 (Darknet-53, MobileNetV2) and RetinaNet
(ResNet-50). For each block kind: variant 0 is the baseline, which hidden channels the pruned
variants keep, the skip rule, the static subnet's names, and the mmac LUT against the whole
network's MACs."""

from __future__ import annotations

import random

import pytest
import torch
from torch import nn

from nasdet.build import build_detector
from nasdet.cost.flops import count_flops
from nasdet.methods import Model
from nasdet.methods.latency.latency import Network, build_table
from nasdet.methods.latency.nets import (
    bottleneck_kept_channels,
    darknet_kept_channels,
    l1_importance,
    space_body,
    to_space_detector,
)
from nasdet.methods.latency.parts import LatencySpaceSpec
from nasdet.models.darknet import DarknetResidual
from nasdet.search.supernet import export_subnet

YOLO_DARKNET = {
    "detector": "yolov3",
    "backbone": {"name": "darknet53", "width_mult": 0.125},
    "min_size": 64,
    "max_size": 64,
}
YOLO_MOBILENET = {
    "detector": "yolov3",
    "backbone": {"name": "mobilenet_v2", "width_mult": 0.25},
    "min_size": 64,
    "max_size": 64,
}
RETINANET = {
    "detector": "retinanet",
    "backbone": {"name": "resnet50", "width_mult": 0.125},
    "fpn_channels": 16,
    "min_size": 64,
    "max_size": 64,
}
BASELINES = {"yolov3_darknet53": YOLO_DARKNET, "yolov3_mobilenetv2": YOLO_MOBILENET,
             "retinanet_resnet50": RETINANET}  # fmt: skip


def _baseline(arch: dict, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    model = build_detector(Model.model_validate(arch), 11)
    for m in model.modules():  # non-trivial BN statistics
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.1, 0.1)
            m.running_var.uniform_(0.5, 1.5)
    return model.eval()


def _outputs(model: nn.Module, x: torch.Tensor) -> list[torch.Tensor]:
    with torch.no_grad():
        out = Network(model)(x)
    return list(out.values()) if isinstance(out, dict) else list(out)


@pytest.mark.parametrize("name", sorted(BASELINES))
def test_variant0_equals_the_baseline(name: str) -> None:
    arch = BASELINES[name]
    baseline = _baseline(arch)
    model = build_detector(Model.model_validate(arch), 11, load_weights=False)
    model.load_state_dict(baseline.state_dict())
    space = to_space_detector(model.eval())
    body = space_body(space)
    body.set_active_subnet(body.space.baseline)
    x = torch.rand(2, 3, 64, 64)
    for got, want in zip(_outputs(space, x), _outputs(baseline, x), strict=True):
        torch.testing.assert_close(got, want, rtol=0, atol=0)
    # the static net of variant 0 everywhere is the baseline body, parameter names included
    static = body.get_active_subnet()
    want_body = space_body(_baseline(arch))
    assert static.state_dict().keys() == want_body.state_dict().keys()
    # the space's spec builds the same space from the config alone
    spec = space_spec_of(arch)
    assert spec.space == body.space


def space_spec_of(arch: dict) -> LatencySpaceSpec:
    """The space section of ``arch`` (RetinaNet's: its head convs searched too)."""
    bb, head = arch["backbone"], Model.model_validate(arch).head_tower_convs
    return LatencySpaceSpec(
        baseline=bb["name"], width_mult=bb["width_mult"], levels=[3, 4, 5], head_convs=head
    )


def test_darknet_blocks_keep_the_most_important_hidden_channels() -> None:
    body = space_body(to_space_detector(_baseline(YOLO_DARKNET)))
    assert len(body.blocks()) == 23  # Darknet-53's residual blocks: 1 + 2 + 8 + 8 + 4
    assert body.block_names[:4] == ["stage1.1", "stage2.1", "stage2.2", "stage3.1"]
    assert all(b.multipliers[-1] == 0.0 for b in body.blocks())  # every one is x + f(x)
    block = body.get_submodule("stage4.3")
    original: DarknetResidual = block.variants[0]
    hidden = original.conv1.conv.out_channels
    imp = l1_importance(original.conv2.conv)
    torch.testing.assert_close(imp, original.conv2.conv.weight.abs().sum(dim=(0, 2, 3)))
    for v, m in enumerate(block.multipliers[1:-1], start=1):
        keep = darknet_kept_channels(original, m)
        k = max(1, round(m * hidden))
        assert len(keep) == k and bool((keep[1:] > keep[:-1]).all())
        assert imp[keep].min() >= imp.topk(k).values.min()  # the k largest L1 norms
        pruned = block.variants[v]
        torch.testing.assert_close(pruned.conv1.conv.weight, original.conv1.conv.weight[keep])
        torch.testing.assert_close(
            pruned.conv1.bn.running_mean, original.conv1.bn.running_mean[keep]
        )
        torch.testing.assert_close(pruned.conv2.conv.weight, original.conv2.conv.weight[:, keep])
        torch.testing.assert_close(pruned.conv2.bn.weight, original.conv2.bn.weight)
    assert isinstance(block.variants[-1], nn.Identity)


def test_bottlenecks_keep_the_most_important_channels_and_skip_without_downsample() -> None:
    body = space_body(to_space_detector(_baseline(RETINANET)))
    assert body.num_body_blocks == 16  # ResNet-50's bottlenecks: 3 + 4 + 6 + 3
    assert len(body.blocks()) == 16 + 8  # then the head's two towers of 4 convs
    assert body.block_names[:4] == ["layer1.0", "layer1.1", "layer1.2", "layer2.0"]
    with_skip = [n for n, b in zip(body.block_names, body.blocks(), strict=True)
                 if isinstance(b.variants[-1], nn.Identity)]  # fmt: skip
    assert [n for n in body.block_names if n not in with_skip] == [
        "layer1.0",
        "layer2.0",
        "layer3.0",
        "layer4.0",  # the blocks with a downsample
    ]
    block = body.get_submodule("layer3.2")
    original = block.variants[0]
    width = original.conv1.out_channels
    imp1, imp2 = l1_importance(original.conv2), l1_importance(original.conv3)
    for v, m in enumerate(block.multipliers[1:-1], start=1):
        keep1, keep2 = bottleneck_kept_channels(original, m)
        k = max(1, round(m * width))
        assert len(keep1) == len(keep2) == k
        assert imp1[keep1].min() >= imp1.topk(k).values.min()
        assert imp2[keep2].min() >= imp2.topk(k).values.min()
        pruned = block.variants[v]
        torch.testing.assert_close(pruned.conv1.weight, original.conv1.weight[keep1])
        torch.testing.assert_close(pruned.bn1.running_var, original.bn1.running_var[keep1])
        torch.testing.assert_close(pruned.conv2.weight, original.conv2.weight[keep2][:, keep1])
        torch.testing.assert_close(pruned.bn2.bias, original.bn2.bias[keep2])
        torch.testing.assert_close(pruned.conv3.weight, original.conv3.weight[:, keep2])
        torch.testing.assert_close(pruned.bn3.weight, original.bn3.weight)
    first = body.get_submodule("layer2.0")  # a downsampling block keeps its downsample
    assert first.variants[1].downsample is not None
    assert not isinstance(first.variants[-1], nn.Identity)


@pytest.mark.parametrize("name", sorted(BASELINES))
def test_lut_mmac_predicts_the_whole_network(name: str) -> None:
    space = to_space_detector(_baseline(BASELINES[name]))
    body = space_body(space)
    lut = build_table(space, 64, "mmac")
    rng = random.Random(0)
    for _ in range(3):
        arch = body.space.sample(rng)
        body.set_active_subnet(arch)
        measured = count_flops(Network(space), torch.zeros(1, 3, 64, 64))
        assert lut.predict(arch) == pytest.approx(measured.macs / 1e6, rel=1e-6)
    assert lut.minimum < lut.baseline


@pytest.mark.parametrize("name", ["yolov3_darknet53", "retinanet_resnet50"])
def test_the_static_subnet_runs_what_the_space_runs(name: str) -> None:
    """export_subnet (the tune step's weights) cuts the chosen variants from the space, whether
    the space sits at backbone.body (RetinaNet) or backbone (YOLOv3): same outputs."""
    arch = BASELINES[name]
    space = to_space_detector(_baseline(arch))
    body = space_body(space)
    genotype = body.space.sample(random.Random(3))
    spec = space_spec_of(arch)
    smodel = Model.model_validate({**arch, "backbone": spec.model_dump()})
    static, _ = export_subnet(space, smodel, genotype, 11)
    x = torch.rand(1, 3, 64, 64)
    for got, want in zip(_outputs(static, x), _outputs(space.eval(), x), strict=True):
        torch.testing.assert_close(got, want)


def test_set_resolution_matches_a_detector_built_at_that_size() -> None:
    """YOLOv3's anchors follow the input side (as the tune step's detector, built at the searched
    side, has them); RetinaNet keeps its aspect-preserving resize (short side, long-side limit)."""
    from nasdet.methods.latency.common import set_resolution

    yolo = build_detector(Model.model_validate(YOLO_DARKNET), 11)
    for size in (96, 128, 64, 128):
        set_resolution(yolo, size)
    ref = build_detector(
        Model.model_validate({**YOLO_DARKNET, "min_size": 128, "max_size": 128}), 11
    )
    torch.testing.assert_close(yolo.anchors, ref.anchors)
    assert yolo.transform([torch.rand(3, 50, 70)])[0].tensors.shape[-2:] == (128, 128)
    retina = build_detector(Model.model_validate(RETINANET), 11).eval()
    set_resolution(retina, 96)
    images, _ = retina.transform([torch.rand(3, 40, 80)])
    assert images.image_sizes == [(48, 96)] and retina.transform.fixed_size is None


def test_run_config_accepts_the_three_detectors_and_refuses_yolov3_distillation() -> None:
    from pydantic import ValidationError

    from nasdet.methods.latency.config import LatencyRunConfig

    for arch in BASELINES.values():
        LatencyRunConfig.model_validate({"method": "latency", "model": arch, "pretrain": {}})
    with pytest.raises(ValidationError, match="pretrain.distill: .* not yolov3"):
        LatencyRunConfig.model_validate(
            {"method": "latency", "model": YOLO_DARKNET, "pretrain": {"distill": True}}
        )
    with pytest.raises(ValidationError, match="mobilenet_v2, darknet53 or resnet50 baseline"):
        LatencyRunConfig.model_validate(
            {"method": "latency", "model": {**RETINANET, "backbone": {"name": "resnet18"}}}
        )
