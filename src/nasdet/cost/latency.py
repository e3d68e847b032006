"""Forward-pass latency in PyTorch, timed with :mod:`torch.utils.benchmark`."""

from __future__ import annotations

import logging
import statistics
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import nn

from nasdet.cost._utils import eval_mode, module_device, to_device
from nasdet.errors import ConfigError

logger = logging.getLogger(__name__)

__all__ = ["Latency", "measure_latency", "summarize_times"]

_WARMUP_CALLS = 3


@dataclass(frozen=True)
class Latency:
    """Wall-clock time of one forward call.

    Attributes:
        median_ms: median time per call, in milliseconds.
        iqr_ms: interquartile range of the per-call times, in milliseconds.
        threads: intra-op threads used (torch or onnxruntime).
        device: ``"cpu"`` or a CUDA device string.
        runs: number of timed calls (warm-up calls excluded).
        backend: ``"torch"`` or ``"onnxruntime"``.
    """

    median_ms: float
    iqr_ms: float
    threads: int
    device: str
    runs: int
    backend: str = "torch"

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready dict of all fields."""
        return asdict(self)


def summarize_times(times_s: Sequence[float]) -> tuple[float, float]:
    """Median and interquartile range, both in ms, of per-call times given in seconds."""
    if not times_s:
        raise ValueError("no timings to summarize")
    times_ms = [t * 1e3 for t in times_s]
    if len(times_ms) < 2:
        return times_ms[0], 0.0
    q1, _, q3 = statistics.quantiles(times_ms, n=4, method="inclusive")
    return statistics.median(times_ms), q3 - q1


def measure_latency(
    module: nn.Module,
    *inputs: Any,
    device: str = "cpu",
    threads: int | None = None,
    min_run_time: float = 1.0,
) -> Latency:
    """Time ``module(*inputs)`` in eval mode under ``torch.no_grad()``.

    Uses ``torch.utils.benchmark.Timer(...).blocked_autorange(min_run_time=min_run_time)``, which
    times blocks of calls (synchronising CUDA) for at least ``min_run_time`` seconds after a few
    warm-up calls. The module and the tensors in ``inputs`` are moved to ``device`` for the
    measurement; the module is moved back and its training flags restored afterwards.

    Args:
        module: the model; a detector takes a list of (3, H, W) images as its one input.
        inputs: positional inputs; nested lists/tuples/dicts of tensors are moved to ``device``.
        device: ``"cpu"``, ``"cuda"`` or ``"cuda:N"``.
        threads: torch intra-op threads during timing; ``None`` uses ``torch.get_num_threads()``.
        min_run_time: seconds of timing at least.

    Returns:
        :class:`Latency` with the median and IQR of the per-call time in ms (``runs`` = calls
        timed; the median is over blocks, each block's time divided by its number of calls).
    """
    from torch.utils import benchmark  # imported lazily: it probes for a CUDA toolchain

    target = torch.device(device)
    if target.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device '{device}' requested but CUDA is not available; use cpu")
    threads = threads or torch.get_num_threads()
    original = module_device(module)
    moved = to_device(inputs, target)

    def forward() -> None:
        with torch.no_grad():
            module(*moved)

    try:
        if original != target:
            module.to(target)
        with eval_mode(module):
            previous_threads = torch.get_num_threads()
            torch.set_num_threads(threads)
            try:
                for _ in range(_WARMUP_CALLS):
                    forward()
            finally:
                torch.set_num_threads(previous_threads)
            timer = benchmark.Timer(
                stmt="forward()", globals={"forward": forward}, num_threads=threads
            )
            measurement = timer.blocked_autorange(min_run_time=min_run_time)
    finally:
        if original != target:
            module.to(original)
    median_ms, iqr_ms = measurement.median * 1e3, measurement.iqr * 1e3
    runs = len(measurement.times) * measurement.number_per_run
    latency = Latency(median_ms, iqr_ms, threads, str(target), runs, backend="torch")
    logger.info("%s latency: %s", type(module).__name__, latency)
    return latency
