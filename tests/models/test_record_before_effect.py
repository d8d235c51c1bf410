"""Record before effect (the control plane): a model load or a policy swap is in the audit
log before it takes effect, and does not take effect when it cannot be recorded."""

from __future__ import annotations

import asyncio
import json

import pytest
from fastapi.testclient import TestClient

from audit.appender import AppendFailed
from gateway.app import create_app
from gateway.errors import AuditUnavailable
from tests.models.conftest import Box

LOAD = "/v1/admin/models/demo-ranker/versions/{}/load"
RANK = {"user_id": "u7", "item_ids": ["i1", "i7", "i19"]}
DECIMALS = ("decimals: 3", "decimals: 2")


def _records(client: TestClient) -> list[dict[str, object]]:
    store = client.app.state.components.audit.store  # type: ignore[attr-defined]
    return [json.loads(store.leaf(i).payload) for i in range(store.size())]


def _served_version(client: TestClient) -> str:
    return str(client.get("/readyz").json()["checks"]["model_version"])


def _policy_hash(client: TestClient) -> str:
    return str(client.get("/readyz").json()["checks"]["policy"]["hash"])


def test_a_model_load_is_recorded_before_the_request_that_made_it(box: Box) -> None:
    box.pack("2")
    with TestClient(create_app(box.settings())) as client:
        response = client.post(LOAD.format("2"), headers=box.headers())
        assert response.status_code == 200
        records = _records(client)
        kinds = [(r["kind"], r.get("action")) for r in records]
        change = kinds.index(("model-load", None))
        assert kinds.index(("request", "admin")) > change  # the change first, then the call
        loaded = records[change]
        assert (loaded["model"], loaded["version"], loaded["activate"]) == (
            "demo-ranker",
            "2",
            True,
        )
        assert loaded["package_digest"] == response.json()["loaded"]["package_digest"][7:]
        assert _served_version(client) == "2"


def test_a_model_load_that_cannot_be_recorded_changes_nothing(box: Box) -> None:
    box.pack("2")
    with TestClient(create_app(box.settings())) as client:
        assert _served_version(client) == "1"
        client.app.state.components.audit.store.close()  # type: ignore[attr-defined]
        response = client.post(LOAD.format("2"), headers=box.headers())
        assert response.status_code == 503
        assert response.json()["type"] == "urn:gateway:problem:audit-unavailable"
        assert _served_version(client) == "1"
        loaded = client.app.state.components.serving.loaded()  # type: ignore[attr-defined]
        assert [m.version for m in loaded] == ["1"]  # not even available as an arm


def test_a_policy_swap_that_cannot_be_recorded_does_not_take_effect(box: Box) -> None:
    with TestClient(create_app(box.settings(policy={"watch_interval_s": 0}))) as client:
        before = _policy_hash(client)
        box.edit_data_policy(*DECIMALS)
        client.app.state.components.audit.store.close()  # type: ignore[attr-defined]
        response = client.post("/v1/admin/policy/reload", headers=box.headers())
        assert response.status_code == 503
        assert _policy_hash(client) == before
        # The same holds for the SIGHUP and file-watch triggers, which call the control plane.
        control = client.app.state.control  # type: ignore[attr-defined]
        with pytest.raises(AuditUnavailable):
            client.portal.call(control.reload_policy, "file-change")  # type: ignore[union-attr]
        assert _policy_hash(client) == before


def test_a_recorded_policy_swap_takes_effect_after_its_record(box: Box) -> None:
    with TestClient(create_app(box.settings(policy={"watch_interval_s": 0}))) as client:
        before = _policy_hash(client)
        box.edit_data_policy(*DECIMALS)
        response = client.post("/v1/admin/policy/reload", headers=box.headers())
        assert response.status_code == 200
        after = _policy_hash(client)
        assert after != before
        records = _records(client)
        swap = next(r for r in records if r["kind"] == "policy-reload")
        assert (swap["outcome"], swap["previous_bundle"], swap["policy_bundle"]) == (
            "swapped",
            before,
            after,
        )
        assert records.index(swap) < max(
            i for i, r in enumerate(records) if r.get("action") == "admin"
        )


def test_a_triggered_reload_retries_after_the_audit_log_is_back(box: Box) -> None:
    """The file watch remembers a change it could not record and applies it next tick."""
    settings = box.settings(policy={"watch_interval_s": 0.05})
    with TestClient(create_app(settings)) as client:
        before = _policy_hash(client)
        # Fault injection at the audit writer: its first two appends fail, as on a full disk.
        appender = client.app.state.components.audit._appender  # type: ignore[attr-defined]
        real = appender.append
        calls = {"n": 0}

        async def failing(pending: object) -> int:
            calls["n"] += 1
            if calls["n"] <= 2:
                raise AppendFailed("disk full (injected)")
            return int(await real(pending))

        appender.append = failing
        box.edit_data_policy(*DECIMALS)
        for _ in range(100):
            if calls["n"] > 2 and _policy_hash(client) != before:
                break
            client.portal.call(asyncio.sleep, 0.05)  # type: ignore[union-attr]
        assert calls["n"] > 2
        assert _policy_hash(client) != before
