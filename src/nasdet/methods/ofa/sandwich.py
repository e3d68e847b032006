"""The sandwich rule with in-place distillation for Once-for-All: the generic
:class:`nasdet.search.step_hooks.SandwichHook` whose choices follow the progressive-shrinking
schedule (:class:`~nasdet.methods.ofa.shrinking.ScheduleCfg`) of the step's epoch.

The supernet is the detector's ``backbone.body`` and honours the elastic protocol
(:class:`ElasticBody`).
"""

from __future__ import annotations

import random
from typing import Any, Protocol

from nasdet.engine.distill import KDKind
from nasdet.methods.ofa.shrinking import ScheduleCfg
from nasdet.search import step_hooks

RNG_PREFIX = "nasdet.ofa.subnet"


class ElasticBody(Protocol):
    """What :class:`SandwichHook` needs of the supernet backbone body."""

    def set_choices(
        self, ks: list[int] | None = None, e: list[int] | None = None, d: list[int] | None = None
    ) -> None:
        """Restrict the lists sampling and ``set_max_net`` / ``set_min_net`` draw from
        (``None``: leave that list as it is; the hook restricts only scheduled choices, so an
        unscheduled one stays the full list)."""

    def sample_active_subnet(self, rng: random.Random) -> Any:
        """Activate a subnet drawn with ``rng`` from the current lists; returns its genotype."""

    def set_max_net(self) -> None:
        """Activate the largest subnet of the current lists."""

    def set_min_net(self) -> None:
        """Activate the smallest subnet of the current lists."""

    def set_active_subnet(self, genotype: Any) -> None:
        """Activate the subnet ``genotype`` names."""

    def active_genotype(self) -> Any:
        """The genotype of the active subnet."""


def subnet_rng(seed: int, step: int, k: int) -> random.Random:
    """The generator Once-for-All's random subnet ``k`` of global step ``step`` is drawn with
    (:func:`nasdet.search.step_hooks.subnet_rng` under :data:`RNG_PREFIX`)."""
    return step_hooks.subnet_rng(seed, step, k, RNG_PREFIX)


class SandwichHook(step_hooks.SandwichHook):
    """The Trainer ``step_hook`` for an elastic supernet detector.

    At global step ``step`` (from 0) the supernet's lists are set from ``schedule`` for epoch
    ``step // steps_per_epoch + 1`` (``steps_per_epoch``: the Trainer's iterations per epoch,
    i.e. ``len`` of its loader); then the generic sandwich forwards run (largest, smallest,
    ``num_random`` random subnets drawn with :func:`subnet_rng`; without ``sandwich``,
    ``num_random`` random ones: Once-for-All's plain sampling). In-place distillation as
    Once-for-All's student loss: task losses + ``kd_ratio`` * KD against the largest subnet.
    """

    def __init__(
        self,
        schedule: ScheduleCfg,
        steps_per_epoch: int,
        *,
        num_random: int = 2,
        sandwich: bool = True,
        distill: bool = True,
        kd_ratio: float = 1.0,
        seed: int = 0,
        kind: KDKind = "softmax",
    ) -> None:
        if steps_per_epoch < 1:
            raise ValueError(f"steps_per_epoch must be >= 1, got {steps_per_epoch}")
        super().__init__(
            num_random=num_random,
            sandwich=sandwich,
            distill=distill,
            kd_ratio=kd_ratio,
            seed=seed,
            kind=kind,
            rng_prefix=RNG_PREFIX,
        )
        self.schedule = schedule
        self.steps_per_epoch = steps_per_epoch

    def epoch_of(self, step: int) -> int:
        """The 1-based epoch of global step ``step`` (from 0)."""
        return step // self.steps_per_epoch + 1

    def prepare(self, supernet: ElasticBody, step: int) -> None:
        """Open the choices of the schedule's phase at the step's epoch."""
        supernet.set_choices(**self.schedule.choices_at(self.epoch_of(step)))
