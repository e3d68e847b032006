"""``nasdet convert mmrazor-detnas CKPT --out OUT``: a retrained MMRazor DetNAS subnet checkpoint
(the COCO Faster R-CNN or the ImageNet classifier) as a nasdet Faster R-CNN model file on the
``shufflenet_nas`` backbone (``stride2_split: mmrazor``) with the checkpoint's backbone weights.
The FPN and the heads are freshly initialised (see :mod:`nasdet.methods.detnas.convert`); the
file is a starting point for ``nasdet train`` (``model.backbone.weights``) or fine-tuning."""

from __future__ import annotations

from pathlib import Path

import torch

from nasdet.build import build_detector
from nasdet.cost import count_params
from nasdet.errors import CheckpointError
from nasdet.methods.detnas.config import Model
from nasdet.methods.detnas.convert import mmrazor_state_dict_to_nasdet
from nasdet.models.io import load_state_dict_checked, read_state_dict, save_model

# MMRazor's DetNAS Faster R-CNN (MMRazor v0.1-v0.3,
# configs/nas/detnas/detnas_supernet_frcnn_shufflenetv2_fpn_1x_coco.py):
# FPN of 256 channels on the four stages plus a pooled level, anchors 8 x stride, 1333 x 800 input,
# 2000 / 1000 RPN proposals per level before NMS, 1000 after, 256 / 512 sampled per image.
FRCNN = {
    "detector": "fasterrcnn",
    "fpn_channels": 256,
    "representation_size": 1024,
    "rpn_pre_nms_top_n": (2000, 1000),
    "rpn_post_nms_top_n": (1000, 1000),
    "rpn_batch_size_per_image": 256,
    "box_batch_size_per_image": 512,
}


def convert_command(
    checkpoint: Path,
    out: Path,
    *,
    min_size: int | None = None,
    max_size: int | None = None,
    num_classes: int | None = None,
) -> str:
    """Write ``out``; one line saying what it wrote. ``min_size`` / ``max_size``: the resize
    (default 800 / 1333, MMRazor's); ``num_classes``: classes with background (default 81, COCO)."""
    state = read_state_dict(checkpoint)
    try:
        renamed, code, dropped = mmrazor_state_dict_to_nasdet(state)
    except ValueError as e:
        raise CheckpointError(f"{checkpoint}: {e}") from None
    ncls = num_classes or 81
    arch = Model.model_validate(
        {
            **FRCNN,
            "backbone": {
                "name": "shufflenet_nas",
                "code": str(code),
                "stride2_split": "mmrazor",
                "levels": [2, 3, 4, 5],
            },
            "min_size": min_size or 800,
            "max_size": max_size or 1333,
        }
    )
    torch.manual_seed(0)
    model = build_detector(arch, ncls)
    load_state_dict_checked(model.backbone.body, renamed, str(checkpoint))
    path = save_model(
        out,
        model.eval(),
        architecture=arch.model_dump(mode="json"),
        categories=[f"class_{i}" for i in range(1, ncls)],
        cat_ids=list(range(1, ncls)),
        meta={"converted_from": str(checkpoint), "unmapped_keys": len(dropped)},
    )
    return (
        f"wrote {path}: Faster R-CNN on the MMRazor DetNAS ShuffleNetV2 {code} "
        f"({count_params(model.backbone.body):,} backbone parameters loaded; FPN and heads "
        f"untrained, {len(dropped)} checkpoint keys not mapped), {ncls - 1} classes + background"
    )
