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

from nasdet.config import Config, Strict, parse_config, read_yaml
from nasdet.errors import ConfigError

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
    method: Literal["spnas"] = Field("spnas", description="the search method of this run config")
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
        return _steps(self, STEP_NAMES)


def _steps(cfg: Any, names: tuple[str, ...]) -> list[str]:
    """``cfg.pipeline`` when given, else the steps of ``names`` that have a section."""
    if cfg.pipeline is not None:
        return list(cfg.pipeline)
    return [n for n in names if getattr(cfg, n) is not None]


def load_run_config(path: str | Path) -> RunConfig | DetNASRunConfig:
    """Read and validate a run config (``method: spnas``, the default, or ``method: detnas``);
    :class:`ConfigError` (one line) on any mistake."""
    path = Path(path)
    raw = read_yaml(path)
    method = raw.get("method", "spnas")
    if method == "detnas":
        return parse_config(raw, source=str(path), schema=DetNASRunConfig)
    if method != "spnas":
        raise ConfigError(f"{path}: method: unknown method {method!r} — expected spnas or detnas")
    return parse_config(raw, source=str(path), schema=RunConfig)


# ----------------------------------------------------------------------------- DetNAS
DETNAS_STEPS = ("supernet_pretrain", "supernet_train", "evolution_search", "subnet_train")


class Limits(Strict):
    """Resource limits of one part of the model (at ``constraints.input_size``)."""

    max_params: int | None = Field(None, ge=1)
    max_flops: float | None = Field(None, gt=0, description="FLOPs (2 per multiply-add)")
    max_latency_ms: float | None = Field(None, gt=0, description="median latency, batch 1, CPU")

    @property
    def given(self) -> bool:
        return any(v is not None for v in (self.max_params, self.max_flops, self.max_latency_ms))


class DetNASConstraints(Strict):
    input_size: int | None = Field(
        None,
        ge=16,
        description="square input size the FLOPs/latency limits refer to (default: model.min_size)",
    )
    backbone: Limits = Field(default_factory=Limits)
    detector: Limits = Field(default_factory=Limits)


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
    """Step 2: the supernet inside the detector on the detection data (SPOS sampling)."""

    epochs: int | None = Field(None, ge=1, description="default: train.epochs")


class EvolutionSearch(Strict):
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
    constraints: DetNASConstraints = Field(default_factory=DetNASConstraints)
    objective_keys: list[str] = Field(
        ["mAP", "backbone_flops"], description="the Pareto front reported (score: the first)"
    )
    executor: Literal["inprocess", "ray"] = "inprocess"
    address: str | None = Field(None, description="Ray cluster address (None: local instance)")
    workers: int | None = Field(None, ge=1, description="candidates scored at once")
    gpus_per_worker: float = Field(0.0, ge=0.0)


class SubnetTrain(Strict):
    """Steps 4-5: retrain the exported subnet (optional classification pre-training, then
    detection training from scratch) and, with ``baseline``, the hand-crafted ShuffleNetV2
    (every block 3x3) of the same widths with the same budget."""

    genotype: str | None = Field(None, description="train this code instead of the best found")
    pretrain_epochs: int = Field(0, ge=0, description="classification epochs first (0: none)")
    epochs: int | None = Field(None, ge=1, description="detection epochs (default train.epochs)")
    baseline: bool = Field(True, description="also train the hand-crafted ShuffleNetV2")


class DetNASRunConfig(Config):
    """A DetNAS run: ``model.backbone.name: shufflenet_supernet`` and the steps below."""

    method: Literal["detnas"]
    pipeline: list[Literal[DETNAS_STEPS]] | None = Field(  # type: ignore[valid-type]
        None, description="steps to run, in order (default: every step section given)"
    )
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
        for name in self.steps:
            if getattr(self, name) is None:
                raise ValueError(f"pipeline names step '{name}' but the config has no {name}:")
        return self

    @property
    def steps(self) -> list[str]:
        """The steps to run, in order."""
        return _steps(self, DETNAS_STEPS)


def substitute(path: str | None, out_dir: Path) -> Path | None:
    """Replace ``{local_base_path}`` with the run directory."""
    return None if path is None else Path(path.replace("{local_base_path}", str(out_dir)))
