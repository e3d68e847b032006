"""Once-for-All's model parts as config sections: the elastic supernet and a static subnet.

``model.backbone: {name: ofa_supernet, backbone_type: mbv3_backbone, width_mult: 1.0}`` is the
supernet (``ks_list``, ``expand_ratio_list``, ``depth_list`` as OFA names them);
``{name: ofa_subnet, genotype: "k7735-...:e6643-...:d43422"}`` one subnet (the genotype also as
OFA's dict ``{ks: [...], e: [...], d: [...]}``, stored as the compact string).

``pretrained_path`` names an OFA-format checkpoint (``ofa_mbv3_d234_e346_k357_w1.0``), converted
by :mod:`nasdet.methods.ofa.convert`; ``weights`` stays nasdet's own state dict of the body. The
spec's ``build()`` never reads files: :meth:`OFASupernetSpec.load_pretrained` loads the checkpoint
into a built body (``nasdet.build.build_backbone`` only knows ``weights``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import Field, field_validator, model_validator
from torch import nn

from nasdet.config import BackboneSpec, SupernetSpec
from nasdet.methods.ofa.convert import load_ofa_checkpoint
from nasdet.methods.ofa.nets import (
    OFAMobileNetV2Supernet,
    OFAMobileNetV3Supernet,
    OFASubnetBackbone,
    OFASupernet,
    level_stages,
)
from nasdet.methods.ofa.space import (
    D_CHOICES,
    E_CHOICES,
    KS_CHOICES,
    N_STAGES,
    OFAGenotype,
    OFASpace,
)

_LEVELS = tuple(level_stages((2, 2, 2, 1, 2)))  # 2..5


class _OFASpec(BackboneSpec):
    backbone_type: Literal["mbv3_backbone", "mbv2_backbone"] = Field(
        "mbv3_backbone", description="OFA's MobileNetV3 or the MobileNetV2 variant (aw_nas names)"
    )
    width_mult: float = Field(1.0, gt=0.0, le=4.0, description="channel width multiplier")

    @field_validator("levels")
    @classmethod
    def _levels(cls, levels: list[int] | None) -> list[int] | None:
        if levels is not None and (
            not levels or any(lv not in _LEVELS for lv in levels) or levels != sorted(set(levels))
        ):
            raise ValueError(f"levels must be an increasing subset of {_LEVELS}, got {levels}")
        return levels

    def _levels_or_default(self) -> tuple[int, ...]:
        return tuple(self.levels or (3, 4, 5))


class OFASubnetSpec(_OFASpec):
    """One OFA subnet, a static backbone built from its genotype alone."""

    name: Literal["ofa_subnet"] = "ofa_subnet"
    genotype: str = Field(description="compact k/e/d string, e.g. k7735-...:e6643-...:d43422")

    @field_validator("genotype", mode="before")
    @classmethod
    def _genotype(cls, value: Any) -> str:
        g = OFAGenotype.parse(value)  # a pasted OFA dict becomes the compact string
        if g.n_stages != N_STAGES:
            raise ValueError(f"genotype '{g}' has {g.n_stages} stages, the backbone {N_STAGES}")
        return str(g)

    def build(self) -> nn.Module:
        return OFASubnetBackbone(
            self.genotype, self.backbone_type, self.width_mult, self._levels_or_default()
        )


class OFASupernetSpec(_OFASpec, SupernetSpec):
    """The Once-for-All elastic supernet (kernel size, expand ratio and depth)."""

    name: Literal["ofa_supernet"] = "ofa_supernet"
    ks_list: list[int] = Field(list(KS_CHOICES), description="depthwise kernel sizes")
    expand_ratio_list: list[int] = Field(list(E_CHOICES), description="expand ratios")
    depth_list: list[int] = Field(list(D_CHOICES), description="blocks per stage")
    pretrained_path: Path | None = Field(
        None, description="an OFA checkpoint (ofa_mbv3_d234_e346_k357_w1.0, ...) to start from"
    )

    @model_validator(mode="after")
    def _space(self) -> OFASupernetSpec:
        self.space  # noqa: B018 -- the choice lists must form a space (ValueError otherwise)
        if self.pretrained_path is not None and self.backbone_type != "mbv3_backbone":
            raise ValueError("pretrained_path (an OFA checkpoint) is for mbv3_backbone only")
        return self

    @property
    def space(self) -> OFASpace:
        """The search space of the supernet's choice lists."""
        return OFASpace(
            tuple(self.ks_list),
            tuple(self.expand_ratio_list),
            tuple(self.depth_list),
            N_STAGES,
            max(self.depth_list, default=1),
        )

    def build(self) -> OFASupernet:
        cls = (
            OFAMobileNetV3Supernet
            if self.backbone_type == "mbv3_backbone"
            else OFAMobileNetV2Supernet
        )
        return cls(
            width_mult=self.width_mult,
            ks_list=self.ks_list,
            expand_ratio_list=self.expand_ratio_list,
            depth_list=self.depth_list,
            levels=self._levels_or_default(),
        )

    def load_pretrained(self, body: OFASupernet) -> list[str]:
        """Load ``pretrained_path`` (when set) into ``body``; returns the keys dropped."""
        if self.pretrained_path is None:
            return []
        return load_ofa_checkpoint(self.pretrained_path, body)

    def parse_genotype(self, text: str) -> OFAGenotype:
        """A compact genotype or OFA's dict (JSON / YAML text), checked against the choice lists
        (one-line ``ValueError``)."""
        return self.space.parse(text)

    def subnet(self, genotype: OFAGenotype) -> OFASubnetSpec:
        """The static subnet's section (its genotype in canonical form)."""
        return OFASubnetSpec(
            backbone_type=self.backbone_type,
            width_mult=self.width_mult,
            genotype=str(OFAGenotype.parse(genotype).canonical()),
            levels=self.levels,
        )


BACKBONES = (OFASupernetSpec, OFASubnetSpec)
