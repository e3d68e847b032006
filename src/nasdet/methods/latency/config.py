"""Latency-constrained search run config (``method: latency``), with the seed's step names.

``model`` is the user's baseline detector on a backbone with a searchable block kind
(``mobilenet_v2``: ssdlite, yolov3; ``darknet53``: yolov3; ``resnet50``: retinanet); ``train`` is
its training setup, used unchanged by ``baseline`` and ``tune`` so that the comparison is fair.
Steps, in order: ``baseline`` (optional) → ``pretrain`` or ``multiresolution_pretrain`` →
``search`` or ``search_with_resolution`` → ``tune``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar, Literal

from pydantic import Field, field_validator, model_validator

from nasdet.config import (
    BASE_SPECS,
    Config,
    FPNNeck,
    ModelConfig,
    RunConfig,
    Strict,
    spec_union,
)
from nasdet.methods.latency.latency import LatencyKind
from nasdet.methods.latency.nets import DEFAULT_MULTIPLIERS
from nasdet.methods.latency.parts import BACKBONES, SEARCHABLE_BASELINES

LATENCY_STEPS = (
    "baseline",
    "pretrain",
    "multiresolution_pretrain",
    "search",
    "search_with_resolution",
    "tune",
)


def _check_range(v: list[int] | None) -> list[int] | None:
    if v is None:
        return v
    if len(v) != 2 or v[0] > v[1] or v[0] < 32:
        raise ValueError(f"must be [min, max] with 32 <= min <= max, got {v}")
    if v[0] % 32 or v[1] % 32:
        raise ValueError(f"resolutions are multiples of 32, got {v}")
    return v


class SpaceCfg(Strict):
    multipliers: list[float] = Field(
        list(DEFAULT_MULTIPLIERS), description="widths of the pruned variants of each block"
    )
    skip: bool = Field(True, description="a skip variant for blocks with a residual")
    head_skip: bool = Field(
        True,
        description="a skip variant for each head tower conv (retinanet, fcos; other heads have "
        "no conv stack), entries after the blocks",
    )


class BaselineStep(Strict):
    """Train the baseline with ``train`` (nasdet's trainer)."""


class Pretrain(Strict):
    """Train the space: a uniformly random architecture per step, from ``baseline_ckpt``."""

    baseline_ckpt: Path | None = Field(
        None, description="the trained baseline's model file; null: this run's baseline step"
    )
    epochs: int | None = Field(None, ge=1, description="default: train.epochs")
    distill: bool = Field(False, description="distil from the baseline's head outputs")
    kd_ratio: float = Field(1.0, ge=0.0, description="weight of the distillation loss")


class MultiresolutionPretrain(Pretrain):
    """``pretrain`` that also samples the input size per step from ``resolution_range``."""

    resolution_range: list[int] = Field(description="[min, max] input side, multiples of 32")
    _range = field_validator("resolution_range")(classmethod(lambda cls, v: _check_range(v)))


class Search(Strict):
    """Optimise the architecture logits with the weights frozen (the seed's settings)."""

    target_latency: float = Field(gt=0.0, description="in ms (measured:*) or MMAC (mmac)")
    space_checkpoint: Path | None = Field(
        None, description="a pretrained space model file; null: this run's pretrain step's"
    )
    epochs: int = Field(1, ge=1)
    batch_size: int | None = Field(None, ge=1, description="default: train.batch_size")
    optimizer: Literal["adam", "radam"] = "adam"
    lr: float = Field(0.01, gt=0.0)
    betas: tuple[float, float] = Field((0.0, 0.999), description="Adam betas (momentum 0)")
    weight_decay: float = Field(0.0, ge=0.0)
    latency_loss_weight: float = Field(1.0, ge=0.0)
    samples_per_step: int = Field(
        4, ge=2, description="architectures run on each batch (REINFORCE, leave-one-out baseline)"
    )
    max_extra_epochs: int = Field(
        3, ge=0, description="epochs added (latency weight doubled) while the argmax misses"
    )


class SearchWithResolution(Search):
    """``search`` at each resolution of ``resolution_range`` (step 32); the best pair wins."""

    resolution_range: list[int] = Field(description="[min, max] input side, multiples of 32")
    resolution_tolerance: float = Field(
        0.0,
        ge=0.0,
        description="metrics within this of the best count as equal: then the lower latency wins",
    )
    _range = field_validator("resolution_range")(classmethod(lambda cls, v: _check_range(v)))


class Tune(Strict):
    """Train the searched net with ``train`` (the baseline's setup)."""

    searched_arch: list[int] | None = Field(
        None, description="variant indices; null: from ss_checkpoint, else this run's search"
    )
    ss_checkpoint: Path | None = Field(
        None, description="a search space checkpoint (output/search/search_space.pt)"
    )
    init: Literal["search_space", "scratch"] = Field(
        "search_space", description="start from the space's weights or from scratch"
    )
    resolution: int | None = Field(
        None, ge=32, description="input side; default: the search's, else model.min_size"
    )


Backbone = spec_union(BASE_SPECS + BACKBONES)
Neck = spec_union((FPNNeck,))


class LatencyRunConfig(RunConfig[Backbone, Neck]):  # type: ignore[valid-type]
    """A latency search run: ``model`` is the baseline, ``latency`` the latency model."""

    STEPS: ClassVar[tuple[str, ...]] = LATENCY_STEPS
    method: Literal["latency"]
    latency: LatencyKind = Field("mmac", description="mmac | measured:cpu|cuda|onnxruntime")
    space: SpaceCfg = Field(default_factory=SpaceCfg)
    baseline: BaselineStep | None = None
    pretrain: Pretrain | None = None
    multiresolution_pretrain: MultiresolutionPretrain | None = None
    search: Search | None = None
    search_with_resolution: SearchWithResolution | None = None
    tune: Tune | None = None

    def later_keys(self) -> dict[str, dict[str, Any]]:
        """``space.head_skip`` changes nothing for a head without conv towers (ssdlite,
        yolov3): there it stays out of the resume fingerprint."""
        keys = super().later_keys()
        if self.model.head_tower_convs == 0:
            keys["space"] = {"head_skip": self.space.head_skip}
        return keys

    @model_validator(mode="after")
    def _latency(self) -> LatencyRunConfig:
        if self.model.backbone.name not in SEARCHABLE_BASELINES:
            *first, last = SEARCHABLE_BASELINES
            raise ValueError(
                f"model.backbone: the latency space is made from a {', '.join(first)} or {last} "
                f"baseline, got {self.model.backbone.name}"
            )
        if self.model.head_skip is not None:
            raise ValueError(
                "model.head_skip: the space is made from the full baseline head; leave it unset "
                "(space.head_skip searches the head convs)"
            )
        pc = self.pretrain_cfg
        if pc is not None and pc.distill and self.model.detector == "yolov3":
            key = "multiresolution_pretrain" if self.multiresolution_pretrain else "pretrain"
            raise ValueError(
                f"{key}.distill: distillation reads the cls_logits / bbox_regression head outputs "
                "of torchvision's detectors (ssd, ssdlite, retinanet...), not yolov3's maps"
            )
        steps = self.steps
        for a, b in (
            ("pretrain", "multiresolution_pretrain"),
            ("search", "search_with_resolution"),
        ):
            if a in steps and b in steps:
                raise ValueError(f"pipeline: run {a} or {b}, not both")
        return self

    @property
    def search_cfg(self) -> Search | None:
        return self.search_with_resolution or self.search

    @property
    def pretrain_cfg(self) -> Pretrain | None:
        return self.multiresolution_pretrain or self.pretrain


TrainConfig = Config[Backbone, Neck]
Model = ModelConfig[Backbone, Neck]
