"""The policy bundle inside the running gateway: decisions, reloads, audit, dry run."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from audit.record import parse
from gateway.app import create_app
from gateway.datadir import InitReport, init_data_dir
from gateway.errors import ConfigurationError
from gateway.settings import Settings, load_settings
from policies.bundle import rehash
from policies.signing import sign_bundle

JSON = {"Content-Type": "application/json"}
RANK = {"user_id": "u1", "item_ids": ["i1", "i2"]}


@pytest.fixture
def fresh(tmp_path: Path) -> InitReport:
    return init_data_dir(tmp_path / "gw")


def settings_for(report: InitReport, **overrides: object) -> Settings:
    return load_settings(data_dir=report.data_dir, config_file=report.config, **overrides)


def edit_bundle(report: InitReport, old: str, new: str, *, sign: bool = True) -> None:
    """Change data.yaml the way an operator would: edit, rehash, sign."""
    bundle = report.data_dir / "policy"
    data = bundle / "data.yaml"
    text = data.read_text()
    assert old in text
    data.write_text(text.replace(old, new, 1))
    (bundle / "bundle.sig").unlink()
    rehash(bundle)
    if sign:
        sign_bundle(bundle, (report.data_dir / "keys" / "policy-signing.key").read_text().strip())


BLOCK_DEMO = ("demo-ranker:\n", "demo-ranker:\n    blocked: true\n")


@pytest.fixture
def client(fresh: InitReport) -> Iterator[TestClient]:
    with TestClient(create_app(settings_for(fresh, policy={"watch_interval_s": 0}))) as c:
        yield c


def bearer(client: TestClient, client_id: str = "demo") -> dict[str, str]:
    issuer = client.app.state.components.issuer  # type: ignore[attr-defined]
    return {"Authorization": "Bearer " + issuer.mint(issuer.client(client_id))["access_token"]}


def audit_record(client: TestClient, request_id: str) -> dict[str, object]:
    store = client.app.state.components.audit.store  # type: ignore[attr-defined]
    payload = store.leaf(store.index_of(request_id)).payload
    return parse(payload)


def active_hash(client: TestClient) -> str:
    return str(client.get("/readyz").json()["checks"]["policy"]["hash"])


def test_reload_swaps_a_good_bundle_and_records_change_with_it(
    fresh: InitReport, client: TestClient
) -> None:
    before = client.post("/v1/rank", json=RANK, headers={**bearer(client), **JSON})
    assert before.status_code == 200
    first_hash = active_hash(client)
    assert audit_record(client, before.headers["x-request-id"])["policy_bundle"] == first_hash

    edit_bundle(fresh, *BLOCK_DEMO)
    reloaded = client.post("/v1/admin/policy/reload", headers=bearer(client, "operator"))
    assert reloaded.status_code == 200, reloaded.text
    assert reloaded.json()["swapped"] is True
    second_hash = active_hash(client)
    assert second_hash != first_hash

    after = client.post("/v1/rank", json=RANK, headers={**bearer(client), **JSON})
    assert after.status_code == 403
    assert after.json()["type"] == "urn:gateway:problem:forbidden"
    record = audit_record(client, after.headers["x-request-id"])
    assert record["policy_bundle"] == second_hash
    assert record["policy_ids"] == ["forbid-blocked-model"]

    # Reloading the same bundle again changes nothing, and no record's hash moves.
    again = client.post("/v1/admin/policy/reload", headers=bearer(client, "operator"))
    assert again.json()["swapped"] is False
    assert active_hash(client) == second_hash


@pytest.mark.parametrize(
    ("old", "new", "sign", "message"),
    [
        ("demo-ranker:\n", "demo-ranker:\n    colour: blue\n", False, "colour"),
        ("demo-ranker:\n", "demo-ranker:\n  : [\n", False, "data.yaml"),
        ("demo-ranker:\n", "demo-ranker:\n    blocked: true\n", False, "not signed"),
    ],
    ids=["unknown-key", "bad-yaml", "unsigned"],
)
def test_a_bad_candidate_leaves_the_last_good_bundle_serving(
    fresh: InitReport, client: TestClient, old: str, new: str, sign: bool, message: str
) -> None:
    good_hash = active_hash(client)
    edit_bundle(fresh, old, new, sign=sign)
    refused = client.post("/v1/admin/policy/reload", headers=bearer(client, "operator"))
    assert refused.status_code == 422
    assert message in refused.json()["detail"]
    assert active_hash(client) == good_hash
    ready = client.get("/readyz").json()["checks"]["policy"]
    assert message in ready["last_reload_error"]
    served = client.post("/v1/rank", json=RANK, headers={**bearer(client), **JSON})
    assert served.status_code == 200
    metrics = client.get("/metrics").text
    assert 'gateway_policy_reloads_total{outcome="refused"} 1.0' in metrics


def test_a_failing_test_case_refuses_the_candidate(fresh: InitReport, client: TestClient) -> None:
    good_hash = active_hash(client)
    cedar = fresh.data_dir / "policy" / "policies.cedar"
    text = cedar.read_text()
    # Drop the rank permit: the bundle's own tests expect rank to be allowed.
    start = text.index('@id("scope-rank")')
    end = text.index('@id("scope-infer")')
    cedar.write_text(text[:start] + text[end:])
    (fresh.data_dir / "policy" / "bundle.sig").unlink()
    rehash(fresh.data_dir / "policy")
    sign_bundle(
        fresh.data_dir / "policy",
        (fresh.data_dir / "keys" / "policy-signing.key").read_text().strip(),
    )
    refused = client.post("/v1/admin/policy/reload", headers=bearer(client, "operator"))
    assert refused.status_code == 422
    assert "test cases fail" in refused.json()["detail"]
    assert active_hash(client) == good_hash


def test_reload_under_load_loses_no_request(fresh: InitReport, client: TestClient) -> None:
    # The load below is a few hundred requests a second from one client: lift its rate limit
    # (the default 50/s, burst 100, answered 429 on a fast machine), which is not under test.
    edit_bundle(fresh, "per_client_rps: 50, burst: 100", "per_client_rps: 100000, burst: 100000")
    operator = bearer(client, "operator")
    assert client.post("/v1/admin/policy/reload", headers=operator).json()["swapped"] is True
    headers = {**bearer(client), **JSON}
    statuses: list[int] = []
    stop = threading.Event()

    def load() -> None:
        while not stop.is_set():
            statuses.append(client.post("/v1/rank", json=RANK, headers=headers).status_code)

    workers = [threading.Thread(target=load) for _ in range(4)]
    for worker in workers:
        worker.start()
    try:
        for i in range(6):  # alternate between two good bundles while requests flow
            edit_bundle(fresh, f"decimals: {3 + i % 2}", f"decimals: {3 + (i + 1) % 2}")
            reloaded = client.post("/v1/admin/policy/reload", headers=operator)
            assert reloaded.status_code == 200
            assert reloaded.json()["swapped"] is True
            time.sleep(0.05)
    finally:
        stop.set()
        for worker in workers:
            worker.join()
    assert len(statuses) > 20
    assert set(statuses) == {200}


def test_unsigned_bundle_refused_at_start_outside_dev_mode(fresh: InitReport) -> None:
    (fresh.data_dir / "policy" / "bundle.sig").unlink()
    with pytest.raises(ConfigurationError, match="not signed"):
        create_app(settings_for(fresh))
    create_app(settings_for(fresh, dev_mode=True))  # accepted, loudly, for development


def test_shadow_bundle_logs_decisions_that_would_differ(
    fresh: InitReport, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    import shutil

    candidate = tmp_path / "candidate"
    shutil.copytree(fresh.data_dir / "policy", candidate)
    data = candidate / "data.yaml"
    data.write_text(data.read_text().replace(*BLOCK_DEMO, 1))
    (candidate / "bundle.sig").unlink()
    rehash(candidate)
    sign_bundle(candidate, (fresh.data_dir / "keys" / "policy-signing.key").read_text().strip())
    settings = settings_for(fresh, policy={"shadow_bundle": str(candidate), "watch_interval_s": 0})
    with TestClient(create_app(settings)) as shadowed, caplog.at_level(logging.WARNING):
        served = shadowed.post("/v1/rank", json=RANK, headers={**bearer(shadowed), **JSON})
        assert served.status_code == 200  # the shadow never decides
        assert any("would deny rank" in r.getMessage() for r in caplog.records)


def test_file_change_is_picked_up_by_the_watch(fresh: InitReport) -> None:
    settings = settings_for(fresh, policy={"watch_interval_s": 0.1})
    with TestClient(create_app(settings)) as watched:
        first = active_hash(watched)
        edit_bundle(fresh, *BLOCK_DEMO)
        deadline = time.monotonic() + 10
        while active_hash(watched) == first and time.monotonic() < deadline:
            time.sleep(0.1)
        assert active_hash(watched) != first
        denied = watched.post("/v1/rank", json=RANK, headers={**bearer(watched), **JSON})
        assert denied.status_code == 403


@pytest.mark.parametrize(
    ("output", "check"),
    [
        ("{mode: rank_only}", lambda items: all(set(i) == {"item_id", "rank"} for i in items)),
        ("{mode: top_k, max_k: 2}", lambda items: len(items) == 2 and "score" in items[0]),
        (
            "{mode: rounded, decimals: 1}",
            lambda items: all(round(i["score"], 1) == i["score"] for i in items),
        ),
    ],
    ids=["rank-only", "top-k", "rounded"],
)
def test_output_hardening_follows_the_bundle(
    fresh: InitReport,
    client: TestClient,
    output: str,
    check: Callable[[list[dict[str, object]]], bool],
) -> None:
    body = {"user_id": "u1", "item_ids": [f"i{n}" for n in range(1, 11)]}
    full = client.post("/v1/rank", json=body, headers={**bearer(client), **JSON}).json()["items"]
    assert len(full) == 10
    edit_bundle(fresh, "output: {mode: rounded, decimals: 3}", f"output: {output}")
    assert client.post("/v1/admin/policy/reload", headers=bearer(client, "operator")).json()[
        "swapped"
    ]
    hardened = client.post("/v1/rank", json=body, headers={**bearer(client), **JSON}).json()
    assert check(hardened["items"])
    # Hardening changes the shape, never the order.
    assert [i["item_id"] for i in hardened["items"]] == [i["item_id"] for i in full][
        : len(hardened["items"])
    ]


def test_sighup_reloads_a_real_server(fresh: InitReport) -> None:
    import os
    import signal
    import socket
    import subprocess
    import sys

    import httpx

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    env = {k: v for k, v in os.environ.items() if not k.startswith("GATEWAY_")}
    env["GATEWAY_POLICY__WATCH_INTERVAL_S"] = "0"  # only the signal may reload
    with (fresh.data_dir / "server.log").open("ab") as server_log:
        server = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "gateway.cli",
                "serve",
                "--data-dir",
                str(fresh.data_dir),
                "--port",
                str(port),
            ],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=server_log,
        )
    url = f"http://127.0.0.1:{port}/readyz"

    def policy_hash() -> str | None:
        try:
            return str(httpx.get(url, timeout=1).json()["checks"]["policy"]["hash"])
        except (httpx.TransportError, KeyError, ValueError):
            return None

    try:
        deadline = time.monotonic() + 60
        while (first := policy_hash()) is None and time.monotonic() < deadline:
            time.sleep(0.1)
        assert first is not None, "server did not start"
        edit_bundle(fresh, *BLOCK_DEMO)
        time.sleep(0.3)
        assert policy_hash() == first  # no watch: nothing changes until the signal
        os.kill(server.pid, signal.SIGHUP)
        deadline = time.monotonic() + 10
        while policy_hash() == first and time.monotonic() < deadline:
            time.sleep(0.1)
        assert policy_hash() not in (first, None)
    finally:
        server.terminate()
        server.wait(timeout=30)
