"""Stage 0: body limits (declared and streamed), request ids, unknown routes, metrics."""

from __future__ import annotations

from collections.abc import Callable, Iterator

from fastapi.testclient import TestClient

from gateway.app import create_app
from gateway.settings import Settings

JSON = {"Content-Type": "application/json"}


def test_declared_oversized_body_is_413(
    make_settings: Callable[..., Settings], auth: Callable[..., dict[str, str]]
) -> None:
    with TestClient(create_app(make_settings(limits={"max_body_bytes": 2048}))) as small:
        body = b'{"user_id": "u1", "item_ids": [' + b'"i1",' * 1000 + b'"i2"]}'
        response = small.post("/v1/rank", content=body, headers={**auth(), **JSON})
        assert response.status_code == 413
        assert response.headers["content-type"] == "application/problem+json"
        assert response.json()["type"] == "urn:gateway:problem:payload-too-large"
        assert response.headers["x-request-id"]


def test_streamed_oversized_body_is_413(
    make_settings: Callable[..., Settings], auth: Callable[..., dict[str, str]]
) -> None:
    def chunks() -> Iterator[bytes]:
        yield b'{"user_id": "u1", "item_ids": ['
        for _ in range(200):
            yield b'"i1",' * 10
        yield b'"i2"]}'

    with TestClient(create_app(make_settings(limits={"max_body_bytes": 2048}))) as small:
        # A generator body is sent chunked, with no Content-Length to check up front.
        response = small.post("/v1/rank", content=chunks(), headers={**auth(), **JSON})
        assert response.status_code == 413
        assert response.json()["status"] == 413


def test_request_id_is_the_gateways_and_a_safe_client_id_is_echoed(client: TestClient) -> None:
    generated = client.get("/healthz")
    assert len(generated.headers["x-request-id"]) == 32
    assert "x-client-request-id" not in generated.headers
    # The client's own id is echoed beside the gateway's, never used as the request id.
    kept = client.get("/healthz", headers={"X-Request-Id": "client-abc-123"})
    assert kept.headers["x-request-id"] != "client-abc-123"
    assert len(kept.headers["x-request-id"]) == 32
    assert kept.headers["x-client-request-id"] == "client-abc-123"
    replaced = client.get("/healthz", headers={"X-Request-Id": "bad id\twith spaces"})
    assert replaced.headers["x-request-id"] != "bad id\twith spaces"
    assert "x-client-request-id" not in replaced.headers


def test_unknown_route_and_method_are_problems(client: TestClient) -> None:
    missing = client.get("/nope")
    assert missing.status_code == 404
    assert missing.json()["type"] == "urn:gateway:problem:not-found"
    wrong = client.get("/v1/rank")
    assert wrong.status_code == 405
    assert wrong.json()["type"] == "urn:gateway:problem:method-not-allowed"


def test_metrics_count_routes_stages_and_inference(
    client: TestClient, auth: Callable[..., dict[str, str]]
) -> None:
    ok = client.post(
        "/v1/rank",
        json={"user_id": "u1", "item_ids": ["i1", "i2", "i3"]},
        headers={**auth(), **JSON},
    )
    assert ok.status_code == 200
    text = client.get("/metrics").text
    assert 'gateway_requests_total{method="POST",route="/v1/rank",status="200"}' in text
    for stage in ("authenticate", "authorize", "decode", "rank", "respond"):
        assert f'gateway_stage_duration_seconds_count{{stage="{stage}"}}' in text
    assert 'gateway_model_inference_seconds_count{model="demo-ranker"}' in text
    assert 'gateway_model_batch_rows_bucket{le="5.0",model="demo-ranker"}' in text
    # Paths with ids never become labels.
    client.get("/no/such/path/123")
    assert "/no/such/path/123" not in client.get("/metrics").text


def test_health_and_readiness(client: TestClient) -> None:
    assert client.get("/healthz").json() == {"status": "ok"}
    ready = client.get("/readyz")
    assert ready.status_code == 200
    assert ready.json()["checks"]["model"] == "ok"


def test_missing_model_is_not_ready_and_refuses(
    make_settings: Callable[..., Settings], auth: Callable[..., dict[str, str]]
) -> None:
    broken = make_settings(model={"version": "absent"})
    with TestClient(create_app(broken)) as not_ready:
        assert not_ready.get("/readyz").status_code == 503
        assert not_ready.get("/v2/health/ready").status_code == 503
        response = not_ready.post(
            "/v1/rank", json={"user_id": "u1", "item_ids": ["i1"]}, headers={**auth(), **JSON}
        )
        assert response.status_code == 503
        assert response.json()["type"] == "urn:gateway:problem:model-not-ready"
        assert "absent" not in response.text  # the path is for the log, not the client
