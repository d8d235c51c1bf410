"""Triton's model configuration and repository index, for the one model the gateway serves.

The configuration is derived from the loaded ONNX signature as a client sees it under the
bundle's input declaration (models.provenance: ids as strings, server-provided features
left out; nothing is read from a `config.pbtxt`: there is none); the index lists the
versions the registry has loaded (READY) and the signed packages on disk it has not
(UNAVAILABLE).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from models.ranker import TensorSpec

# OIP datatype → Triton's model configuration data type.
_CONFIG_TYPES = {
    "BOOL": "TYPE_BOOL",
    "UINT8": "TYPE_UINT8",
    "UINT16": "TYPE_UINT16",
    "UINT32": "TYPE_UINT32",
    "UINT64": "TYPE_UINT64",
    "INT8": "TYPE_INT8",
    "INT16": "TYPE_INT16",
    "INT32": "TYPE_INT32",
    "INT64": "TYPE_INT64",
    "FP16": "TYPE_FP16",
    "FP32": "TYPE_FP32",
    "FP64": "TYPE_FP64",
    "BYTES": "TYPE_STRING",
}


def _tensors(specs: Iterable[TensorSpec]) -> list[dict[str, Any]]:
    return [
        {
            "name": spec.name,
            "data_type": _CONFIG_TYPES.get(spec.datatype, "TYPE_INVALID"),
            "dims": list(spec.shape),
        }
        for spec in specs
    ]


def model_config(
    name: str, version: str, inputs: Iterable[TensorSpec], outputs: Iterable[TensorSpec]
) -> dict[str, Any]:
    """Triton's `ModelConfig` JSON. `max_batch_size` 0: the dims include the batch
    dimension (-1), which the gateway's micro-batcher fills, not Triton's scheduler."""
    return {
        "name": name,
        "platform": "onnxruntime_onnx",
        "backend": "onnxruntime",
        "version_policy": {"specific": {"versions": [version]}},
        "max_batch_size": 0,
        "input": _tensors(inputs),
        "output": _tensors(outputs),
    }


def repository_index(
    loaded: Iterable[tuple[str, str]], on_disk: Iterable[tuple[str, str]], *, ready_only: bool
) -> list[dict[str, str]]:
    """Triton's repository index entries, sorted by name and version."""
    ready = set(loaded)
    entries = [{"name": n, "version": v, "state": "READY", "reason": ""} for n, v in ready]
    if not ready_only:
        entries += [
            {"name": n, "version": v, "state": "UNAVAILABLE", "reason": "not loaded"}
            for n, v in set(on_disk) - ready
        ]
    return sorted(entries, key=lambda e: (e["name"], e["version"]))
