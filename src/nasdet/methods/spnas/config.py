"""SP-NAS run config (``method: spnas``, the default; `nasdet run CONFIG --out DIR`).

A run config is a training config (``seed``, ``data``, ``model``, ``train``, ``eval``; see
:mod:`nasdet.config`) plus a ``search`` section and one section per pipeline step. The step
sections take the keys of the SP-NAS seed configuration (Vega) with the same meaning::

    fine_tune:
      pipe_step: {type: TrainPipeStep}
      model:
        pretrained_model_file: /path/fasterrcnn_resnet50_fpn_coco-258fb6c6.pth   # optional
        model_desc: {type: FasterRCNN, convert_pretrained: true, backbone: {type: SerialBackbone}}
    serial:
      pipe_step: {type: SearchPipeStep}
      search_algorithm: {type: SpNasS, max_sample: 20, objective_keys: [mAP, params],
                         num_mutate: 3, add_stage_ratio: 0.05, expend_ratio: 0.3, max_stages: 6}
      search_space:
        hyperparameters:
          - {key: network.backbone.code, type: CATEGORY, range: ['111-2111-211111-211']}
      model:
        pretrained_model_file: "{local_base_path}/output/fine_tune/model_0.pth"
        model_desc: {type: FasterRCNN, freeze_swap_keys: true, backbone: {type: SerialBackbone}}
    reignition:
      pipe_step: {type: TrainPipeStep}
      models_folder: "{local_base_path}/output/serial/"
      trainer: {type: Trainer, callbacks: ReignitionCallback}
    parallel: ...  (search_algorithm type SpNasP, search_space key network.neck.code)
    fully_train: {pipe_step: {type: TrainPipeStep}, models_folder: ".../output/parallel/"}

``{local_base_path}`` is the run's ``--out`` directory; each step writes to
``DIR/output/<step>/`` (``model_<id>.pth`` nasdet model files, ``desc_<id>.json``,
``pareto.csv``). ``max_stages`` in ``SpNasS`` counts code stages (``-`` groups) as Vega does; the
stem is not counted there.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar, Literal

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
from nasdet.methods.spnas.parts import ParallelFPNNeck, SerialBackboneSpec
from nasdet.search.executors import ExecutorSettings
from nasdet.search.pareto import check_objectives, primary_metric

STEP_NAMES = ("fine_tune", "serial", "reignition", "parallel", "fully_train")
DETECTORS = {"FasterRCNN": "fasterrcnn", "RetinaNet": "retinanet", "FCOS": "fcos"}


class PipeStep(Strict):
    type: Literal["TrainPipeStep", "SearchPipeStep"]


class SearchAlgorithm(Strict):
    type: Literal["SpNasS", "SpNasP"]
    max_sample: int = Field(20, ge=1, description="candidates to evaluate in this step")
    objective_keys: list[str] = Field(
        ["mAP", "params"], description="Pareto objectives; the first maximised one is the score"
    )
    num_mutate: int = Field(3, ge=1, description="SpNasS: at most this many operations per child")
    add_stage_ratio: float = Field(0.05, ge=0.0, le=1.0)
    expend_ratio: float = Field(0.3, ge=0.0, le=1.0, description="probability of an expand")
    max_stages: int = Field(6, ge=1, description="SpNasS: most code stages ('-' groups)")
    min_blocks: int = Field(8, ge=1)
    max_blocks: int = Field(60, ge=1)
    max_blocks_per_level: int = Field(3, ge=1, description="SpNasP: most parallel blocks/level")

    @field_validator("objective_keys")
    @classmethod
    def _objectives(cls, keys: list[str]) -> list[str]:
        return check_objectives(keys)


class Hyperparameter(Strict):
    key: Literal["network.backbone.code", "network.neck.code"]
    type: Literal["CATEGORY"] = "CATEGORY"
    range: list[Any] = Field(min_length=1)


class SearchSpaceSection(Strict):
    type: Literal["SearchSpace"] = "SearchSpace"
    hyperparameters: list[Hyperparameter] = []


class BackboneDesc(Strict):
    type: Literal["SerialBackbone"] = "SerialBackbone"


class NeckDesc(Strict):
    type: Literal["ParallelFPN", "FPN"] = "ParallelFPN"


class ModelDesc(Strict):
    type: Literal["FasterRCNN", "RetinaNet", "FCOS"] | None = Field(
        None, description="the detector (default: model.detector)"
    )
    convert_pretrained: bool = Field(
        False, description="pretrained_model_file is a torchvision fasterrcnn_resnet50_fpn file"
    )
    freeze_swap_keys: bool = Field(False, description="freeze parameters inherited from parent")
    backbone: BackboneDesc = Field(default_factory=BackboneDesc)
    neck: NeckDesc | None = None


class StepModel(Strict):
    pretrained_model_file: str | None = None
    model_desc: ModelDesc = Field(default_factory=ModelDesc)


class TrainerSection(Strict):
    type: Literal["Trainer"] = "Trainer"
    callbacks: str | list[str] | None = None
    epochs: int | None = Field(None, ge=1, description="epochs of this step (default: search's)")


class Step(Strict):
    pipe_step: PipeStep
    search_algorithm: SearchAlgorithm | None = None
    search_space: SearchSpaceSection | None = None
    model: StepModel = Field(default_factory=StepModel)
    models_folder: str | None = None
    trainer: TrainerSection = Field(default_factory=TrainerSection)

    def hyperparameter(self, key: str) -> list[Any] | None:
        """The ``range`` of ``key`` in this step's search space, if given."""
        space = self.search_space or SearchSpaceSection()
        return next((h.range for h in space.hyperparameters if h.key == key), None)


class Constraints(Strict):
    """Resource limits checked before a candidate is trained (whole detector, ``input_size``)."""

    max_params: int | None = Field(None, ge=1)
    max_flops: float | None = Field(None, gt=0, description="FLOPs (2 per multiply-add)")
    max_latency_ms: float | None = Field(None, gt=0, description="CPU latency, batch 1")


class SearchSettings(ExecutorSettings):
    epochs: int = Field(2, ge=1, description="training epochs of each candidate")
    constraints: Constraints = Field(default_factory=Constraints)
    base_width: int = Field(64, ge=8, description="SerialBackbone first-stage width")
    block: Literal["bottleneck", "basic", "resnext"] = "bottleneck"
    classification_data: Path | None = Field(
        None, description="ImageFolder root for reignition (digits: generated when missing)"
    )
    reignition_epochs: int = Field(3, ge=1)
    max_reignite: int = Field(2, ge=0, le=2, description="SP-NAS reignites at most twice")
    fully_train_epochs: int | None = Field(None, ge=1, description="default: train.epochs")


BACKBONES = (SerialBackboneSpec,)
NECKS = (ParallelFPNNeck,)
Backbone = spec_union((TorchvisionBackbone, *BACKBONES))
Neck = spec_union((FPNNeck, *NECKS))


class SpNasRunConfig(RunConfig[Backbone, Neck]):  # type: ignore[valid-type]
    """An SP-NAS run: the training config the candidates share, ``search`` and the steps."""

    STEPS: ClassVar[tuple[str, ...]] = STEP_NAMES
    method: Literal["spnas"] = Field("spnas", description="the search method of this run config")
    search: SearchSettings = Field(default_factory=SearchSettings)
    fine_tune: Step | None = None
    serial: Step | None = None
    reignition: Step | None = None
    parallel: Step | None = None
    fully_train: Step | None = None

    @model_validator(mode="after")
    def _spnas(self) -> SpNasRunConfig:
        kinds = {"serial": "SearchPipeStep", "parallel": "SearchPipeStep"}
        for name in self.steps:
            step, kind = getattr(self, name), kinds.get(name, "TrainPipeStep")
            if step.pipe_step.type != kind:
                raise ValueError(f"{name}.pipe_step.type: {name} is a {kind}")
            algo = step.search_algorithm
            wanted = {"serial": "SpNasS", "parallel": "SpNasP"}.get(name)
            if wanted and (algo is None or algo.type != wanted):
                raise ValueError(f"{name}.search_algorithm.type: {name} needs {wanted}")
            if not wanted and algo is not None:
                raise ValueError(f"{name}.search_algorithm: {name} trains, it does not search")
        if (
            "reignition" in self.steps
            and self.search.classification_data is None
            and self.data.format != "digits"
        ):
            raise ValueError(
                "search.classification_data: reignition re-pretrains on a classification set "
                "(an ImageFolder with train/ and val/); set it for your data (a digits set is "
                "generated only for the bundled digits)"
            )
        return self

    @property
    def primary_metric(self) -> str:
        """The metric that ranks candidates: the first maximised objective of the search steps."""
        for name in self.steps:
            algo = getattr(self, name).search_algorithm
            if algo is not None:
                return primary_metric(algo.objective_keys)
        return "mAP"

    def ignored_keys(self) -> list[tuple[str, str]]:
        """Seed (Vega) keys this run accepts but does not use: (key, why), warned once a run."""
        out = []
        for name in self.steps:
            step = getattr(self, name)
            callbacks = step.trainer.callbacks
            if callbacks and not (name == "reignition" and callbacks == "ReignitionCallback"):
                out.append((f"{name}.trainer.callbacks", "nasdet's steps bring their own"))
            desc = step.model.model_desc
            if desc.neck is not None:
                out.append((f"{name}.model.model_desc.neck", "the parallel step sets the neck"))
            if name != "fine_tune" and step.model.pretrained_model_file:
                out.append(
                    (
                        f"{name}.model.pretrained_model_file",
                        "steps start from the previous step's records (use models_folder to "
                        "start from another run)",
                    )
                )
            space = step.search_space
            for hp in space.hyperparameters if space else []:
                if len(hp.range) > 1:
                    out.append(
                        (
                            f"{name}.search_space.hyperparameters[{hp.key}].range[1:]",
                            "the search starts from the first value",
                        )
                    )
        return out


def substitute(path: str | None, out_dir: Path) -> Path | None:
    """Replace ``{local_base_path}`` with the run directory."""
    return None if path is None else Path(path.replace("{local_base_path}", str(out_dir)))


TrainConfig = Config[Backbone, Neck]  # a candidate's training config
Model = ModelConfig[Backbone, Neck]  # a candidate's model section
