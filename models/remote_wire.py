"""The remote ranker's wire format: OIP v2 REST inference, JSON or the binary tensor
data extension (Triton's, which KServe and MLServer also read), numeric tensors only.

Written here rather than shared with the gateway's own OIP surface (gateway.oip_binary):
that one parses untrusted clients, this one trusted servers, and the concern packages
import no route-side module.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

HEADER_LENGTH = "Inference-Header-Content-Length"
# numpy dtype -> OIP datatype, for the tensors the gateway sends.
_DATATYPES: dict[np.dtype[Any], str] = {
    np.dtype(np.float32): "FP32",
    np.dtype(np.float64): "FP64",
    np.dtype(np.int64): "INT64",
    np.dtype(np.int32): "INT32",
    np.dtype(np.bool_): "BOOL",
}
_NUMPY: dict[str, np.dtype[Any]] = {name: dtype for dtype, name in _DATATYPES.items()}


class WireError(ValueError):
    """The server's answer is not a well-formed OIP inference response."""


def encode_request(
    feeds: Mapping[str, np.ndarray], outputs: Sequence[str], *, binary: bool, unit_axis: bool
) -> tuple[bytes, dict[str, str]]:
    """The request body and its headers. `unit_axis`: 1-D inputs travel as [N, 1] (a
    batching Triton model cannot declare a per-row scalar)."""
    inputs: list[dict[str, object]] = []
    chunks: list[bytes] = []
    for name, given in feeds.items():
        array = given.reshape(-1, 1) if unit_axis and given.ndim == 1 else given
        datatype = _DATATYPES.get(array.dtype)
        if datatype is None:
            raise ValueError(f"input {name}: dtype {array.dtype} is not sent to a remote ranker")
        entry: dict[str, object] = {"name": name, "shape": list(array.shape), "datatype": datatype}
        if binary:
            raw = np.ascontiguousarray(array).tobytes()
            entry["parameters"] = {"binary_data_size": len(raw)}
            chunks.append(raw)
        else:
            entry["data"] = array.reshape(-1).tolist()
        inputs.append(entry)
    wanted = [
        {"name": n, "parameters": {"binary_data": True}} if binary else {"name": n}
        for n in outputs
    ]
    header = json.dumps({"inputs": inputs, "outputs": wanted}, separators=(",", ":")).encode()
    if not binary:
        return header, {"Content-Type": "application/json"}
    headers = {"Content-Type": "application/octet-stream", HEADER_LENGTH: str(len(header))}
    return header + b"".join(chunks), headers


def decode_response(
    body: bytes, header_length: str | None, outputs: Sequence[str], *, unit_axis: bool
) -> dict[str, np.ndarray]:
    """The named outputs of an inference response (JSON, or JSON + binary data).
    `unit_axis`: [N, 1] outputs are read as [N]."""
    try:
        size = len(body) if header_length is None else int(header_length)
        if not 0 < size <= len(body):
            raise WireError("bad inference header length")
        document = json.loads(body[:size])
        entries = document["outputs"]
        found: dict[str, np.ndarray] = {}
        offset = size
        for entry in entries:
            dtype = _NUMPY.get(entry["datatype"])
            if dtype is None:
                raise WireError(f"output datatype {entry['datatype']!r} is not numeric")
            shape = tuple(int(d) for d in entry["shape"])
            raw_size = (entry.get("parameters") or {}).get("binary_data_size")
            if raw_size is not None:
                end = offset + int(raw_size)
                if end > len(body):
                    raise WireError("binary output data is truncated")
                array = np.frombuffer(body[offset:end], dtype=dtype).reshape(shape)
                offset = end
            else:
                array = np.asarray(entry["data"], dtype=dtype).reshape(shape)
            if unit_axis and array.ndim == 2 and array.shape[1] == 1:
                array = array.reshape(-1)
            found[str(entry["name"])] = array
    except WireError:
        raise
    except (KeyError, TypeError, ValueError) as exc:  # json.JSONDecodeError is a ValueError
        raise WireError(f"malformed inference response: {type(exc).__name__}") from None
    missing = [n for n in outputs if n not in found]
    if missing:
        raise WireError(f"the response lacks outputs {missing}")
    return {n: found[n] for n in outputs}
