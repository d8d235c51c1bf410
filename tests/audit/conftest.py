"""Audit store fixtures: every backend, real databases, and raw SQL access as an attacker has it.

The PostgreSQL backend runs against a real server (127.0.0.1:5432 unless
AUDIT_TEST_POSTGRES_DSN says otherwise), each test in a fresh schema. Without
a server those tests skip, loudly: a green run must never hide that the shared
backend went untested.
"""

from __future__ import annotations

import os
import sqlite3
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg import sql

from audit.checkpoint import NoteSigner
from audit.log import AuditLog
from audit.postgres_store import PostgresAuditStore
from audit.record import request_record
from audit.sqlite_store import SqliteAuditStore
from audit.store import AuditStore
from audit.subjects import SubjectKeys

PG_DSN = os.environ.get("AUDIT_TEST_POSTGRES_DSN", "postgresql://postgres@127.0.0.1:5432/test")
PG_UNREACHABLE = "PostgreSQL at 127.0.0.1:5432 unreachable: PostgreSQL backend NOT TESTED"
_PG_DOWN = pytest.StashKey[str]()

BACKENDS = ["sqlite", "postgres"]


def pytest_terminal_summary(
    terminalreporter: pytest.TerminalReporter, config: pytest.Config
) -> None:
    reason = config.stash.get(_PG_DOWN, None)
    if reason is not None:
        terminalreporter.write_line(f"WARNING: {reason}", red=True, bold=True)


@pytest.fixture(scope="session")
def pg_dsn(request: pytest.FixtureRequest) -> str:
    try:
        psycopg.connect(PG_DSN, connect_timeout=3).close()
    except psycopg.OperationalError as exc:
        request.config.stash[_PG_DOWN] = PG_UNREACHABLE
        print(f"WARNING: {PG_UNREACHABLE} ({exc})", file=sys.stderr)
        pytest.skip(PG_UNREACHABLE)
    return PG_DSN


@pytest.fixture
def pg_schema(pg_dsn: str) -> Iterator[str]:
    """A schema name no other test uses; dropped with everything in it afterwards."""
    name = f"test_audit_{uuid.uuid4().hex[:16]}"
    yield name
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(name)))


class RawDb:
    """The database as someone with direct access sees it: plain SQL, no store, no rules.

    Statements use `?` placeholders and unqualified table names on both backends.
    """

    def __init__(self, kind: str, conn: Any) -> None:
        self.kind = kind
        self._conn = conn
        # What the database raises when a trigger refuses a statement.
        self.rejected: tuple[type[Exception], ...] = (
            (sqlite3.DatabaseError,) if kind == "sqlite" else (psycopg.Error,)
        )

    def execute(self, statement: str, args: tuple[object, ...] = ()) -> int:
        if self.kind == "postgres":
            statement = statement.replace("?", "%s")
        cursor = self._conn.execute(statement, args)
        return int(cursor.rowcount)

    def query(self, statement: str, args: tuple[object, ...] = ()) -> list[tuple[Any, ...]]:
        if self.kind == "postgres":
            statement = statement.replace("?", "%s")
        return list(self._conn.execute(statement, args).fetchall())

    def drop_triggers(self) -> None:
        """What an attacker does first: the guards are in the database, so is the attacker."""
        if self.kind == "sqlite":
            names = self.query("SELECT name FROM sqlite_master WHERE type = 'trigger'")
            for (name,) in names:
                self.execute(f'DROP TRIGGER "{name}"')
            return
        rows = self.query(
            "SELECT t.tgname, c.relname FROM pg_trigger t JOIN pg_class c ON c.oid = t.tgrelid "
            "JOIN pg_namespace n ON n.oid = c.relnamespace "
            "WHERE n.nspname = current_schema() AND NOT t.tgisinternal"
        )
        assert rows, "no triggers found to drop"
        for name, table in rows:
            self.execute(
                sql.SQL("DROP TRIGGER {} ON {}")
                .format(sql.Identifier(name), sql.Identifier(table))
                .as_string(self._conn)
            )

    def close(self) -> None:
        self._conn.close()


@dataclass
class Backend:
    """One database, with as many stores and raw connections over it as a test wants."""

    kind: str
    open_store: Callable[[], AuditStore]
    open_raw: Callable[[], RawDb]
    # Arguments that reopen the store elsewhere (another process): ("sqlite", path) or
    # ("postgres", dsn, schema).
    location: tuple[str, ...]


def make_backend(kind: str, tmp_path: Path, request: pytest.FixtureRequest) -> Backend:
    if kind == "sqlite":
        path = tmp_path / "audit.sqlite3"

        def sqlite_raw() -> RawDb:
            return RawDb("sqlite", sqlite3.connect(path, isolation_level=None))

        return Backend("sqlite", lambda: SqliteAuditStore(path), sqlite_raw, ("sqlite", str(path)))
    schema: str = request.getfixturevalue("pg_schema")
    dsn: str = request.getfixturevalue("pg_dsn")

    def pg_raw() -> RawDb:
        conn = psycopg.connect(dsn, autocommit=True)
        conn.execute(sql.SQL("SET search_path TO {}").format(sql.Identifier(schema)))
        return RawDb("postgres", conn)

    return Backend(
        "postgres",
        lambda: PostgresAuditStore(dsn, schema=schema),
        pg_raw,
        ("postgres", dsn, schema),
    )


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Backend:
    return make_backend(request.param, tmp_path, request)


@pytest.fixture
def store(backend: Backend) -> Iterator[AuditStore]:
    opened = backend.open_store()
    yield opened
    opened.close()


@pytest.fixture
def raw(backend: Backend, store: AuditStore) -> Iterator[RawDb]:
    """A raw connection to the store's database (after the store created the schema)."""
    conn = backend.open_raw()
    yield conn
    conn.close()


def make_log(
    store: AuditStore, *, signer: NoteSigner | None = None, clock: Callable[[], float] = time.time
) -> AuditLog:
    subjects = SubjectKeys(store, kek=os.urandom(32), handle_key=os.urandom(32))
    return AuditLog(
        store,
        signer=signer or NoteSigner.generate("test.example/audit"),
        subject_keys=subjects,
        clock=clock,
    )


async def append_request(
    audit_log: AuditLog, user_id: str, request_id: str, *, tenant: str | None = "t1"
) -> int:
    """One real request record for `user_id`, its user id sealed under the subject's key."""
    key = await audit_log.subject_key(tenant, user_id)
    record = request_record(
        ts_ms=audit_log.now_ms(),
        request_id=request_id,
        route="/v1/rank",
        action="rank",
        client_id="demo",
        issuer="https://issuer.test",
        subject=key.pseudonym,
        status=200,
        outcome="ok",
        policy_ids=["default.permit"],
        model={"name": "ranker", "version": "1"},
        latency_us=123,
        sealed=SubjectKeys.seal(key, request_id, {"user_id": user_id}),
    )
    return await audit_log.append(record)
