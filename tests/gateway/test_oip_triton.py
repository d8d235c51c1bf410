"""Triton's extensions on /v2 (statistics, model configuration, repository index): scope
`admin`, through the pipeline (so audited), bodies parsed only after authentication.
tests/clients/test_triton_http.py drives the same endpoints with the stock client."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest
from fastapi.testclient import TestClient

from gateway.settings import Settings
from models.features import FeatureStore
from tests.gateway.test_oip import tensors

INDEX = "/v2/repository/index"


@pytest.fixture(scope="module")
def feeds(settings: Settings) -> dict[str, np.ndarray]:
    store = FeatureStore.load(settings.resolve(settings.model.features_path))
    return store.inputs_for("u3", list(store.item_ids[10:14]))


ADMIN = ("admin",)


def admin(auth: Callable[..., dict[str, str]]) -> dict[str, str]:
    return auth(ADMIN, client_id="operator")


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/v2/models/stats"),
        ("GET", "/v2/models/demo-ranker/stats"),
        ("GET", "/v2/models/demo-ranker/versions/1/stats"),
        ("GET", "/v2/models/demo-ranker/config"),
        ("GET", "/v2/models/demo-ranker/versions/1/config"),
        ("POST", INDEX),
    ],
)
def test_admin_scope_is_needed(
    client: TestClient, auth: Callable[..., dict[str, str]], method: str, path: str
) -> None:
    assert client.request(method, path).status_code == 401
    denied = client.request(method, path, headers=auth(("infer",)))
    assert denied.status_code == 403
    assert 'scope="admin"' in denied.headers["www-authenticate"]
    allowed = client.request(method, path, headers=admin(auth))
    assert allowed.status_code == 200, allowed.text


@pytest.mark.parametrize(
    "path",
    [
        "/v2/models/other/stats",
        "/v2/models/demo-ranker/versions/9/stats",
        "/v2/models/other/config",
        "/v2/models/demo-ranker/versions/9/config",
    ],
)
def test_unknown_models_and_versions_are_404(
    client: TestClient, auth: Callable[..., dict[str, str]], path: str
) -> None:
    response = client.get(path, headers=admin(auth))
    assert response.status_code == 404
    assert set(response.json()) == {"error"}


def test_the_index_lists_the_served_version(
    client: TestClient, auth: Callable[..., dict[str, str]]
) -> None:
    entry = {"name": "demo-ranker", "version": "1", "state": "READY", "reason": ""}
    assert entry in client.post(INDEX, headers=admin(auth)).json()
    ready = client.post(INDEX, json={"ready": True}, headers=admin(auth)).json()
    assert ready
    assert all(e["state"] == "READY" for e in ready)


@pytest.mark.parametrize(
    ("body", "headers", "status"),
    [
        (b'{"ready": "yes"}', {"Content-Type": "application/json"}, 400),
        (b'{"ready": true, "more": 1}', {"Content-Type": "application/json"}, 400),
        (b"{", {}, 400),
        (b'{"ready": true}', {"Content-Type": "text/plain"}, 415),
    ],
)
def test_a_bad_index_body_is_a_typed_error(
    client: TestClient,
    auth: Callable[..., dict[str, str]],
    body: bytes,
    headers: dict[str, str],
    status: int,
) -> None:
    response = client.post(INDEX, content=body, headers={**admin(auth), **headers})
    assert response.status_code == status
    assert set(response.json()) == {"error"}
    # Not parsed before authentication: anonymous callers learn nothing from the body.
    assert client.post(INDEX, content=body, headers=headers).status_code == 401


def test_statistics_move_with_inference(
    client: TestClient, auth: Callable[..., dict[str, str]], feeds: dict[str, np.ndarray]
) -> None:
    def stats() -> dict[str, int]:
        (entry,) = client.get("/v2/models/demo-ranker/stats", headers=admin(auth)).json()[
            "model_stats"
        ]
        return {
            "executions": entry["execution_count"],
            "rows": entry["inference_count"],
            "fail": entry["inference_stats"]["fail"]["count"],
        }

    before = stats()
    refused = client.post("/v2/models/demo-ranker/infer", json={"inputs": []})
    assert refused.status_code == 401
    after = stats()
    assert after["fail"] == before["fail"] + 1
    assert after["executions"] == before["executions"]
    assert after["rows"] == before["rows"]
    answered = client.post(
        "/v2/models/demo-ranker/infer",
        json={"inputs": tensors(feeds)},
        headers=auth(("infer", "infer:raw")),  # raw tensors: the trusted scope
    )
    assert answered.status_code == 200, answered.text
    ran = stats()
    assert ran["executions"] == after["executions"] + 1
    assert ran["rows"] == after["rows"] + 4
