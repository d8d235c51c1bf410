"""Prometheus metrics, one registry per app (no process globals, so tests can build many apps).

Labels are route templates, stage names and status codes only: never a path
with ids in it, never request content.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any, Generic, TypeVar

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily
from prometheus_client.registry import Collector

_LATENCY = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
_ROWS = (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000)


LabelledMetric = TypeVar("LabelledMetric", Counter, Histogram)


class CachedLabels(Generic[LabelledMetric]):
    """`metric.labels(*values)` for the hot path: labels() hashes and locks on every call,
    which cost ~6 % of the event loop's time under load (py-spy, bench/serve c64)."""

    def __init__(self, metric: LabelledMetric) -> None:
        self._metric: LabelledMetric = metric
        self._children: dict[tuple[str, ...], LabelledMetric] = {}

    def __call__(self, *values: str) -> LabelledMetric:
        child = self._children.get(values)
        if child is None:
            child = self._children[values] = self._metric.labels(*values)
        return child


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.requests = Counter(
            "gateway_requests_total",
            "HTTP requests by route template, method and status",
            ["route", "method", "status"],
            registry=self.registry,
        )
        self.request_seconds = Histogram(
            "gateway_request_duration_seconds",
            "HTTP request latency by route template",
            ["route"],
            buckets=_LATENCY,
            registry=self.registry,
        )
        self.stage_seconds = Histogram(
            "gateway_stage_duration_seconds",
            "Pipeline stage latency",
            ["stage"],
            buckets=_LATENCY,
            registry=self.registry,
        )
        self.inference_seconds = Histogram(
            "gateway_model_inference_seconds",
            "onnxruntime session.run latency",
            ["model"],
            buckets=_LATENCY,
            registry=self.registry,
        )
        self.batch_rows = Histogram(
            "gateway_model_batch_rows",
            "Rows per onnxruntime session.run",
            ["model"],
            buckets=_ROWS,
            registry=self.registry,
        )
        self.model_ready = Gauge(
            "gateway_model_ready",
            "1 when the model is loaded and serving",
            ["model"],
            registry=self.registry,
        )
        self.policy_reloads = Counter(
            "gateway_policy_reloads_total",
            "Policy bundle reloads by outcome",
            ["outcome"],
            registry=self.registry,
        )
        self.policy_active = Gauge(
            "gateway_policy_bundle_active",
            "1 for the policy bundle in force",
            ["name", "version", "content_hash"],
            registry=self.registry,
        )
        self._requests = CachedLabels(self.requests)
        self._request_seconds = CachedLabels(self.request_seconds)
        self._stage_seconds = CachedLabels(self.stage_seconds)

    def observe_request(self, route: str, method: str, status: str, seconds: float) -> None:
        self._requests(route, method, status).inc()
        self._request_seconds(route).observe(seconds)

    def observe_stage(self, stage: str, seconds: float) -> None:
        self._stage_seconds(stage).observe(seconds)

    def observe_policy(self, bundle: Any) -> None:
        self.policy_active.clear()
        self.policy_active.labels(bundle.name, bundle.version, bundle.content_hash).set(1)

    def inference_observer(self, model: str) -> tuple[Histogram, Histogram]:
        return self.inference_seconds.labels(model), self.batch_rows.labels(model)

    def render(self) -> bytes:
        return generate_latest(self.registry)


class CountersOf(Collector):
    """Counters another component keeps (plain ints), read when Prometheus scrapes: the
    component (the audit writer) need not know about Prometheus."""

    def __init__(self, counters: dict[str, tuple[str, Callable[[], int]]]) -> None:
        self._counters = counters

    def collect(self) -> Iterator[CounterMetricFamily]:
        for name, (documentation, read) in self._counters.items():
            yield CounterMetricFamily(name, documentation, value=read())
