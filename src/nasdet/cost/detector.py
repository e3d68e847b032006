"""Costs of torchvision detectors: the whole detector and its backbone body alone."""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import Tensor, nn
from torchvision.models.detection.transform import GeneralizedRCNNTransform

from nasdet.cost._utils import eval_mode, module_device
from nasdet.cost.flops import count_flops
from nasdet.cost.params import count_params

logger = logging.getLogger(__name__)

__all__ = [
    "DetectorCost",
    "backbone_body",
    "detector_cost",
    "is_detector",
    "model_input",
    "random_image",
]

_SEED = 0  # the random image is the same on every call, so counts are reproducible


@dataclass(frozen=True)
class DetectorCost:
    """Parameters and forward cost of a detector for one image.

    Attributes:
        params: parameters of the whole detector.
        flops, macs: whole detector in eval mode on one image of ``input_size`` (transform,
            backbone, neck, heads and postprocess); 2 FLOPs per MAC.
        backbone_params, backbone_flops, backbone_macs: the backbone body alone
            (``detector.backbone.body`` when present, else ``detector.backbone``), measured on the
            tensor the detector's transform makes of that image.
        input_size: (H, W) of the image given to the detector.
        model_input_size: (H, W) of the batched tensor the backbone sees after the detector's
            resize and padding to its size divisor.
    """

    params: int
    flops: int
    macs: int
    backbone_params: int
    backbone_flops: int
    backbone_macs: int
    input_size: tuple[int, int]
    model_input_size: tuple[int, int]

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready dict of all fields (sizes as ``[H, W]`` lists)."""
        out = asdict(self)
        out["input_size"] = list(self.input_size)
        out["model_input_size"] = list(self.model_input_size)
        return out


def is_detector(model: nn.Module) -> bool:
    """Whether ``model`` looks like a torchvision detector (FasterRCNN, RetinaNet, FCOS, SSD)."""
    return isinstance(getattr(model, "transform", None), GeneralizedRCNNTransform) and isinstance(
        getattr(model, "backbone", None), nn.Module
    )


def backbone_body(detector: nn.Module) -> nn.Module:
    """The feature extractor without neck: ``backbone.body`` if present, else ``backbone``."""
    return getattr(detector.backbone, "body", detector.backbone)


def random_image(image_size: tuple[int, int], device: torch.device | str = "cpu") -> Tensor:
    """A reproducible float image (3, H, W) with values in [0, 1]."""
    height, width = image_size
    generator = torch.Generator().manual_seed(_SEED)
    return torch.rand(3, height, width, generator=generator).to(device)


def model_input(detector: nn.Module, image: Tensor) -> Tensor:
    """The (1, 3, H', W') tensor the detector's own transform (eval mode) makes of ``image``."""
    with eval_mode(detector), torch.no_grad():
        images, _ = detector.transform([image])
    return images.tensors


def detector_cost(detector: nn.Module, image_size: tuple[int, int]) -> DetectorCost:
    """Measure params and FLOPs/MACs of ``detector`` and of its backbone body for one image.

    Args:
        detector: a torchvision detection model (it must have ``.transform`` and ``.backbone``).
        image_size: (H, W) of the input image before the detector's own resize.

    Returns:
        :class:`DetectorCost`. For two-stage detectors (FasterRCNN) the RoI-head cost depends on
        how many proposals survive the RPN's score threshold and NMS, so it varies with the
        weights; a fixed random image makes it reproducible for given weights.
    """
    if not is_detector(detector):
        raise TypeError(
            f"{type(detector).__name__} is not a torchvision detector: "
            "it needs a GeneralizedRCNNTransform `.transform` and a `.backbone`"
        )
    image = random_image(image_size, module_device(detector))
    whole = count_flops(detector, [image])
    tensor = model_input(detector, image)
    body = backbone_body(detector)
    backbone = count_flops(body, tensor)
    cost = DetectorCost(
        params=count_params(detector),
        flops=whole.flops,
        macs=whole.macs,
        backbone_params=count_params(body),
        backbone_flops=backbone.flops,
        backbone_macs=backbone.macs,
        input_size=(int(image_size[0]), int(image_size[1])),
        model_input_size=(int(tensor.shape[-2]), int(tensor.shape[-1])),
    )
    logger.debug("detector cost %s", cost)
    return cost
