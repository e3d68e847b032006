"""Record store: lifecycle, dedup, resume, bad files, and concurrent threads and processes."""

from __future__ import annotations

import multiprocessing
import os
import random
import signal
import sqlite3
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from nasdet.errors import NasdetError
from nasdet.search import RECORDS_FILENAME, RecordStore, RecordStoreError


@pytest.fixture
def store(tmp_path: Path):
    with RecordStore(tmp_path / "run" / RECORDS_FILENAME) as opened:
        yield opened


def test_add_get_roundtrip(store: RecordStore):
    before = time.time()
    rec = store.add("serial", "111-2111", cost={"params": 123, "flops": 4.5}, extra={"seed": 1})
    assert rec.id >= 1 and rec.step == "serial" and rec.genotype == "111-2111"
    assert rec.status == "pending" and rec.parent_id is None
    assert rec.metrics == {} and rec.cost == {"params": 123, "flops": 4.5}
    assert rec.extra == {"seed": 1} and rec.error is None and rec.worker is None
    assert before <= rec.created_at <= time.time()
    assert rec.started_at is None and rec.finished_at is None and rec.duration_s is None
    assert store.get(rec.id) == rec
    child = store.add("serial", "111-2211", parent_id=rec.id)
    assert child.parent_id == rec.id and child.id > rec.id


def test_lifecycle_claim_finish(store: RecordStore, tmp_path: Path):
    rec = store.add("serial", "g", cost={"params": 10})
    assert store.claim(rec.id, "w1") is True
    assert store.claim(rec.id, "w2") is False  # already running
    running = store.get(rec.id)
    assert running.status == "running" and running.worker == "w1" and running.started_at
    done = store.finish(
        rec.id, {"mAP": np.float32(0.25), "AP50": 0.5}, tmp_path / "w.pt", cost={"flops": 7}
    )
    assert done.status == "done" and done.metrics == {"mAP": 0.25, "AP50": 0.5}
    assert done.cost == {"params": 10, "flops": 7}  # merged
    assert done.weights_path == str(tmp_path / "w.pt") and done.duration_s >= 0
    assert store.claim(rec.id) is False
    with pytest.raises(RecordStoreError, match=r"cannot finish record \d+ .*'done'"):
        store.finish(rec.id, {"mAP": 0.3})


def test_finish_needs_claim_and_status_changes(store: RecordStore):
    a, b, c = (store.add("search", g) for g in ("a", "b", "c"))
    with pytest.raises(RecordStoreError, match="'pending', not running"):
        store.finish(a.id, {"mAP": 0.1})
    failed = store.fail(a.id, "CUDA out of memory")
    assert failed.status == "failed" and failed.error == "CUDA out of memory"
    assert failed.finished_at is not None
    infeasible = store.mark_infeasible(b.id, "params 9.1e6 > 5e6")
    assert infeasible.status == "infeasible" and infeasible.error == "params 9.1e6 > 5e6"
    assert store.claim(c.id)
    assert store.fail(c.id, "diverged").status == "failed"
    with pytest.raises(RecordStoreError, match="cannot fail"):
        store.fail(b.id, "again")
    with pytest.raises(RecordStoreError, match="no record with id 999"):
        store.claim(999)
    with pytest.raises(ValueError, match="metrics"):
        store.finish(c.id, {"mAP": "high"})


def test_dedup_find_records_count(store: RecordStore):
    a = store.add("serial", "111-2111")
    with pytest.raises(RecordStoreError, match=r"'111-2111' is already record \d+ of step"):
        store.add("serial", "111-2111")
    assert store.add("serial", "111-2111", exist_ok=True) == a
    other = store.add("parallel", "111-2111")  # same genotype, another step: allowed
    assert store.find("serial", "111-2111") == a
    assert store.find("parallel", "111-2111") == other
    assert store.find("serial", "nope") is None
    b = store.add("serial", "211-2111")
    store.claim(b.id)
    assert [r.id for r in store.records()] == [a.id, other.id, b.id]
    assert [r.id for r in store.records("serial")] == [a.id, b.id]
    assert [r.id for r in store.records(status="running")] == [b.id]
    assert [r.id for r in store.records("serial", ["pending", "running"])] == [a.id, b.id]
    assert store.count("serial") == 2 and store.count("serial", "pending") == 1
    assert store.count(status="pending") == 2 and store.count("nope") == 0
    with pytest.raises(ValueError, match="unknown record status"):
        store.records(status="finished")
    with pytest.raises(ValueError, match="non-empty"):
        store.add("serial", "")
    with pytest.raises(TypeError, match="canonical string"):
        store.add("serial", (1, 1, 1))


def test_claim_next_in_id_order(store: RecordStore):
    ids = [store.add("search", f"g{i}").id for i in range(3)]
    store.add("other", "x")
    got = [store.claim_next("search", "w") for _ in range(4)]
    assert [r.id for r in got[:3]] == ids and got[3] is None
    assert all(r.status == "running" and r.worker == "w" for r in got[:3])


def test_reopen_and_reset_running(tmp_path: Path):
    with RecordStore(tmp_path) as store:  # a directory: DIR/records.sqlite
        s1, s2, p1 = store.add("serial", "a"), store.add("serial", "b"), store.add("parallel", "a")
        for rec in (s1, s2, p1):
            store.claim(rec.id)
        store.finish(s2.id, {"mAP": 0.4})
    assert (tmp_path / RECORDS_FILENAME).is_file()
    with RecordStore(tmp_path / RECORDS_FILENAME) as store:
        assert store.get(s2.id).metrics == {"mAP": 0.4}
        assert store.reset_running("serial") == 1
        assert store.get(s1.id).status == "pending" and store.get(s1.id).worker is None
        assert store.reset_running() == 1 and store.reset_running() == 0
        assert store.count(None, "pending") == 2
        assert store.add("serial", "c").id > p1.id
        conn = sqlite3.connect(store.path)
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        conn.close()


def test_fail_keeps_the_traceback_and_reset_failed_retries_only_that_step(store: RecordStore):
    a, b, c = (
        store.add("serial", "a", extra={"seed": 3}),
        store.add("serial", "b"),
        store.add("x", "a"),
    )
    for rec in (a, b, c):
        store.claim(rec.id)
    tb = "Traceback (most recent call last):\n  ...\nRuntimeError: boom\n"
    failed = store.fail(a.id, "RuntimeError: boom", traceback=tb)
    assert failed.status == "failed" and failed.error == "RuntimeError: boom"
    assert failed.extra == {"seed": 3, "traceback": tb}
    assert store.fail(b.id, "ValueError: no traceback").extra == {}  # the old call still works
    store.fail(c.id, "other step")
    assert store.reset_failed("serial") == 2 and store.reset_failed("serial") == 0
    again = store.get(a.id)
    assert again.status == "pending" and again.error is None and again.extra == {"seed": 3}
    assert again.started_at is None and again.finished_at is None and again.worker is None
    assert store.get(c.id).status == "failed"  # another step's failure stays
    assert store.claim(a.id) and store.finish(a.id, {"mAP": 0.5}).extra == {"seed": 3}


def _claim_then_die(path: Path, record_id: int) -> None:
    store = RecordStore(path)
    store.claim(record_id, "doomed")
    os.kill(os.getpid(), signal.SIGKILL)


def _context() -> multiprocessing.context.BaseContext:
    methods = multiprocessing.get_all_start_methods()
    return multiprocessing.get_context("fork" if "fork" in methods else "spawn")


def test_killed_worker_left_record_committed_and_resumable(tmp_path: Path):
    store = RecordStore(tmp_path)
    rec = store.add("search", "g0")
    proc = _context().Process(target=_claim_then_die, args=(store.path, rec.id))
    proc.start()
    proc.join(30)
    assert proc.exitcode == -signal.SIGKILL
    assert store.get(rec.id).status == "running" and store.get(rec.id).worker == "doomed"
    assert store.reset_running("search") == 1
    assert store.claim(rec.id, "resumed")
    store.close()


def test_schema_version_mismatch_is_one_line_nasdet_error(tmp_path: Path):
    path = tmp_path / "records.sqlite"
    RecordStore(path).close()
    conn = sqlite3.connect(path)
    conn.execute("UPDATE nasdet_meta SET value = '99' WHERE key = 'schema_version'")
    conn.commit()
    conn.close()
    with pytest.raises(NasdetError, match="schema version 99, this nasdet reads version 1") as info:
        RecordStore(path)
    assert "\n" not in str(info.value) and info.value.__cause__ is None


@pytest.mark.parametrize("damage", ["text", "header"])
def test_corrupt_file_is_nasdet_error(tmp_path: Path, damage: str):
    path = tmp_path / "records.sqlite"
    if damage == "text":
        path.write_text("genotype,mAP\n111-2111,0.3\n" * 100)
    else:
        with RecordStore(path) as store:
            store.add("serial", "a")
        data = bytearray(path.read_bytes())
        data[:16] = b"garbage garbage!"
        path.write_bytes(bytes(data))
        for suffix in ("-wal", "-shm"):
            Path(f"{path}{suffix}").unlink(missing_ok=True)
    with pytest.raises(RecordStoreError, match="not a readable SQLite record store") as info:
        RecordStore(path)
    assert "\n" not in str(info.value) and str(path) in str(info.value)


def test_foreign_sqlite_file_is_refused_and_left_alone(tmp_path: Path):
    path = tmp_path / "other.sqlite"
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE foo (x)")
    conn.commit()
    conn.close()
    with pytest.raises(RecordStoreError, match="not a nasdet record store"):
        RecordStore(path)
    conn = sqlite3.connect(path)
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "delete"
    conn.close()


# -- concurrency -----------------------------------------------------------------------------

STEP = "search"
N_OWN, N_SHARED = 8, 6


def _work(store: RecordStore, name: str, seed: int) -> list[int]:
    """Claim pending records (random order) until none is left; finish each; return their ids."""
    rng = random.Random(seed)
    claimed: list[int] = []
    while pending := [r.id for r in store.records(STEP, "pending")]:
        rng.shuffle(pending)
        for rid in pending:
            if store.claim(rid, name):
                claimed.append(rid)
                store.finish(rid, {"mAP": rid / 1000}, weights_path=f"{name}/{rid}.pt")
    return claimed


def _process_worker(path: str, index: int, barrier, queue) -> None:
    """Open the (possibly new) store, add own and shared genotypes, then claim and finish."""
    store = RecordStore(path)
    for i in range(N_OWN):
        store.add(STEP, f"w{index}-{i}", cost={"params": i})
    for i in range(N_SHARED):  # every worker adds these: the unique index keeps one of each
        store.add(STEP, f"shared-{i}", exist_ok=True)
    barrier.wait(timeout=60)
    queue.put((index, _work(store, f"proc{index}", seed=index)))


def test_processes_add_claim_finish_without_loss_or_double_claims(tmp_path: Path):
    ctx = _context()
    path = str(tmp_path / "records.sqlite")  # not created yet: the workers race to create it
    n_proc = 4
    barrier, queue = ctx.Barrier(n_proc), ctx.Queue()
    procs = [
        ctx.Process(target=_process_worker, args=(path, i, barrier, queue)) for i in range(n_proc)
    ]
    for proc in procs:
        proc.start()
    results = dict(queue.get(timeout=60) for _ in procs)
    for proc in procs:
        proc.join(30)
        assert proc.exitcode == 0
    claimed = [rid for ids in results.values() for rid in ids]
    with RecordStore(path) as store:
        records = store.records(STEP)
    assert len(records) == n_proc * N_OWN + N_SHARED
    assert sorted(claimed) == sorted(r.id for r in records)  # each claimed exactly once
    assert all(r.status == "done" for r in records)
    owner = {rid: f"proc{i}" for i, ids in results.items() for rid in ids}
    assert all(r.worker == owner[r.id] and r.metrics == {"mAP": r.id / 1000} for r in records)


def test_threads_sharing_a_store_and_with_their_own(tmp_path: Path):
    shared = RecordStore(tmp_path)
    for i in range(30):
        shared.add(STEP, f"g{i}")
    results: dict[str, list[int]] = {}

    def run(name: str, own_store: bool) -> None:
        store = RecordStore(tmp_path) if own_store else shared
        results[name] = _work(store, name, seed=len(name) + own_store)

    threads = [threading.Thread(target=run, args=(f"t{i}", i % 2 == 0)) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    claimed = sorted(rid for ids in results.values() for rid in ids)
    assert len(results) == 4 and claimed == sorted(r.id for r in shared.records())
    assert shared.count(STEP, "done") == 30
    shared.close()
