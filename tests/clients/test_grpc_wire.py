"""The gRPC tensor wire (gateway.grpc.tensors) below the stock clients: the datatypes and
broken forms the demo model never sees. `struct` is the oracle for the little-endian
layout the protocol fixes; no refusal names the tensor the client sent."""

from __future__ import annotations

import struct

import grpc
import numpy as np
import pytest

from gateway.errors import (
    GatewayError,
    InsufficientScope,
    InvalidRequest,
    InvalidToken,
    MalformedRequest,
    NotFound,
    PayloadTooLarge,
    RequestTimeout,
    TooManyRequests,
)
from gateway.grpc import grpc_predict_v2_pb2 as pb
from gateway.grpc.status import code_of
from gateway.grpc.tensors import infer_response, wire_request

SECRET_NAME = "patient-4711"


def _request(datatype: str, shape: list[int], raw: bytes | None = None) -> pb.ModelInferRequest:
    request = pb.ModelInferRequest(model_name="m")
    request.inputs.add(name=SECRET_NAME, datatype=datatype, shape=shape)
    if raw is not None:
        request.raw_input_contents.append(raw)
    return request


@pytest.mark.parametrize(
    ("datatype", "fmt", "values"),
    [
        ("FP32", "<f", [1.5, -2.25, 3.0]),
        ("FP64", "<d", [1e300, -0.5, 2.0]),
        ("INT64", "<q", [-(2**62), 0, 2**40]),
        ("INT8", "<b", [-128, 0, 127]),
        ("UINT16", "<H", [0, 1, 65535]),
        ("BOOL", "<?", [True, False, True]),
        ("FP16", "<e", [0.5, -1.0, 2.0]),
    ],
)
def test_raw_contents_are_little_endian_values(datatype: str, fmt: str, values: list) -> None:
    raw = b"".join(struct.pack(fmt, v) for v in values)
    (tensor,) = wire_request(_request(datatype, [3], raw)).inputs
    assert tensor.shape == (3,)
    assert tensor.data.tolist() == values


def test_typed_contents_and_bytes() -> None:
    request = _request("INT32", [2, 2])
    request.inputs[0].contents.int_contents.extend([1, -2, 3, -4])
    strings = request.inputs.add(name="s", datatype="BYTES", shape=[2])
    strings.contents.bytes_contents.extend([b"a", b"\x00bc"])
    first, second = wire_request(request).inputs
    assert first.data.tolist() == [[1, -2], [3, -4]]
    assert first.data.dtype == np.int32
    assert second.data.tolist() == [b"a", b"\x00bc"]


def test_raw_bytes_elements_are_length_prefixed() -> None:
    raw = struct.pack("<I", 1) + b"a" + struct.pack("<I", 0) + struct.pack("<I", 3) + b"xyz"
    (tensor,) = wire_request(_request("BYTES", [3], raw)).inputs
    assert tensor.data.tolist() == [b"a", b"", b"xyz"]


def test_request_fields_are_kept() -> None:
    request = _request("FP32", [1], struct.pack("<f", 1.0))
    request.id = "r-1"
    request.model_version = "3"
    request.outputs.add(name="score")
    request.parameters["priority"].int64_param = 7
    wire = wire_request(request)
    assert (wire.id, wire.model_name, wire.model_version) == ("r-1", "m", "3")
    assert [o.name for o in wire.outputs or ()] == ["score"]
    assert wire.parameters == {"priority": 7}


def _typed(datatype: str, field: str, values: list) -> pb.ModelInferRequest:
    request = _request(datatype, [len(values)])
    getattr(request.inputs[0].contents, field).extend(values)
    return request


BROKEN = {
    "raw size not the shape's": _request("FP32", [3], b"\x00" * 8),
    "raw count not the inputs'": _request("FP32", [1], struct.pack("<f", 1.0)),
    "typed field of another datatype": _typed("FP32", "int64_contents", [1, 2]),
    "typed count not the shape's": _request("FP32", [4]),
    "negative dimension": _request("FP32", [-1], b""),
    "shape past any message": _request("FP32", [1 << 20, 1 << 20], b""),
    "unknown datatype": _request("COMPLEX64", [1], b"\x00" * 8),
    "BYTES raw truncated": _request("BYTES", [1], struct.pack("<I", 9) + b"abc"),
    "INT8 typed out of range": _typed("INT8", "int_contents", [1000]),
}
BROKEN["raw count not the inputs'"].raw_input_contents.append(b"\x00" * 4)
BROKEN["typed count not the shape's"].inputs[0].contents.fp32_contents.extend([1.0])
both = _request("FP32", [1], struct.pack("<f", 1.0))
both.inputs[0].contents.fp32_contents.append(1.0)
BROKEN["typed and raw both"] = both


@pytest.mark.parametrize("case", sorted(BROKEN))
def test_broken_wire_forms_are_invalid_requests(case: str) -> None:
    with pytest.raises(InvalidRequest) as caught:
        wire_request(BROKEN[case])
    assert SECRET_NAME not in str(caught.value.detail)


def test_response_is_raw_output_contents() -> None:
    scores = np.array([0.25, -1.5], dtype=np.float32)
    reply = infer_response(
        {
            "model_name": "m",
            "model_version": "1",
            "id": "r-1",
            "outputs": [{"name": "score", "datatype": "FP32", "shape": [2], "data": scores}],
        }
    )
    assert (reply.model_name, reply.model_version, reply.id) == ("m", "1", "r-1")
    assert [(o.name, o.datatype, list(o.shape)) for o in reply.outputs] == [("score", "FP32", [2])]
    assert reply.raw_output_contents[0] == struct.pack("<2f", 0.25, -1.5)


@pytest.mark.parametrize(
    ("error", "code"),
    [
        (InvalidToken(log_cause="x"), grpc.StatusCode.UNAUTHENTICATED),
        (InsufficientScope("infer"), grpc.StatusCode.PERMISSION_DENIED),
        (NotFound("x"), grpc.StatusCode.NOT_FOUND),
        (MalformedRequest("x"), grpc.StatusCode.INVALID_ARGUMENT),
        (InvalidRequest("x"), grpc.StatusCode.INVALID_ARGUMENT),
        (PayloadTooLarge("x"), grpc.StatusCode.RESOURCE_EXHAUSTED),
        (TooManyRequests(3, log_cause="x"), grpc.StatusCode.RESOURCE_EXHAUSTED),
        (RequestTimeout(log_cause="x"), grpc.StatusCode.DEADLINE_EXCEEDED),
        (GatewayError(), grpc.StatusCode.INTERNAL),
    ],
)
def test_errors_map_to_grpc_codes(error: GatewayError, code: grpc.StatusCode) -> None:
    assert code_of(error) is code
