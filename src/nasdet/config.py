"""YAML configuration, validated by pydantic.

``load_config(path)`` returns a :class:`Config`; any mistake (unknown key, wrong type, missing file)
raises :class:`~nasdet.errors.ConfigError` with one line naming the file, the key path and what is
expected. Relative paths in a config are relative to the directory nasdet is run from.

Only this module and :mod:`nasdet.build` know the config's shape: the builders they call take
modules and keyword arguments.
"""

from __future__ import annotations

import difflib
import typing
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar

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

from nasdet.errors import ConfigError


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
class BackboneConfig(Strict):
    name: Literal[
        "resnet18",
        "resnet50",
        "mobilenet_v2",
        "mobilenet_v3_large",
        "mobilenet_v3_small",
        "shufflenet_v2",
        "serial",
        "shufflenet_nas",
        "shufflenet_supernet",
    ] = "resnet18"
    width_mult: float = Field(1.0, gt=0.0, le=4.0, description="baselines and shufflenet_*")
    levels: list[int] | None = Field(
        None, description="feature levels (stride 2**level); default 3,4,5 (serial: all from 3)"
    )
    weights: Path | None = Field(
        None, description="a torchvision classification state dict to start the backbone from"
    )
    code: str | None = Field(
        None,
        description="serial: block code, e.g. 111-2111-211111-211; shufflenet_nas: one choice "
        "(3, 5, 7 or x) per block, stages split by '-', e.g. 3573-5x77-33x3x357-7x33",
    )
    depths: list[int] | None = Field(
        None, description="shufflenet_supernet: blocks per stage (default 4, 4, 8, 4)"
    )
    widths: list[int] | None = Field(
        None,
        description="shufflenet_*: stage widths before width_mult (default 64, 160, 320, 640)",
    )
    block: Literal["bottleneck", "basic", "resnext"] = "bottleneck"
    base_width: int = Field(64, ge=1, description="serial: first-stage width")
    frozen_bn: bool = Field(False, description="serial: FrozenBatchNorm2d (torchvision's R-CNN)")

    @model_validator(mode="after")
    def _serial_code(self) -> BackboneConfig:
        if self.name == "serial":
            from nasdet.spaces.serial import SerialCode

            if self.code is None:
                raise ValueError("a serial backbone needs code (e.g. '111-2111-211111-211')")
            SerialCode.parse(self.code)
        elif self.name == "shufflenet_nas":
            from nasdet.spaces.shufflenet import ShuffleNetCode

            if self.code is None:
                raise ValueError(
                    "a shufflenet_nas backbone needs code (e.g. '3573-5x77-33x3x357-7x33')"
                )
            code = ShuffleNetCode.parse(self.code)
            if self.widths is not None and len(self.widths) != len(code.depths):
                raise ValueError(
                    f"widths has {len(self.widths)} stages, code has {len(code.depths)}"
                )
        elif self.code is not None:
            raise ValueError(f"code is for name: serial or shufflenet_nas, not {self.name}")
        if self.depths is not None and self.name != "shufflenet_supernet":
            raise ValueError(
                "depths is for name: shufflenet_supernet (a static net's code has them)"
            )
        if self.name == "shufflenet_supernet" and self.widths and self.depths:
            if len(self.widths) != len(self.depths):
                raise ValueError(f"widths has {len(self.widths)} stages, depths {len(self.depths)}")
        return self


class ModelConfig(Strict):
    detector: Literal["fasterrcnn", "retinanet", "fcos", "ssd", "ssdlite"] = "fcos"
    backbone: BackboneConfig = Field(default_factory=BackboneConfig)
    fpn_channels: int = Field(64, ge=8, description="FPN width (not used by SSD)")
    neck: Literal["fpn", "parallel_fpn"] = "fpn"
    neck_code: str | None = Field(None, description="parallel_fpn: blocks per level, e.g. 0-1-0")
    extra_levels: Literal["none", "pool", "p6p7"] | None = Field(
        None, description="levels added after the FPN; default: pool (Faster R-CNN), none"
    )
    ssd_extra_channels: list[int] = Field([], description="SSD extra level widths")
    min_size: int = Field(128, ge=16, description="images are resized so the short side is this")
    max_size: int = Field(128, ge=16)
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
    ssd_min_ratio: float = Field(0.1, gt=0.0, lt=1.0)
    ssd_max_ratio: float = Field(0.6, gt=0.0, le=1.0)
    score_thresh: float = Field(0.05, ge=0.0, le=1.0)
    nms_thresh: float = Field(0.5, gt=0.0, le=1.0)
    detections_per_img: int = Field(100, ge=1)


# ----------------------------------------------------------------------------- training
class TrainConfig(Strict):
    epochs: int = Field(12, ge=1)
    batch_size: int = Field(16, ge=1)
    optimizer: Literal["sgd", "adamw"] = "sgd"
    lr: float = Field(0.02, gt=0.0)
    momentum: float = Field(0.9, ge=0.0, lt=1.0)
    weight_decay: float = Field(1e-4, ge=0.0)
    schedule: Literal["cosine", "multistep", "constant"] = "cosine"
    milestones: list[int] = Field([], description="epochs where multistep multiplies lr by gamma")
    gamma: float = Field(0.1, gt=0.0)
    warmup_iters: int = Field(100, ge=0)
    warmup_factor: float = Field(0.001, gt=0.0, le=1.0)
    grad_clip: float | None = Field(10.0, gt=0.0, description="max gradient L2 norm; null = off")
    amp: bool = Field(True, description="mixed precision (CUDA only)")
    channels_last: bool = Field(True, description="channels_last memory format (CUDA only)")
    device: Literal["auto", "cpu", "cuda"] = "auto"
    eval_every: int = Field(0, ge=0, description="evaluate every N epochs (0: only at the end)")
    tensorboard: bool = True


class EvalConfig(Strict):
    backend: Literal["faster", "pycocotools"] = "faster"
    batch_size: int = Field(16, ge=1)


class Config(Strict):
    seed: int = 0
    data: DataConfig = Field(default_factory=DigitsData)
    model: ModelConfig = Field(default_factory=ModelConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    eval: EvalConfig = Field(default_factory=EvalConfig)


# ----------------------------------------------------------------------------- loading
C = TypeVar("C", bound=Config)


def load_config(path: str | Path, schema: type[C] = Config) -> C:  # type: ignore[assignment]
    """Read and validate a YAML config against ``schema`` (a :class:`Config` subclass);
    :class:`ConfigError` (one line) on any mistake."""
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
    raw: dict[str, Any],
    *,
    source: str = "<config>",
    schema: type[C] = Config,  # type: ignore[assignment]
) -> C:
    """Validate a config dict against ``schema``; errors name ``source`` and the key path."""
    try:
        return schema.model_validate(raw)
    except ValidationError as e:
        raise ConfigError(f"{source}: {_describe(e, schema)}") from None


def _describe(err: ValidationError, root: type[BaseModel]) -> str:
    """One line for the first error: key path, what is wrong, what is expected."""
    first = err.errors()[0]
    full = [str(p) for p in first["loc"]]
    loc = [p for p in full if p not in DATA_FORMATS]
    key = ".".join(loc) or "(top level)"
    if first["type"] == "union_tag_invalid":
        got = first["ctx"]["tag"]
        return f"{key}.format: unknown format {got!r} — expected one of {', '.join(DATA_FORMATS)}"
    if first["type"] == "extra_forbidden":
        known = _known_keys(root, full[:-1])
        close = difflib.get_close_matches(loc[-1], known, n=1)
        hint = f"did you mean '{close[0]}'?" if close else f"known keys: {', '.join(known)}"
        return f"{key}: unknown key — {hint}"
    if first["type"] == "missing":
        return f"{key}: required key is missing"
    got = first.get("input")
    shown = f" (got {got!r})" if not isinstance(got, dict | list) else ""
    return f"{key}: {first['msg']}{shown}"


def _known_keys(root: type[BaseModel], loc: list[str]) -> list[str]:
    """Field names of the section at ``loc`` (a pydantic error path, union tags included)."""
    model: Any = root
    for part in loc:
        if part in DATA_FORMATS:
            model = DATA_FORMATS[part]
            continue
        field = model.model_fields.get(part) if hasattr(model, "model_fields") else None
        if field is None:
            return []
        model = _section_type(field.annotation)
    return sorted(model.model_fields) if hasattr(model, "model_fields") else []


def _section_type(annotation: Any) -> Any:
    """The model class inside ``X | None`` / ``list[X]`` annotations (else the annotation)."""
    if hasattr(annotation, "model_fields"):
        return annotation
    for arg in typing.get_args(annotation):
        if hasattr(_section_type(arg), "model_fields"):
            return _section_type(arg)
    return annotation
