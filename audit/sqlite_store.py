"""The embedded default: the audit log in one SQLite file (WAL, synchronous=FULL).

`BEGIN IMMEDIATE` takes SQLite's write lock before the head is read, so even
two processes sharing the file cannot fork the sequence. `secure_delete` makes
erased subject keys and purged payloads unrecoverable from free pages.
Reads and one-statement writes are `audit.sql_store`'s, shared with PostgreSQL.
The database and its -wal and -shm files are owner-only (0600).
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, ClassVar

from audit.merkle import Frontier
from audit.sql_store import QUERIES, Role, SqlAuditStore, split_hashes
from audit.store import PendingRecord, StoreError, check_batch
from audit.write_queue import WriteQueue
from gateway.sqlite_wal import enable_wal

_SCHEMA = """
CREATE TABLE IF NOT EXISTS audit_leaves (
    idx INTEGER PRIMARY KEY, leaf_hash BLOB NOT NULL, request_id TEXT, ts_ms INTEGER NOT NULL);
CREATE INDEX IF NOT EXISTS audit_leaves_request ON audit_leaves(request_id);
CREATE INDEX IF NOT EXISTS audit_leaves_ts ON audit_leaves(ts_ms);
CREATE TABLE IF NOT EXISTS audit_payloads (idx INTEGER PRIMARY KEY, record BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS audit_nodes (
    level INTEGER NOT NULL, idx INTEGER NOT NULL, hash BLOB NOT NULL, PRIMARY KEY (level, idx))
    WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS audit_head (
    id INTEGER PRIMARY KEY CHECK (id = 1), size INTEGER NOT NULL, frontier BLOB NOT NULL);
INSERT OR IGNORE INTO audit_head (id, size, frontier) VALUES (1, 0, x'');
CREATE TABLE IF NOT EXISTS audit_checkpoints (
    size INTEGER PRIMARY KEY, root BLOB NOT NULL, note BLOB NOT NULL, created_ms INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS audit_retention (
    id INTEGER PRIMARY KEY CHECK (id = 1), purged_below INTEGER NOT NULL);
INSERT OR IGNORE INTO audit_retention (id, purged_below) VALUES (1, 0);
CREATE TABLE IF NOT EXISTS subject_keys (
    handle BLOB PRIMARY KEY, pseudonym TEXT NOT NULL UNIQUE, key_id TEXT NOT NULL,
    wrapped BLOB NOT NULL) WITHOUT ROWID;

CREATE TRIGGER IF NOT EXISTS audit_leaves_no_update BEFORE UPDATE ON audit_leaves
BEGIN SELECT RAISE(ABORT, 'audit leaves are append-only'); END;
CREATE TRIGGER IF NOT EXISTS audit_leaves_no_delete BEFORE DELETE ON audit_leaves
BEGIN SELECT RAISE(ABORT, 'audit leaves are append-only'); END;
CREATE TRIGGER IF NOT EXISTS audit_nodes_no_update BEFORE UPDATE ON audit_nodes
BEGIN SELECT RAISE(ABORT, 'audit nodes are append-only'); END;
CREATE TRIGGER IF NOT EXISTS audit_nodes_no_delete BEFORE DELETE ON audit_nodes
BEGIN SELECT RAISE(ABORT, 'audit nodes are append-only'); END;
CREATE TRIGGER IF NOT EXISTS audit_checkpoints_no_update BEFORE UPDATE ON audit_checkpoints
BEGIN SELECT RAISE(ABORT, 'checkpoints are append-only'); END;
CREATE TRIGGER IF NOT EXISTS audit_checkpoints_no_delete BEFORE DELETE ON audit_checkpoints
BEGIN SELECT RAISE(ABORT, 'checkpoints are append-only'); END;
CREATE TRIGGER IF NOT EXISTS audit_payloads_no_update BEFORE UPDATE ON audit_payloads
BEGIN SELECT RAISE(ABORT, 'audit records are append-only'); END;
CREATE TRIGGER IF NOT EXISTS audit_payloads_retention_only BEFORE DELETE ON audit_payloads
WHEN OLD.idx >= (SELECT purged_below FROM audit_retention WHERE id = 1)
BEGIN SELECT RAISE(ABORT, 'audit records are deleted only by retention'); END;
CREATE TRIGGER IF NOT EXISTS audit_head_forward_only BEFORE UPDATE ON audit_head
WHEN NEW.size < OLD.size BEGIN SELECT RAISE(ABORT, 'the audit log never shrinks'); END;
CREATE TRIGGER IF NOT EXISTS audit_head_no_delete BEFORE DELETE ON audit_head
BEGIN SELECT RAISE(ABORT, 'the audit head is never deleted'); END;
CREATE TRIGGER IF NOT EXISTS audit_retention_no_delete BEFORE DELETE ON audit_retention
BEGIN SELECT RAISE(ABORT, 'the retention watermark is never deleted'); END;
CREATE TRIGGER IF NOT EXISTS audit_retention_forward_only BEFORE UPDATE ON audit_retention
WHEN NEW.purged_below < OLD.purged_below
BEGIN SELECT RAISE(ABORT, 'the retention watermark only moves forward'); END;
"""


# Below this much free space the store reports itself unable to take appends (`check`).
MIN_FREE_BYTES = 1 << 20

# SQLite's default limit is 32766 bound parameters per statement.
_ROWS_PER_STATEMENT = 256


def _insert_rows(conn: sqlite3.Connection, target: str, rows: Sequence[tuple[Any, ...]]) -> None:
    """Multi-row INSERTs: one statement step per 256 rows instead of one per row.

    The sqlite3 module gives up the GIL around every step and must win it back
    from the busy event loop afterwards; per-row steps made each audit record
    cost several thread handoffs. Few large steps keep group commit cheap for
    request handling.
    """
    if not rows:
        return
    placeholder = "(" + ", ".join("?" * len(rows[0])) + ")"
    for start in range(0, len(rows), _ROWS_PER_STATEMENT):
        chunk = rows[start : start + _ROWS_PER_STATEMENT]
        values = ", ".join([placeholder] * len(chunk))
        conn.execute(
            f"INSERT INTO {target} VALUES {values}",  # noqa: S608 - fixed table names
            [value for row in chunk for value in row],
        )


# The shared queries in SQLite's dialect: tables unqualified, `?` placeholders as written.
_QUERIES = {name: text.replace("{s}.", "") for name, text in QUERIES.items()} | {
    "insert_subject": (
        "INSERT OR IGNORE INTO subject_keys (handle, pseudonym, key_id, wrapped) "
        "VALUES (?, ?, ?, ?)"
    ),
}


class SqliteAuditStore(SqlAuditStore):
    """`busy_timeout_s` bounds a wait for another process's write lock (and for this
    store's own connections): choose it below the request timeout, so a log held busy
    elsewhere is a 503 for the request, not a record written after the client gave up."""

    _driver_errors: ClassVar[tuple[type[Exception], ...]] = (sqlite3.Error,)

    def __init__(self, path: Path, *, busy_timeout_s: float = 5.0) -> None:
        super().__init__(lock_wait_s=busy_timeout_s)
        self.path = path
        self._busy_timeout_s = busy_timeout_s
        self._queue = WriteQueue(path, timeout_s=busy_timeout_s)
        try:
            _owner_only(path)
            self._write = self._connect()
            self._read = self._connect()
            self._write.executescript(_SCHEMA)
        except (sqlite3.Error, OSError) as exc:
            raise StoreError(f"cannot open audit database {path}: {exc}") from exc

    def _connect(self) -> sqlite3.Connection:
        conn = sqlite3.connect(
            self.path, isolation_level=None, check_same_thread=False, timeout=self._busy_timeout_s
        )
        enable_wal(conn)
        # FULL: in WAL mode a commit is durable only when the WAL is synced.
        conn.execute("PRAGMA synchronous=FULL")
        conn.execute("PRAGMA secure_delete=ON")
        return conn

    def check(self) -> None:
        """Answers, and has room: a commit writes WAL frames, and on a full file system it
        fails (every request with it) although every read still works."""
        self.size()
        try:
            found = os.statvfs(self.path.parent)
        except OSError as exc:
            raise StoreError(f"audit database directory unreadable: {exc}") from exc
        free = found.f_bavail * found.f_frsize
        if free < MIN_FREE_BYTES:
            raise StoreError(f"audit database file system is full ({free} bytes free)")

    def _execute(self, role: Role, name: str, args: tuple[object, ...] = ()) -> sqlite3.Cursor:
        if role == "_read":
            return self._read.execute(_QUERIES[name], args)
        with self._queue.held():
            return self._write.execute(_QUERIES[name], args)

    # -- the transactions that lock the head or the watermark ----------------

    def append_batch(self, records: Sequence[PendingRecord]) -> int:
        check_batch(records)
        with self._holding(self._write_lock, "write"):
            conn = self._write
            try:
                with _immediate(conn, self._queue):
                    size, blob = conn.execute(
                        "SELECT size, frontier FROM audit_head WHERE id = 1"
                    ).fetchone()
                    frontier = Frontier(size, split_hashes(blob))
                    nodes: list[tuple[int, int, bytes]] = []
                    for record in records:
                        nodes.extend(frontier.append(record.leaf_hash))
                    _insert_rows(
                        conn,
                        "audit_leaves (idx, leaf_hash, request_id, ts_ms)",
                        [
                            (size + i, r.leaf_hash, r.request_id, r.ts_ms)
                            for i, r in enumerate(records)
                        ],
                    )
                    _insert_rows(
                        conn,
                        "audit_payloads (idx, record)",
                        [(size + i, r.payload) for i, r in enumerate(records)],
                    )
                    _insert_rows(conn, "audit_nodes (level, idx, hash)", nodes)
                    conn.execute(
                        "UPDATE audit_head SET size = ?, frontier = ? WHERE id = 1",
                        (frontier.size, b"".join(frontier.hashes())),
                    )
            except (sqlite3.Error, ValueError) as exc:  # ValueError: a corrupt head
                raise StoreError(f"audit append failed: {exc}") from exc
            return int(size)

    def purge_payloads_before(self, index: int) -> int:
        with self._holding(self._write_lock, "write"):
            conn = self._write
            try:
                with _immediate(conn, self._queue):
                    (current,) = conn.execute(
                        "SELECT purged_below FROM audit_retention WHERE id = 1"
                    ).fetchone()
                    target = max(int(current), index)
                    conn.execute(
                        "UPDATE audit_retention SET purged_below = ? WHERE id = 1", (target,)
                    )
                    cursor = conn.execute("DELETE FROM audit_payloads WHERE idx < ?", (target,))
            except sqlite3.Error as exc:
                raise StoreError(f"retention purge failed: {exc}") from exc
        return cursor.rowcount

    def close(self) -> None:
        with self._write_lock, self._read_lock:
            self._write.close()
            self._read.close()
            self._queue.close()


@contextmanager
def _immediate(conn: sqlite3.Connection, queue: WriteQueue) -> Iterator[None]:
    """A write transaction (`BEGIN IMMEDIATE`), committed if the block ends normally,
    begun once `queue` lets this process write (`audit.write_queue`).

    A failure is reported as itself. SQLite rolls a transaction back by itself after
    some errors (a full disk, an I/O error, a failed COMMIT), and a ROLLBACK issued then
    fails with "cannot rollback - no transaction is active": that error, raised from the
    handler, used to replace the real one in the log. Roll back only what is still open,
    and never let the rollback's own failure hide the error that caused it.
    """
    with queue.held():
        conn.execute("BEGIN IMMEDIATE")
        try:
            yield
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                with contextlib.suppress(sqlite3.Error):
                    conn.execute("ROLLBACK")
            raise


def _owner_only(path: Path) -> None:
    """Make the database owner-only before SQLite opens it, and tighten an old one.

    SQLite gives its -wal and -shm files the database file's mode when it creates them,
    so a file created 0600 before the first connection keeps all three private; files
    left 0644 by an older gateway are tightened here, at start.
    """
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    with contextlib.suppress(FileExistsError):
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
    for existing in (path, *(path.with_name(path.name + s) for s in ("-wal", "-shm", "-journal"))):
        try:
            found = existing.stat()
        except FileNotFoundError:
            continue
        # Only our own files: an auditor reading someone else's copy changes nothing.
        if found.st_mode & 0o077 and found.st_uid == os.geteuid():
            existing.chmod(0o600)
