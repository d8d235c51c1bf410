"""Rate limits, query budgets and cool-downs in the workers' shared table (shared_table).

The same protocols and the same arithmetic as the in-process stores (`RateLimiter`,
`Budgets`, `Admits`), on records every worker of the box reads and writes in place:
stage 5 and the per-client limits then cost no round trip to the supervisor. Each call
holds the table's lock from its first read to its last write, so an all-or-nothing
charge is all or nothing across workers, and `TableAdmission` holds it once for its
three checks, which run back to back with no other worker's in between.

The detector's sketch and its strike windows stay with the supervisor's state server
(`add` and `strike` are calls to it, made only when a request's own feature values are
inspected or a signal fires); a strike's cool-down deadline is copied into the table,
where every worker's admission reads it.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from numpy.typing import NDArray

from security.inspection.admission import Admission, Admitted, SubjectRate
from security.inspection.budget import Charge, Spend, window
from security.inspection.ratelimit import Take, refill
from security.inspection.shared_table import Found, SharedTable
from security.inspection.state import DetectorState


class TableRateLimiter:
    def __init__(self, table: SharedTable) -> None:
        self.table = table

    async def take(
        self, key: str, *, rate: float, burst: int, now: float, cost: float = 1.0
    ) -> Take:
        with self.table:
            found = self.table.find("rl:" + key)
            tokens, last = found[2] or (float(burst), now)
            tokens = refill(tokens, last, now, rate, burst)
            if tokens >= cost:
                self.table.store(found, tokens - cost, now, now)
                return Take(True, 0.0)
            self.table.store(found, tokens, now, now)
            return Take(False, (cost - tokens) / rate)

    async def take_all(self, keys: list[str], *, rate: float, burst: int, now: float) -> Take:
        levels: list[tuple[Found, float]] = []
        wait = 0.0
        with self.table:
            for key in keys:
                found = self.table.find("rl:" + key)
                tokens, last = found[2] or (float(burst), now)
                tokens = refill(tokens, last, now, rate, burst)
                if tokens < 1.0:
                    wait = max(wait, (1.0 - tokens) / rate)
                levels.append((found, tokens))
            if wait:
                return Take(False, wait)
            for found, tokens in levels:
                self.table.store(found, tokens - 1.0, now, now)
        return Take(True, 0.0)


class TableBudgets:
    def __init__(self, table: SharedTable) -> None:
        self.table = table

    async def spend(self, key: str, rows: int, *, limit: int, window_s: int, now: float) -> Spend:
        with self.table:
            index, remaining = window(now, window_s)
            found = self.table.find(f"qb:{key}@{window_s}")
            used = self._used(found, index)
            allowed = used + rows <= limit
            if allowed:
                used += rows
                self.table.store(found, index, used, now)
            return Spend(allowed, used, 0.0 if allowed else remaining)

    async def spend_all(self, charges: list[Charge], *, now: float) -> Spend:
        states: list[tuple[Found, int, int]] = []
        wait = 0.0
        with self.table:
            for charge in charges:
                index, remaining = window(now, charge.window_s)
                found = self.table.find(f"qb:{charge.key}@{charge.window_s}")
                used = self._used(found, index) + charge.rows
                if used > charge.limit:
                    wait = max(wait, remaining)
                states.append((found, index, used))
            if wait:
                return Spend(False, 0, wait)
            for found, index, used in states:
                self.table.store(found, index, used, now)
        return Spend(True, max((used for _, _, used in states), default=0), 0.0)

    @staticmethod
    def _used(found: Found, index: int) -> int:
        values = found[2]
        return int(values[1]) if values is not None and values[0] == index else 0


class TableDetectorState:
    """The detector's state: cool-downs in the table, the rest at the state server."""

    def __init__(self, remote: DetectorState, table: SharedTable) -> None:
        self.remote = remote
        self.table = table

    async def add(
        self,
        cells: NDArray[np.int64],
        *,
        now: float,
        tau: float,
        events: NDArray[Any] | None = None,
    ) -> NDArray[np.float64]:
        return await self.remote.add(cells, now=now, tau=tau, events=events)

    async def cooldown(self, key: str, *, now: float) -> float:
        with self.table:
            values = self.table.find("cd:" + key)[2]
        return values[0] if values is not None else 0.0

    async def strike(
        self, key: str, *, now: float, window_s: int, after: int, cooldown_s: int, member: str
    ) -> tuple[int, float]:
        count, until = await self.remote.strike(
            key, now=now, window_s=window_s, after=after, cooldown_s=cooldown_s, member=member
        )
        with self.table:
            found = self.table.find("cd:" + key)
            until = max(until, found[2][0] if found[2] is not None else 0.0)
            if until > 0.0:
                # Touched "at" its deadline: a running cool-down is the last record evicted.
                self.table.store(found, until, 0.0, until)
        return count, until

    async def aclose(self) -> None:
        await self.remote.aclose()


class TableAdmission(Admission):
    """`Admission` over the table, its three checks under one hold of the table's lock.

    They are the table stores' own calls, which take the lock again (it only counts) and
    never suspend: nothing else runs on this loop, or in another worker, in between."""

    def __init__(
        self, limiter: TableRateLimiter, budgets: TableBudgets, state: TableDetectorState | None
    ) -> None:
        super().__init__(limiter, budgets, state)
        self.table = limiter.table

    async def admit(
        self,
        *,
        subject_rate: SubjectRate | None,
        charges: list[Charge],
        cooldown_key: str | None,
        now: float,
    ) -> Admitted:
        with self.table:
            return await super().admit(
                subject_rate=subject_rate, charges=charges, cooldown_key=cooldown_key, now=now
            )
