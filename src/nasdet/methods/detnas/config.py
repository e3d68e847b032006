"""DetNAS run config (``method: detnas``): a ShuffleNetV2 supernet, its training, the evolution
search and the retraining of the best subnet, with MMRazor's keys where it has them."""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar, Literal

from pydantic import Field, field_validator, model_validator

from nasdet.config import (
    Config,
    FPNNeck,
    ModelConfig,
    RunConfig,
    Strict,
    TorchvisionBackbone,
    spec_union,
)
from nasdet.methods.detnas.parts import ShuffleNetNASSpec, ShuffleNetSupernetSpec
from nasdet.search.constraints import Constraints
from nasdet.search.executors import ExecutorSettings
from nasdet.search.pareto import check_objectives, primary_metric
from nasdet.search.selection import Selection

DETNAS_STEPS = ("supernet_pretrain", "supernet_train", "evolution_search", "subnet_train")


class SupernetPretrain(Strict):
    """Step 1 (optional): the supernet backbone as a classifier, one sampled path per step."""

    epochs: int = Field(3, ge=1)
    data: Path | None = Field(
        None, description="ImageFolder root (train/, val/); null: the bundled digits variant"
    )
    lr: float = Field(0.05, gt=0.0)
    batch_size: int = Field(64, ge=1)
    image_size: int = Field(32, ge=8)


class SupernetTrain(Strict):
    """Step 2: the supernet inside the detector on the detection data. ``sampling``:
    ``uniform`` (SPOS: one uniformly drawn path per step), ``strict_fair`` (FairNAS: one forward
    per choice, every choice of every block once per step) or ``sandwich`` (the most and the
    fewest backbone FLOPs, then ``num_random`` random paths per step; with ``distill``, in-place
    distillation from the largest)."""

    epochs: int | None = Field(None, ge=1, description="default: train.epochs")
    sampling: Literal["uniform", "strict_fair", "sandwich"] = Field(
        "uniform", description="which paths each optimizer step trains"
    )
    num_random: int = Field(2, ge=0, description="sandwich: random paths besides the two ends")
    distill: bool = Field(False, description="sandwich: in-place distillation from the largest")
    kd_ratio: float = Field(1.0, ge=0.0, description="weight of the distillation loss")

    @model_validator(mode="after")
    def _sampling_keys(self) -> SupernetTrain:
        """A sandwich key set away from its default under another sampling is an error (the
        defaults themselves pass, so that a dumped config reads back)."""
        defaults = type(self).model_fields
        if self.sampling != "sandwich":
            for key in ("num_random", "distill"):
                if getattr(self, key) != defaults[key].default:
                    raise ValueError(
                        f"{key} applies to sampling: sandwich only (sampling is {self.sampling})"
                    )
        if self.kd_ratio != defaults["kd_ratio"].default and not self.distill:
            raise ValueError("kd_ratio applies with distill: true only")
        return self


class EvolutionSearch(ExecutorSettings):
    """Step 3: evolution search on the trained supernet (MMRazor EvolutionSearchLoop keys)."""

    num_candidates: int = Field(50, ge=2, description="population of each generation")
    top_k: int = Field(10, ge=1)
    num_mutation: int = Field(25, ge=0)
    mutate_prob: float = Field(0.1, ge=0.0, le=1.0)
    num_crossover: int = Field(25, ge=0)
    crossover_prob: float = Field(0.5, ge=0.0, le=1.0)
    max_epochs: int = Field(20, ge=1, description="generations")
    max_tries: int = Field(1000, ge=1, description="proposals tried per generation, at most")
    bn_mode: Literal["recalibrate", "train", "none"] = Field(
        "recalibrate",
        description="recalibrate: BN statistics re-estimated per candidate on training images; "
        "train: BN uses batch statistics while scoring (MMRazor); none: the supernet's",
    )
    calibrate_samples: int = Field(256, ge=1)
    constraints: Constraints = Field(
        default_factory=Constraints, description="limits on each candidate (search.constraints)"
    )
    objective_keys: list[str] = Field(
        ["mAP", "backbone_flops"], description="the Pareto front reported (score: the first)"
    )
    selection: Selection = Field(
        default_factory=Selection, description="how the subnet to retrain is picked"
    )

    @field_validator("objective_keys")
    @classmethod
    def _objectives(cls, keys: list[str]) -> list[str]:
        keys = check_objectives(keys)
        if primary_metric(keys) != keys[0].lstrip("+"):
            raise ValueError(f"the first objective is the score and must be a metric: {keys[0]}")
        return keys

    @model_validator(mode="after")
    def _sizes(self) -> EvolutionSearch:
        if self.num_mutation + self.num_crossover > self.num_candidates:
            raise ValueError(
                f"num_mutation + num_crossover ({self.num_mutation} + {self.num_crossover}) "
                f"must be at most num_candidates ({self.num_candidates})"
            )
        if self.top_k > self.num_candidates:
            raise ValueError(f"top_k ({self.top_k}) exceeds num_candidates ({self.num_candidates})")
        return self


class SubnetTrain(Strict):
    """Steps 4-5: retrain the exported subnet (optional classification pre-training, then
    detection training from scratch) and, with ``baseline``, the hand-crafted ShuffleNetV2
    (every block 3x3) of the same widths with the same budget."""

    genotype: str | None = Field(None, description="train this code instead of the best found")
    pretrain_epochs: int = Field(0, ge=0, description="classification epochs first (0: none)")
    epochs: int | None = Field(None, ge=1, description="detection epochs (default train.epochs)")
    baseline: bool = Field(True, description="also train the hand-crafted ShuffleNetV2")


BACKBONES = (ShuffleNetSupernetSpec, ShuffleNetNASSpec)
Backbone = spec_union((*BACKBONES, TorchvisionBackbone))
Neck = spec_union((FPNNeck,))


class DetNASRunConfig(RunConfig[Backbone, Neck]):  # type: ignore[valid-type]
    """A DetNAS run: ``model.backbone.name: shufflenet_supernet`` and the steps below."""

    STEPS: ClassVar[tuple[str, ...]] = DETNAS_STEPS
    method: Literal["detnas"]
    supernet_pretrain: SupernetPretrain | None = None
    supernet_train: SupernetTrain | None = Field(default_factory=SupernetTrain)
    evolution_search: EvolutionSearch | None = Field(default_factory=EvolutionSearch)
    subnet_train: SubnetTrain | None = Field(default_factory=SubnetTrain)

    @model_validator(mode="after")
    def _detnas(self) -> DetNASRunConfig:
        if self.model.backbone.name != "shufflenet_supernet":
            raise ValueError(
                "detnas searches a ShuffleNetV2 supernet: set model.backbone.name to "
                f"shufflenet_supernet (got {self.model.backbone.name})"
            )
        if self.model.detector not in ("fasterrcnn", "retinanet", "fcos"):
            raise ValueError("detnas: model.detector must be fasterrcnn, retinanet or fcos")
        st = self.supernet_train
        if st is not None and st.distill and self.model.detector == "fasterrcnn":
            raise ValueError(
                "supernet_train.distill: in-place distillation reads a one-stage head "
                "(retinanet, fcos); set distill: false for fasterrcnn"
            )
        digits = self.data.format == "digits"
        pre = self.supernet_pretrain
        if (
            "supernet_pretrain" in self.steps
            and pre is not None
            and pre.data is None
            and not digits
        ):
            raise ValueError(
                "supernet_pretrain.data: pre-training needs a classification set (an ImageFolder "
                "with train/ and val/) for your data; a digits set is generated only for the "
                "bundled digits"
            )
        sub = self.subnet_train
        if (
            sub is not None
            and sub.pretrain_epochs
            and not digits
            and (pre is None or pre.data is None)
        ):
            raise ValueError(
                "supernet_pretrain.data: subnet_train.pretrain_epochs pre-trains on this "
                "classification set; set it for your data"
            )
        return self

    @property
    def primary_metric(self) -> str:
        """The metric that ranks candidates (the evolution's score: its first objective)."""
        return (
            self.evolution_search.objective_keys[0].lstrip("+") if self.evolution_search else "mAP"
        )


TrainConfig = Config[Backbone, Neck]  # a subnet's training config
Model = ModelConfig[Backbone, Neck]  # the supernet's or a subnet's model section
