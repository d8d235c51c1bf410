"""Open Inference Protocol v2 REST surface: shapes, `id` echo, `{"error": ...}` errors."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient

from gateway.settings import Settings
from models.demo import model_bytes as demo_model_bytes
from models.features import FeatureStore
from models.ort import session_from_bytes
from tests.served_scores import assert_served, served_scores

JSON = {"Content-Type": "application/json"}
MODEL = "/v2/models/demo-ranker"
# These tests send raw tensors (every model input): the trusted scope the default bundle's
# `scope-infer-raw` asks for. The id path is tests/gateway/test_oip_provenance.py.
RAW = ("infer", "infer:raw")


@pytest.fixture(scope="module")
def feeds(settings: Settings) -> dict[str, np.ndarray]:
    store = FeatureStore.load(settings.resolve(settings.model.features_path))
    return store.inputs_for("u3", list(store.item_ids[10:14]))


def tensors(feeds: dict[str, np.ndarray], nested: bool = False) -> list[dict[str, Any]]:
    dtypes = {np.dtype(np.int64): "INT64", np.dtype(np.float32): "FP32"}
    return [
        {
            "name": name,
            "shape": list(array.shape),
            "datatype": dtypes[array.dtype],
            "data": array.tolist() if nested else array.reshape(-1).tolist(),
        }
        for name, array in feeds.items()
    ]


def test_server_endpoints_are_open(client: TestClient) -> None:
    meta = client.get("/v2").json()
    assert set(meta) == {"name", "version", "extensions"}
    assert client.get("/v2/health/live").status_code == 200
    assert client.get("/v2/health/ready").status_code == 200


def test_model_metadata_advertises_what_a_client_sends(
    client: TestClient, auth: Callable[..., dict[str, str]], settings: Settings
) -> None:
    assert client.get(MODEL).status_code == 401
    meta = client.get(MODEL, headers=auth()).json()
    session = session_from_bytes(demo_model_bytes())
    assert meta["name"] == "demo-ranker"
    assert meta["versions"] == ["1"]
    # The default bundle declares the ids `id` and the features `server`: a client sends
    # one user id and the candidate ids as strings; the features are not its to send.
    assert [i.name for i in session.get_inputs()][:2] == ["user_id", "item_id"]
    assert meta["inputs"] == [
        {"name": "user_id", "datatype": "BYTES", "shape": [1]},
        {"name": "item_id", "datatype": "BYTES", "shape": [-1]},
    ]
    assert meta["outputs"] == [{"name": "score", "datatype": "FP32", "shape": [-1]}]
    assert meta["parameters"]["package_digest"].startswith("sha256:")
    assert client.get(f"{MODEL}/versions/1", headers=auth()).json() == meta
    assert client.get(f"{MODEL}/ready", headers=auth()).json() == {
        "name": "demo-ranker",
        "ready": True,
    }


@pytest.mark.parametrize("nested", [False, True])
def test_infer_echoes_id_and_matches_onnxruntime(
    client: TestClient,
    auth: Callable[..., dict[str, str]],
    settings: Settings,
    feeds: dict[str, np.ndarray],
    nested: bool,
) -> None:
    request = {"id": "req-42", "inputs": tensors(feeds, nested)}
    response = client.post(f"{MODEL}/infer", json=request, headers={**auth(RAW), **JSON})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["id"] == "req-42"
    assert body["model_name"] == "demo-ranker"
    assert body["model_version"] == "1"
    (out,) = body["outputs"]
    assert out["name"] == "score"
    assert out["datatype"] == "FP32"
    assert out["shape"] == [4]
    # The model's scores with the default bundle's watermark, within the keyed score
    # perturbation (at most 0.004) and the output policy's rounding to 3 decimals (OIP too).
    assert_served(out["data"], served_scores(settings, feeds))


def test_infer_without_id_and_versioned_path(
    client: TestClient, auth: Callable[..., dict[str, str]], feeds: dict[str, np.ndarray]
) -> None:
    body = client.post(
        f"{MODEL}/versions/1/infer", json={"inputs": tensors(feeds)}, headers={**auth(RAW), **JSON}
    ).json()
    assert "id" not in body
    assert body["outputs"][0]["shape"] == [4]


def _mutate(feeds: dict[str, np.ndarray], how: str) -> dict[str, Any]:
    inputs = tensors(feeds)
    if how == "missing":
        inputs = inputs[1:]
    elif how == "extra":
        inputs.append({"name": "bogus", "shape": [1], "datatype": "FP32", "data": [1.0]})
    elif how == "dtype":
        inputs[0]["datatype"] = "FP32"
    elif how == "shape":
        inputs[2]["shape"] = [4, 3]
    elif how == "count":
        inputs[0]["data"] = inputs[0]["data"][:-1]
    elif how == "float-in-int":
        inputs[0]["data"][0] = 1.5
    elif how == "out-of-range-index":
        inputs[1]["data"][0] = 10**9
    elif how == "batch-mismatch":
        inputs[0]["shape"], inputs[0]["data"] = [3], inputs[0]["data"][:3]
    elif how == "unknown-output":
        return {"inputs": inputs, "outputs": [{"name": "nope"}]}
    return {"id": "bad-1", "inputs": inputs}


@pytest.mark.parametrize(
    "how",
    [
        "missing",
        "extra",
        "dtype",
        "shape",
        "count",
        "float-in-int",
        "out-of-range-index",
        "batch-mismatch",
        "unknown-output",
    ],
)
def test_bad_tensors_get_an_oip_error(
    client: TestClient, auth: Callable[..., dict[str, str]], feeds: dict[str, np.ndarray], how: str
) -> None:
    response = client.post(
        f"{MODEL}/infer", json=_mutate(feeds, how), headers={**auth(RAW), **JSON}
    )
    assert response.status_code == 400, response.text
    assert set(response.json()) == {"error"}
    assert isinstance(response.json()["error"], str)


def test_oip_errors_for_auth_malformed_and_unknown_model(
    client: TestClient, auth: Callable[..., dict[str, str]], feeds: dict[str, np.ndarray]
) -> None:
    anonymous = client.post(f"{MODEL}/infer", json={"inputs": tensors(feeds)}, headers=JSON)
    assert anonymous.status_code == 401
    assert set(anonymous.json()) == {"error"}
    assert "invalid_token" not in anonymous.headers["www-authenticate"]
    rank_only = client.post(
        f"{MODEL}/infer", json={"inputs": tensors(feeds)}, headers={**auth(("rank",)), **JSON}
    )
    assert rank_only.status_code == 403
    assert 'error="insufficient_scope"' in rank_only.headers["www-authenticate"]
    malformed = client.post(f"{MODEL}/infer", content=b"{", headers={**auth(), **JSON})
    assert malformed.status_code == 400
    assert set(malformed.json()) == {"error"}
    unknown = client.post(
        "/v2/models/other/infer", json={"inputs": tensors(feeds)}, headers={**auth(), **JSON}
    )
    assert unknown.status_code == 404
    assert set(unknown.json()) == {"error"}
    assert client.get("/v2/models/demo-ranker/versions/9", headers=auth()).status_code == 404
    # Anonymous callers cannot probe which model names exist.
    assert client.post("/v2/models/other/infer", json={}, headers=JSON).status_code == 401
