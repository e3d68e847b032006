"""Record store: every candidate a search evaluates, one SQLite file per run directory.

A record is one genotype in one pipeline step (``"serial"``, ``"parallel"``, ``"search"``...) and
moves through ``pending → running → done | failed | infeasible``. Every write is its own committed
transaction, so a candidate is on disk before the next one starts and a killed search resumes where
it stopped (:meth:`RecordStore.reset_running` puts records a dead process left ``running`` back to
``pending``). ``(step, genotype)`` is unique: a genotype is evaluated at most once per step.

Several processes and threads may share one file: the database runs in WAL mode with a busy
timeout, each thread (and each process, also after ``fork``) gets its own connection, and
:meth:`RecordStore.claim` moves a record to ``running`` in a single conditional ``UPDATE``, so two
workers never both get it. WAL needs a local file system (not NFS).
"""

from __future__ import annotations

import json
import logging
import os
import socket
import sqlite3
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from nasdet.search._db import COLUMNS, SCHEMA_VERSION, STATUSES, Database, RecordStoreError

__all__ = [
    "RECORDS_FILENAME",
    "SCHEMA_VERSION",
    "STATUSES",
    "Record",
    "RecordStore",
    "RecordStoreError",
    "Status",
    "default_worker",
]

logger = logging.getLogger(__name__)

RECORDS_FILENAME = "records.sqlite"
Status = Literal["pending", "running", "done", "failed", "infeasible"]


@dataclass(frozen=True)
class Record:
    """One candidate of one step, as stored.

    Attributes:
        id: unique, increasing in insertion order.
        step: pipeline step name (``"serial"``, ``"parallel"``, ``"search"``...).
        genotype: the genotype's canonical string form.
        parent_id: record this candidate was derived from (any step), or ``None``.
        status: ``pending``, ``running``, ``done``, ``failed`` or ``infeasible``.
        metrics: evaluation results (``mAP``, ``AP50``...), floats.
        cost: model cost (``params``, ``flops``, ``macs``, ``latency_ms_median``...).
        weights_path: weights file of the evaluated model, or ``None``.
        error: why it failed or is infeasible, else ``None``.
        created_at, started_at, finished_at: unix time in seconds (``None`` until reached).
        worker: who claimed it (see :func:`default_worker`), or ``None``.
        extra: free-form JSON-ready data (seed, epochs, notes...).
    """

    id: int
    step: str
    genotype: str
    parent_id: int | None
    status: Status
    metrics: dict[str, float]
    cost: dict[str, Any]
    weights_path: str | None
    error: str | None
    created_at: float
    started_at: float | None
    finished_at: float | None
    worker: str | None
    extra: dict[str, Any]

    def values(self) -> dict[str, Any]:
        """``cost`` and ``metrics`` in one dict; a key in both takes the ``metrics`` value."""
        return {**self.cost, **self.metrics}

    @property
    def duration_s(self) -> float | None:
        """Seconds from claim to finish, or ``None`` while not finished."""
        if self.started_at is None or self.finished_at is None:
            return None
        return self.finished_at - self.started_at


def default_worker() -> str:
    """``"host:pid"`` of this process, the default worker name."""
    return f"{socket.gethostname()}:{os.getpid()}"


def _dumps(obj: Mapping[str, Any] | None, what: str) -> str:
    try:
        return json.dumps(dict(obj or {}), sort_keys=True, default=_json_default)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{what} must be JSON-serialisable: {exc}") from exc


def _json_default(obj: Any) -> Any:
    if hasattr(obj, "item"):  # numpy / torch scalars
        return obj.item()
    raise TypeError(f"{type(obj).__name__} is not JSON-serialisable")


def _metrics(metrics: Mapping[str, Any]) -> dict[str, float]:
    try:
        return {str(k): float(v) for k, v in metrics.items()}
    except (TypeError, ValueError) as exc:
        raise ValueError(f"metrics must map names to numbers: {exc}") from exc


def _row_to_record(row: tuple) -> Record:
    """A ``SELECT COLUMNS`` row (same order as :class:`Record`'s fields) as a record."""
    fields = list(row)
    for i in (5, 6, 13):  # metrics, cost, extra
        fields[i] = json.loads(fields[i])
    return Record(*fields)


class RecordStore:
    """Candidates of a search run in a SQLite file; safe across threads and processes.

    Args:
        path: the database file, created (with its parent folders) if missing; an existing
            directory means ``path / "records.sqlite"``.
        busy_timeout_s: how long a write waits for another writer's lock, in seconds.

    Raises:
        RecordStoreError: the file is not SQLite, is corrupt, is another program's database or
            has another schema version.
    """

    def __init__(self, path: str | Path, *, busy_timeout_s: float = 30.0) -> None:
        path = Path(path)
        if path.is_dir():
            path = path / RECORDS_FILENAME
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._db = Database(path, float(busy_timeout_s))

    @classmethod
    def open_readonly(cls, path: str | Path, *, busy_timeout_s: float = 30.0) -> RecordStore:
        """The store at ``path`` (a file, or a run directory holding ``records.sqlite``) for
        reading only, safe while a run writes to it: opened with SQLite's ``mode=ro``, so
        nothing is created or written (the file's bytes and mtime stay as they are) and every
        write method raises :class:`RecordStoreError`.

        Raises:
            RecordStoreError: the file is missing, empty, not a nasdet store of this version.
        """
        path = Path(path)
        if path.is_dir():
            path = path / RECORDS_FILENAME
        store = cls.__new__(cls)
        store.path = path
        store._db = Database(path, float(busy_timeout_s), readonly=True)
        return store

    def close(self) -> None:
        """Close this process's connections (the store reopens them on next use)."""
        self._db.close()

    def __enter__(self) -> RecordStore:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # -- writes ------------------------------------------------------------------------------

    def add(
        self,
        step: str,
        genotype: str,
        parent_id: int | None = None,
        cost: Mapping[str, Any] | None = None,
        extra: Mapping[str, Any] | None = None,
        *,
        exist_ok: bool = False,
    ) -> Record:
        """Add a ``pending`` candidate and return it.

        Raises:
            RecordStoreError: ``(step, genotype)`` is already stored, unless ``exist_ok``, which
                returns the stored record unchanged (whatever its status).
        """
        if not isinstance(genotype, str) or not isinstance(step, str):
            raise TypeError("step and genotype must be str (the genotype's canonical string)")
        if not step or not genotype:
            raise ValueError(f"step and genotype must be non-empty, got {step!r}, {genotype!r}")
        values = (step, genotype, parent_id, "pending", _dumps(cost, "cost"), time.time(),
                  _dumps(extra, "extra"))  # fmt: skip
        try:
            with self._db.write() as cur:
                cur.execute(
                    "INSERT INTO records (step, genotype, parent_id, status, cost, created_at, "
                    "extra) VALUES (?, ?, ?, ?, ?, ?, ?)",
                    values,
                )
                rid = cur.lastrowid
        except sqlite3.IntegrityError:
            existing = self.find(step, genotype)
            if exist_ok and existing is not None:
                return existing
            raise RecordStoreError(
                f"{self.path}: genotype {genotype!r} is already record "
                f"{existing.id if existing else '?'} of step {step!r}"
            ) from None
        return self.get(int(rid))

    def claim(self, record_id: int, worker: str | None = None) -> bool:
        """Atomically move a ``pending`` record to ``running`` for ``worker``.

        Returns:
            ``True`` if this call claimed it, ``False`` if it was not pending (another worker
            took it, or it is finished).
        """
        with self._db.write() as cur:
            cur.execute(
                "UPDATE records SET status = 'running', worker = ?, started_at = ? "
                "WHERE id = ? AND status = 'pending'",
                (worker or default_worker(), time.time(), record_id),
            )
            claimed = cur.rowcount == 1
        if not claimed:
            self.get(record_id)  # raises if it does not exist
        return claimed

    def claim_next(self, step: str, worker: str | None = None) -> Record | None:
        """Claim the oldest ``pending`` record of ``step``; ``None`` when none is left."""
        with self._db.write() as cur:
            row = cur.execute(
                "SELECT id FROM records WHERE step = ? AND status = 'pending' ORDER BY id LIMIT 1",
                (step,),
            ).fetchone()
            if row is None:
                return None
            cur.execute(
                "UPDATE records SET status = 'running', worker = ?, started_at = ? WHERE id = ?",
                (worker or default_worker(), time.time(), row[0]),
            )
        return self.get(row[0])

    def _transition(
        self,
        record_id: int,
        allowed: tuple[str, ...],
        action: str,
        updates: Callable[[Record], Mapping[str, Any]],
    ) -> Record:
        """Apply ``updates(current)`` (column → value) if the record's status is ``allowed``.

        Read, check and write happen in one transaction, so no other writer slips in between.
        """
        with self._db.write() as cur:
            row = cur.execute(f"SELECT {COLUMNS} FROM records WHERE id = ?", (record_id,))
            row = row.fetchone()
            if row is None:
                raise RecordStoreError(f"{self.path}: no record with id {record_id}")
            current = _row_to_record(row)
            if current.status in allowed:
                columns = dict(updates(current))
                sets = ", ".join(f"{name} = ?" for name in columns)
                cur.execute(
                    f"UPDATE records SET {sets} WHERE id = ?", (*columns.values(), record_id)
                )
        if current.status not in allowed:
            raise RecordStoreError(
                f"{self.path}: cannot {action} record {record_id} ({current.step} "
                f"{current.genotype!r}): it is {current.status!r}, not {' or '.join(allowed)}"
            )
        return self.get(record_id)

    def finish(
        self,
        record_id: int,
        metrics: Mapping[str, float],
        weights_path: str | Path | None = None,
        cost: Mapping[str, Any] | None = None,
        extra: Mapping[str, Any] | None = None,
    ) -> Record:
        """Mark a ``running`` record ``done`` with its metrics (floats, e.g. ``mAP`` in [0, 1]).

        ``cost`` and ``extra`` are merged into the stored dicts (new keys win).

        Raises:
            RecordStoreError: the record is missing or not ``running`` (claim it first).
        """
        metrics_json = _dumps(_metrics(metrics), "metrics")
        _dumps(cost, "cost"), _dumps(extra, "extra")  # fail before the transaction, not inside

        def updates(current: Record) -> dict[str, Any]:
            return {
                "status": "done",
                "metrics": metrics_json,
                "cost": _dumps({**current.cost, **(cost or {})}, "cost"),
                "extra": _dumps({**current.extra, **(extra or {})}, "extra"),
                "weights_path": None if weights_path is None else str(weights_path),
                "error": None,
                "finished_at": time.time(),
            }

        return self._transition(record_id, ("running",), "finish", updates)

    def fail(self, record_id: int, error: str, traceback: str | None = None) -> Record:
        """Mark a ``pending`` or ``running`` record ``failed`` with a one-line reason; a
        ``traceback`` (the full text) is kept in ``extra["traceback"]``."""

        def updates(current: Record) -> dict[str, Any]:
            columns: dict[str, Any] = {
                "status": "failed",
                "error": str(error),
                "finished_at": time.time(),
            }
            if traceback is not None:
                columns["extra"] = _dumps({**current.extra, "traceback": traceback}, "extra")
            return columns

        return self._transition(record_id, ("pending", "running"), "fail", updates)

    def mark_infeasible(self, record_id: int, reason: str) -> Record:
        """Mark a ``pending`` or ``running`` record ``infeasible`` (violates a constraint)."""
        updates = {"status": "infeasible", "error": str(reason), "finished_at": time.time()}
        return self._transition(
            record_id, ("pending", "running"), "mark infeasible", lambda _: updates
        )

    def reset_running(self, step: str | None = None) -> int:
        """Put ``running`` records (of ``step``, or all) back to ``pending``; return how many.

        Call on resume, when no other worker is alive: records a killed process left running
        are evaluated again.
        """
        where, params = "status = 'running'", ()
        if step is not None:
            where, params = where + " AND step = ?", (step,)
        with self._db.write() as cur:
            cur.execute(
                f"UPDATE records SET status = 'pending', worker = NULL, started_at = NULL "
                f"WHERE {where}",
                params,
            )
            count = cur.rowcount
        if count:
            logger.info("%s: %d running record(s) put back to pending", self.path, count)
        return count

    def delete_step(self, step: str) -> int:
        """Remove every record of ``step`` (a restart of that step); return how many."""
        with self._db.write() as cur:
            cur.execute("DELETE FROM records WHERE step = ?", (step,))
            return int(cur.rowcount)

    def reset_failed(self, step: str) -> int:
        """Put the ``failed`` records of ``step`` back to ``pending`` (their error and
        ``extra["traceback"]`` dropped) so they are evaluated again; return how many."""
        with self._db.write() as cur:
            rows = cur.execute(
                "SELECT id, extra FROM records WHERE step = ? AND status = 'failed'", (step,)
            ).fetchall()
            for rid, extra in rows:
                kept = {k: v for k, v in json.loads(extra).items() if k != "traceback"}
                cur.execute(
                    "UPDATE records SET status = 'pending', error = NULL, worker = NULL, "
                    "started_at = NULL, finished_at = NULL, extra = ? WHERE id = ?",
                    (_dumps(kept, "extra"), rid),
                )
        if rows:
            logger.info(
                "%s: %d failed record(s) of %s put back to pending", self.path, len(rows), step
            )
        return len(rows)

    # -- reads -------------------------------------------------------------------------------

    def get(self, record_id: int) -> Record:
        """The record with this id; raises :class:`RecordStoreError` if there is none."""
        rows = self._db.query(f"SELECT {COLUMNS} FROM records WHERE id = ?", (record_id,))
        if not rows:
            raise RecordStoreError(f"{self.path}: no record with id {record_id}")
        return _row_to_record(rows[0])

    def find(self, step: str, genotype: str) -> Record | None:
        """The record of ``genotype`` in ``step`` (any status), or ``None``."""
        rows = self._db.query(
            f"SELECT {COLUMNS} FROM records WHERE step = ? AND genotype = ?", (step, genotype)
        )
        return _row_to_record(rows[0]) if rows else None

    def records(
        self, step: str | None = None, status: str | Iterable[str] | None = None
    ) -> list[Record]:
        """Records of ``step`` (or all) with ``status`` (one or several, or all), by id."""
        where, params = self._where(step, status)
        rows = self._db.query(f"SELECT {COLUMNS} FROM records{where} ORDER BY id", params)
        return [_row_to_record(r) for r in rows]

    def count(self, step: str | None = None, status: str | Iterable[str] | None = None) -> int:
        """How many records of ``step`` (or all) have ``status`` (one or several, or any)."""
        where, params = self._where(step, status)
        return int(self._db.query(f"SELECT COUNT(*) FROM records{where}", params)[0][0])

    @staticmethod
    def _where(step: str | None, status: str | Iterable[str] | None) -> tuple[str, tuple]:
        clauses: list[str] = []
        params: list[Any] = []
        if step is not None:
            clauses.append("step = ?")
            params.append(step)
        if status is not None:
            wanted = [status] if isinstance(status, str) else list(status)
            unknown = [s for s in wanted if s not in STATUSES]
            if unknown or not wanted:
                raise ValueError(f"unknown record status {unknown}; known: {', '.join(STATUSES)}")
            clauses.append(f"status IN ({', '.join('?' * len(wanted))})")
            params.extend(wanted)
        return (" WHERE " + " AND ".join(clauses) if clauses else ""), tuple(params)


def done_record(store: RecordStore, step: str, genotype: str) -> Record | None:
    """The ``done`` record of (``step``, ``genotype``), or ``None`` (absent or not finished): a
    step that produces one result per genotype (a supernet, a final training) skips its work
    when this exists."""
    found = store.find(step, genotype)
    return found if found is not None and found.status == "done" else None


def commit_result(
    store: RecordStore,
    step: str,
    genotype: str,
    metrics: Mapping[str, Any],
    weights: str | Path | None = None,
    **finish: Any,
) -> Record:
    """Record a step's one result for ``genotype`` as done and return it: the record is added
    (with ``finish["extra"]``) if it is not there yet, and returned unchanged if it is already
    done; ``finish`` goes to :meth:`RecordStore.finish` (``cost``, ``extra``...)."""
    rec = store.add(step, genotype, extra=finish.get("extra"), exist_ok=True)
    if rec.status == "done":
        return rec
    if rec.status != "running":
        store.reset_running(step)
        store.claim(rec.id)
    path = None if weights is None else str(weights)
    return store.finish(rec.id, dict(metrics), weights_path=path, **finish)
