"""Once-for-All checkpoints (``ofa_mbv3_d234_e346_k357_w1.0``, ``..._w1.2``) into nasdet's
:class:`~nasdet.methods.ofa.nets.OFAMobileNetV3Supernet`.

A released checkpoint is ``{"state_dict": {...}}`` keyed by OFA's module names, which the
supernet keeps, so the key map is a short table (:data:`KEY_MAP`): the older
``blocks.<i>.mobile_inverted_conv.`` prefix becomes ``blocks.<i>.conv.`` (OFA's own
``OFAMobileNetV3.load_state_dict`` accepts both), the classification head (``feature_mix_layer``,
``classifier``) is dropped, and every other key must be one of the backbone's. The names come from
``ofa/imagenet_classification/elastic_nn/networks/ofa_mbv3.py`` (``OFAMobileNetV3``),
``elastic_nn/modules/dynamic_layers.py`` (``DynamicMBConvLayer``), ``elastic_nn/modules/
dynamic_op.py`` (``DynamicSeparableConv2d``, ``DynamicConv2d``, ``DynamicBatchNorm2d``,
``DynamicSE``) and ``ofa/utils/layers.py`` (``ConvLayer``, ``MBConvLayer``, ``ResidualBlock``).
"""

from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from nasdet.errors import CheckpointError
from nasdet.methods.ofa.elastic import make_divisible
from nasdet.methods.ofa.nets import MBV3, OFASupernet
from nasdet.models.io import load_state_dict_checked, read_state_dict

log = logging.getLogger(__name__)

_BN = r"(weight|bias|running_mean|running_var|num_batches_tracked)"
_DROP = None
# (OFA key pattern, nasdet key template or _DROP), the first match wins. OFA's modules:
KEY_MAP: tuple[tuple[re.Pattern[str], str | None], ...] = (
    # utils/layers.py ResidualBlock(conv=...): older checkpoints name it mobile_inverted_conv
    (re.compile(r"^blocks\.(\d+)\.mobile_inverted_conv\.(.+)$"), r"blocks.\1.conv.\2"),
    # OFAMobileNetV3 classification head: ConvLayer 960 -> 1280 (no BN), LinearLayer
    (re.compile(r"^(feature_mix_layer|classifier)\..+$"), _DROP),
    # ConvLayer (first_conv 3x3 s2, final_expand_layer 1x1): conv, bn
    (re.compile(rf"^(first_conv|final_expand_layer)\.(conv\.weight|bn\.{_BN})$"), r"\g<0>"),
    # blocks.0: MBConvLayer (expand 1): depth_conv / point_linear, each conv + bn
    (
        re.compile(rf"^blocks\.0\.conv\.(depth_conv|point_linear)\.(conv\.weight|bn\.{_BN})$"),
        r"\g<0>",
    ),
    # DynamicMBConvLayer: DynamicConv2d / DynamicSeparableConv2d hold .conv, DynamicBatchNorm2d .bn
    (
        re.compile(
            r"^blocks\.[1-9]\d*\.conv\.("
            rf"(inverted_bottleneck|point_linear)\.(conv\.conv\.weight|bn\.bn\.{_BN})"
            rf"|depth_conv\.(conv\.conv\.weight|conv\.\d+to\d+_matrix|bn\.bn\.{_BN}"
            r"|se\.fc\.(reduce|expand)\.(weight|bias)))$"
        ),
        r"\g<0>",
    ),
)


def _map_key(key: str) -> tuple[str | None, bool]:
    """(nasdet key or None to drop, whether any rule matched)."""
    for pattern, template in KEY_MAP:
        match = pattern.match(key)
        if match is None:
            continue
        if template is _DROP:
            return None, True
        new = match.expand(template)
        if new != key:  # a renaming rule: the new name must pass the table too
            return _map_key(new)
        return new, True
    return None, False


def ofa_state_dict_to_nasdet(
    state: dict[str, Any], backbone_type: str = "mbv3", width_mult: float = 1.0
) -> tuple[dict[str, Tensor], list[str]]:
    """Rename an ``OFAMobileNetV3`` state dict to :class:`OFAMobileNetV3Supernet` keys.

    Args:
        state: OFA's state dict (either naming; a ``module.`` prefix is stripped).
        backbone_type: must be ``mbv3`` / ``mbv3_backbone`` (OFA's ProxylessNAS / MobileNetV2
            supernet has another block structure).
        width_mult: the supernet's; checked against the checkpoint's stem and head widths.

    Returns:
        The renamed state dict and the keys dropped (the classification head).

    Raises:
        ValueError: one line naming a key that is not an OFAMobileNetV3 key, or a width mismatch.
    """
    if backbone_type not in ("mbv3", "mbv3_backbone"):
        raise ValueError(
            f"OFA checkpoints convert to the mbv3 backbone only, not {backbone_type!r}"
        )
    out: dict[str, Tensor] = {}
    dropped: list[str] = []
    for key, value in state.items():
        name = key[len("module.") :] if key.startswith("module.") else key
        new, known = _map_key(name)
        if not known:
            raise ValueError(f"unexpected key {key!r}: not an OFAMobileNetV3 backbone key")
        if new is None:
            dropped.append(key)
        else:
            out[new] = value
    for key, base in (
        ("first_conv.conv.weight", MBV3.stem),
        ("final_expand_layer.conv.weight", MBV3.head),
    ):
        want = make_divisible(base * width_mult)
        if key in out and out[key].shape[0] != want:
            raise ValueError(
                f"'{key}' has {out[key].shape[0]} output channels, width_mult {width_mult} needs "
                f"{want}: the checkpoint is for another width_mult"
            )
    return out, dropped


def _unbuilt(key: str, supernet: OFASupernet) -> bool:
    """Whether ``key`` belongs to a part the supernet does not build (stages after its last
    level, or the final expand layer without level 5)."""
    if key.startswith("final_expand_layer."):
        return not supernet.has_head
    match = re.match(r"^blocks\.(\d+)\.", key)
    return match is not None and int(match.group(1)) >= len(supernet.blocks)


def load_ofa_checkpoint(path: str | Path, supernet: OFASupernet) -> list[str]:
    """Load an OFA checkpoint file into ``supernet`` (strict: every supernet key must be there).

    The file is read with ``torch.load(weights_only=True)``; ``{"state_dict": ...}`` or a bare
    state dict, either naming. The classification head and parts the supernet does not build are
    dropped (listed at DEBUG); a missing ``num_batches_tracked`` counts as 0.

    Returns:
        The keys dropped.

    Raises:
        CheckpointError: one line naming the file and the missing / unexpected / misshapen key.
    """
    state = read_state_dict(path)
    try:
        renamed, dropped = ofa_state_dict_to_nasdet(
            state, supernet.backbone_type, supernet.width_mult
        )
    except ValueError as e:
        raise CheckpointError(f"{path}: {e}") from None
    for key in [k for k in renamed if _unbuilt(k, supernet)]:
        del renamed[key]
        dropped.append(key)
    for key, value in supernet.state_dict().items():
        if key.endswith(".num_batches_tracked") and key not in renamed:
            renamed[key] = torch.zeros_like(value)
    log.debug("%s: dropped %d keys: %s", path, len(dropped), ", ".join(dropped))
    load_state_dict_checked(supernet, renamed, str(path))
    return dropped
