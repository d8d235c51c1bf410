"""Budgets and rate limits per client, per (client, data subject) and per tenant, as the
default bundle sets them: a service acting for 50 users gets through, harvesters do not."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
from prometheus_client import CollectorRegistry

from gateway.errors import QueryBudgetExhausted, TooManyRequests
from gateway.pipeline import InferQuery, Principal, RankQuery, RequestContext
from policies.bundle import load_bundle
from policies.data_policy import DataPolicy, Rate, RateLimitPolicy
from policies.in_force import InForce
from security.inspection.admission import Admission
from security.inspection.budget import MemoryBudgets
from security.inspection.metrics import InspectionMetrics
from security.inspection.ratelimit import MemoryRateLimiter
from security.inspection.stage import InspectStage, data_subjects

T0 = 1_800_000_000.0 - (1_800_000_000.0 % 86_400)  # the start of a day (and of an hour)
BUNDLE = Path(__file__).parents[3] / "policies" / "bundles" / "default"
pytestmark = pytest.mark.asyncio


@pytest.fixture(scope="module")
def shipped() -> DataPolicy:
    data: DataPolicy = load_bundle(BUNDLE).data
    return data


def stage(data: DataPolicy, clock: list[float]) -> InspectStage:
    return InspectStage(
        None,  # detection is not under test here
        Admission(MemoryRateLimiter(), MemoryBudgets(), None),
        InForce(data, "test"),
        InspectionMetrics(CollectorRegistry()),
        lambda: clock[0],
        secret=b"k" * 32,
    )


def principal(client: str, tenant: str | None = "shop") -> Principal:
    return Principal(
        issuer="https://issuer", client_id=client, subject=client, scopes=frozenset(), tenant=tenant
    )


def ranked(user: str, items: int) -> RankQuery:
    return RankQuery(user_id=user, item_ids=tuple(f"i{n}" for n in range(1, items + 1)), top_k=10)


async def call(inspect: InspectStage, who: Principal, query: Any) -> RequestContext:
    ctx = RequestContext(request_id="r", action="rank", route="/v1/rank", headers={})
    return await inspect(ctx.evolve(principal=who, payload=query))


async def test_a_service_for_50_users_fits_the_shipped_budgets(shipped: DataPolicy) -> None:
    """3,000 requests of 100 rows in an hour for 50 users: 300,000 rows, 6,000 a user."""
    clock = [T0]
    inspect = stage(shipped, clock)
    rng = np.random.default_rng(1)
    users = [f"u{n}" for n in rng.choice(np.arange(1, 3001), size=50, replace=False)]
    for gap in rng.exponential(3600 / 3000, size=3000):
        clock[0] += float(gap)
        await call(inspect, principal("svc"), ranked(str(rng.choice(users)), 100))


async def test_one_subject_cannot_harvest(shipped: DataPolicy) -> None:
    """One user's view of the catalogue, again and again: 10,000 rows an hour, then 429."""
    clock = [T0]
    inspect = stage(shipped, clock)
    for _ in range(100):
        await call(inspect, principal("svc"), ranked("u7", 100))
    with pytest.raises(QueryBudgetExhausted) as refused:
        await call(inspect, principal("svc"), ranked("u7", 100))
    assert refused.value.retry_after_s == pytest.approx(3600)
    # The same client keeps serving its other users; refused requests spent nothing.
    await call(inspect, principal("svc"), ranked("u8", 100))
    clock[0] += 3600
    await call(inspect, principal("svc"), ranked("u7", 100))


async def test_one_client_cannot_harvest_the_catalogue(shipped: DataPolicy) -> None:
    """1,500 items x 3,000 users (4.5M rows) by one client: stopped at 2M rows a day."""
    clock = [T0]
    inspect = stage(shipped, clock)
    rows = 0

    async def harvest() -> None:
        nonlocal rows
        for user in range(1, 3001):
            for _page in range(15):  # the whole catalogue for each user, 100 at a time
                # As fast as the hourly budget lets it: 400,000 rows an hour.
                clock[0] = T0 + (rows // 400_000) * 3600
                await call(inspect, principal("thief"), ranked(f"u{user}", 100))
                rows += 100

    with pytest.raises(QueryBudgetExhausted):
        await harvest()
    assert rows == 2_000_000
    assert rows < 1500 * 3000


async def test_credentials_of_one_tenant_share_its_budget(shipped: DataPolicy) -> None:
    clock = [T0]
    inspect = stage(shipped, clock)
    served = 0

    async def spread() -> None:
        nonlocal served
        for n in range(20_000):  # 50 credentials, 100 rows a request, 3,000 users
            await call(inspect, principal(f"c{n % 50}"), ranked(f"u{n % 3000}", 100))
            served += 100

    with pytest.raises(QueryBudgetExhausted):
        await spread()
    assert served == 1_000_000  # the tenant's hour, though no credential spent its own


async def test_subjects_of_an_oip_request_are_its_user_rows() -> None:
    feeds = {"user_id": np.array([3, 3, 4, 0]), "item_id": np.array([1, 2, 3, 4])}
    query = InferQuery(id=None, feeds=feeds)
    assert data_subjects(query) == {"#3": 2, "#4": 1}  # row 0 (cold start) is nobody
    assert data_subjects(ranked("u9", 7)) == {"r:u9": 7}


async def test_per_subject_and_per_tenant_rate_limits(shipped: DataPolicy) -> None:
    rates = RateLimitPolicy(per_subject=Rate(rps=1.0, burst=2), per_tenant=Rate(rps=1, burst=1))
    clock = [T0]
    inspect = stage(shipped.model_copy(update={"rate_limits": rates}), clock)
    for _ in range(2):
        await call(inspect, principal("svc"), ranked("u1", 5))
    with pytest.raises(TooManyRequests) as refused:
        await call(inspect, principal("svc"), ranked("u1", 5))
    assert refused.value.retry_after_s == pytest.approx(1.0)
    await call(inspect, principal("svc"), ranked("u2", 5))  # another subject: its own bucket
    # A request for several subjects takes from each, all or nothing.
    both = InferQuery(id=None, feeds={"user_id": np.array([5, 6]), "item_id": np.array([1, 1])})
    await call(inspect, principal("svc"), both)
    await call(inspect, principal("svc"), both)
    with pytest.raises(TooManyRequests):
        await call(inspect, principal("svc"), both)


async def test_only_feature_values_the_client_chose_are_inspected(
    shipped: DataPolicy, make_detector: Any, arrays: dict[str, Any]
) -> None:
    """Feature provenance: by ids the store filled the features (nothing to inspect);
    a declared client feature, or raw tensors, are inspected."""
    clock = [T0]
    detector = make_detector()
    inspect = InspectStage(
        detector,
        Admission(MemoryRateLimiter(), MemoryBudgets(), detector.state),
        InForce(shipped, "test"),
        InspectionMetrics(CollectorRegistry()),
        lambda: clock[0],
        secret=b"k" * 32,
    )
    feeds = {
        "user_id": np.array([3]),
        "item_id": np.array([4]),
        "user_features": np.full((1, 20), 50.0, dtype=np.float32),  # far out of range
        "item_features": arrays["item_features"][4:5].astype(np.float32),
    }
    for chosen, rows in (
        (frozenset({"user_id", "item_id"}), 0),
        (frozenset({"user_id", "item_id", "user_features"}), 1),
        (None, 1),
    ):
        done = await call(inspect, principal("c"), InferQuery(None, feeds, client_inputs=chosen))
        assert done.inspection is not None
        assert done.inspection.observation.rows == rows  # type: ignore[attr-defined]
        assert (done.inspection.verdict == "flag") is bool(rows)
