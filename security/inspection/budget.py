"""Per-client query budgets against model extraction: at most N rows per fixed window.

A row is one (user, item) pair scored: an OIP request of 100 rows spends 100,
like 100 single queries, so batching does not stretch a budget. A refused
request spends nothing. Fixed windows (aligned to the epoch) keep the Redis
state to one counter per client and window.
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


class Budgets(Protocol):
    async def spend(
        self, key: str, rows: int, *, limit: int, window_s: int, now: float
    ) -> Spend: ...


def _window(now: float, window_s: int) -> tuple[int, float]:
    index = int(now // window_s)
    return index, (index + 1) * window_s - now


class MemoryBudgets:
    def __init__(self, *, max_keys: int = 100_000) -> None:
        self._used: OrderedDict[str, tuple[int, int]] = OrderedDict()
        self._max = max_keys

    async def spend(self, key: str, rows: int, *, limit: int, window_s: int, now: float) -> Spend:
        index, remaining = _window(now, window_s)
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


class RedisBudgets:
    def __init__(self, client: Any, *, prefix: str) -> None:
        self._prefix = prefix
        self._script = client.register_script(_SPEND)

    async def spend(self, key: str, rows: int, *, limit: int, window_s: int, now: float) -> Spend:
        index, remaining = _window(now, window_s)
        try:
            allowed, used = await self._script(
                keys=[f"{self._prefix}qb:{key}:{index}"], args=[rows, limit, window_s + 60]
            )
        except RedisError as exc:
            raise StateUnavailableError(f"redis: {exc}") from exc
        return Spend(bool(allowed), int(used), 0.0 if allowed else remaining)
