"""The workers' shared table: one memfd, mapped by real separate processes, as the
supervisor hands it to its workers (pass_fds)."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from collections.abc import Iterator

import pytest

from security.inspection.admission import SubjectRate
from security.inspection.budget import Charge
from security.inspection.shared_table import LOCK_TIMEOUT_S, SharedTable
from security.inspection.state import MemoryState, StateUnavailableError
from security.inspection.table_state import (
    TableAdmission,
    TableBudgets,
    TableDetectorState,
    TableRateLimiter,
)

T0 = 1_800_000_000.0

# A second process: takes `n` tokens from bucket "k" of the table on descriptor `fd`,
# prints how many it got.
TAKER = """
import asyncio, sys
from security.inspection.shared_table import SharedTable
from security.inspection.table_state import TableRateLimiter
fd, n, now = int(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3])
limiter = TableRateLimiter(SharedTable(fd))
async def main():
    got = 0
    for _ in range(n):
        got += (await limiter.take("k", rate=0.001, burst=50, now=now)).allowed
    print(got)
asyncio.run(main())
"""

# A second process: holds the table's lock until killed.
HOLDER = """
import sys, time
from security.inspection.shared_table import SharedTable
table = SharedTable(int(sys.argv[1]))
table.__enter__()
print("held", flush=True)
time.sleep(600)
"""


@pytest.fixture
def table() -> Iterator[SharedTable]:
    found = SharedTable.create(slots=1024)
    try:
        yield found
    finally:
        found.close()


def python(code: str, table: SharedTable, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-c", code, str(table.fd), *args],
        pass_fds=(table.fd,),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def test_processes_take_from_one_bucket(table: SharedTable) -> None:
    """Three processes take 30 tokens each from a bucket of 50 at once: exactly 50 go."""
    takers = [python(TAKER, table, "30", repr(T0)) for _ in range(3)]
    got = [int(taker.communicate(timeout=60)[0]) for taker in takers]
    assert sum(got) == 50
    mine = asyncio.run(TableRateLimiter(table).take("k", rate=0.001, burst=50, now=T0))
    assert not mine.allowed
    assert mine.retry_after_s == pytest.approx(1000.0)


def test_a_lock_not_granted_in_time_fails_closed_and_a_dead_holder_frees_it(
    table: SharedTable,
) -> None:
    holder = python(HOLDER, table)
    try:
        assert holder.stdout is not None
        assert holder.stdout.readline().strip() == "held"
        limiter = TableRateLimiter(table)
        started = time.monotonic()
        with pytest.raises(StateUnavailableError, match="lock not granted in time"):
            asyncio.run(limiter.take("k", rate=1.0, burst=1, now=T0))
        assert LOCK_TIMEOUT_S <= time.monotonic() - started < LOCK_TIMEOUT_S + 1.0
    finally:
        holder.kill()
        holder.communicate(timeout=30)
    # The kernel released the dead holder's lock: the table answers again.
    assert asyncio.run(limiter.take("k", rate=1.0, burst=1, now=T0)).allowed


def test_the_lock_taken_again_by_its_holder_is_released_only_by_the_last_exit(
    table: SharedTable,
) -> None:
    with table:
        with table:
            pass
        # Still held: another process cannot take a token until the outer hold ends.
        blocked = python(TAKER, table, "1", repr(T0))
        _, err = blocked.communicate(timeout=60)
        assert blocked.returncode != 0
        assert "lock not granted in time" in err
    after = python(TAKER, table, "1", repr(T0))
    assert after.communicate(timeout=60)[0].strip() == "1"


def test_a_full_window_forgets_the_record_touched_longest_ago_never_a_cooldown() -> None:
    """16 slots, one probe window: a 17th key evicts the stalest; a running cool-down
    (touched at its deadline) outlives every bucket."""
    table = SharedTable.create(slots=16)
    try:
        limiter = TableRateLimiter(table)
        state = TableDetectorState(MemoryState(), table)

        async def scenario() -> None:
            for _ in range(2):
                await state.strike(
                    "attacker", now=T0, window_s=600, after=2, cooldown_s=60, member="m"
                )
            # Bucket "k0" empty; then fill the rest of the window with later buckets.
            assert (await limiter.take("k0", rate=0.01, burst=1, now=T0)).allowed
            assert not (await limiter.take("k0", rate=0.01, burst=1, now=T0)).allowed
            for n in range(1, 15):
                await limiter.take(f"k{n}", rate=0.01, burst=1, now=T0 + n)
            await limiter.take("k15", rate=0.01, burst=1, now=T0 + 15)  # evicts k0
            assert (await limiter.take("k0", rate=0.01, burst=1, now=T0 + 16)).allowed
            assert await state.cooldown("attacker", now=T0 + 16) == T0 + 60

        asyncio.run(scenario())
    finally:
        table.close()


def test_admission_checks_in_order_under_one_lock(table: SharedTable) -> None:
    """As `Admission`: the subject's bucket, then every budget (all or nothing), then the
    cool-down; a refusal spends nothing after it."""
    limiter, budgets = TableRateLimiter(table), TableBudgets(table)
    state = TableDetectorState(MemoryState(), table)
    admission = TableAdmission(limiter, budgets, state)
    rate = SubjectRate(("sr:u1",), rps=1.0, burst=2)
    charges = [Charge("c:x", 10, 25, 3600)]

    async def scenario() -> None:
        now = T0 - (T0 % 3600)
        for _ in range(2):
            admitted = await admission.admit(
                subject_rate=rate, charges=charges, cooldown_key="x", now=now
            )
            assert (admitted.refused, admitted.cooldown_until) == (None, 0.0)
        third = await admission.admit(subject_rate=rate, charges=charges, cooldown_key="x", now=now)
        assert third.refused == "subject_rate"
        assert third.retry_after_s == pytest.approx(1.0)
        # 20 of 25 rows spent (the refused request spent none): 10 more are over.
        fourth = await admission.admit(
            subject_rate=None, charges=charges, cooldown_key="x", now=now
        )
        assert fourth.refused == "budget"
        assert fourth.retry_after_s == pytest.approx(3600)
        assert (await budgets.spend("c:x", 5, limit=25, window_s=3600, now=now)).used == 25
        for n in range(2):
            await state.strike("x", now=now, window_s=600, after=2, cooldown_s=30, member=f"{n}")
        cooled = await admission.admit(subject_rate=None, charges=[], cooldown_key="x", now=now)
        assert (cooled.refused, cooled.cooldown_until) == (None, now + 30)

    asyncio.run(scenario())


@pytest.mark.parametrize(
    ("size", "refusal"), [(1000, "not a power of two"), (17 * 32, "without its salt")]
)
def test_a_descriptor_that_is_not_a_table_is_refused(
    tmp_path: os.PathLike[str], size: int, refusal: str
) -> None:
    path = os.path.join(tmp_path, "odd")
    with open(path, "wb") as handle:
        handle.write(b"\0" * size)
    fd = os.open(path, os.O_RDWR)
    try:
        with pytest.raises(ValueError, match=refusal):
            SharedTable(fd)
    finally:
        os.close(fd)


def test_each_table_hashes_keys_with_its_own_salt() -> None:
    """Where a key lands depends on the table's random salt: a client cannot pick names
    that crowd one probe window of every box."""
    tables = [SharedTable.create(slots=1024) for _ in range(2)]
    try:
        places = []
        for table in tables:
            with table:
                places.append([table.find(f"rl:c:client{n}")[0] for n in range(8)])
        assert places[0] != places[1]
    finally:
        for table in tables:
            table.close()
