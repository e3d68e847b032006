"""Data-parallel training under ``torchrun`` (one process per GPU, or several CPU processes).

``torchrun --nproc_per_node N ...`` sets ``RANK``, ``WORLD_SIZE`` and ``LOCAL_RANK``;
:func:`init_distributed` joins the process group they describe (NCCL on CUDA, gloo on the CPU).
Without those variables (a plain ``python`` run) everything here is a no-op and
:class:`~nasdet.engine.train.Trainer` trains in one process exactly as before.

``torchrun --max-restarts N`` restarts the whole group when a process dies; the Trainer's
checkpoint is what the new group continues from. Each restarted group joins through a store
namespace of its own (see :func:`init_distributed`).
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

    A group that torchrun restarted (``--max-restarts``) on one node joins under a store prefix
    of its attempt: see :func:`_attempt_store`.
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
        timeout = timedelta(minutes=timeout_minutes)
        store = _attempt_store(world_size, timeout)
        if store is None:
            dist.init_process_group(backend=backend, timeout=timeout)
        else:
            rank = int(os.environ["RANK"])
            dist.init_process_group(
                backend=backend, store=store, rank=rank, world_size=world_size, timeout=timeout
            )
        log.info(
            "joined a %s group: rank %d of %d", backend, dist.get_rank(), dist.get_world_size()
        )
    return DistInfo(dist.get_rank(), dist.get_world_size(), local_rank)


def restart_count() -> int:
    """How many times torchrun (``--max-restarts``) has restarted this process's group: 0 in its
    first attempt, and outside torchrun."""
    return int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0"))


def _attempt_store(world_size: int, timeout: timedelta) -> dist.Store | None:
    """The store a group restarted by torchrun on one node joins through: the agent's store
    under the prefix ``nasdet/attempt_<TORCHELASTIC_RESTART_COUNT>``; ``None`` (torch's own
    ``env://`` join) for a first attempt, a launch by something else than torchrun, or torchrun
    without a shared store (``TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1``).

    Why: torchrun's agent keeps one store for all its attempts and gives it to the processes
    without a per-attempt prefix, so the keys a dead attempt wrote are still there when the next
    one joins: a process that joins before its peers reads a dead peer's gloo address (or NCCL
    id) and fails ("Connection refused"), or hangs (pytorch/pytorch#135712). On one node the
    restart count is the same for every process. Over several nodes it is not (each agent
    counts its own restarts), so there torch's join is kept and a warning says to launch with
    ``TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1`` (a new store per attempt).
    """
    attempt = restart_count()
    shared = os.environ.get("TORCHELASTIC_USE_AGENT_STORE") == "True"
    if not shared or not attempt:
        return None
    if int(os.environ.get("GROUP_WORLD_SIZE", "1")) > 1:
        log.warning(
            "torchrun attempt %d over several nodes with the agent's shared store: the new group "
            "may read the last attempt's addresses and fail to join — launch torchrun with "
            "TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1",
            attempt,
        )
        return None
    log.info("torchrun restarted the group: attempt %d joins under its own store prefix", attempt)
    agent = dist.TCPStore(
        os.environ["MASTER_ADDR"],
        int(os.environ["MASTER_PORT"]),
        world_size,
        is_master=False,
        timeout=timeout,
    )
    return dist.PrefixStore(f"nasdet/attempt_{attempt}", agent)


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
