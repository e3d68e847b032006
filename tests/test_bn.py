"""BatchNorm recalibration and "BN in train mode" scoring (nasdet.engine.bn)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn
from torchvision.models.detection.faster_rcnn import FastRCNNConvFCHead
from torchvision.models.detection.retinanet import RetinaNetHead
from torchvision.ops import FrozenBatchNorm2d

from nasdet.data import CocoDetectionDataset, eval_transforms, make_digits
from nasdet.engine.bn import bn_batch_stats, bn_layers, recalibrate_bn, recalibrate_detector_bn
from nasdet.engine.evaluate import evaluate, predict
from nasdet.models import detectors
from nasdet.models.backbone import FPNBackbone
from nasdet.models.baselines import BASELINES, resnet18


def _net() -> nn.Sequential:
    torch.manual_seed(0)
    frozen = FrozenBatchNorm2d(4)
    frozen.running_mean.fill_(0.5)
    return nn.Sequential(
        nn.Conv2d(3, 4, 3),
        nn.BatchNorm2d(4, momentum=0.3),
        nn.ReLU(),
        nn.Dropout(0.5),
        nn.Conv2d(4, 4, 1),
        frozen,
        nn.BatchNorm2d(4),
    )


def _buffers(module: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in module.state_dict().items()}


def test_recalibrate_bn_is_the_average_of_batch_statistics() -> None:
    net = _net()
    net.eval()
    net[1].train()  # an arbitrary mix of modes, to be restored
    modes = [m.training for m in net.modules()]
    frozen_before = _buffers(net[5])
    inputs: dict[int, list[torch.Tensor]] = {1: [], 6: []}
    dropout_training: list[bool] = []
    hooks = [
        net[i].register_forward_pre_hook(lambda m, a, i=i: inputs[i].append(a[0])) for i in inputs
    ]
    hooks.append(net[3].register_forward_hook(lambda m, a, o: dropout_training.append(m.training)))
    torch.manual_seed(1)
    batches = [torch.randn(5, 3, 8, 8) * 2 + 1 for _ in range(4)]

    assert recalibrate_bn(net, batches) == 20
    for h in hooks:
        h.remove()

    assert dropout_training == [False] * 4  # only BN layers train
    for i, xs in inputs.items():
        bn = net[i]
        means = torch.stack([x.mean(dim=(0, 2, 3)) for x in xs])
        vars_ = torch.stack([x.var(dim=(0, 2, 3), unbiased=True) for x in xs])
        torch.testing.assert_close(bn.running_mean, means.mean(0))
        torch.testing.assert_close(bn.running_mean, torch.cat(xs).mean(dim=(0, 2, 3)))
        torch.testing.assert_close(bn.running_var, vars_.mean(0))
        assert int(bn.num_batches_tracked) == 4
    assert net[1].momentum == 0.3 and net[6].momentum == 0.1
    assert [m.training for m in net.modules()] == modes
    after = _buffers(net[5])
    assert all(torch.equal(frozen_before[k], after[k]) for k in after)


def test_recalibrate_bn_replaces_old_statistics() -> None:
    net = _net()
    batches = [torch.randn(4, 3, 8, 8) for _ in range(2)]
    recalibrate_bn(net, batches)
    first = _buffers(net)
    net(torch.randn(4, 3, 8, 8) * 5)  # training-mode forward pollutes the statistics
    recalibrate_bn(net, batches)
    assert all(torch.equal(first[k], v) for k, v in _buffers(net).items())


def test_recalibrate_bn_without_bn_runs_nothing() -> None:
    net = nn.Sequential(nn.Conv2d(3, 4, 3), FrozenBatchNorm2d(4))
    calls: list[int] = []
    net.register_forward_hook(lambda m, a, o: calls.append(1))
    assert recalibrate_bn(net, [torch.randn(2, 3, 8, 8)]) == 0
    assert calls == []


def test_bn_batch_stats_keeps_running_stats() -> None:
    net = _net()
    recalibrate_bn(net, [torch.randn(4, 3, 8, 8) for _ in range(2)])
    net.eval()
    before = _buffers(net)
    x = torch.randn(6, 3, 8, 8) * 3 + 2
    with torch.no_grad():
        eval_out = net(x)
        with bn_batch_stats(net):
            assert all(bn.training for bn in bn_layers(net)) and not net[3].training
            train_out = net(x)
            assert torch.equal(net(x), train_out)  # dropout stays off
        again = net(x)
    after = _buffers(net)
    assert all(torch.equal(before[k], after[k]) for k in after)  # incl. num_batches_tracked
    assert not torch.allclose(eval_out, train_out, atol=1e-3)
    # with batch statistics the BN output is normalised per channel over the batch
    torch.testing.assert_close(train_out.mean(dim=(0, 2, 3)), net[6].bias.detach())
    assert torch.equal(again, eval_out)
    assert not any(m.training for m in net.modules())
    assert net[1].momentum == 0.3 and net[6].momentum == 0.1


# ---------------------------------------------------------------------- a tiny detector


@pytest.fixture(scope="module")
def digits(tmp_path_factory: pytest.TempPathFactory) -> tuple[CocoDetectionDataset, ...]:
    root = make_digits(tmp_path_factory.mktemp("bn_digits"), train=8, val=4, size=64, seed=0)
    ann = Path(root) / "annotations"
    return tuple(
        CocoDetectionDataset(
            root / "images",
            ann / f"instances_{split}.json",
            train=False,
            transforms=eval_transforms(),
        )
        for split in ("train", "val")
    )


def _fcos() -> nn.Module:
    torch.manual_seed(0)
    body = BASELINES["resnet18"](width_mult=0.125, levels=(3, 4, 5))
    return detectors.fcos(
        FPNBackbone(body, 32),
        11,
        min_size=64,
        max_size=64,
        num_convs=1,
        score_thresh=0.0,
        detections_per_img=10,
    )


def test_recalibrate_detector_bn(digits: tuple[CocoDetectionDataset, ...]) -> None:
    train, _ = digits
    model = _fcos()
    model.train()
    model.head.eval()
    modes = [m.training for m in model.modules()]
    bns = bn_layers(model.backbone)
    assert bns and all(float(bn.running_var.mean()) == 1.0 for bn in bns)

    seen = recalibrate_detector_bn(model, train, num_samples=6, batch_size=4, seed=0)

    assert seen == 6
    assert [m.training for m in model.modules()] == modes
    assert all(int(bn.num_batches_tracked) == 2 for bn in bns)
    assert all(not torch.allclose(bn.running_mean, torch.zeros_like(bn.running_mean)) for bn in bns)
    stats = [bn.running_mean.clone() for bn in bns]
    recalibrate_detector_bn(model, train, num_samples=6, batch_size=4, seed=0)
    assert all(torch.equal(s, bn.running_mean) for s, bn in zip(stats, bns, strict=True))
    recalibrate_detector_bn(model, train, num_samples=6, batch_size=4, seed=1)
    assert not all(torch.equal(s, bn.running_mean) for s, bn in zip(stats, bns, strict=True))
    assert recalibrate_detector_bn(model, train, num_samples=100, batch_size=4) == len(train)


def test_evaluate_with_bn_in_train_mode(digits: tuple[CocoDetectionDataset, ...]) -> None:
    train, val = digits
    model = _fcos()
    recalibrate_detector_bn(model, train, num_samples=8, batch_size=4)
    model.eval()
    before = _buffers(model)
    eval_out, ids = predict(model, val, batch_size=4)
    train_out, train_ids = predict(model, val, batch_size=4, bn_mode="train")
    assert ids == train_ids
    assert any(
        not torch.equal(a["scores"], b["scores"]) for a, b in zip(eval_out, train_out, strict=True)
    )

    stats = evaluate(model, val, batch_size=4, bn_mode="train")

    assert 0.0 <= stats["mAP"] <= 1.0
    after = _buffers(model)
    assert all(torch.equal(before[k], after[k]) for k in after)
    assert not any(m.training for m in model.modules())
    with pytest.raises(ValueError, match="bn_mode"):
        predict(model, val, bn_mode="batch")  # type: ignore[arg-type]


def _ssdlite() -> nn.Module:
    """SSDLite (torchvision's SSDLiteHead: depthwise conv + BatchNorm) on a tiny ResNet."""
    return detectors.ssd(resnet18(width_mult=0.125), 11, size=64, lite=True)


def _retinanet_bn_head() -> nn.Module:
    """RetinaNet whose (level-shared) head normalises with BatchNorm."""
    model = detectors.retinanet(FPNBackbone(resnet18(width_mult=0.125), 16), 11, min_size=64,
                                max_size=64)
    model.head = RetinaNetHead(16, 9, 11, norm_layer=nn.BatchNorm2d)
    return model


def _fasterrcnn_bn_box_head() -> nn.Module:
    """Faster R-CNN whose RoI box head is convolutions with BatchNorm."""
    model = detectors.fasterrcnn(FPNBackbone(resnet18(width_mult=0.125), 16), 11, min_size=64,
                                 max_size=64, representation_size=32, rpn_post_nms_top_n=(50, 20))
    model.roi_heads.box_head = FastRCNNConvFCHead((16, 7, 7), [16], [32], norm_layer=nn.BatchNorm2d)
    return model


def _heads(model: nn.Module) -> nn.Module:
    return model.roi_heads if hasattr(model, "roi_heads") else model.head


def _direct_bn_statistics(
    model: nn.Module, batches: list[list[torch.Tensor]]
) -> dict[nn.Module, tuple[torch.Tensor, torch.Tensor, int]]:
    """Per BN: the mean over its calls of the per-call channel means and unbiased variances of
    its input, and the number of calls, over an eval forward of ``batches`` that normalises with
    batch statistics (what recalibration runs), computed from the inputs themselves."""
    inputs: dict[nn.Module, list[torch.Tensor]] = {bn: [] for bn in bn_layers(model)}
    hooks = [bn.register_forward_pre_hook(lambda m, a: inputs[m].append(a[0])) for bn in inputs]
    model.eval()
    with torch.no_grad(), bn_batch_stats(model):
        for images in batches:
            model(images)
    for h in hooks:
        h.remove()
    out = {}
    for bn, xs in inputs.items():
        dims = [d for d in range(xs[0].dim()) if d != 1]
        means = torch.stack([x.mean(dim=dims) for x in xs])
        vars_ = torch.stack([x.var(dim=dims, unbiased=True) for x in xs])
        out[bn] = (means.mean(0), vars_.mean(0), len(xs))
    return out


@pytest.mark.parametrize("build", [_ssdlite, _retinanet_bn_head, _fasterrcnn_bn_box_head])
def test_recalibrate_detector_bn_covers_the_heads(
    digits: tuple[CocoDetectionDataset, ...], build
) -> None:
    train, _ = digits
    torch.manual_seed(0)
    model = build()
    model.train()
    model.backbone.eval()
    modes = [m.training for m in model.modules()]
    head_bns = bn_layers(_heads(model))
    assert head_bns and all(float(bn.running_var.mean()) == 1.0 for bn in head_bns)
    fed: list[list[torch.Tensor]] = []
    detector_modes: list[bool] = []

    def record(m: nn.Module, args: tuple) -> None:
        fed.append(list(args[0]))
        detector_modes.append(m.training)

    anchors: list[int] = []
    hooks = [
        model.register_forward_pre_hook(record),
        model.anchor_generator.register_forward_hook(lambda *a: anchors.append(1))
        if hasattr(model, "anchor_generator")
        else None,
    ]
    seen = recalibrate_detector_bn(model, train, num_samples=6, batch_size=3, seed=0)
    for h in hooks:
        if h is not None:
            h.remove()

    assert seen == 6 and [len(b) for b in fed] == [3, 3]
    assert anchors == []  # single-stage: stopped after the head (no anchors, decoding, NMS)
    assert detector_modes == [False, False]  # eval forward: no targets needed
    assert [m.training for m in model.modules()] == modes
    expected = _direct_bn_statistics(model, fed)
    for bn in bn_layers(model):
        mean, var, calls = expected[bn]
        assert int(bn.num_batches_tracked) == calls > 0
        torch.testing.assert_close(bn.running_mean, mean, rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(bn.running_var, var, rtol=1e-4, atol=1e-5)
    for bn in head_bns:  # the heads' statistics moved away from their initial 0 / 1
        assert not torch.allclose(bn.running_mean, torch.zeros_like(bn.running_mean))
        assert not torch.allclose(bn.running_var, torch.ones_like(bn.running_var))
