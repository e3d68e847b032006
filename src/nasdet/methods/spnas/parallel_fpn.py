"""SP-NAS parallel phase: extra residual blocks beside the serial net's levels, then an FPN.

:class:`ParallelFPN` is an :class:`~nasdet.models.backbone.FPNBackbone` (same attributes
``.body``, ``.fpn``, ``.out_channels``, ``.feature_info``, ``level_names``, output keys ``p3..``
and optional extras ``pool`` / ``p6p7``) with one more part, ``.branches``: for each level ``l``
with ``code[l] > 0`` a :class:`ParallelBranch` of ``code[l]`` residual blocks of the same type
and width as that level's stage (stride 1) runs on the level's feature and is summed back::

    c_l' = c_l + norm(block_n(... block_1(c_l)))        # then FPN over c_2' .. c_L'

Branches run on exactly the levels the body returns (those the FPN and the detector use), one
code entry per returned level, finest first; stages the body does not return get none. The body's
own path is untouched, so the serial feature extractor stays ``.body`` and its cost the
"backbone" cost; the branches count as neck, like the FPN.

Initialisation: the fusion norm of a new branch has zero weight and bias, so a freshly built
ParallelFPN computes exactly what an FPNBackbone with the same body and FPN computes; its second
and later blocks start as identity morphisms (last norm zero), so a branch grown by one block from
trained weights keeps its function too. Parameter names of the body and FPN are those of
FPNBackbone (``backbone.body.*``, ``backbone.fpn.*``), so a trained serial detector's weights load
by name (:func:`load_serial_detector_weights`); only ``backbone.branches.*`` is new.

The body must follow torchvision's ResNet naming: level ``cL`` is the output of the stage
``layer{L-1}`` (or the child an ``IntermediateLayerGetter`` maps to ``cL``), a sequence ending
with a ``BasicBlock`` or ``Bottleneck`` (``SerialBackbone``, ``baselines.resnet18/50``).
"""

from __future__ import annotations

import logging
import math
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence

import torch
from torch import Tensor, nn
from torchvision.models.resnet import BasicBlock, Bottleneck

from nasdet.cost import count_flops
from nasdet.errors import CheckpointError
from nasdet.methods.spnas.neck_space import ParallelCode
from nasdet.methods.spnas.nets import make_identity
from nasdet.models.backbone import ExtraLevels, FPNBackbone, ShapeSpec, check_backbone

log = logging.getLogger(__name__)

NormLayer = Callable[[int], nn.Module]
ResidualBlock = BasicBlock | Bottleneck


def level_key(spec: ShapeSpec) -> str:
    """Output key of a body level: ``c`` + log2 of its stride (stride 8 -> ``c3``)."""
    return f"c{spec.stride.bit_length() - 1}"


def level_block(body: nn.Module, key: str) -> ResidualBlock:
    """The last residual block of the stage that produces level ``key`` (``"c3"``) of ``body``.

    ``ValueError`` when the body has no torchvision-named stage for it (see module docstring).
    """
    name = f"layer{int(key[1:]) - 1}"
    return_layers = getattr(body, "return_layers", None)
    if isinstance(return_layers, Mapping):
        name = next((k for k, v in return_layers.items() if v == key), name)
    stage = getattr(body, name, None)
    last = stage[-1] if isinstance(stage, nn.Sequential) and len(stage) else stage
    if not isinstance(last, BasicBlock | Bottleneck):
        raise ValueError(
            f"{type(body).__name__} level {key}: expected stage '{name}' ending with a torchvision "
            f"BasicBlock or Bottleneck, found {type(last).__name__}; parallel branches copy that "
            "block type, so the body must be a ResNet-like net (SerialBackbone, resnet18/50)"
        )
    return last


def make_branch_block(template: ResidualBlock, norm_layer: NormLayer = nn.BatchNorm2d) -> nn.Module:
    """A fresh stride-1 block of ``template``'s type, widths and groups (input = output width),
    initialised as torchvision's ResNet does (Kaiming normal, fan-out; norms 1 / 0)."""
    if isinstance(template, BasicBlock):
        channels = template.conv2.out_channels
        block: nn.Module = BasicBlock(channels, channels, norm_layer=norm_layer)
    else:
        channels = template.conv3.out_channels
        planes = channels // Bottleneck.expansion
        width, groups = template.conv1.out_channels, template.conv2.groups
        base_width = width // groups * 64 // planes
        block = Bottleneck(
            channels, planes, groups=groups, base_width=base_width, norm_layer=norm_layer
        )
        if block.conv1.out_channels != width:
            raise ValueError(
                f"cannot rebuild a Bottleneck of inner width {width} with {groups} groups and "
                f"{channels} output channels as a torchvision block"
            )
    for m in block.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(m, nn.BatchNorm2d | nn.GroupNorm):
            nn.init.constant_(m.weight, 1)
            nn.init.constant_(m.bias, 0)
    return block


class ParallelBranch(nn.Module):
    """``x + norm(blocks(x))``: residual blocks beside one level, fused back by a sum.

    Args:
        blocks: stride-1 residual blocks keeping the width ``channels``; the second and later
            start as identity morphisms.
        channels: width of the level.
        norm_layer: the fusion norm (zero weight and bias at init: the branch adds nothing).
    """

    def __init__(self, blocks: Sequence[nn.Module], channels: int, norm_layer: NormLayer) -> None:
        super().__init__()
        if not blocks:
            raise ValueError("a parallel branch needs at least one block")
        self.blocks = nn.Sequential(*blocks)
        for block in list(self.blocks)[1:]:
            make_identity(block)
        self.norm = norm_layer(channels)
        if getattr(self.norm, "weight", None) is None or getattr(self.norm, "bias", None) is None:
            raise ValueError(
                f"the branch norm {type(self.norm).__name__} needs an affine weight and bias "
                "(they start at zero so that a new branch adds nothing)"
            )
        with torch.no_grad():
            self.norm.weight.zero_()
            self.norm.bias.zero_()

    def forward(self, x: Tensor) -> Tensor:
        return x + self.norm(self.blocks(x))


class ParallelFPN(FPNBackbone):
    """A serial backbone with SP-NAS parallel branches, then torchvision's FPN (contract).

    Args:
        body: a ResNet-like backbone honouring the contract (levels ``c2..``), e.g.
            ``SerialBackbone``; it is used as is (not copied).
        code: extra blocks per returned level of ``body`` (``ParallelCode``, ``"0-1-2-3"`` or a
            list); its length must be the number of levels ``body`` returns.
        out_channels: FPN width.
        extra: extra pyramid levels, as :class:`FPNBackbone` (``"none"``, ``"pool"``, ``"p6p7"``).
        max_blocks_per_level: K; when given, ``code`` is checked against it.
        norm_layer: norm of the branch blocks and fusion (trainable; the body may use
            ``FrozenBatchNorm2d``, the branches are new and must learn).

    Output: as :class:`FPNBackbone` (``p3..`` then extras), with the branches summed into the
    body's levels before the FPN.
    """

    def __init__(
        self,
        body: nn.Module,
        code: ParallelCode | str | Sequence[int],
        out_channels: int,
        extra: ExtraLevels = "none",
        *,
        max_blocks_per_level: int | None = None,
        norm_layer: NormLayer = nn.BatchNorm2d,
    ) -> None:
        super().__init__(body, out_channels, extra)
        info = check_backbone(body)
        self.code = ParallelCode.parse(
            code, num_levels=len(info), max_blocks_per_level=max_blocks_per_level
        )
        self.branches = nn.ModuleDict()
        for spec, count in zip(info, self.code.blocks, strict=True):
            if count == 0:
                continue
            key = level_key(spec)
            template = level_block(body, key)
            blocks = [make_branch_block(template, norm_layer) for _ in range(count)]
            _check_width(blocks[0], spec, key)
            self.branches[key] = ParallelBranch(blocks, spec.channels, norm_layer)

    def forward(self, x: Tensor) -> OrderedDict[str, Tensor]:
        feats = self.body(x)
        for key, branch in self.branches.items():
            feats[key] = branch(feats[key])
        pyramid = self.fpn(feats)
        return OrderedDict(
            (("p" + k[1:] if k.startswith("c") else k), v) for k, v in pyramid.items()
        )

    @property
    def branch_levels(self) -> list[str]:
        """Body levels that have a branch (``["c4", "c5"]``)."""
        return list(self.branches)

    def extra_repr(self) -> str:
        return f"code='{self.code}'"


def _check_width(block: nn.Module, spec: ShapeSpec, key: str) -> None:
    last_conv = block.conv3 if isinstance(block, Bottleneck) else block.conv2
    if last_conv.out_channels != spec.channels:
        raise ValueError(
            f"level {key}: feature_info says {spec.channels} channels but its stage's blocks "
            f"output {last_conv.out_channels}"
        )


def _feature_size(size: int, stride: int) -> int:
    """Side of a level's feature map: ``ceil(size / stride)`` (ResNet's padded stride-2 ops)."""
    return math.ceil(size / stride)


def branch_flops(body: nn.Module, level: int | str, input_size: tuple[int, int]) -> int:
    """FLOPs of ONE extra parallel block at ``level`` for one image (batch 1).

    Args:
        body: the serial backbone (contract, torchvision-named stages).
        level: ``"c3"`` or its number ``3`` (log2 of the stride).
        input_size: (H, W) in pixels of the tensor the body sees (after the detector's resize and
            padding: ``DetectorCost.model_input_size``); the level's map is
            ``ceil(H / stride) x ceil(W / stride)``.

    Returns:
        FLOPs as :func:`nasdet.cost.count_flops` counts them (2 per multiply-accumulate; norms,
        ReLU and the residual sum are 0), measured on meta tensors (no compute).
    """
    key = level if isinstance(level, str) else f"c{level}"
    specs = {level_key(s): s for s in check_backbone(body)}
    if key not in specs:
        raise ValueError(f"level {key!r} is not returned by the body (it has {list(specs)})")
    spec = specs[key]
    template = level_block(body, key)
    height, width = (_feature_size(s, spec.stride) for s in input_size)
    with torch.device("meta"):
        block = make_branch_block(template)
        x = torch.empty(1, spec.channels, height, width)
    return count_flops(block, x).flops


def levels_branch_flops(body: nn.Module, input_size: tuple[int, int]) -> list[int]:
    """:func:`branch_flops` of every level ``body`` returns, in code order (the ``levels_flops``
    of :func:`nasdet.methods.spnas.neck_space.sample_parallel_code`)."""
    return [branch_flops(body, level_key(s), input_size) for s in check_backbone(body)]


def load_serial_detector_weights(
    parallel_detector: nn.Module, serial_state_dict: Mapping[str, Tensor]
) -> tuple[int, int]:
    """Load a trained serial detector's state dict into a detector built on a ParallelFPN.

    Every tensor of ``parallel_detector`` outside the ParallelFPN branches (body, FPN, heads,
    BN statistics) is taken by name from ``serial_state_dict``; the branch tensors
    (``<...>.branches.*``) keep their initialisation. ``CheckpointError`` names the first key
    that is missing, has another shape, or has no place in the parallel detector.

    Returns:
        (loaded, new): numbers of state-dict tensors (parameters and buffers) loaded and kept new.
    """
    prefixes = tuple(
        f"{name}.branches." if name else "branches."
        for name, module in parallel_detector.named_modules()
        if isinstance(module, ParallelFPN)
    )
    if not prefixes:
        raise ValueError(f"{type(parallel_detector).__name__} contains no ParallelFPN")
    own = parallel_detector.state_dict()
    taken: dict[str, Tensor] = {}
    new = 0
    for key, value in own.items():
        if key in serial_state_dict:
            got = serial_state_dict[key]
            if tuple(got.shape) != tuple(value.shape):
                raise CheckpointError(
                    f"serial weights: '{key}' has shape {tuple(got.shape)}, the parallel model "
                    f"needs {tuple(value.shape)} — they are for another serial architecture"
                )
            taken[key] = got
        elif key.startswith(prefixes):
            new += 1
        else:
            raise CheckpointError(
                f"serial weights: key '{key}' is missing — build the parallel detector with the "
                "same serial body, FPN width, detector and classes as the serial one"
            )
    extra = [k for k in serial_state_dict if k not in own]
    if extra:
        raise CheckpointError(
            f"serial weights: unexpected key '{extra[0]}' — the file is for another model"
        )
    own.update(taken)
    parallel_detector.load_state_dict(own, strict=True)
    log.info("loaded %d serial tensors, %d parallel-branch tensors new", len(taken), new)
    return len(taken), new
