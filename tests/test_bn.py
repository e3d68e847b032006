"""BatchNorm recalibration and "BN in train mode" scoring (nasdet.engine.bn)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn
from torchvision.ops import FrozenBatchNorm2d

from nasdet.data import CocoDetectionDataset, eval_transforms, make_digits
from nasdet.engine.bn import bn_batch_stats, bn_layers, recalibrate_bn, recalibrate_detector_bn
from nasdet.engine.evaluate import evaluate, predict
from nasdet.models import detectors
from nasdet.models.backbone import FPNBackbone
from nasdet.models.baselines import BASELINES


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
