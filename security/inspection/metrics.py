"""Prometheus series of stage 5, registered in the app's own registry (no globals).

Labels are verdicts, signals and refusal kinds only: never a client id (that
would be unbounded cardinality, and who is suspected belongs in the audit log).
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Histogram

from gateway.metrics import CachedLabels

_SECONDS = (0.00005, 0.0001, 0.0002, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.05)


class InspectionMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.verdicts = Counter(
            "gateway_inspection_verdicts_total",
            "Inspection verdicts by verdict and whether it was enforced (shadow: not)",
            ["verdict", "enforced"],
            registry=registry,
        )
        self.signals = Counter(
            "gateway_inspection_signals_total",
            "Detector signals that fired",
            ["signal"],
            registry=registry,
        )
        self.detector_seconds = Histogram(
            "gateway_inspection_detector_seconds",
            "Detector latency per request (bounds, fingerprints, state exchange)",
            buckets=_SECONDS,
            registry=registry,
        )
        self.refusals = Counter(
            "gateway_rate_limit_refusals_total",
            "Requests refused by a rate limit or query budget",
            ["kind"],
            registry=registry,
        )
        self.verdict = CachedLabels(self.verdicts)
        self.signal = CachedLabels(self.signals)
        self.refusal = CachedLabels(self.refusals)
