"""Group commit: batching under load, and fail-closed when the store breaks."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from pathlib import Path

import pytest

from audit.appender import Appender, AppendFailed
from audit.merkle import leaf_hash
from audit.sqlite_store import SqliteAuditStore
from audit.store import PendingRecord


def pending(i: int) -> PendingRecord:
    payload = f'{{"n":{i}}}'.encode()
    return PendingRecord(payload, leaf_hash(payload), f"r{i}", i)


@pytest.mark.asyncio
async def test_concurrent_appends_share_durable_writes(tmp_path: Path) -> None:
    store = SqliteAuditStore(tmp_path / "a.db")
    appender = Appender(store)
    try:
        indices = await asyncio.gather(*(appender.append(pending(i)) for i in range(300)))
        assert sorted(indices) == list(range(300))
        assert store.size() == 300
        # Many waiters, few transactions: that is the point of group commit.
        assert appender.batches < 100
    finally:
        await appender.close()
        store.close()


class BrokenStore(SqliteAuditStore):
    """A real store whose append hits a bug (not a StoreError)."""

    def append_batch(self, records: Sequence[PendingRecord]) -> int:
        raise RuntimeError("bug in a backend")


@pytest.mark.asyncio
async def test_a_store_bug_fails_the_batch_closed_and_the_writer_survives(tmp_path: Path) -> None:
    store = BrokenStore(tmp_path / "b.db")
    appender = Appender(store)
    try:
        for attempt in range(2):  # the writer task must survive the first failure
            with pytest.raises(AppendFailed, match="bug in a backend"):
                await asyncio.wait_for(appender.append(pending(attempt)), 5)
    finally:
        await appender.close()
        store.close()
