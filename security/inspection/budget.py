"""Query budgets against model extraction: at most N rows per fixed window, per scope.

A row is one (user, item) pair scored: an OIP request of 100 rows spends 100,
like 100 single queries, so batching does not stretch a budget. A request is
charged to every budget that applies (the client's, each of its data subjects',
the tenant's; hourly and daily) all at once or not at all: a refused request
spends nothing anywhere. Fixed windows (aligned to the epoch) keep the Redis
state to one counter per key and window.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Protocol

from redis.exceptions import RedisError

from security.inspection.state import StateUnavailableError


@dataclass(frozen=True, slots=True)
class Spend:
    allowed: bool
    used: int
    retry_after_s: float  # until the window ends; 0 when allowed


@dataclass(frozen=True, slots=True)
class Charge:
    """`rows` against the budget `key` of `limit` rows per `window_s`."""

    key: str
    rows: int
    limit: int
    window_s: int


class Budgets(Protocol):
    async def spend(
        self, key: str, rows: int, *, limit: int, window_s: int, now: float
    ) -> Spend: ...

    async def spend_all(self, charges: list[Charge], *, now: float) -> Spend:
        """Every charge, or none (then `retry_after_s` is the longest wait of those over)."""
        ...


def window(now: float, window_s: int) -> tuple[int, float]:
    """The fixed window `now` falls in, and the seconds left in it."""
    index = int(now // window_s)
    return index, (index + 1) * window_s - now


class MemoryBudgets:
    def __init__(self, *, max_keys: int = 100_000) -> None:
        self._used: OrderedDict[str, tuple[int, int]] = OrderedDict()
        self._max = max_keys

    async def spend(self, key: str, rows: int, *, limit: int, window_s: int, now: float) -> Spend:
        index, remaining = window(now, window_s)
        seen, used = self._used.pop(key, (index, 0))
        if seen != index:
            used = 0
        allowed = used + rows <= limit
        if allowed:
            used += rows
        self._used[key] = (index, used)
        while len(self._used) > self._max:
            # Forgetting a counter forgives a client: the bound is generous on purpose.
            self._used.popitem(last=False)
        return Spend(allowed, used, 0.0 if allowed else remaining)

    async def spend_all(self, charges: list[Charge], *, now: float) -> Spend:
        states = []
        wait = 0.0
        for charge in charges:
            index, remaining = window(now, charge.window_s)
            name = f"{charge.key}@{charge.window_s}"
            seen, used = self._used.get(name, (index, 0))
            used = used if seen == index else 0
            if used + charge.rows > charge.limit:
                wait = max(wait, remaining)
            states.append((name, index, used + charge.rows))
        if wait:
            return Spend(False, 0, wait)
        for name, index, used in states:
            self._used.pop(name, None)
            self._used[name] = (index, used)
        while len(self._used) > self._max:
            self._used.popitem(last=False)
        return Spend(True, max((used for _, _, used in states), default=0), 0.0)


_SPEND = """
local used = tonumber(redis.call('GET', KEYS[1]) or '0')
local rows = tonumber(ARGV[1])
if used + rows > tonumber(ARGV[2]) then
  return {0, used}
end
used = redis.call('INCRBY', KEYS[1], rows)
redis.call('EXPIRE', KEYS[1], ARGV[3])
return {1, used}
"""


# KEYS: one counter per charge. ARGV: rows, limit, ttl per charge, in order.
_SPEND_ALL = """
local over = {}
for i = 1, #KEYS do
  local used = tonumber(redis.call('GET', KEYS[i]) or '0')
  if used + tonumber(ARGV[3 * i - 2]) > tonumber(ARGV[3 * i - 1]) then
    over[#over + 1] = i
  end
end
if #over > 0 then
  return {0, over}
end
for i = 1, #KEYS do
  redis.call('INCRBY', KEYS[i], ARGV[3 * i - 2])
  redis.call('EXPIRE', KEYS[i], ARGV[3 * i])
end
return {1, {}}
"""


class RedisBudgets:
    def __init__(self, client: Any, *, prefix: str) -> None:
        self._prefix = prefix
        self._script = client.register_script(_SPEND)
        self._all = client.register_script(_SPEND_ALL)

    async def spend_all(self, charges: list[Charge], *, now: float) -> Spend:
        if not charges:
            return Spend(True, 0, 0.0)
        keys: list[str] = []
        args: list[int] = []
        remaining: list[float] = []
        for charge in charges:
            index, left = window(now, charge.window_s)
            keys.append(f"{self._prefix}qb:{charge.key}@{charge.window_s}:{index}")
            args += [charge.rows, charge.limit, charge.window_s + 60]
            remaining.append(left)
        try:
            allowed, over = await self._all(keys=keys, args=args)
        except RedisError as exc:
            raise StateUnavailableError(f"redis: {exc}") from exc
        if allowed:
            return Spend(True, 0, 0.0)
        return Spend(False, 0, max(remaining[int(i) - 1] for i in over))

    async def spend(self, key: str, rows: int, *, limit: int, window_s: int, now: float) -> Spend:
        index, remaining = window(now, window_s)
        try:
            allowed, used = await self._script(
                keys=[f"{self._prefix}qb:{key}:{index}"], args=[rows, limit, window_s + 60]
            )
        except RedisError as exc:
            raise StateUnavailableError(f"redis: {exc}") from exc
        return Spend(bool(allowed), int(used), 0.0 if allowed else remaining)
