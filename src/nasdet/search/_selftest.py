"""Task functions for checking an executor: importable by name on every Ray worker.

Tests use it, and so can a user checking a cluster::

    from nasdet.search.executors import RayExecutor, Task
    from nasdet.search._selftest import sleep_task

    with RayExecutor(address="auto") as ex:
        print(list(ex.run(sleep_task, [Task(i, {"value": i}) for i in range(8)])))

and for an actor executor (:mod:`nasdet.search.actors`), ``setup_actor`` and ``actor_task``.
"""

from __future__ import annotations

import os
import socket
import time
from typing import Any


def sleep_task(payload: dict[str, Any]) -> dict[str, Any]:
    """Sleep, then report when and where it ran.

    Args:
        payload: ``sleep_s`` (seconds, default 0), ``value`` (a number, default 0); ``fail``:
            raise ``ValueError``; ``crash``: kill the worker process (``os._exit``);
            ``crash_once``: a file path: kill the worker unless the file exists, creating it
            first (so that the task succeeds when it runs again).

    Returns:
        ``{"value": 2 * value, "start": t0, "end": t1, "pid": ..., "host": ...}`` with unix
        times in seconds.
    """
    start = time.time()
    if payload.get("crash"):
        os._exit(3)
    if payload.get("crash_once") and not os.path.exists(payload["crash_once"]):
        open(payload["crash_once"], "w").close()
        os._exit(3)
    time.sleep(float(payload.get("sleep_s", 0)))
    if payload.get("fail"):
        raise ValueError(f"asked to fail (value {payload.get('value')})")
    return {
        "value": 2 * payload.get("value", 0),
        "start": start,
        "end": time.time(),
        "pid": os.getpid(),
        "host": socket.gethostname(),
    }


def threads_task(payload: dict[str, Any]) -> dict[str, Any]:
    """Torch's intra-op threads where the task runs, and the ``OMP_NUM_THREADS`` it found."""
    import torch

    return {"threads": torch.get_num_threads(), "omp": os.environ.get("OMP_NUM_THREADS")}


def setup_actor(payload: dict[str, Any]) -> dict[str, Any]:
    """An actor's one-time setup: appends ``"<pid>\\n"`` to the file ``payload["log"]`` (if
    given) and returns the state ``{"pid": pid, "setup_at": unix seconds}``; ``fail``: raise
    ``ValueError``."""
    if payload.get("fail"):
        raise ValueError("asked to fail in setup")
    if payload.get("log"):
        with open(payload["log"], "a") as f:
            f.write(f"{os.getpid()}\n")
    return {"pid": os.getpid(), "setup_at": time.time()}


def actor_task(state: dict[str, Any], payload: dict[str, Any]) -> dict[str, Any]:
    """:func:`sleep_task` on an actor: its result plus ``setup_pid``, the pid its state was set up
    in, and ``metrics: {"score": value}``."""
    result = sleep_task(payload)
    return {
        **result,
        "setup_pid": state["pid"],
        "metrics": {"score": float(payload.get("value", 0))},
    }
