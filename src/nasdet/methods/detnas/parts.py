"""DetNAS's model parts as config sections: a static ShuffleNetV2 subnet and the supernet.

``model.backbone: {name: shufflenet_nas, code: 3573-5x77-33x3x357-7x33, width_mult: 0.25}`` is
one architecture; ``{name: shufflenet_supernet, depths: [2, 2, 4, 2]}`` the weight-sharing
supernet (:class:`~nasdet.config.SupernetSpec`: it parses genotypes and names its subnets).
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator
from torch import nn

from nasdet.config import BackboneSpec, SupernetSpec
from nasdet.methods.detnas.nets import ShuffleNetV2Backbone, ShuffleNetV2Supernet, stage_widths
from nasdet.methods.detnas.space import STAGE_CHANNELS, STAGE_DEPTHS, STEM_CHANNELS, ShuffleNetCode


class _ShuffleNetSpec(BackboneSpec):
    width_mult: float = Field(1.0, gt=0.0, le=4.0, description="channel width multiplier")
    widths: list[int] | None = Field(
        None, description="stage widths before width_mult (default 64, 160, 320, 640)"
    )
    stride2_split: Literal["megvii", "mmrazor"] = Field(
        "megvii",
        description="channels of a stride-2 unit's branches: megvii (the projection keeps the "
        "input width) or mmrazor (half the output each; MMRazor's checkpoints)",
    )

    def _sizes(self) -> dict:
        widths = stage_widths(self.width_mult, tuple(self.widths or STAGE_CHANNELS))
        # the stem scales too (a stride-2 unit must widen: stage 1 is wider than the stem)
        stem = min(STEM_CHANNELS, stage_widths(self.width_mult, (STEM_CHANNELS,))[0])
        return {
            "widths": widths,
            "stem_channels": stem,
            "levels": tuple(self.levels or (3, 4, 5)),
            "stride2_split": self.stride2_split,
        }


class ShuffleNetNASSpec(_ShuffleNetSpec):
    """One DetNAS ShuffleNetV2 architecture: a choice (3, 5, 7 or x) per block."""

    name: Literal["shufflenet_nas"] = "shufflenet_nas"
    code: str = Field(description="one choice per block, stages split by '-', e.g. 3573-5x77")

    @model_validator(mode="after")
    def _code(self) -> ShuffleNetNASSpec:
        code = ShuffleNetCode.parse(self.code)
        if self.widths is not None and len(self.widths) != len(code.depths):
            raise ValueError(f"widths has {len(self.widths)} stages, code has {len(code.depths)}")
        return self

    def build(self) -> nn.Module:
        return ShuffleNetV2Backbone(ShuffleNetCode.parse(self.code), **self._sizes())


class ShuffleNetSupernetSpec(_ShuffleNetSpec, SupernetSpec):
    """The DetNAS / SPOS supernet: every block holds the four units."""

    name: Literal["shufflenet_supernet"] = "shufflenet_supernet"
    depths: list[int] | None = Field(None, description="blocks per stage (default 4, 4, 8, 4)")

    @model_validator(mode="after")
    def _stages(self) -> ShuffleNetSupernetSpec:
        if self.widths and self.depths and len(self.widths) != len(self.depths):
            raise ValueError(f"widths has {len(self.widths)} stages, depths {len(self.depths)}")
        return self

    def build(self) -> nn.Module:
        return ShuffleNetV2Supernet(depths=tuple(self.depths or STAGE_DEPTHS), **self._sizes())

    def parse_genotype(self, text: str) -> ShuffleNetCode:
        """A code (``3573-5x77-33x3x357-7x33``) or the text of a subnet YAML file the search
        wrote (MMRazor ``mutable_cfg`` layout)."""
        if "\n" in text or ":" in text:
            code = ShuffleNetCode.from_yaml(text, self.depths)
        else:
            code = ShuffleNetCode.parse(text)
        depths = tuple(self.depths or STAGE_DEPTHS)
        if code.depths != depths:
            raise ValueError(f"genotype {code} has depths {code.depths}, the supernet {depths}")
        return code

    def subnet(self, genotype: ShuffleNetCode) -> ShuffleNetNASSpec:
        return ShuffleNetNASSpec(
            code=str(genotype),
            width_mult=self.width_mult,
            widths=self.widths,
            levels=self.levels,
            stride2_split=self.stride2_split,
        )
