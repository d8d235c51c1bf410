"""An Open Inference Protocol infer request as it arrived, whatever the wire.

REST with JSON, REST with the binary tensor extension and gRPC all decode into a
`WireInferRequest`; the infer decode stage (stage 5's input) checks it against the
model's signature the same way for each, so the three surfaces cannot drift apart.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any


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
