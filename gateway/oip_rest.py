"""An OIP v2 REST infer body → `WireInferRequest`: JSON, or JSON plus binary tensor data.

As `tritonclient.http` and KServe's REST client send it: the media type may be absent
(JSON is meant), `application/json`, or `application/octet-stream` with the binary
extension's `Inference-Header-Content-Length` naming how many leading bytes are the JSON
header. Inputs whose `parameters.binary_data_size` is set take that many bytes, in input
order, from what follows; the sizes must account for every byte after the header.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from gateway.errors import MalformedRequest, UnsupportedMediaType
from gateway.oip_binary import tensor_from_raw
from gateway.oip_wire import WireInferRequest, WireOutputRequest, WireTensor
from gateway.schemas import InferInput, InferRequest, parse_json

HEADER_LENGTH = "inference-header-content-length"
BINARY_DATA_SIZE = "binary_data_size"
_JSON_MEDIA = ("", "application/json")
_BINARY_MEDIA = (*_JSON_MEDIA, "application/octet-stream")


def _media(headers: Mapping[str, str]) -> str:
    return headers.get("content-type", "").split(";")[0].strip().lower()


def require_oip_json(headers: Mapping[str, str]) -> None:
    """An OIP JSON body: `application/json` (or `+json`), or no media type at all."""
    media = _media(headers)
    if media not in _JSON_MEDIA and not media.endswith("+json"):
        raise UnsupportedMediaType("send the body as application/json")


def _header_length(value: str, body_length: int) -> int:
    # Digits only: int() would also take "+5", " 5" and "5_0".
    if not value.isascii() or not value.isdigit() or len(value) > 12:
        raise MalformedRequest("Inference-Header-Content-Length must be a decimal byte count")
    length = int(value)
    if length == 0 or length > body_length:
        raise MalformedRequest("Inference-Header-Content-Length does not fit the body")
    return length


def _flag(parameters: Mapping[str, Any] | None, key: str, where: str) -> bool | None:
    if not parameters or key not in parameters:
        return None
    value = parameters[key]
    if type(value) is not bool:
        raise MalformedRequest(f"{where}: parameters.{key} must be true or false")
    return value


def _binary_size(item: InferInput, where: str) -> int | None:
    parameters = item.parameters or {}
    if BINARY_DATA_SIZE not in parameters:
        return None
    size = parameters[BINARY_DATA_SIZE]
    if type(size) is not int or size < 0:
        raise MalformedRequest(f"{where}: parameters.binary_data_size must be an integer >= 0")
    return size


def decode_rest(headers: Mapping[str, str], body: bytes) -> WireInferRequest:
    """Decode and bound-check one REST infer body; the model's signature is checked later."""
    encoding = headers.get("content-encoding", "identity").strip().lower()
    if encoding != "identity":
        # Decompressing would let a small body grow past the body limit.
        raise UnsupportedMediaType("send the body without Content-Encoding")
    declared = headers.get(HEADER_LENGTH)
    media = _media(headers)
    if declared is None:
        require_oip_json(headers)
        header, rest = body, memoryview(b"")
    else:
        if media not in _BINARY_MEDIA:
            raise UnsupportedMediaType("send binary tensor data as application/octet-stream")
        length = _header_length(declared, len(body))
        header, rest = body[:length], memoryview(body)[length:]
    request = parse_json(InferRequest, header)
    inputs: list[WireTensor] = []
    offset = 0
    # Tensors are named by position: a name is the client's text, never echoed.
    for index, item in enumerate(request.inputs):
        where = f"inputs[{index}]"
        size = _binary_size(item, where)
        if size is None:
            if item.data is None:
                raise MalformedRequest(f"{where}: has neither data nor binary_data_size")
            data: Any = item.data
        else:
            if item.data is not None:
                raise MalformedRequest(f"{where}: has both data and binary_data_size")
            if declared is None:
                raise MalformedRequest(
                    f"{where}: binary_data_size needs the Inference-Header-Content-Length header"
                )
            if size > len(rest) - offset:
                raise MalformedRequest(f"{where}: binary_data_size runs past the body")
            data = tensor_from_raw(where, item.datatype, item.shape, rest[offset : offset + size])
            offset += size
        parameters = {k: v for k, v in (item.parameters or {}).items() if k != BINARY_DATA_SIZE}
        inputs.append(WireTensor(item.name, item.datatype, tuple(item.shape), data, parameters))
    if offset != len(rest):
        raise MalformedRequest("the binary tensor data does not add up to the body's length")
    request_parameters = dict(request.parameters or {})
    binary_output = bool(_flag(request_parameters, "binary_data_output", "request"))
    outputs: tuple[WireOutputRequest, ...] | None = None
    if request.outputs is not None:
        outputs = tuple(
            WireOutputRequest(
                o.name,
                binary_data=_pick(
                    _flag(o.parameters, "binary_data", f"outputs[{i}]"), binary_output
                ),
            )
            for i, o in enumerate(request.outputs)
        )
    return WireInferRequest(
        id=request.id,
        inputs=tuple(inputs),
        outputs=outputs,
        model_name=request.model_name,
        model_version=request.model_version,
        parameters=request_parameters,
        binary_data_output=binary_output,
    )


def _pick(own: bool | None, default: bool) -> bool:
    return default if own is None else own
