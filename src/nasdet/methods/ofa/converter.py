"""``nasdet convert ofa-mbv3 CKPT --out OUT``: a once-for-all MobileNetV3 supernet checkpoint as a
nasdet supernet model file (SSDLite on the elastic backbone, head freshly initialised), ready for
``nasdet export SUPERNET --genotype ...`` or as a run's starting point."""

from __future__ import annotations

from pathlib import Path

import torch

from nasdet.build import build_detector
from nasdet.cost import count_params
from nasdet.errors import CheckpointError
from nasdet.methods.ofa.config import Model
from nasdet.methods.ofa.convert import ofa_state_dict_to_nasdet
from nasdet.models.io import read_state_dict, save_model

WIDTHS = (1.0, 1.2)  # the released supernets: ofa_mbv3_d234_e346_k357_w1.0 and _w1.2


def _width_of(path: Path) -> float:
    """The checkpoint's width multiplier (1.0 or 1.2), from its stem and head widths."""
    state = read_state_dict(path)
    for width in WIDTHS:
        try:
            ofa_state_dict_to_nasdet(state, "mbv3", width)
            return width
        except ValueError as e:
            if "width_mult" not in str(e):
                raise CheckpointError(f"{path}: {e}") from None
    raise CheckpointError(
        f"{path}: its widths match none of the released supernets (width_mult {WIDTHS})"
    )


def convert_command(
    checkpoint: Path,
    out: Path,
    *,
    min_size: int | None = None,
    max_size: int | None = None,
    num_classes: int | None = None,
) -> str:
    """Write ``out``; one line saying what it wrote. ``min_size``: SSDLite's square input
    (default 320); ``num_classes``: classes with background (default 21, Pascal VOC)."""
    size = min_size or 320
    ncls = num_classes or 21
    arch = Model.model_validate(
        {
            "detector": "ssdlite",
            "backbone": {
                "name": "ofa_supernet",
                "width_mult": _width_of(checkpoint),
                "pretrained_path": str(checkpoint),
            },
            "min_size": size,
            "max_size": max_size or size,
        }
    )
    torch.manual_seed(0)
    model = build_detector(arch, ncls)
    dump = arch.model_dump(mode="json")
    dump["backbone"]["pretrained_path"] = None  # the weights are in the file now
    path = save_model(
        out,
        model.eval(),
        architecture=dump,
        categories=[f"class_{i}" for i in range(1, ncls)],
        cat_ids=list(range(1, ncls)),
        meta={"converted_from": str(checkpoint)},
    )
    width = dump["backbone"]["width_mult"]
    return (
        f"wrote {path}: SSDLite on the OFA MobileNetV3 supernet (width {width}), "
        f"{count_params(model):,} parameters, {ncls - 1} classes + background, head untrained"
    )
