"""What the latency method's steps share: the space's model section, the space detector made
from a baseline model file, the input resolution and the LUT cache."""

from __future__ import annotations

from pathlib import Path

from torch import nn

from nasdet import build
from nasdet.build import build_detector
from nasdet.methods.latency.config import LatencyRunConfig, Model
from nasdet.methods.latency.latency import LatencyTable, cached_table
from nasdet.methods.latency.nets import to_space_detector
from nasdet.methods.latency.parts import space_spec
from nasdet.models.io import load_state_dict_checked, read_model_file
from nasdet.models.yolov3 import YOLOv3


def space_model(cfg: LatencyRunConfig) -> Model:
    """The ``model`` section of the search space detector (``backbone: latency_space``; with
    ``space.head_skip``, ``head_convs``: the baseline head's tower depth, 0 without towers)."""
    head = cfg.model.head_tower_convs if cfg.space.head_skip else 0
    spec = space_spec(cfg.model.backbone, cfg.space.multipliers, cfg.space.skip, head)
    return cfg.model.model_copy(update={"backbone": spec})


def space_from_baseline(cfg: LatencyRunConfig, ckpt: Path, num_classes: int) -> nn.Module:
    """The space detector whose variants 0 are the baseline model file ``ckpt``'s blocks and
    whose pruned variants start from its most important channels."""
    model = build_detector(cfg.model, num_classes, load_weights=False)
    load_state_dict_checked(model, read_model_file(ckpt)["state_dict"], str(ckpt))
    space = cfg.space
    return to_space_detector(model, space.multipliers, skip=space.skip, head_skip=space.head_skip)


def load_space(path: Path) -> nn.Module:
    """A space (or searched net) model file of a latency run."""
    return build.load_model(path, Model)


def set_resolution(detector: nn.Module, size: int) -> None:
    """Make a detector take ``size`` px inputs from now on, as one built with ``min_size =
    max_size = size`` would: SSD and YOLOv3 (a ``fixed_size`` transform) resize to a ``size``
    square, the others' short side to ``size`` with the long side at most ``size``. SSD's
    default boxes follow the feature maps; YOLOv3's anchors are scaled with the input side."""
    t = detector.transform
    if isinstance(detector, YOLOv3):  # from the anchors at the size it was built for
        if not hasattr(detector, "_built_anchors"):
            detector._built_anchors = (detector.anchors.clone(), t.fixed_size[0])
        anchors, built = detector._built_anchors
        detector.anchors.copy_(anchors.to(detector.anchors.device) * (size / built))
    if t.fixed_size is not None:
        t.fixed_size = (size, size)
    t.min_size = (size,)
    t.max_size = size


def resolutions(lo_hi: list[int] | None, default: int) -> list[int]:
    """The input sides of ``[min, max]`` in steps of 32 (``[default]`` without a range)."""
    if lo_hi is None:
        return [default]
    return list(range(lo_hi[0], lo_hi[1] + 1, 32))


def lut(cfg: LatencyRunConfig, out: Path, detector: nn.Module, resolution: int) -> LatencyTable:
    """The LUT of ``cfg.latency`` at ``resolution``, cached in ``<out>/output/lut.json``."""
    path = out / "output" / "lut.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    return cached_table(path, detector, resolution, cfg.latency)
