"""The search space made from a baseline backbone: each searchable block becomes a container of
variants (ENOT's search space generated from the user's model).

Variant 0 of a block is the baseline's block itself (the same module, the same weights); then one
width-pruned copy per multiplier (its hidden, expanded channels cut to ``round(m * hidden)``,
starting from the baseline's most important hidden channels), then ``skip`` (an identity) where
the block has a residual (in == out channels, stride 1).

Which blocks are searchable, and how one is pruned, is the baseline's business: a baseline is
supported by one entry in :data:`BLOCK_KINDS` (a module type and its pruning function) and its
body's children are scanned in order. MobileNetV2's inverted residuals with an expansion conv
are the first kind.
"""

from __future__ import annotations

import copy
from collections import OrderedDict
from collections.abc import Callable, Sequence

import torch
from torch import Tensor, nn
from torchvision.models.mobilenetv2 import InvertedResidual

from nasdet.methods.latency.space import LatencyArch, LatencySpace
from nasdet.models.backbone import FeatureBackbone

DEFAULT_MULTIPLIERS = (0.9, 0.75, 0.5, 0.25, 0.1)


# ----------------------------------------------------------------------------- block kinds
def _is_expanding_ir(block: nn.Module) -> bool:
    return isinstance(block, InvertedResidual) and len(block.conv) == 4


def ir_importance(block: InvertedResidual) -> Tensor:
    """Importance of each hidden channel of an inverted residual: the L1 norm of the projection
    conv's input weights (``|W_proj[:, h]|``, summed), as Once-for-All ranks channels."""
    return block.conv[2].weight.detach().abs().sum(dim=(0, 2, 3))


def kept_channels(block: InvertedResidual, multiplier: float) -> Tensor:
    """The hidden channels a variant at ``multiplier`` keeps: the ``max(1, round(m * hidden))``
    most important ones (:func:`ir_importance`), in increasing index order."""
    imp = ir_importance(block)
    k = max(1, round(multiplier * imp.numel()))
    return torch.sort(torch.topk(imp, k).indices).values


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


def has_skip(block: nn.Module) -> bool:
    """Whether the block may be skipped: it has a residual (in == out channels, stride 1)."""
    return bool(getattr(block, "use_res_connect", False))


#: searchable block kinds: (is this child searchable?, prune it to a width multiplier)
BLOCK_KINDS: list[tuple[Callable[[nn.Module], bool], Callable[[nn.Module, float], nn.Module]]] = [
    (_is_expanding_ir, prune_ir),
]


def _kind(block: nn.Module) -> Callable[[nn.Module, float], nn.Module] | None:
    return next((prune for test, prune in BLOCK_KINDS if test(block)), None)


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
        prune = _kind(block)
        if prune is None:
            raise ValueError(f"{type(block).__name__} is not a searchable block kind")
        variants = [block] + [prune(block, m) for m in multipliers]
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


class LatencySupernet(FeatureBackbone):
    """A baseline :class:`FeatureBackbone` whose searchable children are :class:`VariantBlock`
    (the same child names; the other children are the baseline's modules).

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
            self[name] = VariantBlock(child, multipliers, skip=skip) if _kind(child) else child
        self.return_layers = dict(body.return_layers)
        self.feature_info = list(body.feature_info)
        self.out_channels = list(body.out_channels)
        self.block_names = [n for n, c in self.items() if isinstance(c, VariantBlock)]
        self.space = LatencySpace(tuple(len(self[n].variants) for n in self.block_names))

    def blocks(self) -> list[VariantBlock]:
        return [self[n] for n in self.block_names]

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
        """The static backbone of the active architecture: the chosen variants' modules
        (copied), the other children copied; the children keep their names."""
        children = OrderedDict(
            (n, copy.deepcopy(c.variants[c.active] if isinstance(c, VariantBlock) else c))
            for n, c in self.items()
        )
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


def to_space_detector(
    detector: nn.Module, multipliers: Sequence[float] = DEFAULT_MULTIPLIERS, *, skip: bool = True
) -> nn.Module:
    """Turn a baseline detector (weights loaded) into the search space's detector, in place:
    its backbone body becomes a :class:`LatencySupernet` whose variant 0 are the baseline's
    blocks and whose pruned variants start from the baseline's most important channels."""
    holder = detector.backbone
    holder.body = LatencySupernet(holder.body, multipliers, skip=skip)
    return detector
