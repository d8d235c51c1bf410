"""Per-client detector state: in process (bounded, expiring) or in Redis (shared by replicas).

Both stores answer the same two calls:

- `exchange(key, records, ...)`: the client's unexpired history and cool-down
  deadline, and append the new records, in one atomic step (a Lua script in
  Redis), so concurrent requests of one client all see each other;
- `strike(key, ...)`: count one detection; start a cool-down after `after`
  detections within the window.

Memory in process is bounded twice: at most `history` records per client (a
fixed ring of 29-byte records) and at most `max_clients` clients (least recently
seen evicted first; clients idle for a whole window are dropped as they are met).
10 000 clients with full 128-record histories take about 40 MB (see the tests).
"""

from __future__ import annotations

from collections import OrderedDict, deque
from typing import Any, Protocol

import numpy as np
from numpy.typing import NDArray
from redis.exceptions import RedisError

from gateway.telemetry import span
from security.inspection.fingerprint import RECORD

DEFAULT_HISTORY = 128


class StateUnavailableError(Exception):
    """The shared store (Redis) did not answer; the stage refuses the request."""


class DetectorState(Protocol):
    async def exchange(
        self, key: str, records: NDArray[np.void], *, now: float, history: int, window_s: int
    ) -> tuple[NDArray[np.void], float]:
        """(unexpired previous records, cool-down deadline); `records` appended after."""
        ...

    async def strike(
        self, key: str, *, now: float, window_s: int, after: int, cooldown_s: int, member: str
    ) -> tuple[int, float]:
        """(detections within the window including this one, cool-down deadline)."""
        ...

    async def aclose(self) -> None: ...


class _Client:
    __slots__ = ("cooldown_until", "count", "head", "last_seen", "ring", "strikes")

    def __init__(self, history: int) -> None:
        self.ring = np.zeros(history, dtype=RECORD)
        self.head = 0  # next slot to write
        self.count = 0
        self.last_seen = 0.0
        self.strikes: deque[float] = deque()
        self.cooldown_until = 0.0

    def resize(self, history: int) -> None:
        kept = self.records()[-history:]
        self.ring = np.zeros(history, dtype=RECORD)
        self.ring[: len(kept)] = kept
        self.count = len(kept)
        self.head = self.count % history

    def records(self) -> NDArray[np.void]:
        if self.count < len(self.ring):
            return self.ring[: self.count].copy()
        return np.concatenate([self.ring[self.head :], self.ring[: self.head]])

    def append(self, records: NDArray[np.void]) -> None:
        size = len(self.ring)
        records = records[-size:]
        n = len(records)
        first = min(n, size - self.head)
        self.ring[self.head : self.head + first] = records[:first]
        self.ring[: n - first] = records[first:]
        self.head = (self.head + n) % size
        self.count = min(size, self.count + n)


class MemoryState:
    """In-process store: the default for one replica."""

    def __init__(self, *, max_clients: int = 10_000) -> None:
        self._clients: OrderedDict[str, _Client] = OrderedDict()
        self._max = max_clients

    def __len__(self) -> int:
        return len(self._clients)

    def _client(self, key: str, now: float, history: int | None, window_s: int) -> _Client:
        client = self._clients.get(key)
        if client is not None:
            self._clients.move_to_end(key)
        # Drop clients idle for a whole window (and not cooling down) from the cold end.
        while self._clients:
            oldest_key, oldest = next(iter(self._clients.items()))
            if oldest_key == key or (
                oldest.last_seen >= now - window_s or oldest.cooldown_until > now
            ):
                break
            del self._clients[oldest_key]
        if client is None:
            while len(self._clients) >= self._max:
                self._clients.popitem(last=False)
            client = self._clients[key] = _Client(history or DEFAULT_HISTORY)
        elif history is not None and len(client.ring) != history:
            client.resize(history)
        client.last_seen = now
        return client

    async def exchange(
        self, key: str, records: NDArray[np.void], *, now: float, history: int, window_s: int
    ) -> tuple[NDArray[np.void], float]:
        client = self._client(key, now, history, window_s)
        previous = client.records()
        previous = previous[previous["ts"] >= int(now) - window_s]
        if len(records):
            client.append(records)
        return previous, client.cooldown_until

    async def strike(
        self, key: str, *, now: float, window_s: int, after: int, cooldown_s: int, member: str
    ) -> tuple[int, float]:
        client = self._client(key, now, None, window_s)
        strikes = client.strikes
        strikes.append(now)
        while strikes and (strikes[0] < now - window_s or len(strikes) > after):
            strikes.popleft()
        if len(strikes) >= after and cooldown_s > 0:
            client.cooldown_until = max(client.cooldown_until, now + cooldown_s)
        return len(strikes), client.cooldown_until

    async def aclose(self) -> None:
        return None


# KEYS: history list, cool-down key. ARGV: history, window ms, records...
_EXCHANGE = """
local old = redis.call('LRANGE', KEYS[1], 0, -1)
local cd = redis.call('GET', KEYS[2]) or '0'
if #ARGV > 2 then
  redis.call('LPUSH', KEYS[1], unpack(ARGV, 3))
  redis.call('LTRIM', KEYS[1], 0, tonumber(ARGV[1]) - 1)
end
redis.call('PEXPIRE', KEYS[1], ARGV[2])
return {cd, old}
"""

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
    """Shared store for several replicas; every call is one atomic script."""

    def __init__(self, client: Any, *, prefix: str) -> None:
        self._redis = client
        self._prefix = prefix
        self._exchange = client.register_script(_EXCHANGE)
        self._strike = client.register_script(_STRIKE)

    def _keys(self, key: str, *kinds: str) -> list[str]:
        return [f"{self._prefix}insp:{kind}:{key}" for kind in kinds]

    async def exchange(
        self, key: str, records: NDArray[np.void], *, now: float, history: int, window_s: int
    ) -> tuple[NDArray[np.void], float]:
        blobs = [r.tobytes() for r in records[-history:]]
        try:
            with span("redis.exchange"):
                cd, old = await self._exchange(
                    keys=self._keys(key, "h", "cd"), args=[history, window_s * 1000, *blobs]
                )
        except RedisError as exc:
            raise StateUnavailableError(f"redis: {exc}") from exc
        raw = b"".join(item for item in old if len(item) == RECORD.itemsize)
        previous = np.frombuffer(raw, dtype=RECORD)
        previous = previous[previous["ts"] >= int(now) - window_s]
        return previous, float(cd)

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
