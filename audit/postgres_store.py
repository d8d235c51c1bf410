"""The shared backend: the audit log in PostgreSQL, for several gateway replicas.

Same tables and guarantees as the SQLite store, enforced by the database:
plpgsql triggers reject UPDATE, DELETE and TRUNCATE on the immutable tables,
so a bug (or a replica running old code) cannot rewrite history through the
application's own role. Appends lock the head row (`SELECT ... FOR UPDATE`):
every replica's writer queues on that one row, so the log has one sequence,
no gaps and no forks however many processes append at once.

No psycopg exception leaves this module: every failure is a `StoreError`.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Iterator, Sequence
from typing import Any

import psycopg
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from audit.merkle import HASH_SIZE, Frontier
from audit.store import PendingRecord, StoredCheckpoint, StoredLeaf, StoreError, check_batch

_SCHEMA_NAME = re.compile(r"[a-z_][a-z0-9_]{0,62}")

# Tables in the order an append touches them. DDL that locks tables (index and
# trigger creation) follows the same order, so a replica installing the schema
# while another appends waits instead of deadlocking.
_TABLES = """
CREATE SCHEMA IF NOT EXISTS {s};
CREATE TABLE IF NOT EXISTS {s}.audit_leaves (
    idx bigint PRIMARY KEY, leaf_hash bytea NOT NULL, request_id text, ts_ms bigint NOT NULL);
CREATE INDEX IF NOT EXISTS audit_leaves_request ON {s}.audit_leaves (request_id);
CREATE INDEX IF NOT EXISTS audit_leaves_ts ON {s}.audit_leaves (ts_ms);
CREATE TABLE IF NOT EXISTS {s}.audit_payloads (idx bigint PRIMARY KEY, record bytea NOT NULL);
CREATE TABLE IF NOT EXISTS {s}.audit_nodes (
    level smallint NOT NULL, idx bigint NOT NULL, hash bytea NOT NULL, PRIMARY KEY (level, idx));
CREATE TABLE IF NOT EXISTS {s}.audit_head (
    id smallint PRIMARY KEY CHECK (id = 1), size bigint NOT NULL, frontier bytea NOT NULL);
INSERT INTO {s}.audit_head (id, size, frontier) VALUES (1, 0, '') ON CONFLICT (id) DO NOTHING;
CREATE TABLE IF NOT EXISTS {s}.audit_checkpoints (
    size bigint PRIMARY KEY, root bytea NOT NULL, note bytea NOT NULL, created_ms bigint NOT NULL);
CREATE TABLE IF NOT EXISTS {s}.audit_retention (
    id smallint PRIMARY KEY CHECK (id = 1), purged_below bigint NOT NULL);
INSERT INTO {s}.audit_retention (id, purged_below) VALUES (1, 0) ON CONFLICT (id) DO NOTHING;
CREATE TABLE IF NOT EXISTS {s}.subject_keys (
    handle bytea PRIMARY KEY, pseudonym text NOT NULL UNIQUE, key_id text NOT NULL,
    wrapped bytea NOT NULL);

CREATE OR REPLACE FUNCTION {s}.audit_reject() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION USING ERRCODE = 'restrict_violation', MESSAGE = TG_ARGV[0];
END $$;
CREATE OR REPLACE FUNCTION {s}.audit_payload_delete() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    -- A missing watermark row counts as 0: deleting it must not unlock the payloads.
    IF OLD.idx >= COALESCE(
        (SELECT purged_below FROM {s}.audit_retention WHERE id = 1), 0) THEN
        RAISE EXCEPTION USING ERRCODE = 'restrict_violation',
            MESSAGE = 'audit records are deleted only by retention';
    END IF;
    RETURN OLD;
END $$;
CREATE OR REPLACE FUNCTION {s}.audit_head_update() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.size < OLD.size THEN
        RAISE EXCEPTION USING ERRCODE = 'restrict_violation',
            MESSAGE = 'the audit log never shrinks';
    END IF;
    RETURN NEW;
END $$;
CREATE OR REPLACE FUNCTION {s}.audit_retention_update() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.purged_below < OLD.purged_below THEN
        RAISE EXCEPTION USING ERRCODE = 'restrict_violation',
            MESSAGE = 'the retention watermark only moves forward';
    END IF;
    RETURN NEW;
END $$;
"""

# (table, events, function, message); TRUNCATE triggers are per statement, the rest per row.
_TRIGGERS: list[tuple[str, str, str, str]] = [
    ("audit_leaves", "UPDATE OR DELETE", "audit_reject", "audit leaves are append-only"),
    ("audit_leaves", "TRUNCATE", "audit_reject", "audit leaves are append-only"),
    ("audit_payloads", "UPDATE", "audit_reject", "audit records are append-only"),
    ("audit_payloads", "DELETE", "audit_payload_delete", ""),
    ("audit_payloads", "TRUNCATE", "audit_reject", "audit records are deleted only by retention"),
    ("audit_nodes", "UPDATE OR DELETE", "audit_reject", "audit nodes are append-only"),
    ("audit_nodes", "TRUNCATE", "audit_reject", "audit nodes are append-only"),
    ("audit_head", "UPDATE", "audit_head_update", ""),
    ("audit_head", "DELETE OR TRUNCATE", "audit_reject", "the audit head is never deleted"),
    ("audit_checkpoints", "UPDATE OR DELETE", "audit_reject", "checkpoints are append-only"),
    ("audit_checkpoints", "TRUNCATE", "audit_reject", "checkpoints are append-only"),
    ("audit_retention", "UPDATE", "audit_retention_update", ""),
    (
        "audit_retention",
        "DELETE OR TRUNCATE",
        "audit_reject",
        "the retention watermark is never deleted",
    ),
]


def _trigger_name(number: int) -> str:
    return f"{_TRIGGERS[number][0]}_guard_{number}"


def _trigger_ddl(schema: sql.Identifier) -> list[sql.Composed]:
    statements = []
    for number, (table, events, function, message) in enumerate(_TRIGGERS):
        per = "STATEMENT" if "TRUNCATE" in events else "ROW"
        name = _trigger_name(number)
        statements.append(
            sql.SQL(
                "CREATE OR REPLACE TRIGGER {name} BEFORE {events} ON {s}.{table} "
                "FOR EACH {per} EXECUTE FUNCTION {s}.{function}({message})"
            ).format(
                name=sql.Identifier(name),
                events=sql.SQL(events),
                s=schema,
                table=sql.Identifier(table),
                per=sql.SQL(per),
                function=sql.Identifier(function),
                message=sql.Literal(message) if message else sql.SQL(""),
            )
        )
    return statements


# Every query, composed once per store with the schema quoted by psycopg.
_QUERIES = {
    "head_for_update": "SELECT size, frontier FROM {s}.audit_head WHERE id = 1 FOR UPDATE",
    "copy_leaves": "COPY {s}.audit_leaves (idx, leaf_hash, request_id, ts_ms) FROM STDIN",
    "copy_payloads": "COPY {s}.audit_payloads (idx, record) FROM STDIN",
    "copy_nodes": "COPY {s}.audit_nodes (level, idx, hash) FROM STDIN",
    "set_head": "UPDATE {s}.audit_head SET size = %s, frontier = %s WHERE id = 1",
    "add_checkpoint": (
        "INSERT INTO {s}.audit_checkpoints (size, root, note, created_ms) VALUES (%s, %s, %s, %s)"
    ),
    "insert_subject": (
        "INSERT INTO {s}.subject_keys (handle, pseudonym, key_id, wrapped) "
        "VALUES (%s, %s, %s, %s) ON CONFLICT (handle) DO NOTHING"
    ),
    "subject": "SELECT key_id, wrapped FROM {s}.subject_keys WHERE handle = %s",
    "subject_by_pseudonym": (
        "SELECT handle, key_id, wrapped FROM {s}.subject_keys WHERE pseudonym = %s"
    ),
    "delete_subject": "DELETE FROM {s}.subject_keys WHERE handle = %s",
    "subjects_after": (
        "SELECT handle, key_id, wrapped FROM {s}.subject_keys WHERE handle > %s "
        "ORDER BY handle LIMIT %s"
    ),
    "rewrap_subject": (
        "UPDATE {s}.subject_keys SET key_id = %s, wrapped = %s WHERE handle = %s AND key_id = %s"
    ),
    "subject_key_ids": "SELECT key_id, count(*) FROM {s}.subject_keys GROUP BY key_id",
    "watermark_for_update": "SELECT purged_below FROM {s}.audit_retention WHERE id = 1 FOR UPDATE",
    "set_watermark": "UPDATE {s}.audit_retention SET purged_below = %s WHERE id = 1",
    "purge": "DELETE FROM {s}.audit_payloads WHERE idx < %s",
    "size": "SELECT size FROM {s}.audit_head WHERE id = 1",
    "max_index": "SELECT max(idx) FROM {s}.audit_leaves",
    "head": "SELECT size, frontier FROM {s}.audit_head WHERE id = 1",
    "node": "SELECT hash FROM {s}.audit_nodes WHERE level = %s AND idx = %s",
    "leaf": (
        "SELECT l.idx, l.leaf_hash, l.request_id, l.ts_ms, p.record FROM {s}.audit_leaves l "
        "LEFT JOIN {s}.audit_payloads p ON p.idx = l.idx WHERE l.idx = %s"
    ),
    "leaves": (
        "SELECT l.idx, l.leaf_hash, l.request_id, l.ts_ms, p.record FROM {s}.audit_leaves l "
        "LEFT JOIN {s}.audit_payloads p ON p.idx = l.idx "
        "WHERE l.idx >= %s AND l.idx < %s ORDER BY l.idx"
    ),
    "leaves_between": (
        "SELECT l.idx, l.leaf_hash, l.request_id, l.ts_ms, p.record FROM {s}.audit_leaves l "
        "LEFT JOIN {s}.audit_payloads p ON p.idx = l.idx "
        "WHERE l.ts_ms >= %s AND l.ts_ms < %s ORDER BY l.idx"
    ),
    "index_of": ("SELECT idx FROM {s}.audit_leaves WHERE request_id = %s ORDER BY idx LIMIT 1"),
    "nodes_after": (
        "SELECT level, idx, hash FROM {s}.audit_nodes WHERE (level, idx) > (%s, %s) "
        "ORDER BY level, idx LIMIT 10000"
    ),
    "checkpoints": ("SELECT size, root, note, created_ms FROM {s}.audit_checkpoints ORDER BY size"),
    "latest_checkpoint": (
        "SELECT size, root, note, created_ms FROM {s}.audit_checkpoints ORDER BY size DESC LIMIT 1"
    ),
    "purged_below": "SELECT purged_below FROM {s}.audit_retention WHERE id = 1",
    "installed_triggers": (
        "SELECT count(*) FROM pg_trigger t JOIN pg_class c ON c.oid = t.tgrelid "
        "JOIN pg_namespace n ON n.oid = c.relnamespace "
        "WHERE n.nspname = %s AND t.tgname = ANY(%s) AND t.tgenabled <> 'D'"
    ),
}

# Synchronous-commit levels at which COMMIT returns only after the WAL is flushed here.
_DURABLE = {"on", "remote_apply", "remote_write", "local"}

_Conn = psycopg.Connection[tuple[Any, ...]]


def _split(blob: bytes) -> list[bytes]:
    return [blob[i : i + HASH_SIZE] for i in range(0, len(blob), HASH_SIZE)]


def _leaf(row: tuple[Any, ...]) -> StoredLeaf:
    idx, leaf_hash, request_id, ts_ms, payload = row
    return StoredLeaf(
        index=int(idx),
        leaf_hash=bytes(leaf_hash),
        request_id=None if request_id is None else str(request_id),
        ts_ms=int(ts_ms),
        payload=None if payload is None else bytes(payload),
    )


def _checkpoint(row: tuple[Any, ...]) -> StoredCheckpoint:
    size, root, note, created_ms = row
    return StoredCheckpoint(int(size), bytes(root), bytes(note), int(created_ms))


class PostgresAuditStore:
    def __init__(self, dsn: str, *, schema: str = "gateway_audit") -> None:
        if not _SCHEMA_NAME.fullmatch(schema):
            raise StoreError(f"invalid audit schema name {schema!r}: want [a-z_][a-z0-9_]{{0,62}}")
        self.schema = schema
        ident = sql.Identifier(schema)
        self._q = {name: sql.SQL(text).format(s=ident) for name, text in _QUERIES.items()}
        self._ddl = [sql.SQL(_TABLES).format(s=ident), *_trigger_ddl(ident)]
        try:
            params = conninfo_to_dict(dsn)
        except psycopg.Error as exc:
            raise StoreError(f"invalid PostgreSQL DSN for the audit log: {exc}") from exc
        # libpq waits forever by default; a replica should fail its start instead.
        params.setdefault("connect_timeout", 10)
        params.setdefault("application_name", "gateway-audit")
        self._conninfo = make_conninfo("", **params)
        self._closed = False
        self._write_lock = threading.Lock()
        self._read_lock = threading.Lock()
        opened: list[_Conn] = []
        try:
            opened.append(self._connect())
            opened.append(self._connect())
            self._write, self._read = opened
            self._install()
        except psycopg.Error as exc:
            for conn in opened:
                conn.close()
            raise StoreError(f"cannot open audit schema {schema!r}: {exc}") from exc

    def _connect(self) -> _Conn:
        # autocommit: every read is its own snapshot (and sees other replicas'
        # commits); writes open explicit transactions.
        conn: _Conn = psycopg.connect(self._conninfo, autocommit=True)
        (level,) = conn.execute("SHOW synchronous_commit").fetchone() or ("off",)
        if level not in _DURABLE:
            # A role or database default of `off` would acknowledge appends that a
            # crash can still lose; the audit log must never do that.
            conn.execute("SET synchronous_commit TO on")
        return conn

    def _install(self) -> None:
        conn = self._write
        with conn.transaction():
            # Two replicas starting at once would otherwise race in CREATE ... IF NOT
            # EXISTS (both see "absent", one fails on the catalog's unique index).
            conn.execute(
                "SELECT pg_advisory_xact_lock(hashtext(%s))", (f"gateway-audit-ddl:{self.schema}",)
            )
            names = [_trigger_name(number) for number in range(len(_TRIGGERS))]
            row = conn.execute(self._q["installed_triggers"], (self.schema, names)).fetchone()
            # Installed already: skip the DDL, which would lock the tables against
            # appenders and needs privileges a replica's role may not have. A guard
            # dropped or disabled since is put back by the next start.
            if row is not None and int(row[0]) == len(names):
                return
            for statement in self._ddl:
                conn.execute(statement)

    def _live(self, conn: _Conn, which: str) -> _Conn:
        """The connection, reconnected if the server dropped it (restart, failover)."""
        if self._closed:
            raise StoreError("audit store is closed")
        if not conn.closed and not conn.broken:
            return conn
        conn.close()
        fresh = self._connect()
        setattr(self, which, fresh)
        return fresh

    # -- writes --------------------------------------------------------------

    def append_batch(self, records: Sequence[PendingRecord]) -> int:
        check_batch(records)
        with self._write_lock:
            try:
                conn = self._live(self._write, "_write")
                with conn.transaction(), conn.cursor() as cur:
                    # The row lock serialises appenders across processes until COMMIT.
                    row = cur.execute(self._q["head_for_update"]).fetchone()
                    if row is None:
                        raise StoreError("audit head missing")
                    size = int(row[0])
                    try:
                        frontier = Frontier(size, _split(bytes(row[1])))
                    except ValueError as exc:
                        # The appender fails a batch on StoreError only; anything else
                        # would leave its requests waiting forever.
                        raise StoreError(f"audit head is corrupt: {exc}") from exc
                    nodes: list[tuple[int, int, bytes]] = []
                    for record in records:
                        nodes.extend(frontier.append(record.leaf_hash))
                    # COPY: one round trip per table, whatever the batch size.
                    with cur.copy(self._q["copy_leaves"]) as copy:
                        for offset, r in enumerate(records):
                            copy.write_row((size + offset, r.leaf_hash, r.request_id, r.ts_ms))
                    with cur.copy(self._q["copy_payloads"]) as copy:
                        for offset, r in enumerate(records):
                            copy.write_row((size + offset, r.payload))
                    with cur.copy(self._q["copy_nodes"]) as copy:
                        for node in nodes:
                            copy.write_row(node)
                    cur.execute(self._q["set_head"], (frontier.size, b"".join(frontier.hashes())))
            except psycopg.Error as exc:
                # A connection lost during COMMIT leaves the outcome unknown; failing
                # the batch is the safe answer (at worst a failed request is logged).
                raise StoreError(f"audit append failed: {exc}") from exc
            return size

    def add_checkpoint(self, checkpoint: StoredCheckpoint) -> None:
        with self._write_lock:
            try:
                conn = self._live(self._write, "_write")
                conn.execute(
                    self._q["add_checkpoint"],
                    (checkpoint.size, checkpoint.root, checkpoint.note, checkpoint.created_ms),
                )
            except psycopg.Error as exc:
                raise StoreError(f"checkpoint write failed: {exc}") from exc

    def get_or_create_subject_key(
        self, handle: bytes, pseudonym: str, key_id: str, wrapped: bytes
    ) -> tuple[str, bytes]:
        with self._write_lock:
            try:
                conn = self._live(self._write, "_write")
                # The INSERT waits for a concurrent insert of the same handle to
                # commit, so the SELECT (a new snapshot) sees whichever key won.
                conn.execute(self._q["insert_subject"], (handle, pseudonym, key_id, wrapped))
                row = conn.execute(self._q["subject"], (handle,)).fetchone()
            except psycopg.Error as exc:
                raise StoreError(f"subject key write failed: {exc}") from exc
        if row is None:
            raise StoreError("subject key vanished between insert and read")
        return str(row[0]), bytes(row[1])

    def delete_subject_key(self, handle: bytes) -> bool:
        with self._write_lock:
            try:
                conn = self._live(self._write, "_write")
                cursor = conn.execute(self._q["delete_subject"], (handle,))
            except psycopg.Error as exc:
                raise StoreError(f"subject key delete failed: {exc}") from exc
            return cursor.rowcount > 0

    def subject_keys_after(self, handle: bytes, limit: int) -> list[tuple[bytes, str, bytes]]:
        rows = self._all("subjects_after", (handle, limit))
        return [(bytes(r[0]), str(r[1]), bytes(r[2])) for r in rows]

    def rewrap_subject_key(
        self, handle: bytes, old_key_id: str, new_key_id: str, wrapped: bytes
    ) -> bool:
        with self._write_lock:
            try:
                conn = self._live(self._write, "_write")
                cursor = conn.execute(
                    self._q["rewrap_subject"], (new_key_id, wrapped, handle, old_key_id)
                )
            except psycopg.Error as exc:
                raise StoreError(f"subject key rewrap failed: {exc}") from exc
            return cursor.rowcount > 0

    def subject_key_ids(self) -> dict[str, int]:
        return {str(r[0]): int(r[1]) for r in self._all("subject_key_ids")}

    def purge_payloads_before(self, index: int) -> int:
        with self._write_lock:
            try:
                conn = self._live(self._write, "_write")
                with conn.transaction(), conn.cursor() as cur:
                    row = cur.execute(self._q["watermark_for_update"]).fetchone()
                    if row is None:
                        raise StoreError("retention watermark missing")
                    target = max(int(row[0]), index)
                    cur.execute(self._q["set_watermark"], (target,))
                    cur.execute(self._q["purge"], (target,))
                    purged = cur.rowcount
            except psycopg.Error as exc:
                raise StoreError(f"retention purge failed: {exc}") from exc
            return purged

    # -- reads ---------------------------------------------------------------

    def _all(self, name: str, args: tuple[object, ...] = ()) -> list[tuple[Any, ...]]:
        with self._read_lock:
            try:
                conn = self._live(self._read, "_read")
                return conn.execute(self._q[name], args).fetchall()
            except psycopg.Error as exc:
                raise StoreError(f"audit read failed: {exc}") from exc

    def _one(self, name: str, args: tuple[object, ...] = ()) -> tuple[Any, ...] | None:
        rows = self._all(name, args)
        return rows[0] if rows else None

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
        return int(row[0]), _split(bytes(row[1]))

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
        row = self._one("index_of", (request_id,))
        return None if row is None else int(row[0])

    def iter_leaves(self, start: int = 0, end: int | None = None) -> Iterator[StoredLeaf]:
        stop = self.size() if end is None else end
        chunk = 5_000
        # Chunks, not one cursor: the read lock is never held across a yield.
        for low in range(start, stop, chunk):
            for row in self._all("leaves", (low, min(low + chunk, stop))):
                yield _leaf(row)

    def leaves_between(self, from_ms: int, to_ms: int) -> Iterator[StoredLeaf]:
        for row in self._all("leaves_between", (from_ms, to_ms)):
            yield _leaf(row)

    def iter_nodes(self) -> Iterator[tuple[int, int, bytes]]:
        last = (-1, -1)
        while True:
            rows = self._all("nodes_after", last)
            if not rows:
                return
            for level, idx, digest in rows:
                yield int(level), int(idx), bytes(digest)
            last = (int(rows[-1][0]), int(rows[-1][1]))

    def checkpoints(self) -> list[StoredCheckpoint]:
        return [_checkpoint(row) for row in self._all("checkpoints")]

    def latest_checkpoint(self) -> StoredCheckpoint | None:
        row = self._one("latest_checkpoint")
        return None if row is None else _checkpoint(row)

    def subject_key(self, handle: bytes) -> tuple[str, bytes] | None:
        row = self._one("subject", (handle,))
        return None if row is None else (str(row[0]), bytes(row[1]))

    def subject_key_by_pseudonym(self, pseudonym: str) -> tuple[bytes, str, bytes] | None:
        row = self._one("subject_by_pseudonym", (pseudonym,))
        return None if row is None else (bytes(row[0]), str(row[1]), bytes(row[2]))

    def purged_below(self) -> int:
        row = self._one("purged_below")
        return 0 if row is None else int(row[0])

    def close(self) -> None:
        with self._write_lock, self._read_lock:
            self._closed = True
            self._write.close()
            self._read.close()
