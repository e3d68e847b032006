"""The SP-NAS serial backbone and weight inheritance between parent and child architectures.

:class:`SerialBackbone` builds a :class:`~nasdet.methods.spnas.space.SerialCode` from torchvision's
``BasicBlock`` / ``Bottleneck`` with torchvision ResNet parameter names (``conv1``, ``bn1``,
``layer1.0.conv1.weight``, ``layer1.0.downsample.0.weight``, ``layer5...`` for extra stages), so
``111-2111-211111-211`` with bottleneck blocks *is* ResNet-50 and loads a torchvision state dict by
name, and ``11-21-21-21`` with basic blocks is ResNet-18.

:func:`inherit_weights` implements SP-NAS's weight inheritance. The unit is a block, named by its
position ``layer{stage}.{index}`` (plus the stem): a child block takes the weights of the parent
block at the same position when every tensor's shape fits. Blocks new in the child that keep shape
(stride 1, no downsample) start as identity morphisms: the last norm's weight and bias are zero, so
``block(x) = relu(x + 0) = x`` for the non-negative (post-ReLU) inputs they receive. Hence:

- expand (a stride-1 block added to a stage): every parent block keeps its position, the new
  block is the stage's last and an identity, so the child computes exactly the parent's features;
- swap (a boundary moved by one block): the receiving stage gains an identity block at its end,
  the giving stage loses its last block (dropped); all else is inherited, the function changes
  by the one removed block;
- add stage: every existing level is unchanged; the new stage's stride-2 block has a fresh
  (Kaiming) initialisation, its following stride-1 block, if any, is an identity.
"""

from __future__ import annotations

import logging
from collections import OrderedDict, defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torchvision.models.resnet import BasicBlock, Bottleneck, conv1x1

from nasdet.methods.spnas.space import BLOCK_EXPANSION, BlockType, SerialCode
from nasdet.models.backbone import ShapeSpec

log = logging.getLogger(__name__)

NormLayer = Callable[[int], nn.Module]
STEM = "stem"


def _block_config(
    block: str, groups: int, width_per_group: int
) -> tuple[type[nn.Module], int, int]:
    """(block class, groups, width per group) as torchvision's blocks take them."""
    if block == "basic":
        return BasicBlock, 1, 64
    if block == "bottleneck":
        return Bottleneck, 1, 64
    if block == "resnext":
        if groups < 1 or width_per_group < 1:
            raise ValueError(
                f"resnext needs groups, width_per_group >= 1, got {groups}, {width_per_group}"
            )
        return Bottleneck, groups, width_per_group
    raise ValueError(f"block must be one of {sorted(BLOCK_EXPANSION)}, got {block!r}")


class SerialBackbone(nn.Module):
    """A ResNet-like backbone whose block sequence is a serial code (backbone contract).

    Args:
        code: e.g. ``"111-2111-211111-211"`` (structure checked, search-space limits not).
        block: ``"bottleneck"`` (expansion 4), ``"basic"`` (expansion 1) or ``"resnext"``
            (a bottleneck with grouped 3x3 convs, inner width ``int(planes * width_per_group / 64)
            * groups``, as torchvision's ``resnext50_32x4d``).
        base_width: stem width and inner width (``planes``) of the first stage; stage ``i`` has
            ``base_width * 2**i`` (torchvision ResNets: 64).
        groups, width_per_group: used by ``"resnext"`` only.
        norm_layer: norm after each conv (``torchvision.ops.FrozenBatchNorm2d`` for detection
            fine-tuning as torchvision's Faster R-CNN).
        levels: feature levels to return (log2 of the stride: stage ``i`` is level ``i + 2``),
            increasing; default all. Stages after the last returned level are not built.

    Output: ``OrderedDict`` ``c{level} -> (B, C, H / stride, W / stride)``; ``feature_info`` and
    ``out_channels`` describe the returned levels.
    """

    def __init__(
        self,
        code: str | SerialCode,
        *,
        block: BlockType = "bottleneck",
        base_width: int = 64,
        groups: int = 32,
        width_per_group: int = 4,
        norm_layer: NormLayer = nn.BatchNorm2d,
        levels: Sequence[int] | None = None,
    ) -> None:
        super().__init__()
        self.code = SerialCode.parse(code)
        block_cls, g, wpg = _block_config(block, groups, width_per_group)
        if block == "resnext" and int(base_width * wpg / 64) < 1:
            raise ValueError(
                f"resnext with base_width {base_width} and width_per_group {wpg} has no channel "
                "per group in the first stage: raise base_width or width_per_group"
            )
        if base_width < 1:
            raise ValueError(f"base_width must be positive, got {base_width}")
        all_levels = self.code.levels
        chosen = tuple(all_levels if levels is None else levels)
        if not chosen or list(chosen) != sorted(set(chosen)) or not set(chosen) <= set(all_levels):
            raise ValueError(
                f"levels must be increasing values in {list(all_levels)} for code "
                f"'{self.code}', got {list(chosen)}"
            )
        self.block, self.base_width, self.norm_layer = block, base_width, norm_layer
        self.groups, self.width_per_group = groups, width_per_group
        self.levels = chosen

        self.conv1 = nn.Conv2d(3, base_width, kernel_size=7, stride=2, padding=3, bias=False)
        self.bn1 = norm_layer(base_width)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        inplanes, num_built = base_width, chosen[-1] - 1
        planes = self.code.planes(base_width)
        for i, digits in enumerate(self.code.stages[:num_built]):
            layer, inplanes = _make_stage(
                block_cls, inplanes, planes[i], digits, g, wpg, norm_layer
            )
            self.add_module(f"layer{i + 1}", layer)
        for m in self.modules():  # torchvision ResNet's initialisation
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d | nn.GroupNorm):
                nn.init.constant_(m.weight, 1)
                nn.init.constant_(m.bias, 0)
        widths = self.code.widths(block, base_width)
        self.feature_info = [ShapeSpec(widths[lv - 2], 2**lv) for lv in chosen]
        self.out_channels = [s.channels for s in self.feature_info]

    def stages(self) -> list[nn.Sequential]:
        """The built stages ``layer1, layer2, ...`` in order."""
        return [getattr(self, f"layer{i}") for i in range(1, self.levels[-1])]

    def forward(self, x: Tensor) -> OrderedDict[str, Tensor]:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        out: OrderedDict[str, Tensor] = OrderedDict()
        for level, stage in enumerate(self.stages(), start=2):
            x = stage(x)
            if level in self.levels:
                out[f"c{level}"] = x
        return out

    def derive(self, code: str | SerialCode) -> SerialBackbone:
        """A new backbone for ``code`` with this one's block, widths and norm, returning all of
        its levels (fresh initialisation: call :func:`inherit_weights` next)."""
        return SerialBackbone(
            code,
            block=self.block,
            base_width=self.base_width,
            groups=self.groups,
            width_per_group=self.width_per_group,
            norm_layer=self.norm_layer,
        )

    def extra_repr(self) -> str:
        return f"code='{self.code}', block={self.block}, levels={list(self.levels)}"


def _make_stage(
    block_cls: type[nn.Module],
    inplanes: int,
    planes: int,
    digits: str,
    groups: int,
    width_per_group: int,
    norm_layer: NormLayer,
) -> tuple[nn.Sequential, int]:
    """One stage as torchvision's ``ResNet._make_layer`` builds it; returns it and its width."""
    expansion = block_cls.expansion
    blocks = []
    for d in digits:
        stride = int(d)
        downsample = None
        if stride != 1 or inplanes != planes * expansion:
            downsample = nn.Sequential(
                conv1x1(inplanes, planes * expansion, stride), norm_layer(planes * expansion)
            )
        blocks.append(
            block_cls(inplanes, planes, stride, downsample, groups, width_per_group, 1, norm_layer)
        )
        inplanes = planes * expansion
    return nn.Sequential(*blocks), inplanes


def make_identity(block: nn.Module) -> bool:
    """Zero the last norm (weight and bias) of a shape-keeping residual block so it computes
    ``relu(x)`` (= ``x`` on post-ReLU inputs). Returns False, changing nothing, for a block with
    a downsample or stride 2 (it cannot be an identity)."""
    if getattr(block, "downsample", None) is not None or getattr(block, "stride", 1) != 1:
        return False
    norm = block.bn3 if isinstance(block, Bottleneck) else block.bn2
    with torch.no_grad():
        norm.weight.zero_()
        norm.bias.zero_()
    return True


@dataclass(frozen=True)
class InheritReport:
    """What :func:`inherit_weights` did (tensor names are state-dict keys of the backbone).

    Attributes:
        inherited: child tensors copied from the parent.
        new: child tensors not inherited (fresh or identity initialisation).
        identity_blocks: child blocks (``layer{s}.{i}``) initialised as identity morphisms.
        dropped: parent tensors the child has no place for.
    """

    inherited: tuple[str, ...]
    new: tuple[str, ...]
    identity_blocks: tuple[str, ...]
    dropped: tuple[str, ...]

    @property
    def num_inherited(self) -> int:
        """Number of inherited tensors (parameters and buffers)."""
        return len(self.inherited)

    @property
    def num_new(self) -> int:
        """Number of tensors not inherited."""
        return len(self.new)

    def summary(self) -> str:
        """One line: counts of inherited / new / dropped tensors and identity blocks."""
        return (
            f"inherited {self.num_inherited} tensors, new {self.num_new} "
            f"({len(self.identity_blocks)} identity blocks), dropped {len(self.dropped)}"
        )


def _unit(key: str) -> str:
    """The inheritance unit of a state-dict key: ``layer{s}.{i}`` for a block, else the stem."""
    parts = key.split(".")
    return ".".join(parts[:2]) if parts[0].startswith("layer") else STEM


def _by_unit(state: dict[str, Tensor]) -> dict[str, dict[str, Tensor]]:
    units: dict[str, dict[str, Tensor]] = defaultdict(dict)
    for key, value in state.items():
        units[_unit(key)][key] = value
    return units


def _fits(child: dict[str, Tensor], parent: dict[str, Tensor]) -> bool:
    """Same tensor names (BN's ``num_batches_tracked`` aside) and shapes."""
    names = {k for k in child if not k.endswith("num_batches_tracked")}
    if names != {k for k in parent if not k.endswith("num_batches_tracked")}:
        return False
    return all(child[k].shape == parent[k].shape for k in names)


def inherit_weights(child: SerialBackbone, parent: SerialBackbone) -> InheritReport:
    """Copy into ``child`` every parent block (and the stem) found at the same position with the
    same tensor shapes; make the other shape-keeping child blocks identity morphisms.

    Parameters and buffers (BN running statistics) are copied alike. After a
    :func:`~nasdet.methods.spnas.space.mutate_expand` child the child computes the parent's features
    (module docstring: what swap and add-stage keep).
    """
    parent_units = _by_unit(parent.state_dict())
    child_units = _by_unit(child.state_dict())
    taken: dict[str, Tensor] = {}
    inherited, new, identity = [], [], []
    for name, tensors in child_units.items():
        source = parent_units.get(name)
        if source is not None and _fits(tensors, source):
            taken.update({k: v for k, v in source.items() if k in tensors})
            inherited.extend(k for k in tensors if k in source)
            new.extend(k for k in tensors if k not in source)
            continue
        new.extend(tensors)
        if name != STEM and make_identity(child.get_submodule(name)):
            identity.append(name)
    state = child.state_dict()
    state.update(taken)
    child.load_state_dict(state, strict=True)
    used = set(taken)
    dropped = [k for unit in parent_units.values() for k in unit if k not in used]
    report = InheritReport(tuple(inherited), tuple(new), tuple(identity), tuple(dropped))
    log.info("inherit %s -> %s: %s", _name(parent), _name(child), report.summary())
    return report


def _name(backbone: nn.Module) -> str:
    return str(getattr(backbone, "code", type(backbone).__name__))


def freeze_inherited(child: nn.Module, report: InheritReport, *, prefix: str = "") -> int:
    """Set ``requires_grad=False`` on the child's inherited parameters (SP-NAS's
    ``freeze_swap_keys``: only new blocks train). Returns the number of parameters frozen
    (tensors, not scalars). BN running statistics are buffers and are not affected.

    ``prefix`` locates the backbone inside a larger module: ``freeze_inherited(detector, report,
    prefix="backbone.body.")``.
    """
    names = {prefix + name for name in report.inherited}
    frozen = 0
    for name, param in child.named_parameters():
        if name in names:
            param.requires_grad_(False)
            frozen += 1
    return frozen
