"""KServe's `InferenceRESTClient` (kserve 0.21, protocol v2), unchanged, against a real
gateway on 127.0.0.1. The client runs in its own interpreter (run_kserve_rest.py);
onnxruntime on the demo model is the oracle for every score."""

from __future__ import annotations

from typing import Any

import pytest

from tests.clients._gateway import RunningGateway, run_client
from tests.clients.test_triton_http import MODEL, client_spec, demo_feeds, ok, refused
from tests.served_scores import assert_served


@pytest.fixture(scope="module")
def report(gateway: RunningGateway) -> dict[str, Any]:
    feeds, expected = demo_feeds(gateway)
    found = run_client("run_kserve_rest.py", client_spec(gateway, feeds))
    found["expected"] = expected.tolist()
    return found


def test_health(report: dict[str, Any]) -> None:
    assert ok(report, "live") is True
    assert ok(report, "ready") is True
    assert ok(report, "model_ready") is True


@pytest.mark.parametrize(
    "step", ["json", "binary_in", "binary_in_binary_out", "json_in_binary_out_all"]
)
def test_inference_matches_onnxruntime(report: dict[str, Any], step: str) -> None:
    result = ok(report, step)
    assert result["model_name"] == MODEL
    assert result["name"] == "score"
    assert result["datatype"] == "FP32"
    assert result["shape"] == [4]
    assert result["score_dtype"] == "float32"
    # Within rounding and the bundle's keyed score perturbation (at most 0.004).
    assert_served(result["score"], report["expected"])
    # Binary outputs were asked for (per output, or for all) exactly in these two steps.
    assert result["binary_response"] is (step in ("binary_in_binary_out", "json_in_binary_out_all"))


def test_request_id_is_echoed(report: dict[str, Any]) -> None:
    assert ok(report, "json")["id"] == "kserve-1"


@pytest.mark.parametrize(
    ("step", "status"),
    [
        ("body_names_other_model", "400"),
        ("wrong_model", "404"),
        ("bad_shape", "400"),
        ("missing_token", "401"),
        ("wrong_scope", "403"),
    ],
)
def test_errors_reach_the_client_with_their_status(
    report: dict[str, Any], step: str, status: str
) -> None:
    error = refused(report, step)
    assert error["status"] == status
    # KServe quotes the OIP error body in its message: ours names no client value.
    assert "other-model" not in error["message"]
    assert "no-such-model" not in error["message"].split("for url")[0]
