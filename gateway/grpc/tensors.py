"""Protobuf tensors ↔ numpy: a `ModelInferRequest` to a `WireInferRequest`, a response
body to a `ModelInferResponse`.

Only the wire is checked here (the bytes fit the datatype and shape, one kind of
contents per tensor); whether the tensors fit the model is the decode stage's
question, asked the same way for REST and gRPC. Errors name the tensor by its
position, never by the name the client sent.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Mapping
from typing import Any

import numpy as np
from numpy.typing import NDArray

from gateway.errors import InvalidRequest
from gateway.grpc import grpc_predict_v2_pb2 as pb
from gateway.oip_wire import RAW_DTYPES, WireInferRequest, WireOutputRequest, WireTensor

# Little-endian on the wire (the protocol's raw contents), whatever the host.
DTYPES = RAW_DTYPES

# The typed field of `InferTensorContents` that carries each datatype (FP16: raw only).
CONTENTS_FIELD: Mapping[str, str] = {
    "BOOL": "bool_contents",
    "UINT8": "uint_contents",
    "UINT16": "uint_contents",
    "UINT32": "uint_contents",
    "UINT64": "uint64_contents",
    "INT8": "int_contents",
    "INT16": "int_contents",
    "INT32": "int_contents",
    "INT64": "int64_contents",
    "FP32": "fp32_contents",
    "FP64": "fp64_contents",
    "BYTES": "bytes_contents",
}
_ALL_FIELDS = frozenset(CONTENTS_FIELD.values())
# The decode stage bounds rows; this bounds the element count a shape may claim before
# any array is built from it (a message is at most `limits.max_body_bytes` anyway).
MAX_ELEMENTS = 1 << 28


def _parameter(value: pb.InferParameter) -> Any:
    kind = value.WhichOneof("parameter_choice")
    return None if kind is None else getattr(value, kind)


def _parameters(params: Mapping[str, pb.InferParameter]) -> dict[str, Any]:
    return {key: _parameter(value) for key, value in params.items()}


def _shape(where: str, dims: Any) -> tuple[int, ...]:
    shape = tuple(int(d) for d in dims)
    if any(d < 0 for d in shape):
        raise InvalidRequest(f"{where}: shape dimensions must not be negative")
    if math.prod(shape) > MAX_ELEMENTS:
        raise InvalidRequest(f"{where}: shape has too many elements")
    return shape


def _split_bytes(where: str, raw: bytes) -> NDArray[Any]:
    """BYTES raw contents: each element a 4-byte little-endian length, then the bytes."""
    items: list[bytes] = []
    at = 0
    while at < len(raw):
        if at + 4 > len(raw):
            raise InvalidRequest(f"{where}: BYTES raw contents are truncated")
        (length,) = struct.unpack_from("<I", raw, at)
        at += 4
        if at + length > len(raw):
            raise InvalidRequest(f"{where}: BYTES raw contents are truncated")
        items.append(raw[at : at + length])
        at += length
    array = np.empty(len(items), dtype=object)
    array[:] = items
    return array


def _from_raw(where: str, datatype: str, shape: tuple[int, ...], raw: bytes) -> NDArray[Any]:
    if datatype == "BYTES":
        flat = _split_bytes(where, raw)
    else:
        dtype = DTYPES.get(datatype)
        if dtype is None:
            raise InvalidRequest(f"{where}: datatype is not supported")
        if len(raw) != math.prod(shape) * dtype.itemsize:
            raise InvalidRequest(f"{where}: raw contents do not match the shape and datatype")
        flat = np.frombuffer(raw, dtype=dtype)
    if flat.size != math.prod(shape):
        raise InvalidRequest(f"{where}: raw contents do not match the shape")
    return flat.reshape(shape)


def _from_contents(
    where: str, datatype: str, shape: tuple[int, ...], contents: pb.InferTensorContents
) -> NDArray[Any]:
    field = CONTENTS_FIELD.get(datatype)
    if field is None:
        raise InvalidRequest(f"{where}: datatype is not supported")
    others = [name for name in _ALL_FIELDS - {field} if len(getattr(contents, name))]
    if others:
        raise InvalidRequest(f"{where}: contents do not match the datatype")
    values = getattr(contents, field)
    if len(values) != math.prod(shape):
        raise InvalidRequest(f"{where}: contents do not match the shape")
    if datatype == "BYTES":
        array = np.empty(len(values), dtype=object)
        array[:] = list(values)
        return array.reshape(shape)
    dtype = DTYPES[datatype]
    try:
        return np.array(values, dtype=dtype).reshape(shape)
    except OverflowError:
        raise InvalidRequest(f"{where}: value out of range for the datatype") from None


def wire_request(request: pb.ModelInferRequest) -> WireInferRequest:
    """The request as the decode stage reads it; `InvalidRequest` for a broken wire form."""
    raw = request.raw_input_contents
    if raw and len(raw) != len(request.inputs):
        raise InvalidRequest("raw_input_contents: one entry per input is required")
    tensors = []
    for index, item in enumerate(request.inputs):
        where = f"inputs[{index}]"
        shape = _shape(where, item.shape)
        if raw:
            if item.HasField("contents"):
                raise InvalidRequest(f"{where}: send contents or raw_input_contents, not both")
            data = _from_raw(where, item.datatype, shape, raw[index])
        else:
            data = _from_contents(where, item.datatype, shape, item.contents)
        tensors.append(
            WireTensor(
                name=item.name,
                datatype=item.datatype,
                shape=shape,
                data=data,
                parameters=_parameters(item.parameters),
            )
        )
    outputs = (
        tuple(WireOutputRequest(name=o.name) for o in request.outputs) if request.outputs else None
    )
    return WireInferRequest(
        id=request.id or None,
        inputs=tuple(tensors),
        outputs=outputs,
        model_name=request.model_name or None,
        model_version=request.model_version or None,
        parameters=_parameters(request.parameters),
    )


def _raw_bytes(datatype: str, data: Any) -> bytes:
    if datatype == "BYTES":
        parts = []
        for value in np.asarray(data, dtype=object).reshape(-1).tolist():
            encoded = value if isinstance(value, bytes) else str(value).encode()
            parts.append(struct.pack("<I", len(encoded)) + encoded)
        return b"".join(parts)
    return np.ascontiguousarray(np.asarray(data, dtype=DTYPES[datatype])).tobytes()


def infer_response(body: Mapping[str, Any]) -> pb.ModelInferResponse:
    """The pipeline's response body as raw output contents, which both stock clients read."""
    response = pb.ModelInferResponse(
        model_name=str(body.get("model_name", "")),
        model_version=str(body.get("model_version", "")),
        id=str(body.get("id") or ""),
    )
    for output in body["outputs"]:
        response.outputs.add(
            name=output["name"], datatype=output["datatype"], shape=list(output["shape"])
        )
        response.raw_output_contents.append(_raw_bytes(output["datatype"], output["data"]))
    return response
