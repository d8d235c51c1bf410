"""The shared backend: the audit log in PostgreSQL, for several gateway replicas.

Same tables and guarantees as the SQLite store, enforced by the database:
plpgsql triggers reject UPDATE, DELETE and TRUNCATE on the immutable tables,
so a bug (or a replica running old code) cannot rewrite history through the
application's own role. Appends lock the head row (`SELECT ... FOR UPDATE`):
every replica's writer queues on that one row, so the log has one sequence,
no gaps and no forks however many processes append at once.

Reads and one-statement writes are `audit.sql_store`'s, shared with SQLite.
No psycopg exception leaves this module: every failure is a `StoreError`.

Every call is bounded (see `PostgresAuditStore`), and a connection the server
dropped or the watchdog cut is reopened by a later call, with a short backoff
while the database stays away: the store comes back by itself, no restart.
"""

from __future__ import annotations

import math
import re
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any, ClassVar

import psycopg
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from audit.merkle import Frontier
from audit.sql_store import QUERIES, Role, SqlAuditStore, split_hashes
from audit.store import AppendInDoubt, PendingRecord, StoreError, check_batch
from gateway.pg_deadline import Deadline, Watchdog

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

# While the database is away, a background thread tries to connect after this long,
# doubling per failure up to the maximum: the database back is noticed within about
# the maximum, and callers never wait for an attempt.
_BACKOFF_FIRST_S = 0.05
_BACKOFF_MAX_S = 1.0
# Installing the schema is start-up work that may queue behind other replicas' appends.
_INSTALL_TIMEOUT_S = 30.0

_Conn = psycopg.Connection[tuple[Any, ...]]


class PostgresAuditStore(SqlAuditStore):
    """`timeout_s` bounds every call, on both sides: the server cancels a statement or a
    lock wait past it (`statement_timeout`, `lock_timeout`), and a watchdog cuts the
    connection of a call still unanswered at `timeout_s` (a stopped server cancels
    nothing). Connecting is bounded by `connect_timeout` (libpq's minimum is 2 s).
    Choose it below the request timeout: a hung database is then a 503, not a hang.

    A call cut by the watchdog, or a reconnection that fails, marks the database away
    (an outage): from then on every call fails at once, without touching the network,
    while a background thread tries to connect with a bounded backoff. When it
    succeeds the outage ends, and each connection is replaced before its next use (one
    that lived through the outage may be dead without knowing it yet)."""

    _driver_errors: ClassVar[tuple[type[Exception], ...]] = (psycopg.Error,)

    def __init__(self, dsn: str, *, schema: str = "gateway_audit", timeout_s: float = 2.0) -> None:
        if not timeout_s > 0:
            raise StoreError("the audit store's timeout must be positive")
        # A call waits for the connection's lock at most as long as a call may take.
        super().__init__(lock_wait_s=timeout_s)
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
        self._timeout_s = timeout_s
        # The server's limits end a slow statement cleanly (the transaction rolls back,
        # the connection stays) before the watchdog has to cut anything.
        server_ms = max(1, int(timeout_s * 800))
        # libpq waits forever by default (a replica should fail its start instead) and
        # counts connect_timeout in whole seconds, at least 2. A DSN may ask for less.
        bound = max(2, math.ceil(timeout_s))
        asked = _seconds(params.get("connect_timeout"))
        params["connect_timeout"] = bound if asked is None else min(asked, bound)
        params.setdefault("application_name", "gateway-audit")
        own = (
            f"-c statement_timeout={server_ms} -c lock_timeout={server_ms} "
            # A client gone mid-transaction (a partition, no reset) would hold the head
            # row's lock, and so every replica's appends, until this ends it.
            f"-c idle_in_transaction_session_timeout={max(1000, 5 * server_ms)}"
        )
        params["options"] = f"{params.get('options', '')} {own}".strip()
        self._conninfo = make_conninfo("", **params)
        self._closed = False
        self._watchdog = Watchdog("audit-pg")
        self._state = threading.Lock()
        self._outage: str | None = None  # why the database is away; None: it is not
        self._reviver: threading.Thread | None = None
        self._stopping = threading.Event()
        self._stale: set[str] = set()
        opened: list[_Conn] = []
        try:
            opened.append(self._connect())
            opened.append(self._connect())
            self._write, self._read = opened
            self._install()
        except (psycopg.Error, StoreError) as exc:
            self._closed = True
            self._stopping.set()
            for conn in opened:
                conn.close()
            self._watchdog.close()
            raise StoreError(f"cannot open audit schema {schema!r}: {exc}") from exc

    # -- connections ---------------------------------------------------------

    def _connect(self) -> _Conn:
        # autocommit: every read is its own snapshot (and sees other replicas'
        # commits); writes open explicit transactions.
        conn: _Conn = psycopg.connect(self._conninfo, autocommit=True)
        try:
            with self._bounded(conn, "connection set-up"):
                (level,) = conn.execute("SHOW synchronous_commit").fetchone() or ("off",)
                if level not in _DURABLE:
                    # A role or database default of `off` would acknowledge appends that a
                    # crash can still lose; the audit log must never do that.
                    conn.execute("SET synchronous_commit TO on")
        except BaseException:
            conn.close()
            raise
        return conn

    @contextmanager
    def _bounded(
        self, conn: _Conn, what: str, timeout_s: float | None = None
    ) -> Iterator[Deadline]:
        """Run the block under the watchdog; a cut call raises a StoreError that says so."""
        limit = self._timeout_s if timeout_s is None else timeout_s
        with self._watchdog.deadline(conn.pgconn.socket, limit) as deadline:
            try:
                yield deadline
            except psycopg.Error as exc:
                if not deadline.fired:
                    raise
                self._failed(f"{what}: no answer within {limit:g} s")
                raise StoreError(
                    f"audit database did not answer ({what}) within {limit:g} s"
                ) from exc

    def _failed(self, why: str) -> None:
        """The database is away: calls fail at once until the reviver reaches it again."""
        with self._state:
            self._outage = why
            if self._reviver is None and not self._closed:
                self._reviver = threading.Thread(
                    target=self._revive, name="audit-pg-reconnect", daemon=True
                )
                self._reviver.start()

    def _revive(self) -> None:
        backoff = _BACKOFF_FIRST_S
        while not self._stopping.wait(backoff):
            try:
                self._connect().close()
            except (psycopg.Error, StoreError) as exc:
                with self._state:
                    self._outage = f"reconnect: {exc}"
                backoff = min(_BACKOFF_MAX_S, backoff * 2)
                continue
            with self._state:
                self._outage = None
                self._stale = {"_read", "_write"}
                self._reviver = None
            return
        with self._state:
            self._reviver = None

    def _install(self) -> None:
        conn = self._write
        with self._bounded(conn, "schema install", _INSTALL_TIMEOUT_S), conn.transaction():
            limit = sql.Literal(f"{int(_INSTALL_TIMEOUT_S * 1000)}ms")
            for setting in ("statement_timeout", "lock_timeout"):
                conn.execute(
                    sql.SQL("SELECT set_config({}, {}, true)").format(sql.Literal(setting), limit)
                )
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
        """The connection, reconnected if the server dropped it (restart, failover) or it
        lived through an outage. During an outage, a StoreError at once."""
        if self._closed:
            raise StoreError("audit store is closed")
        outage = self._outage
        if outage is not None:
            raise StoreError(f"audit database unavailable ({outage})")
        if which in self._stale:
            self._stale.discard(which)
            conn.close()
        if not conn.closed and not conn.broken:
            return conn
        conn.close()
        try:
            fresh = self._connect()
        except (psycopg.Error, StoreError) as exc:
            self._failed(f"reconnect: {exc}")
            raise StoreError(f"audit database unavailable: {exc}") from exc
        setattr(self, which, fresh)
        return fresh

    def _execute(self, role: Role, name: str, args: tuple[object, ...] = ()) -> psycopg.Cursor[Any]:
        conn = self._live(self._read if role == "_read" else self._write, role)
        with self._bounded(conn, name):
            # A client-side cursor: the whole result is read here, under the deadline.
            return conn.execute(self._q[name], args)

    # -- the transactions that lock the head or the watermark ----------------

    def append_batch(self, records: Sequence[PendingRecord]) -> int:
        check_batch(records)
        size = -1
        committing = False
        conn: _Conn | None = None
        with self._holding(self._write_lock, "write"):
            try:
                conn = self._live(self._write, "_write")
                with (
                    self._bounded(conn, "append"),
                    conn.transaction(),
                    conn.cursor() as cur,
                ):
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
                    # psycopg sends each statement after the last one's answer, so COMMIT
                    # leaves only now: an error before this point is a clean failure.
                    committing = True
            except (psycopg.Error, StoreError) as exc:
                if committing and conn is not None and (conn.broken or conn.closed):
                    # The COMMIT went out and the connection was lost before its answer:
                    # the batch may be durable (the server may still run it). The caller
                    # settles it later. An answer that refused the COMMIT is no doubt.
                    raise AppendInDoubt(
                        f"audit append outcome unknown: {exc}", first_index=size
                    ) from exc
                if isinstance(exc, StoreError):
                    raise
                raise StoreError(f"audit append failed: {exc}") from exc
            return size

    def settled_leaf_hash(self, index: int) -> bytes | None:
        """Read after taking the head row's lock: an append left in doubt that still holds
        it (its server was stopped mid-COMMIT) has committed or rolled back by then."""
        with self._holding(self._write_lock, "write"):
            try:
                conn = self._live(self._write, "_write")
                with self._bounded(conn, "settle"), conn.transaction():
                    conn.execute(self._q["head_for_update"])
                    row = conn.execute(self._q["leaf_hash"], (index,)).fetchone()
            except psycopg.Error as exc:
                raise StoreError(f"audit read failed: {exc}") from exc
        return None if row is None else bytes(row[0])

    def purge_payloads_before(self, index: int) -> int:
        with self._holding(self._write_lock, "write"):
            try:
                conn = self._live(self._write, "_write")
                with self._bounded(conn, "purge"), conn.transaction(), conn.cursor() as cur:
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
        self._stopping.set()
        with self._write_lock, self._read_lock:
            self._closed = True
            self._write.close()
            self._read.close()
        with self._state:
            reviver = self._reviver
        if reviver is not None:
            reviver.join(timeout=5)  # at most one connection attempt
        self._watchdog.close()


def _seconds(value: object) -> int | None:
    """A DSN's connect_timeout as whole seconds; None when absent or 0 (libpq: no limit)."""
    if value is None:
        return None
    try:
        seconds = int(float(str(value)))
    except ValueError as exc:
        raise StoreError(f"invalid connect_timeout in the audit DSN: {value!r}") from exc
    return seconds if seconds > 0 else None
