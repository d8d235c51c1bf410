"""A record durable although its writer was told it failed is named in the log.

Two ways it happens: the COMMIT's answer is lost (the database hung or went away
mid-commit: `AppendInDoubt`), or the waiter gave up (its request timed out) while its
batch was being written. The writer settles the first once the store answers again,
and appends one `unacknowledged` record naming every such record. A waiter that gave
up before its batch began is not written at all.
"""

from __future__ import annotations

import asyncio
import threading
import time
import uuid
from collections.abc import Sequence
from pathlib import Path

import pytest

from audit.appender import KIND_UNACKNOWLEDGED, Appender, AppendFailed
from audit.merkle import leaf_hash
from audit.postgres_store import PostgresAuditStore
from audit.record import canonical, event_record, parse
from audit.sqlite_store import SqliteAuditStore
from audit.store import AppendInDoubt, AuditStore, PendingRecord
from tests.faults.servers import OwnPostgres
from tests.faults.test_pg_store_outage import _slow_commit


def pending(name: str) -> PendingRecord:
    payload = canonical(event_record("test", 0, name=name))
    return PendingRecord(payload, leaf_hash(payload), name, 0)


class LostAnswer(SqliteAuditStore):
    """A real store whose next COMMIT's answer is lost: durable or not, as asked."""

    durable: bool | None = None  # None: answer normally

    def append_batch(self, records: Sequence[PendingRecord]) -> int:
        if self.durable is None:
            return super().append_batch(records)
        durable, self.durable = self.durable, None
        first = self.size()
        if durable:
            super().append_batch(records)
        raise AppendInDoubt("connection lost during COMMIT", first_index=first)


def log_of(store: AuditStore) -> list[dict[str, object]]:
    return [parse(leaf.payload or b"") for leaf in store.iter_leaves()]


@pytest.mark.asyncio
@pytest.mark.parametrize("durable", [True, False])
async def test_a_lost_commit_answer_is_settled_and_stated(tmp_path: Path, durable: bool) -> None:
    store = LostAnswer(tmp_path / "audit.db")
    appender = Appender(store, clock=lambda: 1_700_000_000.0)
    try:
        store.durable = durable
        with pytest.raises(AppendFailed, match="during COMMIT"):
            await appender.append(pending("refused"))
        await appender.append(pending("next"))
        records = log_of(store)
        if durable:
            assert [r.get("name") for r in records] == ["refused", None, "next"]
            statement = records[1]
            assert statement["kind"] == KIND_UNACKNOWLEDGED
            assert (statement["indices"], statement["request_ids"]) == ([0], ["refused"])
            assert appender.corrections == 1
        else:
            assert [r.get("name") for r in records] == ["next"]
            assert appender.corrections == 0
    finally:
        await appender.close()
        store.close()


class Gate(SqliteAuditStore):
    """A real store whose appends wait for the test to open the gate (a slow write)."""

    def __init__(self, path: Path) -> None:
        super().__init__(path)
        self.entered = threading.Event()
        self.gate = threading.Event()

    def append_batch(self, records: Sequence[PendingRecord]) -> int:
        self.entered.set()
        self.gate.wait(10)
        return super().append_batch(records)


@pytest.mark.asyncio
async def test_a_waiter_that_gave_up_mid_write_is_stated_and_one_before_is_not_written(
    tmp_path: Path,
) -> None:
    store = Gate(tmp_path / "audit.db")
    appender = Appender(store)
    try:
        in_flight = asyncio.ensure_future(appender.append(pending("in-flight")))
        await asyncio.to_thread(store.entered.wait, 5)
        queued = asyncio.ensure_future(appender.append(pending("queued")))
        await asyncio.sleep(0.01)
        # Both requests time out: one while its batch is being written, one before.
        in_flight.cancel()
        queued.cancel()
        store.gate.set()
        await asyncio.sleep(0.05)
        assert await appender.append(pending("after")) == 2
        records = log_of(store)
        assert [r.get("name") for r in records] == ["in-flight", None, "after"]
        assert (records[1]["kind"], records[1]["request_ids"]) == (
            KIND_UNACKNOWLEDGED,
            ["in-flight"],
        )
    finally:
        store.gate.set()
        await appender.close()
        store.close()


@pytest.mark.asyncio
async def test_postgres_stopped_mid_commit_then_the_log_says_what_its_writers_were_told(
    own_postgres: OwnPostgres,
) -> None:
    store = PostgresAuditStore(
        own_postgres.dsn, schema=f"unack_{uuid.uuid4().hex[:12]}", timeout_s=0.5
    )
    appender = Appender(store)
    try:
        assert await appender.append(pending("before")) == 0
        _slow_commit(own_postgres.dsn, store.schema, 0.3)
        freezer = threading.Timer(0.15, own_postgres.freeze)
        freezer.start()
        with pytest.raises(AppendFailed, match="outcome unknown"):
            await appender.append(pending("cut"))
        freezer.join()
        own_postgres.thaw()
        deadline = time.monotonic() + 5
        while True:
            try:
                await appender.append(pending("after"))
                break
            except AppendFailed:
                assert time.monotonic() < deadline
                await asyncio.sleep(0.02)
        names = [r.get("name") for r in log_of(store)]
        if "cut" in names:  # the COMMIT went through after all: said so, before "after"
            assert names == ["before", "cut", None, "after"]
            statement = log_of(store)[2]
            assert (statement["kind"], statement["request_ids"]) == (KIND_UNACKNOWLEDGED, ["cut"])
        else:
            assert names == ["before", "after"]
    finally:
        own_postgres.thaw()
        await appender.close()
        store.close()
