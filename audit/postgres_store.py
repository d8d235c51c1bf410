"""The shared backend: the audit log in PostgreSQL, for several gateway replicas.

Same tables and guarantees as the SQLite store, enforced by the database:
plpgsql triggers reject UPDATE, DELETE and TRUNCATE on the immutable tables,
so a bug (or a replica running old code) cannot rewrite history through the
application's own role. Appends lock the head row (`SELECT ... FOR UPDATE`):
every replica's writer queues on that one row, so the log has one sequence,
no gaps and no forks however many processes append at once.

Reads and one-statement writes are `audit.sql_store`'s, shared with SQLite.
No psycopg exception leaves this module: every failure is a `StoreError`.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any, ClassVar

import psycopg
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from audit.merkle import Frontier
from audit.sql_store import QUERIES, Role, SqlAuditStore, split_hashes
from audit.store import PendingRecord, StoreError, check_batch

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


# The queries only PostgreSQL runs (written like the shared ones: `?`, `{s}.table`).
_OWN_QUERIES = {
    "head_for_update": "SELECT size, frontier FROM {s}.audit_head WHERE id = 1 FOR UPDATE",
    "copy_leaves": "COPY {s}.audit_leaves (idx, leaf_hash, request_id, ts_ms) FROM STDIN",
    "copy_payloads": "COPY {s}.audit_payloads (idx, record) FROM STDIN",
    "copy_nodes": "COPY {s}.audit_nodes (level, idx, hash) FROM STDIN",
    "set_head": "UPDATE {s}.audit_head SET size = ?, frontier = ? WHERE id = 1",
    "insert_subject": (
        "INSERT INTO {s}.subject_keys (handle, pseudonym, key_id, wrapped) "
        "VALUES (?, ?, ?, ?) ON CONFLICT (handle) DO NOTHING"
    ),
    "watermark_for_update": "SELECT purged_below FROM {s}.audit_retention WHERE id = 1 FOR UPDATE",
    "set_watermark": "UPDATE {s}.audit_retention SET purged_below = ? WHERE id = 1",
    "purge": "DELETE FROM {s}.audit_payloads WHERE idx < ?",
    "installed_triggers": (
        "SELECT count(*) FROM pg_trigger t JOIN pg_class c ON c.oid = t.tgrelid "
        "JOIN pg_namespace n ON n.oid = c.relnamespace "
        "WHERE n.nspname = ? AND t.tgname = ANY(?) AND t.tgenabled <> 'D'"
    ),
}

# Synchronous-commit levels at which COMMIT returns only after the WAL is flushed here.
_DURABLE = {"on", "remote_apply", "remote_write", "local"}

_Conn = psycopg.Connection[tuple[Any, ...]]


class PostgresAuditStore(SqlAuditStore):
    _driver_errors: ClassVar[tuple[type[Exception], ...]] = (psycopg.Error,)

    def __init__(self, dsn: str, *, schema: str = "gateway_audit") -> None:
        super().__init__()
        if not _SCHEMA_NAME.fullmatch(schema):
            raise StoreError(f"invalid audit schema name {schema!r}: want [a-z_][a-z0-9_]{{0,62}}")
        self.schema = schema
        ident = sql.Identifier(schema)
        # Every query, composed once per store with the schema quoted by psycopg.
        self._q = {
            name: sql.SQL(text.replace("?", "%s")).format(s=ident)
            for name, text in (QUERIES | _OWN_QUERIES).items()
        }
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

    def _execute(self, role: Role, name: str, args: tuple[object, ...] = ()) -> psycopg.Cursor[Any]:
        conn = self._live(self._read if role == "_read" else self._write, role)
        return conn.execute(self._q[name], args)

    # -- the transactions that lock the head or the watermark ----------------

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
                        frontier = Frontier(size, split_hashes(bytes(row[1])))
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

    def close(self) -> None:
        with self._write_lock, self._read_lock:
            self._closed = True
            self._write.close()
            self._read.close()
