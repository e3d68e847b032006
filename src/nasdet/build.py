"""The one edge where a config becomes keyword arguments for the builders.

Everything inward (``nasdet.models``, ``nasdet.engine``) takes modules and plain arguments; only
this module reads :mod:`nasdet.config` objects to build them.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

from pydantic import ValidationError
from torch import nn
from torch.utils.data import Dataset, Subset

from nasdet.config import BackboneSpec, CocoData, Config, DataConfig, DigitsData, ModelConfig
from nasdet.data import (
    VOC_CLASSES,
    CachedSubset,
    CocoDetectionDataset,
    VOCDetectionDataset,
    eval_transforms,
    split_indices,
    train_transforms,
)
from nasdet.data import (
    ensure_digits as data_ensure_digits,
)
from nasdet.engine.train import StepHook, Trainer, make_optimizer, make_scheduler, resolve_device
from nasdet.errors import CheckpointError, ConfigError, DataError
from nasdet.models import detectors
from nasdet.models.backbone import ExtraLevelsBackbone
from nasdet.models.io import load_backbone_weights, load_state_dict_checked, read_model_file
from nasdet.models.yolov3 import STRIDES as YOLOV3_STRIDES
from nasdet.models.yolov3 import YOLOv3, YOLOv3Head, YOLOv3Neck

log = logging.getLogger(__name__)

# torchvision's default anchor size per stride for each detector (see nasdet.models.detectors).
DEFAULT_ANCHOR_BASE = {"fasterrcnn": 8.0, "retinanet": 4.0, "fcos": 1.0}
DEFAULT_EXTRA_LEVELS = {"fasterrcnn": "pool", "retinanet": "none", "fcos": "none"}


def build_backbone(cfg: BackboneSpec, *, load_weights: bool = True) -> nn.Module:
    """The backbone ``cfg`` names (levels ``c<l>``), with the weights the user names."""
    try:
        body = cfg.build()
    except ValueError as e:  # a structure the builder refuses: the key is the section's
        raise ConfigError(f"model.backbone ({cfg.name}): {e}") from None
    if load_weights:
        cfg.load_pretrained(body)
    if load_weights and cfg.weights is not None:
        load_backbone_weights(body, cfg.weights)
    return body


def build_detector(cfg: ModelConfig, num_classes: int, *, load_weights: bool = True) -> nn.Module:
    """The torchvision detector ``cfg`` describes, for ``num_classes`` (background included):
    its head tower convs ``head_skip`` replaced by identities, then finished by the backbone
    section (:meth:`~nasdet.config.BackboneSpec.finish_detector`)."""
    detector = _assemble(cfg, num_classes, load_weights)
    if cfg.head_skip is not None:
        try:
            detectors.skip_head_convs(detector.head, cfg.head_skip)
        except ValueError as e:
            raise ConfigError(f"model.head_skip: {e}") from None
    try:
        cfg.backbone.finish_detector(detector)
    except ValueError as e:
        raise ConfigError(f"model.backbone ({cfg.backbone.name}): {e}") from None
    return detector


def _assemble(cfg: ModelConfig, num_classes: int, load_weights: bool) -> nn.Module:
    body = build_backbone(cfg.backbone, load_weights=load_weights)
    common = dict(
        score_thresh=cfg.score_thresh,
        nms_thresh=cfg.nms_thresh,
        detections_per_img=cfg.detections_per_img,
    )
    if cfg.detector in ("ssd", "ssdlite"):
        backbone = ExtraLevelsBackbone(body, cfg.ssd_extra_channels)
        return detectors.ssd(
            backbone,
            num_classes,
            size=cfg.min_size,
            lite=cfg.detector == "ssdlite",
            min_ratio=cfg.ssd_min_ratio,
            max_ratio=cfg.ssd_max_ratio,
            **common,
        )
    if cfg.detector == "yolov3":
        strides = tuple(s.stride for s in body.feature_info)
        if strides != YOLOV3_STRIDES:
            raise ConfigError(
                f"model.backbone.levels: yolov3 needs three levels at strides 8, 16, 32 "
                f"(levels [3, 4, 5]), got strides {list(strides)}"
            )
        parts = {}
        if cfg.yolov3_channels is not None:
            widths = cfg.yolov3_channels
            neck = YOLOv3Neck([s.channels for s in body.feature_info], widths)
            parts = {"neck": neck, "head": YOLOv3Head(widths, 3, num_classes, mid_channels=widths)}
        return YOLOv3(body, num_classes, input_size=cfg.min_size, **parts, **common)
    extra = cfg.extra_levels or DEFAULT_EXTRA_LEVELS[cfg.detector]
    try:
        backbone = cfg.neck.build(body, cfg.fpn_channels, extra)
    except ValueError as e:
        raise ConfigError(f"model.neck ({cfg.neck.name}): {e}") from None
    anchor_base = cfg.anchor_base or DEFAULT_ANCHOR_BASE[cfg.detector]
    sizes = dict(min_size=cfg.min_size, max_size=cfg.max_size, anchor_base=anchor_base)
    if cfg.detector == "fasterrcnn":
        return detectors.fasterrcnn(
            backbone,
            num_classes,
            aspect_ratios=cfg.aspect_ratios,
            representation_size=cfg.representation_size,
            rpn_pre_nms_top_n=cfg.rpn_pre_nms_top_n,
            rpn_post_nms_top_n=cfg.rpn_post_nms_top_n,
            rpn_batch_size_per_image=cfg.rpn_batch_size_per_image,
            box_batch_size_per_image=cfg.box_batch_size_per_image,
            **sizes,
            **common,
        )
    if cfg.detector == "retinanet":
        return detectors.retinanet(
            backbone, num_classes, aspect_ratios=cfg.aspect_ratios, **sizes, **common
        )
    return detectors.fcos(backbone, num_classes, num_convs=cfg.fcos_num_convs, **sizes, **common)


@dataclass(frozen=True)
class Datasets:
    """Training (augmented, crowd/difficult removed), validation and optional search split."""

    train: Dataset
    val: Dataset
    search: Dataset | None
    categories: list[str]
    cat_ids: list[int]


def build_datasets(cfg: DataConfig, *, seed: int = 0) -> Datasets:
    """Open (or, for the bundled digits, generate) the datasets ``cfg`` names.

    With ``search_fraction > 0`` a seeded portion of the training images becomes the search split
    (evaluation transforms) and is removed from ``train``.
    """
    train_tf, eval_tf = train_transforms(hflip=cfg.hflip), eval_transforms()
    if isinstance(cfg, DigitsData):
        root = ensure_digits(cfg)
        ann = root / "annotations"
        train = CocoDetectionDataset(
            root / "images", ann / "instances_train.json", train=True, transforms=train_tf
        )
        train_eval = CocoDetectionDataset(
            root / "images", ann / "instances_train.json", train=False, transforms=eval_tf
        )
        val = CocoDetectionDataset(
            root / "images", ann / "instances_val.json", train=False, transforms=eval_tf
        )
    elif isinstance(cfg, CocoData):
        train = CocoDetectionDataset(
            cfg.train_images, cfg.train_ann, train=True, transforms=train_tf
        )
        train_eval = CocoDetectionDataset(
            cfg.train_images, cfg.train_ann, train=False, transforms=eval_tf
        )
        val = CocoDetectionDataset(cfg.val_images, cfg.val_ann, train=False, transforms=eval_tf)
        if train.cat_ids != val.cat_ids:
            raise DataError(
                f"{cfg.val_ann}: categories differ from {cfg.train_ann} — both splits must list "
                "the same categories"
            )
    else:
        voc = dict(classes=cfg.classes)
        train = VOCDetectionDataset(cfg.root, cfg.train_set, train=True, transforms=train_tf, **voc)
        train_eval = VOCDetectionDataset(
            cfg.root, cfg.train_set, train=False, transforms=eval_tf, **voc
        )
        val = VOCDetectionDataset(cfg.root, cfg.val_set, train=False, transforms=eval_tf, **voc)
    search = None
    if cfg.search_fraction > 0:
        keep, held = split_indices(len(train), cfg.search_fraction, seed)
        train, search = Subset(train, keep), Subset(train_eval, held)
    base = train.dataset if isinstance(train, Subset) else train
    return Datasets(train, val, search, list(base.categories), list(base.cat_ids))


def cached_for_scoring(data: Datasets, cfg: Config, *, calibration: bool = True) -> Datasets:
    """``data`` with the splits a scoring process reads again for every candidate kept in memory
    (:class:`~nasdet.data.CachedSubset`, ``cfg.eval.cache_mib`` MiB each): the search split and
    val (evaluation transforms), and with ``calibration`` the training images BN is
    recalibrated on, only when the training transforms are deterministic (``data.hflip`` 0: a
    kept image would otherwise freeze one random flip). Items are identical to ``data``'s."""
    budget = cfg.eval.cache_mib * 2**20
    if budget == 0:
        return data

    def keep(split: Dataset | None) -> Dataset | None:
        return None if split is None else CachedSubset(split, max_bytes=budget)

    train = keep(data.train) if calibration and cfg.data.hflip == 0 else data.train
    return replace(data, train=train, val=keep(data.val), search=keep(data.search))


def ensure_digits(cfg: DigitsData) -> Path:
    """The bundled digits set at ``cfg.root``, generated there first if it is missing."""
    return data_ensure_digits(cfg.root, train=cfg.train, val=cfg.val, size=cfg.size, seed=cfg.seed)


def num_classes(cfg: DataConfig) -> int:
    """Classes (background included) of the data ``cfg`` names, without opening any image."""
    if isinstance(cfg, DigitsData):
        return 10 + 1
    if isinstance(cfg, CocoData):
        try:
            return len(json.loads(Path(cfg.train_ann).read_text())["categories"]) + 1
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise DataError(
                f"{cfg.train_ann}: cannot read its categories ({type(e).__name__}) — "
                f"run `nasdet data check --coco {cfg.train_ann} --images {cfg.train_images}`"
            ) from None
    return len(cfg.classes or VOC_CLASSES) + 1


def make_trainer(
    model: nn.Module,
    train_set: Dataset,
    cfg: Config,
    out_dir: Path,
    *,
    epochs: int | None = None,
    lr_scale: float = 1.0,
    evaluate: Callable[[nn.Module, int], dict[str, float]] | None = None,
    tensorboard: bool | None = None,
    fingerprint: str = "",
    before_step: Callable[[int], None] | None = None,
    step_hook: StepHook | None = None,
    forwards_per_step: int | None = None,
    find_unused_parameters: bool = False,
    backbone_lr: float | None = None,
    restart_epochs: int | None = None,
) -> Trainer:
    """A :class:`~nasdet.engine.train.Trainer` with the optimizer and per-iteration schedule of
    ``cfg.train`` (``epochs`` and ``lr * lr_scale`` may be overridden, e.g. for candidates).

    ``restart_epochs`` is the cycle length of ``schedule: cosine_restarts`` when
    ``train.restart_epochs`` is not set (e.g. a method's progressive-shrinking phase interval);
    left ``None`` too, one cycle spans the run.

    Under ``torchrun`` (DDP) ``train.batch_size`` is per process: each of the N processes runs
    1/N of the iterations, and the schedule is laid out over those. ``backbone_lr``: see
    :func:`~nasdet.engine.optim.make_optimizer` (0 freezes the backbone body)."""
    from nasdet.engine.distributed import current

    t = cfg.train
    epochs = epochs or t.epochs
    world = current().world_size
    iters = math.ceil(math.ceil(len(train_set) / world) / t.batch_size)
    optimizer = make_optimizer(
        model,
        t.optimizer,
        lr=t.lr * lr_scale,
        momentum=t.momentum,
        weight_decay=t.weight_decay,
        backbone_lr=backbone_lr,
    )
    scheduler = make_scheduler(
        optimizer,
        t.schedule,
        total_iters=epochs * iters,
        warmup_iters=min(t.warmup_iters, epochs * iters // 2),
        warmup_factor=t.warmup_factor,
        milestones=[m * iters for m in t.milestones],
        gamma=t.gamma,
        restart_iters=restart * iters if (restart := t.restart_epochs or restart_epochs) else None,
        restart_mult=t.restart_mult,
        cosine_iters=t.cosine_epochs * iters if t.cosine_epochs else None,
        eta_min=t.min_lr,
    )
    return Trainer(
        model=model,
        train_set=train_set,
        optimizer=optimizer,
        scheduler=scheduler,
        out_dir=out_dir,
        epochs=epochs,
        batch_size=t.batch_size,
        seed=cfg.seed,
        device=resolve_device(t.device),
        grad_clip=t.grad_clip,
        amp=t.amp,
        channels_last=t.channels_last,
        num_workers=cfg.data.num_workers,
        evaluate=evaluate,
        eval_every=t.eval_every,
        tensorboard=t.tensorboard if tensorboard is None else tensorboard,
        fingerprint=fingerprint,
        before_step=before_step,
        step_hook=step_hook,
        forwards_per_step=forwards_per_step,
        find_unused_parameters=find_unused_parameters,
        checkpoint_every=t.checkpoint_every,
    )


def load_model(
    path: str | Path, model: type[ModelConfig], *, map_location: str = "cpu"
) -> nn.Module:
    """Rebuild a detector from a model file nasdet wrote, ready in eval mode.

    ``model`` is the ``model`` section schema the file's ``architecture`` is validated with (a
    method's own, or ``nasdet.methods.Model`` for any). The module carries ``categories`` (label
    ``i + 1`` is ``categories[i]``), ``cat_ids`` (the dataset's ids) and ``nasdet_meta``.
    """
    obj = read_model_file(path)
    try:
        arch = model.model_validate(obj["architecture"])
    except ValidationError as e:
        first = e.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise CheckpointError(
            f"{path}: its architecture is not one this method builds ({where}: {first['msg']})"
        ) from None
    detector = build_detector(arch, len(obj["categories"]) + 1, load_weights=False)
    load_state_dict_checked(detector, obj["state_dict"], str(path))
    detector.categories = list(obj["categories"])
    detector.cat_ids = list(obj["cat_ids"])
    detector.nasdet_meta = dict(obj["meta"])
    return detector.to(map_location).eval()
