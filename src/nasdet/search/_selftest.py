"""A task function for checking an executor: importable by name on every Ray worker.

Tests use it, and so can a user checking a cluster::

    from nasdet.search.executors import RayExecutor, Task
    from nasdet.search._selftest import sleep_task

    with RayExecutor(address="auto") as ex:
        print(list(ex.run(sleep_task, [Task(i, {"value": i}) for i in range(8)])))
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
            raise ``ValueError``; ``crash``: kill the worker process (``os._exit``).

    Returns:
        ``{"value": 2 * value, "start": t0, "end": t1, "pid": ..., "host": ...}`` with unix
        times in seconds.
    """
    start = time.time()
    if payload.get("crash"):
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
