"""`tritonclient.grpc` 2.73, unchanged, against the gateway's OIP v2 gRPC service.

The client runs in its own interpreter (run_triton_grpc.py); onnxruntime on the demo
model is the oracle for every score (rounded as the default bundle's output policy says),
and the audit API is the oracle for what the gateway recorded.
"""

from __future__ import annotations

import re
from typing import Any

import pytest

from models.demo import model_bytes as demo_model_bytes
from models.ort import session_from_bytes
from tests.clients._gateway import run_client
from tests.clients._grpc_gateway import MODEL, GrpcGateway, grpc_served, ok, refused
from tests.served_scores import assert_served

__all__ = ["grpc_served"]  # the fixture, imported for pytest

REQUEST_ID = re.compile(r"[0-9a-f]{32}")


@pytest.fixture(scope="module")
def report(grpc_served: GrpcGateway) -> dict[str, Any]:
    return run_client("run_triton_grpc.py", grpc_served.spec())


def test_server_methods_are_open(report: dict[str, Any]) -> None:
    assert ok(report, "live") is True
    assert ok(report, "ready") is True
    assert ok(report, "server_metadata")["name"] == "secure-model-gateway"


def test_model_methods_need_a_token(report: dict[str, Any]) -> None:
    assert ok(report, "model_ready") is True
    refused(report, "model_ready_anonymous", "UNAUTHENTICATED")
    meta = ok(report, "model_metadata")
    session = session_from_bytes(demo_model_bytes())
    assert meta["name"] == MODEL
    assert meta["versions"] == ["1"]
    # What a client sends (the default bundle's declaration), not the ONNX signature.
    assert [i.name for i in session.get_inputs()][:2] == ["user_id", "item_id"]
    assert meta["inputs"] == [
        {"name": "user_id", "datatype": "BYTES", "shape": ["1"]},
        {"name": "item_id", "datatype": "BYTES", "shape": ["-1"]},
    ]
    assert ok(report, "ids_metadata") == meta
    assert meta["outputs"] == [{"name": "score", "datatype": "FP32", "shape": ["-1"]}]
    refused(report, "model_metadata_other", "NOT_FOUND")


@pytest.mark.parametrize("check", ["infer_raw", "infer_requested_output", "infer_typed"])
def test_infer_matches_onnxruntime(
    report: dict[str, Any], grpc_served: GrpcGateway, check: str
) -> None:
    result = ok(report, check)
    assert list(result["shape"]) == [4]
    # Within rounding and the bundle's keyed score perturbation (at most 0.004).
    assert_served(result["score"], grpc_served.expected)


@pytest.mark.parametrize("check", ["ids_infer", "ids_typed"])
def test_bytes_ids_are_ranked_from_the_feature_store(
    report: dict[str, Any], grpc_served: GrpcGateway, check: str
) -> None:
    result = ok(report, check)
    assert list(result["shape"]) == [4]
    # Within rounding (ids alone: stage 7 does not perturb them).
    assert_served(result["score"], grpc_served.ids_expected, perturbed=False)
    assert result["id"] == {"ids_infer": "ids-1", "ids_typed": "typed-ids"}[check]


@pytest.mark.parametrize("check", ["ids_with_features", "raw_without_scope"])
def test_features_are_refused_without_the_raw_scope(report: dict[str, Any], check: str) -> None:
    refusal = refused(report, check, "INVALID_ARGUMENT")
    assert "provided by the server" in refusal["message"]
    assert "user_features" in refusal["message"]


def test_infer_echoes_the_request_id(report: dict[str, Any]) -> None:
    assert ok(report, "infer_raw")["id"] == "req-7"
    assert ok(report, "infer_typed")["id"] == "typed-1"
    assert ok(report, "infer_requested_output")["outputs"] == ["score"]


@pytest.mark.parametrize("check", ["infer_anonymous", "infer_forged", "infer_expired"])
def test_bad_tokens_are_one_unauthenticated(report: dict[str, Any], check: str) -> None:
    outcome = refused(report, check, "UNAUTHENTICATED")
    # One answer for every cause: nothing tells a forger what failed.
    assert outcome["message"] == report["infer_anonymous"]["message"]


def test_wrong_scope_is_permission_denied(report: dict[str, Any]) -> None:
    refused(report, "infer_rank_only", "PERMISSION_DENIED")
    challenge = refused(report, "infer_typed_rank_only", "PERMISSION_DENIED")["trailers"]
    assert 'error="insufficient_scope"' in challenge["www-authenticate"]
    anonymous = refused(report, "infer_typed_anonymous", "UNAUTHENTICATED")["trailers"]
    # RFC 6750 §3.1: no error code when the request carried no credentials.
    assert anonymous["www-authenticate"] == 'Bearer realm="gateway"'


def test_unknown_model_is_not_found_only_for_a_known_caller(report: dict[str, Any]) -> None:
    refused(report, "infer_other_model", "NOT_FOUND")
    # Anonymous callers cannot probe which model names exist.
    refused(report, "infer_other_model_anonymous", "UNAUTHENTICATED")


def test_bad_tensors_are_invalid_argument(report: dict[str, Any]) -> None:
    refused(report, "infer_bad_shape", "INVALID_ARGUMENT")
    refused(report, "infer_typed_and_raw", "INVALID_ARGUMENT")
    unknown = refused(report, "infer_unknown_output", "INVALID_ARGUMENT")
    assert "nope" not in unknown["message"]  # the client's value is never echoed


def test_bytes_that_are_no_protobuf_are_parsed_after_authentication(
    report: dict[str, Any],
) -> None:
    refused(report, "garbage_anonymous", "UNAUTHENTICATED")
    refused(report, "garbage", "INVALID_ARGUMENT")


def test_oversize_message_is_refused_and_the_server_lives_on(report: dict[str, Any]) -> None:
    refused(report, "infer_oversize", "RESOURCE_EXHAUSTED")
    assert ok(report, "live_after_oversize") is True


def test_grpc_calls_are_audited(report: dict[str, Any], grpc_served: GrpcGateway) -> None:
    typed = ok(report, "infer_typed")
    assert REQUEST_ID.fullmatch(typed["request_id"])
    assert typed["client_request_id"] == "client-typed-1"
    record = grpc_served.audit_record(typed["request_id"])
    assert record["route"] == "grpc:ModelInfer"
    assert record["action"] == "infer"
    assert record["status"] == 200
    assert record["client_id"] == "demo"
    assert record["client_request_id"] == "client-typed-1"
    assert record["model"]["name"] == MODEL

    denied = report["infer_typed_rank_only"]["trailers"]["x-request-id"]
    refusal = grpc_served.audit_record(denied)
    assert (refusal["route"], refusal["status"], refusal["client_id"]) == (
        "grpc:ModelInfer",
        403,
        "demo",
    )
    malformed = grpc_served.audit_record(report["garbage"]["trailers"]["x-request-id"])
    assert (malformed["route"], malformed["status"]) == ("grpc:ModelInfer", 400)
