"""A/B assignment: stable per user, close to the configured split; shadow scoring."""

from __future__ import annotations

import json
import os
from collections import Counter

import pytest
from fastapi.testclient import TestClient

from gateway.app import create_app
from gateway.derivation import Purpose, derive
from models.variants import assign, variant_label
from policies.data_policy import Variant
from tests.models.conftest import Box

SALT = derive(b"k" * 40, Purpose.AB_ASSIGNMENT)
SPLIT = """    variants:
      - {version: "1", weight: 1.0}"""


def arms(*weights: float) -> tuple[Variant, ...]:
    return tuple(Variant(version=str(i + 1), weight=w) for i, w in enumerate(weights))


def test_assignment_is_stable_per_user() -> None:
    variants = arms(0.9, 0.1)
    users = [f"u{i}" for i in range(2000)]
    first = [assign(SALT, "demo-ranker", u, variants) for u in users]
    again = [assign(SALT, "demo-ranker", u, variants) for u in users]
    assert first == again
    assert (
        assign(derive(b"k" * 40, Purpose.AB_ASSIGNMENT), "demo-ranker", "u1", variants) == first[1]
    )


@pytest.mark.parametrize("weights", [(0.9, 0.1), (50, 30, 20), (1, 1)])
def test_split_over_10k_users_is_close_to_the_weights(weights: tuple[float, ...]) -> None:
    variants = arms(*weights)
    counts = Counter(assign(SALT, "demo-ranker", f"user-{i}", variants) for i in range(10_000))
    total = sum(weights)
    for index, weight in enumerate(weights):
        # Binomial sd at n=10k is <= 0.5%; 1.5 percentage points is over 3 sd.
        assert abs(counts[index] / 10_000 - weight / total) < 0.015, (index, counts)


def test_assignment_depends_on_the_salt() -> None:
    """Without the gateway's secret, a client cannot pick ids that land in an arm."""
    variants = arms(0.5, 0.5)
    other = derive(os.urandom(40), Purpose.AB_ASSIGNMENT)
    users = [f"u{i}" for i in range(500)]
    same = sum(assign(SALT, "m", u, variants) == assign(other, "m", u, variants) for u in users)
    assert 150 < same < 350  # independent coin flips agree about half the time


def test_changing_weights_moves_only_boundary_users() -> None:
    before = [assign(SALT, "m", f"u{i}", arms(0.9, 0.1)) for i in range(5000)]
    after = [assign(SALT, "m", f"u{i}", arms(0.8, 0.2)) for i in range(5000)]
    moved = [(b, a) for b, a in zip(before, after, strict=True) if b != a]
    assert all(m == (0, 1) for m in moved)  # only A -> B, nobody leaves B
    assert 0.05 < len(moved) / 5000 < 0.15


def test_labels() -> None:
    assert [variant_label(i) for i in range(3)] == ["A", "B", "C"]


def test_gateway_serves_the_assigned_arm_and_shadows_without_answering(box: Box) -> None:
    box.pack("2")
    box.pack("3")
    box.edit_data_policy(
        SPLIT,
        '''    variants:
      - {version: "1", weight: 0.5}
      - {version: "2", weight: 0.5}
    shadow_version: "3"''',
    )
    salt = box.settings().derived_keys[Purpose.AB_ASSIGNMENT]
    with TestClient(create_app(box.settings())) as client:
        headers = box.headers("demo")
        seen: dict[str, str] = {}
        for i in range(40):
            user = f"u{i + 1}"
            body = client.post(
                "/v1/rank", json={"user_id": user, "item_ids": ["i1", "i2"]}, headers=headers
            ).json()
            model = body["model"]
            expected = assign(salt, "demo-ranker", user, arms(0.5, 0.5))
            assert model["variant"] == variant_label(expected)
            assert model["version"] == str(expected + 1)  # never the shadow's "3"
            seen[user] = model["variant"]
        assert set(seen.values()) == {"A", "B"}
        again = client.post(
            "/v1/rank", json={"user_id": "u1", "item_ids": ["i3"]}, headers=headers
        ).json()
        assert again["model"]["variant"] == seen["u1"]
        store = client.app.state.components.audit.store  # type: ignore[attr-defined]
        last = json.loads(store.leaf(store.size() - 1).payload)
        assert last["model"]["variant"] == seen["u1"]
        assert last["model"]["package_digest"] == again["model"]["package_digest"][7:]
        metrics = client.get("/metrics").text
        assert (
            'gateway_model_variant_requests_total{model="demo-ranker",variant="A",version="1"}'
            in metrics
        )
        assert (
            'gateway_model_shadow_requests_total{model="demo-ranker",outcome="ok",version="3"} 41.0'
            in metrics
        )


def test_an_arm_whose_package_is_refused_fails_closed(box: Box) -> None:
    box.edit_data_policy(
        SPLIT,
        """    variants:
      - {version: "1", weight: 0.5}
      - {version: "2", weight: 0.5}""",
    )
    salt = box.settings().derived_keys[Purpose.AB_ASSIGNMENT]
    with TestClient(create_app(box.settings())) as client:
        ready = client.get("/readyz").json()
        assert ready["checks"]["not_ready"] == {
            "model:demo-ranker@2": "read: PackageUnreadableError"
        }
        users = [f"u{i}" for i in range(1, 30)]
        for user in users:
            arm = assign(salt, "demo-ranker", user, arms(0.5, 0.5))
            response = client.post(
                "/v1/rank", json={"user_id": user, "item_ids": ["i1"]}, headers=box.headers("demo")
            )
            # Users of the missing arm get 503, never silently the other version.
            assert response.status_code == (200 if arm == 0 else 503)


def test_a_policy_reload_that_adds_an_arm_loads_it(box: Box) -> None:
    box.pack("2")
    salt = box.settings().derived_keys[Purpose.AB_ASSIGNMENT]
    with TestClient(create_app(box.settings())) as client:
        user = next(
            f"u{i}" for i in range(1, 100) if assign(salt, "demo-ranker", f"u{i}", arms(1, 1)) == 1
        )
        body = {"user_id": user, "item_ids": ["i1"]}
        first = client.post("/v1/rank", json=body, headers=box.headers("demo")).json()
        assert first["model"]["version"] == "1"
        box.edit_data_policy(
            SPLIT,
            """    variants:
      - {version: "1", weight: 1}
      - {version: "2", weight: 1}""",
        )
        reloaded = client.post("/v1/admin/policy/reload", headers=box.headers())
        assert reloaded.status_code == 200, reloaded.text
        after = client.post("/v1/rank", json=body, headers=box.headers("demo")).json()
        assert after["model"]["version"] == "2"
        assert after["model"]["variant"] == "B"
        assert client.get("/readyz").status_code == 200
