"""KServe's `InferenceGRPCClient` (kserve 0.21), unchanged, against the gateway's gRPC service.

The client runs in its own interpreter (run_kserve_grpc.py); onnxruntime on the demo
model is the oracle for every score. KServe's compiled proto is the oracle for the
gateway's: the same file descriptor, byte for byte.
"""

from __future__ import annotations

from typing import Any

import pytest

from models.demo import model_bytes as demo_model_bytes
from models.ort import session_from_bytes
from tests.clients._gateway import run_client
from tests.clients._grpc_gateway import MODEL, GrpcGateway, grpc_served, ok, refused
from tests.served_scores import assert_served

__all__ = ["grpc_served"]  # the fixture, imported for pytest


@pytest.fixture(scope="module")
def report(grpc_served: GrpcGateway) -> dict[str, Any]:
    return run_client("run_kserve_grpc.py", grpc_served.spec())


def test_the_gateway_serves_kserves_own_proto(report: dict[str, Any]) -> None:
    assert report["same_descriptor"] is True


def test_server_methods_are_open(report: dict[str, Any]) -> None:
    assert ok(report, "live") is True
    assert ok(report, "ready") is True
    assert ok(report, "server_metadata") == {"name": "secure-model-gateway", "version": "0.1.0"}


def test_model_methods_need_a_token(report: dict[str, Any]) -> None:
    assert ok(report, "model_ready") is True
    refused(report, "model_ready_anonymous", "UNAUTHENTICATED")
    refused(report, "model_metadata_anonymous", "UNAUTHENTICATED")
    meta = ok(report, "model_metadata")
    session = session_from_bytes(demo_model_bytes())
    assert meta["name"] == MODEL
    # What a client sends (the default bundle's declaration): ids as BYTES.
    assert [i.name for i in session.get_inputs()][:2] == ["user_id", "item_id"]
    assert meta["inputs"] == [["user_id", "BYTES", [1]], ["item_id", "BYTES", [-1]]]
    assert meta["outputs"] == [["score", "FP32", [-1]]]


@pytest.mark.parametrize("check", ["infer_typed", "infer_raw", "infer_requested_output"])
def test_infer_matches_onnxruntime(
    report: dict[str, Any], grpc_served: GrpcGateway, check: str
) -> None:
    result = ok(report, check)
    assert result["id"] == "kserve-1"
    assert result["model_name"] == MODEL
    assert result["outputs"] == ["score"]
    assert result["shape"] == [4]
    # Within rounding and the bundle's keyed score perturbation (at most 0.004).
    assert_served(result["score"], grpc_served.expected)


@pytest.mark.parametrize("check", ["infer_anonymous", "infer_forged", "infer_expired"])
def test_bad_tokens_are_one_unauthenticated(report: dict[str, Any], check: str) -> None:
    outcome = refused(report, check, "UNAUTHENTICATED")
    assert outcome["message"] == report["infer_anonymous"]["message"]
    assert outcome["trailers"]["www-authenticate"].startswith('Bearer realm="gateway"')


def test_refusals_map_to_grpc_codes(report: dict[str, Any], grpc_served: GrpcGateway) -> None:
    denied = refused(report, "infer_rank_only", "PERMISSION_DENIED")
    refused(report, "infer_other_model", "NOT_FOUND")
    refused(report, "infer_bad_shape", "INVALID_ARGUMENT")
    refused(report, "infer_oversize", "RESOURCE_EXHAUSTED")
    assert ok(report, "live_after_oversize") is True
    record = grpc_served.audit_record(denied["trailers"]["x-request-id"])
    assert (record["route"], record["action"], record["status"]) == (
        "grpc:ModelInfer",
        "infer",
        403,
    )
