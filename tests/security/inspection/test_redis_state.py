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
from security.inspection.detector import Detector
from security.inspection.state import RedisState
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
        base = row(arrays, 11, 12)
        signals: tuple[str, ...] = ()
        for step in range(9):
            query = {**base, "item_features": base["item_features"] + np.float32(1e-3 * (step + 1))}
            # Alternate replicas, as a load balancer would.
            signals = (
                await replicas[step % 2].observe("k", query, T0 + step, policy(), f"r{step}")
            ).signals
            if step < 8:
                assert signals == ()
        assert signals == ("near_duplicates",)
        # Cool-down set through one replica holds on the other.
        rules = policy(cooldown_after=1, cooldown_seconds=60)
        far = {**base, "user_features": np.full((1, 20), 80.0, dtype=np.float32)}
        assert "out_of_range" in (await replicas[0].observe("j", far, T0, rules, "x")).signals
        assert (await replicas[1].cooldown_only("j", T0 + 1, rules)).signals == ("cooldown",)
        # History expires with the window.
        late = await replicas[1].observe("k", base, T0 + 2000, policy(), "late")
        assert late.near_duplicates == 0
    finally:
        for c in clients:
            await c.aclose()


def test_two_gateway_instances_share_limits_and_detector_state(
    report: InitReport, store: dict[str, Any], tmp_path: Path, redis_url: str, redis_prefix: str
) -> None:
    rules = (
        "rate_limits: {per_client_rps: 50, burst: 100}",
        "rate_limits: {per_client_rps: 0.01, burst: 12}",
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
        base = store["user_features"][9].astype(np.float64)
        verdicts = []
        for step in range(12):
            gateway = (a, b)[step % 2]
            body = infer_body(store, 9, 9, user_features=base + 1e-4 * (step + 1))
            response = gateway.post(INFER, json=body, headers=auth)
            assert response.status_code == 200, response.text
            verdicts.append(
                record(gateway, response.headers["x-request-id"])["inspection"]["verdict"]
            )
        # Neither instance saw nine queries; together they did.
        assert verdicts[:8] == ["allow"] * 8
        assert set(verdicts[8:]) == {"flag"}
        # The burst of 12 is spent across both instances: the 13th is refused by either.
        refused = b.post(INFER, json=infer_body(store, 9, 9), headers=auth)
        assert refused.status_code == 429
        assert int(refused.headers["retry-after"]) >= 1
        assert a.post(INFER, json=infer_body(store, 9, 9), headers=auth).status_code == 429
