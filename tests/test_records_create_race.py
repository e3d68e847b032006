"""Creating a new record store while other connections hold it, as the ranks of a ``torchrun``
job do: each opens the same new ``records.sqlite`` right after the process group forms.

The cause of a flaky ``nasdet run`` under torchrun (one rank exited with status 2): switching a
new file to WAL fails at once with "database is locked" while another connection holds the write
lock — SQLite does not apply the busy timeout there — and the store turned that into a
``RecordStoreError`` claiming the file "stayed locked for 30 s". Two ranks switching at the same
moment is such a case (about 1 pair in 40 on a 2-core machine).
"""

from __future__ import annotations

import multiprocessing
import sqlite3
import threading
import time
from pathlib import Path

import pytest

from nasdet.search import RecordStore, RecordStoreError
from nasdet.search._db import SCHEMA_VERSION


def _hold_write_lock(path: Path, seconds: float) -> threading.Thread:
    """Another connection takes the write lock of ``path`` (a rollback-journal file, as a new
    file is) and keeps it ``seconds``; returns the thread that releases it."""
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    conn.execute("BEGIN IMMEDIATE")

    def release() -> None:
        time.sleep(seconds)
        conn.execute("COMMIT")
        conn.close()

    thread = threading.Thread(target=release)
    thread.start()
    return thread


def test_new_store_waits_for_another_connections_write_lock(tmp_path: Path) -> None:
    path = tmp_path / "records.sqlite"
    holder = _hold_write_lock(path, 0.3)
    start = time.monotonic()
    try:
        store = RecordStore(path, busy_timeout_s=10)  # failed within 1 ms before the fix
    finally:
        holder.join()
    assert time.monotonic() - start >= 0.25  # it waited for the lock, then went on
    with store:
        assert store.add("s", "g").id == 1
        assert store._db.query("PRAGMA journal_mode") == [("wal",)]


def test_new_store_locked_past_the_timeout_says_so_after_waiting(tmp_path: Path) -> None:
    path = tmp_path / "records.sqlite"
    holder = _hold_write_lock(path, 1.5)
    start = time.monotonic()
    try:
        with pytest.raises(RecordStoreError, match=r"stayed locked by another process for 0.5 s"):
            RecordStore(path, busy_timeout_s=0.5)
        waited = time.monotonic() - start
    finally:
        holder.join()
    assert 0.45 <= waited < 1.4  # the message is true: it waited about busy_timeout_s
    RecordStore(path).close()  # once the lock is gone the file becomes a store


PROCESSES = 3
ROUNDS = 300  # each round: every process opens the same new file at one barrier
BUDGET_S = 4.0  # fewer rounds on a slow machine (at least 20 are required)


def _opener(folder: str, index: int, barrier, stop, queue) -> None:
    """Round after round: wait for the others, open ``folder/<round>/records.sqlite`` and add a
    record; process 0 says when the time budget is spent (all stop after the same round)."""
    errors: list[str] = []
    deadline = time.monotonic() + BUDGET_S
    for round_ in range(ROUNDS):
        barrier.wait(timeout=60)
        try:
            with RecordStore(Path(folder) / str(round_) / "records.sqlite") as store:
                store.add("race", f"p{index}")
        except Exception as exc:
            errors.append(f"round {round_}: {type(exc).__name__}: {exc}")
        if index == 0 and time.monotonic() > deadline:
            stop.value = 1
        barrier.wait(timeout=60)
        if stop.value:
            break
    queue.put((index, errors))


def test_processes_creating_one_new_store_at_once_all_succeed(tmp_path: Path) -> None:
    """The torchrun case itself (fails about 9 runs in 10 before the fix; the tests above
    fail every time)."""
    methods = multiprocessing.get_all_start_methods()
    ctx = multiprocessing.get_context("fork" if "fork" in methods else "spawn")
    barrier, stop, queue = ctx.Barrier(PROCESSES), ctx.Value("i", 0), ctx.Queue()
    procs = [
        ctx.Process(target=_opener, args=(str(tmp_path), i, barrier, stop, queue))
        for i in range(PROCESSES)
    ]
    for proc in procs:
        proc.start()
    try:
        results = dict(queue.get(timeout=120) for _ in procs)
    finally:
        barrier.abort()
        for proc in procs:
            proc.join(30)
    rounds = sorted(int(p.name) for p in tmp_path.iterdir() if p.name.isdigit())
    errors = [f"process {i} {e}" for i, errs in sorted(results.items()) for e in errs]
    assert not errors, f"{len(errors)} of {PROCESSES * len(rounds)} opens failed:\n" + "\n".join(
        errors[:5]
    )
    assert len(rounds) >= 20  # enough attempts happened to mean something
    for round_ in rounds:  # each new store has one schema and every process's record
        with RecordStore(tmp_path / str(round_) / "records.sqlite") as store:
            names = {r.genotype for r in store.records("race")}
            assert names == {f"p{i}" for i in range(PROCESSES)}, round_
            assert store._db.query("SELECT value FROM nasdet_meta") == [(str(SCHEMA_VERSION),)]
