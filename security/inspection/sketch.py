"""Time-decayed count-min sketches: every history (client, tenant, subject) in fixed memory.

The detector keeps no list of queries. It counts events (a row in an LSH bucket,
an exact row, an off-store row) under cells that hash the history's name and the
event together, in one count-min sketch (Cormode & Muthukrishnan 2005) of
DEPTH x WIDTH cells shared by every history: memory is the same for ten clients
or ten million, and a count is never under-estimated (collisions only add), so
eviction can never forgive an attacker.

Counts decay with time constant tau (an event `tau` old weighs 1/e), with forward
decay (Cormode, Shkapenyuk, Srivastava & Xu 2009): an event at t adds
g(t) = exp((t - L) / tau) for a landmark L, and a count at `now` is the sum over
g(now). Adding stays a plain addition, which Redis does atomically
(HINCRBYFLOAT). The landmark moves every PERIODS x tau; values kept under the
previous landmark are scaled by exp(-PERIODS) (Redis keeps the previous period's
hash and reads it scaled), so nothing is lost at the boundary.

Cells are int64 in [0, DEPTH x WIDTH): the caller hashes (history, event) once per
depth row, and takes the minimum over the rows.
"""

from __future__ import annotations

import math
from typing import Any, Protocol

import numpy as np
from numpy.typing import NDArray
from redis.exceptions import RedisError

from gateway.telemetry import span

WIDTH = 1 << 18
DEPTH = 2
PERIODS = 8.0


class StateUnavailableError(Exception):
    """The shared store (Redis) did not answer; the stage refuses the request (fail closed).

    Defined here, the lowest module that talks to Redis; `state` re-exports it."""


class CountSketch(Protocol):
    async def add(
        self,
        cells: NDArray[np.int64],
        *,
        now: float,
        tau: float,
        events: NDArray[Any] | None = None,
    ) -> NDArray[np.float64]:
        """Count `events` (default one; weights allowed) in each listed cell (a cell listed
        twice counts twice; 0 only reads), then return each listed cell's decayed count,
        this call's events included."""
        ...


def landmark(now: float, tau: float) -> tuple[int, float]:
    """(period index, its landmark time) for `now`."""
    period = PERIODS * tau
    index = math.floor(now / period)
    return index, index * period


class MemorySketch:
    """In process: DEPTH x WIDTH float64 counters (4 MB by default) per time constant in
    use (the detector uses two), whatever the traffic."""

    def __init__(self, *, width: int = WIDTH, depth: int = DEPTH, max_taus: int = 4) -> None:
        self.size = width * depth
        self._tables: dict[float, tuple[int, NDArray[np.float64]]] = {}  # tau: (period, values)
        self._max_taus = max_taus

    def _table(self, tau: float, index: int) -> NDArray[np.float64]:
        found = self._tables.get(tau)
        if found is None:
            while len(self._tables) >= self._max_taus:  # a policy changed its time constants
                self._tables.pop(next(iter(self._tables)))
            table = np.zeros(self.size, dtype=np.float64)
        elif found[0] == index:
            return found[1]
        elif index > found[0]:
            table = found[1]
            table *= math.exp(-PERIODS * (index - found[0]))
        else:  # a clock that went back a whole period: start afresh
            table = np.zeros(self.size, dtype=np.float64)
        self._tables[tau] = (index, table)
        return table

    async def add(
        self,
        cells: NDArray[np.int64],
        *,
        now: float,
        tau: float,
        events: NDArray[Any] | None = None,
    ) -> NDArray[np.float64]:
        index, start = landmark(now, tau)
        table = self._table(tau, index)
        weight = math.exp((now - start) / tau)
        if len(cells):
            np.add.at(table, cells, weight if events is None else weight * events)
        counts: NDArray[np.float64] = table[cells] / weight
        return counts


# KEYS: this period's hash, the previous period's. ARGV: weight, previous factor, ttl ms,
# then (cell, events) pairs. One atomic step: concurrent replicas all see each other.
_ADD = """
local w = tonumber(ARGV[1])
local f = tonumber(ARGV[2])
local out = {}
for i = 4, #ARGV, 2 do
  local n = tonumber(ARGV[i + 1])
  local v
  if n > 0 then
    v = tonumber(redis.call('HINCRBYFLOAT', KEYS[1], ARGV[i], w * n))
  else
    v = tonumber(redis.call('HGET', KEYS[1], ARGV[i]) or '0')
  end
  local p = tonumber(redis.call('HGET', KEYS[2], ARGV[i]) or '0')
  out[#out + 1] = tostring(v + p * f)
end
redis.call('PEXPIRE', KEYS[1], ARGV[3])
return out
"""


class RedisSketch:
    """Shared by replicas: one Redis hash per period (at most DEPTH x WIDTH fields)."""

    def __init__(self, client: Any, *, prefix: str) -> None:
        self._prefix = prefix
        self._script = client.register_script(_ADD)

    async def add(
        self,
        cells: NDArray[np.int64],
        *,
        now: float,
        tau: float,
        events: NDArray[Any] | None = None,
    ) -> NDArray[np.float64]:
        if not len(cells):
            return np.zeros(0, dtype=np.float64)
        index, start = landmark(now, tau)
        weight = math.exp((now - start) / tau)
        unique, inverse = np.unique(cells, return_inverse=True)
        counts = np.bincount(
            inverse.reshape(-1), weights=None if events is None else events, minlength=len(unique)
        )
        args: list[Any] = [repr(weight), repr(math.exp(-PERIODS)), int(2 * PERIODS * tau * 1000)]
        for cell, count in zip(unique.tolist(), counts.tolist(), strict=True):
            args += [cell, repr(float(count))]
        base = f"{self._prefix}insp:cm:{tau:g}:"
        try:
            with span("redis.sketch"):
                raw = await self._script(keys=[f"{base}{index}", f"{base}{index - 1}"], args=args)
        except RedisError as exc:
            raise StateUnavailableError(f"redis: {exc}") from exc
        values = np.asarray([float(v) for v in raw], dtype=np.float64) / weight
        out: NDArray[np.float64] = values[inverse.reshape(-1)]
        return out
