"""SQLite plumbing of the record store: schema, per-thread connections, transactions, errors.

Connections run in autocommit mode; every write is one explicit ``BEGIN IMMEDIATE`` … ``COMMIT``
transaction (taking the write lock up front, so two writers never deadlock on a lock upgrade). The
file is in WAL mode with ``synchronous = FULL`` and a busy timeout. Each thread gets its own
connection, and a forked child opens new ones instead of using its parent's.
"""

from __future__ import annotations

import os
import random
import sqlite3
import threading
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from nasdet.errors import NasdetError

SCHEMA_VERSION = 1
STATUSES: tuple[str, ...] = ("pending", "running", "done", "failed", "infeasible")
COLUMNS = (
    "id, step, genotype, parent_id, status, metrics, cost, weights_path, error, "
    "created_at, started_at, finished_at, worker, extra"
)
_SCHEMA = f"""
CREATE TABLE nasdet_meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE records (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    step TEXT NOT NULL,
    genotype TEXT NOT NULL,
    parent_id INTEGER,
    status TEXT NOT NULL CHECK (status IN {STATUSES!r}),
    metrics TEXT NOT NULL DEFAULT '{{}}',
    cost TEXT NOT NULL DEFAULT '{{}}',
    weights_path TEXT,
    error TEXT,
    created_at REAL NOT NULL,
    started_at REAL,
    finished_at REAL,
    worker TEXT,
    extra TEXT NOT NULL DEFAULT '{{}}'
);
CREATE UNIQUE INDEX records_step_genotype ON records (step, genotype);
CREATE INDEX records_step_status ON records (step, status)
"""


class RecordStoreError(NasdetError):
    """The record file is unusable, or a record is missing or in the wrong state."""


def _is_locked(exc: sqlite3.OperationalError) -> bool:
    """SQLITE_BUSY or SQLITE_LOCKED (any extended code): another connection holds a lock."""
    code = getattr(exc, "sqlite_errorcode", None)
    if code is None:
        return "locked" in str(exc) or "busy" in str(exc)
    return code & 0xFF in (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED)


class Database:
    """Connections to one record-store file, created and schema-checked on construction.

    Args:
        path: the SQLite file (its parent folder must exist).
        busy_timeout_s: how long a statement waits for another connection's lock, in seconds.
        readonly: open with the URI ``mode=ro``: never create the file, never write to it (the
            schema is checked, not created); every write raises :class:`RecordStoreError`.
            SQLite leaves the ``-wal`` and ``-shm`` files a reader of a WAL database needs
            when no other connection has made them.

    Raises:
        RecordStoreError: not SQLite, corrupt, another program's database, other schema version;
            with ``readonly``, also a missing file.
    """

    def __init__(self, path: Path, busy_timeout_s: float, *, readonly: bool = False) -> None:
        self.path = path
        self.busy_timeout_s = busy_timeout_s
        self.readonly = readonly
        self._pid = os.getpid()
        self._local = threading.local()
        self._lock = threading.Lock()
        self._conns: list[sqlite3.Connection] = []
        self._inherited: list[sqlite3.Connection] = []
        if readonly:
            self._check_readonly()
        else:
            self._init_schema()

    def conn(self) -> sqlite3.Connection:
        """This thread's connection (opened on first use)."""
        if os.getpid() != self._pid:
            # A forked child: keep (never use, never close) the parent's handles, since closing
            # them here could disturb the parent's locks; open fresh ones for this process.
            self._inherited = self._inherited + self._conns
            self._pid, self._local = os.getpid(), threading.local()
            self._lock, self._conns = threading.Lock(), []
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = self._connect()
            self._local.conn = conn
            with self._lock:
                self._conns.append(conn)
        return conn

    def _connect(self) -> sqlite3.Connection:
        try:
            target = self.path
            if self.readonly:  # a URI, so that a missing file is an error, not created
                target = f"{self.path.resolve().as_uri()}?mode=ro"
            conn = sqlite3.connect(
                target,
                uri=self.readonly,
                timeout=self.busy_timeout_s,
                isolation_level=None,  # autocommit; write transactions are explicit
                check_same_thread=False,  # only so that close() may close every thread's one
            )
            conn.execute(f"PRAGMA busy_timeout = {int(self.busy_timeout_s * 1000)}")
            if not self.readonly:
                conn.execute("PRAGMA synchronous = FULL")
        except sqlite3.DatabaseError as exc:
            raise self.error(exc) from None
        return conn

    def error(self, exc: sqlite3.DatabaseError) -> RecordStoreError:
        """A one-line :class:`RecordStoreError` naming the file for a SQLite error."""
        text = str(exc)
        if "not a database" in text or "malformed" in text:
            return RecordStoreError(
                f"{self.path}: not a readable SQLite record store ({text}); move it away or "
                "choose another run directory"
            )
        if "readonly" in text:
            return RecordStoreError(f"{self.path}: opened read-only, not written ({text})")
        if "locked" in text or "busy" in text:
            return RecordStoreError(
                f"{self.path}: database stayed locked by another process for "
                f"{self.busy_timeout_s:g} s ({text}); retry or raise busy_timeout_s"
            )
        return RecordStoreError(f"{self.path}: SQLite error: {text}")

    def _init_schema(self) -> None:
        """Check the file is a nasdet store of this schema version; on a new file, create the
        schema and switch to WAL.

        Several processes may do this on one new file at the same moment (the ranks of a
        ``torchrun`` job do). Each step is safe to repeat, and the whole is retried on "database
        is locked" until ``busy_timeout_s`` has passed: SQLite's busy timeout does not cover the
        switch to WAL, which fails at once while another connection holds the write lock (it
        already holds a read lock there, and waiting could deadlock).
        """
        deadline = time.monotonic() + self.busy_timeout_s
        pause = 0.002
        while True:
            try:
                version = self._setup()
                break
            except sqlite3.OperationalError as exc:
                left = deadline - time.monotonic()
                if not _is_locked(exc) or left <= 0:
                    raise self.error(exc) from None
            except sqlite3.DatabaseError as exc:
                raise self.error(exc) from None
            time.sleep(min(left, pause * random.uniform(0.5, 1.0)))  # jitter: no lockstep
            pause = min(2 * pause, 0.1)
        if version != SCHEMA_VERSION:
            raise RecordStoreError(
                f"{self.path}: record store schema version {version}, this nasdet reads "
                f"version {SCHEMA_VERSION}; use the nasdet version that wrote it or start a "
                "new run directory"
            )

    def _check_readonly(self) -> None:
        """The read-only counterpart of :meth:`_init_schema`: the file must exist and be a
        nasdet store of this schema version (an empty one has no version: refused too)."""
        if not self.path.is_file():
            raise RecordStoreError(f"{self.path}: no record store here")
        try:
            conn = self.conn()
            tables = [r[0] for r in conn.execute("SELECT name FROM sqlite_master")]
            self._check_tables(tables)
            if not tables:
                raise RecordStoreError(f"{self.path}: an empty record store (nothing recorded)")
            row = conn.execute(
                "SELECT value FROM nasdet_meta WHERE key = 'schema_version'"
            ).fetchone()
        except sqlite3.DatabaseError as exc:
            raise self.error(exc) from None
        version = None if row is None else int(row[0])
        if version != SCHEMA_VERSION:
            raise RecordStoreError(
                f"{self.path}: record store schema version {version}, this nasdet reads "
                f"version {SCHEMA_VERSION}; use the nasdet version that wrote it"
            )

    def _setup(self) -> int | None:
        """One try of :meth:`_init_schema`; returns the stored schema version (``None``: none).

        The schema is created inside one ``BEGIN IMMEDIATE`` transaction that first checks the
        file is still empty, so of several processes only one creates it and the others read
        the version it committed.
        """
        conn = self.conn()
        self._check_tables(r[0] for r in conn.execute("SELECT name FROM sqlite_master"))
        if conn.execute("PRAGMA journal_mode").fetchone()[0].lower() != "wal":
            conn.execute("PRAGMA journal_mode = WAL")  # before any write: not in a transaction
        conn.execute("BEGIN IMMEDIATE")
        try:
            tables = [r[0] for r in conn.execute("SELECT name FROM sqlite_master")]
            if not tables:
                # one statement at a time: executescript() would COMMIT mid-transaction
                for statement in _SCHEMA.split(";"):
                    conn.execute(statement)
                conn.execute(
                    "INSERT INTO nasdet_meta VALUES ('schema_version', ?)", (SCHEMA_VERSION,)
                )
            else:
                self._check_tables(tables)
            row = conn.execute(
                "SELECT value FROM nasdet_meta WHERE key = 'schema_version'"
            ).fetchone()
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.rollback()
            raise
        return None if row is None else int(row[0])

    def _check_tables(self, names: Iterable[str]) -> None:
        """Leave other programs' files untouched: raise unless empty or a nasdet store."""
        tables = set(names)
        if tables and "nasdet_meta" not in tables:
            raise RecordStoreError(
                f"{self.path}: a SQLite database but not a nasdet record store; choose another file"
            )

    @contextmanager
    def write(self) -> Iterator[sqlite3.Cursor]:
        """One ``BEGIN IMMEDIATE`` … ``COMMIT`` transaction, rolled back on any exception.

        ``sqlite3.IntegrityError`` passes through unchanged (callers handle duplicates); other
        SQLite errors become :class:`RecordStoreError`.
        """
        conn = self.conn()
        cur = conn.cursor()
        try:
            cur.execute("BEGIN IMMEDIATE")
        except sqlite3.DatabaseError as exc:
            raise self.error(exc) from None
        try:
            yield cur
            conn.commit()
        except BaseException as exc:
            if conn.in_transaction:
                conn.rollback()
            if isinstance(exc, sqlite3.DatabaseError) and not isinstance(
                exc, sqlite3.IntegrityError
            ):
                raise self.error(exc) from None
            raise

    def query(self, sql: str, params: Iterable[Any] = ()) -> list[tuple]:
        """All rows of one read statement."""
        try:
            return self.conn().execute(sql, tuple(params)).fetchall()
        except sqlite3.DatabaseError as exc:
            raise self.error(exc) from None

    def close(self) -> None:
        """Close every connection this process opened (they reopen on next use)."""
        with self._lock:
            conns, self._conns = self._conns, []
        for conn in conns:
            conn.close()
        self._local = threading.local()
