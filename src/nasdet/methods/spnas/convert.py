"""Faster R-CNN on a serial backbone, and conversion of torchvision's COCO checkpoint to it.

SP-NAS starts its serial search from torchvision's ``fasterrcnn_resnet50_fpn`` COCO weights
(``fasterrcnn_resnet50_fpn_coco-258fb6c6.pth``). :class:`~nasdet.methods.spnas.nets.SerialBackbone`
keeps torchvision's ResNet parameter names and :func:`~nasdet.models.detectors.fasterrcnn` builds
torchvision's FPN, RPN and box heads, so the checkpoint loads by name: only the legacy names of
files saved before torchvision 0.13 (``fpn.inner_blocks.0.weight``, ``rpn.head.conv.weight``) are
renamed, as torchvision's own loader does.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor
from torchvision.models.detection import FasterRCNN
from torchvision.models.detection.faster_rcnn import FastRCNNPredictor

from nasdet.build import build_detector
from nasdet.cost import count_params
from nasdet.errors import CheckpointError, ConfigError
from nasdet.methods.spnas.config import Model
from nasdet.methods.spnas.space import BlockType, SerialCode
from nasdet.models.io import load_state_dict_checked, read_weights, save_model

log = logging.getLogger(__name__)

RESNET50_CODE = "111-2111-211111-211"
COCO_NUM_CLASSES = 91  # torchvision's COCO detectors: 90 category slots + background
_CLS_SCORE = "roi_heads.box_predictor.cls_score.weight"
_LEGACY_NAMES = (  # (pattern, replacement): torchvision < 0.13 names -> current ones
    (re.compile(r"^(backbone\.fpn\.(?:inner|layer)_blocks\.\d+)\.(weight|bias)$"), r"\1.0.\2"),
    (re.compile(r"^(rpn\.head\.conv)\.(weight|bias)$"), r"\1.0.0.\2"),
)


def build_serial_fasterrcnn(
    code: str | SerialCode,
    *,
    block: BlockType,
    num_classes: int,
    frozen_bn: bool,
    fpn_channels: int = 256,
    min_size: int = 800,
    max_size: int = 1333,
    base_width: int = 64,
    levels: Sequence[int] | None = None,
) -> FasterRCNN:
    """Faster R-CNN = FPN (``fpn_channels`` wide, max-pooled extra level) on a
    :class:`SerialBackbone`, with torchvision's heads and defaults (anchors 8 x stride).

    With ``code=RESNET50_CODE, block="bottleneck", num_classes=91, frozen_bn=True`` this is
    torchvision's ``fasterrcnn_resnet50_fpn`` (41,755,286 parameters), parameter names included.
    ``min_size`` / ``max_size`` (pixels) bound the resized image sides; ``levels`` (default all)
    are the backbone levels fed to the FPN.
    """
    arch = serial_fasterrcnn_architecture(
        code,
        block=block,
        frozen_bn=frozen_bn,
        fpn_channels=fpn_channels,
        min_size=min_size,
        max_size=max_size,
        base_width=base_width,
        levels=levels,
    )
    return build_detector(Model.model_validate(arch), num_classes, load_weights=False)


def serial_fasterrcnn_architecture(
    code: str | SerialCode,
    *,
    block: BlockType,
    frozen_bn: bool,
    fpn_channels: int = 256,
    min_size: int = 800,
    max_size: int = 1333,
    base_width: int = 64,
    levels: Sequence[int] | None = None,
) -> dict[str, Any]:
    """The ``model`` config section (plain data) describing :func:`build_serial_fasterrcnn`'s
    model, every Faster R-CNN setting pinned to the value the builder uses (torchvision's)."""
    parsed = SerialCode.parse(code)
    return {
        "detector": "fasterrcnn",
        "backbone": {
            "name": "serial",
            "code": str(parsed),
            "block": block,
            "frozen_bn": frozen_bn,
            "base_width": base_width,
            "levels": list(parsed.levels if levels is None else levels),
        },
        "fpn_channels": fpn_channels,
        "extra_levels": "pool",
        "min_size": min_size,
        "max_size": max_size,
        "anchor_base": 8.0,
        "aspect_ratios": [0.5, 1.0, 2.0],
        "representation_size": 1024,
        "rpn_batch_size_per_image": 256,
        "box_batch_size_per_image": 512,
        "rpn_pre_nms_top_n": [2000, 1000],
        "rpn_post_nms_top_n": [2000, 1000],
        "score_thresh": 0.05,
        "nms_thresh": 0.5,
        "detections_per_img": 100,
    }


def torchvision_names(state: Mapping[str, Any]) -> dict[str, Any]:
    """``state`` with a ``module.`` prefix stripped and pre-0.13 torchvision names renamed."""
    out: dict[str, Any] = {}
    for key, value in state.items():
        name = key.removeprefix("module.")
        for pattern, replacement in _LEGACY_NAMES:
            name = pattern.sub(replacement, name)
        out[name] = value
    return out


def _read_state(state_dict_or_path: Mapping[str, Any] | str | Path) -> tuple[dict, str]:
    if isinstance(state_dict_or_path, str | Path):
        source = str(state_dict_or_path)
        state: Any = read_weights(state_dict_or_path)
    else:
        source, state = "<state dict>", state_dict_or_path
    for key in ("model", "state_dict"):
        if isinstance(state.get(key), Mapping):
            state = state[key]
    bad = next((k for k, v in state.items() if not isinstance(v, Tensor)), None)
    if bad is not None:
        raise CheckpointError(f"{source}: '{bad}' is not a tensor — pass a model state dict")
    return torchvision_names(state), source


def convert_torchvision_fasterrcnn(
    state_dict_or_path: Mapping[str, Any] | str | Path,
    *,
    min_size: int = 800,
    max_size: int = 1333,
) -> tuple[FasterRCNN, dict[str, Any]]:
    """Load a torchvision ``fasterrcnn_resnet50_fpn`` state dict (or its file) into nasdet's
    Faster R-CNN on ``SerialBackbone("111-2111-211111-211")`` with frozen BN.

    The number of classes is read from the box predictor (91 for torchvision's COCO weights).
    Returns the model (training mode, as built) and its ``architecture`` dict (see
    :func:`serial_fasterrcnn_architecture`). A checkpoint that does not fit raises
    :class:`~nasdet.errors.CheckpointError` naming the first missing, unexpected or
    wrongly shaped key.
    """
    state, source = _read_state(state_dict_or_path)
    num_classes = state[_CLS_SCORE].shape[0] if _CLS_SCORE in state else COCO_NUM_CLASSES
    spec = dict(
        code=RESNET50_CODE, block="bottleneck", frozen_bn=True, min_size=min_size, max_size=max_size
    )
    model = build_serial_fasterrcnn(num_classes=num_classes, **spec)
    own = model.state_dict()
    state = {  # FrozenBatchNorm2d has no num_batches_tracked; a BN checkpoint's are dropped
        k: v for k, v in state.items() if k in own or not k.endswith(".num_batches_tracked")
    }
    load_state_dict_checked(model, state, source)
    log.info("converted %s: %d tensors, %d classes", source, len(state), num_classes)
    return model, serial_fasterrcnn_architecture(**spec)


def coco_categories(num_classes: int) -> tuple[list[str], list[int]]:
    """Names and category ids of a converted model's labels 1..num_classes-1.

    For torchvision's COCO layout (91 = 90 slots + background) these are torchvision's COCO names
    (from its offline weight metadata; ``N/A`` for unused slots) with category id = label, as in
    COCO's own ids. Otherwise ``class_<label>``.
    """
    if num_classes == COCO_NUM_CLASSES:
        from torchvision.models.detection import FasterRCNN_ResNet50_FPN_Weights

        names = list(FasterRCNN_ResNet50_FPN_Weights.DEFAULT.meta["categories"][1:])
    else:
        names = [f"class_{i}" for i in range(1, num_classes)]
    return names, list(range(1, num_classes))


def keep_coco_classes(model: FasterRCNN, cat_ids: Sequence[int]) -> bool:
    """Cut torchvision's COCO box predictor (91 outputs, label = COCO category id) in place down
    to a COCO set's classes: nasdet's label ``i + 1`` takes the rows of category ``cat_ids[i]``
    (class score and its 4 box deltas). False (model unchanged) when the predictor is not
    torchvision's COCO layout or an id has no slot in it."""
    predictor = model.roi_heads.box_predictor
    if predictor.cls_score.out_features != COCO_NUM_CLASSES or not all(
        0 < c < COCO_NUM_CLASSES for c in cat_ids
    ):
        return False
    rows = [0, *cat_ids]
    box_rows = [4 * r + k for r in rows for k in range(4)]
    cut = FastRCNNPredictor(predictor.cls_score.in_features, len(rows))
    with torch.no_grad():
        for new, old, idx in (
            (cut.cls_score, predictor.cls_score, rows),
            (cut.bbox_pred, predictor.bbox_pred, box_rows),
        ):
            new.weight.copy_(old.weight[idx])
            new.bias.copy_(old.bias[idx])
    model.roi_heads.box_predictor = cut
    return True


def convert_command(
    checkpoint: Path, out: Path, *, min_size: int = 800, max_size: int = 1333, **unused: Any
) -> str:
    """``nasdet convert torchvision-fasterrcnn``: write ``out``; one line saying what it wrote.
    ``--num-classes`` does not apply: the checkpoint has its own."""
    if unused.get("num_classes"):
        raise ConfigError("--num-classes: torchvision-fasterrcnn keeps its checkpoint's classes")
    model, arch = convert_torchvision_fasterrcnn(checkpoint, min_size=min_size, max_size=max_size)
    categories, cat_ids = coco_categories(model.roi_heads.box_predictor.cls_score.out_features)
    path = save_model(
        out,
        model,
        architecture=arch,
        categories=categories,
        cat_ids=cat_ids,
        meta={"converted_from": str(checkpoint)},
    )
    return (
        f"wrote {path}: Faster R-CNN on SerialBackbone('{arch['backbone']['code']}'), "
        f"{count_params(model):,} parameters, {len(categories)} classes"
    )
