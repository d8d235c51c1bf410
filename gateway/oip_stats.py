"""Triton's inference statistics extension, from what the gateway's metrics really count.

- `execution_count`, `inference_stats.compute_infer`: onnxruntime `session.run` calls and
  their summed time (`gateway_model_inference_seconds`).
- `inference_count`: rows through the model (`gateway_model_batch_rows`): a micro-batch
  of several requests is one execution of many inferences, as Triton counts them.
- `inference_stats.success` / `fail`: answered requests of the routes that run the model
  (`gateway_requests_total`), 2xx against everything else (refusals included).

What the gateway does not measure is reported as zero, never estimated: the duration of
`success`/`fail` (request latency is not kept per outcome), queue time, input/output
copies, the response cache and `last_inference`. The counters are per model name, over
every loaded version of it (an A/B split shares them); they start at zero with the process.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from gateway.metrics import Metrics

# The route templates (and the gRPC surface's route label) whose requests run the model.
INFER_ROUTES = frozenset(
    {
        "/v1/rank",
        "/v2/models/{name}/infer",
        "/v2/models/{name}/versions/{version}/infer",
        "grpc:ModelInfer",
    }
)
_NS = 1_000_000_000
_UNMEASURED = ("queue", "compute_input", "compute_output", "cache_hit", "cache_miss")


def _duration(count: float, seconds: float) -> dict[str, int]:
    return {"count": int(count), "ns": round(seconds * _NS)}


def _sample(metrics: Metrics, name: str, model: str) -> float:
    value = metrics.registry.get_sample_value(name, {"model": model})
    return 0.0 if value is None else value


def _outcomes(metrics: Metrics, routes: Iterable[str]) -> tuple[float, float]:
    wanted = frozenset(routes)
    success = fail = 0.0
    for family in metrics.requests.collect():
        for sample in family.samples:
            if not sample.name.endswith("_total") or sample.labels["route"] not in wanted:
                continue
            if sample.labels["status"].startswith("2"):
                success += sample.value
            else:
                fail += sample.value
    return success, fail


def model_statistics(metrics: Metrics, name: str, version: str) -> dict[str, Any]:
    """One `model_stats` entry of Triton's statistics response."""
    executions = _sample(metrics, "gateway_model_inference_seconds_count", name)
    run_seconds = _sample(metrics, "gateway_model_inference_seconds_sum", name)
    rows = _sample(metrics, "gateway_model_batch_rows_sum", name)
    success, fail = _outcomes(metrics, INFER_ROUTES)
    inference_stats: dict[str, dict[str, int]] = {
        "success": _duration(success, 0.0),
        "fail": _duration(fail, 0.0),
        "compute_infer": _duration(executions, run_seconds),
    }
    inference_stats.update({key: _duration(0, 0.0) for key in _UNMEASURED})
    return {
        "name": name,
        "version": version,
        "last_inference": 0,
        "inference_count": int(rows),
        "execution_count": int(executions),
        "inference_stats": inference_stats,
        "batch_stats": [],
    }
