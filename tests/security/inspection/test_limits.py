"""Token buckets and query budgets, in process, in the workers' shared table and in Redis,
against the same expectations."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest
import pytest_asyncio
import redis.asyncio as redis_asyncio

from security.inspection.budget import Budgets, Charge, MemoryBudgets, RedisBudgets
from security.inspection.ratelimit import MemoryRateLimiter, RateLimiter, RedisRateLimiter
from security.inspection.shared_table import SharedTable
from security.inspection.table_state import TableBudgets, TableRateLimiter

T0 = 1_800_000_000.0
pytestmark = pytest.mark.asyncio


@pytest_asyncio.fixture(params=["memory", "table", "redis"])
async def backend(request: pytest.FixtureRequest) -> AsyncIterator[tuple[RateLimiter, Budgets]]:
    if request.param == "memory":
        yield MemoryRateLimiter(max_keys=100), MemoryBudgets(max_keys=100)
        return
    if request.param == "table":
        table = SharedTable.create(slots=1024)
        try:
            yield TableRateLimiter(table), TableBudgets(table)
        finally:
            table.close()
        return
    url: str = request.getfixturevalue("redis_url")
    prefix: str = request.getfixturevalue("redis_prefix")
    client: Any = redis_asyncio.Redis.from_url(url)
    try:
        yield RedisRateLimiter(client, prefix=prefix), RedisBudgets(client, prefix=prefix)
    finally:
        await client.aclose()


async def test_token_bucket_burst_refill_and_retry_after(
    backend: tuple[RateLimiter, Budgets],
) -> None:
    limiter, _ = backend
    takes = [await limiter.take("a", rate=2.0, burst=3, now=T0) for _ in range(4)]
    assert [t.allowed for t in takes] == [True, True, True, False]
    assert takes[3].retry_after_s == pytest.approx(0.5)
    assert (await limiter.take("b", rate=2.0, burst=3, now=T0)).allowed  # per key
    assert not (await limiter.take("a", rate=2.0, burst=3, now=T0 + 0.25)).allowed
    assert (await limiter.take("a", rate=2.0, burst=3, now=T0 + 0.5)).allowed
    # Refill never exceeds the burst.
    later = [await limiter.take("a", rate=2.0, burst=3, now=T0 + 100) for _ in range(4)]
    assert [t.allowed for t in later] == [True, True, True, False]


async def test_budget_counts_rows_per_window(backend: tuple[RateLimiter, Budgets]) -> None:
    _, budgets = backend
    first = await budgets.spend("a", 7, limit=10, window_s=60, now=T0 + 15)
    assert first.allowed
    assert first.used == 7
    refused = await budgets.spend("a", 4, limit=10, window_s=60, now=T0 + 16)
    assert not refused.allowed
    assert refused.retry_after_s == pytest.approx(60 - ((T0 + 16) % 60))
    assert (await budgets.spend("a", 3, limit=10, window_s=60, now=T0 + 17)).allowed
    assert (await budgets.spend("b", 10, limit=10, window_s=60, now=T0 + 17)).allowed
    next_window = T0 - (T0 % 60) + 60
    assert (await budgets.spend("a", 10, limit=10, window_s=60, now=next_window)).allowed


async def test_budgets_charge_every_scope_or_none(backend: tuple[RateLimiter, Budgets]) -> None:
    _, budgets = backend
    hourly, daily = 3600, 86_400
    start = T0 - (T0 % daily)
    charges = [
        Charge("c:a", 60, 100, hourly),
        Charge("c:a", 60, 150, daily),
        Charge("s:a/u1", 60, 80, hourly),
    ]
    assert (await budgets.spend_all(charges, now=start)).allowed
    # The subject's budget refuses: nothing is spent anywhere (the client's hour still
    # has 40 rows, though 60 more would have fitted its day).
    refused = await budgets.spend_all(charges, now=start + 10)
    assert not refused.allowed
    assert refused.retry_after_s == pytest.approx(3590)
    other = [
        Charge("c:a", 40, 100, hourly),
        Charge("c:a", 40, 150, daily),
        Charge("s:a/u2", 40, 80, hourly),
    ]
    assert (await budgets.spend_all(other, now=start + 20)).allowed
    # Next hour: the hourly budgets are fresh, the day's is not (100 of 150 spent).
    later = [Charge("c:a", 60, 100, hourly), Charge("c:a", 60, 150, daily)]
    over = await budgets.spend_all(later, now=start + hourly)
    assert not over.allowed
    assert over.retry_after_s == pytest.approx(daily - hourly)
    assert (await budgets.spend_all(later[:1], now=start + hourly)).allowed


async def test_take_all_is_all_or_nothing(backend: tuple[RateLimiter, Budgets]) -> None:
    limiter, _ = backend
    assert (await limiter.take_all(["x", "y"], rate=1.0, burst=1, now=T0)).allowed
    assert (await limiter.take_all(["z"], rate=1.0, burst=1, now=T0)).allowed
    refused = await limiter.take_all(["z", "w"], rate=1.0, burst=1, now=T0 + 0.5)
    assert not refused.allowed
    assert refused.retry_after_s == pytest.approx(0.5)
    # "w" was not charged by the refused request.
    assert (await limiter.take_all(["w"], rate=1.0, burst=1, now=T0 + 0.5)).allowed
