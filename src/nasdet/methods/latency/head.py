"""The head part of the latency space: each conv of a RetinaNet or FCOS head tower (the
classification and regression towers, C -> C, shared over the FPN levels) becomes a searchable
entry with two variants, 0 = keep and 1 = skip (ENOT: "the head's conv stacks also get a skip
variant").

A tower becomes a :class:`SkippableTower`: the same children under the same names as the plain
``nn.Sequential`` (so a space model file's head weights load by name into a plain head and
back), whose forward runs only the kept convs. SSD's and SSDLite's per-level heads (one conv,
or one depthwise-separable conv, then the predictor) and YOLOv3's (a c -> 2c conv then the
predictor) have no stack of equal-width convs: nothing to skip, no entries.
"""

from __future__ import annotations

from collections import OrderedDict

from torch import Tensor, nn

from nasdet.models.detectors import head_towers

TOWER_NAMES = {"classification_head.conv": "cls", "regression_head.conv": "reg"}


class SkippableTower(nn.Sequential):
    """A head tower whose convs may be skipped: ``tower``'s children under their names;
    ``convs[i]`` runs conv ``i`` (the child itself, or a view of its ``group`` children with
    its norm and activation, not registered: the parameters keep their names);
    ``active[i]``: 0 runs conv ``i``, 1 skips it."""

    def __init__(self, tower: nn.Sequential, group: int) -> None:
        super().__init__(OrderedDict(tower.named_children()))
        if any(isinstance(m, nn.Identity) for m in tower):
            raise ValueError(
                "the head already skips convs (model.head_skip): a space searches a full head"
            )
        mods = list(tower)
        self.convs = [
            mods[k] if group == 1 else nn.Sequential(*mods[k : k + group])
            for k in range(0, len(mods), group)
        ]
        self.active = [0] * len(self.convs)

    def forward(self, x: Tensor) -> Tensor:
        for conv, a in zip(self.convs, self.active, strict=True):
            if a == 0:
                x = conv(x)
        return x


class HeadConv:
    """One conv of a :class:`SkippableTower` as a searchable entry, shaped as a
    :class:`~nasdet.methods.latency.nets.VariantBlock` for the search and the LUT: ``variants``
    [the conv (a module: hooks time it), skip], ``multipliers`` (1.0, 0.0), ``active``."""

    multipliers = (1.0, 0.0)

    def __init__(self, tower: SkippableTower, index: int) -> None:
        self.tower, self.index = tower, index
        self.variants = [tower.convs[index], nn.Identity()]

    @property
    def active(self) -> int:
        return self.tower.active[self.index]

    @active.setter
    def active(self, value: int) -> None:
        self.tower.active[self.index] = value


def searchable_head(head: nn.Module) -> tuple[list[str], list[HeadConv]]:
    """Make a RetinaNet or FCOS head's towers :class:`SkippableTower`, in place; the entries'
    names (``head.cls.0``... then ``head.reg.0``...) and entries, classification tower first.
    ``([], [])`` for a head without towers."""
    names: list[str] = []
    entries: list[HeadConv] = []
    for path, group in head_towers(head):
        parent, _, child = path.rpartition(".")
        holder = head.get_submodule(parent)
        tower = SkippableTower(getattr(holder, child), group)
        setattr(holder, child, tower)
        names += [f"head.{TOWER_NAMES[path]}.{i}" for i in range(len(tower.convs))]
        entries += [HeadConv(tower, i) for i in range(len(tower.convs))]
    return names, entries
