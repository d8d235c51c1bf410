"""One PostgreSQL connection a store shares between its threads, every call bounded.

The consent store and the outcome-event store use it (the audit store has its own
pool, audit.postgres_store). Every call is bounded on both sides: `statement_timeout`
and `lock_timeout` on the server (at 80 % of the bound, so a slow statement ends
cleanly before anything is cut), libpq's `connect_timeout`, a bounded wait for the
connection's lock, and a watchdog (gateway.pg_deadline) that cuts the connection of a
call still unanswered at `timeout_s`, since a stopped server enforces nothing. A
connection the server dropped or the watchdog cut is replaced by a later call; while
reconnecting fails, calls fail at once for a backoff that doubles up to a second,
then try again: the store comes back by itself, no restart. A read is repeated once on
a fresh connection; a write never is (its commit may have happened).
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import psycopg
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from gateway.pg_deadline import Watchdog

Connection = psycopg.Connection[tuple[Any, ...]]


class BoundedPostgres:
    """`query` and `write` on one schema; failures raise `error` (the store's own type)."""

    def __init__(
        self,
        dsn: str,
        schema: str,
        *,
        timeout_s: float,
        label: str,
        error: type[Exception],
        create: Callable[[Connection], None],
        schema_lock: int,
    ) -> None:
        if not timeout_s > 0:
            raise error(f"the {label}'s timeout must be positive")
        self._label, self._error = label, error
        self._lock = threading.Lock()
        self._schema = schema
        self._closed = False
        self._timeout_s = timeout_s
        self._watchdog = Watchdog(label.replace(" ", "-"))
        self._backoff_s = 0.0
        self._away_until = 0.0
        try:
            params = conninfo_to_dict(dsn)
        except psycopg.Error as exc:
            raise error(f"invalid PostgreSQL DSN for the {label}") from exc
        # libpq's minimum connect timeout is 2 s.
        params.setdefault("connect_timeout", max(2, math.ceil(timeout_s)))
        params.setdefault("application_name", f"gateway-{label.split()[0]}")
        server_ms = max(1, int(timeout_s * 800))
        own = (
            f"-c statement_timeout={server_ms} -c lock_timeout={server_ms} "
            f"-c idle_in_transaction_session_timeout={max(1000, 5 * server_ms)}"
        )
        params["options"] = f"{params.get('options', '')} {own}".strip()
        self._conninfo = make_conninfo("", **params)
        try:
            self._conn = self._connect()
            # Start-up may wait for another gateway's schema creation (the advisory lock).
            with (
                self._watchdog.deadline(self._conn.pgconn.socket, max(10.0, timeout_s)),
                self._conn.transaction(),
            ):
                # One creator at a time: several gateways may start together.
                self._conn.execute("SET LOCAL statement_timeout = 0")
                self._conn.execute("SELECT pg_advisory_xact_lock(%s)", (schema_lock,))
                self._conn.execute(
                    sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(sql.Identifier(schema))
                )
                self.search_path(self._conn)
                create(self._conn)
        except psycopg.Error as exc:
            self._watchdog.close()
            raise error(f"{label} (PostgreSQL): {exc}") from exc

    def _connect(self) -> Connection:
        return psycopg.connect(self._conninfo, autocommit=True)

    @staticmethod
    def _sql(statement: str) -> bytes:
        # Statements name tables bare; the schema is fixed by the search path per call.
        return statement.replace("?", "%s").encode()

    @contextmanager
    def _turn(self) -> Iterator[None]:
        """The connection's lock, waited for no longer than a call may take."""
        if not self._lock.acquire(timeout=self._timeout_s):
            raise self._error(
                f"{self._label} busy: the call ahead did not finish within {self._timeout_s} s"
            )
        try:
            yield
        finally:
            self._lock.release()

    def _live(self) -> Connection:
        """The connection, reconnected if the server dropped it or the watchdog cut it."""
        if self._closed:
            raise self._error(f"{self._label} is closed")
        if not (self._conn.closed or self._conn.broken):
            return self._conn
        if time.monotonic() < self._away_until:
            raise self._error(f"{self._label} unavailable: reconnecting to PostgreSQL")
        self._conn.close()
        try:
            self._conn = self._connect()
        except psycopg.Error as exc:
            self._away()
            raise self._error(f"{self._label} unavailable: {exc}") from exc
        self._backoff_s = 0.0
        return self._conn

    def _away(self) -> None:
        self._backoff_s = min(1.0, max(0.05, self._backoff_s * 2))
        self._away_until = time.monotonic() + self._backoff_s

    @contextmanager
    def _bounded(self, conn: Connection) -> Iterator[None]:
        """Run the block under the watchdog; a cut call is the store's error."""
        with self._watchdog.deadline(conn.pgconn.socket, self._timeout_s) as deadline:
            try:
                yield
            except psycopg.OperationalError as exc:
                if deadline.fired:
                    self._away()
                    raise self._error(
                        f"PostgreSQL did not answer within {self._timeout_s} s"
                    ) from exc
                raise

    def search_path(self, conn: Connection) -> None:
        conn.execute(sql.SQL("SET LOCAL search_path TO {}").format(sql.Identifier(self._schema)))

    def query(self, statement: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        with self._turn():
            for attempt in (1, 2):
                conn = self._live()
                try:
                    with self._bounded(conn), conn.transaction():
                        self.search_path(conn)
                        return list(conn.execute(self._sql(statement), tuple(params)).fetchall())
                except psycopg.OperationalError as exc:
                    # The server dropped the connection (restart, failover): a read is safe
                    # to repeat once on a fresh one, so the caller never sees the outage
                    # it missed.
                    if attempt == 2 or not conn.broken:
                        raise self._error(str(exc)) from exc
                except psycopg.Error as exc:
                    raise self._error(str(exc)) from exc
            raise AssertionError("unreachable")  # pragma: no cover

    def write(self, statements: Iterable[tuple[str, Sequence[Any]]]) -> list[int]:
        """Run the statements in one transaction; the rows each changed."""
        with self._turn():
            conn = self._live()
            try:
                try:
                    # A write is never repeated (its commit may have happened): find a
                    # dropped connection before the transaction starts, not in it.
                    with self._bounded(conn):
                        conn.execute("SELECT 1")
                except psycopg.OperationalError:
                    if not conn.broken:
                        raise
                    conn = self._live()
                with self._bounded(conn), conn.transaction():
                    self.search_path(conn)
                    counts = []
                    for statement, params in statements:
                        cursor = conn.execute(self._sql(statement), tuple(params))
                        counts.append(max(0, cursor.rowcount))
                    return counts
            except psycopg.Error as exc:
                raise self._error(str(exc)) from exc

    def close(self) -> None:
        with self._lock:
            self._closed = True
            self._conn.close()
        self._watchdog.close()
