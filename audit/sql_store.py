"""What the SQL backends share: every read, the one-statement writes, and their error rules.

`SqliteAuditStore` and `PostgresAuditStore` keep the same tables, so they ask
the same questions. The queries are written once here, with `?` placeholders
and tables named `{s}.table`; each backend compiles them for its driver (SQLite
drops the prefix, PostgreSQL substitutes its quoted schema and `%s`). What
genuinely differs stays in the backends: the schema and its guards, how a
connection is opened (and, for PostgreSQL, reopened), and the two transactions
that need the head or the watermark locked (`append_batch`,
`purge_payloads_before`): SQLite takes its database write lock, PostgreSQL locks
the row.

Every backend holds two connections, one for writes and one for reads, each
behind its own thread lock, and names its driver's exception types in
`_driver_errors`: none of them leaves a store, every failure is a `StoreError`.
Waiting for a lock is bounded too (`lock_wait_s`, below the request timeout): a
caller queued behind a call stuck on the database fails instead of queueing for ever.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from functools import partial
from typing import Any, ClassVar, Literal, Protocol

from audit.merkle import HASH_SIZE
from audit.store import StoredCheckpoint, StoredLeaf, StoreError

__all__ = ["QUERIES", "DuplicateRequestIdError", "Role", "SqlAuditStore", "split_hashes"]


class DuplicateRequestIdError(StoreError):
    """A request id names more than one record (an old or damaged log): no record is chosen."""


_LEAF = (
    "SELECT l.idx, l.leaf_hash, l.request_id, l.ts_ms, p.record FROM {s}.audit_leaves l "
    "LEFT JOIN {s}.audit_payloads p ON p.idx = l.idx "
)
_CHECKPOINT = "SELECT size, root, note, created_ms FROM {s}.audit_checkpoints "

# Long scans read in pages (here and in the LIMITs below), so a caller iterating
# slowly never holds the read lock, and memory stays bounded.
_LEAF_PAGE = 5_000

QUERIES: dict[str, str] = {
    # reads
    "size": "SELECT size FROM {s}.audit_head WHERE id = 1",
    "max_index": "SELECT max(idx) FROM {s}.audit_leaves",
    "head": "SELECT size, frontier FROM {s}.audit_head WHERE id = 1",
    "node": "SELECT hash FROM {s}.audit_nodes WHERE level = ? AND idx = ?",
    "leaf": _LEAF + "WHERE l.idx = ?",
    "leaf_hash": "SELECT leaf_hash FROM {s}.audit_leaves WHERE idx = ?",
    "leaves": _LEAF + "WHERE l.idx >= ? AND l.idx < ? ORDER BY l.idx",
    "leaves_between": (
        _LEAF + "WHERE l.ts_ms >= ? AND l.ts_ms < ? AND l.idx > ? ORDER BY l.idx LIMIT 5000"
    ),
    # Two rows, not one: a request id that names several records must be refused, not
    # answered with the first (see `index_of`).
    "index_of": "SELECT idx FROM {s}.audit_leaves WHERE request_id = ? ORDER BY idx LIMIT 2",
    "nodes_after": (
        "SELECT level, idx, hash FROM {s}.audit_nodes WHERE (level, idx) > (?, ?) "
        "ORDER BY level, idx LIMIT 10000"
    ),
    "checkpoints": _CHECKPOINT + "ORDER BY size",
    "latest_checkpoint": _CHECKPOINT + "ORDER BY size DESC LIMIT 1",
    "checkpoint_at_or_after": _CHECKPOINT + "WHERE size >= ? ORDER BY size LIMIT 1",
    "subject": "SELECT key_id, wrapped FROM {s}.subject_keys WHERE handle = ?",
    "subject_by_pseudonym": (
        "SELECT handle, key_id, wrapped FROM {s}.subject_keys WHERE pseudonym = ?"
    ),
    "subjects_after": (
        "SELECT handle, key_id, wrapped FROM {s}.subject_keys WHERE handle > ? "
        "ORDER BY handle LIMIT ?"
    ),
    "subject_key_ids": "SELECT key_id, count(*) FROM {s}.subject_keys GROUP BY key_id",
    "purged_below": "SELECT purged_below FROM {s}.audit_retention WHERE id = 1",
    # one-statement writes (autocommitted)
    "add_checkpoint": (
        "INSERT INTO {s}.audit_checkpoints (size, root, note, created_ms) VALUES (?, ?, ?, ?)"
    ),
    "delete_subject": "DELETE FROM {s}.subject_keys WHERE handle = ?",
    "rewrap_subject": (
        "UPDATE {s}.subject_keys SET key_id = ?, wrapped = ? WHERE handle = ? AND key_id = ?"
    ),
    # "insert_subject" (insert unless the handle is there) is in each backend's dialect.
}

# Which connection a query runs on: the attribute holding it.
Role = Literal["_read", "_write"]
_Args = tuple[object, ...]


class _Cursor(Protocol):
    """What both drivers' cursors offer and the shared code uses."""

    @property
    def rowcount(self) -> int: ...

    def fetchone(self) -> Any: ...

    def fetchall(self) -> list[Any]: ...


_Run = Callable[[str, _Args], _Cursor]


def split_hashes(blob: bytes) -> list[bytes]:
    """A stored frontier (concatenated hashes) as its list of hashes."""
    return [blob[i : i + HASH_SIZE] for i in range(0, len(blob), HASH_SIZE)]


def _leaf(row: Any) -> StoredLeaf:
    idx, leaf_hash, request_id, ts_ms, payload = row
    return StoredLeaf(
        index=int(idx),
        leaf_hash=bytes(leaf_hash),
        request_id=None if request_id is None else str(request_id),
        ts_ms=int(ts_ms),
        payload=None if payload is None else bytes(payload),
    )


def _checkpoint(row: Any) -> StoredCheckpoint:
    size, root, note, created_ms = row
    return StoredCheckpoint(int(size), bytes(root), bytes(note), int(created_ms))


class SqlAuditStore:
    """The `AuditStore` methods that are the same SQL on every backend.

    A backend sets `_driver_errors`, implements `_execute` (run a named query on
    its read or write connection) and the methods listed in the module docstring.
    Rows are untyped (`Any`): the schema fixes their column types.
    """

    _driver_errors: ClassVar[tuple[type[Exception], ...]]

    def __init__(self, *, lock_wait_s: float = 5.0) -> None:
        self._write_lock = threading.Lock()
        self._read_lock = threading.Lock()
        self._lock_wait_s = lock_wait_s

    @contextmanager
    def _holding(self, lock: threading.Lock, which: str) -> Iterator[None]:
        """Hold `lock`, or fail once `lock_wait_s` has passed without it."""
        if not lock.acquire(timeout=self._lock_wait_s):
            raise StoreError(
                f"audit store busy: its {which} connection was not free within "
                f"{self._lock_wait_s:g} s"
            )
        try:
            yield
        finally:
            lock.release()

    # -- backend hook --------------------------------------------------------

    def _execute(self, role: Role, name: str, args: _Args = ()) -> _Cursor:
        """Run query `name` on the `_read` or `_write` connection; the caller holds its lock."""
        raise NotImplementedError

    # -- running queries -----------------------------------------------------

    def _rows(self, name: str, args: _Args = ()) -> list[Any]:
        with self._holding(self._read_lock, "read"):
            try:
                return list(self._execute("_read", name, args).fetchall())
            except self._driver_errors as exc:
                raise StoreError(f"audit read failed: {exc}") from exc

    def _one(self, name: str, args: _Args = ()) -> Any:
        rows = self._rows(name, args)
        return rows[0] if rows else None

    @contextmanager
    def _writing(self, failure: str) -> Iterator[_Run]:
        """Autocommitted statements on the write connection, under its lock.

        A driver error becomes `StoreError(f"{failure}: {error}")`.
        """
        with self._holding(self._write_lock, "write"):
            try:
                yield partial(self._execute, "_write")
            except self._driver_errors as exc:
                raise StoreError(f"{failure}: {exc}") from exc

    # -- writes --------------------------------------------------------------

    def add_checkpoint(self, checkpoint: StoredCheckpoint) -> None:
        with self._writing("checkpoint write failed") as run:
            run(
                "add_checkpoint",
                (checkpoint.size, checkpoint.root, checkpoint.note, checkpoint.created_ms),
            )

    def get_or_create_subject_key(
        self, handle: bytes, pseudonym: str, key_id: str, wrapped: bytes
    ) -> tuple[str, bytes]:
        with self._writing("subject key write failed") as run:
            # Two statements, each its own transaction: the insert waits for a concurrent
            # insert of the same handle to commit, so the read (a new snapshot) sees
            # whichever key won.
            run("insert_subject", (handle, pseudonym, key_id, wrapped))
            row = run("subject", (handle,)).fetchone()
        if row is None:
            raise StoreError("subject key vanished between insert and read")
        return str(row[0]), bytes(row[1])

    def delete_subject_key(self, handle: bytes) -> bool:
        with self._writing("subject key delete failed") as run:
            return run("delete_subject", (handle,)).rowcount > 0

    def rewrap_subject_key(
        self, handle: bytes, old_key_id: str, new_key_id: str, wrapped: bytes
    ) -> bool:
        with self._writing("subject key rewrap failed") as run:
            return run("rewrap_subject", (new_key_id, wrapped, handle, old_key_id)).rowcount > 0

    # -- reads ---------------------------------------------------------------

    def check(self) -> None:
        self.size()

    def settled_leaf_hash(self, index: int) -> bytes | None:
        # A backend whose appends can be left in doubt waits for them first (PostgreSQL).
        row = self._one("leaf_hash", (index,))
        return None if row is None else bytes(row[0])

    def size(self) -> int:
        row = self._one("size")
        return int(row[0]) if row else 0

    def max_index(self) -> int | None:
        row = self._one("max_index")
        return None if row is None or row[0] is None else int(row[0])

    def frontier_hashes(self) -> tuple[int, list[bytes]]:
        row = self._one("head")
        if row is None:
            raise StoreError("audit head missing")
        return int(row[0]), split_hashes(bytes(row[1]))

    def node(self, level: int, index: int) -> bytes:
        row = self._one("node", (level, index))
        if row is None:
            raise StoreError(f"interior node ({level}, {index}) missing")
        return bytes(row[0])

    def leaf(self, index: int) -> StoredLeaf:
        row = self._one("leaf", (index,))
        if row is None:
            raise StoreError(f"audit record {index} missing")
        return _leaf(row)

    def index_of(self, request_id: str) -> int | None:
        """The one record of `request_id`; raises `DuplicateRequestIdError` if it names several.

        The gateway gives every request a fresh id, so two records of one id mean a log
        written before ids were unique (clients chose them) or damage. Answering with
        the first would let a client shadow the record an auditor looks for.
        """
        rows = self._rows("index_of", (request_id,))
        if len(rows) > 1:
            raise DuplicateRequestIdError(
                f"request id names records {int(rows[0][0])} and {int(rows[1][0])}"
            )
        return int(rows[0][0]) if rows else None

    def iter_leaves(self, start: int = 0, end: int | None = None) -> Iterator[StoredLeaf]:
        stop = self.size() if end is None else end
        for low in range(start, stop, _LEAF_PAGE):
            for row in self._rows("leaves", (low, min(low + _LEAF_PAGE, stop))):
                yield _leaf(row)

    def leaves_between(self, from_ms: int, to_ms: int) -> Iterator[StoredLeaf]:
        # Paged by index so an export of a long range never holds it all in memory.
        after = -1
        while rows := self._rows("leaves_between", (from_ms, to_ms, after)):
            for row in rows:
                yield _leaf(row)
            after = int(rows[-1][0])

    def iter_nodes(self) -> Iterator[tuple[int, int, bytes]]:
        last = (-1, -1)
        while rows := self._rows("nodes_after", last):
            for level, idx, digest in rows:
                yield int(level), int(idx), bytes(digest)
            last = (int(rows[-1][0]), int(rows[-1][1]))

    def checkpoints(self) -> list[StoredCheckpoint]:
        return [_checkpoint(row) for row in self._rows("checkpoints")]

    def latest_checkpoint(self) -> StoredCheckpoint | None:
        row = self._one("latest_checkpoint")
        return None if row is None else _checkpoint(row)

    def checkpoint_at_or_after(self, size: int) -> StoredCheckpoint | None:
        row = self._one("checkpoint_at_or_after", (size,))
        return None if row is None else _checkpoint(row)

    def subject_key(self, handle: bytes) -> tuple[str, bytes] | None:
        row = self._one("subject", (handle,))
        return None if row is None else (str(row[0]), bytes(row[1]))

    def subject_key_by_pseudonym(self, pseudonym: str) -> tuple[bytes, str, bytes] | None:
        row = self._one("subject_by_pseudonym", (pseudonym,))
        return None if row is None else (bytes(row[0]), str(row[1]), bytes(row[2]))

    def subject_keys_after(self, handle: bytes, limit: int) -> list[tuple[bytes, str, bytes]]:
        rows = self._rows("subjects_after", (handle, limit))
        return [(bytes(r[0]), str(r[1]), bytes(r[2])) for r in rows]

    def subject_key_ids(self) -> dict[str, int]:
        return {str(r[0]): int(r[1]) for r in self._rows("subject_key_ids")}

    def purged_below(self) -> int:
        row = self._one("purged_below")
        return 0 if row is None else int(row[0])
