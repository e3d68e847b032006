"""SP-NAS's model parts as config sections: the serial backbone and the parallel-FPN neck.

``model.backbone: {name: serial, code: 111-2111-211111-211, block: basic, base_width: 16}`` and
``model.neck: {name: parallel_fpn, code: 0-1-0}`` (or the flat ``neck: parallel_fpn`` +
``neck_code: 0-1-0``). Each section translates itself into the constructor's keyword arguments.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator
from torch import nn
from torchvision.ops import FrozenBatchNorm2d

from nasdet.config import BackboneSpec, NeckSpec
from nasdet.methods.spnas.neck_space import ParallelCode
from nasdet.methods.spnas.nets import SerialBackbone
from nasdet.methods.spnas.parallel_fpn import ParallelFPN
from nasdet.methods.spnas.space import SerialCode


class SerialBackboneSpec(BackboneSpec):
    """A ResNet-like serial backbone of one SP-NAS block code."""

    name: Literal["serial"] = "serial"
    code: str = Field(description="block code, e.g. 111-2111-211111-211")
    block: Literal["bottleneck", "basic", "resnext"] = "bottleneck"
    base_width: int = Field(64, ge=1, description="first-stage width")
    frozen_bn: bool = Field(False, description="FrozenBatchNorm2d (torchvision's R-CNN)")

    @model_validator(mode="after")
    def _code(self) -> SerialBackboneSpec:
        SerialCode.parse(self.code)
        return self

    def build(self) -> nn.Module:
        code = SerialCode.parse(self.code)
        return SerialBackbone(
            code,
            block=self.block,
            base_width=self.base_width,
            norm_layer=FrozenBatchNorm2d if self.frozen_bn else nn.BatchNorm2d,
            levels=self.levels or [lv for lv in code.levels if lv >= 3],
        )


class ParallelFPNNeck(NeckSpec):
    """SP-NAS's parallel branches on the backbone's levels, then an FPN."""

    name: Literal["parallel_fpn"] = "parallel_fpn"
    code: str = Field(description="extra blocks per backbone level, e.g. 0-1-0")

    def build(self, body: nn.Module, channels: int, extra_levels: str) -> nn.Module:
        code = ParallelCode.parse(self.code, num_levels=len(body.feature_info))
        return ParallelFPN(body, code, channels, extra_levels)
