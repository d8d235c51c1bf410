"""Stage 8 through the real app: every request leaves one durable record, or is refused."""

from __future__ import annotations

import base64
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient

from audit.checkpoint import NoteVerifier, verify_checkpoint
from audit.log import AuditLog
from audit.merkle import verify_consistency, verify_inclusion
from audit.record import parse
from audit.verify import verify_store
from gateway.app import create_app
from gateway.settings import Settings

JSON = {"Content-Type": "application/json"}


@pytest.fixture
def app_client(settings: Settings) -> Iterator[TestClient]:
    with TestClient(create_app(settings)) as test_client:
        yield test_client


def audit_of(client: TestClient) -> AuditLog:
    audit_log = client.app.state.components.audit  # type: ignore[attr-defined]
    assert isinstance(audit_log, AuditLog)
    return audit_log


def record_for(client: TestClient, request_id: str) -> dict[str, Any]:
    audit_log = audit_of(client)
    index = audit_log.store.index_of(request_id)
    assert index is not None, f"no audit record for {request_id}"
    payload = audit_log.store.leaf(index).payload
    assert payload is not None
    return parse(payload)


def test_allowed_and_refused_requests_are_each_recorded_once(
    app_client: TestClient, auth: Callable[..., dict[str, str]]
) -> None:
    cases = [
        (
            app_client.post(
                "/v1/rank",
                json={"user_id": "u5", "item_ids": ["i1", "i2"]},
                headers={**auth(), **JSON},
            ),
            "allow",
            "ok",
        ),
        (
            app_client.post("/v1/rank", json={"user_id": "u5", "item_ids": ["i1"]}, headers=JSON),
            "deny",
            "invalid-token",
        ),
        (
            app_client.post(
                "/v1/rank",
                json={"user_id": "u5", "item_ids": ["i1"]},
                headers={**auth(("infer",)), **JSON},
            ),
            "deny",
            "insufficient-scope",
        ),
        (
            app_client.post(
                "/v1/rank", json={"user_id": "u5", "item_ids": ["nope"]}, headers={**auth(), **JSON}
            ),
            "refuse",
            "unknown-items",
        ),
        (app_client.get("/v2/models/demo-ranker", headers=auth()), "allow", "ok"),
    ]
    for response, decision, outcome in cases:
        # The record is durable before the response is sent: it is there right now.
        record = record_for(app_client, response.headers["x-request-id"])
        assert record["decision"] == decision
        assert record["outcome"] == outcome
        assert record["status"] == response.status_code
    ok = record_for(app_client, cases[0][0].headers["x-request-id"])
    assert ok["client_id"] == "demo"
    # The Cedar policy that permitted it, and the exact bundle it came from.
    assert ok["policy_ids"] == ["scope-rank"]
    bundle_hash = app_client.app.state.components.policy.active.content_hash  # type: ignore[attr-defined]
    assert ok["policy_bundle"] == bundle_hash
    denied = record_for(app_client, cases[2][0].headers["x-request-id"])
    assert denied["policy_bundle"] == bundle_hash
    assert ok["model"]["name"] == "demo-ranker"
    ranker = app_client.app.state.components.serving.ranker  # type: ignore[attr-defined]
    assert ok["model"]["digest"] == ranker.ref.digest
    assert "u5" not in str(ok)  # the subject appears only as a pseudonym and sealed


def test_transport_refusals_are_recorded(
    make_settings: Callable[..., Settings], auth: Callable[..., dict[str, str]]
) -> None:
    with TestClient(create_app(make_settings(limits={"max_body_bytes": 2048}))) as small:
        response = small.post(
            "/v1/rank", content=b"{" + b" " * 5000 + b"}", headers={**auth(), **JSON}
        )
        assert response.status_code == 413
        record = record_for(small, response.headers["x-request-id"])
        assert (record["action"], record["outcome"]) == ("transport", "payload-too-large")


def test_append_failure_fails_the_request_closed(
    make_settings: Callable[..., Settings], auth: Callable[..., dict[str, str]], tmp_path: Any
) -> None:
    settings = make_settings(audit={"sqlite_path": str(tmp_path / "audit.db")})
    with TestClient(create_app(settings)) as client:
        body = {"user_id": "u9", "item_ids": ["i1"]}
        assert client.post("/v1/rank", json=body, headers={**auth(), **JSON}).status_code == 200
        audit_of(client).store.close()  # the database goes away under the gateway
        response = client.post("/v1/rank", json=body, headers={**auth(), **JSON})
        assert response.status_code == 503
        assert response.json()["type"] == "urn:gateway:problem:audit-unavailable"
        assert "items" not in response.text


def test_proofs_and_checkpoint_through_the_api(
    app_client: TestClient, auth: Callable[..., dict[str, str]]
) -> None:
    ids = [
        app_client.post(
            "/v1/rank", json={"user_id": f"u{i}", "item_ids": ["i3"]}, headers={**auth(), **JSON}
        ).headers["x-request-id"]
        for i in range(5)
    ]
    reader = auth(client_id="operator")
    verifier = NoteVerifier.from_verifier_key(audit_of(app_client).signer.verifier_key())
    first = verify_checkpoint(
        app_client.get("/v1/audit/checkpoint", headers=reader).content, verifier
    )
    proof = app_client.get(
        "/v1/audit/proofs/inclusion", params={"request_id": ids[3]}, headers=reader
    ).json()
    checkpoint = verify_checkpoint(proof["checkpoint"].encode(), verifier)
    verify_inclusion(
        base64.b64decode(proof["leaf_hash"]),
        proof["index"],
        checkpoint.size,
        [base64.b64decode(h) for h in proof["proof"]],
        checkpoint.root,
    )
    consistency = app_client.get(
        "/v1/audit/proofs/consistency",
        params={"first": first.size, "second": checkpoint.size},
        headers=reader,
    ).json()
    verify_consistency(
        first.size,
        checkpoint.size,
        first.root,
        checkpoint.root,
        [base64.b64decode(h) for h in consistency["proof"]],
    )
    # Demo lacks audit:read; bad parameters are typed problems.
    assert app_client.get("/v1/audit/checkpoint", headers=auth()).status_code == 403
    bad = app_client.get(
        "/v1/audit/proofs/consistency", params={"first": "x", "second": 2}, headers=reader
    )
    assert bad.status_code == 422
    assert verify_store(audit_of(app_client).store, verifier).size >= 5


def test_sealed_fields_open_only_with_export_scope(
    app_client: TestClient, auth: Callable[..., dict[str, str]], mint: Callable[..., str]
) -> None:
    request_id = app_client.post(
        "/v1/rank", json={"user_id": "u77", "item_ids": ["i1"]}, headers={**auth(), **JSON}
    ).headers["x-request-id"]
    reader_only = {"Authorization": f"Bearer {mint('operator', ('audit:read',))}"}
    exporter = auth(client_id="operator")
    sealed = app_client.get(f"/v1/audit/records/{request_id}", headers=reader_only).json()
    assert "personal" not in sealed["record"]
    assert "u77" not in str(sealed)
    opened = app_client.get(f"/v1/audit/records/{request_id}", headers=exporter).json()
    assert opened["record"]["personal"] == {"user_id": "u77"}
    missing = app_client.get("/v1/audit/records/does-not-exist", headers=exporter)
    assert missing.status_code == 404


@pytest.mark.asyncio
async def test_erasure_keeps_the_log_verifiable(settings: Settings) -> None:
    from audit.factory import open_audit_log

    audit_log = open_audit_log(settings)
    try:
        key = await audit_log.subject_key(None, "erase-me")
        from audit.record import request_record
        from audit.subjects import SubjectKeys

        record = request_record(
            ts_ms=audit_log.now_ms(),
            request_id="erase-1",
            route="/v1/rank",
            action="rank",
            client_id="demo",
            issuer=None,
            subject=key.pseudonym,
            status=200,
            outcome="ok",
            policy_ids=[],
            model=None,
            latency_us=1,
            sealed=SubjectKeys.seal(key, "erase-1", {"user_id": "erase-me"}),
        )
        index = await audit_log.append(record)
        payload = audit_log.store.leaf(index).payload
        assert payload is not None
        assert audit_log.open_record(payload, unseal=True)["personal"] == {"user_id": "erase-me"}
        assert await audit_log.erase_subject(None, "erase-me") is True
        assert audit_log.open_record(payload, unseal=True)["personal"] == "erased"
        verify_store(audit_log.store, audit_log.verifier)
        # A new request for the same person starts a new, unlinkable pseudonym.
        again = await audit_log.subject_key(None, "erase-me")
        assert again.pseudonym != key.pseudonym
    finally:
        await audit_log.close()
        audit_log.store.close()


@pytest.mark.asyncio
async def test_retention_purges_payloads_and_keeps_proofs(
    make_settings: Callable[..., Settings], tmp_path: Any
) -> None:
    from audit.factory import open_audit_log
    from audit.merkle import verify_inclusion
    from audit.record import KIND_RETENTION, event_record

    now = [1_700_000_000.0]
    settings = make_settings(audit={"sqlite_path": str(tmp_path / "retention.db")})
    audit_log = open_audit_log(settings, clock=lambda: now[0])
    try:
        old = [
            await audit_log.append(event_record("test", audit_log.now_ms(), n=i)) for i in range(5)
        ]
        now[0] += 10 * 86_400
        new = await audit_log.append(event_record("test", audit_log.now_ms(), n=99))
        purged = await audit_log.purge_before(audit_log.now_ms() - 7 * 86_400_000)
        assert purged == len(old)
        assert all(audit_log.store.leaf(i).payload is None for i in old)
        assert audit_log.store.leaf(new).payload is not None
        last = audit_log.store.leaf(audit_log.store.size() - 1).payload
        assert last is not None
        assert parse(last)["kind"] == KIND_RETENTION
        report = verify_store(audit_log.store, audit_log.verifier)
        assert report.purged_payloads == len(old)
        checkpoint = audit_log.publish_checkpoint()
        inclusion = audit_log.inclusion(old[0], checkpoint)
        verify_inclusion(
            inclusion.leaf_hash, old[0], checkpoint.size, inclusion.proof, checkpoint.root
        )
    finally:
        await audit_log.close()
        audit_log.store.close()


def test_export_streams_a_bundle_that_verifies_offline(
    app_client: TestClient, auth: Callable[..., dict[str, str]], tmp_path: Any
) -> None:
    from audit.bundle import verify_bundle

    for i in range(3):
        app_client.post(
            "/v1/rank", json={"user_id": f"x{i}", "item_ids": ["i1"]}, headers={**auth(), **JSON}
        )
    exporter = auth(client_id="operator")
    response = app_client.get(
        "/v1/audit/export", params={"from": 0, "to": 2**45, "subject": "x1"}, headers=exporter
    )
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/zip"
    bundle = tmp_path / "export.zip"
    bundle.write_bytes(response.content)
    key = audit_of(app_client).signer.verifier_key()
    report = verify_bundle(bundle, pubkey=key)
    assert report.records == 1
    assert (
        app_client.get("/v1/audit/export", params={"from": 0, "to": 1}, headers=auth()).status_code
        == 403
    )
    bad = app_client.get("/v1/audit/export", params={"from": "soon", "to": 1}, headers=exporter)
    assert bad.status_code == 422
    unknown = app_client.get(
        "/v1/audit/export", params={"from": 0, "to": 1, "subject": "nobody"}, headers=exporter
    )
    assert unknown.status_code == 404


def test_records_carry_the_status_of_route_work_after_authorization(
    app_client: TestClient, auth: Callable[..., dict[str, str]]
) -> None:
    """A 404 or 422 from a route's own work is what the audit record says, not 200."""
    reader = auth(client_id="operator")
    cases = [
        (app_client.get("/v1/audit/records/not-a-request", headers=reader), 404, "not-found"),
        (
            app_client.get(
                "/v1/audit/proofs/consistency", params={"first": 0, "second": 1}, headers=reader
            ),
            422,
            "invalid-request",
        ),
        (app_client.get("/v2/models/other-model", headers=auth()), 404, "not-found"),
        (
            app_client.post("/v2/models/other-model/infer", json={}, headers=auth()),
            404,
            "not-found",
        ),
    ]
    for response, status, outcome in cases:
        assert response.status_code == status
        record = record_for(app_client, response.headers["x-request-id"])
        assert (record["status"], record["outcome"], record["decision"]) == (
            status,
            outcome,
            "refuse",
        )


def test_token_issuance_and_failed_client_auth_are_recorded(
    app_client: TestClient, initialised: Any
) -> None:
    secret = initialised.client_secrets["demo"].read_text().strip()
    granted = app_client.post(
        "/oauth/token", data={"grant_type": "client_credentials"}, auth=("demo", secret)
    )
    assert granted.status_code == 200
    issued = record_for(app_client, granted.headers["x-request-id"])
    assert (issued["action"], issued["client_id"], issued["outcome"]) == (
        "token.issue",
        "demo",
        "ok",
    )
    refused = app_client.post(
        "/oauth/token", data={"grant_type": "client_credentials"}, auth=("demo", "wrong")
    )
    assert refused.status_code == 401
    failed = record_for(app_client, refused.headers["x-request-id"])
    assert (failed["client_id"], failed["outcome"], failed["decision"]) == (
        None,
        "invalid_client",
        "deny",
    )
    assert "wrong" not in str(failed)
