"""Configuration of a search pipeline (`nasdet run CONFIG --out DIR`).

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
from typing import Any, Literal

from pydantic import Field, model_validator

from nasdet.config import Config, Strict, load_config

STEP_NAMES = ("fine_tune", "serial", "reignition", "parallel", "fully_train")
DETECTORS = {"FasterRCNN": "fasterrcnn", "RetinaNet": "retinanet", "FCOS": "fcos"}


class PipeStep(Strict):
    type: Literal["TrainPipeStep", "SearchPipeStep"]


class SearchAlgorithm(Strict):
    type: Literal["SpNasS", "SpNasP"]
    max_sample: int = Field(20, ge=1, description="candidates to evaluate in this step")
    objective_keys: list[str] = ["mAP", "params"]
    num_mutate: int = Field(3, ge=1, description="SpNasS: at most this many operations per child")
    add_stage_ratio: float = Field(0.05, ge=0.0, le=1.0)
    expend_ratio: float = Field(0.3, ge=0.0, le=1.0, description="probability of an expand")
    max_stages: int = Field(6, ge=1, description="SpNasS: most code stages ('-' groups)")
    min_blocks: int = Field(8, ge=1)
    max_blocks: int = Field(60, ge=1)
    max_blocks_per_level: int = Field(3, ge=1, description="SpNasP: most parallel blocks/level")


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


class SearchSettings(Strict):
    epochs: int = Field(2, ge=1, description="training epochs of each candidate")
    executor: Literal["inprocess", "ray"] = "inprocess"
    address: str | None = Field(None, description="Ray cluster address (None: local instance)")
    workers: int | None = Field(None, ge=1, description="candidates evaluated at once")
    gpus_per_worker: float = Field(0.0, ge=0.0)
    constraints: Constraints = Field(default_factory=Constraints)
    base_width: int = Field(64, ge=8, description="SerialBackbone first-stage width")
    block: Literal["bottleneck", "basic", "resnext"] = "bottleneck"
    classification_data: Path | None = Field(
        None, description="ImageFolder root for reignition (digits: generated when missing)"
    )
    reignition_epochs: int = Field(3, ge=1)
    max_reignite: int = Field(2, ge=0, le=2, description="SP-NAS reignites at most twice")
    fully_train_epochs: int | None = Field(None, ge=1, description="default: train.epochs")


class RunConfig(Config):
    search: SearchSettings = Field(default_factory=SearchSettings)
    pipeline: list[Literal[STEP_NAMES]] | None = Field(  # type: ignore[valid-type]
        None, description="steps to run, in order (default: every step section given)"
    )
    fine_tune: Step | None = None
    serial: Step | None = None
    reignition: Step | None = None
    parallel: Step | None = None
    fully_train: Step | None = None

    @model_validator(mode="after")
    def _steps_exist(self) -> RunConfig:
        for name in self.steps:
            if getattr(self, name) is None:
                raise ValueError(f"pipeline names step '{name}' but the config has no {name}:")
        return self

    @property
    def steps(self) -> list[str]:
        """The steps to run, in order."""
        if self.pipeline is not None:
            return list(self.pipeline)
        return [n for n in STEP_NAMES if getattr(self, n) is not None]


def load_run_config(path: str | Path) -> RunConfig:
    """Read and validate a run config; :class:`ConfigError` (one line) on any mistake."""
    return load_config(path, RunConfig)


def substitute(path: str | None, out_dir: Path) -> Path | None:
    """Replace ``{local_base_path}`` with the run directory."""
    return None if path is None else Path(path.replace("{local_base_path}", str(out_dir)))
