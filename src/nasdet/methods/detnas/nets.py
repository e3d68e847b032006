"""DetNAS / SPOS ShuffleNetV2: the searchable units, a static backbone and the supernet.

The units follow megvii's SPOS ``ShuffleV2Block`` / ``ShuffleXception`` with torchvision's channel
split: a stride-1 unit passes half of its channels through and runs the ``main`` branch on the
other half; a stride-2 unit runs a ``proj`` branch and the ``main`` branch on the whole input. Both
concatenate and then shuffle channels (2 groups). ``stride2_split`` picks how a stride-2 unit
shares its output channels (:data:`SPLITS`): ``"megvii"`` (the default, megvii's code) keeps the
input width in ``proj``, ``"mmrazor"`` (MMRazor's ``ShuffleBlock`` / ``ShuffleXception``) gives
each branch half of the output. They differ only where a stage widens more than twice (with the
default widths, the first block of stages 0 and 1: 16 -> 64 and 64 -> 160 channels).

:class:`ShuffleNetV2Backbone` is one architecture (a :class:`ShuffleNetCode`);
:class:`ShuffleNetV2Supernet` holds all four units of every block (:class:`ChoiceBlock`) and runs
the active path. Both honour nasdet's backbone contract: a 3x3 stride-2 stem, then stage ``i``
(first block stride 2) outputs level ``c{i + 2}`` at stride ``2 ** (i + 2)`` input pixels
(4, 8, 16, 32). :meth:`ShuffleNetV2Supernet.get_active_subnet` copies the active path into a
standalone backbone (the supernet protocol of :mod:`nasdet.search.supernet`).
"""

from __future__ import annotations

import copy
import random
from collections import OrderedDict
from collections.abc import Sequence

import torch
from torch import Tensor, nn
from torchvision.models._utils import _make_divisible
from torchvision.models.shufflenetv2 import channel_shuffle

from nasdet.methods.detnas.space import (
    CHOICES,
    STAGE_CHANNELS,
    STAGE_DEPTHS,
    STEM_CHANNELS,
    ShuffleNetCode,
    ShuffleNetSpace,
)
from nasdet.models.backbone import ShapeSpec

_KERNELS = (3, 5, 7)  # kernel of choices 0..2; choice 3 is the Xception unit
SPLITS = ("megvii", "mmrazor")  # stride-2 channel split: proj keeps in_ch, or out_ch // 2


def _dw(ch: int, kernel: int, stride: int) -> list[nn.Module]:
    """Depthwise ``kernel`` x ``kernel`` conv + BN (no activation, as in ShuffleNetV2)."""
    return [
        nn.Conv2d(ch, ch, kernel, stride, kernel // 2, groups=ch, bias=False),
        nn.BatchNorm2d(ch),
    ]


def _pw(in_ch: int, out_ch: int) -> list[nn.Module]:
    """Pointwise 1x1 conv + BN + ReLU."""
    return [nn.Conv2d(in_ch, out_ch, 1, bias=False), nn.BatchNorm2d(out_ch), nn.ReLU(inplace=True)]


class _TwoBranchUnit(nn.Module):
    """Shared structure of the ShuffleNetV2 units; subclasses build ``main``.

    Stride 2: ``proj`` (dw ``proj_kernel`` stride 2 + BN, 1x1 + BN + ReLU) and ``main`` both see
    the whole input; with ``split="megvii"`` ``proj`` gives ``in_ch`` channels and ``main``
    ``out_ch - in_ch``, with ``split="mmrazor"`` each gives ``out_ch // 2``. Stride 1
    (``in_ch == out_ch``): the first half passes through, ``main`` maps the second half to
    ``out_ch - out_ch // 2``.
    """

    def __init__(
        self, in_ch: int, out_ch: int, stride: int, proj_kernel: int, split: str = "megvii"
    ) -> None:
        super().__init__()
        if stride not in (1, 2):
            raise ValueError(f"ShuffleNetV2 unit stride must be 1 or 2, got {stride}")
        if split not in SPLITS:
            raise ValueError(f"stride2_split must be one of {', '.join(SPLITS)}, got {split!r}")
        if out_ch % 2:
            raise ValueError(
                f"ShuffleNetV2 unit needs an even out_ch (channel shuffle), got {out_ch}"
            )
        if stride == 1 and in_ch != out_ch:
            raise ValueError(
                f"stride-1 ShuffleNetV2 unit needs in_ch == out_ch, got {in_ch}, {out_ch}"
            )
        if stride == 2 and split == "megvii" and out_ch <= in_ch:
            raise ValueError(
                f"stride-2 ShuffleNetV2 unit needs out_ch > in_ch (the projection keeps in_ch "
                f"channels, main adds out_ch - in_ch), got in_ch {in_ch}, out_ch {out_ch}"
            )
        self.stride = stride
        self.split = split
        proj_out = in_ch if split == "megvii" else out_ch // 2
        self.main_in = in_ch if stride == 2 else out_ch // 2
        self.main_out = out_ch - (proj_out if stride == 2 else out_ch // 2)
        self.mid = out_ch // 2
        self.proj = (
            nn.Sequential(*_dw(in_ch, proj_kernel, 2), *_pw(in_ch, proj_out))
            if stride == 2
            else None
        )
        self.main: nn.Sequential

    def forward(self, x: Tensor) -> Tensor:
        if self.proj is None:
            x1, x2 = x.chunk(2, dim=1)
            out = [x1, self.main(x2)]
        else:
            out = [self.proj(x), self.main(x)]
        return channel_shuffle(torch.cat(out, dim=1), 2)


class ShuffleUnit(_TwoBranchUnit):
    """ShuffleNetV2 unit with a ``kernel`` x ``kernel`` depthwise conv (SPOS ``ShuffleV2Block``).

    ``main``: 1x1 (inp -> mid) BN ReLU, dw kxk (stride) BN, 1x1 (mid -> main_out) BN ReLU, with
    ``mid = out_ch // 2``. Input (B, in_ch, H, W) -> (B, out_ch, H / stride, W / stride).
    """

    def __init__(
        self, in_ch: int, out_ch: int, stride: int, kernel: int, split: str = "megvii"
    ) -> None:
        super().__init__(in_ch, out_ch, stride, kernel, split)
        self.kernel = kernel
        self.main = nn.Sequential(
            *_pw(self.main_in, self.mid),
            *_dw(self.mid, kernel, stride),
            *_pw(self.mid, self.main_out),
        )


class XceptionUnit(_TwoBranchUnit):
    """Xception-like ShuffleNetV2 unit (SPOS ``ShuffleXception``): three 3x3 depthwise convs.

    ``main``: dw3x3 (stride) BN, 1x1 inp->mid BN ReLU, dw3x3 BN, 1x1 mid->mid BN ReLU, dw3x3 BN,
    1x1 mid->main_out BN ReLU. Input (B, in_ch, H, W) -> (B, out_ch, H / stride, W / stride).
    """

    def __init__(self, in_ch: int, out_ch: int, stride: int, split: str = "megvii") -> None:
        super().__init__(in_ch, out_ch, stride, 3, split)
        self.main = nn.Sequential(
            *_dw(self.main_in, 3, stride),
            *_pw(self.main_in, self.mid),
            *_dw(self.mid, 3, 1),
            *_pw(self.mid, self.mid),
            *_dw(self.mid, 3, 1),
            *_pw(self.mid, self.main_out),
        )


def make_unit(
    choice: int, in_ch: int, out_ch: int, stride: int, split: str = "megvii"
) -> nn.Module:
    """The unit of ``CHOICES[choice]`` (0-2: shuffle 3x3/5x5/7x7, 3: xception); ``split``: the
    stride-2 channel split (:data:`SPLITS`)."""
    if choice in range(len(_KERNELS)):
        return ShuffleUnit(in_ch, out_ch, stride, _KERNELS[choice], split)
    if choice == len(_KERNELS):
        return XceptionUnit(in_ch, out_ch, stride, split)
    raise ValueError(f"unit choice must be in 0..{len(CHOICES) - 1} ({', '.join(CHOICES)})")


def stage_widths(width_mult: float, channels: Sequence[int] = STAGE_CHANNELS) -> tuple[int, ...]:
    """Stage widths scaled by ``width_mult``, rounded to multiples of 8 (torchvision's rule)."""
    if width_mult <= 0:
        raise ValueError(f"width_mult must be positive, got {width_mult}")
    return tuple(_make_divisible(c * width_mult, 8) for c in channels)


def _stem(out_ch: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(3, out_ch, 3, 2, 1, bias=False), nn.BatchNorm2d(out_ch), nn.ReLU(inplace=True)
    )


def _check_levels(levels: Sequence[int], num_stages: int) -> tuple[int, ...]:
    levels = tuple(levels)
    allowed = tuple(range(2, 2 + num_stages))
    if (
        not levels
        or any(lv not in allowed for lv in levels)
        or any(b <= a for a, b in zip(levels, levels[1:], strict=False))
    ):
        raise ValueError(
            f"levels must be a non-empty increasing subset of {allowed} (stage i gives level "
            f"i + 2), got {levels}"
        )
    return levels


class _ShuffleNetV2Base(nn.Module):
    """Stem + stages; stage ``i`` returns ``c{i + 2}``. Subclasses fill ``self.stages``."""

    def __init__(
        self,
        depths: Sequence[int],
        widths: Sequence[int],
        stem_channels: int,
        levels: Sequence[int],
        stride2_split: str = "megvii",
    ) -> None:
        super().__init__()
        if stride2_split not in SPLITS:
            raise ValueError(
                f"stride2_split must be one of {', '.join(SPLITS)}, got {stride2_split!r}"
            )
        self.stride2_split = stride2_split
        self.depths, self.widths = tuple(depths), tuple(widths)
        if len(self.widths) != len(self.depths):
            raise ValueError(
                f"need one width per stage: {len(self.depths)} stages (depths {self.depths}) but "
                f"widths {self.widths}"
            )
        self.levels = _check_levels(levels, len(self.depths))
        self.stem_channels = stem_channels
        self.stem = _stem(stem_channels)
        self.stages = nn.ModuleList()
        self.num_built = self.levels[-1] - 1  # stages after the last returned level are not built
        self.feature_info = [ShapeSpec(self.widths[lv - 2], 2**lv) for lv in self.levels]
        self.out_channels = [s.channels for s in self.feature_info]

    def _stage_io(self) -> list[tuple[int, int]]:
        ins = (self.stem_channels, *self.widths)
        return [(ins[i], self.widths[i]) for i in range(self.num_built)]

    def forward(self, x: Tensor) -> OrderedDict[str, Tensor]:
        """(B, 3, H, W) -> ``{"c<l>": (B, width, H / 2**l, W / 2**l)}`` for the requested levels."""
        out: OrderedDict[str, Tensor] = OrderedDict()
        x = self.stem(x)
        for i, stage in enumerate(self.stages):
            x = stage(x)
            if i + 2 in self.levels:
                out[f"c{i + 2}"] = x
        return out


class ShuffleNetV2Backbone(_ShuffleNetV2Base):
    """The static ShuffleNetV2 of one DetNAS code.

    Args:
        code: the unit of every block.
        widths: output channels of each stage (:func:`stage_widths` for a width multiplier).
        stem_channels: width of the 3x3 stride-2 stem conv.
        levels: feature levels returned (``2..5`` for 4 stages; stride ``2**level`` pixels).
        stride2_split: channel split of the stride-2 units, ``"megvii"`` or ``"mmrazor"``.
    """

    def __init__(
        self,
        code: ShuffleNetCode,
        *,
        widths: Sequence[int] = STAGE_CHANNELS,
        stem_channels: int = STEM_CHANNELS,
        levels: Sequence[int] = (2, 3, 4, 5),
        stride2_split: str = "megvii",
    ) -> None:
        super().__init__(code.depths, widths, stem_channels, levels, stride2_split)
        self.code = code
        for i, (in_ch, out_ch) in enumerate(self._stage_io()):
            self.stages.append(
                nn.Sequential(
                    *(
                        make_unit(
                            c,
                            in_ch if j == 0 else out_ch,
                            out_ch,
                            2 if j == 0 else 1,
                            stride2_split,
                        )
                        for j, c in enumerate(code.stages[i])
                    )
                )
            )


class ChoiceBlock(nn.Module):
    """All candidate units of one block; forward runs ``choices[active]``."""

    def __init__(
        self,
        in_ch: int,
        out_ch: int,
        stride: int,
        num_choices: int = len(CHOICES),
        split: str = "megvii",
    ) -> None:
        super().__init__()
        self.choices = nn.ModuleList(
            make_unit(k, in_ch, out_ch, stride, split) for k in range(num_choices)
        )
        self.active = 0

    def forward(self, x: Tensor) -> Tensor:
        return self.choices[self.active](x)


class ShuffleNetV2Supernet(_ShuffleNetV2Base):
    """The DetNAS / SPOS weight-sharing supernet: every block holds all four units.

    Args:
        depths: blocks per stage (DetNAS: ``4, 4, 8, 4``).
        widths, stem_channels, levels, stride2_split: as :class:`ShuffleNetV2Backbone`.

    The active path starts as :func:`~nasdet.methods.detnas.space.handcrafted` (all 3x3). Blocks of
    stages after the last level are not built, but the code keeps a gene for them.
    """

    def __init__(
        self,
        *,
        depths: Sequence[int] = STAGE_DEPTHS,
        widths: Sequence[int] = STAGE_CHANNELS,
        stem_channels: int = STEM_CHANNELS,
        levels: Sequence[int] = (2, 3, 4, 5),
        stride2_split: str = "megvii",
    ) -> None:
        super().__init__(depths, widths, stem_channels, levels, stride2_split)
        for i, (in_ch, out_ch) in enumerate(self._stage_io()):
            self.stages.append(
                nn.Sequential(
                    *(
                        ChoiceBlock(
                            in_ch if j == 0 else out_ch,
                            out_ch,
                            2 if j == 0 else 1,
                            split=stride2_split,
                        )
                        for j in range(self.depths[i])
                    )
                )
            )
        self._active = ShuffleNetCode((0,) * sum(self.depths), self.depths)

    @property
    def space(self) -> ShuffleNetSpace:
        """The search space of this supernet."""
        return ShuffleNetSpace(self.depths)

    @property
    def active_subnet(self) -> ShuffleNetCode:
        """The code of the path forward runs."""
        return self._active

    def set_active_subnet(self, code: ShuffleNetCode | str) -> None:
        """Make forward run ``code``'s path; ``ValueError`` if its depths differ."""
        code = self.space.parse(code)
        for stage, genes in zip(self.stages, code.stages, strict=False):
            for block, choice in zip(stage, genes, strict=True):
                block.active = choice
        self._active = code

    def sample_active_subnet(self, rng: random.Random) -> ShuffleNetCode:
        """Draw a code uniformly (SPOS's single-path sampling), make it active and return it."""
        code = self.space.sample(rng)
        self.set_active_subnet(code)
        return code

    def get_active_subnet(self, preserve_weight: bool = True) -> ShuffleNetV2Backbone:
        """A standalone :class:`ShuffleNetV2Backbone` of the active path; with
        ``preserve_weight`` (the default) its weights are copies of the supernet's, else fresh.

        The stem and chosen units are deep copies (BN statistics, ``requires_grad`` and
        train/eval mode included); the result shares nothing with the supernet.
        """
        code = self._active
        sub = ShuffleNetV2Backbone(
            code,
            widths=self.widths,
            stem_channels=self.stem_channels,
            levels=self.levels,
            stride2_split=self.stride2_split,
        )
        if not preserve_weight:
            return sub
        sub.stem = copy.deepcopy(self.stem)
        for i, stage in enumerate(self.stages):
            for j, block in enumerate(stage):
                sub.stages[i][j] = copy.deepcopy(block.choices[block.active])
            sub.stages[i].training = stage.training  # not .train(): keeps the copies' modes
        sub.stages.training = self.stages.training
        sub.training = self.training
        return sub
