"""Once-for-All backbones: the elastic supernets and the static subnets they export.

Both families are OFA's structure with OFA's module names (``first_conv``, ``blocks.<i>.conv``,
``final_expand_layer``), widths ``make_divisible(w * width_mult, 8)``:

=================  =====================================  =====================================
                   ``mbv3`` (OFA ``OFAMobileNetV3``)       ``mbv2`` (aw_nas ``mbv2_backbone``)
=================  =====================================  =====================================
first_conv         3x3 s2, 16, h-swish                    3x3 s2, 32, ReLU6
blocks.0 (fixed)   dw 3x3, e1, 16 -> 16, ReLU, residual   dw 3x3, e1, 32 -> 16, ReLU6, no res.
5 elastic stages   24 40 80 112 160, strides 2 2 2 1 2,   24 32 64 96 160, strides 2 2 2 1 2,
                   ReLU ReLU hs hs hs, SE on stages 2 4 5  ReLU6, no SE
stride-32 head     ``final_expand_layer`` 1x1 -> 960,     fixed block 160 -> 320, k3 e6
                   BN, h-swish                            (``blocks.21``), MobileNetV2's last
BN eps             1e-5 (momentum 0.1)                    1e-3 (momentum 0.1), OFA's proxyless
=================  =====================================  =====================================

An elastic stage has ``max(depth_list)`` blocks (:class:`~.elastic.DynamicMBConv`; the first has the
stage's stride; residual when stride 1 and in == out). OFA's classification head after the
stride-32 head (``feature_mix_layer``, ``classifier``) is not built.

Levels: ``c2`` is stage 1's output (stride 4), ``c3`` stage 2's (stride 8), ``c4`` stage 4's
(stride 16) and ``c5`` the stride-32 head's output: MobileNetV3's ``final_expand_layer`` (960 x
width, like torchvision's MobileNetV3 ``features[-1]`` and aw_nas's ``conv_head``) or
MobileNetV2's fixed 320 block (aw_nas's last cell). Level widths do not depend on the subnet.
Stages after the last requested level are not built (their genes are kept but unused).
"""

from __future__ import annotations

import random
from abc import ABC, abstractmethod
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from torch import Tensor, nn

from nasdet.methods.ofa.elastic import (
    DynamicMBConv,
    MBBlock,
    MBConv,
    conv_bn_act,
    make_divisible,
)
from nasdet.methods.ofa.space import N_STAGES, OFAGenotype, OFASpace
from nasdet.models.backbone import ShapeSpec


@dataclass(frozen=True)
class Layout:
    """The fixed structure of one backbone family at width 1.0 (see the module docstring)."""

    stem: int
    stem_act: str
    first_block: int
    first_act: str
    widths: tuple[int, ...]
    strides: tuple[int, ...]
    acts: tuple[str, ...]
    ses: tuple[bool, ...]
    head: int  # width of the stride-32 head (final expand conv or fixed last block)
    head_act: str
    bn_eps: float
    first_residual: bool  # blocks.0 adds its input when the widths match (MobileNetV2: never)


MBV3 = Layout(
    16, "h_swish", 16, "relu", (24, 40, 80, 112, 160), (2, 2, 2, 1, 2),
    ("relu", "relu", "h_swish", "h_swish", "h_swish"), (False, True, False, True, True),
    960, "h_swish", 1e-5, True,
)  # fmt: skip
MBV2 = Layout(
    32, "relu6", 16, "relu6", (24, 32, 64, 96, 160), (2, 2, 2, 1, 2),
    ("relu6",) * 5, (False,) * 5, 320, "relu6", 1e-3, False,
)  # fmt: skip
LAYOUTS = {"mbv3": MBV3, "mbv2": MBV2, "mbv3_backbone": MBV3, "mbv2_backbone": MBV2}
BN_MOMENTUM = 0.1
MBV2_TAIL_EXPAND = 6


def level_stages(strides: Sequence[int]) -> dict[int, int]:
    """Level -> the last stage at stride ``2**level`` (the stem has stride 2)."""
    out, stride = {}, 2
    for s, st in enumerate(strides):
        stride *= st
        out[stride.bit_length() - 1] = s
    return out


class _OFABackbone(nn.Module, ABC):
    """``first_conv``, ``blocks`` (``blocks[0]`` fixed) and the stride-32 head; subclasses add
    the elastic (or static) stage blocks between and say which run (:meth:`_stage_runs`)."""

    def __init__(self, backbone_type: str, width_mult: float, levels: Sequence[int]) -> None:
        super().__init__()
        if backbone_type not in LAYOUTS:
            raise ValueError(
                f"backbone_type must be one of {', '.join(LAYOUTS)}, got {backbone_type!r}"
            )
        if not 0 < width_mult <= 4:
            raise ValueError(f"width_mult must be in (0, 4], got {width_mult}")
        self.backbone_type = "mbv2" if backbone_type.startswith("mbv2") else "mbv3"
        self.layout = lay = LAYOUTS[backbone_type]
        self.width_mult = width_mult
        stage_of = level_stages(lay.strides)
        self.levels = tuple(levels)
        if (
            not self.levels
            or any(lv not in stage_of for lv in self.levels)
            or list(self.levels) != sorted(set(self.levels))
        ):
            raise ValueError(
                f"levels must be an increasing subset of {tuple(stage_of)}, got {levels}"
            )
        self.level_stage = {lv: stage_of[lv] for lv in self.levels}
        self.num_built = self.level_stage[self.levels[-1]] + 1  # stages built
        self.has_head = 5 in self.levels
        w = [make_divisible(c * width_mult) for c in (lay.stem, lay.first_block, *lay.widths)]
        self.stem_width, self.first_width, self.widths = w[0], w[1], tuple(w[2:])
        self.head_width = make_divisible(lay.head * width_mult)
        self.feature_info = [
            ShapeSpec(self.head_width if lv == 5 else self.widths[stage_of[lv]], 2**lv)
            for lv in self.levels
        ]
        self.out_channels = [s.channels for s in self.feature_info]
        self.first_conv = conv_bn_act(3, self.stem_width, 3, 2, lay.stem_act)
        first = MBConv(self.stem_width, self.first_width, 3, 1, 1, lay.first_act, False)
        residual = lay.first_residual and self.stem_width == self.first_width
        self.blocks = nn.ModuleList([MBBlock(first, residual)])

    def _stage_io(self, s: int, j: int) -> tuple[int, int, int]:
        """(in channels, out channels, stride) of block ``j`` of stage ``s``."""
        in_ch = (self.first_width, *self.widths)[s] if j == 0 else self.widths[s]
        return in_ch, self.widths[s], self.layout.strides[s] if j == 0 else 1

    def _add_head(self) -> None:
        """The stride-32 head after the stage blocks (only when level 5 is returned); then the
        family's BN momentum and eps on every BN."""
        lay, last = self.layout, self.widths[-1]
        if self.has_head and self.backbone_type == "mbv3":
            self.final_expand_layer = conv_bn_act(last, self.head_width, 1, 1, lay.head_act)
        elif self.has_head:
            tail = MBConv(last, self.head_width, 3, 1, MBV2_TAIL_EXPAND, lay.head_act, False)
            self.blocks.append(MBBlock(tail, False))
        for m in self.modules():  # OFA's bn_param
            if isinstance(m, nn.BatchNorm2d):
                m.momentum, m.eps = BN_MOMENTUM, lay.bn_eps

    def _head(self, x: Tensor) -> Tensor:
        if self.backbone_type == "mbv3":
            return self.final_expand_layer(x)
        return self.blocks[-1](x)

    @abstractmethod
    def _stage_runs(self) -> list[list[int]]:
        """Indices into ``blocks`` run by each built stage, in order."""

    def forward(self, x: Tensor) -> OrderedDict[str, Tensor]:
        """(B, 3, H, W) -> ``{"c<l>": (B, channels, H / 2**l, W / 2**l)}`` for ``levels``."""
        out: OrderedDict[str, Tensor] = OrderedDict()
        x = self.blocks[0](self.first_conv(x))
        for s, run in enumerate(self._stage_runs()):
            for i in run:
                x = self.blocks[i](x)
            for lv, stage in self.level_stage.items():
                if stage == s:
                    out[f"c{lv}"] = self._head(x) if lv == 5 else x
        return out


class OFASubnetBackbone(_OFABackbone):
    """The static backbone of one genotype; built from the genotype alone, its state dict is
    what :meth:`OFASupernet.get_active_subnet` produces (blocks renumbered: ``blocks.1`` ... are
    the active blocks in order, then MobileNetV2's fixed last block).

    Args:
        genotype: the subnet (:class:`~.space.OFAGenotype` or its text); 5 stages.
        backbone_type: ``mbv3`` or ``mbv2`` (aw_nas's ``mbv3_backbone`` / ``mbv2_backbone`` too).
        width_mult: channel multiplier.
        levels: feature levels returned, a subset of 2..5.
    """

    def __init__(
        self,
        genotype: OFAGenotype | str,
        backbone_type: str = "mbv3",
        width_mult: float = 1.0,
        levels: Sequence[int] = (3, 4, 5),
    ) -> None:
        super().__init__(backbone_type, width_mult, levels)
        self.genotype = g = OFAGenotype.parse(genotype)
        if g.n_stages != N_STAGES:
            raise ValueError(f"genotype '{g}' has {g.n_stages} stages, the backbone {N_STAGES}")
        lay, self._runs = self.layout, []
        for s, active in enumerate(g.stage_blocks()[: self.num_built]):
            self._runs.append([])
            for j, b in enumerate(active):
                in_ch, out_ch, stride = self._stage_io(s, j)
                conv = MBConv(in_ch, out_ch, g.ks[b], stride, g.e[b], lay.acts[s], lay.ses[s])
                self._runs[-1].append(len(self.blocks))
                self.blocks.append(MBBlock(conv, stride == 1 and in_ch == out_ch))
        self._add_head()

    def _stage_runs(self) -> list[list[int]]:
        return self._runs


class OFASupernet(_OFABackbone):
    """The elastic supernet (the supernet protocol of :mod:`nasdet.search.supernet`).

    Args:
        backbone_type: ``mbv3`` or ``mbv2`` (see the module docstring).
        width_mult: channel multiplier (OFA's released supernets: 1.0 and 1.2).
        ks_list, expand_ratio_list, depth_list: the choices built (OFA: 3,5,7 / 3,4,6 / 2,3,4);
            every stage has ``max(depth_list)`` blocks.
        levels: feature levels returned, a subset of 2..5.

    ``set_choices`` narrows the lists that sampling and ``set_max_net`` / ``set_min_net`` use
    (progressive shrinking); the active subnet starts as the largest.
    """

    def __init__(
        self,
        *,
        backbone_type: str = "mbv3",
        width_mult: float = 1.0,
        ks_list: Sequence[int] = (3, 5, 7),
        expand_ratio_list: Sequence[int] = (3, 4, 6),
        depth_list: Sequence[int] = (2, 3, 4),
        levels: Sequence[int] = (3, 4, 5),
    ) -> None:
        super().__init__(backbone_type, width_mult, levels)
        self.full_space = OFASpace(
            tuple(ks_list),
            tuple(expand_ratio_list),
            tuple(depth_list),
            N_STAGES,
            max(depth_list, default=1),
        )
        self._choices = self.full_space
        sp, lay = self.full_space, self.layout
        self.max_depth = sp.max_depth
        for s in range(self.num_built):
            for j in range(sp.max_depth):
                in_ch, out_ch, stride = self._stage_io(s, j)
                conv = DynamicMBConv(
                    in_ch, out_ch, sp.ks_choices, sp.e_choices, stride, lay.acts[s], lay.ses[s]
                )
                self.blocks.append(MBBlock(conv, stride == 1 and in_ch == out_ch))
        self._add_head()
        self._active = sp.largest()

    # ------------------------------------------------------------------ the active subnet
    @property
    def space(self) -> OFASpace:
        """The current choice lists (after :meth:`set_choices`)."""
        return self._choices

    def _elastic(self, b: int) -> DynamicMBConv:
        """The elastic block of genotype block index ``b``."""
        return self.blocks[1 + b].conv

    def _stage_runs(self) -> list[list[int]]:
        m = self.max_depth
        return [
            [1 + s * m + j for j in range(d)]
            for s, d in enumerate(self._active.d[: self.num_built])
        ]

    def active_genotype(self) -> OFAGenotype:
        """The subnet forward runs."""
        return self._active

    def set_active_subnet(
        self,
        genotype: OFAGenotype | str | Mapping[str, Any] | None = None,
        *,
        ks: int | Sequence[int] | None = None,
        e: int | Sequence[int] | None = None,
        d: int | Sequence[int] | None = None,
    ) -> None:
        """Make forward run ``genotype``, or OFA's ``ks`` / ``e`` / ``d`` lists (an int applies
        to every block / stage; ``None`` keeps the active value). Values must be among the
        constructed choices (``ValueError`` naming the entry)."""
        if genotype is not None and (ks, e, d) != (None, None, None):
            raise ValueError("set_active_subnet: pass a genotype or ks / e / d, not both")
        if genotype is None:
            cur, n = self._active, self.full_space.num_blocks

            def spread(v: int | Sequence[int] | None, current: tuple[int, ...], size: int) -> Any:
                return current if v is None else (v,) * size if isinstance(v, int) else v

            genotype = OFAGenotype(
                spread(ks, cur.ks, n), spread(e, cur.e, n), spread(d, cur.d, N_STAGES)
            )
        g = self.full_space.parse(genotype)
        for b in range(self.num_built * self.max_depth):
            if g.ks[b] and g.e[b]:  # 0: an inactive block of a canonical genotype
                self._elastic(b).set_active(g.ks[b], g.e[b])
        self._active = g

    def sample_active_subnet(self, rng: random.Random) -> OFAGenotype:
        """Draw a subnet from the current choice lists, make it active and return it."""
        g = self._choices.sample(rng)
        self.set_active_subnet(g)
        return g

    def set_choices(
        self,
        ks: Sequence[int] | None = None,
        e: Sequence[int] | None = None,
        d: Sequence[int] | None = None,
    ) -> None:
        """Restrict the choice lists used by sampling and set_max/min_net (``None`` keeps the
        current list); each must be a non-empty subset of the constructed one."""
        full, cur = self.full_space, self._choices
        for name, new, built in (
            ("ks", ks, full.ks_choices),
            ("e", e, full.e_choices),
            ("d", d, full.d_choices),
        ):
            if new is not None and (not new or not set(new) <= set(built)):
                raise ValueError(f"set_choices: {name} {tuple(new)} is not a subset of {built}")
        self._choices = OFASpace(
            tuple(ks or cur.ks_choices),
            tuple(e or cur.e_choices),
            tuple(d or cur.d_choices),
            full.n_stages,
            full.max_depth,
        )

    def set_max_net(self) -> None:
        """Activate the largest subnet of the current choice lists."""
        self.set_active_subnet(self._choices.largest())

    def set_min_net(self) -> None:
        """Activate the smallest subnet of the current choice lists."""
        self.set_active_subnet(self._choices.smallest())

    # ------------------------------------------------------------------ export
    def get_active_subnet(self, preserve_weight: bool = True) -> OFASubnetBackbone:
        """A standalone :class:`OFASubnetBackbone` of the active subnet, in the supernet's
        train/eval mode. With ``preserve_weight`` its weights (BN statistics included) are copies
        of the active slices, kernel transforms baked in; it shares no tensor with the supernet."""
        g = self._active
        sub = OFASubnetBackbone(g, self.backbone_type, self.width_mult, self.levels)
        sub.train(self.training)
        if not preserve_weight:
            return sub
        state = {f"first_conv.{k}": v for k, v in self.first_conv.state_dict().items()}
        state.update({f"blocks.0.{k}": v for k, v in self.blocks[0].state_dict().items()})
        i = 1
        for run in self._stage_runs():
            for b in run:
                static = self.blocks[b].conv.get_active_subnet(preserve_weight=True)
                state.update({f"blocks.{i}.conv.{k}": v for k, v in static.state_dict().items()})
                i += 1
        if self.has_head:
            head = self.final_expand_layer if self.backbone_type == "mbv3" else self.blocks[-1]
            name = "final_expand_layer" if self.backbone_type == "mbv3" else f"blocks.{i}"
            state.update({f"{name}.{k}": v for k, v in head.state_dict().items()})
        sub.load_state_dict(state, strict=True)  # copies into the subnet's own tensors
        return sub

    def re_organize_middle_weights(self) -> None:
        """Sort every elastic block's expanded channels by importance (see
        :meth:`~.elastic.DynamicMBConv.re_organize_middle_weights`)."""
        for block in self.blocks:
            if isinstance(block.conv, DynamicMBConv):
                block.conv.re_organize_middle_weights()


class OFAMobileNetV3Supernet(OFASupernet):
    """OFA's elastic MobileNetV3 (``OFAMobileNetV3``) as a backbone; see :class:`OFASupernet`."""

    def __init__(
        self,
        width_mult: float = 1.0,
        ks_list: Sequence[int] = (3, 5, 7),
        expand_ratio_list: Sequence[int] = (3, 4, 6),
        depth_list: Sequence[int] = (2, 3, 4),
        levels: Sequence[int] = (3, 4, 5),
    ) -> None:
        super().__init__(
            backbone_type="mbv3",
            width_mult=width_mult,
            ks_list=ks_list,
            expand_ratio_list=expand_ratio_list,
            depth_list=depth_list,
            levels=levels,
        )


class OFAMobileNetV2Supernet(OFASupernet):
    """The elastic MobileNetV2 (aw_nas ``mbv2_backbone``); see :class:`OFASupernet`."""

    def __init__(
        self,
        width_mult: float = 1.0,
        ks_list: Sequence[int] = (3, 5, 7),
        expand_ratio_list: Sequence[int] = (3, 4, 6),
        depth_list: Sequence[int] = (2, 3, 4),
        levels: Sequence[int] = (3, 4, 5),
    ) -> None:
        super().__init__(
            backbone_type="mbv2",
            width_mult=width_mult,
            ks_list=ks_list,
            expand_ratio_list=expand_ratio_list,
            depth_list=depth_list,
            levels=levels,
        )
