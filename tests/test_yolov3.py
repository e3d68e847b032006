"""YOLOv3: golden parameter and FLOP counts of darknet's model, training and inference on both
backbones, target assignment on hand-made boxes, and ``detector: yolov3`` in a training config."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from conftest import tiny_config
from torch import Tensor, nn

import nasdet
from nasdet.build import build_detector
from nasdet.config import parse_config
from nasdet.cost import count_flops, count_params
from nasdet.errors import ConfigError
from nasdet.methods import Model as ModelConfig
from nasdet.models.backbone import ShapeSpec
from nasdet.models.darknet import darknet53
from nasdet.models.named import yolov3_darknet53, yolov3_mobilenetv2
from nasdet.models.yolov3 import COCO_ANCHORS, YOLOv3
from nasdet.models.yolov3_loss import assign_targets, flatten_maps
from nasdet.training import train_step

# darknet's yolov3.cfg at 80 classes (num_classes=81 with nasdet's background convention):
# conv weights + BN weight and bias of every conv, + the biases of the three 1x1 output convs
# (255 = 3 * (5 + 80) each); BN running statistics are buffers, not counted.
DARKNET_YOLOV3_PARAMS = 61_949_149
DARKNET53_PARAMS = 40_584_928  # the 52 convs with their BN (Darknet-53 without its classifier)
# darknet prints 65.9 BFLOPs for yolov3.cfg at 416 px: 2 x multiply-adds of its convolutions.
DARKNET_YOLOV3_FLOPS = 65.9e9


class _RawOutputs(nn.Module):
    """Backbone + neck + head of a YOLOv3 (no resize, no decoding or NMS)."""

    def __init__(self, model: YOLOv3) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: Tensor) -> list[Tensor]:
        return self.model.raw_outputs(x)


def test_darknet53_yolov3_matches_darknet_counts() -> None:
    with torch.device("meta"):  # shapes only: counts without allocating or running anything
        model = YOLOv3(darknet53(), num_classes=81)
        flops = count_flops(_RawOutputs(model), torch.empty(1, 3, 416, 416))
    convs = [m for m in model.backbone.modules() if isinstance(m, nn.Conv2d)]
    assert len(convs) == 52
    assert model.backbone.feature_info == [
        ShapeSpec(256, 8),
        ShapeSpec(512, 16),
        ShapeSpec(1024, 32),
    ]
    assert count_params(model.backbone) == DARKNET53_PARAMS
    assert count_params(model) == DARKNET_YOLOV3_PARAMS
    # FlopCounterMode counts 2 per multiply-add of every conv, as darknet does (BN, activations,
    # the residual adds, upsampling and concatenation count 0 in both)
    assert flops.flops == 65_864_075_264
    assert flops.flops == pytest.approx(DARKNET_YOLOV3_FLOPS, rel=0.01)
    # the head predicts 3 * (5 + 80) maps per cell at strides 8, 16, 32
    heads = [seq[1] for seq in model.head.convs]
    assert [h.out_channels for h in heads] == [255, 255, 255]


def _targets() -> list[dict[str, Tensor]]:
    return [
        {"boxes": torch.tensor([[8.0, 10.0, 40.0, 44.0], [50.0, 60.0, 90.0, 100.0]]),
         "labels": torch.tensor([1, 2])},
        {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64)},
    ]  # fmt: skip


@pytest.mark.parametrize("builder", [yolov3_darknet53, yolov3_mobilenetv2])
def test_trains_and_predicts(builder) -> None:
    torch.manual_seed(0)
    model = builder(num_classes=3, input_size=64)  # 2 classes + background
    model.train()
    images = [torch.rand(3, 128, 128), torch.rand(3, 100, 120)]
    losses = model(images, _targets())
    assert set(losses) == {"loss_xy", "loss_wh", "loss_obj", "loss_cls"}
    loss = sum(losses.values())
    assert torch.isfinite(loss) and all(v > 0 for v in losses.values())
    loss.backward()
    params = list(model.parameters())
    assert all(p.grad is not None and bool(p.grad.abs().sum() > 0) for p in params)

    model.eval()
    model.score_thresh = 0.0  # an untrained model scores low: keep everything
    with torch.no_grad():
        out = model(images)
    assert len(out) == 2
    for o, (h, w) in zip(out, [(128, 128), (100, 120)], strict=True):
        assert set(o) == {"boxes", "scores", "labels"}
        assert 0 < len(o["boxes"]) <= model.detections_per_img
        assert o["boxes"].shape[1] == 4 and o["scores"].shape == o["labels"].shape
        # labels 1..K (no background), boxes in the original image's pixels
        assert int(o["labels"].min()) >= 1 and int(o["labels"].max()) <= 2
        assert float(o["boxes"][:, 2].max()) <= w and float(o["boxes"][:, 3].max()) <= h
        assert float(o["boxes"].min()) >= 0
        assert bool((o["scores"][:-1] >= o["scores"][1:]).all())


def test_target_assignment_on_hand_made_boxes() -> None:
    anchors = torch.tensor(COCO_ANCHORS, dtype=torch.float32)  # 416 px input
    sizes = [(52, 52), (26, 26), (13, 13)]
    boxes = torch.tensor(
        [
            [85.0, 30.0, 115.0, 90.0],  # 30x60 at (100, 60): anchor (30, 61), stride 16
            [23.0, 23.0, 393.0, 343.0],  # 370x320 at (208, 183): anchor (373, 326), stride 32
            [0.0, 0.0, 10.0, 13.0],  # 10x13 at (5, 6.5): anchor (10, 13), stride 8
            [84.0, 31.0, 114.0, 89.0],  # 30x58, same anchor and cell as the first: wins it
        ]
    )
    a = assign_targets(boxes, anchors, (8, 16, 32), sizes)
    assert a.gt_index.tolist() == [1, 2, 3]  # the first box lost its slot to the last
    assert a.level.tolist() == [2, 0, 1]
    assert a.anchor.tolist() == [2, 0, 0]
    assert a.cell_x.tolist() == [6, 0, 6]  # floor(208 / 32), floor(5 / 8), floor(99 / 16)
    assert a.cell_y.tolist() == [5, 0, 3]  # floor(183 / 32), floor(6.5 / 8), floor(60 / 16)
    offsets = [0, 52 * 52 * 3, 52 * 52 * 3 + 26 * 26 * 3]
    assert a.slot.tolist() == [
        offsets[2] + (5 * 13 + 6) * 3 + 2,
        offsets[0] + 0,
        offsets[1] + (3 * 26 + 6) * 3 + 0,
    ]
    expected_xy = [[208 / 32 - 6, 183 / 32 - 5], [5 / 8, 6.5 / 8], [99 / 16 - 6, 60 / 16 - 3]]
    assert torch.allclose(a.txy, torch.tensor(expected_xy))
    expected_wh = [[math.log(370 / 373), math.log(320 / 326)], [0.0, 0.0], [0.0, math.log(58 / 61)]]
    assert torch.allclose(a.twh, torch.tensor(expected_wh), atol=1e-6)

    # the slot indexes flatten_maps' layout: mark (level 1, anchor 0, cell (6, 3)) in a map
    num_attribs = 5 + 2
    maps = [torch.zeros(1, 3 * num_attribs, h, w) for h, w in sizes]
    maps[1][0, 0 * num_attribs + 4, 3, 6] = 7.0  # anchor 0's objectness
    flat = flatten_maps(maps, 3)
    assert flat.shape == (1, sum(h * w * 3 for h, w in sizes), num_attribs)
    assert flat[0, a.slot[2], 4] == 7.0 and flat[..., 4].sum() == 7.0


def test_anchors_scale_with_input_size() -> None:
    model = YOLOv3(darknet53(width_mult=0.125), num_classes=3, input_size=208)
    assert model.anchors[2, 2].tolist() == [373 / 2, 326 / 2]
    assert model.transform.fixed_size == (208, 208)


def _yolo_config(digits_root: Path, **model: object) -> dict:
    raw = tiny_config(digits_root, epochs=1, batch_size=16)  # 32 images: 2 iterations
    raw["model"] = {
        "detector": "yolov3",
        "backbone": {"name": "resnet18", "width_mult": 0.25},
        "min_size": 96,
        "max_size": 96,
        **model,
    }
    return raw


def test_config_trains_and_evaluates_yolov3(digits_root: Path, tmp_path: Path) -> None:
    cfg = parse_config(_yolo_config(digits_root))
    result = train_step(cfg, tmp_path / "run")
    assert 0.0 <= result.metrics["mAP"] <= 1.0
    model = nasdet.load_model(result.model_path)  # the model file rebuilds a YOLOv3
    assert isinstance(model, YOLOv3) and model.transform.fixed_size == (96, 96)
    assert model.num_classes == 11 and model.head.convs[0][1].out_channels == 3 * (5 + 10)


def test_config_rejects_levels_and_fpn_keys_for_yolov3(digits_root: Path) -> None:
    cfg = ModelConfig(detector="yolov3", backbone={"name": "resnet18", "levels": [2, 3, 4]})
    with pytest.raises(ConfigError, match="yolov3 needs three levels at strides 8, 16, 32"):
        build_detector(cfg, 11, load_weights=False)
    with pytest.raises(ConfigError, match="fpn_channels is for detector"):
        parse_config(_yolo_config(digits_root, fpn_channels=32))


def test_config_builds_mmdetections_yolov3_mobilenetv2() -> None:
    """``backbone: {name: mobilenet_v2, last_conv: false}`` with ``yolov3_channels: [96, 96,
    96]`` is the named ``nasdet:yolov3_mobilenetv2`` (MMDetection's config): the same
    parameters, name for name and shape for shape."""
    cfg = ModelConfig(
        detector="yolov3",
        backbone={"name": "mobilenet_v2", "last_conv": False},
        yolov3_channels=[96, 96, 96],
        min_size=416,
    )
    built = build_detector(cfg, 81, load_weights=False)
    named = yolov3_mobilenetv2(num_classes=81)
    shapes = {k: v.shape for k, v in built.state_dict().items()}
    assert shapes == {k: v.shape for k, v in named.state_dict().items()}
    assert built.backbone.feature_info[-1].channels == 320  # not the 1280-channel conv
    default = build_detector(
        cfg.model_copy(update={"yolov3_channels": None}), 81, load_weights=False
    )
    assert count_params(default) > count_params(built)  # darknet's neck widths: 16/48/160
    with pytest.raises(ValueError, match="last_conv is for mobilenet_v2, not resnet18"):
        ModelConfig(detector="yolov3", backbone={"name": "resnet18", "last_conv": False})
    with pytest.raises(ValueError, match="yolov3_channels is for detector yolov3, not fcos"):
        ModelConfig(detector="fcos", yolov3_channels=[96, 96, 96])
    with pytest.raises(ValueError, match="at least 3 items"):
        ModelConfig(detector="yolov3", yolov3_channels=[96, 96])
    # the latency method's space made from this baseline keeps the 320-channel c5
    from nasdet.methods.latency.parts import space_spec

    space = space_spec(cfg.backbone, [0.5], skip=True)
    assert not space.last_conv and space.build().feature_info[-1].channels == 320
