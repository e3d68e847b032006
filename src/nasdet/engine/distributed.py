"""Data-parallel training under ``torchrun`` (one process per GPU, or several CPU processes).

``torchrun --nproc_per_node N ...`` sets ``RANK``, ``WORLD_SIZE`` and ``LOCAL_RANK``;
:func:`init_distributed` joins the process group they describe (NCCL on CUDA, gloo on the CPU).
Without those variables (a plain ``python`` run) everything here is a no-op and
:class:`~nasdet.engine.train.Trainer` trains in one process exactly as before.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DistInfo:
    """This process's place in the group: ``rank`` of ``world_size``, GPU ``local_rank``."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        """Rank 0: the process that writes files, evaluates and logs."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        """More than one process trains together."""
        return self.world_size > 1


def is_distributed() -> bool:
    """A process group with more than one process is initialised."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def init_distributed(*, timeout_minutes: float = 60.0) -> DistInfo:
    """Join the process group torchrun describes (``WORLD_SIZE > 1``); returns this process's place.

    Backend ``nccl`` when CUDA is available (after ``torch.cuda.set_device(LOCAL_RANK)``), else
    ``gloo``. ``timeout_minutes`` bounds every collective, including the barrier the other ranks
    wait at while rank 0 evaluates: keep it above the longest evaluation. Idempotent; without
    torchrun's variables it does nothing and returns ``DistInfo(0, 1, 0)``.
    """
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return DistInfo()
    if not dist.is_available():
        raise RuntimeError("WORLD_SIZE > 1 but this torch build has no torch.distributed")
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if not dist.is_initialized():
        cuda = torch.cuda.is_available()
        if cuda:
            torch.cuda.set_device(local_rank)
        backend = "nccl" if cuda else "gloo"
        dist.init_process_group(backend=backend, timeout=timedelta(minutes=timeout_minutes))
        log.info(
            "joined a %s group: rank %d of %d", backend, dist.get_rank(), dist.get_world_size()
        )
    return DistInfo(dist.get_rank(), dist.get_world_size(), local_rank)


def current() -> DistInfo:
    """This process's place in the initialised group; ``DistInfo(0, 1, 0)`` when there is none."""
    if not (dist.is_available() and dist.is_initialized()):
        return DistInfo()
    return DistInfo(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")))


def barrier() -> None:
    """Wait for every process of the group (no-op when not distributed)."""
    if is_distributed():
        dist.barrier()


def cleanup() -> None:
    """Leave the process group, if one was joined."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
