"""YAML configuration, validated by pydantic.

``load_config(path, schema)`` returns a validated config; any mistake (unknown key, wrong type,
missing file) raises :class:`~nasdet.errors.ConfigError` with one line naming the file, the key
path and what is expected. Relative paths in a config are relative to the directory nasdet is run
from.

The model section is generic: ``model.backbone`` and ``model.neck`` are unions of spec classes
told apart by ``name`` (:func:`spec_union`). This module defines the torchvision backbones and the
FPN; each method adds its own specs (its ``parts.py``), and :mod:`nasdet.methods` forms the union
of all of them (``nasdet.methods.TrainConfig``, ``nasdet.methods.Model``). Each spec translates
itself into its constructor's keyword arguments (``build``); only specs, this module and
:mod:`nasdet.build` know the config's shape: the builders they call take modules and arguments.
"""

from __future__ import annotations

import typing
from abc import abstractmethod
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, ClassVar, Generic, Literal, TypeVar

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    Tag,
    ValidationError,
    model_validator,
)

from nasdet._config_errors import describe_error
from nasdet.errors import ConfigError

if TYPE_CHECKING:
    from torch import nn


class Strict(BaseModel):
    """Base of every config section: unknown keys are errors."""

    model_config = ConfigDict(extra="forbid", frozen=True)


# ----------------------------------------------------------------------------- data
class DataCommon(Strict):
    search_fraction: float = Field(
        0.0, ge=0.0, lt=1.0, description="portion of train held out as the search-validation split"
    )
    hflip: float = Field(0.0, ge=0.0, le=1.0, description="horizontal flip probability")
    num_workers: int = Field(0, ge=0)


class DigitsData(DataCommon):
    """The bundled digits set, generated into ``root`` when it is not there yet."""

    format: Literal["digits"] = "digits"
    root: Path = Path("data/digits")
    train: int = Field(3000, ge=1)
    val: int = Field(500, ge=1)
    size: int = Field(128, ge=32)
    seed: int = 0


class CocoData(DataCommon):
    """COCO format: an instances JSON and an image folder per split."""

    format: Literal["coco"]
    train_ann: Path
    train_images: Path
    val_ann: Path
    val_images: Path


class VocData(DataCommon):
    """Pascal VOC layout (Annotations/, JPEGImages/, ImageSets/Main/<set>.txt)."""

    format: Literal["voc"]
    root: Path
    train_set: str = "train"
    val_set: str = "val"
    classes: list[str] | None = None


DATA_FORMATS: dict[str, type[DataCommon]] = {"digits": DigitsData, "coco": CocoData, "voc": VocData}


def _data_format(v: Any) -> str:
    return (v.get("format", "digits") if isinstance(v, dict) else getattr(v, "format", "")) or ""


DataConfig = Annotated[
    Annotated[DigitsData, Tag("digits")]
    | Annotated[CocoData, Tag("coco")]
    | Annotated[VocData, Tag("voc")],
    Discriminator(_data_format),
]


# ----------------------------------------------------------------------------- model
class BackboneSpec(Strict):
    """Base of every backbone section. A subclass declares ``name`` as a ``Literal`` of the
    names it builds and implements :meth:`build`; the ``model.backbone`` field is a union of
    subclasses told apart by ``name`` (see :func:`spec_union`), so a key that does not apply to
    the named backbone is an error, not ignored."""

    levels: list[int] | None = Field(
        None, description="feature levels (stride 2**level); default 3,4,5 (serial: all from 3)"
    )
    weights: Path | None = Field(
        None, description="a torchvision classification state dict to start the backbone from"
    )

    @abstractmethod
    def build(self) -> nn.Module:
        """The backbone body (nasdet's backbone contract: ``feature_info``, ordered levels)."""

    def load_pretrained(self, body: nn.Module) -> Any:
        """Load a peer's checkpoint the section names into a built body (e.g. OFA's
        ``pretrained_path``); nothing by default. :func:`nasdet.build.build_backbone` calls it
        before ``weights``, only when weights are loaded (a model file rebuilds without it)."""
        return None

    def finish_detector(self, detector: nn.Module) -> None:
        """Change, in place, the detector built around this backbone (e.g. the latency space's
        searchable head convs); nothing by default. :func:`nasdet.build.build_detector` calls it
        last, before any weights are loaded; a ``ValueError`` becomes a one-line ConfigError."""
        return None


class SupernetSpec(BackboneSpec):
    """A backbone section that builds a weight-sharing supernet (the supernet protocol of
    :mod:`nasdet.search.supernet`): it parses genotypes and names the static subnet's section."""

    @abstractmethod
    def parse_genotype(self, text: str) -> Any:
        """The genotype ``text`` names (a code string, or a file's text the search wrote);
        ``ValueError`` naming what is wrong."""

    @abstractmethod
    def subnet(self, genotype: Any) -> BackboneSpec:
        """The backbone section of the standalone subnet ``genotype``."""

    def subnet_model(self, arch: ModelConfig, genotype: Any) -> ModelConfig:
        """The ``model`` section of the standalone detector of ``genotype``, from the supernet
        detector's ``arch``: its backbone replaced by :meth:`subnet` (a space that also searches
        the head, as the latency method's, sets ``head_skip`` too)."""
        return arch.model_copy(update={"backbone": self.subnet(genotype)})


class TorchvisionBackbone(BackboneSpec):
    """torchvision's classification networks as feature backbones (``weights=None``)."""

    name: Literal[
        "resnet18",
        "resnet50",
        "mobilenet_v2",
        "mobilenet_v3_large",
        "mobilenet_v3_small",
        "shufflenet_v2",
    ] = "resnet18"
    width_mult: float = Field(1.0, gt=0.0, le=4.0, description="channel width multiplier")
    last_conv: bool = Field(
        True,
        description="mobilenet_v2 only: c5 is the final 1x1 conv (1280 channels); false: c5 is "
        "the 320-channel block, as MMDetection's MobileNetV2 (out_indices 2, 4, 6)",
    )

    @model_validator(mode="after")
    def _last_conv(self) -> TorchvisionBackbone:
        if not self.last_conv and self.name != "mobilenet_v2":
            raise ValueError(f"last_conv is for mobilenet_v2, not {self.name}")
        return self

    def build(self) -> nn.Module:
        from nasdet.models.baselines import BASELINES

        extra = {} if self.last_conv else {"last_conv": False}
        return BASELINES[self.name](
            width_mult=self.width_mult, levels=tuple(self.levels or (3, 4, 5)), **extra
        )


class DarknetBackbone(BackboneSpec):
    """Darknet-53, YOLOv3's backbone (:mod:`nasdet.models.darknet`, random weights)."""

    name: Literal["darknet53"] = "darknet53"
    width_mult: float = Field(1.0, gt=0.0, le=4.0, description="channel width multiplier")

    def build(self) -> nn.Module:
        from nasdet.models.darknet import darknet53

        return darknet53(width_mult=self.width_mult, levels=tuple(self.levels or (3, 4, 5)))


class NeckSpec(Strict):
    """Base of every neck section (a union told apart by ``name``, like backbones)."""

    @abstractmethod
    def build(self, body: nn.Module, channels: int, extra_levels: str) -> nn.Module:
        """The neck around ``body``: an :class:`~nasdet.models.backbone.FPNBackbone`."""


class FPNNeck(NeckSpec):
    """torchvision's feature pyramid network."""

    name: Literal["fpn"] = "fpn"

    def build(self, body: nn.Module, channels: int, extra_levels: str) -> nn.Module:
        from nasdet.models.backbone import FPNBackbone

        return FPNBackbone(body, channels, extra_levels)


def spec_names(spec: type[BaseModel]) -> tuple[str, ...]:
    """The names a spec class answers to (the values of its ``name`` Literal)."""
    return tuple(typing.get_args(spec.model_fields["name"].annotation))


def spec_union(specs: Sequence[type[BaseModel]]) -> Any:
    """A pydantic type accepting any of ``specs``, chosen by the ``name`` key (default: the
    first name of the first spec), for ``ModelConfig[...]``."""
    tag_of = {n: spec.__name__ for spec in specs for n in spec_names(spec)}
    default = spec_names(specs[0])[0]

    def tag(v: Any) -> str:
        name = v.get("name", default) if isinstance(v, dict) else getattr(v, "name", default)
        return tag_of.get(name, str(name))

    members = tuple(Annotated[s, Tag(s.__name__)] for s in specs)
    return Annotated[typing.Union[members], Discriminator(tag)]  # noqa: UP007


B = TypeVar("B", bound=BackboneSpec)
N = TypeVar("N", bound=NeckSpec)

# fields that apply to some detectors only: a value other than the default elsewhere is an error
_DETECTOR_FIELDS: dict[str, tuple[str, ...]] = {
    "representation_size": ("fasterrcnn",),
    "rpn_batch_size_per_image": ("fasterrcnn",),
    "box_batch_size_per_image": ("fasterrcnn",),
    "rpn_pre_nms_top_n": ("fasterrcnn",),
    "rpn_post_nms_top_n": ("fasterrcnn",),
    "fcos_num_convs": ("fcos",),
    "aspect_ratios": ("fasterrcnn", "retinanet"),
    "anchor_base": ("fasterrcnn", "retinanet", "fcos"),
    "fpn_channels": ("fasterrcnn", "retinanet", "fcos"),
    "extra_levels": ("fasterrcnn", "retinanet", "fcos"),
    "neck": ("fasterrcnn", "retinanet", "fcos"),
    "ssd_extra_channels": ("ssd", "ssdlite"),
    "ssd_min_ratio": ("ssd", "ssdlite"),
    "ssd_max_ratio": ("ssd", "ssdlite"),
    "yolov3_channels": ("yolov3",),
    "head_skip": ("retinanet", "fcos"),
}

#: convs per head tower of the detectors with conv towers (fcos: ``fcos_num_convs``)
HEAD_TOWER_CONVS = {"retinanet": 4}


class ModelConfig(Strict, Generic[B, N]):
    """The detector: ``detector`` on ``backbone`` (a spec chosen by ``name``) with ``neck``."""

    detector: Literal["fasterrcnn", "retinanet", "fcos", "ssd", "ssdlite", "yolov3"] = "fcos"
    backbone: B = Field({"name": "resnet18"}, validate_default=True)  # type: ignore[assignment]
    fpn_channels: int = Field(64, ge=8, description="FPN width (not used by SSD, YOLOv3)")
    neck: N = Field({"name": "fpn"}, validate_default=True)  # type: ignore[assignment]
    extra_levels: Literal["none", "pool", "p6p7"] | None = Field(
        None, description="levels added after the FPN; default: pool (Faster R-CNN), none"
    )
    ssd_extra_channels: list[int] = Field([], description="SSD extra level widths")
    min_size: int = Field(
        128,
        ge=16,
        description="images are resized so the short side is this (SSD, YOLOv3: to this square)",
    )
    max_size: int = Field(128, ge=16, description="long-side limit (not used by SSD, YOLOv3)")
    anchor_base: float | None = Field(
        None, gt=0.0, description="anchor size = anchor_base * stride (default per detector)"
    )
    aspect_ratios: list[float] = [0.5, 1.0, 2.0]
    representation_size: int = Field(256, ge=8, description="Faster R-CNN box head width")
    rpn_batch_size_per_image: int = Field(128, ge=1)
    box_batch_size_per_image: int = Field(128, ge=1)
    rpn_pre_nms_top_n: tuple[int, int] = (600, 300)
    rpn_post_nms_top_n: tuple[int, int] = (300, 100)
    fcos_num_convs: int = Field(2, ge=1)
    yolov3_channels: list[Annotated[int, Field(ge=1)]] | None = Field(
        None,
        min_length=3,
        max_length=3,
        description="YOLOv3 neck and head widths, fine to coarse (default: darknet's, half of "
        "each backbone level's width in the neck, twice that in the head; MMDetection's "
        "yolov3_mobilenetv2: [96, 96, 96])",
    )
    head_skip: list[int] | None = Field(
        None,
        description="retinanet, fcos: head tower convs replaced by identities, numbered "
        "classification tower 0..n-1 then regression tower n..2n-1 (a searched net's skips)",
    )
    ssd_min_ratio: float = Field(0.1, gt=0.0, lt=1.0)
    ssd_max_ratio: float = Field(0.6, gt=0.0, le=1.0)
    score_thresh: float = Field(0.05, ge=0.0, le=1.0)
    nms_thresh: float = Field(0.5, gt=0.0, le=1.0)
    detections_per_img: int = Field(100, ge=1)

    @model_validator(mode="before")
    @classmethod
    def _neck_shorthand(cls, data: Any) -> Any:
        """``neck: parallel_fpn`` + ``neck_code: 0-1-0`` (the flat form) as a neck section."""
        if not isinstance(data, dict) or not isinstance(data.get("neck", {}), str | type(None)):
            return data
        data = dict(data)
        neck = {"name": data.pop("neck", None) or "fpn"}
        if "neck_code" in data:
            code = data.pop("neck_code")
            if neck["name"] == "fpn" and code is not None:
                raise ValueError("neck_code is for neck: parallel_fpn, not fpn")
            if code is not None:
                neck["code"] = code
        data["neck"] = neck
        return data

    @model_validator(mode="after")
    def _detector_fields(self) -> ModelConfig:
        for key, detectors in _DETECTOR_FIELDS.items():
            if self.detector in detectors or key not in self.model_fields_set:
                continue
            default = type(self).model_fields[key].get_default(call_default_factory=True)
            value = getattr(self, key)
            if key == "neck":
                value, default = self.neck.model_dump(), {"name": "fpn"}
            if value != default:
                raise ValueError(
                    f"{key} is for detector {' or '.join(detectors)}, not {self.detector}"
                )
        return self

    @property
    def head_tower_convs(self) -> int:
        """Convs per head tower (retinanet: 4, fcos: ``fcos_num_convs``; 0: no conv towers)."""
        if self.detector == "fcos":
            return self.fcos_num_convs
        return HEAD_TOWER_CONVS.get(self.detector, 0)

    @model_validator(mode="after")
    def _head_skip(self) -> ModelConfig:
        skip, n = self.head_skip or [], self.head_tower_convs
        bad = next((i for i in skip if not 0 <= i < 2 * n), None)
        if bad is not None:
            raise ValueError(
                f"head_skip: {self.detector}'s head has convs 0..{2 * n - 1} (classification "
                f"tower 0..{n - 1}, regression tower {n}..{2 * n - 1}), got {bad}"
            )
        if len(set(skip)) != len(skip):
            raise ValueError(f"head_skip: an index is listed twice in {skip}")
        return self


# ----------------------------------------------------------------------------- training
class TrainConfig(Strict):
    epochs: int = Field(12, ge=1)
    batch_size: int = Field(16, ge=1)
    optimizer: Literal["sgd", "adamw"] = "sgd"
    lr: float = Field(0.02, gt=0.0)
    momentum: float = Field(0.9, ge=0.0, lt=1.0)
    weight_decay: float = Field(1e-4, ge=0.0)
    schedule: Literal["cosine", "cosine_restarts", "multistep", "constant"] = "cosine"
    milestones: list[int] = Field([], description="epochs where multistep multiplies lr by gamma")
    gamma: float = Field(0.1, gt=0.0)
    restart_epochs: int | None = Field(
        None,
        ge=1,
        description="cosine_restarts: epochs per cosine cycle (default: a method's, else the run)",
    )
    restart_mult: int = Field(
        1, ge=1, description="cosine_restarts: each cycle this many times the one before (T_mult)"
    )
    cosine_epochs: int | None = Field(
        None,
        ge=1,
        description="cosine: epochs from lr down to min_lr (torch's T_max; after them the lr "
        "rises again, as torch's CosineAnnealingLR does); default: the rest of the run",
    )
    min_lr: float = Field(
        0.0, ge=0.0, description="cosine, cosine_restarts: the lowest lr (torch's eta_min)"
    )
    warmup_iters: int = Field(100, ge=0)
    warmup_factor: float = Field(0.001, gt=0.0, le=1.0)
    grad_clip: float | None = Field(10.0, gt=0.0, description="max gradient L2 norm; null = off")
    amp: bool = Field(True, description="mixed precision (CUDA only)")
    channels_last: bool = Field(True, description="channels_last memory format (CUDA only)")
    device: Literal["auto", "cpu", "cuda"] = "auto"
    eval_every: int = Field(0, ge=0, description="evaluate every N epochs (0: only at the end)")
    checkpoint_every: int = Field(
        0,
        ge=0,
        description="also checkpoint every N optimizer steps inside an epoch (0: after each "
        "epoch only); a kill then loses at most N steps",
    )
    tensorboard: bool = True

    @model_validator(mode="after")
    def _restart_epochs(self) -> TrainConfig:
        if self.restart_epochs is not None and self.schedule != "cosine_restarts":
            raise ValueError(f"restart_epochs is for schedule cosine_restarts, not {self.schedule}")
        if self.restart_mult != 1 and self.schedule != "cosine_restarts":
            raise ValueError(f"restart_mult is for schedule cosine_restarts, not {self.schedule}")
        if self.cosine_epochs is not None and self.schedule != "cosine":
            raise ValueError(f"cosine_epochs is for schedule cosine, not {self.schedule}")
        if self.min_lr and self.schedule not in ("cosine", "cosine_restarts"):
            raise ValueError(
                f"min_lr is for schedules cosine and cosine_restarts, not {self.schedule}"
            )
        if self.min_lr >= self.lr:
            raise ValueError(f"min_lr ({self.min_lr}) must be below lr ({self.lr})")
        return self


class EvalConfig(Strict):
    backend: Literal["faster", "pycocotools"] = "faster"
    batch_size: int = Field(16, ge=1)
    cache_mib: int = Field(
        512,
        ge=0,
        description="a search's scoring process keeps up to this many MiB of decoded images in "
        "memory per split it reads for every candidate (search / val, BN calibration); 0: none",
    )


class Config(Strict, Generic[B, N]):
    """A training config: what ``nasdet train`` reads, and the part of every run config that
    candidates share. Parametrised by the backbone and neck specs it accepts: the full set is
    ``nasdet.methods.TrainConfig``."""

    seed: int = 0
    data: DataConfig = Field(default_factory=DigitsData)
    model: ModelConfig[B, N] = Field({}, validate_default=True)  # type: ignore[assignment]
    train: TrainConfig = Field(default_factory=TrainConfig)
    eval: EvalConfig = Field(default_factory=EvalConfig)

    def later_keys(self) -> dict[str, dict[str, Any]]:
        """Keys added after checkpoints were first written, per section (a dotted path into the
        config), each with the value at which it behaves as before it existed. At that value
        :func:`nasdet.training.config_fingerprint` leaves a key out, so a checkpoint written
        before the key existed still resumes. A method adds its own (``super()`` first); a key
        whose default changes what runs for some configs belongs here only for those."""
        return {
            "train": {"restart_mult": 1, "cosine_epochs": None, "min_lr": 0.0},
            "model": {"head_skip": None},
        }


class RunConfig(Config[B, N], Generic[B, N]):
    """Base of every method's run config: a training config plus ``method``, ``pipeline`` and
    one section per step (declared by the subclass; ``STEPS`` lists them in order)."""

    STEPS: ClassVar[tuple[str, ...]] = ()
    method: str
    pipeline: list[str] | None = Field(
        None, description="steps to run, in order (default: every step section given)"
    )

    @model_validator(mode="after")
    def _pipeline(self) -> RunConfig:
        for name in self.pipeline or []:
            if name not in self.STEPS:
                raise ValueError(
                    f"pipeline: unknown step {name!r} — {self.method} has {', '.join(self.STEPS)}"
                )
        for name in self.steps:
            if getattr(self, name, None) is None:
                raise ValueError(f"pipeline names step '{name}' but the config has no {name}:")
        return self

    @property
    def steps(self) -> list[str]:
        """The steps to run, in order: ``pipeline`` when given, else every step with a section."""
        if self.pipeline is not None:
            return list(self.pipeline)
        return [n for n in self.STEPS if getattr(self, n, None) is not None]

    def cost_model(self) -> ModelConfig:
        """The model section ``nasdet cost`` measures for this run config (a method may name
        another than ``model``, e.g. SP-NAS's start architecture)."""
        return self.model

    def base(self) -> dict[str, Any]:
        """The training part (seed, data, model, train, eval) as plain data."""
        return self.model_dump(mode="json", include={"seed", "data", "model", "train", "eval"})


BASE_SPECS: tuple[type[BackboneSpec], ...] = (TorchvisionBackbone, DarknetBackbone)
BASE_NECKS: tuple[type[NeckSpec], ...] = (FPNNeck,)
BaseConfig = Config[spec_union(BASE_SPECS), spec_union(BASE_NECKS)]  # type: ignore[misc]


# ----------------------------------------------------------------------------- loading
C = TypeVar("C", bound=BaseModel)


def load_config(path: str | Path, schema: type[C] | None = None) -> C:
    """Read and validate a YAML config against ``schema`` (``nasdet.methods.TrainConfig`` takes
    every backbone; the default, :data:`BaseConfig`, torchvision's only); :class:`ConfigError`
    (one line) on any mistake."""
    return parse_config(read_yaml(path), source=str(path), schema=schema)


def read_yaml(path: str | Path) -> dict[str, Any]:
    """The top-level mapping of a YAML config file; :class:`ConfigError` (one line) otherwise."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: config file not found — check the path")
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark is not None else ""
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise ConfigError(f"{path}:{where}: not valid YAML ({problem})") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of sections (data, model, ...)")
    return raw


def parse_config(
    raw: dict[str, Any], *, source: str = "<config>", schema: type[C] | None = None
) -> C:
    """Validate a config dict against ``schema`` (default :data:`BaseConfig`); errors name
    ``source`` and the key path."""
    schema = schema or BaseConfig  # type: ignore[assignment]
    try:
        return schema.model_validate(raw)
    except ValidationError as e:
        raise ConfigError(f"{source}: {describe_error(e, schema)}") from None
