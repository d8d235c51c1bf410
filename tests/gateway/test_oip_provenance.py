"""Feature provenance on OIP REST: the client sends ids, the server fills the features.

The real app, the real default bundle (user_id/item_id `id`, the features `server`), the
real feature store and ONNX model as the oracle. Attacks come from the client's side: a
token with scope `infer` tries to send the features it may not send, raw or mixed in with
ids; the raw scope is nobody's by default.
"""

from __future__ import annotations

import base64
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import orjson
import pytest
from fastapi.testclient import TestClient

from gateway.datadir import DEFAULT_CLIENTS, InitReport
from gateway.oip_binary import tensor_to_raw
from gateway.settings import Settings
from models.features import FeatureStore
from tests.served_scores import TOLERANCE, assert_served, served_scores

JSON = {"Content-Type": "application/json"}
INFER = "/v2/models/demo-ranker/infer"
RAW = ("infer", "infer:raw")
# The oracle is onnxruntime marked by the bundle's watermark (tests/served_scores.py);
# served scores are rounded (3 decimals) and, where the client chose the feature values,
# moved by a keyed offset (detection.perturbation: at most max_offset, rankings kept):
# compared within that. Answers to ids alone are not perturbed: rounding only.
SCORE_TOLERANCE = TOLERANCE


def assert_scores(got: Any, expected: Any, *, ids: bool = True) -> None:
    assert_served(got, expected, perturbed=not ids)


@pytest.fixture(scope="module")
def store(settings: Settings) -> FeatureStore:
    return FeatureStore.load(settings.resolve(settings.model.features_path))


@pytest.fixture(scope="module")
def oracle(settings: Settings) -> Callable[[dict[str, np.ndarray]], np.ndarray]:
    def scores(feeds: dict[str, np.ndarray]) -> np.ndarray:
        return served_scores(settings, feeds)

    return scores


def ids_body(user: Sequence[str], items: Sequence[str], **extra: Any) -> dict[str, Any]:
    return {
        "inputs": [
            {"name": "user_id", "datatype": "BYTES", "shape": [len(user)], "data": list(user)},
            {"name": "item_id", "datatype": "BYTES", "shape": [len(items)], "data": list(items)},
        ],
        **extra,
    }


def raw_tensors(feeds: dict[str, np.ndarray]) -> list[dict[str, Any]]:
    types = {np.dtype(np.int64): "INT64", np.dtype(np.float32): "FP32"}
    return [
        {
            "name": name,
            "datatype": types[a.dtype],
            "shape": list(a.shape),
            "data": a.reshape(-1).tolist(),
        }
        for name, a in feeds.items()
    ]


def scores_of(response: Any) -> list[float]:
    assert response.status_code == 200, response.text
    (out,) = response.json()["outputs"]
    assert out["name"] == "score"
    return list(out["data"])


def test_ids_in_json_are_ranked_from_the_store_without_personalisation_by_default(
    client: TestClient, auth: Callable[..., dict[str, str]], store: FeatureStore, oracle: Any
) -> None:
    items = list(store.item_ids[20:25])
    body = ids_body(["u-no-consent-7"], items, id="ids-1")
    response = client.post(INFER, json=body, headers={**auth(), **JSON})
    got = scores_of(response)
    assert response.json()["id"] == "ids-1"
    # No consent signal: the default bundle ranks from the cold-start row, like /v1/rank.
    assert_scores(got, oracle(store.inputs_for("", items)))
    rank = client.post(
        "/v1/rank",
        json={"user_id": "u-no-consent-7", "item_ids": items},
        headers={**auth(("rank",)), **JSON},
    )
    assert rank.status_code == 200, rank.text
    by_rank = {i["item_id"]: i["score"] for i in rank.json()["items"]}
    # The same answer as OIP's, up to the perturbation (keyed differently on each path).
    assert_scores([by_rank[i] for i in items], oracle(store.inputs_for("", items)))


def test_consent_decides_whether_the_profile_row_is_used(
    client: TestClient,
    auth: Callable[..., dict[str, str]],
    store: FeatureStore,
    oracle: Any,
    grant_consent: Callable[..., None],
) -> None:
    user = "u5"
    items = list(store.item_ids[30:36])
    personal, cold = oracle(store.inputs_for(user, items)), oracle(store.inputs_for("", items))
    # The oracle tells the two paths apart far beyond the tolerance.
    assert np.abs(personal - cold).max() > 10 * SCORE_TOLERANCE
    grant_consent(user)
    body = ids_body([user], items)
    assert_scores(scores_of(client.post(INFER, json=body, headers={**auth(), **JSON})), personal)
    # A Sec-GPC opt-out (the bundle lists personalization in gpc_opt_out) beats the grant.
    gpc = client.post(INFER, json=body, headers={**auth(), **JSON, "Sec-GPC": "1"})
    assert_scores(scores_of(gpc), cold)


def test_binary_bytes_ids_work_like_json(
    client: TestClient, auth: Callable[..., dict[str, str]], store: FeatureStore, oracle: Any
) -> None:
    items = list(store.item_ids[40:43])
    user_raw = tensor_to_raw("BYTES", np.array([b"u-none-1"], dtype=object))
    item_raw = tensor_to_raw("BYTES", np.array([i.encode() for i in items], dtype=object))
    header = orjson.dumps(
        {
            "inputs": [
                {
                    "name": "user_id",
                    "datatype": "BYTES",
                    "shape": [1],
                    "parameters": {"binary_data_size": len(user_raw)},
                },
                {
                    "name": "item_id",
                    "datatype": "BYTES",
                    "shape": [len(items)],
                    "parameters": {"binary_data_size": len(item_raw)},
                },
            ],
            "outputs": [{"name": "score", "parameters": {"binary_data": False}}],
        }
    )
    headers = {
        **auth(),
        "Content-Type": "application/octet-stream",
        "Inference-Header-Content-Length": str(len(header)),
    }
    response = client.post(INFER, content=header + user_raw + item_raw, headers=headers)
    assert_scores(scores_of(response), oracle(store.inputs_for("", items)))


@pytest.mark.parametrize(
    "how", ["all-raw", "ids-plus-user-features", "ids-plus-item-features", "int-ids-plus-features"]
)
def test_a_client_cannot_send_server_provided_features(
    client: TestClient, auth: Callable[..., dict[str, str]], store: FeatureStore, how: str
) -> None:
    """The attacker's move against the default deployment: choose the feature values."""
    items = list(store.item_ids[:3])
    feeds = store.inputs_for("u1", items)
    forged = {
        k: np.add(v, 0.3).astype(np.float32) if v.dtype == np.float32 else v
        for k, v in feeds.items()
    }
    if how == "all-raw":
        inputs = raw_tensors(forged)
    elif how == "int-ids-plus-features":
        inputs = raw_tensors({k: forged[k] for k in ("user_id", "item_id", "user_features")})
    else:
        name = how.removeprefix("ids-plus-").replace("-", "_")
        inputs = ids_body(["u1"], items)["inputs"] + raw_tensors({name: forged[name]})
    response = client.post(INFER, json={"inputs": inputs}, headers={**auth(), **JSON})
    assert response.status_code == 400, response.text
    message = response.json()["error"]
    assert "provided by the server" in message
    assert "infer:raw" in message
    named = [n for n in ("user_features", "item_features") if n in message]
    sent = [i["name"] for i in inputs if i["name"] in ("user_features", "item_features")]
    assert named == sent


def test_the_same_request_with_the_raw_scope_runs_on_the_callers_tensors(
    client: TestClient, auth: Callable[..., dict[str, str]], store: FeatureStore, oracle: Any
) -> None:
    items = list(store.item_ids[:3])
    feeds = store.inputs_for("u1", items)
    feeds["user_features"] = np.add(feeds["user_features"], 0.3).astype(np.float32)
    response = client.post(
        INFER, json={"inputs": raw_tensors(feeds)}, headers={**auth(RAW), **JSON}
    )
    assert_scores(scores_of(response), oracle(feeds), ids=False)


def test_the_raw_scope_is_off_by_default(
    client: TestClient, settings: Settings, initialised: InitReport
) -> None:
    assert all("infer:raw" not in scopes for scopes in DEFAULT_CLIENTS.values())
    assert all("infer:raw" not in c.scopes for c in settings.issuer.clients)
    # Not even the operator client may ask the token endpoint for it.
    for client_id in DEFAULT_CLIENTS:
        secret = initialised.client_secrets[client_id].read_text(encoding="utf-8").strip()
        basic = base64.b64encode(f"{client_id}:{secret}".encode()).decode()
        response = client.post(
            "/oauth/token",
            data={"grant_type": "client_credentials", "scope": "infer infer:raw"},
            headers={"Authorization": f"Basic {basic}"},
        )
        assert response.status_code == 400, response.text
        assert response.json()["error"] == "invalid_scope"


def test_every_other_scope_together_does_not_grant_raw_tensors(
    client: TestClient, auth: Callable[..., dict[str, str]], store: FeatureStore
) -> None:
    everything = tuple(sorted({s for scopes in DEFAULT_CLIENTS.values() for s in scopes}))
    feeds = store.inputs_for("u1", list(store.item_ids[:2]))
    response = client.post(
        INFER,
        json={"inputs": raw_tensors(feeds)},
        headers={**auth(everything, client_id="operator"), **JSON},
    )
    assert response.status_code == 400
    assert "provided by the server" in response.json()["error"]


@pytest.mark.parametrize(
    ("how", "needle"),
    [
        ("int-ids", "datatype must be BYTES"),
        ("two-users", "user_id: shape must be [n] with 1 <= n <= 1"),
        ("duplicate-items", "candidates must be unique"),
        ("empty-id", "each id is 1 to 128 characters"),
        ("number-as-id", "BYTES data must be strings"),
        ("missing-items", "missing ['item_id']"),
        ("nested-shape", "shape must be [n]"),
    ],
)
def test_bad_ids_get_an_oip_error(
    client: TestClient,
    auth: Callable[..., dict[str, str]],
    store: FeatureStore,
    how: str,
    needle: str,
) -> None:
    items = list(store.item_ids[:3])
    body = ids_body(["u1"], items)
    user, item = body["inputs"]
    if how == "int-ids":
        user.update(datatype="INT64", data=[1])
    elif how == "two-users":
        user.update(shape=[2], data=["u1", "u2"])
    elif how == "duplicate-items":
        item.update(shape=[2], data=[items[0], items[0]])
    elif how == "empty-id":
        user.update(data=[""])
    elif how == "number-as-id":
        item.update(data=[1, 2, 3])
    elif how == "missing-items":
        body["inputs"] = [user]
    elif how == "nested-shape":
        item.update(shape=[3, 1], data=[[i] for i in items])
    response = client.post(INFER, json=body, headers={**auth(), **JSON})
    assert response.status_code == 400, response.text
    assert needle in response.json()["error"]


def test_unknown_items_are_refused_as_v1_rank_refuses_them(
    client: TestClient, auth: Callable[..., dict[str, str]], store: FeatureStore
) -> None:
    items = [store.item_ids[0], "no-such-item", store.item_ids[1], "nor-this"]
    infer = client.post(INFER, json=ids_body(["u1"], items), headers={**auth(), **JSON})
    rank = client.post(
        "/v1/rank", json={"user_id": "u1", "item_ids": items}, headers={**auth(("rank",)), **JSON}
    )
    assert infer.status_code == 400
    assert rank.status_code == 422
    problem = rank.json()
    assert problem["unknown_item_positions"] == [1, 3]
    # The same typed error (the OIP shape carries its detail), never the ids themselves.
    assert infer.json()["error"] == problem["detail"]
    assert "no-such-item" not in infer.text


def test_the_id_path_is_audited_with_its_data_subject(
    client: TestClient, auth: Callable[..., dict[str, str]], store: FeatureStore
) -> None:
    """An OIP call about a user is that user's record, as a /v1/rank call is (access and
    erasure find it); a raw call names the policy that let the caller choose features."""
    items = list(store.item_ids[:2])
    response = client.post(INFER, json=ids_body(["u-audit-9"], items), headers={**auth(), **JSON})
    assert response.status_code == 200
    raw = client.post(
        INFER,
        json={"inputs": raw_tensors(store.inputs_for("", items))},
        headers={**auth(RAW), **JSON},
    )
    assert raw.status_code == 200
    exporter = auth(client_id="operator")

    def record(of: Any) -> dict[str, Any]:
        found = client.get(f"/v1/audit/records/{of.headers['x-request-id']}", headers=exporter)
        assert found.status_code == 200, found.text
        opened: dict[str, Any] = found.json()["record"]
        return opened

    by_ids, by_raw = record(response), record(raw)
    assert by_ids["personal"] == {"user_id": "u-audit-9"}
    assert by_ids["policy_ids"] == ["scope-infer"]
    assert "personal" not in by_raw
    assert by_raw["policy_ids"] == ["scope-infer", "scope-infer-raw"]
