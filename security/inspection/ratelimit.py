"""Per-client token buckets, in process or in Redis (one atomic Lua script per take).

Time comes from the caller's clock, not Redis's: replicas then share one notion
of "now" only as far as their clocks agree, which NTP keeps well inside a token.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Protocol

from redis.exceptions import RedisError

from security.inspection.state import StateUnavailableError


@dataclass(frozen=True, slots=True)
class Take:
    allowed: bool
    retry_after_s: float  # 0 when allowed


class RateLimiter(Protocol):
    async def take(
        self, key: str, *, rate: float, burst: int, now: float, cost: float = 1.0
    ) -> Take: ...


class MemoryRateLimiter:
    """Bounded: at most `max_keys` buckets; the least recently used go first (a full
    bucket and a forgotten one behave the same, so eviction only ever forgives)."""

    def __init__(self, *, max_keys: int = 100_000) -> None:
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()
        self._max = max_keys

    async def take(
        self, key: str, *, rate: float, burst: int, now: float, cost: float = 1.0
    ) -> Take:
        tokens, last = self._buckets.pop(key, (float(burst), now))
        tokens = min(float(burst), tokens + max(0.0, now - last) * rate)
        if tokens >= cost:
            allowed, tokens, wait = True, tokens - cost, 0.0
        else:
            allowed, wait = False, (cost - tokens) / rate
        self._buckets[key] = (tokens, now)
        while len(self._buckets) > self._max:
            self._buckets.popitem(last=False)
        return Take(allowed, wait)


_TAKE = """
local rate = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local now = tonumber(ARGV[3])
local cost = tonumber(ARGV[4])
local state = redis.call('HMGET', KEYS[1], 't', 'ts')
local tokens = tonumber(state[1]) or burst
local last = tonumber(state[2]) or now
tokens = math.min(burst, tokens + math.max(0, now - last) * rate)
local allowed = 0
local wait = 0
if tokens >= cost then
  tokens = tokens - cost
  allowed = 1
else
  wait = (cost - tokens) / rate
end
redis.call('HSET', KEYS[1], 't', tostring(tokens), 'ts', tostring(now))
redis.call('PEXPIRE', KEYS[1], math.ceil(burst / rate * 1000) + 1000)
return {allowed, tostring(wait)}
"""


class RedisRateLimiter:
    def __init__(self, client: Any, *, prefix: str) -> None:
        self._prefix = prefix
        self._script = client.register_script(_TAKE)

    async def take(
        self, key: str, *, rate: float, burst: int, now: float, cost: float = 1.0
    ) -> Take:
        try:
            allowed, wait = await self._script(
                keys=[f"{self._prefix}rl:{key}"], args=[repr(rate), burst, repr(now), repr(cost)]
            )
        except RedisError as exc:
            raise StateUnavailableError(f"redis: {exc}") from exc
        return Take(bool(allowed), float(wait))
