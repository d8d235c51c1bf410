"""Tenant-scoped audit API, tried from the other tenant's side.

Tenant t1's client makes requests about its user u42. A client of tenant t2 holding
`audit:read audit:export` (and the subject scopes) then tries everything an attacker
would: read t1's records by request id, prove them by request id and by index,
export them (with and without naming t1), and reach t1's u42 through the subject
endpoints. Each fails without leaking: another tenant's record is answered exactly
as a missing one. Cross-tenant reading is the bundle's decision (`audit:all-tenants`,
held by no default client), tried both ways. Tokens come from the embedded issuer,
for clients configured with a tenant.
"""

from __future__ import annotations

import io
import json
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from pydantic import SecretStr

from audit.bundle import verify_bundle
from audit.log import AuditLog
from audit.record import parse
from gateway.app import create_app
from gateway.settings import ClientConfig, Settings
from security.issuer import EmbeddedIssuer

JSON = {"Content-Type": "application/json"}
ITEMS = ["i1", "i2"]
EVERYTHING: dict[str, int | str] = {"from": 0, "to": 2**45}
AUDIT = ("audit:read", "audit:export")
SUBJECT = ("subject:read", "subject:erase")


@pytest.fixture
def api(make_settings: Callable[..., Settings], tmp_path: Path) -> Iterator[TestClient]:
    settings = make_settings(audit={"sqlite_path": str(tmp_path / "audit.db")})
    with TestClient(create_app(settings)) as client:
        yield client


@pytest.fixture
def token(issuer: EmbeddedIssuer) -> Callable[..., dict[str, str]]:
    """Bearer headers for a client of the embedded issuer configured with `tenant`."""

    def make(client_id: str, tenant: str | None, *scopes: str) -> dict[str, str]:
        client = ClientConfig(
            client_id=client_id, secret_hash=SecretStr("unused"), scopes=scopes, tenant=tenant
        )
        return {"Authorization": f"Bearer {issuer.mint(client)['access_token']}"}

    return make


@dataclass
class World:
    api: TestClient
    t1: dict[str, str]  # tenant t1: rank, audit and subject scopes
    t2: dict[str, str]  # tenant t2: the same scopes
    operator: dict[str, str]  # no tenant (as the embedded issuer's default clients)
    t1_ids: list[str]
    operator_id: str


@pytest.fixture
def world(api: TestClient, token: Callable[..., dict[str, str]]) -> World:
    t1 = token("t1-app", "t1", "rank", *AUDIT, *SUBJECT)
    t2 = token("t2-app", "t2", "rank", *AUDIT, *SUBJECT)
    operator = token("operator", None, "rank", *AUDIT, *SUBJECT)
    ids = []
    for _ in range(3):
        ranked = api.post(
            "/v1/rank", json={"user_id": "u42", "item_ids": ITEMS}, headers={**t1, **JSON}
        )
        assert ranked.status_code == 200, ranked.text
        ids.append(ranked.headers["x-request-id"])
    mine = api.post(
        "/v1/rank", json={"user_id": "u7", "item_ids": ITEMS}, headers={**operator, **JSON}
    )
    assert mine.status_code == 200
    # t2 has a user of its own, so its exports have something of its own to open.
    own = api.post("/v1/rank", json={"user_id": "u9", "item_ids": ITEMS}, headers={**t2, **JSON})
    assert own.status_code == 200
    return World(api, t1, t2, operator, ids, mine.headers["x-request-id"])


def audit_of(client: TestClient) -> AuditLog:
    audit_log = client.app.state.components.audit  # type: ignore[attr-defined]
    assert isinstance(audit_log, AuditLog)
    return audit_log


def stored(client: TestClient, request_id: str) -> tuple[int, dict[str, Any]]:
    store = audit_of(client).store
    index = store.index_of(request_id)
    assert index is not None
    payload = store.leaf(index).payload
    assert payload is not None
    return index, parse(payload)


def same_problem(a: Any, b: Any) -> None:
    """Two 404s a client cannot tell apart (the instance names each request's own id)."""
    assert a.status_code == b.status_code == 404
    body_a, body_b = a.json(), b.json()
    body_a.pop("instance"), body_b.pop("instance")
    assert body_a == body_b


def opened(bundle: bytes) -> list[dict[str, Any]]:
    """The records a bundle opens (lines that carry the record itself)."""
    with zipfile.ZipFile(io.BytesIO(bundle)) as archive:
        lines = archive.read("records.jsonl").decode().splitlines()
    return [json.loads(row["record"]) for row in map(json.loads, lines) if "record" in row]


def every_member(bundle: bytes) -> bytes:
    with zipfile.ZipFile(io.BytesIO(bundle)) as archive:
        return b"".join(archive.read(name) for name in archive.namelist())


def test_request_records_carry_the_callers_tenant(world: World) -> None:
    for request_id in world.t1_ids:
        assert stored(world.api, request_id)[1]["tenant"] == "t1"
    assert stored(world.api, world.operator_id)[1]["tenant"] is None


def test_another_tenants_record_is_answered_as_a_missing_one(world: World) -> None:
    api, theirs = world.api, world.t1_ids[0]
    index, _ = stored(api, theirs)
    own = api.get(f"/v1/audit/records/{theirs}", headers=world.t1)
    assert own.status_code == 200
    assert own.json()["record"]["personal"] == {"user_id": "u42"}
    for reader in (world.t2, world.operator):
        same_problem(
            api.get(f"/v1/audit/records/{theirs}", headers=reader),
            api.get("/v1/audit/records/0123456789abcdef0123456789abcdef", headers=reader),
        )
        same_problem(
            api.get("/v1/audit/proofs/inclusion", params={"request_id": theirs}, headers=reader),
            api.get(
                "/v1/audit/proofs/inclusion",
                params={"request_id": "0123456789abcdef0123456789abcdef"},
                headers=reader,
            ),
        )
        # By index: the same answer as an index past the end of the log.
        by_index = api.get("/v1/audit/proofs/inclusion", params={"index": index}, headers=reader)
        assert by_index.status_code == 404
        assert by_index.json()["detail"] == f"no audit record at index {index}"
    # Tenants never see the operator's records either, and the operator sees its own.
    same_problem(
        api.get(f"/v1/audit/records/{world.operator_id}", headers=world.t1),
        api.get("/v1/audit/records/0123456789abcdef0123456789abcdef", headers=world.t1),
    )
    assert (
        api.get(f"/v1/audit/records/{world.operator_id}", headers=world.operator).status_code == 200
    )
    assert (
        api.get("/v1/audit/proofs/inclusion", params={"index": index}, headers=world.t1).status_code
        == 200
    )
    # The probes are on record, as the 404s their caller got, under the prober's tenant.
    probe = api.get(f"/v1/audit/records/{theirs}", headers=world.t2)
    _, record = stored(api, probe.headers["x-request-id"])
    assert (record["tenant"], record["status"], record["client_id"]) == ("t2", 404, "t2-app")


def test_checkpoints_and_consistency_proofs_stay_readable(world: World) -> None:
    api = world.api
    for reader in (world.t1, world.t2, world.operator):
        assert api.get("/v1/audit/checkpoint", headers=reader).status_code == 200
        size = audit_of(api).store.size()
        consistency = api.get(
            "/v1/audit/proofs/consistency", params={"first": 1, "second": size}, headers=reader
        )
        assert consistency.status_code == 200, consistency.text


def test_an_export_opens_only_the_callers_own_tenant(world: World, tmp_path: Path) -> None:
    api = world.api
    pubkey = audit_of(api).signer.verifier_key()
    for reader, tenant in ((world.t2, "t2"), (world.t1, "t1"), (world.operator, None)):
        response = api.get("/v1/audit/export", params=EVERYTHING, headers=reader)
        assert response.status_code == 200, response.text
        path = tmp_path / f"{tenant}.zip"
        path.write_bytes(response.content)
        verify_bundle(path, pubkey=pubkey)
        records = opened(response.content)
        assert records, "an export of everything opens at least the caller's own requests"
        assert {r.get("tenant") for r in records} == {tenant}
        if tenant != "t1":
            assert b"u42" not in every_member(response.content)
            assert not {r["request_id"] for r in records} & set(world.t1_ids)
    t1_bundle = api.get("/v1/audit/export", params=EVERYTHING, headers=world.t1).content
    assert set(world.t1_ids) <= {r["request_id"] for r in opened(t1_bundle)}


def test_an_export_of_another_tenant_or_its_subject_is_refused(world: World) -> None:
    api = world.api
    for params in (
        {**EVERYTHING, "tenant": "t1"},
        {**EVERYTHING, "tenant": "t1", "subject": "u42"},
    ):
        refused = api.get("/v1/audit/export", params=params, headers=world.t2)
        assert refused.status_code == 403
        assert refused.json()["type"] == "urn:gateway:problem:forbidden"
        assert b"u42" not in refused.content
    assert (
        api.get(
            "/v1/audit/export", params={**EVERYTHING, "tenant": "t1"}, headers=world.operator
        ).status_code
        == 403
    )
    # u42 looked up in t2's own tenant is another person, never seen: unknown.
    unknown = api.get("/v1/audit/export", params={**EVERYTHING, "subject": "u42"}, headers=world.t2)
    assert unknown.status_code == 404
    # t1 may name itself, and finds its own u42.
    own = api.get(
        "/v1/audit/export",
        params={**EVERYTHING, "tenant": "t1", "subject": "u42"},
        headers=world.t1,
    )
    assert own.status_code == 200, own.text
    assert {r["request_id"] for r in opened(own.content)} == set(world.t1_ids)
    empty = api.get("/v1/audit/export", params={**EVERYTHING, "tenant": ""}, headers=world.t1)
    assert empty.status_code == 422


def test_subject_endpoints_do_not_cross_tenants(world: World) -> None:
    api = world.api
    theirs = api.get("/v1/subjects/u42/export", headers=world.t2)
    assert theirs.status_code == 200, theirs.text
    assert theirs.json()["audit"] == {"pseudonym": None, "records": []}
    assert theirs.json()["features"] == {"known": False, "values": {}}
    erased = api.delete("/v1/subjects/u42", headers=world.t2)
    assert erased.status_code == 200
    # The key it destroyed is t2's own u42's (keyed when t2's requests were audited).
    erasure = parse(audit_of(api).store.leaf(audit_of(api).store.size() - 2).payload or b"")
    assert erasure["kind"] == "erasure"
    assert erasure["subject"] != stored(api, world.t1_ids[0])[1]["subject"]
    # t1's u42 is untouched: its records still open, its export still finds them.
    record = api.get(f"/v1/audit/records/{world.t1_ids[0]}", headers=world.t1).json()["record"]
    assert record["personal"] == {"user_id": "u42"}
    own = api.get("/v1/subjects/u42/export", headers=world.t1).json()
    assert {r["request_id"] for r in own["audit"]["records"]} == set(world.t1_ids)
    assert (
        api.get(
            "/v1/audit/export", params={**EVERYTHING, "subject": "u42"}, headers=world.t1
        ).status_code
        == 200
    )


def test_reading_every_tenant_needs_the_dedicated_scope(
    world: World, token: Callable[..., dict[str, str]]
) -> None:
    api = world.api
    theirs = world.t1_ids[0]
    auditor = token("gateway-auditor", None, *AUDIT, "audit:all-tenants")
    tenant_auditor = token("ops-auditor", "ops", "audit:read", "audit:all-tenants")
    for reader in (auditor, tenant_auditor):
        found = api.get(f"/v1/audit/records/{theirs}", headers=reader)
        assert found.status_code == 200, found.text
        proof = api.get("/v1/audit/proofs/inclusion", params={"request_id": theirs}, headers=reader)
        assert proof.status_code == 200
    # audit:read alone does not open sealed fields, whatever the reach.
    assert (
        "personal"
        not in api.get(f"/v1/audit/records/{theirs}", headers=tenant_auditor).json()["record"]
    )
    everything = api.get("/v1/audit/export", params=EVERYTHING, headers=auditor)
    assert everything.status_code == 200
    assert {r.get("tenant") for r in opened(everything.content)} >= {"t1", None}
    only_t1 = api.get("/v1/audit/export", params={**EVERYTHING, "tenant": "t1"}, headers=auditor)
    assert {r.get("tenant") for r in opened(only_t1.content)} == {"t1"}
    by_subject = api.get(
        "/v1/audit/export", params={**EVERYTHING, "tenant": "t1", "subject": "u42"}, headers=auditor
    )
    assert {r["request_id"] for r in opened(by_subject.content)} == set(world.t1_ids)
    # The scope without audit:read/export is no read permission at all.
    alone = token("scope-only", None, "audit:all-tenants")
    assert api.get(f"/v1/audit/records/{theirs}", headers=alone).status_code == 403


def test_a_purged_record_is_shown_only_across_tenants(
    world: World, token: Callable[..., dict[str, str]]
) -> None:
    """Retention deletes the payload, and with it whose record it was."""
    api = world.api
    audit_log = audit_of(api)
    index, _ = stored(api, world.t1_ids[0])
    api.portal.call(audit_log.purge_before, audit_log.now_ms() + 1)  # type: ignore[union-attr]
    assert audit_log.store.leaf(index).payload is None
    auditor = token("gateway-auditor", None, "audit:read", "audit:all-tenants")
    shown = api.get(f"/v1/audit/records/{world.t1_ids[0]}", headers=auditor)
    assert shown.json()["purged"] is True
    for reader in (world.t1, world.t2, world.operator):
        same_problem(
            api.get(f"/v1/audit/records/{world.t1_ids[0]}", headers=reader),
            api.get("/v1/audit/records/0123456789abcdef0123456789abcdef", headers=reader),
        )


def test_without_a_bundle_every_caller_reads_only_its_own(
    make_settings: Callable[..., Settings],
    token: Callable[..., dict[str, str]],
    tmp_path: Path,
) -> None:
    """Dev mode's scope table asks no cross-tenant question: the scope does nothing there."""
    settings = make_settings(
        dev_mode=True,
        policy={"engine": "scopes"},
        audit={"sqlite_path": str(tmp_path / "dev.db")},
    )
    with TestClient(create_app(settings)) as api:
        t1 = token("t1-app", "t1", "rank")
        ranked = api.post(
            "/v1/rank", json={"user_id": "u42", "item_ids": ITEMS}, headers={**t1, **JSON}
        )
        assert ranked.status_code == 200, ranked.text
        wide = token("gateway-auditor", "t2", *AUDIT, "audit:all-tenants")
        theirs = api.get(f"/v1/audit/records/{ranked.headers['x-request-id']}", headers=wide)
        assert theirs.status_code == 404
        bundle = api.get("/v1/audit/export", params=EVERYTHING, headers=wide)
        assert bundle.status_code == 200
        assert b"u42" not in every_member(bundle.content)
