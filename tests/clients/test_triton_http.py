"""`tritonclient.http` 2.73, unchanged, against a real gateway on 127.0.0.1.

The client runs in its own interpreter (run_triton_http.py, see _gateway.py); onnxruntime
on the demo model is the oracle for every score, rounded as the default bundle's output
policy says (3 decimals on OIP too).
"""

from __future__ import annotations

from typing import Any

import httpx
import numpy as np
import pytest
from prometheus_client.parser import text_string_to_metric_families

from models.features import FeatureStore
from tests.clients._gateway import RunningGateway, run_client
from tests.served_scores import assert_served, served_scores

MODEL = "demo-ranker"
# The id path's request (feature provenance), the candidates of `demo_feeds` by their ids.
ID_ITEMS = ["i11", "i12", "i13", "i14"]
OIP_TYPES = {np.dtype(np.int64): "INT64", np.dtype(np.float32): "FP32"}


def client_spec(gateway: RunningGateway, feeds: dict[str, np.ndarray]) -> dict[str, Any]:
    return {
        "host_port": gateway.host_port,
        "url": gateway.http_url,
        "model": MODEL,
        "tokens": {
            # `inputs` are raw tensors: the trusted scope; `ids` is a default client's token.
            "infer": gateway.token(("infer", "infer:raw")),
            "ids": gateway.token(("infer",)),
            "rank": gateway.token(("rank",)),
            "admin": gateway.token(("admin",)),
        },
        "ids": {"user_id": "u3", "item_ids": ID_ITEMS},
        "inputs": [
            {
                "name": name,
                "datatype": OIP_TYPES[array.dtype],
                "shape": list(array.shape),
                "data": array.reshape(-1).tolist(),
            }
            for name, array in feeds.items()
        ],
    }


def demo_feeds(gateway: RunningGateway) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Real model inputs for 4 candidates, and what the gateway serves for them before
    perturbation and rounding (onnxruntime marked by the bundle's watermark)."""
    settings = gateway.settings
    store = FeatureStore.load(settings.resolve(settings.model.features_path))
    feeds = store.inputs_for("u3", list(store.item_ids[10:14]))
    return feeds, served_scores(settings, feeds)


@pytest.fixture(scope="module")
def report(gateway: RunningGateway) -> dict[str, Any]:
    feeds, expected = demo_feeds(gateway)
    found = run_client("run_triton_http.py", client_spec(gateway, feeds))
    found["expected"] = expected.tolist()
    found["ids_expected"] = ids_expected(gateway).tolist()
    # Scraped right after the client's last call (none of those after the statistics ran
    # the model): the oracle for what the statistics say the model did.
    found["metrics"] = scrape(gateway.http_url)
    return found


def ids_expected(gateway: RunningGateway) -> np.ndarray:
    """The id path's scores for ID_ITEMS: the store's rows, the cold-start user (no consent)."""
    settings = gateway.settings
    store = FeatureStore.load(settings.resolve(settings.model.features_path))
    assert list(store.item_ids[10:14]) == ID_ITEMS
    return served_scores(settings, store.inputs_for("", ID_ITEMS))


def scrape(url: str) -> dict[str, float]:
    text = httpx.get(f"{url}/metrics", timeout=30).text
    return {
        sample.name: sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.labels.get("model") == MODEL
    }


def ok(report: dict[str, Any], step: str) -> Any:
    outcome = report[step]
    assert "ok" in outcome, f"{step}: {outcome}"
    return outcome["ok"]


def refused(report: dict[str, Any], step: str) -> dict[str, str]:
    outcome = report[step]
    assert "error" in outcome, f"{step} was not refused: {outcome}"
    error: dict[str, str] = outcome["error"]
    return error


def test_server_and_model_endpoints(report: dict[str, Any]) -> None:
    meta = ok(report, "server_metadata")
    assert {"binary_tensor_data", "statistics", "model_configuration"} <= set(meta["extensions"])
    assert ok(report, "live") is True
    assert ok(report, "ready") is True
    assert ok(report, "model_ready") is True
    meta = ok(report, "model_metadata")
    assert meta["name"] == MODEL
    # What a client sends under the default bundle: string ids, no features.
    assert meta["inputs"] == [
        {"name": "user_id", "datatype": "BYTES", "shape": [1]},
        {"name": "item_id", "datatype": "BYTES", "shape": [-1]},
    ]


@pytest.mark.parametrize("step", ["ids_json", "ids_binary", "ids_from_metadata"])
def test_bytes_ids_are_ranked_from_the_feature_store(report: dict[str, Any], step: str) -> None:
    result = ok(report, step)
    # Within rounding (ids alone: stage 7 does not perturb them).
    assert_served(result["score"], report["ids_expected"], perturbed=False)
    assert result["response"]["outputs"][0]["shape"] == [4]


@pytest.mark.parametrize("step", ["ids_with_features", "raw_without_scope"])
def test_features_are_refused_without_the_raw_scope(report: dict[str, Any], step: str) -> None:
    error = refused(report, step)
    assert error["status"] == "400"
    assert "provided by the server" in error["message"]
    assert "user_features" in error["message"]


@pytest.mark.parametrize(
    "step",
    ["json", "binary_in_binary_out", "binary_in_json_out", "json_in_binary_out", "mixed_inputs"],
)
def test_inference_matches_onnxruntime_on_every_encoding(report: dict[str, Any], step: str) -> None:
    result = ok(report, step)
    assert result["score_dtype"] == "float32"
    # Within rounding and the bundle's keyed score perturbation (at most 0.004).
    assert_served(result["score"], report["expected"])
    (output,) = result["response"]["outputs"]
    assert output["name"] == "score"
    assert output["shape"] == [4]
    binary = step in ("binary_in_binary_out", "json_in_binary_out", "mixed_inputs")
    # A binary output carries its byte count, not data, in the JSON header.
    if binary:
        assert "data" not in output
        assert output["parameters"] == {"binary_data_size": 4 * 4}
    else:
        assert "parameters" not in output
        assert len(output["data"]) == 4
    assert result["response"]["model_name"] == MODEL


def test_request_id_is_echoed(report: dict[str, Any]) -> None:
    assert ok(report, "binary_in_binary_out")["response"]["id"] == "triton-7"


@pytest.mark.parametrize(
    ("step", "status"),
    [
        ("wrong_model", "404"),
        ("wrong_version", "404"),
        ("bad_shape", "400"),
        ("bad_shape_json", "400"),
        ("missing_token", "401"),
        ("wrong_scope", "403"),
        ("unknown_output", "400"),
        ("gzip_request", "415"),
        ("statistics_infer_scope", "403"),
        ("repository_index_infer_scope", "403"),
        ("config_wrong_model", "404"),
    ],
)
def test_errors_reach_the_client_with_their_status(
    report: dict[str, Any], step: str, status: str
) -> None:
    error = refused(report, step)
    assert error["status"] == status
    # The OIP error body is read by the client: a message, never a stack trace.
    assert error["message"]
    assert "Traceback" not in error["message"]
    assert "no-such" not in error["message"]


def test_statistics_count_what_ran(report: dict[str, Any]) -> None:
    (stats,) = ok(report, "statistics")["model_stats"]
    assert stats["name"] == MODEL
    assert stats["version"] == "1"
    infer = stats["inference_stats"]
    # The five successful inferences above, each of 4 rows, ran before the statistics call.
    assert infer["success"]["count"] >= 5
    assert infer["fail"]["count"] >= 4
    assert stats["execution_count"] >= 1
    assert stats["inference_count"] >= 5 * 4
    assert infer["compute_infer"]["count"] == stats["execution_count"]
    assert infer["compute_infer"]["ns"] > 0
    # The same numbers as Prometheus exposes them (parsed by prometheus_client's parser).
    metrics = report["metrics"]
    assert stats["execution_count"] == metrics["gateway_model_inference_seconds_count"]
    assert stats["inference_count"] == metrics["gateway_model_batch_rows_sum"]
    # Whole nanoseconds of the same sum (rounded once).
    run_ns = round(metrics["gateway_model_inference_seconds_sum"] * 1e9)
    assert infer["compute_infer"]["ns"] == run_ns
    assert ok(report, "statistics_all")["model_stats"][0]["name"] == MODEL
    assert ok(report, "statistics_version")["model_stats"][0]["version"] == "1"


def test_model_config_and_repository_index(report: dict[str, Any]) -> None:
    config = ok(report, "config")
    assert config["name"] == MODEL
    assert config["platform"] == "onnxruntime_onnx"
    # Triton's configuration shows what a client sends, as the metadata does.
    assert config["input"] == [
        {"name": "user_id", "data_type": "TYPE_STRING", "dims": [1]},
        {"name": "item_id", "data_type": "TYPE_STRING", "dims": [-1]},
    ]
    assert config["output"] == [{"name": "score", "data_type": "TYPE_FP32", "dims": [-1]}]
    index = ok(report, "repository_index")
    assert {"name": MODEL, "version": "1", "state": "READY", "reason": ""} in index
