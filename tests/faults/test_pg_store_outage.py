"""The PostgreSQL audit store against its own server stopped, resumed and restarted: every
call ends within its bound, calls during an outage fail at once, and the store comes
back by itself (no restart), with the group-commit writer on top of it."""

from __future__ import annotations

import asyncio
import threading
import time
import uuid
from collections.abc import Iterator
from typing import TypeVar

import psycopg
import pytest
from psycopg import sql

from audit.appender import Appender, AppendFailed
from audit.merkle import leaf_hash
from audit.postgres_store import PostgresAuditStore
from audit.store import AppendInDoubt, PendingRecord, StoreError
from tests.faults.servers import OwnPostgres
from tests.faults.timing import eventually, timed

BOUND_S = 0.5
# What a call may take past its bound: the watchdog's wake-up and the error's way back.
SLACK_S = 0.4

T = TypeVar("T")


def pending(n: int) -> PendingRecord:
    payload = f'{{"n":{n},"id":"{uuid.uuid4().hex}"}}'.encode()
    return PendingRecord(payload, leaf_hash(payload), f"req-{n}-{uuid.uuid4().hex[:8]}", n)


@pytest.fixture
def store(own_postgres: OwnPostgres) -> Iterator[PostgresAuditStore]:
    schema = f"outage_{uuid.uuid4().hex[:12]}"
    opened = PostgresAuditStore(own_postgres.dsn, schema=schema, timeout_s=BOUND_S)
    try:
        yield opened
    finally:
        own_postgres.thaw()  # whatever the test did
        opened.close()


def test_a_stopped_database_fails_each_call_in_bound_then_at_once_and_comes_back(
    store: PostgresAuditStore, own_postgres: OwnPostgres
) -> None:
    assert store.append_batch([pending(0), pending(1)]) == 0
    own_postgres.freeze()
    # The first call waits for its bound: nobody knew the server was gone.
    result, took = timed(store.size, StoreError)
    assert isinstance(result, StoreError)
    assert "did not answer" in str(result)
    assert took < BOUND_S + SLACK_S
    # Now the outage is known: reads, appends and the settle check fail without waiting.
    for call in (store.size, lambda: store.append_batch([pending(2)]), store.checkpoints):
        result, took = timed(call, StoreError)
        assert isinstance(result, StoreError)
        assert took < 0.1
    time.sleep(1.0)  # the reviver keeps trying meanwhile
    own_postgres.thaw()
    index, took = eventually(lambda: store.append_batch([pending(2)]), 5, StoreError)
    assert took < 2.0, f"back after {took:.2f} s"
    assert index == 2
    # And it stays back: the connections that lived through the outage were replaced.
    for n in range(3, 13):
        assert store.append_batch([pending(n)]) == n
        assert store.size() == n + 1


def test_a_restarted_database_is_reconnected_without_a_restart(
    store: PostgresAuditStore, own_postgres: OwnPostgres
) -> None:
    assert store.append_batch([pending(0)]) == 0
    own_postgres.stop()
    for call in (store.size, lambda: store.append_batch([pending(1)])):
        result, took = timed(call, StoreError)
        assert isinstance(result, StoreError)
        assert took < BOUND_S + SLACK_S  # refused connections fail fast
    own_postgres.start()
    back = time.monotonic()
    _, took = eventually(store.size, 5, StoreError)
    assert took < 2.0
    # Every call after the first success works: no connection is found dead later.
    assert [store.append_batch([pending(n)]) for n in range(1, 6)] == [1, 2, 3, 4, 5]
    assert store.size() == 6
    assert time.monotonic() - back < 3.0


@pytest.mark.asyncio
async def test_the_writer_fails_waiters_within_the_bound_and_writes_again_after(
    store: PostgresAuditStore, own_postgres: OwnPostgres
) -> None:
    appender = Appender(store)
    try:
        assert await appender.append(pending(0)) == 0
        own_postgres.freeze()
        started = time.monotonic()
        with pytest.raises(AppendFailed, match="did not answer"):
            await asyncio.wait_for(appender.append(pending(1)), 10)
        assert time.monotonic() - started < BOUND_S + SLACK_S
        # Later waiters, during the outage: refused at once, none hangs.
        started = time.monotonic()
        results = await asyncio.gather(
            *(appender.append(pending(n)) for n in range(2, 6)), return_exceptions=True
        )
        assert all(isinstance(r, AppendFailed) for r in results)
        assert time.monotonic() - started < 0.2
        own_postgres.thaw()
        deadline = time.monotonic() + 5
        while True:
            try:
                index = await appender.append(pending(6))
                break
            except AppendFailed:
                assert time.monotonic() < deadline, "the writer never wrote again"
                await asyncio.sleep(0.01)
        assert index == 1  # nothing of the refused batches was written
        assert await appender.append(pending(7)) == 2
    finally:
        await appender.close()


def _slow_commit(dsn: str, schema: str, seconds: float) -> None:
    """A deferred trigger that sleeps at COMMIT: the window in which to stop the server."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        ident = sql.Identifier(schema)
        conn.execute(
            sql.SQL(
                "CREATE FUNCTION {s}.slow_commit() RETURNS trigger LANGUAGE plpgsql AS "
                "$$ BEGIN PERFORM pg_sleep({t}); RETURN NULL; END $$"
            ).format(s=ident, t=sql.Literal(seconds))
        )
        conn.execute(
            sql.SQL(
                "CREATE CONSTRAINT TRIGGER slow_commit AFTER UPDATE ON {s}.audit_head "
                "DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION {s}.slow_commit()"
            ).format(s=ident)
        )


def test_a_commit_cut_short_is_reported_in_doubt_and_settled_after(
    store: PostgresAuditStore, own_postgres: OwnPostgres
) -> None:
    """The server stops while it runs the COMMIT: the batch may or may not be durable.
    The store says so (AppendInDoubt, not a plain failure), and once the server is back
    `settled_leaf_hash` says which, after the stuck transaction has ended."""
    assert store.append_batch([pending(0)]) == 0
    _slow_commit(own_postgres.dsn, store.schema, 0.3)
    frozen = threading.Timer(0.15, own_postgres.freeze)
    frozen.start()
    batch = [pending(1), pending(2)]
    with pytest.raises(AppendInDoubt) as caught:
        store.append_batch(batch)
    frozen.join()
    assert caught.value.first_index == 1
    time.sleep(0.2)
    own_postgres.thaw()
    settled, took = eventually(lambda: store.settled_leaf_hash(1), 5, StoreError)
    assert took < 2.0
    durable = settled == batch[0].leaf_hash
    # Either answer is possible here (the server's own statement timeout, pending while
    # it was stopped, may cancel the COMMIT when it resumes); the store must tell which.
    assert store.size() == (3 if durable else 1)
    assert settled in (None, batch[0].leaf_hash)
