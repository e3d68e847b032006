"""Model lookup, input-size parsing and the JSON-ready cost report behind ``nasdet cost``."""

from __future__ import annotations

import difflib
import inspect
import logging
import re
from typing import Any

import torch
import torchvision
from torch import nn

from nasdet.cost._utils import module_device
from nasdet.cost.detector import detector_cost, is_detector, model_input, random_image
from nasdet.cost.flops import count_flops
from nasdet.cost.latency import measure_latency
from nasdet.cost.params import count_params
from nasdet.errors import ConfigError

logger = logging.getLogger(__name__)

__all__ = ["cost_report", "format_input_size", "parse_input_size", "torchvision_model"]

_PREFIX = "torchvision:"
_SIZE_RE = re.compile(r"^\s*(\d+)\s*[x×]\s*(\d+)\s*[x×]\s*(\d+)\s*$", re.IGNORECASE)


def torchvision_model(name: str, *, num_classes: int | None = None) -> nn.Module:
    """Build torchvision model ``name`` with random weights (``weights=None``, never downloads).

    Detection/segmentation builders also get ``weights_backbone=None``; ``num_classes`` (when
    given) is passed to the builder (torchvision's detectors count the background). A leading
    ``"torchvision:"`` is accepted. Note that detectors built this way use ``BatchNorm2d`` in
    the backbone where torchvision's pretrained-backbone builds use ``FrozenBatchNorm2d``, so their
    parameter count can exceed ``meta["num_params"]`` by the BN affine parameters.

    Raises:
        ConfigError: unknown name; the message lists close matches.
    """
    name = name.strip()
    if name.startswith(_PREFIX):
        name = name[len(_PREFIX) :]
    available = torchvision.models.list_models()
    if name not in available:
        close = difflib.get_close_matches(name, available, n=5, cutoff=0.6)
        hint = f"did you mean {', '.join(close)}?" if close else "see torchvision list_models()"
        raise ConfigError(f"unknown torchvision model '{name}': {hint}")
    builder = torchvision.models.get_model_builder(name)
    kwargs: dict[str, Any] = {"weights": None}
    if "weights_backbone" in inspect.signature(builder).parameters:
        kwargs["weights_backbone"] = None
    if num_classes is not None:
        kwargs["num_classes"] = num_classes
    return builder(**kwargs)


def parse_input_size(text: str) -> tuple[int, int, int]:
    """Parse ``"3x224x224"`` (channels x height x width, pixels) into ``(3, 224, 224)``.

    Raises:
        ConfigError: the text is not three positive integers separated by ``x``.
    """
    match = _SIZE_RE.match(text)
    if match is None:
        raise ConfigError(
            f"invalid input size '{text}': expected CxHxW with positive integers, e.g. 3x224x224"
        )
    values = [int(v) for v in match.groups()]
    if min(values) <= 0:
        raise ConfigError(f"invalid input size '{text}': every dimension must be positive")
    channels, height, width = values
    return channels, height, width


def format_input_size(chw: tuple[int, ...]) -> str:
    """``(3, 224, 224)`` -> ``"3x224x224"``."""
    return "x".join(str(int(v)) for v in chw)


def cost_report(
    model: nn.Module,
    input_chw: tuple[int, int, int],
    *,
    latency: bool = False,
    onnx: bool = False,
    device: str = "cpu",
    threads: int | None = None,
    min_run_time: float = 1.0,
) -> dict[str, Any]:
    """JSON-ready cost of ``model`` for one input of ``input_chw`` (batch of 1).

    Keys: ``params``, ``flops`` (2 per MAC), ``macs``, ``input`` (``"CxHxW"``) and ``detector``.
    For a detector (see :func:`nasdet.cost.detector.detector_cost`) also ``backbone_params``,
    ``backbone_flops``, ``backbone_macs`` and ``model_input_size`` ([H, W] after its transform).
    With ``latency``: ``latency_ms_median``, ``latency_ms_iqr`` (whole model in PyTorch on
    ``device``), ``threads``, ``device``. With ``onnx``: ``onnx_latency_ms_median``,
    ``onnx_latency_ms_iqr``, ``threads`` and ``onnx_module`` (``"model"`` for a classifier,
    ``"backbone"`` — body and neck — for a detector, timed on its ``model_input_size``), on CPU.
    """
    channels, height, width = input_chw
    report: dict[str, Any] = {"input": format_input_size(input_chw)}
    detector = is_detector(model)
    report["detector"] = detector
    device_of_model = module_device(model)
    if detector:
        if channels != 3:
            raise ConfigError(f"input {report['input']}: detectors take 3-channel images")
        image = random_image((height, width), device_of_model)
        cost = detector_cost(model, (height, width))
        report.update(params=cost.params, flops=cost.flops, macs=cost.macs)
        report.update(
            backbone_params=cost.backbone_params,
            backbone_flops=cost.backbone_flops,
            backbone_macs=cost.backbone_macs,
            model_input_size=list(cost.model_input_size),
        )
        timed_inputs: tuple[Any, ...] = ([image],)
        onnx_module: nn.Module = model.backbone
        onnx_example = model_input(model, image)
    else:
        generator = torch.Generator().manual_seed(0)
        example = torch.rand(1, channels, height, width, generator=generator).to(device_of_model)
        flops = count_flops(model, example)
        report.update(params=count_params(model), flops=flops.flops, macs=flops.macs)
        timed_inputs = (example,)
        onnx_module, onnx_example = model, example
    if latency:
        lat = measure_latency(
            model, *timed_inputs, device=device, threads=threads, min_run_time=min_run_time
        )
        report.update(
            latency_ms_median=lat.median_ms,
            latency_ms_iqr=lat.iqr_ms,
            threads=lat.threads,
            device=lat.device,
        )
    if onnx:
        from nasdet.cost.onnx_runtime import onnx_latency

        ort_lat = onnx_latency(
            onnx_module, onnx_example, threads=threads, min_run_time=min_run_time
        )
        report.update(
            onnx_latency_ms_median=ort_lat.median_ms,
            onnx_latency_ms_iqr=ort_lat.iqr_ms,
            onnx_module="backbone" if detector else "model",
            threads=ort_lat.threads,
        )
    logger.debug("cost report: %s", report)
    return report
