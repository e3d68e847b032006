"""Resource constraints of every search method (SP-NAS, DetNAS, OFA, latency-constrained search).

One schema, :class:`Constraints`, read from a run config's ``search.constraints``::

    constraints:
      input_size: 320          # square image the FLOPs, latency and memory refer to
      batch_size: 8            # batch of the memory limit
      max_params: 5_000_000    # whole detector
      max_flops: 2.0e+9        # FLOPs, 2 per multiply-add
      max_latency_ms: 40       # median latency of one image (batch 1)
      max_memory_mb: 4096      # peak memory of one training step at batch_size, MiB
      backbone:                # the backbone body alone (no memory limit here)
        max_flops: 1.2e+9

and one cost dict, :func:`nasdet.cost.measure_cost` (``cost_for`` below measures just what the
limits need), checked by :func:`checker`. The limits map onto the cost keys as follows, in the
order they are checked (the first broken one is reported):

==============================  ========================
limit                           cost key
==============================  ========================
``max_params``                  ``params``
``max_flops``                   ``flops``
``max_latency_ms``              ``latency_ms``
``max_memory_mb``               ``memory_mb``
``backbone.max_params``         ``backbone_params``
``backbone.max_flops``          ``backbone_flops``
``backbone.max_latency_ms``     ``backbone_latency_ms``
==============================  ========================
"""

from __future__ import annotations

from collections.abc import Callable

from pydantic import Field, field_validator
from pydantic_core import PydanticCustomError
from torch import nn

from nasdet.config import Strict
from nasdet.cost import measure_cost
from nasdet.cost.memory import Optimizer

__all__ = ["Constraints", "Limits", "checker", "cost_for", "describe", "needs"]

# (limit name as the user writes it, cost key), in the order they are checked
_LIMITS: tuple[tuple[str, str], ...] = (
    ("max_params", "params"),
    ("max_flops", "flops"),
    ("max_latency_ms", "latency_ms"),
    ("max_memory_mb", "memory_mb"),
    ("backbone.max_params", "backbone_params"),
    ("backbone.max_flops", "backbone_flops"),
    ("backbone.max_latency_ms", "backbone_latency_ms"),
)
_COUNTS = {"params", "backbone_params"}  # integers, shown with thousands separators
_EXPENSIVE = {"latency_ms", "backbone_latency_ms", "memory_mb"}


class Limits(Strict):
    """Upper limits on the cost of one part of the model; ``None``: no limit."""

    max_params: int | None = Field(None, ge=1, description="parameters")
    max_flops: float | None = Field(
        None, gt=0, description="FLOPs (2 per multiply-add) of one image at input_size"
    )
    max_latency_ms: float | None = Field(
        None, gt=0, description="median latency of one image (batch 1) at input_size, ms"
    )
    max_memory_mb: float | None = Field(
        None, gt=0, description="peak memory of one training step at batch_size, MiB (2**20 B)"
    )

    @property
    def given(self) -> bool:
        """Whether any limit is set."""
        limits = (self.max_params, self.max_flops, self.max_latency_ms, self.max_memory_mb)
        return any(v is not None for v in limits)


class Constraints(Limits):
    """Limits on the whole detector (the inherited fields) and on its backbone body alone."""

    input_size: int | None = Field(
        None,
        ge=16,
        description="square input (pixels) the FLOPs/latency/memory refer to; None: model.min_size",
    )
    batch_size: int | None = Field(
        None, ge=1, description="images per step of the memory limit; None: train.batch_size"
    )
    backbone: Limits = Field(default_factory=Limits, description="limits on the backbone alone")

    @field_validator("backbone")
    @classmethod
    def _no_backbone_memory(cls, backbone: Limits) -> Limits:
        if backbone.max_memory_mb is not None:
            raise PydanticCustomError(
                "whole_detector_only",
                "max_memory_mb applies to the whole detector only (a training step trains all of "
                "it) — move it to the top level of the constraints",
            )
        return backbone

    @property
    def given(self) -> bool:
        """Whether any limit is set, on the detector or on the backbone."""
        return super().given or self.backbone.given


def _value(constraints: Constraints, name: str) -> float | None:
    section: Limits = constraints.backbone if name.startswith("backbone.") else constraints
    return getattr(section, name.rsplit(".", 1)[-1])


def _given(constraints: Constraints) -> list[tuple[str, str, float]]:
    """(limit name, cost key, limit) of every limit set, in checking order."""
    out = []
    for name, key in _LIMITS:
        limit = _value(constraints, name)
        if limit is not None:
            out.append((name, key, float(limit)))
    return out


def _limit_text(key: str, limit: float) -> str:
    """The limit as written: thousands separators for counts, else the shortest exact ``g``
    (whole numbers up to 6 digits in full: ``300`` rather than ``3e+02``)."""
    if key in _COUNTS:
        return f"{limit:,.0f}"
    whole_digits = len(f"{abs(limit):.0f}")
    for digits in range(1, 18):
        text = f"{limit:.{digits}g}"
        if float(text) == limit:
            return f"{limit:.{max(digits, whole_digits)}g}" if whole_digits <= 6 else text
    return repr(limit)


def _cost_text(key: str, value: float, limit_text: str) -> str:
    """A measured value with 4 significant digits, or more until it differs from the limit."""
    if key in _COUNTS:
        return f"{value:,.0f}"
    text = f"{value:.4g}"
    digits = 5
    while text == limit_text and digits <= 17:
        text = f"{value:.{digits}g}"
        digits += 1
    return text


def checker(constraints: Constraints) -> Callable[[dict[str, float]], str | None]:
    """A cost check for the search loops: ``check(cost)`` is ``None`` when ``cost`` is within
    every limit, else the first broken one (order in the module docstring) as one line, e.g.
    ``"params 1,234,567 > max_params 1,000,000"`` or
    ``"backbone_flops 1.3e+07 > backbone.max_flops 1.2e+07"``.

    ``cost`` is a :func:`nasdet.cost.measure_cost` dict (params, FLOPs with 2 per multiply-add,
    ms, MiB). A value equal to its limit passes. A limit whose key is missing from ``cost``
    raises ``ValueError`` rather than passing unchecked: measure what :func:`needs` names.
    """
    limits = [
        (name, key, value, _limit_text(key, value)) for name, key, value in _given(constraints)
    ]

    def check(cost: dict[str, float]) -> str | None:
        for name, key, limit, limit_text in limits:
            if key not in cost:
                raise ValueError(
                    f"cost has no '{key}' to hold against {name}: measure it "
                    "(nasdet.search.constraints.needs names what each limit needs)"
                )
            if cost[key] > limit:
                return f"{key} {_cost_text(key, cost[key], limit_text)} > {name} {limit_text}"
        return None

    return check


def describe(constraints: Constraints) -> str:
    """The limits set, as written, for messages: e.g. ``"max_params <= 984,864,
    backbone.max_flops <= 1.2e+07"``; ``"no limits"`` when none is set."""
    parts = [f"{name} <= {_limit_text(key, limit)}" for name, key, limit in _given(constraints)]
    return ", ".join(parts) or "no limits"


def needs(constraints: Constraints) -> set[str]:
    """The expensive cost keys the limits need measured: a subset of ``{"latency_ms",
    "backbone_latency_ms", "memory_mb"}`` (params and FLOPs are always counted)."""
    return {key for _, key, _ in _given(constraints) if key in _EXPENSIVE}


def cost_for(
    model: nn.Module,
    constraints: Constraints,
    *,
    input_size: int,
    batch_size: int,
    optimizer: Optimizer = "sgd",
    device: str = "cpu",
    threads: int | None = None,
    min_run_time: float = 0.3,
) -> dict[str, float]:
    """:func:`nasdet.cost.measure_cost` of ``model`` with the measurements :func:`needs` names.

    Args:
        model: a torchvision detector.
        constraints: the limits; their ``input_size`` and ``batch_size`` win when set.
        input_size: square input in pixels when ``constraints.input_size`` is None (the model's
            ``min_size``).
        batch_size: images per training step when ``constraints.batch_size`` is None (the run's
            ``train.batch_size``); used only for ``max_memory_mb``.
        optimizer: ``"sgd"`` or ``"adamw"``, the optimizer state of the memory limit.
        device: where latency is timed and memory measured (``"cpu"``: memory estimated).
        threads: intra-op threads while timing latency (``None``: ``torch.get_num_threads()``).
        min_run_time: seconds of timing per latency, at least.

    Returns:
        The cost dict (keys in :func:`measure_cost`), ready for :func:`checker`.
    """
    wanted = needs(constraints)
    return measure_cost(
        model,
        constraints.input_size or input_size,
        latency="latency_ms" in wanted,
        backbone_latency="backbone_latency_ms" in wanted,
        memory_batch=(constraints.batch_size or batch_size) if "memory_mb" in wanted else None,
        optimizer=optimizer,
        device=device,
        threads=threads,
        min_run_time=min_run_time,
    )
