"""gateway.metrics.LoopHistogram against prometheus_client's own Histogram: the same
observations must expose the same samples (buckets, count, sum), or dashboards and the
alert rules (ops/prometheus) would read something else."""

from __future__ import annotations

import numpy as np
from prometheus_client import CollectorRegistry, Histogram, generate_latest

from gateway.metrics import _LATENCY, LoopHistogram


def _lines(registry: CollectorRegistry) -> list[str]:
    text = generate_latest(registry).decode()
    return sorted(line for line in text.splitlines() if line and "_created" not in line)


def test_it_exposes_what_prometheus_clients_histogram_exposes() -> None:
    ours, theirs = CollectorRegistry(), CollectorRegistry()
    mine = LoopHistogram("t_seconds", "doc", "stage", _LATENCY, ours)
    reference = Histogram("t_seconds", "doc", ["stage"], buckets=_LATENCY, registry=theirs)
    rng = np.random.default_rng(3)
    # Values on the bounds themselves (`le` is inclusive), below, between and above them.
    values = [*_LATENCY, 0.0, 1e-6, 7.5, *rng.exponential(0.01, 500).tolist()]
    for n, value in enumerate(values):
        stage = ("rank", "audit", "respond")[n % 3]
        mine.observe(stage, value)
        reference.labels(stage).observe(value)
    assert _lines(ours) == _lines(theirs)


def test_an_unobserved_histogram_exposes_no_series() -> None:
    registry = CollectorRegistry()
    LoopHistogram("t_seconds", "doc", "stage", _LATENCY, registry)
    assert not [line for line in _lines(registry) if not line.startswith("#")]
