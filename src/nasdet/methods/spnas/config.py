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
from nasdet.methods.spnas.space import SerialSpace
from nasdet.search.constraints import Constraints
from nasdet.search.executors import ExecutorSettings
from nasdet.search.pareto import check_objectives, primary_metric
from nasdet.search.selection import Selection

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
    with_train: bool = Field(
        True, description="fine_tune: false scores the start as imported, without training"
    )


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


class SearchSettings(ExecutorSettings):
    epochs: int = Field(2, ge=1, description="training epochs of each candidate")
    constraints: Constraints = Field(default_factory=Constraints)
    selection: Selection = Field(
        default_factory=Selection, description="how the winner is picked from the last front"
    )
    base_width: int = Field(64, ge=8, description="SerialBackbone first-stage width")
    block: Literal["bottleneck", "basic", "resnext"] = "bottleneck"
    classification_data: Path | None = Field(
        None, description="ImageFolder root for reignition (digits: generated when missing)"
    )
    reignition_epochs: int = Field(3, ge=1)
    reignition_lr: float = Field(0.05, gt=0.0, description="SGD lr of the classification training")
    reignition_batch_size: int = Field(64, ge=1)
    reignition_image_size: int = Field(32, ge=8, description="classification input side, px")
    max_reignite: int = Field(2, ge=0, le=2, description="SP-NAS reignites at most twice")
    fully_train_epochs: int | None = Field(None, ge=1, description="default: train.epochs")
    fully_train_baseline: bool = Field(
        False,
        description="fully_train also trains the start with the winner's detection budget "
        "(its search epochs since fine_tune plus the fully_train epochs), for an equal-budget "
        "verdict",
    )


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
        try:
            self.start_model()
        except ValueError as e:
            raise ValueError(f"serial.search_space: the start code does not fit: {e}") from None
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

    def start_model(self) -> Model:
        """The model section of the starting serial network: the serial step's first
        ``network.backbone.code`` (default ResNet-50's ``111-2111-211111-211``) with
        ``search.block`` / ``search.base_width``, on the detector ``model_desc.type`` names (else
        ``model.detector``), the rest of ``model`` as given."""
        codes = (self.serial.hyperparameter("network.backbone.code") if self.serial else None) or [
            "111-2111-211111-211"
        ]
        code = str(codes[0])
        if self.serial is not None:
            code = str(SerialSpace(block=self.search.block).check(code))
        backbone = SerialBackboneSpec(
            code=code,
            block=self.search.block,
            base_width=self.search.base_width,
            weights=self.model.backbone.weights,
            frozen_bn=getattr(self.model.backbone, "frozen_bn", False),
        )
        desc = next(
            (
                getattr(self, n).model.model_desc
                for n in self.steps
                if getattr(self, n).model.model_desc.type
            ),
            None,
        )
        detector = DETECTORS[desc.type] if desc and desc.type else self.model.detector
        return self.model.model_copy(update={"backbone": backbone, "detector": detector})

    def cost_model(self) -> Model:
        """What ``nasdet cost`` measures for this run config: the start architecture."""
        return self.start_model()

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
        used = {"name", "weights", "frozen_bn"}
        for key in sorted(self.model.backbone.model_fields_set - used):
            why = "the start is the serial code with search.block and search.base_width"
            out.append((f"model.backbone.{key}", why))
        for name in self.steps:
            out += _ignored_in_step(name, getattr(self, name))
        return out


def _ignored_in_step(name: str, step: Step) -> list[tuple[str, str]]:
    out = []
    callbacks = step.trainer.callbacks
    if callbacks and not (
        name == "reignition" and callbacks in ("ReignitionCallback", ["ReignitionCallback"])
    ):
        out.append((f"{name}.trainer.callbacks", "nasdet's steps bring their own"))
    desc, model = step.model.model_desc, step.model
    if desc.neck is not None:
        out.append((f"{name}.model.model_desc.neck", "the parallel step sets the neck"))
    if desc.freeze_swap_keys and name != "serial":
        out.append((f"{name}.model.model_desc.freeze_swap_keys", "only the serial step freezes"))
    if desc.convert_pretrained and name != "fine_tune":
        out.append((f"{name}.model.model_desc.convert_pretrained", "only fine_tune converts"))
    if name != "fine_tune" and model.pretrained_model_file:
        why = "steps start from the previous step's records (models_folder: from another run)"
        out.append((f"{name}.model.pretrained_model_file", why))
    if name != "fine_tune" and not step.trainer.with_train:
        out.append((f"{name}.trainer.with_train", "only fine_tune can skip its training"))
    if name == "fine_tune" and step.models_folder:
        out.append(("fine_tune.models_folder", "fine_tune trains the start architecture"))
    space = step.search_space
    for hp in space.hyperparameters if space else []:
        where = f"{name}.search_space.hyperparameters[{hp.key}]"
        if hp.key == "network.neck.code":
            out.append((where, "the parallel step samples neck codes itself"))
        elif name != "serial":
            out.append((where, "only the serial step's backbone code is the start"))
        elif len(hp.range) > 1:
            out.append((f"{where}.range[1:]", "the search starts from the first value"))
    return out


def substitute(path: str | None, out_dir: Path) -> Path | None:
    """Replace ``{local_base_path}`` with the run directory."""
    return None if path is None else Path(path.replace("{local_base_path}", str(out_dir)))


TrainConfig = Config[Backbone, Neck]  # a candidate's training config
Model = ModelConfig[Backbone, Neck]  # a candidate's model section
