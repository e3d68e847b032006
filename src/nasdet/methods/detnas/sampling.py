"""How DetNAS's supernet training picks paths (``supernet_train.sampling``).

- ``uniform``: :class:`PathSampler`, SPOS's one uniform path per step (a ``before_step`` hook);
- ``strict_fair``: :class:`nasdet.search.step_hooks.StrictFairHook` (FairNAS) over the blocks;
- ``sandwich``: :class:`nasdet.search.step_hooks.SandwichHook`, where the largest subnet is the
  code with the most backbone FLOPs and the smallest the one with the fewest
  (:func:`flops_extremes`, measured, not assumed), optionally with in-place distillation.

:class:`ShuffleNetSampling` is the adapter both step hooks read the supernet body through.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from nasdet.cost import count_flops
from nasdet.methods.detnas.nets import ShuffleNetV2Supernet
from nasdet.methods.detnas.space import CHOICES, ShuffleNetCode
from nasdet.search.step_hooks import SandwichHook, StrictFairHook

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PathSampler:
    """``before_step`` hook of supernet training: a uniform path from (seed, step) alone."""

    supernet: nn.Module
    seed: int

    def __call__(self, step: int) -> None:
        self.supernet.sample_active_subnet(random.Random(self.seed * 1_000_003 + step))


def block_flops(body: ShuffleNetV2Supernet, image_size: int) -> list[list[int]]:
    """FLOPs (2 per multiply-accumulate, one ``image_size`` x ``image_size`` image) of every
    choice of every block: ``flops[b][c]``; a block of a stage that is not built costs 0. The
    active path is restored afterwards."""
    active = body.active_subnet
    depths = body.space.depths
    names = [f"stages.{i}.{j}" for i, d in enumerate(depths) for j in range(d)]
    table: list[list[int]] = [[0] * len(CHOICES) for _ in names]
    image = torch.zeros(1, 3, image_size, image_size, device=next(body.parameters()).device)
    try:
        for c in range(len(CHOICES)):
            body.set_active_subnet(ShuffleNetCode((c,) * len(names), depths))
            per_module = count_flops(body, image).by_module
            for b, name in enumerate(names):
                table[b][c] = per_module.get(name, 0)
    finally:
        body.set_active_subnet(active)
    return table


def flops_extremes(
    body: ShuffleNetV2Supernet, image_size: int
) -> tuple[ShuffleNetCode, ShuffleNetCode]:
    """The codes with the most and the fewest backbone FLOPs at ``image_size``: a block's cost
    depends on its own choice only (every choice keeps the block's input and output shapes), so
    the extremes take each block's most / least expensive choice (the first on a tie)."""
    table = block_flops(body, image_size)
    depths = body.space.depths
    largest = tuple(max(range(len(row)), key=row.__getitem__) for row in table)
    smallest = tuple(min(range(len(row)), key=row.__getitem__) for row in table)
    return ShuffleNetCode(largest, depths), ShuffleNetCode(smallest, depths)


@dataclass(frozen=True)
class ShuffleNetSampling:
    """The DetNAS supernet body as the step hooks read it (:class:`SandwichSupernet` and
    :class:`FairSupernet` of :mod:`nasdet.search.step_hooks`)."""

    body: ShuffleNetV2Supernet
    largest: ShuffleNetCode | None = None  # the sandwich's ends (strict-fair needs none)
    smallest: ShuffleNetCode | None = None

    @property
    def num_blocks(self) -> int:
        return self.body.space.num_blocks

    @property
    def num_choices(self) -> int:
        return len(CHOICES)

    def set_max_net(self) -> None:
        if self.largest is None:
            raise ValueError("ShuffleNetSampling made without its largest code (flops_extremes)")
        self.body.set_active_subnet(self.largest)

    def set_min_net(self) -> None:
        if self.smallest is None:
            raise ValueError("ShuffleNetSampling made without its smallest code (flops_extremes)")
        self.body.set_active_subnet(self.smallest)

    def sample_active_subnet(self, rng: random.Random) -> ShuffleNetCode:
        return self.body.sample_active_subnet(rng)

    def set_block_choices(self, choices: Sequence[int]) -> None:
        self.body.set_active_subnet(ShuffleNetCode(tuple(choices), self.body.space.depths))


def sampling_hook(
    body: ShuffleNetV2Supernet,
    sampling: str,
    *,
    image_size: int,
    seed: int,
    num_random: int = 2,
    distill: bool = False,
    kd_ratio: float = 1.0,
) -> SandwichHook | StrictFairHook | None:
    """The Trainer ``step_hook`` of ``sampling`` for the supernet ``body`` (``None`` for
    ``uniform``: :class:`PathSampler` then runs as ``before_step``). The sandwich's FLOPs
    extremes are measured at ``image_size`` (the detector's ``min_size``). Distillation reads a
    sigmoid one-stage head (RetinaNet, FCOS)."""
    if sampling == "uniform":
        return None
    if sampling not in ("strict_fair", "sandwich"):
        raise ValueError(f"sampling must be uniform, strict_fair or sandwich, got {sampling!r}")
    if sampling == "strict_fair":
        adapter = ShuffleNetSampling(body)
    else:
        largest, smallest = flops_extremes(body, image_size)
        adapter = ShuffleNetSampling(body, largest, smallest)
        log.info("sandwich: largest %s, smallest %s (backbone FLOPs at %d px)", largest, smallest,
                 image_size)  # fmt: skip

    def supernet(net: nn.Module) -> ShuffleNetSampling:
        if net.backbone.body is not body:
            raise ValueError("this step hook was made for another supernet")
        return adapter

    if sampling == "strict_fair":
        return StrictFairHook(len(CHOICES), seed=seed, supernet=supernet)
    return SandwichHook(
        num_random=num_random,
        distill=distill,
        kd_ratio=kd_ratio,
        seed=seed,
        kind="sigmoid",
        rng_prefix="nasdet.detnas.subnet",
        supernet=supernet,
    )
