"""`/v1/rank` against the real app, checked against direct onnxruntime on the same features
(marked as the default bundle's watermark marks them: tests/served_scores.py)."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest
from fastapi.testclient import TestClient

from gateway.settings import Settings
from models.features import FeatureStore
from tests.served_scores import assert_served, onnx_scores, served_scores

JSON = {"Content-Type": "application/json"}


@pytest.fixture(scope="module")
def store(settings: Settings) -> FeatureStore:
    return FeatureStore.load(settings.resolve(settings.model.features_path))


def direct_scores(
    settings: Settings, store: FeatureStore, user: str, items: list[str]
) -> np.ndarray:
    """What the gateway serves for the user's items, before perturbation and rounding."""
    return served_scores(settings, store.inputs_for(user, items))


def test_ranking_matches_direct_onnxruntime(
    client: TestClient,
    auth: Callable[..., dict[str, str]],
    settings: Settings,
    store: FeatureStore,
    grant_consent: Callable[..., None],
) -> None:
    grant_consent("u7")
    items = list(store.item_ids[:100])
    response = client.post(
        "/v1/rank", json={"user_id": "u7", "item_ids": items}, headers={**auth(), **JSON}
    )
    assert response.status_code == 200, response.text
    body = response.json()
    expected = direct_scores(settings, store, "u7", items)
    order = np.argsort(-expected, kind="stable")
    assert [it["item_id"] for it in body["items"]] == [items[i] for i in order]
    assert [it["rank"] for it in body["items"]] == list(range(1, 101))
    got = np.array([it["score"] for it in body["items"]])
    # The default policy bundle marks the scores (the watermark: one shift for the whole
    # request, so the order is the model's own) and rounds them to 3 decimals; ids alone
    # are not perturbed (stage 7 perturbs only feature values the client chose).
    assert_served(got, expected[order], perturbed=False)
    plain = onnx_scores(store.inputs_for("u7", items))
    assert [items[i] for i in np.argsort(-plain, kind="stable")] == [items[i] for i in order]
    assert body["personalized"] is True
    model = body["model"]
    assert (model["name"], model["version"]) == ("demo-ranker", "1")
    assert model["package_digest"].startswith("sha256:")  # the signed package served
    assert body["request_id"] == response.headers["x-request-id"]


def test_top_k_and_cold_start(
    client: TestClient, auth: Callable[..., dict[str, str]], settings: Settings, store: FeatureStore
) -> None:
    items = list(store.item_ids[200:230])
    response = client.post(
        "/v1/rank",
        json={"user_id": "someone-new", "item_ids": items, "top_k": 5, "context": {"query": "x"}},
        headers={**auth(), **JSON},
    )
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["personalized"] is False
    assert len(body["items"]) == 5
    expected = direct_scores(settings, store, "someone-new", items)
    assert body["items"][0]["item_id"] == items[int(np.argmax(expected))]


def test_different_users_get_different_rankings(
    client: TestClient,
    auth: Callable[..., dict[str, str]],
    store: FeatureStore,
    grant_consent: Callable[..., None],
) -> None:
    grant_consent("u1", "u2", "u3")
    items = list(store.item_ids[:50])
    orders = {
        tuple(
            it["item_id"]
            for it in client.post(
                "/v1/rank", json={"user_id": user, "item_ids": items}, headers={**auth(), **JSON}
            ).json()["items"]
        )
        for user in ("u1", "u2", "u3")
    }
    assert len(orders) > 1


@pytest.mark.parametrize(
    ("body", "status", "slug"),
    [
        (b'{"user_id": "u1", "item_ids": ["i1"', 400, "malformed-request"),
        (b"not json at all", 400, "malformed-request"),
        (b'{"user_id": 5, "item_ids": ["i1"]}', 422, "invalid-request"),
        (b'{"user_id": "u1", "item_ids": "i1"}', 422, "invalid-request"),
        (b'{"user_id": "u1", "item_ids": []}', 422, "invalid-request"),
        (b'{"user_id": "u1", "item_ids": ["i1", "i1"]}', 422, "invalid-request"),
        (b'{"user_id": "u1", "item_ids": ["i1"], "top_k": 0}', 422, "invalid-request"),
        (b'{"user_id": "u1", "item_ids": ["i1"], "extra": 1}', 422, "invalid-request"),
        (
            b'{"user_id": "u1", "item_ids": ["i1"], "context": {"locale": "<script>"}}',
            422,
            "invalid-request",
        ),
        (b'{"user_id": "u1", "item_ids": ["i1", "nope-1", "nope-2"]}', 422, "unknown-items"),
    ],
)
def test_bad_input_is_a_typed_problem(
    client: TestClient, auth: Callable[..., dict[str, str]], body: bytes, status: int, slug: str
) -> None:
    response = client.post("/v1/rank", content=body, headers={**auth(), **JSON})
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/problem+json"
    problem = response.json()
    assert problem["type"] == f"urn:gateway:problem:{slug}"
    assert problem["status"] == status
    assert "Traceback" not in response.text


def test_unknown_items_are_pointed_at_not_echoed(
    client: TestClient, auth: Callable[..., dict[str, str]]
) -> None:
    response = client.post(
        "/v1/rank",
        json={"user_id": "u1", "item_ids": ["i1", "ghost-9"]},
        headers={**auth(), **JSON},
    )
    assert response.status_code == 422
    assert response.json()["unknown_item_positions"] == [1]
    assert "ghost-9" not in response.text


def test_validation_errors_do_not_echo_values(
    client: TestClient, auth: Callable[..., dict[str, str]]
) -> None:
    secret_value = "alice@example.com-4111111111111111"
    response = client.post(
        "/v1/rank",
        json={"user_id": {"email": secret_value}, "item_ids": ["i1"]},
        headers={**auth(), **JSON},
    )
    assert response.status_code == 422
    assert secret_value not in response.text


def test_too_many_candidates(
    make_settings: Callable[..., Settings], mint: Callable[..., str], store: FeatureStore
) -> None:
    from gateway.app import create_app

    with TestClient(create_app(make_settings(limits={"max_candidates": 10}))) as small:
        response = small.post(
            "/v1/rank",
            json={"user_id": "u1", "item_ids": list(store.item_ids[:11])},
            headers={"Authorization": f"Bearer {mint()}", **JSON},
        )
        assert response.status_code == 422
        assert "at most 10" in response.json()["detail"]
        ok = small.post(
            "/v1/rank",
            json={"user_id": "u1", "item_ids": list(store.item_ids[:10])},
            headers={"Authorization": f"Bearer {mint()}", **JSON},
        )
        assert ok.status_code == 200


def test_wrong_media_type(client: TestClient, auth: Callable[..., dict[str, str]]) -> None:
    response = client.post(
        "/v1/rank",
        content=b'{"user_id": "u1", "item_ids": ["i1"]}',
        headers={**auth(), "Content-Type": "text/plain"},
    )
    assert response.status_code == 415


def test_anonymous_callers_learn_nothing_from_validation(client: TestClient) -> None:
    response = client.post("/v1/rank", content=b"{broken", headers=JSON)
    assert response.status_code == 401
