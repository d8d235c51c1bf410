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

    async def take_all(self, keys: list[str], *, rate: float, burst: int, now: float) -> Take:
        """One token from each key's bucket, or none (a request for several subjects)."""
        ...


def refill(tokens: float, last: float, now: float, rate: float, burst: int) -> float:
    """A bucket's tokens at `now`, from its level `tokens` at `last`."""
    return min(float(burst), tokens + max(0.0, now - last) * rate)


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
        tokens = refill(tokens, last, now, rate, burst)
        if tokens >= cost:
            allowed, tokens, wait = True, tokens - cost, 0.0
        else:
            allowed, wait = False, (cost - tokens) / rate
        self._buckets[key] = (tokens, now)
        while len(self._buckets) > self._max:
            self._buckets.popitem(last=False)
        return Take(allowed, wait)

    async def take_all(self, keys: list[str], *, rate: float, burst: int, now: float) -> Take:
        levels = []
        wait = 0.0
        for key in keys:
            tokens, last = self._buckets.get(key, (float(burst), now))
            tokens = refill(tokens, last, now, rate, burst)
            if tokens < 1.0:
                wait = max(wait, (1.0 - tokens) / rate)
            levels.append(tokens)
        if wait:
            return Take(False, wait)
        for key, tokens in zip(keys, levels, strict=True):
            self._buckets.pop(key, None)
            self._buckets[key] = (tokens - 1.0, now)
        while len(self._buckets) > self._max:
            self._buckets.popitem(last=False)
        return Take(True, 0.0)


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


# KEYS: one bucket per key. ARGV: rate, burst, now. All the tokens or none.
_TAKE_ALL = """
local rate = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local now = tonumber(ARGV[3])
local levels = {}
local wait = 0
for i = 1, #KEYS do
  local state = redis.call('HMGET', KEYS[i], 't', 'ts')
  local tokens = tonumber(state[1]) or burst
  local last = tonumber(state[2]) or now
  tokens = math.min(burst, tokens + math.max(0, now - last) * rate)
  if tokens < 1 then
    wait = math.max(wait, (1 - tokens) / rate)
  end
  levels[i] = tokens
end
if wait > 0 then
  return {0, tostring(wait)}
end
for i = 1, #KEYS do
  redis.call('HSET', KEYS[i], 't', tostring(levels[i] - 1), 'ts', tostring(now))
  redis.call('PEXPIRE', KEYS[i], math.ceil(burst / rate * 1000) + 1000)
end
return {1, '0'}
"""


class RedisRateLimiter:
    def __init__(self, client: Any, *, prefix: str) -> None:
        self._prefix = prefix
        self._script = client.register_script(_TAKE)
        self._all = client.register_script(_TAKE_ALL)

    async def take_all(self, keys: list[str], *, rate: float, burst: int, now: float) -> Take:
        if not keys:
            return Take(True, 0.0)
        try:
            allowed, wait = await self._all(
                keys=[f"{self._prefix}rl:{key}" for key in keys],
                args=[repr(rate), burst, repr(now)],
            )
        except RedisError as exc:
            raise StateUnavailableError(f"redis: {exc}") from exc
        return Take(bool(allowed), float(wait))

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
