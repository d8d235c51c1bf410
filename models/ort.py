"""The one module that imports onnxruntime.

Keeping the import here means the telemetry switch is always set before the
library loads, and every session is built with the same conservative options.
"""

from __future__ import annotations

import os

os.environ.setdefault("ORT_DISABLE_TELEMETRY", "1")

# Must follow the environment default above.
import onnxruntime as ort

__all__ = ["GRAPH_OPTIMIZATION_LEVELS", "ort", "session_from_bytes"]

if hasattr(ort, "disable_telemetry_events"):
    # Belt and braces: the environment variable covers builds that read it at
    # load time, this call covers Windows builds that only honour the API.
    ort.disable_telemetry_events()

GRAPH_OPTIMIZATION_LEVELS: dict[str, ort.GraphOptimizationLevel] = {
    "disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
    "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
    "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
    "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
}


def session_from_bytes(
    model_bytes: bytes,
    *,
    intra_op_threads: int = 1,
    graph_optimization_level: str = "all",
) -> ort.InferenceSession:
    """Build a CPU inference session from in-memory model bytes.

    Bytes, never a path: decrypted models must not touch the disk, and
    `optimized_model_filepath` is left unset for the same reason.
    """
    try:
        level = GRAPH_OPTIMIZATION_LEVELS[graph_optimization_level]
    except KeyError:
        choices = ", ".join(GRAPH_OPTIMIZATION_LEVELS)
        raise ValueError(
            f"graph_optimization_level must be one of {choices}, not {graph_optimization_level!r}"
        ) from None
    if intra_op_threads < 1:
        raise ValueError("intra_op_threads must be at least 1")
    options = ort.SessionOptions()
    options.graph_optimization_level = level
    options.intra_op_num_threads = intra_op_threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    # The gateway calls run() from a small thread pool on boxes with few cores;
    # spinning worker threads would steal CPU from the event loop between calls.
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(
        model_bytes, sess_options=options, providers=["CPUExecutionProvider"]
    )
