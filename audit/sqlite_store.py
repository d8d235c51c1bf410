"""The embedded default: the audit log in one SQLite file (WAL, synchronous=FULL).

`BEGIN IMMEDIATE` takes SQLite's write lock before the head is read, so even
two processes sharing the file cannot fork the sequence. `secure_delete` makes
erased subject keys and purged payloads unrecoverable from free pages.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from audit.merkle import HASH_SIZE, Frontier
from audit.store import PendingRecord, StoredCheckpoint, StoredLeaf, StoreError, check_batch

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


def _frontier_blob(frontier: Frontier) -> bytes:
    return b"".join(frontier.hashes())


def _split(blob: bytes) -> list[bytes]:
    return [blob[i : i + HASH_SIZE] for i in range(0, len(blob), HASH_SIZE)]


class SqliteAuditStore:
    def __init__(self, path: Path) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        try:
            self._write = self._connect()
            self._read = self._connect()
            self._write.executescript(_SCHEMA)
        except sqlite3.Error as exc:
            raise StoreError(f"cannot open audit database {path}: {exc}") from exc
        self._write_lock = threading.Lock()
        self._read_lock = threading.Lock()

    def _connect(self) -> sqlite3.Connection:
        conn = sqlite3.connect(
            self.path, isolation_level=None, check_same_thread=False, timeout=30.0
        )
        # Switching a brand-new file to WAL needs an exclusive lock and ignores the busy
        # timeout, so two processes creating the log at once must retry.
        for attempt in range(50):
            try:
                conn.execute("PRAGMA journal_mode=WAL")
                break
            except sqlite3.OperationalError:
                if attempt == 49:
                    raise
                time.sleep(0.05)
        # FULL: in WAL mode a commit is durable only when the WAL is synced.
        conn.execute("PRAGMA synchronous=FULL")
        conn.execute("PRAGMA secure_delete=ON")
        return conn

    # -- writes --------------------------------------------------------------

    def append_batch(self, records: Sequence[PendingRecord]) -> int:
        check_batch(records)
        with self._write_lock:
            conn = self._write
            try:
                conn.execute("BEGIN IMMEDIATE")
                try:
                    size, blob = conn.execute(
                        "SELECT size, frontier FROM audit_head WHERE id = 1"
                    ).fetchone()
                    frontier = Frontier(size, _split(blob))
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
                        (frontier.size, _frontier_blob(frontier)),
                    )
                    conn.execute("COMMIT")
                except BaseException:
                    conn.execute("ROLLBACK")
                    raise
            except (sqlite3.Error, ValueError) as exc:  # ValueError: a corrupt head
                raise StoreError(f"audit append failed: {exc}") from exc
            return int(size)

    def add_checkpoint(self, checkpoint: StoredCheckpoint) -> None:
        with self._write_lock:
            try:
                self._write.execute(
                    "INSERT INTO audit_checkpoints (size, root, note, created_ms) "
                    "VALUES (?, ?, ?, ?)",
                    (checkpoint.size, checkpoint.root, checkpoint.note, checkpoint.created_ms),
                )
            except sqlite3.Error as exc:
                raise StoreError(f"checkpoint write failed: {exc}") from exc

    def get_or_create_subject_key(
        self, handle: bytes, pseudonym: str, key_id: str, wrapped: bytes
    ) -> tuple[str, bytes]:
        with self._write_lock:
            try:
                self._write.execute(
                    "INSERT OR IGNORE INTO subject_keys (handle, pseudonym, key_id, wrapped) "
                    "VALUES (?, ?, ?, ?)",
                    (handle, pseudonym, key_id, wrapped),
                )
                row = self._write.execute(
                    "SELECT key_id, wrapped FROM subject_keys WHERE handle = ?", (handle,)
                ).fetchone()
            except sqlite3.Error as exc:
                raise StoreError(f"subject key write failed: {exc}") from exc
        return str(row[0]), bytes(row[1])

    def delete_subject_key(self, handle: bytes) -> bool:
        with self._write_lock:
            try:
                cursor = self._write.execute("DELETE FROM subject_keys WHERE handle = ?", (handle,))
            except sqlite3.Error as exc:
                raise StoreError(f"subject key delete failed: {exc}") from exc
        return cursor.rowcount > 0

    def subject_keys_after(self, handle: bytes, limit: int) -> list[tuple[bytes, str, bytes]]:
        rows = self._all(
            "SELECT handle, key_id, wrapped FROM subject_keys WHERE handle > ? "
            "ORDER BY handle LIMIT ?",
            (handle, limit),
        )
        return [(bytes(r[0]), str(r[1]), bytes(r[2])) for r in rows]

    def rewrap_subject_key(
        self, handle: bytes, old_key_id: str, new_key_id: str, wrapped: bytes
    ) -> bool:
        with self._write_lock:
            try:
                cursor = self._write.execute(
                    "UPDATE subject_keys SET key_id = ?, wrapped = ? "
                    "WHERE handle = ? AND key_id = ?",
                    (new_key_id, wrapped, handle, old_key_id),
                )
            except sqlite3.Error as exc:
                raise StoreError(f"subject key rewrap failed: {exc}") from exc
        return cursor.rowcount > 0

    def subject_key_ids(self) -> dict[str, int]:
        rows = self._all("SELECT key_id, count(*) FROM subject_keys GROUP BY key_id")
        return {str(r[0]): int(r[1]) for r in rows}

    def purge_payloads_before(self, index: int) -> int:
        with self._write_lock:
            conn = self._write
            try:
                conn.execute("BEGIN IMMEDIATE")
                try:
                    (current,) = conn.execute(
                        "SELECT purged_below FROM audit_retention WHERE id = 1"
                    ).fetchone()
                    target = max(int(current), index)
                    conn.execute(
                        "UPDATE audit_retention SET purged_below = ? WHERE id = 1", (target,)
                    )
                    cursor = conn.execute("DELETE FROM audit_payloads WHERE idx < ?", (target,))
                    conn.execute("COMMIT")
                except BaseException:
                    conn.execute("ROLLBACK")
                    raise
            except sqlite3.Error as exc:
                raise StoreError(f"retention purge failed: {exc}") from exc
        return cursor.rowcount

    # -- reads ---------------------------------------------------------------

    # sqlite3 rows are untyped; the schema above fixes their column types.
    def _one(self, sql: str, args: tuple[object, ...] = ()) -> Any:
        with self._read_lock:
            try:
                row = self._read.execute(sql, args).fetchone()
            except sqlite3.Error as exc:
                raise StoreError(f"audit read failed: {exc}") from exc
        return row

    def _all(self, sql: str, args: tuple[object, ...] = ()) -> list[Any]:
        with self._read_lock:
            try:
                return list(self._read.execute(sql, args).fetchall())
            except sqlite3.Error as exc:
                raise StoreError(f"audit read failed: {exc}") from exc

    def size(self) -> int:
        row = self._one("SELECT size FROM audit_head WHERE id = 1")
        return int(row[0]) if row else 0

    def max_index(self) -> int | None:
        row = self._one("SELECT max(idx) FROM audit_leaves")
        return None if row is None or row[0] is None else int(row[0])

    def frontier_hashes(self) -> tuple[int, list[bytes]]:
        row = self._one("SELECT size, frontier FROM audit_head WHERE id = 1")
        if row is None:
            raise StoreError("audit head missing")
        return int(row[0]), _split(bytes(row[1]))

    def node(self, level: int, index: int) -> bytes:
        row = self._one("SELECT hash FROM audit_nodes WHERE level = ? AND idx = ?", (level, index))
        if row is None:
            raise StoreError(f"interior node ({level}, {index}) missing")
        return bytes(row[0])

    @staticmethod
    def _leaf(row: Any) -> StoredLeaf:
        idx, leaf_hash, request_id, ts_ms, payload = row
        return StoredLeaf(
            index=int(idx),
            leaf_hash=bytes(leaf_hash),
            request_id=None if request_id is None else str(request_id),
            ts_ms=int(ts_ms),
            payload=None if payload is None else bytes(payload),
        )

    _LEAF_SQL = (
        "SELECT l.idx, l.leaf_hash, l.request_id, l.ts_ms, p.record FROM audit_leaves l "
        "LEFT JOIN audit_payloads p ON p.idx = l.idx "
    )

    def leaf(self, index: int) -> StoredLeaf:
        row = self._one(self._LEAF_SQL + "WHERE l.idx = ?", (index,))
        if row is None:
            raise StoreError(f"audit record {index} missing")
        return self._leaf(row)

    def index_of(self, request_id: str) -> int | None:
        row = self._one(
            "SELECT idx FROM audit_leaves WHERE request_id = ? ORDER BY idx LIMIT 1", (request_id,)
        )
        return None if row is None else int(row[0])

    def iter_leaves(self, start: int = 0, end: int | None = None) -> Iterator[StoredLeaf]:
        stop = self.size() if end is None else end
        chunk = 5_000
        for low in range(start, stop, chunk):
            rows = self._all(
                self._LEAF_SQL + "WHERE l.idx >= ? AND l.idx < ? ORDER BY l.idx",
                (low, min(low + chunk, stop)),
            )
            for row in rows:
                yield self._leaf(row)

    def leaves_between(self, from_ms: int, to_ms: int) -> Iterator[StoredLeaf]:
        # Paged by index so an export of a long range never holds it all in memory.
        after = -1
        while True:
            rows = self._all(
                self._LEAF_SQL + "WHERE l.ts_ms >= ? AND l.ts_ms < ? AND l.idx > ? "
                "ORDER BY l.idx LIMIT 5000",
                (from_ms, to_ms, after),
            )
            if not rows:
                return
            for row in rows:
                yield self._leaf(row)
            after = int(rows[-1][0])

    def iter_nodes(self) -> Iterator[tuple[int, int, bytes]]:
        last = (-1, -1)
        while True:
            rows = self._all(
                "SELECT level, idx, hash FROM audit_nodes WHERE (level, idx) > (?, ?) "
                "ORDER BY level, idx LIMIT 10000",
                last,
            )
            if not rows:
                return
            for level, idx, digest in rows:
                yield int(level), int(idx), bytes(digest)
            last = (int(rows[-1][0]), int(rows[-1][1]))

    def checkpoints(self) -> list[StoredCheckpoint]:
        return [
            StoredCheckpoint(int(s), bytes(r), bytes(n), int(c))
            for s, r, n, c in self._all(
                "SELECT size, root, note, created_ms FROM audit_checkpoints ORDER BY size"
            )
        ]

    def latest_checkpoint(self) -> StoredCheckpoint | None:
        row = self._one(
            "SELECT size, root, note, created_ms FROM audit_checkpoints ORDER BY size DESC LIMIT 1"
        )
        if row is None:
            return None
        s, r, n, c = row
        return StoredCheckpoint(int(s), bytes(r), bytes(n), int(c))

    def subject_key(self, handle: bytes) -> tuple[str, bytes] | None:
        row = self._one("SELECT key_id, wrapped FROM subject_keys WHERE handle = ?", (handle,))
        return None if row is None else (str(row[0]), bytes(row[1]))

    def subject_key_by_pseudonym(self, pseudonym: str) -> tuple[bytes, str, bytes] | None:
        row = self._one(
            "SELECT handle, key_id, wrapped FROM subject_keys WHERE pseudonym = ?", (pseudonym,)
        )
        return None if row is None else (bytes(row[0]), str(row[1]), bytes(row[2]))

    def purged_below(self) -> int:
        row = self._one("SELECT purged_below FROM audit_retention WHERE id = 1")
        return 0 if row is None else int(row[0])

    def close(self) -> None:
        with self._write_lock, self._read_lock:
            self._write.close()
            self._read.close()
