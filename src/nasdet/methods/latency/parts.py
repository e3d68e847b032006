"""The latency method's model parts as config sections: the search space and a searched net.

``model.backbone: {name: latency_space, baseline: mobilenet_v2, width_mult: 1.0, levels: [4, 5]}``
(``baseline``: one of :data:`SEARCHABLE_BASELINES`)
is the space made from the baseline backbone (its searchable blocks as variant containers).
With ``head_convs: n`` (retinanet, fcos) the space also holds the head towers' ``2n`` convs,
each with a skip variant, after the blocks. ``{name: latency_subnet, ..., arch: [0, 3, 6, ...]}``
is the static backbone of one architecture (its head skips are ``model.head_skip``). Both
build from the baseline's structure alone (random weights; a model file or ``baseline_ckpt``
brings the weights).
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any, Literal

from pydantic import Field, field_validator, model_validator
from torch import nn

from nasdet.config import BackboneSpec, ModelConfig, SupernetSpec
from nasdet.methods.latency.nets import DEFAULT_MULTIPLIERS, LatencySupernet, attach_head_space
from nasdet.methods.latency.space import LatencyArch, LatencySpace
from nasdet.models.baselines import BASELINES

#: the baseline backbones with a searchable block kind (``nets.BLOCK_KINDS``):
#: MobileNetV2 (ssd_mobilenetv2, yolov3_mobilenetv2), Darknet-53 (yolov3), ResNet-50 (retinanet)
SEARCHABLE_BASELINES = ("mobilenet_v2", "darknet53", "resnet50")


class _LatencySpec(BackboneSpec):
    baseline: Literal["mobilenet_v2", "darknet53", "resnet50"] = Field(
        "mobilenet_v2", description="the baseline backbone the space is made from"
    )
    width_mult: float = Field(1.0, gt=0.0, le=4.0, description="the baseline's width multiplier")
    multipliers: list[float] = Field(
        list(DEFAULT_MULTIPLIERS), description="widths of the pruned variants (after variant 0)"
    )
    skip: bool = Field(True, description="a skip variant for blocks with a residual")
    head_convs: int = Field(
        0,
        ge=0,
        description="convs per head tower searched with a skip variant (retinanet: 4, fcos: "
        "fcos_num_convs), entries after the blocks; 0: the head is not searched",
    )
    last_conv: bool = Field(
        True, description="mobilenet_v2 only: keep the final 1x1 conv as c5 (the backbone's key)"
    )

    @model_validator(mode="after")
    def _last_conv(self) -> _LatencySpec:
        if not self.last_conv and self.baseline != "mobilenet_v2":
            raise ValueError(f"last_conv is for mobilenet_v2, not {self.baseline}")
        return self

    @field_validator("multipliers")
    @classmethod
    def _multipliers(cls, v: list[float]) -> list[float]:
        if any(not 0.0 < m < 1.0 for m in v):
            raise ValueError(f"multipliers must be between 0 and 1 (exclusive), got {v}")
        return v

    @property
    def space(self) -> LatencySpace:
        """The variant counts of the space: the blocks' (cached per structure: building a space
        copies and prunes every block), then 2 (keep, skip) per head conv."""
        blocks = _space(self.baseline, self.width_mult, tuple(self.levels or (3, 4, 5)),
                        tuple(self.multipliers), self.skip, self.last_conv)  # fmt: skip
        return LatencySpace(blocks.num_variants + (2,) * (2 * self.head_convs))

    def supernet(self) -> LatencySupernet:
        body = _baseline(self.baseline, self.width_mult, tuple(self.levels or (3, 4, 5)),
                         self.last_conv)  # fmt: skip
        return LatencySupernet(body, self.multipliers, skip=self.skip)


class LatencySubnetSpec(_LatencySpec):
    """The static net of one architecture of the space."""

    name: Literal["latency_subnet"] = "latency_subnet"
    arch: list[int] = Field(description="one variant index per searchable block, e.g. [0, 3, 6]")

    @model_validator(mode="after")
    def _arch(self) -> LatencySubnetSpec:
        if self.head_convs:
            raise ValueError("head_convs is for latency_space: a searched net has model.head_skip")
        self.space.check(LatencyArch.parse(self.arch))
        return self

    def build(self) -> nn.Module:
        space = self.supernet()
        space.set_active_subnet(LatencyArch.parse(self.arch))
        return space.get_active_subnet()


class LatencySpaceSpec(_LatencySpec, SupernetSpec):
    """The search space made from the baseline backbone (variant containers)."""

    name: Literal["latency_space"] = "latency_space"

    def build(self) -> LatencySupernet:
        return self.supernet()

    def finish_detector(self, detector: nn.Module) -> None:
        """With ``head_convs``, the head's tower convs become entries of the space (after the
        blocks); ``ValueError`` when the detector's towers have another depth (or none)."""
        if self.head_convs:
            have = attach_head_space(detector) // 2
            if have != self.head_convs:
                raise ValueError(
                    f"head_convs is {self.head_convs}, the detector's head towers have {have} "
                    "convs (retinanet: 4, fcos: fcos_num_convs; others: 0)"
                )

    def parse_genotype(self, text: str) -> LatencyArch:
        return self.space.parse(text)

    def split(self, genotype: Any) -> tuple[list[int], list[int]]:
        """An architecture's backbone choices and its skipped head convs' indices."""
        choices = LatencyArch.parse(genotype).to_list()
        n = len(choices) - 2 * self.head_convs
        return choices[:n], [i for i, c in enumerate(choices[n:]) if c == 1]

    def subnet(self, genotype: Any) -> LatencySubnetSpec:
        """The backbone section of ``genotype``'s static net: its block choices (the head's
        entries go to ``model.head_skip``, :meth:`subnet_model`)."""
        data = self.model_dump(exclude={"name", "head_convs"})
        return LatencySubnetSpec(**data, arch=self.split(genotype)[0])

    def subnet_model(self, arch: ModelConfig, genotype: Any) -> ModelConfig:
        """``arch`` with the static backbone of ``genotype`` and its skipped head convs as
        ``head_skip`` (null when it skips none)."""
        skipped = self.split(genotype)[1]
        update = {"backbone": self.subnet(genotype), "head_skip": skipped or None}
        return arch.model_copy(update=update)


def _baseline(baseline: str, width_mult: float, levels: tuple[int, ...], last_conv: bool):
    extra = {} if last_conv else {"last_conv": False}
    return BASELINES[baseline](width_mult=width_mult, levels=levels, **extra)


@lru_cache(maxsize=32)
def _space(
    baseline: str,
    width_mult: float,
    levels: tuple[int, ...],
    mults: tuple[float, ...],
    skip: bool,
    last_conv: bool,
) -> LatencySpace:
    body = _baseline(baseline, width_mult, levels, last_conv)
    return LatencySupernet(body, mults, skip=skip).space


def space_spec(
    baseline: BackboneSpec, multipliers: list[float], skip: bool, head_convs: int = 0
) -> LatencySpaceSpec:
    """The space section made from a baseline backbone section (``ValueError`` if its backbone
    has no searchable block kind); ``head_convs``: see :class:`LatencySpaceSpec`."""
    name = getattr(baseline, "name", None)
    if name not in SEARCHABLE_BASELINES:
        raise ValueError(
            f"model.backbone: latency search makes its space from {', '.join(SEARCHABLE_BASELINES)}"
            f" baselines, got {name}"
        )
    return LatencySpaceSpec(
        baseline=name,
        width_mult=baseline.width_mult,  # type: ignore[attr-defined]
        levels=baseline.levels,
        multipliers=multipliers,
        skip=skip,
        head_convs=head_convs,
        last_conv=getattr(baseline, "last_conv", True),
    )


BACKBONES = (LatencySpaceSpec, LatencySubnetSpec)
