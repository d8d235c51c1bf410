"""The decayed count-min sketch: decay, the landmark boundary, and no under-counting."""

from __future__ import annotations

import math

import numpy as np
import pytest

from security.inspection.sketch import DEPTH, PERIODS, WIDTH, MemorySketch

T0 = 1_800_000_000.0
pytestmark = pytest.mark.asyncio


async def test_counts_decay_by_e_per_time_constant() -> None:
    sketch = MemorySketch()
    cell = np.array([7])
    assert (await sketch.add(cell, now=T0, tau=100.0))[0] == pytest.approx(1.0)
    read = np.array([0])
    late = await sketch.add(cell, now=T0 + 100, tau=100.0, events=read)
    assert late[0] == pytest.approx(math.exp(-1))
    # Weighted events, and another time constant kept apart.
    assert (await sketch.add(cell, now=T0, tau=60.0, events=np.array([2.5])))[0] == 2.5


async def test_counts_carry_over_a_new_landmark() -> None:
    sketch = MemorySketch()
    tau = 10.0
    boundary = (T0 // (PERIODS * tau) + 1) * PERIODS * tau
    await sketch.add(np.array([3]), now=boundary - 5, tau=tau, events=np.array([4]))
    after = await sketch.add(np.array([3]), now=boundary + 5, tau=tau, events=np.array([0]))
    assert after[0] == pytest.approx(4 * math.exp(-1.0))


async def test_count_min_never_under_counts() -> None:
    """A tiny sketch (many collisions): every estimate is at least the true count."""
    sketch = MemorySketch(width=64, depth=DEPTH)
    rng = np.random.default_rng(1)
    keys = rng.integers(0, 2**62, size=500)
    truth: dict[int, int] = {}
    for key in rng.choice(keys, size=3000):
        truth[int(key)] = truth.get(int(key), 0) + 1
    cells_of = {k: np.array([k % 64, 64 + (k * 7919) % 64]) for k in truth}
    for key, n in truth.items():
        await sketch.add(cells_of[key], now=T0, tau=1e9, events=np.array([n, n]))
    for key, n in truth.items():
        got = await sketch.add(cells_of[key], now=T0, tau=1e9, events=np.array([0, 0]))
        assert got.min() >= n - 1e-6
    assert WIDTH * DEPTH * 8 == 4 * 1024 * 1024  # the default: 4 MB a time constant
