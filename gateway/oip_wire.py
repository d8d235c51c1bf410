"""An Open Inference Protocol infer request as it arrived, whatever the wire.

REST with JSON, REST with the binary tensor extension and gRPC all decode into a
`WireInferRequest`; the infer decode stage (stage 5's input) checks it against the
model's signature the same way for each, so the three surfaces cannot drift apart.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

# Every fixed-size OIP datatype, little-endian as the protocol sends it.
RAW_DTYPES: Mapping[str, np.dtype[Any]] = {
    "BOOL": np.dtype("?"),
    "UINT8": np.dtype("<u1"),
    "UINT16": np.dtype("<u2"),
    "UINT32": np.dtype("<u4"),
    "UINT64": np.dtype("<u8"),
    "INT8": np.dtype("<i1"),
    "INT16": np.dtype("<i2"),
    "INT32": np.dtype("<i4"),
    "INT64": np.dtype("<i8"),
    "FP16": np.dtype("<f2"),
    "FP32": np.dtype("<f4"),
    "FP64": np.dtype("<f8"),
}


@dataclass(frozen=True, slots=True)
class WireTensor:
    name: str
    # The OIP datatype name: "FP32", "INT64", "BYTES", ...
    datatype: str
    shape: tuple[int, ...]
    # A numpy array already of `datatype` (binary REST, gRPC), or JSON's flat or nested list.
    data: Any
    parameters: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class WireOutputRequest:
    name: str
    # REST binary tensor extension: answer this output as raw bytes after the JSON header.
    binary_data: bool = False


@dataclass(frozen=True, slots=True)
class WireInferRequest:
    id: str | None
    inputs: tuple[WireTensor, ...]
    # None: every output of the model.
    outputs: tuple[WireOutputRequest, ...] | None = None
    # Named in the body by KServe's and Triton's clients; must match the path when given.
    model_name: str | None = None
    model_version: str | None = None
    parameters: Mapping[str, Any] = field(default_factory=dict)
    # REST binary tensor extension, request level (`parameters.binary_data_output`): with
    # `outputs` None, every output is answered as raw bytes (REST decoding already folded it
    # into each `WireOutputRequest.binary_data` when `outputs` is given).
    binary_data_output: bool = False
