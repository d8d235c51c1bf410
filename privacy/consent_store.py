"""The consent store: append-only history of consent per data subject and purpose.

A subject is stored under a handle, HMAC(handle key, tenant || 0x00 || subject id),
never under its id: the database alone does not say who consented. The current
consent of a subject for a purpose is its latest history row.

History is append-only, and the database enforces it (triggers on both
backends): UPDATE is always refused; DELETE is refused unless an erasure marker
for that subject covers the row (the marker records the highest history
sequence it erases). Erasure writes the marker and deletes the subject's rows in
one transaction, so it is the only way rows ever leave; markers themselves can
be neither changed nor deleted.

SQLite (under the data directory, WAL, synchronous=FULL) by default; PostgreSQL
when `privacy.consent_postgres_dsn` is set (one schema, several gateways share
it). Every method blocks: callers run them off the event loop. Failures raise
`ConsentStoreError`.
"""

from __future__ import annotations

import hmac
import os
import sqlite3
import threading
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

from psycopg import sql

from gateway.derivation import DerivedKeys, Purpose
from gateway.pg_session import BoundedPostgres, Connection
from gateway.sqlite_wal import enable_wal

PURPOSES = ("personalization", "analytics", "sale_share")
JURISDICTIONS = ("eu", "california", "default")


class ConsentStoreError(Exception):
    """The consent store cannot be read or written."""


@dataclass(frozen=True)
class ConsentEntry:
    purpose: str
    granted: bool
    lawful_basis: str
    jurisdiction: str
    source: str  # "api" (PUT /v1/subjects/{id}/consent) or another writer's name
    ts_ms: int
    policy_version: str

    def as_json(self) -> dict[str, Any]:
        return asdict(self)


class ConsentStore:
    """Backend-neutral logic; subclasses provide `_execute` and `_transaction`."""

    kind: Literal["sqlite", "postgres"]
    # True when a read is a local, sub-20 µs lookup that never waits for a writer: the
    # consent stage then reads on the event loop instead of paying a thread hop.
    inline_reads: bool = False

    def __init__(self, keys: DerivedKeys) -> None:
        self._handle_key = keys[Purpose.CONSENT_HANDLE]
        self._feature_key = keys[Purpose.FEATURE_ERASURE]

    def handle(self, tenant: str | None, subject_id: str) -> bytes:
        message = (tenant or "").encode() + b"\x00" + subject_id.encode()
        return hmac.digest(self._handle_key, message, "sha256")

    def feature_handle(self, tenant: str | None, user_id: str) -> bytes:
        """The key an erasure is remembered under for the feature store. Tenant-bound: an
        erasure by another tenant's caller must never blank the owning tenant's row."""
        message = (tenant or "").encode() + b"\x00" + user_id.encode()
        return hmac.digest(self._feature_key, message, "sha256")

    # -- backend hooks -------------------------------------------------------

    def _query(self, statement: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        raise NotImplementedError

    def _write(self, statements: Iterable[tuple[str, Sequence[Any]]]) -> None:
        """Run the statements in one transaction."""
        raise NotImplementedError

    def invalidate(self) -> None:
        """Forget anything cached: another process wrote to the same store."""
        return None

    def ping(self) -> None:
        """A trivial read: raises ConsentStoreError while the store cannot answer."""
        self._query("SELECT 1")

    def close(self) -> None:
        raise NotImplementedError

    # -- operations ----------------------------------------------------------

    def record(self, tenant: str | None, subject_id: str, entries: Sequence[ConsentEntry]) -> None:
        handle = self.handle(tenant, subject_id)
        self._write(
            (
                "INSERT INTO consent_history (handle, purpose, granted, lawful_basis, "
                "jurisdiction, source, ts_ms, policy_version) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    handle,
                    e.purpose,
                    1 if e.granted else 0,
                    e.lawful_basis,
                    e.jurisdiction,
                    e.source,
                    e.ts_ms,
                    e.policy_version,
                ),
            )
            for e in entries
        )

    def _rows(self, handle: bytes, latest_only: bool) -> list[ConsentEntry]:
        columns = "purpose, granted, lawful_basis, jurisdiction, source, ts_ms, policy_version"
        if latest_only:
            statement = (
                f"SELECT {columns} FROM consent_history WHERE seq IN "  # noqa: S608 - constant
                "(SELECT MAX(seq) FROM consent_history WHERE handle = ? GROUP BY purpose) "
                "ORDER BY purpose"
            )
        else:
            statement = f"SELECT {columns} FROM consent_history WHERE handle = ? ORDER BY seq"  # noqa: S608
        return [
            ConsentEntry(str(p), bool(g), str(b), str(j), str(s), int(t), str(v))
            for p, g, b, j, s, t, v in self._query(statement, (handle,))
        ]

    def current(self, tenant: str | None, subject_id: str) -> dict[str, ConsentEntry]:
        """The latest entry per purpose (absent: the subject never said anything)."""
        return {e.purpose: e for e in self._rows(self.handle(tenant, subject_id), True)}

    def history(self, tenant: str | None, subject_id: str) -> list[ConsentEntry]:
        return self._rows(self.handle(tenant, subject_id), False)

    def erase(self, tenant: str | None, subject_id: str, ts_ms: int) -> int:
        """Delete the subject's history under a new erasure marker; returns rows deleted."""
        handle = self.handle(tenant, subject_id)
        rows = self._query(
            "SELECT COUNT(*), COALESCE(MAX(seq), 0) FROM consent_history WHERE handle = ?",
            (handle,),
        )
        count, upto = int(rows[0][0]), int(rows[0][1])
        self._write(
            [
                (
                    "INSERT INTO consent_erasures (handle, feature_handle, history_upto, ts_ms) "
                    "VALUES (?, ?, ?, ?)",
                    (handle, self.feature_handle(tenant, subject_id), upto, ts_ms),
                ),
                ("DELETE FROM consent_history WHERE handle = ? AND seq <= ?", (handle, upto)),
            ]
        )
        return count

    def erased(self, tenant: str | None, subject_id: str) -> bool:
        rows = self._query(
            "SELECT 1 FROM consent_erasures WHERE handle = ? LIMIT 1",
            (self.handle(tenant, subject_id),),
        )
        return bool(rows)

    def erased_feature_handles(self) -> set[bytes]:
        return {bytes(r[0]) for r in self._query("SELECT feature_handle FROM consent_erasures")}


_SQLITE_SCHEMA = """
CREATE TABLE IF NOT EXISTS consent_history (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    handle BLOB NOT NULL,
    purpose TEXT NOT NULL,
    granted INTEGER NOT NULL CHECK (granted IN (0, 1)),
    lawful_basis TEXT NOT NULL,
    jurisdiction TEXT NOT NULL,
    source TEXT NOT NULL,
    ts_ms INTEGER NOT NULL,
    policy_version TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS consent_by_subject ON consent_history (handle, purpose, seq);
CREATE TABLE IF NOT EXISTS consent_erasures (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    handle BLOB NOT NULL,
    feature_handle BLOB NOT NULL,
    history_upto INTEGER NOT NULL,
    ts_ms INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS erasures_by_subject ON consent_erasures (handle, history_upto);
CREATE TRIGGER IF NOT EXISTS consent_history_no_update BEFORE UPDATE ON consent_history
BEGIN SELECT RAISE(ABORT, 'consent history is append-only'); END;
CREATE TRIGGER IF NOT EXISTS consent_history_delete_only_erased
BEFORE DELETE ON consent_history
WHEN NOT EXISTS (
    SELECT 1 FROM consent_erasures WHERE handle = OLD.handle AND history_upto >= OLD.seq
)
BEGIN SELECT RAISE(ABORT, 'consent history is deleted only by erasure'); END;
CREATE TRIGGER IF NOT EXISTS consent_erasures_no_update BEFORE UPDATE ON consent_erasures
BEGIN SELECT RAISE(ABORT, 'erasure markers are permanent'); END;
CREATE TRIGGER IF NOT EXISTS consent_erasures_no_delete BEFORE DELETE ON consent_erasures
BEGIN SELECT RAISE(ABORT, 'erasure markers are permanent'); END;
"""


class SqliteConsentStore(ConsentStore):
    """Two connections: writes serialise (and fsync) on one; reads use the other, which in
    WAL mode never waits for a writer, so `current` is safe to call on the event loop.

    `current` answers from a bounded in-process cache that every write clears. It is
    exact because one gateway process owns a SQLite data directory (as it owns the feature
    store file); replicas share a PostgreSQL store, which is never cached. The cache
    matters under load: each SQLite read releases the GIL, and winning it back from the
    inference threads cost ~0.3 ms a request on the event loop (bench/serve, c8).
    """

    kind = "sqlite"
    inline_reads = True
    CACHE_SIZE = 65_536

    def __init__(self, path: Path, keys: DerivedKeys) -> None:
        super().__init__(keys)
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        self._lock = threading.Lock()
        self._read_lock = threading.Lock()
        self._cache: dict[bytes, dict[str, ConsentEntry]] = {}
        # Bumped by every write: a read that raced a write never fills the cache.
        self._generation = 0
        # SQLite gives its -wal and -shm files the database file's mode when it creates
        # them: the file is made owner-only before the first connection, not after.
        os.close(os.open(path, os.O_RDWR | os.O_CREAT, 0o600))
        for existing in (path, *(path.with_name(path.name + s) for s in ("-wal", "-shm"))):
            if existing.exists():
                existing.chmod(0o600)  # data directories made before this was so
        try:
            self._conn = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
            enable_wal(self._conn)
            self._conn.execute("PRAGMA synchronous=FULL")
            self._conn.executescript(_SQLITE_SCHEMA)
            self._reader = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
            self._reader.execute("PRAGMA query_only=ON")
        except sqlite3.Error as exc:
            raise ConsentStoreError(f"consent store {path}: {exc}") from exc

    def _query(self, statement: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        with self._read_lock:
            try:
                return list(self._reader.execute(statement, tuple(params)).fetchall())
            except sqlite3.Error as exc:
                raise ConsentStoreError(str(exc)) from exc

    def current(self, tenant: str | None, subject_id: str) -> dict[str, ConsentEntry]:
        handle = self.handle(tenant, subject_id)
        cached = self._cache.get(handle)
        if cached is not None:
            return dict(cached)
        generation = self._generation
        found = {e.purpose: e for e in self._rows(handle, True)}
        with self._read_lock:
            if generation == self._generation:
                if len(self._cache) >= self.CACHE_SIZE:
                    self._cache.pop(next(iter(self._cache)))
                self._cache[handle] = found
        return dict(found)

    def _write(self, statements: Iterable[tuple[str, Sequence[Any]]]) -> None:
        try:
            self._write_through(statements)
        finally:
            # Cleared whether or not the transaction committed: never serve a stale answer.
            self.invalidate()

    def invalidate(self) -> None:
        with self._read_lock:
            self._generation += 1  # a read in flight does not fill the cache either
            self._cache.clear()

    def _write_through(self, statements: Iterable[tuple[str, Sequence[Any]]]) -> None:
        with self._lock:
            try:
                self._conn.execute("BEGIN IMMEDIATE")
                try:
                    for statement, params in statements:
                        self._conn.execute(statement, tuple(params))
                except BaseException:
                    self._conn.execute("ROLLBACK")
                    raise
                self._conn.execute("COMMIT")
            except sqlite3.Error as exc:
                raise ConsentStoreError(str(exc)) from exc

    def close(self) -> None:
        with self._lock, self._read_lock:
            self._reader.close()
            self._conn.close()


_PG_SCHEMA = """
CREATE TABLE IF NOT EXISTS {schema}.consent_history (
    seq BIGSERIAL PRIMARY KEY,
    handle BYTEA NOT NULL,
    purpose TEXT NOT NULL,
    granted SMALLINT NOT NULL CHECK (granted IN (0, 1)),
    lawful_basis TEXT NOT NULL,
    jurisdiction TEXT NOT NULL,
    source TEXT NOT NULL,
    ts_ms BIGINT NOT NULL,
    policy_version TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS consent_by_subject ON {schema}.consent_history (handle, purpose, seq);
CREATE TABLE IF NOT EXISTS {schema}.consent_erasures (
    seq BIGSERIAL PRIMARY KEY,
    handle BYTEA NOT NULL,
    feature_handle BYTEA NOT NULL,
    history_upto BIGINT NOT NULL,
    ts_ms BIGINT NOT NULL
);
CREATE OR REPLACE FUNCTION {schema}.consent_history_guard() RETURNS trigger AS $$
BEGIN
    IF TG_OP = 'DELETE' AND EXISTS (
        SELECT 1 FROM {schema}.consent_erasures e
        WHERE e.handle = OLD.handle AND e.history_upto >= OLD.seq
    ) THEN
        RETURN OLD;
    END IF;
    RAISE EXCEPTION 'consent history is append-only (deleted only by erasure)';
END $$ LANGUAGE plpgsql;
CREATE OR REPLACE FUNCTION {schema}.consent_refuse() RETURNS trigger AS $$
BEGIN
    RAISE EXCEPTION 'erasure markers are permanent';
END $$ LANGUAGE plpgsql;
DROP TRIGGER IF EXISTS consent_history_guard ON {schema}.consent_history;
CREATE TRIGGER consent_history_guard BEFORE UPDATE OR DELETE ON {schema}.consent_history
    FOR EACH ROW EXECUTE FUNCTION {schema}.consent_history_guard();
DROP TRIGGER IF EXISTS consent_history_no_truncate ON {schema}.consent_history;
CREATE TRIGGER consent_history_no_truncate BEFORE TRUNCATE ON {schema}.consent_history
    FOR EACH STATEMENT EXECUTE FUNCTION {schema}.consent_refuse();
DROP TRIGGER IF EXISTS consent_erasures_guard ON {schema}.consent_erasures;
CREATE TRIGGER consent_erasures_guard BEFORE UPDATE OR DELETE ON {schema}.consent_erasures
    FOR EACH ROW EXECUTE FUNCTION {schema}.consent_refuse();
DROP TRIGGER IF EXISTS consent_erasures_no_truncate ON {schema}.consent_erasures;
CREATE TRIGGER consent_erasures_no_truncate BEFORE TRUNCATE ON {schema}.consent_erasures
    FOR EACH STATEMENT EXECUTE FUNCTION {schema}.consent_refuse();
"""


class PostgresConsentStore(ConsentStore):
    """On one schema several gateways share; every call bounded and reconnecting by
    itself (gateway.pg_session)."""

    kind = "postgres"

    def __init__(self, dsn: str, schema: str, keys: DerivedKeys, *, timeout_s: float = 2.0) -> None:
        super().__init__(keys)
        self.schema = schema

        def create(conn: Connection) -> None:
            quoted = sql.Identifier(schema).as_string(conn)
            conn.execute(_PG_SCHEMA.replace("{schema}", quoted).encode())

        self._db = BoundedPostgres(
            dsn,
            schema,
            timeout_s=timeout_s,
            label="consent store",
            error=ConsentStoreError,
            create=create,
            schema_lock=7261736,
        )

    def _query(self, statement: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        return self._db.query(statement, params)

    def _write(self, statements: Iterable[tuple[str, Sequence[Any]]]) -> None:
        self._db.write(statements)

    def close(self) -> None:
        self._db.close()
