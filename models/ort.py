"""The one module that imports onnxruntime.

Keeping the import here means the telemetry switch is always set before the
library loads, and every session is built with the same conservative options.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence

os.environ.setdefault("ORT_DISABLE_TELEMETRY", "1")

# Must follow the environment default above.
import onnxruntime as ort

from gateway.errors import ConfigurationError

__all__ = [
    "CPU_PROVIDER",
    "GRAPH_OPTIMIZATION_LEVELS",
    "ort",
    "resolve_providers",
    "session_from_bytes",
]

log = logging.getLogger("gateway.models")

CPU_PROVIDER = "CPUExecutionProvider"

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


def resolve_providers(wanted: Sequence[str]) -> tuple[str, ...]:
    """The configured execution providers this onnxruntime build has, in order.

    A missing provider is skipped (with a warning) only when the CPU provider is listed
    as the fallback; otherwise the gateway must not start and silently run elsewhere
    than the operator asked (ConfigurationError)."""
    if not wanted:
        raise ConfigurationError("model.execution_providers is empty")
    available = set(ort.get_available_providers())
    missing = [p for p in wanted if p not in available]
    if missing and CPU_PROVIDER not in wanted:
        raise ConfigurationError(
            f"execution providers {', '.join(missing)} are not in this onnxruntime build "
            f"(it has {', '.join(sorted(available))}); list {CPU_PROVIDER} to fall back"
        )
    if missing:
        log.warning(
            "execution providers %s are not in this onnxruntime build; skipped (fallback %s)",
            ", ".join(missing),
            CPU_PROVIDER,
        )
    return tuple(dict.fromkeys(p for p in wanted if p in available))


def session_from_bytes(
    model_bytes: bytes,
    *,
    intra_op_threads: int = 1,
    graph_optimization_level: str = "all",
    providers: Sequence[str] = (CPU_PROVIDER,),
) -> ort.InferenceSession:
    """Build an inference session from in-memory model bytes on `providers` (already
    resolved: see resolve_providers).

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
    session = ort.InferenceSession(model_bytes, sess_options=options, providers=list(providers))
    in_use = session.get_providers()
    if CPU_PROVIDER not in providers and not set(in_use) & set(providers):
        # onnxruntime fell back to the CPU itself (e.g. a CUDA build without a driver):
        # without CPU listed, that is not what the operator allowed.
        raise ValueError(
            f"none of the execution providers {', '.join(providers)} could be started "
            f"(onnxruntime fell back to {', '.join(in_use)})"
        )
    return session
