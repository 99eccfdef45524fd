"""The embedded default state store: SQLite (stdlib), WAL mode for files."""

from __future__ import annotations

import fcntl
import os
import sqlite3
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from ..codecs import PayloadCodec
from ..errors import StateFileInUseError
from ..models import (
    History,
    InstanceRecord,
    InstanceStatus,
    OperationRecord,
    OperationState,
    Outcome,
)
from .protocols import (
    InstancePage,
    InstanceSummary,
    InvalidPageTokenError,
    decode_page_token,
    encode_page_token,
)

__all__ = ["SQLiteStateStore", "StateFileLock"]

SCHEMA_VERSION = 1

_SCHEMA = """
CREATE TABLE IF NOT EXISTS instances (
    workflow_id   TEXT PRIMARY KEY,
    workflow_name TEXT NOT NULL,
    input         BLOB NOT NULL,
    input_digest  TEXT NOT NULL,
    status        TEXT NOT NULL,
    result        BLOB,
    error         BLOB,
    created_at    REAL NOT NULL,
    updated_at    REAL NOT NULL,
    activations   INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS operations (
    workflow_id    TEXT NOT NULL REFERENCES instances(workflow_id),
    op_id          TEXT NOT NULL,
    seq            INTEGER NOT NULL,
    kind           TEXT NOT NULL,
    name           TEXT NOT NULL,
    request        BLOB NOT NULL,
    request_digest TEXT NOT NULL,
    site           TEXT NOT NULL,
    state          TEXT NOT NULL,
    sent           INTEGER NOT NULL,
    result         BLOB,
    created_in     INTEGER NOT NULL,
    resolved_in    INTEGER,
    created_at     REAL NOT NULL,
    resolved_at    REAL,
    PRIMARY KEY (workflow_id, op_id)
) WITHOUT ROWID;
CREATE UNIQUE INDEX IF NOT EXISTS operations_by_seq ON operations (workflow_id, seq);
CREATE TABLE IF NOT EXISTS heartbeats (
    workflow_id    TEXT NOT NULL,
    op_id          TEXT NOT NULL,
    request_digest TEXT NOT NULL,
    at             REAL NOT NULL,
    PRIMARY KEY (workflow_id, op_id)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS instances_by_status ON instances (status, created_at, workflow_id);
CREATE INDEX IF NOT EXISTS instances_by_created ON instances (created_at, workflow_id);
"""

_INSTANCE_COLS = ("workflow_id, workflow_name, input, input_digest, status, result, error, "
                  "created_at, updated_at, activations")
_LIST_SQL = ("SELECT workflow_id, workflow_name, status, created_at, updated_at, activations "
             "FROM instances")
_OP_COLS = ("workflow_id, op_id, seq, kind, name, request, request_digest, site, state, sent, "
            "result, created_in, resolved_in, created_at, resolved_at")


_PLAIN = PayloadCodec()


def _instance(row: Any, codec: PayloadCodec = _PLAIN) -> InstanceRecord:
    (wid, name, inp, digest, status, result, error, created, updated, activations) = row
    return InstanceRecord(wid, name, codec.decode(inp), digest, InstanceStatus(status),
                          codec.decode_optional(result), codec.decode_optional(error),
                          created, updated, activations)


def _operation(row: Any, codec: PayloadCodec = _PLAIN) -> OperationRecord:
    (wid, op_id, seq, kind, name, request, digest, site, state, sent, result, created_in,
     resolved_in, created_at, resolved_at) = row
    return OperationRecord(
        wid, op_id, seq, kind, name, codec.decode(request), digest, site,
        OperationState(state), bool(sent), codec.decode_optional(result), created_in,
        resolved_in, created_at, resolved_at)


class StateFileLock:
    """The one runtime allowed to run workflows on a state file.

    Two runtimes on one file would both run the pending calls and record replies computed
    from requests the other made. The lock is an exclusive ``flock`` on ``<file>.lock``
    beside the database, held while the runtime is open; the kernel drops it when the
    process exits, however it exits (kill -9 included), so a crash never leaves the file
    locked. Readers (``status``, ``history``) do not take it.

    Raises:
        StateFileInUseError: another runtime holds the lock (its pid is in the message).
    """

    def __init__(self, database: str | Path) -> None:
        self.path = f"{database}.lock"
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise StateFileInUseError(
                f"state file {str(database)!r} is in use by another runtime (pid {holder}): "
                "two runtimes on one file would run pending calls twice; stop the other one, "
                "or use another file") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, str(os.getpid()).encode(), 0)
        self._fd: int | None = fd

    def release(self) -> None:
        """Let another runtime open the file (also done by the process's exit)."""
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


class SQLiteStateStore:
    """A :class:`~lambda_workflow.backends.StateStore` in one SQLite database.

    Args:
        path: A database file (created if missing; WAL journal) or ``":memory:"``.
        codec: Encodes every payload written and decodes every payload read
            (docs/codecs.md); default: payloads stored as they are.
    """

    def __init__(self, path: str | Path = ":memory:", *,
                 codec: PayloadCodec | None = None) -> None:
        self.path = str(path)
        self.codec = codec if codec is not None else _PLAIN
        self._db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        # One transaction at a time on the shared connection: a client in another thread (a
        # worker heartbeating a callback) writes while the runtime runs activations.
        self._lock = threading.RLock()
        if self.path != ":memory:":
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.execute("PRAGMA busy_timeout=5000")
        (version,) = self._db.execute("PRAGMA user_version").fetchone()
        if version > SCHEMA_VERSION:
            self._db.close()
            raise RuntimeError(f"{self.path}: schema version {version} is newer than this "
                               f"lambda-workflow understands ({SCHEMA_VERSION}); upgrade it")
        with self._transaction():
            for stmt in _SCHEMA.split(";"):
                if stmt.strip():
                    self._db.execute(stmt)
            self._db.execute(f"PRAGMA user_version={SCHEMA_VERSION}")

    def close(self) -> None:
        """Close the database connection."""
        self._db.close()

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    def create_instance(self, instance: InstanceRecord,
                        operations: Sequence[OperationRecord] = ()
                        ) -> tuple[InstanceRecord, bool]:
        i = instance
        with self._transaction() as db:
            cur = db.execute(
                f"INSERT OR IGNORE INTO instances ({_INSTANCE_COLS}) VALUES (?,?,?,?,?,?,?,?,?,?)",
                (i.workflow_id, i.workflow_name, self.codec.encode(i.input), i.input_digest,
                 i.status.value, self.codec.encode_optional(i.result),
                 self.codec.encode_optional(i.error), i.created_at, i.updated_at,
                 i.activations))
            created = cur.rowcount == 1
            if created and operations:
                self._insert_operations(db, i.workflow_id, operations)
            row = db.execute(f"SELECT {_INSTANCE_COLS} FROM instances WHERE workflow_id=?",
                             (i.workflow_id,)).fetchone()
        return _instance(row, self.codec), created

    def get_instance(self, workflow_id: str) -> InstanceRecord | None:
        row = self._db.execute(f"SELECT {_INSTANCE_COLS} FROM instances WHERE workflow_id=?",
                               (workflow_id,)).fetchone()
        return None if row is None else _instance(row, self.codec)

    def load_history(self, workflow_id: str) -> History | None:
        # One read transaction, so the instance and its operations are consistent.
        with self._transaction() as db:
            row = db.execute(f"SELECT {_INSTANCE_COLS} FROM instances WHERE workflow_id=?",
                             (workflow_id,)).fetchone()
            if row is None:
                return None
            ops = db.execute(f"SELECT {_OP_COLS} FROM operations WHERE workflow_id=? "
                             "ORDER BY seq", (workflow_id,)).fetchall()
        from .. import _core  # the compiled core decodes the rows without a frame per row

        return History(_instance(row, self.codec), _core.decode_operations(ops, self.codec))

    def _touch(self, db: sqlite3.Connection, workflow_id: str, activation: int) -> None:
        cur = db.execute("UPDATE instances SET activations=MAX(activations, ?) "
                         "WHERE workflow_id=?", (activation, workflow_id))
        if cur.rowcount != 1:
            raise KeyError(f"no workflow instance {workflow_id!r}")

    def _insert_operations(self, db: sqlite3.Connection, workflow_id: str,
                           operations: Sequence[OperationRecord]) -> None:
        db.executemany(
            f"INSERT OR IGNORE INTO operations ({_OP_COLS}) "
            "VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
            [(workflow_id, o.op_id, o.seq, o.kind, o.name, self.codec.encode(o.request),
              o.request_digest, o.site, o.state.value, int(o.sent),
              self.codec.encode_optional(o.result), o.created_in, o.resolved_in,
              o.created_at, o.resolved_at) for o in operations])

    def _update_outcomes(self, db: sqlite3.Connection, workflow_id: str,
                         outcomes: Sequence[Outcome], activation: int, at: float) -> list[str]:
        recorded: list[str] = []
        for o in outcomes:
            cur = db.execute(
                "UPDATE operations SET state=?, result=?, resolved_in=?, resolved_at=? "
                "WHERE workflow_id=? AND op_id=? AND state=?",
                (o.state.value, self.codec.encode(o.result), activation, at, workflow_id,
                 o.op_id,
                 OperationState.PENDING.value))
            if cur.rowcount == 1:
                recorded.append(o.op_id)
        return recorded

    def add_operations(self, workflow_id: str, operations: Sequence[OperationRecord],
                       activation: int) -> None:
        with self._transaction() as db:
            self._touch(db, workflow_id, activation)
            self._insert_operations(db, workflow_id, operations)

    def record_outcomes(self, workflow_id: str, outcomes: Sequence[Outcome], activation: int,
                        at: float) -> list[str]:
        with self._transaction() as db:
            recorded = self._update_outcomes(db, workflow_id, outcomes, activation, at)
            if recorded:
                self._touch(db, workflow_id, activation)
        return recorded

    def commit_activation(self, workflow_id: str, outcomes: Sequence[Outcome],
                          operations: Sequence[OperationRecord], activation: int,
                          at: float) -> list[str]:
        with self._transaction() as db:
            recorded = self._update_outcomes(db, workflow_id, outcomes, activation, at)
            if operations:
                self._insert_operations(db, workflow_id, operations)
            if recorded or operations:
                self._touch(db, workflow_id, activation)
        return recorded

    def record_heartbeat(self, workflow_id: str, callback_id: str, request_digest: str,
                         at: float) -> str | None:
        # The checks and the write in one IMMEDIATE transaction: nothing changes in between.
        with self._transaction() as db:
            row = db.execute(
                "SELECT i.status, o.kind, o.state, o.request_digest FROM operations o "
                "JOIN instances i ON i.workflow_id = o.workflow_id "
                "WHERE o.workflow_id=? AND o.op_id=?", (workflow_id, callback_id)).fetchone()
            if row is None or row[1] != "callback" or row[3] != request_digest:
                return "unknown"
            if row[2] != OperationState.PENDING.value:
                return "completed"
            if row[0] != InstanceStatus.RUNNING.value:
                return "ended"
            db.execute(
                "INSERT INTO heartbeats (workflow_id, op_id, request_digest, at) "
                "VALUES (?,?,?,?) ON CONFLICT (workflow_id, op_id) DO UPDATE SET "
                "at = CASE WHEN request_digest = excluded.request_digest "
                "THEN MAX(at, excluded.at) ELSE excluded.at END, "
                "request_digest = excluded.request_digest",
                (workflow_id, callback_id, request_digest, at))
        return None

    def last_heartbeat(self, workflow_id: str, callback_id: str) -> float | None:
        # A heartbeat of a callback a reset replaced (another digest) does not count.
        with self._lock:
            row = self._db.execute(
                "SELECT h.at FROM heartbeats h JOIN operations o "
                "ON o.workflow_id = h.workflow_id AND o.op_id = h.op_id "
                "AND o.request_digest = h.request_digest "
                "WHERE h.workflow_id=? AND h.op_id=?", (workflow_id, callback_id)).fetchone()
        return None if row is None else float(row[0])

    def mark_sent(self, workflow_id: str, op_ids: Sequence[str]) -> None:
        with self._transaction() as db:
            db.executemany("UPDATE operations SET sent=1 WHERE workflow_id=? AND op_id=?",
                           [(workflow_id, op_id) for op_id in op_ids])

    def finish(self, workflow_id: str, status: InstanceStatus, result: bytes | None,
               error: bytes | None, activation: int, at: float) -> bool:
        with self._transaction() as db:
            cur = db.execute(
                "UPDATE instances SET status=?, result=?, error=?, updated_at=?, "
                "activations=MAX(activations, ?) WHERE workflow_id=? AND status=?",
                (status.value, self.codec.encode_optional(result),
                 self.codec.encode_optional(error), at, activation, workflow_id,
                 InstanceStatus.RUNNING.value))
            return cur.rowcount == 1

    def list_instances(self) -> list[InstanceRecord]:
        rows = self._db.execute(
            f"SELECT {_INSTANCE_COLS} FROM instances ORDER BY created_at, workflow_id").fetchall()
        return [_instance(r, self.codec) for r in rows]

    def list_page(self, *, status: InstanceStatus | None = None,
                  workflow_name: str | None = None, since: float | None = None,
                  until: float | None = None, limit: int = 100,
                  next_token: str | None = None) -> InstancePage:
        """A page of instances, oldest first, read through the index ``instances_by_status``
        (with a status) or ``instances_by_created`` (without); the token holds the last
        row's creation time and id."""
        if limit < 1:
            raise ValueError(f"limit={limit} must be at least 1")
        where: list[str] = []
        args: list[Any] = []
        if status is not None:
            where.append("status = ?")
            args.append(InstanceStatus(status).value)
        if workflow_name is not None:
            where.append("workflow_name = ?")
            args.append(workflow_name)
        if since is not None:
            where.append("created_at >= ?")
            args.append(since)
        if until is not None:
            where.append("created_at <= ?")
            args.append(until)
        if next_token is not None:
            position = decode_page_token("sqlite", next_token)
            if (not isinstance(position, list) or len(position) != 2
                    or not isinstance(position[0], int | float)
                    or not isinstance(position[1], str)):
                raise InvalidPageTokenError(f"page token {next_token[:40]!r} does not hold a "
                                            "position in a SQLite listing")
            where.append("(created_at, workflow_id) > (?, ?)")
            args += position
        sql = _LIST_SQL + (" WHERE " + " AND ".join(where) if where else "") + \
            " ORDER BY created_at, workflow_id LIMIT ?"
        rows = self._db.execute(sql, (*args, limit + 1)).fetchall()
        found = [InstanceSummary(wid, name, InstanceStatus(st), created, updated, activations)
                 for (wid, name, st, created, updated, activations) in rows[:limit]]
        token = (encode_page_token("sqlite", [found[-1].created_at, found[-1].workflow_id])
                 if len(rows) > limit else None)
        return InstancePage(found, token)

    def repair(self, workflow_id: str, expected_activations: int, drop: Sequence[str],
               put: Sequence[OperationRecord], at: float) -> bool:
        with self._transaction() as db:
            cur = db.execute(
                "UPDATE instances SET status=?, result=NULL, error=NULL, updated_at=?, "
                "activations=? WHERE workflow_id=? AND activations=?",
                (InstanceStatus.RUNNING.value, at, expected_activations + 1, workflow_id,
                 expected_activations))
            if cur.rowcount != 1:
                return False
            db.executemany("DELETE FROM operations WHERE workflow_id=? AND op_id=?",
                           [(workflow_id, op_id) for op_id in drop])
            db.executemany("DELETE FROM operations WHERE workflow_id=? AND op_id=?",
                           [(workflow_id, op.op_id) for op in put])
            self._insert_operations(db, workflow_id, put)
        return True
