"""Request ids are the gateway's: unique, unpredictable, the only lookup key of the audit log.

A client's own `X-Request-Id` is kept as `client_request_id` when safe to log, echoed
in `X-Client-Request-Id`, and never found by a lookup. Attacker's side: a client that
sends one id three times cannot shadow the record an auditor looks up; one that sends
a newline, a NUL or a 1000-character id gets nothing of it into the log or a header.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from starlette.types import Message, Receive, Scope, Send

from audit.log import AuditLog
from audit.merkle import leaf_hash
from audit.record import parse
from audit.sql_store import DuplicateRequestIdError
from audit.sqlite_store import SqliteAuditStore
from audit.stage import AuditStage, transport_refusal_recorder
from audit.store import PendingRecord
from gateway.app import create_app
from gateway.metrics import Metrics
from gateway.pipeline import Pipeline, RequestContext
from gateway.settings import Settings
from gateway.transport import TransportMiddleware, safe_client_request_id
from tests.audit.conftest import (  # the PostgreSQL fixtures, for make_backend
    BACKENDS,
    make_backend,
    make_log,
    pg_dsn,  # noqa: F401
    pg_schema,  # noqa: F401
)

JSON = {"Content-Type": "application/json"}
GATEWAY_ID = re.compile(r"[0-9a-f]{32}")
RANK = {"user_id": "u1", "item_ids": ["i1", "i2"]}


@pytest.fixture
def app_client(make_settings: Callable[..., Settings], tmp_path: Path) -> Iterator[TestClient]:
    settings = make_settings(audit={"sqlite_path": str(tmp_path / "audit.db")})
    with TestClient(create_app(settings)) as test_client:
        yield test_client


def audit_of(client: TestClient) -> AuditLog:
    audit_log = client.app.state.components.audit  # type: ignore[attr-defined]
    assert isinstance(audit_log, AuditLog)
    return audit_log


def records_with(client: TestClient, field: str, value: object) -> list[dict[str, Any]]:
    """Every stored record whose `field` equals `value` (a full scan, as an auditor's)."""
    found = []
    for leaf in audit_of(client).store.iter_leaves():
        assert leaf.payload is not None
        record = parse(leaf.payload)
        if record.get(field) == value:
            found.append(record)
    return found


def test_one_client_id_three_times_gives_three_ids_each_finding_its_own_record(
    app_client: TestClient, auth: Callable[..., dict[str, str]]
) -> None:
    headers = {**auth(), **JSON, "X-Request-Id": "dup-id"}
    responses = [
        app_client.post("/v1/rank", json={"user_id": f"u{i}", "item_ids": ["i1"]}, headers=headers)
        for i in range(3)
    ]
    ids = [r.headers["x-request-id"] for r in responses]
    assert len(set(ids)) == 3
    assert all(GATEWAY_ID.fullmatch(i) for i in ids)
    assert all(r.headers["x-client-request-id"] == "dup-id" for r in responses)
    assert [r.json()["request_id"] for r in responses] == ids
    reader = auth(("audit:read", "audit:export"), client_id="operator")
    indices = set()
    for i, request_id in enumerate(ids):
        found = app_client.get(f"/v1/audit/records/{request_id}", headers=reader)
        assert found.status_code == 200, found.text
        body = found.json()
        assert body["record"]["request_id"] == request_id
        assert body["record"]["client_request_id"] == "dup-id"
        assert body["record"]["personal"] == {"user_id": f"u{i}"}  # its own, not the first
        proof = app_client.get(
            "/v1/audit/proofs/inclusion", params={"request_id": request_id}, headers=reader
        )
        assert proof.json()["index"] == body["index"]
        indices.add(body["index"])
    assert len(indices) == 3
    # The client's id is no key: it finds nothing, whichever record came first.
    assert app_client.get("/v1/audit/records/dup-id", headers=reader).status_code == 404
    by_client_id = app_client.get(
        "/v1/audit/proofs/inclusion", params={"request_id": "dup-id"}, headers=reader
    )
    assert by_client_id.status_code == 404
    assert len(records_with(app_client, "client_request_id", "dup-id")) == 3


@pytest.mark.parametrize(
    "unsafe",
    [
        "line\nbreak",
        "forged\r\nX-Admin: 1",
        "nul\x00byte",
        "x" * 1000,
        "x" * 65,
        "with space",
        'quote"',
        "tab\there",
        "",
    ],
    ids=["newline", "crlf", "nul", "1000-chars", "65-chars", "space", "quote", "tab", "empty"],
)
def test_an_unsafe_client_id_is_neither_stored_nor_logged_nor_echoed(
    app_client: TestClient,
    auth: Callable[..., dict[str, str]],
    caplog: pytest.LogCaptureFixture,
    unsafe: str,
) -> None:
    caplog.set_level(logging.DEBUG)
    headers = {**auth(), **JSON, "X-Request-Id": unsafe}
    ok = app_client.post("/v1/rank", json=RANK, headers=headers)
    refused = app_client.post("/v1/rank", json={"user_id": "u1"}, headers=headers)
    assert (ok.status_code, refused.status_code) == (200, 422)
    for response in (ok, refused):
        assert GATEWAY_ID.fullmatch(response.headers["x-request-id"])
        assert "x-client-request-id" not in response.headers
        [record] = records_with(app_client, "request_id", response.headers["x-request-id"])
        assert record["client_request_id"] is None
    if unsafe:
        payloads = b"".join(
            leaf.payload or b"" for leaf in audit_of(app_client).store.iter_leaves()
        )
        assert unsafe.encode() not in payloads
        assert unsafe not in caplog.text


def test_a_safe_client_id_is_kept_at_its_bounds(
    app_client: TestClient, auth: Callable[..., dict[str, str]]
) -> None:
    for kept in ("a", "A-z_0.9:x", "x" * 64):
        response = app_client.post(
            "/v1/rank", json=RANK, headers={**auth(), **JSON, "X-Request-Id": kept}
        )
        assert response.headers["x-client-request-id"] == kept
        [record] = records_with(app_client, "request_id", response.headers["x-request-id"])
        assert record["client_request_id"] == kept
    assert safe_client_request_id(b"ok\n") is None  # `$` would have let this through
    assert safe_client_request_id("caf\u00e9".encode()) is None


def test_transport_refusals_and_the_token_endpoint_get_gateway_ids(
    make_settings: Callable[..., Settings],
    auth: Callable[..., dict[str, str]],
    initialised: Any,
    tmp_path: Path,
) -> None:
    audit = {"sqlite_path": str(tmp_path / "refusals.db")}
    small = make_settings(limits={"max_body_bytes": 2048}, audit=audit)
    with TestClient(create_app(small)) as client:
        too_large = client.post(
            "/v1/rank",
            content=b"{" + b" " * 5000 + b"}",
            headers={**auth(), **JSON, "X-Request-Id": "mine-413"},
        )
        assert too_large.status_code == 413
        secret = initialised.client_secrets["demo"].read_text().strip()
        token = client.post(
            "/oauth/token",
            data={"grant_type": "client_credentials"},
            auth=("demo", secret),
            headers={"X-Request-Id": "mine-token"},
        )
        assert token.status_code == 200
        for response, mine, action in (
            (too_large, "mine-413", "transport"),
            (token, "mine-token", "token.issue"),
        ):
            request_id = response.headers["x-request-id"]
            assert GATEWAY_ID.fullmatch(request_id)
            assert response.headers["x-client-request-id"] == mine
            [record] = records_with(client, "request_id", request_id)
            assert (record["action"], record["client_request_id"]) == (action, mine)
            assert records_with(client, "request_id", mine) == []
    with TestClient(
        create_app(make_settings(limits={"request_timeout_s": 1e-9}, audit=audit))
    ) as slow:
        timed_out = slow.post(
            "/v1/rank", json=RANK, headers={**auth(), **JSON, "X-Request-Id": "mine-503"}
        )
        assert timed_out.status_code == 503
        request_id = timed_out.headers["x-request-id"]
        assert GATEWAY_ID.fullmatch(request_id)
        [record] = records_with(slow, "request_id", request_id)
        assert (record["outcome"], record["client_request_id"]) == ("timeout", "mine-503")


class _SlowStage:
    """A stage that outlives the request's time limit (a slow model, a stuck store)."""

    name = "rank"

    async def __call__(self, ctx: RequestContext) -> RequestContext:
        await asyncio.sleep(5)
        return ctx


@pytest.mark.asyncio
async def test_a_timeout_inside_the_pipeline_leaves_one_record_not_a_success_too(
    tmp_path: Path,
) -> None:
    """Stage 0 records the timeout; stage 8, run while the pipeline is cancelled, must not
    add a second record under the same id claiming success (it would also make the id
    ambiguous, and lookups refuse ambiguous ids)."""
    store = SqliteAuditStore(tmp_path / "audit.db")
    audit_log = make_log(store)
    pipeline = Pipeline([_SlowStage()], final=[AuditStage(audit_log, time.time)])

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        ctx = RequestContext(
            request_id=scope["state"]["request_id"], action="rank", route="/slow", headers={}
        )
        await pipeline.run(ctx)

    middleware = TransportMiddleware(
        app,
        metrics=Metrics(),
        max_body_bytes=1024,
        timeout_s=0.05,
        on_refusal=transport_refusal_recorder(audit_log, time.time),
    )
    sent: list[Message] = []

    async def receive() -> Message:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: Message) -> None:
        sent.append(message)

    scope: Scope = {"type": "http", "method": "POST", "path": "/slow", "headers": []}
    try:
        await middleware(scope, receive, send)
        assert sent[0]["status"] == 503
        request_id = dict(sent[0]["headers"])[b"x-request-id"].decode()
        records = [
            parse(leaf.payload or b"")
            for leaf in store.iter_leaves()
            if leaf.request_id == request_id
        ]
        assert [(r["status"], r["outcome"]) for r in records] == [(503, "timeout")]
        assert store.index_of(request_id) == 0
    finally:
        await audit_log.close()
        store.close()


def test_a_request_id_naming_two_records_is_refused_not_answered_with_the_first(
    make_settings: Callable[..., Settings], auth: Callable[..., dict[str, str]], tmp_path: Path
) -> None:
    """An old log (clients chose ids) or a damaged one may hold an id twice: the store's
    lookup names both records, and the API says so instead of picking one."""
    from audit.record import request_record

    path = tmp_path / "old.db"
    settings = make_settings(audit={"sqlite_path": str(path)})
    with TestClient(create_app(settings)) as client:
        audit_log = audit_of(client)
        duplicates = []
        for status in (200, 403):
            record = request_record(
                ts_ms=audit_log.now_ms(),
                request_id="old-client-id",
                route="/v1/rank",
                action="rank",
                client_id="demo",
                issuer=None,
                subject=None,
                status=status,
                outcome="ok",
                policy_ids=[],
                model=None,
                latency_us=1,
                sealed=None,
            )
            duplicates.append(client.portal.call(audit_log.append, record))  # type: ignore[union-attr]
        with pytest.raises(DuplicateRequestIdError, match="records"):
            audit_log.store.index_of("old-client-id")
        reader = auth(("audit:read",), client_id="operator")
        for response in (
            client.get("/v1/audit/records/old-client-id", headers=reader),
            client.get(
                "/v1/audit/proofs/inclusion",
                params={"request_id": "old-client-id"},
                headers=reader,
            ),
        ):
            assert response.status_code == 500
            assert response.headers["content-type"] == "application/problem+json"
            assert "more than one record" in response.json()["detail"]
            assert "look the records up by index" in response.json()["detail"]
        # By index, each of them is still reachable and provable.
        for index in duplicates:
            proof = client.get(
                "/v1/audit/proofs/inclusion", params={"index": index}, headers=reader
            )
            assert proof.status_code == 200, proof.text


@pytest.mark.parametrize("kind", BACKENDS)
def test_the_store_lookup_names_an_ambiguous_id_on_every_backend(
    kind: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    store = make_backend(kind, tmp_path, request).open_store()
    try:
        for n, request_id in enumerate(["twice", "once", "twice"]):
            payload = f'{{"n":{n}}}'.encode()
            store.append_batch([PendingRecord(payload, leaf_hash(payload), request_id, n)])
        assert store.index_of("once") == 1
        assert store.index_of("never") is None
        with pytest.raises(DuplicateRequestIdError, match="records 0 and 2"):
            store.index_of("twice")
    finally:
        store.close()


def test_a_bug_in_any_route_is_a_problem_500_that_carries_the_request_id(
    make_settings: Callable[..., Settings],
) -> None:
    """Stage 0 runs in front of FastAPI's own layers (gateway.fast_routes.GatewayApp): the
    500 Starlette's error layer sends for an unexpected exception gets the request id and
    counts in the request metrics, and nothing of the exception reaches the client."""
    app = create_app(make_settings())

    async def broken() -> None:
        raise RuntimeError("internal detail 7f3a")

    app.add_api_route("/v1/broken", broken, methods=["GET"])
    with TestClient(app, raise_server_exceptions=False) as client:
        response = client.get("/v1/broken")
        metrics = client.get("/metrics").text
    assert response.status_code == 500
    assert response.headers["content-type"] == "application/problem+json"
    assert GATEWAY_ID.fullmatch(response.headers["x-request-id"])
    assert response.json()["instance"] == "urn:request:" + response.headers["x-request-id"]
    assert "7f3a" not in response.text
    assert re.search(r'gateway_requests_total\{[^}]*status="500"[^}]*\} 1', metrics), metrics
