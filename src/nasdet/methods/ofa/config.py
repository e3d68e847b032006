"""OFA + SSD run config (``method: ofa``): aw_nas's three files as the three step sections.

====================================  =============================================
aw_nas file and key                    nasdet run config
====================================  =============================================
``ssd_supernet_training.yaml``         ``supernet_train:``
  ``search_space_cfg.schedule_cfg``      ``supernet_train.search_space_cfg.schedule_cfg``
  ``evaluator_cfg.batch_size``           ``supernet_train.evaluator_cfg.batch_size``
  ``evaluator_cfg.mepa_optimizer``       ``supernet_train.evaluator_cfg.mepa_optimizer``
  ``evaluator_cfg.mepa_scheduler``       ``supernet_train.evaluator_cfg.mepa_scheduler``
  ``evaluator_cfg.data_portion``         ``supernet_train.evaluator_cfg.data_portion``
  ``weights_manager_cfg.                 ``model.backbone`` (``name: ofa_supernet``,
  search_backbone_cfg``                   ``backbone_type``, ``pretrained_path``)
  ``backbone_cfg.num_classes``           the data's classes (background added, label 0)
``ssd_async_search.yaml``              ``search:``
  ``trainer_cfg.num_epochs``             ``search.trainer_cfg.num_epochs``
  ``trainer_cfg.parallelism``            ``search.trainer_cfg.parallelism``
  ``trainer_cfg.dispatcher_cfg.gpu_ids`` ``search.trainer_cfg.dispatcher_cfg.gpu_ids``
``ssd_final.yaml``                     ``final_train:``
  ``final_model_cfg.backbone_cfg.        ``final_train.final_model_cfg.backbone_cfg.
  genotypes``                             genotypes``
  ``final_model_cfg.supernet_state_dict`` ``final_train.final_model_cfg.supernet_state_dict``
  ``final_trainer_cfg.*``                ``final_train.final_trainer_cfg.*``
====================================  =============================================
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar, Literal

from pydantic import Field, field_validator, model_validator

from nasdet.config import Config, FPNNeck, ModelConfig, RunConfig, Strict, spec_union
from nasdet.errors import ConfigError
from nasdet.methods.ofa.parts import BACKBONES
from nasdet.methods.ofa.shrinking import ScheduleCfg
from nasdet.search.constraints import Constraints
from nasdet.search.pareto import check_objectives, primary_metric
from nasdet.search.selection import Selection

OFA_STEPS = ("supernet_train", "search", "final_train")


# ----------------------------------------------------------------------------- supernet_train
class SearchSpaceCfg(Strict):
    schedule_cfg: ScheduleCfg | None = Field(
        None,
        description="progressive shrinking: {kernel_choice, expand_choice, depth_choice} each "
        "{boundary: [1-based epochs], value: [choice lists]}; null: Once-for-All's order "
        "(full net, elastic kernel, depth, expand) over supernet_train.epochs",
    )


class MepaOptimizer(Strict):
    type: Literal["SGD", "AdamW"] = "SGD"
    lr: float = Field(0.05, gt=0.0)
    momentum: float = Field(0.9, ge=0.0, lt=1.0)
    weight_decay: float = Field(4e-5, ge=0.0)


class MepaScheduler(Strict):
    """aw_nas's ``mepa_scheduler``: torch's ``CosineAnnealingWarmRestarts`` (``T_0``, ``T_mult``)
    or ``CosineAnnealingLR`` (``T_max``, as aw_nas's own OFA example), each with ``eta_min``;
    epochs, the learning rate updated every iteration."""

    type: Literal["CosineAnnealingWarmRestarts", "CosineAnnealingLR"] = (
        "CosineAnnealingWarmRestarts"
    )
    T_0: int | None = Field(
        None, ge=1, description="epochs of one cosine cycle; null: the schedule's phase interval"
    )
    T_mult: int = Field(1, ge=1, description="CosineAnnealingWarmRestarts: cycle growth factor")
    T_max: int | None = Field(
        None, ge=1, description="CosineAnnealingLR: epochs from lr to eta_min; null: the run"
    )
    eta_min: float = Field(0.0, ge=0.0, description="the lowest learning rate")

    @model_validator(mode="after")
    def _keys_of_type(self) -> MepaScheduler:
        restarts = self.type == "CosineAnnealingWarmRestarts"
        for key, used in (("T_0", self.T_0 is not None), ("T_mult", self.T_mult != 1)):
            if used and not restarts:
                raise ValueError(f"{key} is for CosineAnnealingWarmRestarts, not {self.type}")
        if self.T_max is not None and restarts:
            raise ValueError(
                "T_max is for CosineAnnealingLR; CosineAnnealingWarmRestarts' cycle is T_0"
            )
        return self


class EvaluatorCfg(Strict):
    batch_size: int = Field(16, ge=1, description="batch size of supernet training (per process)")
    mepa_optimizer: MepaOptimizer = Field(default_factory=MepaOptimizer)
    mepa_scheduler: MepaScheduler = Field(default_factory=MepaScheduler)
    data_portion: list[float] | None = Field(
        None,
        description="[0, train, search] fractions of the training split, e.g. [0., 0.9, 0.1]: "
        "the last part scores candidates (sets data.search_fraction)",
    )

    @model_validator(mode="after")
    def _eta_min(self) -> EvaluatorCfg:
        if self.mepa_scheduler.eta_min >= self.mepa_optimizer.lr:
            raise ValueError(
                f"mepa_scheduler.eta_min ({self.mepa_scheduler.eta_min}) must be below "
                f"mepa_optimizer.lr ({self.mepa_optimizer.lr})"
            )
        return self

    @field_validator("data_portion")
    @classmethod
    def _portion(cls, v: list[float] | None) -> list[float] | None:
        if v is None:
            return v
        if len(v) != 3 or any(x < 0 for x in v) or abs(sum(v) - 1.0) > 1e-6:
            raise ValueError(f"must be three non-negative fractions summing to 1, got {v}")
        if v[0] != 0.0:
            raise ValueError(f"the first portion must be 0 (nasdet has no separate part), got {v}")
        if not 0.0 < v[2] < 1.0:
            raise ValueError(f"the search portion must be between 0 and 1, got {v[2]}")
        return v


class SupernetTrain(Strict):
    """Step 1: progressive shrinking of the elastic supernet inside the detector."""

    epochs: int | None = Field(None, ge=1, description="default: train.epochs")
    search_space_cfg: SearchSpaceCfg = Field(default_factory=SearchSpaceCfg)
    evaluator_cfg: EvaluatorCfg = Field(default_factory=EvaluatorCfg)
    sandwich: bool = Field(True, description="largest + smallest + num_random subnets per step")
    num_random: int = Field(2, ge=0, description="random subnets per step besides the sandwich")
    distill: bool = Field(True, description="in-place distillation from the largest subnet")
    kd_ratio: float = Field(1.0, ge=0.0, description="weight of the distillation loss")


# ----------------------------------------------------------------------------- search
class DispatcherCfg(Strict):
    gpu_ids: list[int] = Field([], description="pin the workers to these GPUs (round robin)")


class SearchTrainerCfg(Strict):
    num_epochs: int = Field(
        10, ge=0, description="generations' worth of children after the first population"
    )
    parallelism: int = Field(1, ge=1, description="workers, each holding one supernet copy")
    dispatcher_cfg: DispatcherCfg = Field(default_factory=DispatcherCfg)


class PredictorCfg(Strict):
    enabled: bool = False
    min_samples: int = Field(20, ge=4, description="scores before the first fit")
    refit_every: int = Field(10, ge=1)
    screen: int = Field(10, ge=2, description="mutations drawn per child, best predicted kept")


class Search(Strict):
    """Step 2: asynchronous evolution on the trained supernet (Once-for-All's settings)."""

    trainer_cfg: SearchTrainerCfg = Field(default_factory=SearchTrainerCfg)
    executor: Literal["auto", "inprocess", "ray"] = Field(
        "auto", description="auto: Ray actors when parallelism > 1, else in this process"
    )
    address: str | None = Field(None, description="Ray cluster address (null: a local one)")
    population_size: int = Field(100, ge=2)
    parent_ratio: float = Field(0.25, gt=0.0, le=1.0)
    mutation_ratio: float = Field(0.5, ge=0.0, le=1.0)
    mutate_prob: float = Field(0.1, gt=0.0, le=1.0)
    max_tries: int = Field(1000, ge=1, description="draws per child before giving up")
    bn_mode: Literal["recalibrate", "none"] = "recalibrate"
    calibrate_samples: int = Field(256, ge=1)
    constraints: Constraints = Field(default_factory=Constraints)
    objective_keys: list[str] = Field(["mAP", "flops"], description="Pareto front (score first)")
    selection: Selection = Field(
        default_factory=Selection, description="how the subnet to train is picked"
    )
    predictor: PredictorCfg = Field(default_factory=PredictorCfg)

    @field_validator("objective_keys")
    @classmethod
    def _objectives(cls, keys: list[str]) -> list[str]:
        keys = check_objectives(keys)
        if primary_metric(keys) != keys[0].lstrip("+"):
            raise ValueError(f"the first objective is the score and must be a metric: {keys[0]}")
        return keys

    @property
    def num_parents(self) -> int:
        return max(1, round(self.population_size * self.parent_ratio))

    @property
    def max_evaluations(self) -> int:
        """The first population plus ``num_epochs`` generations' children."""
        children = self.population_size - self.num_parents
        return self.population_size + self.trainer_cfg.num_epochs * children


# ----------------------------------------------------------------------------- final_train
class FinalBackboneCfg(Strict):
    genotypes: str | dict[str, Any] | None = Field(
        None, description="the subnet (OFA dict or compact string); null: the search's best"
    )


class FinalModelCfg(Strict):
    backbone_cfg: FinalBackboneCfg = Field(default_factory=FinalBackboneCfg)
    supernet_state_dict: Literal["supernet_train"] | Path | None = Field(
        None,
        description="start from this supernet model file's sliced weights (supernet_train: this "
        "run's); null: from scratch",
    )


class FinalTrainerCfg(Strict):
    batch_size: int | None = Field(None, ge=1, description="default: train.batch_size")
    epochs: int | None = Field(None, ge=1, description="default: train.epochs")
    learning_rate: float | None = Field(None, gt=0.0, description="default: train.lr")
    freeze_base_net: bool = False
    base_net_lr: float = Field(0.0, ge=0.0, description="backbone lr with freeze_base_net")


class FinalTrain(Strict):
    """Step 3: train the chosen subnet (and the hand-designed net, same budget)."""

    final_model_cfg: FinalModelCfg = Field(default_factory=FinalModelCfg)
    final_trainer_cfg: FinalTrainerCfg = Field(default_factory=FinalTrainerCfg)
    baseline: str | dict[str, Any] | None = Field(
        "uniform",
        description="hand-designed net trained alike: uniform (kernel 3, expand 4, depth 3 "
        "everywhere), a genotype, or null for none",
    )


Backbone = spec_union(BACKBONES)
Neck = spec_union((FPNNeck,))


class OFARunConfig(RunConfig[Backbone, Neck]):  # type: ignore[valid-type]
    """An OFA run: ``model.backbone.name: ofa_supernet`` and the steps below."""

    STEPS: ClassVar[tuple[str, ...]] = OFA_STEPS
    method: Literal["ofa"]
    supernet_train: SupernetTrain | None = Field(default_factory=SupernetTrain)
    search: Search | None = Field(default_factory=Search)
    final_train: FinalTrain | None = Field(default_factory=FinalTrain)

    def later_keys(self) -> dict[str, dict[str, Any]]:
        return {
            **super().later_keys(),
            "supernet_train.evaluator_cfg.mepa_scheduler": {
                "T_mult": 1,
                "T_max": None,
                "eta_min": 0.0,
            },
        }

    @model_validator(mode="before")
    @classmethod
    def _portion(cls, data: Any) -> Any:
        """``evaluator_cfg.data_portion`` sets ``data.search_fraction`` (one of the two)."""
        if not isinstance(data, dict):
            return data
        st = data.get("supernet_train") or {}
        portion = (
            (st.get("evaluator_cfg") or {}).get("data_portion") if isinstance(st, dict) else None
        )
        if not isinstance(portion, list) or len(portion) != 3:
            return data
        d = dict(data.get("data") or {})
        if "search_fraction" in d and abs(float(d["search_fraction"]) - float(portion[2])) > 1e-9:
            raise ValueError(
                "supernet_train.evaluator_cfg.data_portion: its search part "
                f"({portion[2]}) differs from data.search_fraction ({d['search_fraction']}); "
                "set one of them"
            )
        d["search_fraction"] = float(portion[2])
        return {**data, "data": d}

    @model_validator(mode="after")
    def _ofa(self) -> OFARunConfig:
        if self.model.backbone.name != "ofa_supernet":
            raise ValueError(
                "ofa searches an elastic supernet: set model.backbone.name to ofa_supernet "
                f"(got {self.model.backbone.name})"
            )
        if self.model.detector not in ("ssdlite", "ssd", "retinanet", "fcos"):
            raise ValueError(
                "ofa: model.detector must be ssdlite (the seed's), ssd, retinanet or fcos"
            )
        if "search" in self.steps and self.data.search_fraction <= 0:
            raise ValueError(
                "data.search_fraction: the search scores candidates on held-out training images; "
                "set supernet_train.evaluator_cfg.data_portion (e.g. [0., 0.9, 0.1])"
            )
        st = self.supernet_train
        if st is not None and st.search_space_cfg.schedule_cfg is not None:
            spec = self.model.backbone
            try:
                st.search_space_cfg.schedule_cfg.check_space(
                    list(spec.ks_list),
                    list(spec.expand_ratio_list),
                    list(spec.depth_list),
                    key="supernet_train.search_space_cfg.schedule_cfg",
                )
            except ConfigError as e:
                raise ValueError(str(e)) from None
        return self

    @property
    def primary_metric(self) -> str:
        return self.search.objective_keys[0].lstrip("+") if self.search else "mAP"

    @property
    def supernet_epochs(self) -> int:
        st = self.supernet_train
        return (st.epochs if st and st.epochs else None) or self.train.epochs


TrainConfig = Config[Backbone, Neck]
Model = ModelConfig[Backbone, Neck]
