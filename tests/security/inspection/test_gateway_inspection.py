"""Stage 5 in the real app: actions from the bundle, visible in status, metrics and audit."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient

from audit.record import parse
from gateway.app import create_app
from gateway.datadir import InitReport
from gateway.errors import ConfigurationError
from gateway.settings import Settings, load_settings
from tests.security.inspection.conftest import signed_bundle

JSON = {"Content-Type": "application/json"}
INFER = "/v2/models/demo-ranker/infer"
THRESHOLDS = (
    "  thresholds: {out_of_range: 0.0, query_similarity: 0.85, near_duplicates: 8, "
    "store_radius: 0.01, versions: 24, off_manifold: 0.9, off_store_rows: 32}\n"
)
DETECTION = f"detection:\n{THRESHOLDS}  action: flag\n  shadow: false\n"
# These tests send raw tensors (every model input): the trusted scope `infer:raw`.
SCOPES = ("rank", "infer", "infer:raw")


def settings_with(
    report: InitReport, tmp_path: Path, data_yaml: tuple[str, str] | None = None, **overrides: Any
) -> Settings:
    policy: dict[str, Any] = {"watch_interval_s": 0}
    if data_yaml is not None:
        policy["bundle"] = str(signed_bundle(report, tmp_path / "bundle", *data_yaml))
    return load_settings(
        data_dir=report.data_dir,
        config_file=report.config,
        policy=policy,
        audit={"sqlite_path": str(tmp_path / "audit.db")},
        **overrides,
    )


def detection(action: str, *, shadow: bool = False, extra: str = "") -> tuple[str, str]:
    new = f"detection:\n{THRESHOLDS}  action: {action}\n  shadow: {str(shadow).lower()}\n{extra}"
    return DETECTION, new


def bearer(client: TestClient, client_id: str = "demo") -> dict[str, str]:
    issuer = client.app.state.components.issuer  # type: ignore[attr-defined]
    token = issuer.mint(issuer.client(client_id), SCOPES)["access_token"]
    return {"Authorization": "Bearer " + token}


def record(client: TestClient, request_id: str) -> dict[str, Any]:
    store = client.app.state.components.audit.store  # type: ignore[attr-defined]
    return parse(store.leaf(store.index_of(request_id)).payload)


def infer_body(
    store: dict[str, Any], user: int, item: int, user_features: Any = None
) -> dict[str, Any]:
    uf = store["user_features"][user] if user_features is None else user_features
    return {
        "inputs": [
            {"name": "user_id", "datatype": "INT64", "shape": [1], "data": [user]},
            {"name": "item_id", "datatype": "INT64", "shape": [1], "data": [item]},
            {
                "name": "user_features",
                "datatype": "FP32",
                "shape": [1, 20],
                "data": [float(v) for v in uf],
            },
            {
                "name": "item_features",
                "datatype": "FP32",
                "shape": [1, 20],
                "data": store["item_features"][item].tolist(),
            },
        ]
    }


def out_of_range(store: dict[str, Any]) -> dict[str, Any]:
    return infer_body(store, 4, 4, user_features=[50.0] * 20)


def metric(client: TestClient, line_start: str) -> float:
    for line in client.get("/metrics").text.splitlines():
        if line.startswith(line_start):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def test_clean_requests_are_allowed_and_audited_as_such(
    report: InitReport, store: dict[str, Any], tmp_path: Path
) -> None:
    with TestClient(create_app(settings_with(report, tmp_path))) as client:
        response = client.post(
            INFER, json=infer_body(store, 4, 4), headers={**bearer(client), **JSON}
        )
        assert response.status_code == 200
        assert "x-inspection-verdict" not in response.headers  # never told outside dev mode
        audited = record(client, response.headers["x-request-id"])["inspection"]
        assert audited["verdict"] == "allow"
        assert audited["signals"] == []
        assert audited["rows"] == 1
        assert (
            metric(client, 'gateway_inspection_verdicts_total{enforced="false",verdict="allow"}')
            == 1
        )


def test_flag_serves_but_marks_audit_and_metrics(
    report: InitReport, store: dict[str, Any], tmp_path: Path
) -> None:
    with TestClient(create_app(settings_with(report, tmp_path, detection("flag")))) as client:
        response = client.post(INFER, json=out_of_range(store), headers={**bearer(client), **JSON})
        assert response.status_code == 200  # served: a flag is for the operators
        audited = record(client, response.headers["x-request-id"])["inspection"]
        assert audited["verdict"] == "flag"
        assert audited["enforced"] is True
        assert audited["signals"] == ["out_of_range"]
        assert audited["out_of_range"] == 20
        assert (
            metric(client, 'gateway_inspection_verdicts_total{enforced="true",verdict="flag"}') == 1
        )
        assert metric(client, 'gateway_inspection_signals_total{signal="out_of_range"}') == 1
        assert metric(client, "gateway_inspection_detector_seconds_count") == 1


def test_block_is_a_403_that_names_no_detector(
    report: InitReport, store: dict[str, Any], tmp_path: Path
) -> None:
    with TestClient(create_app(settings_with(report, tmp_path, detection("block")))) as client:
        auth = {**bearer(client), **JSON}
        response = client.post(INFER, json=out_of_range(store), headers=auth)
        assert response.status_code == 403
        assert response.json() == {"error": "Request refused"}
        assert "range" not in response.text
        assert "detector" not in response.text
        audited = record(client, response.headers["x-request-id"])
        assert audited["outcome"] == "request-refused"
        assert audited["decision"] == "deny"
        assert audited["inspection"]["verdict"] == "block"
        assert audited["inspection"]["signals"] == ["out_of_range"]
        # The same refusal on /v1/rank once the client is cooling down (3 strikes).
        for _ in range(2):
            assert client.post(INFER, json=out_of_range(store), headers=auth).status_code == 403
        clean = client.post(INFER, json=infer_body(store, 4, 4), headers=auth)
        assert clean.status_code == 403
        assert record(client, clean.headers["x-request-id"])["inspection"]["signals"] == [
            "cooldown"
        ]
        ranked = client.post("/v1/rank", json={"user_id": "u1", "item_ids": ["i1"]}, headers=auth)
        assert ranked.status_code == 403
        assert ranked.json()["type"] == "urn:gateway:problem:request-refused"
        assert set(ranked.json()) == {"type", "title", "status", "instance"}
        # Another client is untouched.
        other = client.post(
            INFER, json=infer_body(store, 4, 4), headers={**bearer(client, "operator"), **JSON}
        )
        assert other.status_code == 200


def test_shadow_records_the_verdict_without_acting(
    report: InitReport, store: dict[str, Any], tmp_path: Path
) -> None:
    with TestClient(
        create_app(settings_with(report, tmp_path, detection("block", shadow=True)))
    ) as client:
        response = client.post(INFER, json=out_of_range(store), headers={**bearer(client), **JSON})
        assert response.status_code == 200
        audited = record(client, response.headers["x-request-id"])["inspection"]
        assert audited["verdict"] == "block"
        assert audited["enforced"] is False
        assert audited["shadow"] is True
        assert (
            metric(client, 'gateway_inspection_verdicts_total{enforced="false",verdict="block"}')
            == 1
        )


def test_throttle_is_a_429_with_retry_after(
    report: InitReport, store: dict[str, Any], tmp_path: Path
) -> None:
    rules = detection("throttle", extra="  throttle_seconds: 7\n")
    with TestClient(create_app(settings_with(report, tmp_path, rules))) as client:
        response = client.post(INFER, json=out_of_range(store), headers={**bearer(client), **JSON})
        assert response.status_code == 429
        assert response.headers["retry-after"] == "7"
        audited = record(client, response.headers["x-request-id"])
        assert audited["outcome"] == "rate-limited"
        assert audited["inspection"]["verdict"] == "throttle"


def test_verdict_header_only_in_dev_mode(
    report: InitReport, store: dict[str, Any], tmp_path: Path
) -> None:
    with pytest.raises(ConfigurationError, match="expose_verdict"):
        create_app(settings_with(report, tmp_path, inspection={"expose_verdict": True}))
    settings = settings_with(
        report, tmp_path, detection("flag"), dev_mode=True, inspection={"expose_verdict": True}
    )
    with TestClient(create_app(settings)) as client:
        auth = {**bearer(client), **JSON}
        assert (
            client.post(INFER, json=infer_body(store, 4, 4), headers=auth).headers[
                "x-inspection-verdict"
            ]
            == "allow"
        )
        assert (
            client.post(INFER, json=out_of_range(store), headers=auth).headers[
                "x-inspection-verdict"
            ]
            == "flag"
        )


def test_probing_through_the_api_is_flagged(
    report: InitReport, store: dict[str, Any], tmp_path: Path
) -> None:
    """Noise on every query (0.3 training std on every feature, kept within the bounds):
    each query is a new version of the same ids' features, the store row ~0.3 away."""
    with TestClient(create_app(settings_with(report, tmp_path))) as client:
        auth = {**bearer(client), **JSON}
        rng = np.random.default_rng(4)
        std = store["user_features"].std(axis=0)
        low, high = store["user_features"].min(axis=0), store["user_features"].max(axis=0)
        base = store["user_features"][9].astype(np.float64)
        verdicts = []
        for _ in range(30):
            noisy = np.clip(base + rng.normal(0, 0.3, 20) * std, low, high)
            response = client.post(INFER, json=infer_body(store, 9, 9, noisy), headers=auth)
            assert response.status_code == 200
            audited = record(client, response.headers["x-request-id"])["inspection"]
            verdicts.append(audited["verdict"])
        assert verdicts[:20] == ["allow"] * 20
        assert "flag" in verdicts[20:]
        assert audited["signals"][0] == "versions"  # then the cool-down, after 3 strikes
        assert audited["versions"] >= 24


def test_raw_store_rows_and_ids_only_are_never_counted(
    report: InitReport, store: dict[str, Any], tmp_path: Path
) -> None:
    with TestClient(create_app(settings_with(report, tmp_path))) as client:
        auth = {**bearer(client), **JSON}
        for step in range(40):
            body = infer_body(store, 1 + step % 3, 1 + step % 5)
            response = client.post(INFER, json=body, headers=auth)
            audited = record(client, response.headers["x-request-id"])["inspection"]
            assert audited["signals"] == []
            assert audited["counted"] == 0
        # By ids (feature provenance: the store fills the features): nothing to inspect.
        ids = {
            "inputs": [
                {"name": "user_id", "datatype": "BYTES", "shape": [1], "data": ["u4"]},
                {"name": "item_id", "datatype": "BYTES", "shape": [2], "data": ["i4", "i5"]},
            ]
        }
        response = client.post(INFER, json=ids, headers=auth)
        assert response.status_code == 200, response.text
        audited = record(client, response.headers["x-request-id"])["inspection"]
        assert audited["rows"] == 0
        assert audited["signals"] == []


def test_unknown_ids_are_refused_before_the_model(
    report: InitReport, store: dict[str, Any], tmp_path: Path
) -> None:
    with TestClient(create_app(settings_with(report, tmp_path))) as client:
        body = infer_body(store, 4, 4)
        body["inputs"][1]["data"] = [99_999]
        response = client.post(INFER, json=body, headers={**bearer(client), **JSON})
        assert response.status_code == 400
        assert response.json() == {"error": "input item_id: unknown id"}


def test_rate_limit_per_client_with_retry_after(report: InitReport, tmp_path: Path) -> None:
    rules = (
        "rate_limits: {per_client_rps: 50, burst: 100}",
        "rate_limits: {per_client_rps: 0.5, burst: 3}",
    )
    now = [1_800_000_000.0]
    settings = settings_with(report, tmp_path, rules)
    with TestClient(create_app(settings, clock=lambda: now[0])) as client:
        auth = {**bearer(client), **JSON}
        body = {"user_id": "u1", "item_ids": ["i1"]}
        assert [client.post("/v1/rank", json=body, headers=auth).status_code for _ in range(3)] == [
            200
        ] * 3
        refused = client.post("/v1/rank", json=body, headers=auth)
        assert refused.status_code == 429
        assert refused.headers["retry-after"] == "2"
        assert refused.json()["type"] == "urn:gateway:problem:rate-limited"
        # The body is not parsed for a client over its rate: garbage is refused the same way.
        garbage = client.post("/v1/rank", content=b"{not json", headers=auth)
        assert garbage.status_code == 429
        assert (
            client.post(
                "/v1/rank", json=body, headers={**bearer(client, "operator"), **JSON}
            ).status_code
            == 200
        )
        now[0] += 2.0  # one token back
        assert client.post("/v1/rank", json=body, headers=auth).status_code == 200
        assert metric(client, 'gateway_rate_limit_refusals_total{kind="rate"}') == 2


def test_query_budget_counts_rows_and_answers_retry_after(
    report: InitReport, store: dict[str, Any], tmp_path: Path
) -> None:
    rules = (
        "  default: [{window_seconds: 3600, max_queries: 400000}, "
        "{window_seconds: 86400, max_queries: 2000000}]\n",
        "  default: {window_seconds: 60, max_queries: 10}\n",
    )
    now = [1_800_000_010.0]  # 10 s into a 60 s window
    with TestClient(
        create_app(settings_with(report, tmp_path, rules), clock=lambda: now[0])
    ) as client:
        auth = {**bearer(client), **JSON}
        eight = {"user_id": "u1", "item_ids": [f"i{n}" for n in range(1, 9)]}
        assert client.post("/v1/rank", json=eight, headers=auth).status_code == 200
        refused = client.post("/v1/rank", json=eight, headers=auth)
        assert refused.status_code == 429
        assert refused.json()["type"] == "urn:gateway:problem:query-budget-exhausted"
        assert refused.headers["retry-after"] == "50"
        # Refused requests spend nothing: two more rows still fit.
        two = {"user_id": "u1", "item_ids": ["i1", "i2"]}
        assert client.post("/v1/rank", json=two, headers=auth).status_code == 200
        assert client.post(INFER, json=infer_body(store, 1, 1), headers=auth).status_code == 429
        now[0] += 50
        assert client.post(INFER, json=infer_body(store, 1, 1), headers=auth).status_code == 200


def test_token_endpoint_is_rate_limited_per_source(report: InitReport, tmp_path: Path) -> None:
    rules = (
        "rate_limits: {per_client_rps: 50, burst: 100}",
        "rate_limits: {per_client_rps: 50, burst: 100, "
        "token_endpoint_rps: 0.1, token_endpoint_burst: 2}",
    )
    secret = (report.data_dir / "clients" / "demo.secret").read_text().strip()
    form = {"grant_type": "client_credentials", "client_id": "demo", "client_secret": secret}
    with TestClient(create_app(settings_with(report, tmp_path, rules))) as client:
        assert client.post("/oauth/token", data=form).status_code == 200
        assert (
            client.post("/oauth/token", data={**form, "client_secret": "wrong"}).status_code == 401
        )
        refused = client.post("/oauth/token", data=form)
        assert refused.status_code == 429
        assert refused.json()["error"] == "slow_down"
        assert int(refused.headers["retry-after"]) >= 1
        assert record(client, refused.headers["x-request-id"])["outcome"] == "rate-limited"


def test_oip_output_hardening_rank_only(
    report: InitReport, store: dict[str, Any], tmp_path: Path
) -> None:
    rules = ("output: {mode: rounded, decimals: 3}", "output: {mode: rank_only}")
    with TestClient(create_app(settings_with(report, tmp_path, rules))) as client:
        body = {
            "inputs": [
                {"name": "user_id", "datatype": "INT64", "shape": [3], "data": [2, 2, 2]},
                {"name": "item_id", "datatype": "INT64", "shape": [3], "data": [1, 2, 3]},
                {
                    "name": "user_features",
                    "datatype": "FP32",
                    "shape": [3, 20],
                    "data": np.repeat(store["user_features"][2:3], 3, 0).reshape(-1).tolist(),
                },
                {
                    "name": "item_features",
                    "datatype": "FP32",
                    "shape": [3, 20],
                    "data": store["item_features"][1:4].reshape(-1).tolist(),
                },
            ]
        }
        response = client.post(INFER, json=body, headers={**bearer(client), **JSON})
        assert response.status_code == 200
        assert sorted(response.json()["outputs"][0]["data"]) == [1.0, 2.0, 3.0]


def test_unreachable_redis_fails_closed(
    report: InitReport, store: dict[str, Any], tmp_path: Path
) -> None:
    # Nothing listens on port 1: every request that needs the shared state is refused.
    dead = {"redis_url": "redis://127.0.0.1:1/0"}
    with TestClient(create_app(settings_with(report, tmp_path, inspection=dead))) as client:
        auth = {**bearer(client), **JSON}
        response = client.post(INFER, json=infer_body(store, 4, 4), headers=auth)
        assert response.status_code == 503
        assert response.json() == {"error": "The request could not be inspected"}
        ranked = client.post("/v1/rank", json={"user_id": "u1", "item_ids": ["i1"]}, headers=auth)
        assert ranked.json()["type"] == "urn:gateway:problem:inspection-unavailable"
        assert record(client, ranked.headers["x-request-id"])["status"] == 503
        # The token endpoint's limiter shares that state: refused too, and on record.
        token = client.post(
            "/oauth/token",
            data={"grant_type": "client_credentials"},
            auth=("demo", (report.data_dir / "clients" / "demo.secret").read_text().strip()),
        )
        assert token.status_code == 503
        assert "access_token" not in token.text
        assert record(client, token.headers["x-request-id"])["status"] == 503


def test_detection_thresholds_are_validated() -> None:
    from pydantic import ValidationError

    from policies.data_policy import DetectionPolicy

    with pytest.raises(ValidationError, match="unknown threshold 'near_dupes'"):
        DetectionPolicy(thresholds={"near_dupes": 3})
    with pytest.raises(ValidationError, match=r"query_similarity must be within \[0.0, 0.99\]"):
        DetectionPolicy(thresholds={"query_similarity": 1.5})
    with pytest.raises(ValidationError, match="store_radius must not exceed off_manifold"):
        DetectionPolicy(thresholds={"store_radius": 2.0})
    with pytest.raises(ValidationError, match="unknown threshold 'extraction_rate'"):
        DetectionPolicy(thresholds={"extraction_rate": 0.8})  # issue 7's rate: diluted away
    assert DetectionPolicy(thresholds={"near_duplicates": 4}).threshold("near_duplicates") == 4
    assert DetectionPolicy().threshold("near_duplicates") == 8


@pytest.mark.parametrize(
    ("host", "key"),
    [
        ("203.0.113.7", "203.0.113.7"),
        ("2001:db8:1:2:aaaa::1", "2001:db8:1:2::/64"),
        ("2001:db8:1:2:ffff:ffff:ffff:ffff", "2001:db8:1:2::/64"),
        ("testclient", "testclient"),
    ],
)
def test_token_endpoint_buckets_ipv6_clients_by_64(host: str, key: str) -> None:
    # Rotating addresses inside one /64 must not buy an attacker fresh buckets.
    from gateway.routes.oauth import source_key

    assert source_key(host) == key
