"""Data-subject endpoints: scopes, consent history, access export, erasure end to end."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient

from gateway.app import create_app
from gateway.datadir import InitReport, init_data_dir
from gateway.settings import Settings, load_settings
from models.features import FeatureStore, load_arrays
from policies.in_force import ScopeTablePolicy
from privacy.components import open_privacy
from security.issuer import EmbeddedIssuer, load_signing_key

JSON = {"Content-Type": "application/json"}
ITEMS = [f"i{n}" for n in range(1, 31)]
SUBJECT_SCOPES = ("consent:write", "consent:read", "subject:read", "subject:erase")


@pytest.fixture(scope="module")
def own(tmp_path_factory: pytest.TempPathFactory) -> InitReport:
    """A data directory of its own: erasure rewrites the feature store."""
    return init_data_dir(tmp_path_factory.mktemp("subjects"))


@pytest.fixture(scope="module")
def own_settings(own: InitReport) -> Settings:
    return load_settings(data_dir=own.data_dir, config_file=own.config)


@pytest.fixture(scope="module")
def api(own_settings: Settings) -> Iterator[TestClient]:
    with TestClient(create_app(own_settings)) as test_client:
        yield test_client


@pytest.fixture(scope="module")
def token(own_settings: Settings) -> Callable[..., dict[str, str]]:
    issuer = EmbeddedIssuer(
        own_settings.issuer,
        issuer_url=own_settings.issuer_url,
        signing_key=load_signing_key(own_settings.resolve(own_settings.issuer.signing_key_file)),
    )

    def headers(*scopes: str, client_id: str = "operator") -> dict[str, str]:
        client = issuer.client(client_id)
        assert client is not None
        minted = issuer.mint(client, scopes or None)["access_token"]
        return {"Authorization": f"Bearer {minted}"}

    return headers


def put_consent(api: TestClient, token: Callable[..., dict[str, str]], user: str, **kw: Any) -> Any:
    body = {
        "jurisdiction": kw.get("jurisdiction", "eu"),
        "consents": kw.get(
            "consents", [{"purpose": "personalization", "granted": kw.get("granted", True)}]
        ),
    }
    return api.put(
        f"/v1/subjects/{user}/consent", json=body, headers={**token("consent:write"), **JSON}
    )


def rank(api: TestClient, token: Callable[..., dict[str, str]], user: str, query: str = "") -> Any:
    body: dict[str, Any] = {"user_id": user, "item_ids": ITEMS}
    if query:
        body["context"] = {"query": query}
    response = api.post("/v1/rank", json=body, headers={**token("rank"), **JSON})
    assert response.status_code == 200, response.text
    return response


@pytest.mark.parametrize(
    ("method", "path", "scope"),
    [
        ("PUT", "/v1/subjects/u5/consent", "consent:write"),
        ("GET", "/v1/subjects/u5/consent", "consent:read"),
        ("GET", "/v1/subjects/u5/export", "subject:read"),
        ("DELETE", "/v1/subjects/u5", "subject:erase"),
    ],
)
def test_every_endpoint_needs_its_scope(
    api: TestClient, token: Callable[..., dict[str, str]], method: str, path: str, scope: str
) -> None:
    body = b'{"consents": [{"purpose": "analytics", "granted": true}]}'
    anonymous = api.request(method, path, content=body, headers=JSON)
    assert anonymous.status_code == 401
    # Every other scope the operator has, but not this one.
    others = [s for s in (*SUBJECT_SCOPES, "rank", "admin", "audit:export") if s != scope]
    wrong = api.request(method, path, content=body, headers={**token(*others), **JSON})
    assert wrong.status_code == 403
    assert wrong.json()["type"] == "urn:gateway:problem:insufficient-scope"
    assert f'scope="{scope}"' in wrong.headers["www-authenticate"]
    # The demo client cannot even ask for it.
    demo = api.request(method, path, content=body, headers={**token(client_id="demo"), **JSON})
    assert demo.status_code == 403


def test_consent_history_is_append_only(
    api: TestClient, token: Callable[..., dict[str, str]]
) -> None:
    assert put_consent(api, token, "u21", granted=True).status_code == 200
    changed = put_consent(api, token, "u21", granted=False)
    assert changed.status_code == 200
    assert changed.json()["consent"]["personalization"]["granted"] is False
    read = api.get("/v1/subjects/u21/consent", headers=token("consent:read")).json()
    assert [e["granted"] for e in read["history"]] == [True, False]
    entry = read["history"][0]
    assert entry["jurisdiction"] == "eu"
    assert entry["lawful_basis"] == "consent"
    assert entry["source"] == "api:operator"
    assert entry["policy_version"].startswith("sha256:")


def test_bad_consent_bodies_are_typed_problems(
    api: TestClient, token: Callable[..., dict[str, str]]
) -> None:
    bad = put_consent(api, token, "u22", consents=[{"purpose": "mind_reading", "granted": True}])
    assert bad.status_code == 422
    twice = [{"purpose": "analytics", "granted": True}] * 2
    assert put_consent(api, token, "u22", consents=twice).status_code == 422
    long_id = "x" * 129
    response = api.get(f"/v1/subjects/{long_id}/consent", headers=token("consent:read"))
    assert response.status_code == 422


def test_each_consent_change_is_audited(
    api: TestClient, token: Callable[..., dict[str, str]]
) -> None:
    response = put_consent(api, token, "u23")
    record = api.get(
        f"/v1/audit/records/{response.headers['x-request-id']}",
        headers=token("audit:read", "audit:export"),
    ).json()["record"]
    assert record["action"] == "consent.write"
    assert record["subject"] is not None
    assert record["personal"] == {"user_id": "u23"}


def read_audit_record(api: TestClient, token: Callable[..., dict[str, str]], rid: str) -> Any:
    return api.get(f"/v1/audit/records/{rid}", headers=token("audit:read", "audit:export")).json()[
        "record"
    ]


def test_export_then_erasure_end_to_end(
    api: TestClient, token: Callable[..., dict[str, str]], own_settings: Settings
) -> None:
    user = "u31"
    store_path = own_settings.resolve(own_settings.model.features_path)
    user_index = [str(u) for u in load_arrays(store_path)["user_ids"].tolist()].index(user)
    fingerprints = api.app.state.components.inspection.detector.fingerprinter
    reference_before = fingerprints.reference_row("user_id", user_index)
    assert reference_before is not None
    assert not np.array_equal(reference_before, fingerprints.reference_row("user_id", 0))
    row = FeatureStore.load(store_path).user_row(user)
    assert row is not None
    row_bytes = np.ascontiguousarray(row, dtype=np.float32).tobytes()
    assert put_consent(api, token, user).status_code == 200
    personal = rank(api, token, user, "for jo@example.com")
    assert personal.json()["personalized"] is True
    before_erasure = personal.json()["items"]

    # Access: consent history, audit records opened, stored features: one document.
    export = api.get(f"/v1/subjects/{user}/export", headers=token("subject:read"))
    assert export.status_code == 200, export.text
    doc = export.json()
    assert doc["subject"]["id"] == user
    assert [e["purpose"] for e in doc["consent"]["history"]] == ["personalization"]
    assert doc["features"]["known"] is True
    assert np.allclose(list(doc["features"]["values"].values()), row, atol=1e-6)
    pseudonym = doc["audit"]["pseudonym"]
    records = doc["audit"]["records"]
    assert {r["action"] for r in records} >= {"consent.write", "rank"}
    assert all(r["subject"] == pseudonym for r in records)
    rank_record = next(r for r in records if r["action"] == "rank")
    assert rank_record["personal"]["user_id"] == user
    assert "jo@example.com" not in str(rank_record)  # redacted before the audit saw it

    # Erasure.
    erased = api.delete(f"/v1/subjects/{user}", headers=token("subject:erase"))
    assert erased.status_code == 200, erased.text
    assert erased.json() == {
        "erased": True,
        "feature_row_erased": True,
        "consent_rows_deleted": 1,
        "events_deleted": 0,
        "audit_key_destroyed": True,
    }
    # Idempotent.
    again = api.delete(f"/v1/subjects/{user}", headers=token("subject:erase"))
    assert again.status_code == 200
    assert again.json()["audit_key_destroyed"] is False
    assert again.json()["feature_row_erased"] is False

    # Old audit records show the personal fields as erased.
    old = read_audit_record(api, token, personal.json()["request_id"])
    assert old["personal"] == "erased"
    assert old["subject"] == pseudonym
    # No file under the data directory still holds the user's feature values.
    for path in own_settings.data_dir.rglob("*"):
        if path.is_file():
            assert row_bytes not in path.read_bytes(), path
    # Nor does the running gateway: stage 5's reference copy of the row is blanked too.
    reference_after = fingerprints.reference_row("user_id", user_index)
    assert np.array_equal(reference_after, fingerprints.reference_row("user_id", 0))
    # The consent is gone; ranking treats the user as unknown, even with consent again.
    consent = api.get(f"/v1/subjects/{user}/consent", headers=token("consent:read")).json()
    assert consent["consent"] == {}
    assert consent["history"] == []
    assert put_consent(api, token, user).status_code == 200
    after = rank(api, token, user)
    assert after.json()["personalized"] is False
    assert after.json()["items"] != before_erasure
    unknown = rank(api, token, "never-seen-user")
    assert after.json()["items"] == unknown.json()["items"]
    # A restarted gateway re-loads the rewritten store: still unknown.
    assert FeatureStore.load(store_path).known_user(user) is False
    # The log still verifies end to end.
    command = [sys.executable, "-m", "gateway.cli", "audit", "verify", "--quiet"]
    verify = subprocess.run(
        [*command, "--data-dir", str(own_settings.data_dir)],
        capture_output=True,
        text=True,
        check=False,
        cwd=Path(__file__).resolve().parents[2],
    )
    assert verify.returncode == 0, verify.stderr
    assert verify.stdout.startswith("ok:")


def test_erasure_is_reapplied_to_a_restored_feature_store(
    api: TestClient, token: Callable[..., dict[str, str]], own_settings: Settings
) -> None:
    """A snapshot restored from before the erasure is cleaned again at start-up."""
    from models.demo import install_demo

    user = "u32"
    assert api.delete(f"/v1/subjects/{user}", headers=token("subject:erase")).status_code == 200
    store_path = own_settings.resolve(own_settings.model.features_path)
    assert FeatureStore.load(store_path).known_user(user) is False
    install_demo(own_settings.data_dir)  # regenerates the original snapshot (digest differs)
    assert FeatureStore.load(store_path).known_user(user) is True
    # What create_app does at start-up (the audit log stays with the running app).
    features = FeatureStore.load(store_path)
    privacy = open_privacy(
        own_settings, policy=ScopeTablePolicy("demo-ranker"), audit=None, features=features
    )
    privacy.close()
    assert features.known_user(user) is False
    assert FeatureStore.load(store_path).known_user(user) is False
