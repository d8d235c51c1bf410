"""Raw tensor bytes of the OIP binary tensor data extension (REST) and of gRPC raw contents.

Fixed-size datatypes are little-endian, row-major; BYTES is each element as a 4-byte
little-endian length followed by that many bytes. Decoding trusts nothing: the byte
count must be exactly what shape and datatype need, and error messages name the tensor
and the rule, never the bytes.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Sequence
from typing import Any

import numpy as np
import orjson
from numpy.typing import NDArray

from gateway.errors import MalformedRequest
from gateway.oip_wire import RAW_DTYPES

BYTES = "BYTES"
_LENGTH = struct.Struct("<I")


def tensor_from_raw(
    where: str, datatype: str, shape: Sequence[int], raw: bytes | memoryview
) -> NDArray[Any]:
    """One tensor's raw bytes → a numpy array of `shape` (a copy: the caller's buffer may go).

    `where` names the tensor in errors (its position: its name is the client's text)."""
    count = math.prod(shape)
    if datatype == BYTES:
        return _bytes_tensor(where, shape, count, raw)
    dtype = RAW_DTYPES.get(datatype)
    if dtype is None:
        raise MalformedRequest(f"{where}: datatype is not a known OIP datatype")
    if len(raw) != count * dtype.itemsize:
        raise MalformedRequest(
            f"{where}: {len(raw)} bytes of data, shape and datatype need {count * dtype.itemsize}"
        )
    array = np.frombuffer(raw, dtype=dtype).reshape(tuple(shape))
    if datatype == "BOOL" and array.size and not np.isin(array.view(np.uint8), (0, 1)).all():
        raise MalformedRequest(f"{where}: BOOL bytes must be 0 or 1")
    # Native byte order and writable for the stages after decode (and onnxruntime).
    return array.astype(dtype.newbyteorder("="), copy=True)


def _bytes_tensor(
    where: str, shape: Sequence[int], count: int, raw: bytes | memoryview
) -> NDArray[Any]:
    view = memoryview(raw)
    # Each element needs at least its 4-byte length: bounds the loop before it starts.
    if count * _LENGTH.size > len(view):
        raise MalformedRequest(f"{where}: too few bytes for {count} BYTES elements")
    items: list[bytes] = []
    offset = 0
    for _ in range(count):
        if offset + _LENGTH.size > len(view):
            raise MalformedRequest(f"{where}: BYTES element length is cut short")
        (length,) = _LENGTH.unpack_from(view, offset)
        offset += _LENGTH.size
        if length > len(view) - offset:
            raise MalformedRequest(f"{where}: BYTES element runs past the tensor's data")
        items.append(bytes(view[offset : offset + length]))
        offset += length
    if offset != len(view):
        raise MalformedRequest(f"{where}: bytes left over after {count} BYTES elements")
    array = np.empty(count, dtype=object)
    array[:] = items
    return array.reshape(tuple(shape))


def tensor_to_raw(datatype: str, array: Any) -> bytes:
    """A tensor's bytes as the binary extension (and gRPC raw contents) send them."""
    values = np.asarray(array)
    if datatype == BYTES:
        parts: list[bytes] = []
        for item in values.reshape(-1).tolist():
            data = item if isinstance(item, bytes) else str(item).encode()
            parts.append(_LENGTH.pack(len(data)))
            parts.append(data)
        return b"".join(parts)
    dtype = RAW_DTYPES[datatype]
    return np.ascontiguousarray(values, dtype=dtype).tobytes()


def json_values(datatype: str, array: Any) -> Any:
    """A tensor's data for a JSON body: the numpy array itself (orjson renders it), flat;
    BYTES as strings (OIP JSON has no bytes type)."""
    values = np.asarray(array).reshape(-1)
    if datatype == BYTES or values.dtype.kind == "O":
        return [
            v.decode("utf-8", errors="replace") if isinstance(v, bytes) else str(v)
            for v in values.tolist()
        ]
    return np.ascontiguousarray(values)


def encode_infer_response(body: dict[str, Any]) -> tuple[bytes, int | None]:
    """The infer response (gateway.respond's dict) as REST sends it: JSON, or with binary
    outputs a JSON header, then each binary output's bytes in output order. The second
    value is the header's length (`Inference-Header-Content-Length`), None for plain JSON.
    """
    header_outputs: list[dict[str, Any]] = []
    chunks: list[bytes] = []
    for output in body["outputs"]:
        parameters = dict(output.get("parameters") or {})
        out = {k: v for k, v in output.items() if k not in ("data", "parameters")}
        if parameters.pop("binary_data", False):
            raw = tensor_to_raw(output["datatype"], output["data"])
            chunks.append(raw)
            parameters["binary_data_size"] = len(raw)
        else:
            out["data"] = json_values(output["datatype"], output["data"])
        if parameters:
            out["parameters"] = parameters
        header_outputs.append(out)
    header = orjson.dumps({**body, "outputs": header_outputs}, option=orjson.OPT_SERIALIZE_NUMPY)
    if not chunks:
        return header, None
    return b"".join([header, *chunks]), len(header)
