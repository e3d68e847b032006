"""The cost dict of a candidate detector: what every search method holds against its limits."""

from __future__ import annotations

import logging

from torch import nn

from nasdet.cost._utils import module_device
from nasdet.cost.detector import backbone_body, detector_cost, model_input, random_image
from nasdet.cost.latency import measure_latency
from nasdet.cost.memory import Optimizer, training_memory

logger = logging.getLogger(__name__)

__all__ = ["COST_KEYS", "measure_cost"]

# every key measure_cost can return (the limited ones: see nasdet.search.constraints)
COST_KEYS = (
    "params",
    "flops",
    "macs",
    "latency_ms",
    "memory_mb",
    "memory_measured",
    "backbone_params",
    "backbone_flops",
    "backbone_macs",
    "backbone_latency_ms",
)


def measure_cost(
    model: nn.Module,
    input_size: int,
    *,
    latency: bool = False,
    backbone_latency: bool = False,
    memory_batch: int | None = None,
    optimizer: Optimizer = "sgd",
    device: str = "cpu",
    threads: int | None = None,
    min_run_time: float = 0.3,
) -> dict[str, float]:
    """Cost of a torchvision detector for a square ``input_size`` x ``input_size`` image.

    Always (see :func:`nasdet.cost.detector_cost`; one image, the detector in eval mode):

    * ``params``, ``flops`` (2 per multiply-add), ``macs``: the whole detector;
    * ``backbone_params``, ``backbone_flops``, ``backbone_macs``: the backbone body alone, on the
      tensor the detector's transform makes of that image.

    On request (timed on ``device`` with :func:`nasdet.cost.measure_latency`, batch 1, with
    ``threads`` intra-op threads (``None``: ``torch.get_num_threads()``), at least
    ``min_run_time`` seconds each):

    * ``latency_ms`` (``latency``): median ms of one forward of the whole detector;
    * ``backbone_latency_ms`` (``backbone_latency``): the same for the backbone body.

    With ``memory_batch`` (:func:`nasdet.cost.training_memory` with ``optimizer`` on ``device``):

    * ``memory_mb``: peak memory of one training step at ``memory_batch`` images, in MiB
      (2**20 bytes);
    * ``memory_measured``: how that was obtained, as a float so that the dict stays float-only:
      ``1.0`` measured on CUDA (``"measured:cuda"``), ``0.0`` estimated on the CPU
      (``"estimated:cpu"``).

    Returns:
        A dict of floats with exactly these keys (a subset of :data:`COST_KEYS`).
    """
    cost = detector_cost(model, (input_size, input_size))
    keys = ("params", "flops", "macs", "backbone_params", "backbone_flops", "backbone_macs")
    out = {k: float(getattr(cost, k)) for k in keys}
    image = random_image((input_size, input_size), module_device(model))
    if latency:
        timed = measure_latency(
            model, [image], device=device, threads=threads, min_run_time=min_run_time
        )
        out["latency_ms"] = timed.median_ms
    if backbone_latency:
        tensor = model_input(model, image)
        timed = measure_latency(
            backbone_body(model), tensor, device=device, threads=threads, min_run_time=min_run_time
        )
        out["backbone_latency_ms"] = timed.median_ms
    if memory_batch is not None:
        memory = training_memory(
            model, input_size, batch_size=memory_batch, optimizer=optimizer, device=device
        )
        out["memory_mb"] = memory.mib
        out["memory_measured"] = 1.0 if memory.measured else 0.0
    logger.debug("candidate cost at %d px: %s", input_size, out)
    return out
