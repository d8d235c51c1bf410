"""Shared state in a real Redis: two detectors, and two gateway instances, as one."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import redis.asyncio as redis_asyncio
from fastapi.testclient import TestClient

from gateway.app import create_app
from gateway.datadir import InitReport
from security.inspection.detector import Detector, Histories
from security.inspection.sketch import MemorySketch, RedisSketch
from security.inspection.state import RedisState, StateUnavailableError
from tests.security.inspection.conftest import policy, row
from tests.security.inspection.test_gateway_inspection import (
    INFER,
    JSON,
    bearer,
    infer_body,
    record,
    settings_with,
)

T0 = 1_800_000_000.0


def noisy(arrays: dict[str, Any], user: int, item: int, rng: np.random.Generator) -> Any:
    """The store row with noise of 0.3 std on every feature, within the bounds."""
    base = row(arrays, user, item)
    out = dict(base)
    for name in ("user_features", "item_features"):
        table = arrays[name]
        moved = base[name] + rng.normal(0, 0.3, base[name].shape) * table.std(axis=0)
        out[name] = np.clip(moved, table.min(axis=0), table.max(axis=0)).astype(np.float32)
    return out


@pytest.mark.asyncio
async def test_two_detectors_on_one_redis_see_one_history(
    make_detector: Callable[..., Detector],
    arrays: dict[str, Any],
    redis_url: str,
    redis_prefix: str,
) -> None:
    clients = [redis_asyncio.Redis.from_url(redis_url) for _ in range(2)]
    try:
        replicas = [make_detector(RedisState(c, prefix=redis_prefix)) for c in clients]
        rng = np.random.default_rng(1)
        histories = Histories(client="t/k", tenant="t")
        signals: tuple[str, ...] = ()
        versions = []
        for step in range(30):
            # Alternate replicas, as a load balancer would.
            seen = await replicas[step % 2].observe(
                "t/k", noisy(arrays, 11, 12, rng), T0 + step, policy(), f"r{step}",
                histories=histories,
            )  # fmt: skip
            versions.append(seen.versions)
            if seen.signals:
                signals = seen.signals
                break
        # Neither replica saw 24 versions; together they did.
        assert signals == ("versions",)
        assert versions[-1] >= 24
        # Cool-down set through one replica holds on the other.
        rules = policy(cooldown_after=1, cooldown_seconds=60)
        far = {**row(arrays, 11, 12), "user_features": np.full((1, 20), 80.0, dtype=np.float32)}
        assert "out_of_range" in (await replicas[0].observe("j", far, T0, rules, "x")).signals
        until = await replicas[1].state.cooldown("j", now=T0 + 1)
        assert Detector.cooled(until, T0 + 1).signals == ("cooldown",)
        # Counts decay: five hours (time constants) later the same id starts afresh.
        late = await replicas[1].observe(
            "t/k", noisy(arrays, 11, 12, rng), T0 + 5 * 3600, policy(), "late",
            histories=histories,
        )  # fmt: skip
        assert late.versions <= 1
    finally:
        for c in clients:
            await c.aclose()


@pytest.mark.asyncio
async def test_the_redis_sketch_counts_as_the_memory_one(
    redis_url: str, redis_prefix: str
) -> None:
    client = redis_asyncio.Redis.from_url(redis_url)
    try:
        shared, local = RedisSketch(client, prefix=redis_prefix), MemorySketch()
        rng = np.random.default_rng(2)
        tau = 600.0
        # Across a landmark (every 8 tau): counts carry over, scaled, on both.
        start = (T0 // (8 * tau) + 1) * 8 * tau - 900
        for step in range(40):
            cells = rng.integers(0, 64, size=int(rng.integers(1, 12)))
            events = rng.integers(0, 3, size=len(cells))
            now = start + 45 * step
            got = await shared.add(cells, now=now, tau=tau, events=events)
            want = await local.add(cells, now=now, tau=tau, events=events)
            np.testing.assert_allclose(got, want, rtol=1e-9)
    finally:
        await client.aclose()


@pytest.mark.asyncio
async def test_an_unreachable_redis_is_a_typed_error() -> None:
    client = redis_asyncio.Redis.from_url(
        "redis://127.0.0.1:1/0", socket_timeout=0.5, socket_connect_timeout=0.5
    )
    try:
        state = RedisState(client, prefix="x:")
        with pytest.raises(StateUnavailableError):
            await state.add(np.array([1, 2]), now=T0, tau=60.0)
        with pytest.raises(StateUnavailableError):
            await state.cooldown("k", now=T0)
    finally:
        await client.aclose()


def test_two_gateway_instances_share_limits_and_detector_state(
    report: InitReport, store: dict[str, Any], tmp_path: Path, redis_url: str, redis_prefix: str
) -> None:
    rules = (
        "rate_limits: {per_client_rps: 50, burst: 100}",
        "rate_limits: {per_client_rps: 0.01, burst: 40}",
    )
    shared = {"redis_url": redis_url, "redis_prefix": redis_prefix}
    a_dir, b_dir = tmp_path / "a", tmp_path / "b"
    a_dir.mkdir()
    b_dir.mkdir()
    with (
        TestClient(create_app(settings_with(report, a_dir, rules, inspection=shared))) as a,
        TestClient(create_app(settings_with(report, b_dir, rules, inspection=shared))) as b,
    ):
        auth = {**bearer(a), **JSON}
        rng = np.random.default_rng(3)
        std = store["user_features"].std(axis=0)
        low, high = store["user_features"].min(axis=0), store["user_features"].max(axis=0)
        verdicts = []
        for step in range(40):
            gateway = (a, b)[step % 2]
            features = np.clip(store["user_features"][9] + rng.normal(0, 0.3, 20) * std, low, high)
            body = infer_body(store, 9, 9, user_features=features)
            response = gateway.post(INFER, json=body, headers=auth)
            assert response.status_code == 200, response.text
            verdicts.append(
                record(gateway, response.headers["x-request-id"])["inspection"]["verdict"]
            )
        # Neither instance saw 24 versions of user 9's features; together they did.
        assert verdicts[:20] == ["allow"] * 20
        assert "flag" in verdicts[20:]
        # The burst of 40 is spent across both instances: the 41st is refused by either.
        refused = b.post(INFER, json=infer_body(store, 9, 9), headers=auth)
        assert refused.status_code == 429
        assert int(refused.headers["retry-after"]) >= 1
        assert a.post(INFER, json=infer_body(store, 9, 9), headers=auth).status_code == 429
