"""Detector state: in process (bounded) or in Redis (shared by replicas).

Both stores answer the same calls:

- `add(cells, ...)`: count events in the decayed count-min sketch that holds every
  history (client, tenant, subject: see `sketch`), and read the counts back, in one
  atomic step (a Lua script in Redis), so concurrent requests all see each other;
- `cooldown(key, now)`: the key's cool-down deadline;
- `strike(key, ...)`: count one detection; start a cool-down after `after`
  detections within the window.

Memory in process is fixed: the sketch (4 MB) plus, for strikes and cool-downs, at
most `max_clients` keys (least recently seen evicted first; keys idle for a whole
window and not cooling down are dropped as they are met).
"""

from __future__ import annotations

from collections import OrderedDict, deque
from typing import Any, Protocol

import numpy as np
from numpy.typing import NDArray
from redis.exceptions import RedisError

from gateway.telemetry import span
from security.inspection.sketch import (
    MemorySketch,
    RedisSketch,
    StateUnavailableError,
)

__all__ = ["DetectorState", "MemoryState", "RedisState", "StateUnavailableError"]


class DetectorState(Protocol):
    async def add(
        self,
        cells: NDArray[np.int64],
        *,
        now: float,
        tau: float,
        events: NDArray[Any] | None = None,
    ) -> NDArray[np.float64]:
        """Count events in the listed cells, then each cell's decayed count (see `sketch`)."""
        ...

    async def cooldown(self, key: str, *, now: float) -> float:
        """The key's cool-down deadline (0 when none)."""
        ...

    async def strike(
        self, key: str, *, now: float, window_s: int, after: int, cooldown_s: int, member: str
    ) -> tuple[int, float]:
        """(detections within the window including this one, cool-down deadline)."""
        ...

    async def aclose(self) -> None: ...


class _Strikes:
    __slots__ = ("cooldown_until", "last_seen", "times")

    def __init__(self) -> None:
        self.times: deque[float] = deque()
        self.cooldown_until = 0.0
        self.last_seen = 0.0


class MemoryState:
    """In-process store: the default for one replica."""

    def __init__(self, *, max_clients: int = 10_000, sketch: MemorySketch | None = None) -> None:
        self._keys: OrderedDict[str, _Strikes] = OrderedDict()
        self._max = max_clients
        self.sketch = sketch if sketch is not None else MemorySketch()

    def __len__(self) -> int:
        return len(self._keys)

    async def add(
        self,
        cells: NDArray[np.int64],
        *,
        now: float,
        tau: float,
        events: NDArray[Any] | None = None,
    ) -> NDArray[np.float64]:
        return await self.sketch.add(cells, now=now, tau=tau, events=events)

    async def cooldown(self, key: str, *, now: float) -> float:
        found = self._keys.get(key)
        return found.cooldown_until if found is not None else 0.0

    async def strike(
        self, key: str, *, now: float, window_s: int, after: int, cooldown_s: int, member: str
    ) -> tuple[int, float]:
        entry = self._keys.pop(key, None) or _Strikes()
        # Drop keys idle for a whole window (and not cooling down) from the cold end.
        while self._keys:
            oldest = next(iter(self._keys.values()))
            if oldest.last_seen >= now - window_s or oldest.cooldown_until > now:
                break
            self._keys.popitem(last=False)
        while len(self._keys) >= self._max:
            self._keys.popitem(last=False)
        self._keys[key] = entry
        entry.last_seen = now
        times = entry.times
        times.append(now)
        while times and (times[0] < now - window_s or len(times) > after):
            times.popleft()
        if len(times) >= after and cooldown_s > 0:
            entry.cooldown_until = max(entry.cooldown_until, now + cooldown_s)
        return len(times), entry.cooldown_until

    async def aclose(self) -> None:
        return None


# KEYS: strikes zset, cool-down key. ARGV: now, window s, after, cool-down s, member.
_STRIKE = """
local now = tonumber(ARGV[1])
local window = tonumber(ARGV[2])
redis.call('ZADD', KEYS[1], now, ARGV[5])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', '(' .. tostring(now - window))
redis.call('ZREMRANGEBYRANK', KEYS[1], 0, -tonumber(ARGV[3]) - 1)
redis.call('EXPIRE', KEYS[1], window)
local n = redis.call('ZCARD', KEYS[1])
local cd = tonumber(redis.call('GET', KEYS[2]) or '0')
local cooldown = tonumber(ARGV[4])
if n >= tonumber(ARGV[3]) and cooldown > 0 and now + cooldown > cd then
  cd = now + cooldown
  redis.call('SET', KEYS[2], tostring(cd), 'EX', cooldown)
end
return {n, tostring(cd)}
"""


class RedisState:
    """Shared store for several replicas; every call is one atomic step."""

    def __init__(self, client: Any, *, prefix: str) -> None:
        self._redis = client
        self._prefix = prefix
        self._strike = client.register_script(_STRIKE)
        self.sketch = RedisSketch(client, prefix=prefix)

    def _keys(self, key: str, *kinds: str) -> list[str]:
        return [f"{self._prefix}insp:{kind}:{key}" for kind in kinds]

    async def add(
        self,
        cells: NDArray[np.int64],
        *,
        now: float,
        tau: float,
        events: NDArray[Any] | None = None,
    ) -> NDArray[np.float64]:
        return await self.sketch.add(cells, now=now, tau=tau, events=events)

    async def cooldown(self, key: str, *, now: float) -> float:
        try:
            with span("redis.cooldown"):
                value = await self._redis.get(self._keys(key, "cd")[0])
        except RedisError as exc:
            raise StateUnavailableError(f"redis: {exc}") from exc
        return float(value) if value is not None else 0.0

    async def strike(
        self, key: str, *, now: float, window_s: int, after: int, cooldown_s: int, member: str
    ) -> tuple[int, float]:
        try:
            with span("redis.strike"):
                n, cd = await self._strike(
                    keys=self._keys(key, "s", "cd"),
                    args=[repr(now), window_s, after, cooldown_s, member],
                )
        except RedisError as exc:
            raise StateUnavailableError(f"redis: {exc}") from exc
        return int(n), float(cd)

    async def aclose(self) -> None:
        await self._redis.aclose()
