"""torchvision fasterrcnn_resnet50_fpn checkpoints load into nasdet's serial Faster R-CNN."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torchvision
from torch import nn
from torchvision.models.detection import FasterRCNN_ResNet50_FPN_Weights, fasterrcnn_resnet50_fpn
from torchvision.ops import FrozenBatchNorm2d

from nasdet.errors import CheckpointError
from nasdet.methods import Model as ModelConfig
from nasdet.methods.spnas.convert import (
    RESNET50_CODE,
    build_serial_fasterrcnn,
    convert_torchvision_fasterrcnn,
)
from nasdet.methods.spnas.nets import SerialBackbone

TEST_SIZE = 256  # both models resize to this short side in the comparison (CPU time)
TEST_PROPOSALS = 100  # and keep this many RPN proposals per image (torchvision: 1000)


def _frozen_random_norms(model: nn.Module, seed: int = 0) -> None:
    """Replace every BatchNorm2d by a FrozenBatchNorm2d with random statistics and affine
    parameters: the layout of torchvision's COCO checkpoint, whose backbone BN is frozen.
    Weights in [0.2, 0.6] keep activations moderate, so class scores do not saturate at 1."""
    g = torch.Generator().manual_seed(seed)
    for name, m in list(model.named_modules()):
        if isinstance(m, nn.BatchNorm2d):
            n = m.num_features
            frozen = FrozenBatchNorm2d(n)
            frozen.weight.copy_(torch.rand(n, generator=g) * 0.4 + 0.2)
            frozen.bias.copy_(torch.randn(n, generator=g) * 0.1)
            frozen.running_mean.copy_(torch.randn(n, generator=g) * 0.1)
            frozen.running_var.copy_(torch.rand(n, generator=g) + 0.5)
            parent, _, child = name.rpartition(".")
            setattr(model.get_submodule(parent), child, frozen)


@pytest.fixture(scope="module")
def reference() -> nn.Module:
    """torchvision's Faster R-CNN R50-FPN, random weights, frozen BN (as the COCO file)."""
    torch.manual_seed(0)
    model = fasterrcnn_resnet50_fpn(weights=None, weights_backbone=None)
    _frozen_random_norms(model)
    return model


@pytest.fixture(scope="module")
def converted(reference: nn.Module) -> tuple[nn.Module, dict]:
    return convert_torchvision_fasterrcnn(reference.state_dict())


def test_parameter_count_and_names(reference: nn.Module, converted: tuple) -> None:
    model, _ = converted
    assert sum(p.numel() for p in model.parameters()) == 41_755_286
    assert FasterRCNN_ResNet50_FPN_Weights.DEFAULT.meta["num_params"] == 41_755_286
    assert isinstance(model.backbone.body, SerialBackbone)
    assert str(model.backbone.body.code) == RESNET50_CODE
    assert list(model.state_dict()) == list(reference.state_dict())
    assert model.transform.min_size == (800,) and model.transform.max_size == 1333


def test_same_proposals_and_detections(reference: nn.Module, converted: tuple) -> None:
    model, _ = converted
    images = [torch.rand(3, 200, 240), torch.rand(3, 180, 150)]
    results = []
    for m in (reference, model):
        m.eval()
        m.transform.min_size, m.transform.max_size = (TEST_SIZE,), TEST_SIZE
        m.rpn._post_nms_top_n["testing"] = TEST_PROPOSALS
        m.roi_heads.score_thresh = 0.0
        proposals: list = []
        hook = m.rpn.register_forward_hook(lambda _m, _i, out, p=proposals: p.extend(out[0]))
        with torch.no_grad():
            detections = m(images)
        hook.remove()
        results.append((proposals, detections))
    (want_props, want), (got_props, got) = results
    for a, b in zip(want_props, got_props, strict=True):
        torch.testing.assert_close(b, a, atol=1e-4, rtol=0)
    for a, b in zip(want, got, strict=True):
        assert len(a["boxes"]) > 0
        torch.testing.assert_close(b["boxes"], a["boxes"], atol=1e-4, rtol=0)
        torch.testing.assert_close(b["scores"], a["scores"], atol=1e-4, rtol=0)
        assert torch.equal(b["labels"], a["labels"])


def test_architecture_describes_the_model(converted: tuple) -> None:
    _, arch = converted
    assert arch["backbone"] == {
        "name": "serial",
        "code": RESNET50_CODE,
        "block": "bottleneck",
        "frozen_bn": True,
        "base_width": 64,
        "levels": [2, 3, 4, 5],
    }
    # the whole description is a valid model config: nasdet.load_model rebuilds from it
    cfg = ModelConfig.model_validate(arch)
    assert cfg.backbone.frozen_bn and cfg.backbone.code == RESNET50_CODE
    assert (cfg.fpn_channels, cfg.min_size, cfg.max_size) == (256, 800, 1333)
    assert cfg.representation_size == 1024 and cfg.rpn_pre_nms_top_n == (2000, 1000)


def test_batchnorm_checkpoint_converts() -> None:
    """fasterrcnn_resnet50_fpn(weights=None) has plain BN (num_batches_tracked): it still fits."""
    state = fasterrcnn_resnet50_fpn(weights=None, weights_backbone=None).state_dict()
    assert any(k.endswith("num_batches_tracked") for k in state)
    model, _ = convert_torchvision_fasterrcnn(state)
    assert torch.equal(model.backbone.body.bn1.running_var, state["backbone.body.bn1.running_var"])


def test_legacy_names_and_file_input(reference: nn.Module, tmp_path: Path) -> None:
    state = {}
    for key, value in reference.state_dict().items():
        key = key.replace("fpn.inner_blocks.0.0.", "fpn.inner_blocks.0.")
        key = key.replace("rpn.head.conv.0.0.", "rpn.head.conv.")
        state["module." + key] = value
    path = tmp_path / "fasterrcnn_resnet50_fpn_coco.pth"
    torch.save({"model": state}, path)
    model, _ = convert_torchvision_fasterrcnn(path)
    assert torch.equal(model.rpn.head.conv[0][0].weight, reference.rpn.head.conv[0][0].weight)


def test_wrong_checkpoints_name_the_key(reference: nn.Module) -> None:
    small = torchvision.models.detection.FasterRCNN(
        torchvision.models.detection.backbone_utils.resnet_fpn_backbone(
            backbone_name="resnet18", weights=None
        ),
        num_classes=91,
    )
    with pytest.raises(CheckpointError, match=r"'backbone\.body\.layer1\.0\.conv1\.weight' has"):
        convert_torchvision_fasterrcnn(small.state_dict())
    state = dict(reference.state_dict())
    state["backbone.fpn.layer_blocks.2.0.weight"] = torch.zeros(256, 256, 1, 1)
    with pytest.raises(CheckpointError, match=r"'backbone\.fpn\.layer_blocks\.2\.0\.weight'"):
        convert_torchvision_fasterrcnn(state)
    del state["backbone.fpn.layer_blocks.2.0.weight"]
    with pytest.raises(CheckpointError, match="is missing"):
        convert_torchvision_fasterrcnn(state)
    with pytest.raises(CheckpointError, match="not found"):
        convert_torchvision_fasterrcnn("/nonexistent/weights.pth")


def test_builder_for_searched_codes() -> None:
    model = build_serial_fasterrcnn(
        "11-21-211-21-2",
        block="basic",
        num_classes=5,
        frozen_bn=False,
        fpn_channels=16,
        min_size=64,
        max_size=64,
        base_width=8,
    ).eval()
    assert model.backbone.body.feature_info[-1].stride == 64
    with torch.no_grad():
        out = model([torch.rand(3, 64, 64)])
    assert set(out[0]) == {"boxes", "scores", "labels"}


def test_cli_convert_then_load_model(converted: tuple, tmp_path) -> None:
    """`nasdet convert` writes a model file that nasdet.load_model rebuilds with equal weights."""
    import nasdet
    from nasdet.cli import main
    from nasdet.cost import count_params

    model, _ = converted
    ckpt = tmp_path / "fasterrcnn_resnet50_fpn_coco.pth"
    torch.save(model.state_dict(), ckpt)
    out = tmp_path / "converted.pt"
    assert main(["convert", "torchvision-fasterrcnn", str(ckpt), "--out", str(out)]) == 0
    loaded = nasdet.load_model(out)
    assert count_params(loaded) == 41_755_286
    assert loaded.categories[0] == "person" and loaded.cat_ids[:3] == [1, 2, 3]
    want = model.state_dict()
    assert all(torch.equal(v, want[k]) for k, v in loaded.state_dict().items())
    bad = tmp_path / "bad.pth"
    torch.save({"backbone.body.conv1.weight": torch.zeros(3)}, bad)
    assert main(["convert", "torchvision-fasterrcnn", str(bad), "--out", str(out)]) == 2
