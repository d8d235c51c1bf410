"""Prometheus metrics, one registry per app (no process globals, so tests can build many apps).

Labels are route templates, stage names and status codes only: never a path
with ids in it, never request content.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Callable, Iterator
from typing import Any, Generic, TypeVar

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily
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


class LoopHistogram(Collector):
    """A histogram with one label, observed only on the event loop: no lock per observation.
    prometheus_client's takes two locks and walks the buckets in Python for each one, and a
    request observes one per pipeline stage and one for itself (about 5 % of the event
    loop's time on /v1/rank, py-spy). A scrape copies each series before reading it."""

    def __init__(
        self,
        name: str,
        documentation: str,
        label: str,
        buckets: tuple[float, ...],
        registry: CollectorRegistry,
    ) -> None:
        self._name = name
        self._documentation = documentation
        self._label = label
        self._bounds = buckets
        # The `le` labels as prometheus_client writes them (its helper is untyped).
        self._les = [repr(float(b)) for b in buckets] + ["+Inf"]
        # Per label value: a count per bucket (the last: above every bound), then the sum.
        self._series: dict[str, list[float]] = {}
        registry.register(self)

    def observe(self, value: str, amount: float) -> None:
        series = self._series.get(value)
        if series is None:
            series = self._series[value] = [0.0] * (len(self._bounds) + 2)
        series[bisect_left(self._bounds, amount)] += 1  # `le`: the first bound >= amount
        series[-1] += amount

    def describe(self) -> Iterator[HistogramMetricFamily]:
        yield HistogramMetricFamily(self._name, self._documentation, labels=[self._label])

    def collect(self) -> Iterator[HistogramMetricFamily]:
        family = HistogramMetricFamily(self._name, self._documentation, labels=[self._label])
        for value, series in list(self._series.items()):
            counts = list(series)
            cumulative = 0.0
            buckets = []
            for le, count in zip(self._les, counts[:-1], strict=True):
                cumulative += count
                buckets.append((le, cumulative))
            family.add_metric([value], buckets, counts[-1])
        yield family


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.requests = Counter(
            "gateway_requests_total",
            "HTTP requests by route template, method and status",
            ["route", "method", "status"],
            registry=self.registry,
        )
        # Observed on the event loop only (stage 0, the gRPC calls, the pipeline).
        self.request_seconds = LoopHistogram(
            "gateway_request_duration_seconds",
            "HTTP request latency by route template",
            "route",
            _LATENCY,
            self.registry,
        )
        self.stage_seconds = LoopHistogram(
            "gateway_stage_duration_seconds",
            "Pipeline stage latency",
            "stage",
            _LATENCY,
            self.registry,
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

    def observe_request(self, route: str, method: str, status: str, seconds: float) -> None:
        self._requests(route, method, status).inc()
        self.request_seconds.observe(route, seconds)

    def observe_stage(self, stage: str, seconds: float) -> None:
        self.stage_seconds.observe(stage, seconds)

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
