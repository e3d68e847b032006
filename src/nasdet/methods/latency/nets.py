"""The search space made from a baseline backbone: each searchable block becomes a container of
variants (ENOT's search space generated from the user's model).

Variant 0 of a block is the baseline's block itself (the same module, the same weights); then one
width-pruned copy per multiplier (its hidden channels cut to ``round(m * hidden)``, keeping the
baseline's most important hidden channels), then ``skip`` (an identity) where the block may be
skipped (its output is its input plus a residual branch).

Which blocks are searchable, and how one is pruned, is the baseline's business: a baseline is
supported by one entry in :data:`BLOCK_KINDS` (a test, a pruning function and a skip rule). The
body is scanned depth-first in child order: a searchable module becomes a variant container where
it sits (named by its dotted path, e.g. ``"3"`` for a MobileNetV2 block, ``"layer2.1"`` for a
ResNet bottleneck, ``"stage3.4"`` for a Darknet residual); other modules are searched inside.
The kinds: MobileNetV2's inverted residuals with an expansion conv, Darknet-53's residual blocks
(YOLOv3) and torchvision's ResNet bottlenecks (RetinaNet).

A RetinaNet or FCOS head's tower convs may be entries too, after the blocks
(:mod:`~nasdet.methods.latency.head`, :func:`attach_head_space`): the body holds them, so an
architecture covers both.

A hidden channel's importance is always the L1 norm of the input weights that read it in the next
conv (``sum |W_next[:, h]|``), as Once-for-All ranks channels.
"""

from __future__ import annotations

import copy
import random
from collections import OrderedDict
from collections.abc import Callable, Sequence
from typing import NamedTuple

import torch
from torch import Tensor, nn
from torchvision.models.mobilenetv2 import InvertedResidual
from torchvision.models.resnet import Bottleneck

from nasdet.methods.latency.head import HeadConv, searchable_head
from nasdet.methods.latency.space import LatencyArch, LatencySpace
from nasdet.models.backbone import FeatureBackbone
from nasdet.models.darknet import DarknetResidual

DEFAULT_MULTIPLIERS = (0.9, 0.75, 0.5, 0.25, 0.1)


# ----------------------------------------------------------------------------- block kinds
def _is_expanding_ir(block: nn.Module) -> bool:
    return isinstance(block, InvertedResidual) and len(block.conv) == 4


def l1_importance(next_conv: nn.Conv2d) -> Tensor:
    """Importance of each input channel of ``next_conv``: the L1 norm of its input weights
    (``|W[:, h]|``, summed over outputs and kernel)."""
    return next_conv.weight.detach().abs().sum(dim=(0, 2, 3))


def ir_importance(block: InvertedResidual) -> Tensor:
    """Importance of each hidden channel of an inverted residual: the L1 norm of the projection
    conv's input weights (``|W_proj[:, h]|``, summed), as Once-for-All ranks channels."""
    return l1_importance(block.conv[2])


def top_channels(importance: Tensor, multiplier: float) -> Tensor:
    """The ``max(1, round(m * n))`` most important of ``n`` channels, in increasing index
    order."""
    k = max(1, round(multiplier * importance.numel()))
    return torch.sort(torch.topk(importance, k).indices).values


def kept_channels(block: InvertedResidual, multiplier: float) -> Tensor:
    """The hidden channels a variant at ``multiplier`` keeps: the ``max(1, round(m * hidden))``
    most important ones (:func:`ir_importance`), in increasing index order."""
    return top_channels(ir_importance(block), multiplier)


def _slice_conv(conv: nn.Conv2d, out_idx: Tensor | None, in_idx: Tensor | None) -> nn.Conv2d:
    w = conv.weight.detach()
    if out_idx is not None:
        w = w[out_idx]
    if in_idx is not None and conv.groups == 1:
        w = w[:, in_idx]
    groups = w.shape[0] if conv.groups > 1 else 1
    new = nn.Conv2d(
        w.shape[1] * groups,
        w.shape[0],
        conv.kernel_size,
        conv.stride,
        conv.padding,
        conv.dilation,
        groups,
        bias=conv.bias is not None,
    )
    new.weight.data.copy_(w)
    if conv.bias is not None:
        new.bias.data.copy_(conv.bias.detach()[out_idx] if out_idx is not None else conv.bias)
    return new


def _slice_bn(bn: nn.BatchNorm2d, idx: Tensor) -> nn.BatchNorm2d:
    new = nn.BatchNorm2d(len(idx), eps=bn.eps, momentum=bn.momentum)
    for name in ("weight", "bias"):
        getattr(new, name).data.copy_(getattr(bn, name).detach()[idx])
    for name in ("running_mean", "running_var"):
        getattr(new, name).copy_(getattr(bn, name)[idx])
    new.num_batches_tracked.copy_(bn.num_batches_tracked)
    return new


def prune_inverted_residual(block: InvertedResidual, keep: Tensor) -> InvertedResidual:
    """A copy of ``block`` with only the hidden channels ``keep`` (expand conv outputs, depthwise
    conv, projection inputs); weights copied, the module layout (parameter names) unchanged."""
    new = copy.deepcopy(block)
    expand, dw, proj = new.conv[0], new.conv[1], new.conv[2]
    expand[0] = _slice_conv(expand[0], keep, None)
    expand[1] = _slice_bn(expand[1], keep)
    dw[0] = _slice_conv(dw[0], keep, None)
    dw[1] = _slice_bn(dw[1], keep)
    new.conv[2] = _slice_conv(proj, None, keep)
    return new


def prune_ir(block: nn.Module, multiplier: float) -> nn.Module:
    return prune_inverted_residual(block, kept_channels(block, multiplier))


def darknet_kept_channels(block: DarknetResidual, multiplier: float) -> Tensor:
    """The hidden channels (the 1x1 conv's outputs) a Darknet residual variant keeps: the most
    important by the L1 norm of the 3x3 conv's input weights."""
    return top_channels(l1_importance(block.conv2.conv), multiplier)


def prune_darknet_residual(block: DarknetResidual, keep: Tensor) -> DarknetResidual:
    """A copy of ``block`` with only the hidden channels ``keep`` (1x1 conv outputs and BN, 3x3
    conv inputs); the module layout unchanged."""
    new = copy.deepcopy(block)
    new.conv1.conv = _slice_conv(block.conv1.conv, keep, None)
    new.conv1.bn = _slice_bn(block.conv1.bn, keep)
    new.conv2.conv = _slice_conv(block.conv2.conv, None, keep)
    return new


def prune_darknet(block: nn.Module, multiplier: float) -> nn.Module:
    return prune_darknet_residual(block, darknet_kept_channels(block, multiplier))


def bottleneck_kept_channels(block: Bottleneck, multiplier: float) -> tuple[Tensor, Tensor]:
    """The channels a ResNet bottleneck variant keeps of its two hidden widths: conv1's outputs
    ranked by conv2's input weights, conv2's outputs ranked by conv3's (L1 norms)."""
    return (
        top_channels(l1_importance(block.conv2), multiplier),
        top_channels(l1_importance(block.conv3), multiplier),
    )


def prune_bottleneck(block: nn.Module, multiplier: float) -> nn.Module:
    """A copy of a ResNet ``Bottleneck`` with its width (conv1 and conv2 outputs, their BNs, the
    inputs of conv2 and conv3) cut to :func:`bottleneck_kept_channels`; ``downsample`` kept."""
    keep1, keep2 = bottleneck_kept_channels(block, multiplier)
    new = copy.deepcopy(block)
    new.conv1 = _slice_conv(block.conv1, keep1, None)
    new.bn1 = _slice_bn(block.bn1, keep1)
    new.conv2 = _slice_conv(block.conv2, keep2, keep1)
    new.bn2 = _slice_bn(block.bn2, keep2)
    new.conv3 = _slice_conv(block.conv3, None, keep2)
    return new


def _is_bottleneck(block: nn.Module) -> bool:
    return isinstance(block, Bottleneck) and block.conv2.groups == 1


class BlockKind(NamedTuple):
    """A searchable block kind: which modules it is, how one is pruned to a width multiplier,
    and whether a block may be skipped (replaced by an identity)."""

    matches: Callable[[nn.Module], bool]
    prune: Callable[[nn.Module, float], nn.Module]
    skippable: Callable[[nn.Module], bool]


#: the searchable block kinds, tried in order
BLOCK_KINDS: list[BlockKind] = [
    # MobileNetV2: a residual when in == out channels and stride 1
    BlockKind(_is_expanding_ir, prune_ir, lambda b: bool(b.use_res_connect)),
    # Darknet-53: always x + f(x)
    BlockKind(lambda b: isinstance(b, DarknetResidual), prune_darknet, lambda b: True),
    # ResNet: the identity shortcut only without a downsample
    BlockKind(_is_bottleneck, prune_bottleneck, lambda b: b.downsample is None),
]


def _kind(block: nn.Module) -> BlockKind | None:
    return next((kind for kind in BLOCK_KINDS if kind.matches(block)), None)


def has_skip(block: nn.Module) -> bool:
    """Whether a searchable block may be skipped: its output is its input plus a residual."""
    kind = _kind(block)
    return kind is not None and kind.skippable(block)


# ----------------------------------------------------------------------------- containers
class VariantBlock(nn.Module):
    """A searchable block's variants; ``active`` picks the one forward runs.

    ``variants[0]`` is the baseline's block, then one pruned copy per multiplier, then an
    ``nn.Identity`` when ``skip``. ``multipliers[v]`` is variant ``v``'s width (1.0, ..., 0.0).
    """

    def __init__(
        self, block: nn.Module, multipliers: Sequence[float], *, skip: bool = True
    ) -> None:
        super().__init__()
        kind = _kind(block)
        if kind is None:
            raise ValueError(f"{type(block).__name__} is not a searchable block kind")
        variants = [block] + [kind.prune(block, m) for m in multipliers]
        mults = [1.0, *multipliers]
        if skip and has_skip(block):
            variants.append(nn.Identity())
            mults.append(0.0)
        self.variants = nn.ModuleList(variants)
        self.multipliers = tuple(mults)
        self.active = 0
        self.out_channels = getattr(block, "out_channels", None)
        self._is_cn = getattr(block, "_is_cn", False)

    def forward(self, x: Tensor) -> Tensor:
        return self.variants[self.active](x)


def _wrap_blocks(
    module: nn.Module, prefix: str, multipliers: Sequence[float], skip: bool
) -> list[str]:
    """Replace, in place and depth-first in child order, every searchable module under
    ``module`` by a :class:`VariantBlock`; their dotted paths (below ``module``), in order."""
    names: list[str] = []
    for name, child in list(module.named_children()):
        path = f"{prefix}{name}"
        if _kind(child) is not None:
            setattr(module, name, VariantBlock(child, multipliers, skip=skip))
            names.append(path)
        else:
            names += _wrap_blocks(child, f"{path}.", multipliers, skip)
    return names


class LatencySupernet(FeatureBackbone):
    """A baseline :class:`FeatureBackbone` whose searchable blocks are :class:`VariantBlock`
    where they sat (the same child names and paths; the other modules are the baseline's, so the
    baseline body is consumed). ``block_names``: the blocks' dotted paths, in execution order.

    The supernet protocol of :mod:`nasdet.search.supernet`: ``set_active_subnet``,
    ``sample_active_subnet``, ``get_active_subnet``.
    """

    def __init__(
        self,
        body: FeatureBackbone,
        multipliers: Sequence[float] = DEFAULT_MULTIPLIERS,
        *,
        skip: bool = True,
    ) -> None:
        nn.ModuleDict.__init__(self)
        for name, child in body.items():
            self[name] = child
        self.return_layers = dict(body.return_layers)
        self.feature_info = list(body.feature_info)
        self.out_channels = list(body.out_channels)
        self.block_names = _wrap_blocks(self, "", multipliers, skip)
        self.head_entries: list[HeadConv] = []  # not modules of the body: the head holds them
        self.space = LatencySpace(tuple(len(b.variants) for b in self.blocks()))

    def attach_head(self, names: list[str], entries: list[HeadConv]) -> None:
        """Append the head's searchable convs (:func:`~nasdet.methods.latency.head.
        searchable_head`) to the space's entries, after the blocks: ``block_names``,
        ``blocks()``, ``space`` and the architectures then cover them too."""
        if self.head_entries:
            raise ValueError("the space already has its head's entries")
        self.block_names = [*self.block_names, *names]
        self.head_entries = list(entries)
        self.space = LatencySpace(tuple(len(b.variants) for b in self.blocks()))

    @property
    def num_body_blocks(self) -> int:
        """The backbone blocks' count: the first entries of an architecture."""
        return len(self.block_names) - len(self.head_entries)

    def blocks(self) -> list[VariantBlock | HeadConv]:
        """The searchable entries in architecture order: the blocks (execution order), then the
        head's convs."""
        body = [self.get_submodule(n) for n in self.block_names[: self.num_body_blocks]]
        return [*body, *self.head_entries]

    def set_active_subnet(self, arch: LatencyArch) -> None:
        for block, c in zip(self.blocks(), self.space.check(arch).choices, strict=True):
            block.active = c

    def active_subnet(self) -> LatencyArch:
        return LatencyArch(tuple(b.active for b in self.blocks()))

    def sample_active_subnet(self, rng) -> LatencyArch:  # noqa: ANN001 (random.Random)
        arch = self.space.sample(rng)
        self.set_active_subnet(arch)
        return arch

    def get_active_subnet(self, preserve_weight: bool = True) -> FeatureBackbone:
        """The static backbone of the active architecture: each block replaced by its chosen
        variant, everything copied; modules keep their names and paths. The head's entries are
        not part of it: a searched net's ``model.head_skip`` skips its convs."""
        chosen = {id(b): b.variants[b.active] for b in self.blocks()[: self.num_body_blocks]}
        memo = {i: copy.deepcopy(v) for i, v in chosen.items()}  # deepcopy puts them in place
        children = OrderedDict((n, copy.deepcopy(c, memo)) for n, c in self.items())
        static = _static_backbone(children, self.return_layers, self.feature_info)
        if not preserve_weight:
            for m in static.modules():
                if hasattr(m, "reset_parameters") and m is not static:
                    m.reset_parameters()
        return static


def _static_backbone(
    children: OrderedDict[str, nn.Module], return_layers: dict[str, str], info: list
) -> FeatureBackbone:
    seq = nn.Sequential(children)
    return FeatureBackbone(seq, dict(return_layers), info)


def space_body(detector: nn.Module) -> LatencySupernet:
    """The space of a space detector: ``detector.backbone.body`` (SSD's extra levels,
    RetinaNet's FPN hold the body), else ``detector.backbone`` (YOLOv3's)."""
    holder = detector.backbone
    return getattr(holder, "body", holder)


def attach_head_space(detector: nn.Module) -> int:
    """Make the head tower convs of a space detector searchable entries of its space (after
    the blocks; :mod:`~nasdet.methods.latency.head`), in place; how many (0: a head without
    towers)."""
    names, entries = searchable_head(detector.head)
    if entries:
        space_body(detector).attach_head(names, entries)
    return len(entries)


def to_space_detector(
    detector: nn.Module,
    multipliers: Sequence[float] = DEFAULT_MULTIPLIERS,
    *,
    skip: bool = True,
    head_skip: bool = True,
) -> nn.Module:
    """Turn a baseline detector (weights loaded) into the search space's detector, in place:
    its backbone body (:func:`space_body`) becomes a :class:`LatencySupernet` whose variant 0
    are the baseline's blocks and whose pruned variants start from the baseline's most important
    channels; with ``head_skip``, a RetinaNet or FCOS head's tower convs are entries too
    (:func:`attach_head_space`)."""
    holder = detector.backbone
    if hasattr(holder, "body"):
        holder.body = LatencySupernet(holder.body, multipliers, skip=skip)
    else:
        detector.backbone = LatencySupernet(holder, multipliers, skip=skip)
    if head_skip:
        attach_head_space(detector)
    return detector


class Network(nn.Module):
    """A detector's backbone, neck and head on a batch tensor (what the LUT times): YOLOv3's
    ``raw_outputs``, else ``head(backbone(x))`` (torchvision's detectors, whose neck is in the
    backbone)."""

    def __init__(self, detector: nn.Module) -> None:
        super().__init__()
        self.detector = detector

    def forward(self, x: Tensor) -> object:
        det = self.detector
        if hasattr(det, "raw_outputs"):
            return det.raw_outputs(x)
        return det.head(list(det.backbone(x).values()))


def round_archs(body: LatencySupernet, rng: random.Random) -> list[LatencyArch]:
    """One round: ``max_b len(variants_b)`` architectures in which every variant of every block
    appears at least once (each block's variants in a random order, repeated to fill), so that
    each variant is timed among random neighbours."""
    sizes = [len(b.variants) for b in body.blocks()]
    orders = [rng.sample(range(n), n) for n in sizes]
    return [
        LatencyArch(tuple(order[k % len(order)] for order in orders)) for k in range(max(sizes))
    ]
