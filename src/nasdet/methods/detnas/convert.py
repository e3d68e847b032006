"""MMRazor DetNAS checkpoints as :class:`~nasdet.methods.detnas.nets.ShuffleNetV2Backbone` weights.

MMRazor 0.x saves its algorithm's state dict: keys start with ``architecture.model.``, then
``backbone.`` (``SearchableShuffleNetV2``), ``neck.``, ``rpn_head.``, ``roi_head.`` (detector) or
``head.`` (classifier). After retraining, every searchable block keeps only its chosen op, so a
block's keys name their choice (``layers.<stage>.<block>.choices.<name>.``) and the checkpoint
itself gives the subnet's code. The names come from MMRazor's
``mmrazor/models/architectures/components/backbones/searchable_shufflenet_v2.py`` (stem
``conv1``, ``layers``; a classifier's ``layers.4`` is a 1x1 conv to 1024 channels),
``mmrazor/models/mutables/mutable_module.py`` (``choices`` ModuleDict, unchosen ops popped by
``export``), ``mmrazor/models/ops/shufflenet_series.py`` (``branch1`` / ``branch2``) and mmcv's
``ConvModule`` (``conv``, ``bn``) and ``DepthwiseSeparableConvModule`` (``depthwise_conv``,
``pointwise_conv``). MMRazor's stride-2 blocks split channels as nasdet's
``stride2_split="mmrazor"``.

Only the backbone maps: the released detector's FPN has SyncBN after every conv (torchvision's FPN
has none) and its heads are mmdet's (``Shared4Conv1FCBBoxHead`` with background last and 80
class-specific boxes), so ``neck.``, ``rpn_head.``, ``roi_head.`` and ``head.`` are dropped.
"""

from __future__ import annotations

import re
from typing import Any

from torch import Tensor

from nasdet.methods.detnas.space import CHOICES, STAGE_DEPTHS, ShuffleNetCode

_BN = r"(weight|bias|running_mean|running_var|num_batches_tracked)"
_PREFIXES = ("module.", "architecture.", "model.")
DROPPED_PARTS = ("neck.", "rpn_head.", "roi_head.", "head.")  # detector / classifier heads

_STEM = re.compile(rf"^conv1\.(conv\.weight|bn\.{_BN})$")
_BLOCK = re.compile(r"^layers\.(\d+)\.(\d+)\.choices\.(\w+)\.(.+)$")
# ShuffleBlock: branch1 = dw conv+bn, 1x1 conv+bn+relu; branch2 = 1x1, dw, 1x1 (conv+bn each).
# nasdet: proj = [conv, bn, conv, bn, relu], main = [conv, bn, relu, conv, bn, conv, bn, relu].
_SHUFFLE = {("branch1", 0): ("proj", 0), ("branch1", 1): ("proj", 2)} | {
    ("branch2", i): ("main", m) for i, m in ((0, 0), (1, 3), (2, 5))
}
_CONV_MODULE = re.compile(rf"^(branch[12])\.(\d)\.(conv\.weight|bn\.{_BN})$")
# ShuffleXception branch2: three DepthwiseSeparableConvModules (dw conv+bn, pw conv+bn+relu);
# nasdet main: five modules per group (dw conv, bn, pw conv, bn, relu).
_XCEPTION_MAIN = re.compile(
    rf"^branch2\.([012])\.(depthwise_conv|pointwise_conv)\.(conv\.weight|bn\.{_BN})$"
)


def _strip(key: str) -> str:
    for prefix in _PREFIXES:
        if key.startswith(prefix):
            key = key[len(prefix) :]
    return key


def _unit_key(choice: str, rest: str) -> str | None:
    """nasdet's name inside a unit for MMRazor's ``rest`` of choice ``choice``, or None."""
    match = _XCEPTION_MAIN.match(rest) if choice == "shuffle_xception" else None
    if match:
        group, part, leaf = match.group(1, 2, 3)
        index = 5 * int(group) + (0 if part == "depthwise_conv" else 2)
        return f"main.{index + (1 if leaf.startswith('bn.') else 0)}.{leaf.split('.', 1)[1]}"
    match = _CONV_MODULE.match(rest)
    if match is None or (choice == "shuffle_xception" and match.group(1) == "branch2"):
        return None
    branch, index = _SHUFFLE.get((match.group(1), int(match.group(2))), (None, 0))
    if branch is None:
        return None
    leaf = match.group(3)
    return f"{branch}.{index + (1 if leaf.startswith('bn.') else 0)}.{leaf.split('.', 1)[1]}"


def mmrazor_state_dict_to_nasdet(
    state: dict[str, Any], depths: tuple[int, ...] = STAGE_DEPTHS
) -> tuple[dict[str, Tensor], ShuffleNetCode, list[str]]:
    """Rename a retrained MMRazor DetNAS / SPOS subnet state dict to ShuffleNetV2Backbone keys.

    Args:
        state: MMRazor's state dict (``architecture.model.``, ``module.`` or no prefix).
        depths: blocks per stage (MMRazor's ``SearchableShuffleNetV2``: 4, 4, 8, 4).

    Returns:
        The backbone state dict (``stem.*``, ``stages.<i>.<j>.*``), the subnet's code read from
        the blocks' choice names, and the keys dropped (neck, heads, a classifier's last conv).

    Raises:
        ValueError: one line naming a key that is not a subnet backbone key, a block with several
            choices (a supernet checkpoint) or a missing block.
    """
    out: dict[str, Tensor] = {}
    dropped: list[str] = []
    chosen: dict[tuple[int, int], str] = {}
    for key, value in state.items():
        name = _strip(key)
        if name.startswith(DROPPED_PARTS):
            dropped.append(key)
            continue
        name = name[len("backbone.") :] if name.startswith("backbone.") else name
        stem = _STEM.match(name)
        if stem:
            leaf = stem.group(1)
            out[f"stem.{1 if leaf.startswith('bn.') else 0}.{leaf.split('.', 1)[1]}"] = value
            continue
        if name.startswith(f"layers.{len(depths)}."):  # a classifier's last 1x1 conv to 1024
            dropped.append(key)
            continue
        block = _BLOCK.match(name)
        new = _unit_key(block.group(3), block.group(4)) if block else None
        if block is None or new is None or block.group(3) not in CHOICES:
            raise ValueError(f"unexpected key {key!r}: not an MMRazor SearchableShuffleNetV2 key")
        stage, index, choice = int(block.group(1)), int(block.group(2)), block.group(3)
        if stage >= len(depths) or index >= depths[stage]:
            raise ValueError(f"key {key!r} is outside the backbone's {depths} blocks")
        if chosen.setdefault((stage, index), choice) != choice:
            raise ValueError(
                f"block layers.{stage}.{index} holds {chosen[(stage, index)]} and {choice}: a "
                "supernet checkpoint; convert a retrained subnet (one choice per block)"
            )
        out[f"stages.{stage}.{index}.{new}"] = value
    missing = [f"{i}.{j}" for i, d in enumerate(depths) for j in range(d) if (i, j) not in chosen]
    if missing:
        raise ValueError(
            f"no weights for block layers.{missing[0]} ({len(missing)} of {sum(depths)} blocks "
            "missing): not a DetNAS ShuffleNetV2 checkpoint"
        )
    code = ShuffleNetCode(
        tuple(CHOICES.index(chosen[(i, j)]) for i, d in enumerate(depths) for j in range(d)),
        tuple(depths),
    )
    return out, code, dropped
