"""`POST /v1/events`: joined to the arm that served the ranking, counted with consent only,
erased with the subject; forged, foreign and refused rankings are refused with typed
problems that say nothing about other tenants' requests."""

from __future__ import annotations

import json
import secrets
import uuid
from typing import Any

import psycopg
from fastapi.testclient import TestClient
from psycopg import sql

from audit.record import parse
from gateway.app import create_app
from tests.audit.conftest import pg_dsn  # noqa: F401 - the fixture (skips loudly)
from tests.experiments.conftest import Lab, two_arms
from tests.models.conftest import Box

PROBLEM = "application/problem+json"


def arm_row(report: dict[str, Any], variant: str) -> dict[str, Any]:
    rows = [r for r in report["arms"] if r["variant"] == variant]
    assert len(rows) == 1
    row: dict[str, Any] = rows[0]
    return row


def test_events_of_a_ranking_served_by_arm_b_count_for_b(lab: Lab) -> None:
    user = lab.user_in("B")
    lab.consent(user)
    ranking = lab.rank(user)
    assert ranking["model"]["variant"] == "B"
    assert ranking["model"]["version"] == "2"
    shown = [(kind, item["item_id"]) for item in ranking["items"][:3] for kind in ("impression",)]
    response = lab.events(user, ranking["request_id"], [*shown, ("click", shown[0][1])])
    assert response.status_code == 202, response.text
    body = response.json()
    assert body["model"] == {"name": "demo-ranker", "version": "2", "variant": "B"}
    assert body["counted"] == 4
    # The same events again are received, never counted twice.
    again = lab.events(user, ranking["request_id"], [*shown, ("click", shown[0][1])])
    assert again.json()["counted"] == 0
    report = lab.report()
    b, a = arm_row(report, "B"), arm_row(report, "A")
    assert (b["impressions"], b["clicks"], b["version"]) == (3, 1, "2")
    assert (a["impressions"], a["clicks"], a["control"]) == (0, 0, True)
    assert b["ctr"] == 1 / 3
    low, high = b["ctr_interval"]
    assert 0 < low < 1 / 3 < high < 1
    metrics = lab.api.get("/metrics").text
    assert (
        'gateway_experiment_events_total{kind="impression",model="demo-ranker",'
        'variant="B",version="2"} 3.0' in metrics
    )
    assert 'gateway_experiment_ctr{model="demo-ranker",variant="B",version="2"} 0.333' in metrics


def test_the_events_call_is_audited_with_the_arm_and_the_subject_pseudonym(lab: Lab) -> None:
    user = lab.user_in("A")
    lab.consent(user)
    ranking = lab.rank(user)
    response = lab.events(user, ranking["request_id"], [("impression", "i1")])
    assert response.status_code == 202
    store = lab.api.app.state.components.audit.store  # type: ignore[attr-defined]
    rank_record = parse(store.leaf(store.index_of(ranking["request_id"])).payload)
    record = parse(store.leaf(store.index_of(response.json()["request_id"])).payload)
    # The record carries the status the client got.
    assert (record["action"], record["status"], record["outcome"]) == ("events", 202, "ok")
    assert record["model"]["variant"] == "A"
    assert record["model"]["version"] == "1"
    assert record["subject"] == rank_record["subject"] is not None
    assert record["consent"]["purposes"]["analytics"] is True
    # The subject's id is sealed, never in clear.
    assert user not in json.dumps(record)
    # The stored event carries the pseudonym, not the id.
    rows = lab.api.app.state.components.experiments.store._query(  # type: ignore[attr-defined]
        "SELECT subject, tenant FROM outcome_events"
    )
    assert rows == [(rank_record["subject"], None)]


def test_events_without_analytics_consent_are_refused_by_the_default_bundle(lab: Lab) -> None:
    for user, granted in (("u7", None), ("u8", False)):
        if granted is not None:
            lab.consent(user, granted=granted)
        ranking = lab.rank(user)
        response = lab.events(user, ranking["request_id"], [("click", "i1")])
        assert response.status_code == 403
        assert response.headers["content-type"].startswith(PROBLEM)
        assert response.json()["type"] == "urn:gateway:problem:consent-required"
    # Consent given, then a Sec-GPC opt-out does not withdraw analytics (the bundle's
    # gpc_opt_out lists sale_share and personalization only); a withdrawal does.
    lab.consent("u9")
    ranking = lab.rank("u9")
    gpc = {**lab.app_token(), "Sec-GPC": "1"}
    ok = lab.events("u9", ranking["request_id"], [("click", "i1")], headers=gpc)
    assert ok.status_code == 202
    assert ok.json()["counted"] == 1
    lab.consent("u9", granted=False)
    refused = lab.events("u9", ranking["request_id"], [("click", "i2")])
    assert refused.status_code == 403
    report = lab.report()
    assert sum(r["clicks"] for r in report["arms"]) == 1


def test_a_bundle_that_says_uncounted_accepts_and_drops_them(box: Box) -> None:
    two_arms(
        box,
        (
            "events: {purpose: analytics, without_consent: refuse}",
            "events: {purpose: analytics, without_consent: uncounted}",
        ),
    )
    with TestClient(create_app(box.settings())) as api:
        lab = Lab(box, api)
        ranking = lab.rank("u5")
        response = lab.events("u5", ranking["request_id"], [("impression", "i1"), ("click", "i1")])
        assert response.status_code == 202
        assert response.json()["counted"] == 0
        assert response.json()["consent"] == {"analytics": False}
        store = api.app.state.components.experiments.store  # type: ignore[attr-defined]
        assert store._query("SELECT COUNT(*) FROM outcome_events") == [(0,)]


def test_erasure_removes_the_subjects_events(lab: Lab) -> None:
    keep, gone = lab.user_in("A"), lab.user_in("B")
    for user in (keep, gone):
        lab.consent(user)
        ranking = lab.rank(user)
        assert lab.events(user, ranking["request_id"], [("impression", "i1")]).status_code == 202
    assert sum(r["impressions"] for r in lab.report()["arms"]) == 2
    erased = lab.api.delete(f"/v1/subjects/{gone}", headers=lab.admin())
    assert erased.status_code == 200, erased.text
    assert erased.json()["events_deleted"] == 1
    rows = lab.report()["arms"]
    assert [(r["variant"], r["impressions"]) for r in rows] == [("A", 1), ("B", 0)]
    # Erasure is recorded before it takes effect: the erasure event precedes the deletion.
    store = lab.api.app.state.components.audit.store  # type: ignore[attr-defined]
    kinds = [parse(leaf.payload)["kind"] for leaf in store.iter_leaves()]
    assert "erasure" in kinds
    # Repeating the erasure finds nothing more (idempotent).
    again = lab.api.delete(f"/v1/subjects/{gone}", headers=lab.admin())
    assert again.json()["events_deleted"] == 0


def test_forged_foreign_other_users_and_refused_rankings_are_refused(lab: Lab) -> None:
    user = lab.user_in("A")
    lab.consent(user)
    lab.consent(user, tenant="t2")
    mine = lab.rank(user)["request_id"]
    theirs = lab.rank(user, tenant="t2")["request_id"]

    def problem(
        ranking: str, who: str = user, tenant: str | None = None
    ) -> tuple[int, dict[str, Any]]:
        response = lab.events(who, ranking, [("click", "i1")], tenant=tenant)
        assert response.headers["content-type"].startswith(PROBLEM)
        return response.status_code, response.json()

    forged_status, forged = problem(secrets.token_hex(16))
    assert forged_status == 404
    assert forged["type"] == "urn:gateway:problem:unknown-ranking"
    # Another tenant's ranking of a user with the same id reads exactly as a forged id.
    status, foreign = problem(theirs)
    assert status == 404
    shown = ("type", "title", "detail")
    assert {k: foreign.get(k) for k in shown} == {k: forged.get(k) for k in shown}
    # ... and t2 cannot send events for the default tenant's ranking either.
    assert problem(mine, tenant="t2")[0] == 404
    # Another user's ranking, even within the tenant.
    other = lab.user_in("A", start=int(user[1:]) + 1)
    lab.consent(other)
    assert problem(mine, who=other)[0] == 404
    # Not a ranking at all: the consent write's own request id.
    consent_call = lab.api.put(
        f"/v1/subjects/{user}/consent",
        json={"consents": [{"purpose": "analytics", "granted": True}]},
        headers=lab.app_token(),
    )
    assert problem(consent_call.headers["x-request-id"])[0] == 404
    # A ranking that was refused (unknown candidate items) showed nothing.
    refused = lab.api.post(
        "/v1/rank",
        json={"user_id": user, "item_ids": ["no-such-item"]},
        headers=lab.app_token(),
    )
    assert refused.status_code == 422
    status, body = problem(refused.headers["x-request-id"])
    assert status == 409
    assert body["type"] == "urn:gateway:problem:ranking-refused"
    # Malformed: a request id that is not the gateway's shape, unknown kinds, extra keys.
    for bad in (
        {"request_id": "../../etc", "user_id": user, "events": [{"type": "click", "item_id": "i"}]},
        {"request_id": mine, "user_id": user, "events": [{"type": "purchase", "item_id": "i"}]},
        {"request_id": mine, "user_id": user, "events": []},
        {
            "request_id": mine,
            "user_id": user,
            "events": [{"type": "click", "item_id": "i", "x": 0}],
        },
        {
            "request_id": mine.upper(),
            "user_id": user,
            "events": [{"type": "click", "item_id": "i"}],
        },
    ):
        response = lab.api.post("/v1/events", json=bad, headers=lab.app_token())
        assert response.status_code == 422, response.text
        assert "etc" not in response.text
        assert "purchase" not in response.text
    # Nothing of the above was counted.
    assert sum(r["clicks"] for r in lab.report()["arms"]) == 0


def test_events_need_the_events_scope(lab: Lab) -> None:
    user = lab.user_in("A")
    ranking = lab.rank(user)
    rank_only = lab.token("ranker", None, "rank", "consent:write")
    response = lab.events(user, ranking["request_id"], [("click", "i1")], headers=rank_only)
    assert response.status_code == 403
    assert 'error="insufficient_scope"' in response.headers["www-authenticate"]
    forged = {"Authorization": "Bearer not-a-token"}
    response = lab.events(user, ranking["request_id"], [("click", "i1")], headers=forged)
    assert response.status_code == 401


def test_events_on_a_postgresql_store_count_and_are_erased(
    box: Box,
    pg_dsn: str,  # noqa: F811 - the imported fixture
) -> None:
    two_arms(box)
    schema = f"test_events_{uuid.uuid4().hex[:12]}"
    settings = box.settings(experiments={"postgres_dsn": pg_dsn, "postgres_schema": schema})
    try:
        with TestClient(create_app(settings)) as api:
            lab = Lab(box, api)
            assert api.app.state.components.experiments.store.kind == "postgres"  # type: ignore[attr-defined]
            user = lab.user_in("B")
            lab.consent(user)
            ranking = lab.rank(user)
            sent = lab.events(user, ranking["request_id"], [("impression", "i1"), ("click", "i1")])
            assert sent.json()["counted"] == 2
            assert [(r["variant"], r["clicks"]) for r in lab.report()["arms"]] == [
                ("A", 0),
                ("B", 1),
            ]
            erased = api.delete(f"/v1/subjects/{user}", headers=lab.admin())
            assert erased.json()["events_deleted"] == 2
    finally:
        with psycopg.connect(pg_dsn, autocommit=True) as conn:
            conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(schema)))
