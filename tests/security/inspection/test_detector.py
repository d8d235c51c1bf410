"""The stateful detector against synthetic probing sequences and realistic sessions."""

from __future__ import annotations

import tracemalloc
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
from numpy.typing import NDArray

from gateway.errors import InvalidRequest
from security.inspection.detector import Detector
from security.inspection.fingerprint import RECORD
from security.inspection.state import MemoryState
from tests.security.inspection.conftest import policy, row, rows

Arrays = dict[str, NDArray[Any]]
T0 = 1_800_000_000.0
pytestmark = pytest.mark.asyncio


def perturbed(base: dict[str, NDArray[Any]], delta_u: Any, delta_i: Any) -> dict[str, Any]:
    return {
        **base,
        "user_features": (base["user_features"] + delta_u).astype(np.float32),
        "item_features": (base["item_features"] + delta_i).astype(np.float32),
    }


async def test_a_random_walk_of_tiny_perturbations_is_flagged(
    make_detector: Callable[..., Detector], arrays: Arrays
) -> None:
    detector = make_detector()
    rng = np.random.default_rng(1)
    std_u = arrays["user_features"].std(axis=0)
    std_i = arrays["item_features"].std(axis=0)
    current = row(arrays, 17, 42)
    first_flag = None
    for step in range(60):
        current = perturbed(
            current, rng.normal(0, 0.01) * std_u, rng.normal(0, 0.01, size=20) * std_i
        )
        seen = await detector.observe("attacker", current, T0 + step, policy(), f"r{step}")
        if "near_duplicates" in seen.signals:
            first_flag = step
            break
    # The default needs 8 earlier near-duplicates: flagged on the 9th query.
    assert first_flag == 8


async def test_a_binary_search_between_two_points_is_flagged(
    make_detector: Callable[..., Detector], arrays: Arrays
) -> None:
    """HopSkipJump's boundary search: points on the segment between a clean and an
    adversarial input, each a little closer to the boundary than the last."""
    detector = make_detector()
    clean = row(arrays, 3, 9)
    far = row(arrays, 3, 9)
    far["item_features"] = arrays["item_features"][700:701].astype(np.float32)
    low, high = 0.0, 1.0
    flagged_at = None
    for step in range(30):
        mid = (low + high) / 2
        query = {
            **clean,
            "item_features": ((1 - mid) * clean["item_features"] + mid * far["item_features"]),
        }
        seen = await detector.observe("hsj", query, T0 + step, policy(), f"r{step}")
        if seen.signals:
            flagged_at = step
            break
        low, high = (mid, high) if step % 2 else (low, mid)
    assert flagged_at is not None
    assert flagged_at < 20


async def test_a_realistic_session_is_not_flagged(
    make_detector: Callable[..., Detector], arrays: Arrays
) -> None:
    """A service ranking popular items for many users, with repeated requests."""
    detector = make_detector()
    rng = np.random.default_rng(7)
    popularity = 1.0 / np.arange(1, 1501) ** 1.1
    popularity /= popularity.sum()
    t = T0
    for _ in range(400):
        user = int(rng.integers(1, 3001))
        for _refresh in range(int(rng.integers(1, 4))):  # the same page, reloaded
            items = rng.choice(np.arange(1, 1501), size=20, replace=False, p=popularity)
            seen = await detector.observe(
                "svc", rows(arrays, user, items.tolist()), t, policy(), "r"
            )
            assert seen.signals == (), seen
            t += 0.5


async def test_uniform_samples_over_the_input_space_look_like_extraction(
    make_detector: Callable[..., Detector], arrays: Arrays
) -> None:
    detector = make_detector()
    rng = np.random.default_rng(3)
    lo_u, hi_u = arrays["user_features"].min(0), arrays["user_features"].max(0)
    lo_i, hi_i = arrays["item_features"].min(0), arrays["item_features"].max(0)
    signals: tuple[str, ...] = ()
    for step in range(8):
        n = 8
        query = {
            "user_id": rng.integers(1, 3001, size=n),
            "item_id": rng.integers(1, 1501, size=n),
            "user_features": rng.uniform(lo_u, hi_u, size=(n, 20)).astype(np.float32),
            "item_features": rng.uniform(lo_i, hi_i, size=(n, 20)).astype(np.float32),
        }
        signals = (await detector.observe("thief", query, T0 + step, policy(), "r")).signals
        if step < 3:  # fewer than min_rows (32) rows seen: not judged yet
            assert "extraction_rate" not in signals
    assert "extraction_rate" in signals


async def test_out_of_bounds_values_and_unknown_ids(
    make_detector: Callable[..., Detector], arrays: Arrays
) -> None:
    detector = make_detector()
    query = row(arrays, 5, 5)
    ok = await detector.observe("c", query, T0, policy(), "r")
    assert ok.signals == ()
    big = {**query, "user_features": query["user_features"] * 0 + 50.0}
    seen = await detector.observe("c2", big, T0, policy(), "r")
    assert "out_of_range" in seen.signals
    assert seen.out_of_range == 20
    # Within the tolerance (5 % of the span beyond the max): not out of range.
    hi = arrays["item_features"].max(0)
    edge = {**query, "item_features": (hi + 0.01 * (hi - arrays["item_features"].min(0)))[None]}
    assert (await detector.observe("c3", edge, T0, policy(), "r")).out_of_range == 0
    for name, value in (("item_id", 1501), ("item_id", 0), ("user_id", 3001), ("user_id", -1)):
        with pytest.raises(InvalidRequest, match=f"input {name}: unknown id"):
            await detector.observe("c", {**query, name: np.array([value])}, T0, policy(), "r")


async def test_cooldown_after_repeated_detections_then_expiry(
    make_detector: Callable[..., Detector], arrays: Arrays
) -> None:
    detector = make_detector()
    rules = policy(cooldown_after=3, cooldown_seconds=60, window_seconds=600)
    bad = {**row(arrays, 5, 5), "user_features": np.full((1, 20), 50.0, dtype=np.float32)}
    clean = row(arrays, 5, 5)
    for i in range(3):
        assert "out_of_range" in (await detector.observe("k", bad, T0 + i, rules, f"b{i}")).signals
    during = await detector.observe("k", clean, T0 + 10, rules, "c1")
    assert during.signals == ("cooldown",)
    assert (await detector.cooldown_only("k", T0 + 10, rules)).signals == ("cooldown",)
    after = await detector.observe("k", clean, T0 + 63, rules, "c2")
    assert after.signals == ()
    # Another client is never affected.
    assert (await detector.observe("other", clean, T0 + 10, rules, "o")).signals == ()


async def test_history_expires_after_the_window(
    make_detector: Callable[..., Detector], arrays: Arrays
) -> None:
    state = MemoryState()
    detector = make_detector(state)
    rules = policy(window_seconds=100)
    base = row(arrays, 8, 8)
    for i in range(8):
        tiny = perturbed(base, 0.0, np.float32(1e-3 * (i + 1)))
        assert (await detector.observe("slow", tiny, T0 + i, rules, "r")).signals == ()
    # The 9th near-duplicate, but the first eight are older than the window: not counted.
    late = perturbed(base, 0.0, np.float32(2e-2))
    seen = await detector.observe("slow", late, T0 + 200, rules, "r")
    assert seen.signals == ()
    assert seen.near_duplicates == 0
    # Idle clients are dropped as the store is used: only the active ones stay.
    await detector.observe("a", base, T0 + 200, rules, "r")
    await detector.observe("b", base, T0 + 400, rules, "r")
    assert len(state) == 1


async def test_memory_is_bounded_for_10k_clients_with_full_histories() -> None:
    """Documented limit: 10 000 clients x 128 records stay under 48 MB."""
    state = MemoryState(max_clients=10_000)
    batch = np.zeros(128, dtype=RECORD)
    batch["ts"] = int(T0)
    tracemalloc.start()
    try:
        for client in range(10_000):
            await state.exchange(f"c{client}", batch, now=T0, history=128, window_s=900)
        current, _peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert len(state) == 10_000
    assert current < 48 * 1024 * 1024, current
    # Past the client bound the least recently seen go: memory stops growing.
    for client in range(10_000, 12_000):
        await state.exchange(f"c{client}", batch[:1], now=T0, history=128, window_s=900)
    assert len(state) == 10_000
    previous, _ = await state.exchange("c0", batch[:0], now=T0, history=128, window_s=900)
    assert len(previous) == 0  # evicted, so forgotten


async def test_history_per_client_is_bounded(
    make_detector: Callable[..., Detector], arrays: Arrays
) -> None:
    state = MemoryState()
    big = np.zeros(500, dtype=RECORD)
    big["ts"] = int(T0)
    big["ids"] = np.arange(500)
    await state.exchange("k", big, now=T0, history=64, window_s=900)
    previous, _ = await state.exchange("k", big[:0], now=T0, history=64, window_s=900)
    assert len(previous) == 64
    assert set(previous["ids"].tolist()) == set(range(436, 500))  # the newest kept
