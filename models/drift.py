"""Input and score drift per model version, as Prometheus gauges.

Inputs: each numeric input column's values over a sliding window, against the deciles
the package's own `feature_stats` recorded (ten equal-mass bins of the data it was
packed with), as the population stability index, PSI = sum((p - q) ln(p / q)). Zero is
the same distribution; the usual reading is 0.1 a moderate shift and 0.25 a large one.
Scores: each version's score distribution over the window against its own first
`baseline_rows` scores served (frozen once taken), by the same statistic.

Each run keeps at most `SAMPLED_ROWS` of each input's rows (evenly strided: a /v1/rank
request repeats one user's row for every candidate) and all its scores, in the inference
thread. Binning is done in bulk, once `FLUSH_ROWS` rows are pending and before every
read: a dozen numpy calls per run cost about 0.1 ms of inference-thread CPU, three times
the model run, where one call over many runs costs a few microseconds each. Every row
still lands in the window slot of the moment its run was observed. The PSI itself is
computed only when Prometheus scrapes. A window with fewer than `min_rows` rows reports
nothing rather than a noisy figure.
"""

from __future__ import annotations

import math
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import numpy as np
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector, CollectorRegistry

DECILE_KEYS = tuple(f"q{p}" for p in range(10, 100, 10))
BINS = len(DECILE_KEYS) + 1
SHARE_KEYS = tuple(f"b{b}" for b in range(BINS))
# A reference bin that held nothing still gets this share: one live value there must
# not make the statistic infinite.
_FLOOR = 1e-4
# Input rows counted per request at most (see the module doc).
SAMPLED_ROWS = 16
# Score values pending before they are binned in bulk (input rows: a sixth as many).
FLUSH_ROWS = 3_000
# Pseudo-counts per bin: an empty bin must not make the statistic infinite.
_SMOOTHING = 0.5

Watch = Callable[[Mapping[str, np.ndarray], np.ndarray], None]
StatsLookup = Callable[[str, str], Mapping[str, Mapping[str, list[float]]] | None]


def psi(counts: np.ndarray, expected: np.ndarray) -> np.ndarray:
    """PSI of observed bin counts (rows: series, columns: bins) against expected shares."""
    observed = counts + _SMOOTHING
    observed = observed / observed.sum(axis=-1, keepdims=True)
    return np.asarray(((observed - expected) * np.log(observed / expected)).sum(axis=-1))


class _Window:
    """Bin counts over the last `window_s` seconds, in `slots` rotating slices."""

    def __init__(self, series: int, window_s: float, slots: int) -> None:
        self._slot_s = window_s / slots
        self._counts = np.zeros((slots, series, BINS), dtype=np.int64)
        self._epochs = np.full(slots, -1, dtype=np.int64)

    def epoch(self, now: float) -> int:
        return int(now // self._slot_s)

    def add(self, now: float, counts: np.ndarray) -> None:
        epoch = self.epoch(now)
        slot = epoch % len(self._epochs)
        if epoch < self._epochs[slot]:
            # Rows binned late (a flush racing another) from a whole window ago: out of the
            # window already, and they must not wipe the newer slice that holds the slot.
            return
        if self._epochs[slot] != epoch:
            self._epochs[slot] = epoch
            self._counts[slot] = 0
        self._counts[slot] += counts

    def total(self, now: float) -> np.ndarray:
        current = int(now // self._slot_s)
        live = self._epochs > current - len(self._epochs)
        summed: np.ndarray = self._counts[live].sum(axis=0)
        return summed


def _bin_counts(edges: np.ndarray, columns: np.ndarray) -> np.ndarray:
    """Counts per (column, bin) of `columns` (rows x columns) under per-column `edges`."""
    width = edges.shape[0]
    # A value's bin is the number of its column's edges at or below it; rows innermost, so
    # numpy's inner loop runs over them, not over the nine edges (about 3x faster).
    bins = (columns.T[:, None, :] >= edges[:, :, None]).sum(axis=1)
    flat = (bins + (np.arange(width) * BINS)[:, None]).reshape(-1)
    return np.bincount(flat, minlength=width * BINS).reshape(width, BINS)


class VersionDrift:
    """One model version's windows: its inputs' columns and its scores."""

    def __init__(
        self,
        stats: Mapping[str, Mapping[str, list[float]]] | None,
        *,
        window_s: float,
        slots: int,
        baseline_rows: int,
        min_rows: int,
    ) -> None:
        self._lock = threading.Lock()
        self._window_s, self._slots, self._min_rows = window_s, slots, min_rows
        self._edges: dict[str, np.ndarray] = {}
        self._expected: dict[str, np.ndarray] = {}
        for name, entry in (stats or {}).items():
            if all(key in entry for key in (*DECILE_KEYS, *SHARE_KEYS)):
                # Rows: columns of the input; each row is that column's nine decile edges,
                # and the reference's share in each of the ten bins they make.
                self._edges[name] = np.asarray([entry[k] for k in DECILE_KEYS], dtype=np.float64).T
                shares = np.maximum(np.asarray([entry[k] for k in SHARE_KEYS]).T, _FLOOR)
                self._expected[name] = shares / shares.sum(axis=1, keepdims=True)
        self._inputs = {
            name: _Window(edges.shape[0], window_s, slots) for name, edges in self._edges.items()
        }
        self._baseline_rows = baseline_rows
        self._baseline: list[np.ndarray] = []
        self._baseline_size = 0
        self._score_edges: np.ndarray | None = None
        self._scores = _Window(1, window_s, slots)
        # Runs observed and not yet binned: (time, sampled input columns, scores).
        self._pending: list[tuple[float, list[tuple[str, np.ndarray]], np.ndarray]] = []
        self._pending_rows = 0

    def observe(self, now: float, feeds: Mapping[str, np.ndarray], scores: np.ndarray) -> None:
        sampled: list[tuple[str, np.ndarray]] = []
        for name, edges in self._edges.items():
            values = feeds.get(name)
            if values is None:
                continue
            columns = np.asarray(values).reshape(-1, edges.shape[0])
            if columns.shape[0] > SAMPLED_ROWS:
                columns = columns[:: -(-columns.shape[0] // SAMPLED_ROWS)]
            # Copies: the run's arrays go on to later stages.
            sampled.append((name, columns.astype(np.float64)))
        flat = np.array(scores, dtype=np.float64).reshape(-1)
        with self._lock:
            self._pending.append((now, sampled, flat))
            self._pending_rows += flat.size
            if self._pending_rows < FLUSH_ROWS:
                return
        self._flush()

    def _flush(self) -> None:
        """Bins what is pending, run by run into the slot of its own time."""
        with self._lock:
            pending, self._pending, self._pending_rows = self._pending, [], 0
        start = 0
        while start < len(pending):
            epoch = self._scores.epoch(pending[start][0])
            end = start + 1
            while end < len(pending) and self._scores.epoch(pending[end][0]) == epoch:
                end += 1
            self._count(pending[start:end])
            start = end

    def _count(self, runs: list[tuple[float, list[tuple[str, np.ndarray]], np.ndarray]]) -> None:
        """Bins runs of one window slot (`runs[0]`'s time stands for all of them)."""
        now = runs[0][0]
        by_input: dict[str, list[np.ndarray]] = {}
        for _, sampled, _ in runs:
            for name, columns in sampled:
                by_input.setdefault(name, []).append(columns)
        counted = {
            name: _bin_counts(self._edges[name], np.concatenate(parts))
            for name, parts in by_input.items()
        }
        flat = np.concatenate([scores for _, _, scores in runs])
        with self._lock:
            for name, counts in counted.items():
                self._inputs[name].add(now, counts)
            if self._score_edges is None:
                self._baseline.append(flat)
                self._baseline_size += flat.size
                if self._baseline_size < self._baseline_rows:
                    return
                # Frozen at the first `baseline_rows` scores; the rest count at once.
                taken = np.concatenate(self._baseline)
                self._score_edges = np.quantile(
                    taken[: self._baseline_rows], np.linspace(0.1, 0.9, 9)
                ).reshape(1, -1)
                self._baseline = []
                flat = taken[self._baseline_rows :]
            edges = self._score_edges
        if flat.size:
            self._add_scores(now, edges, flat)

    def _add_scores(self, now: float, edges: np.ndarray, flat: np.ndarray) -> None:
        counts = _bin_counts(edges, flat.reshape(-1, 1))
        with self._lock:
            self._scores.add(now, counts)

    def input_psi(self, now: float) -> Iterator[tuple[str, int, float]]:
        self._flush()
        with self._lock:
            totals = {name: window.total(now) for name, window in self._inputs.items()}
        for name, counts in totals.items():
            if counts.shape[0] == 0 or int(counts[0].sum()) < self._min_rows:
                continue
            for column, value in enumerate(psi(counts, self._expected[name])):
                yield name, column, float(value)

    def score_psi(self, now: float) -> float | None:
        self._flush()
        with self._lock:
            counts = self._scores.total(now)
        if self._score_edges is None or counts.sum() < self._min_rows:
            return None
        value = float(psi(counts, np.full(BINS, 1.0 / BINS))[0])
        return value if math.isfinite(value) else None


class DriftBoard(Collector):
    """Every served version's drift, exported on scrape (`gateway_*_drift_psi`)."""

    def __init__(
        self,
        stats_for: StatsLookup,
        *,
        window_s: float = 900.0,
        slots: int = 15,
        baseline_rows: int = 2_000,
        min_rows: int = 200,
        max_versions: int = 8,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._stats_for = stats_for
        self._options: dict[str, Any] = {
            "window_s": window_s,
            "slots": slots,
            "baseline_rows": baseline_rows,
            "min_rows": min_rows,
        }
        self._max_versions = max_versions
        self._clock = clock
        self._lock = threading.Lock()
        self._versions: OrderedDict[tuple[str, str], VersionDrift] = OrderedDict()

    def register(self, registry: CollectorRegistry) -> DriftBoard:
        registry.register(self)
        return self

    def version(self, name: str, version: str) -> VersionDrift:
        key = (name, version)
        with self._lock:
            found = self._versions.get(key)
            if found is not None:
                self._versions.move_to_end(key)
                return found
        # Outside the lock: the lookup may read the registry.
        made = VersionDrift(self._stats_for(name, version), **self._options)
        with self._lock:
            found = self._versions.setdefault(key, made)
            self._versions.move_to_end(key)
            while len(self._versions) > self._max_versions:
                self._versions.popitem(last=False)  # the least recently served
        return found

    def watcher(self, name: str, version: str) -> Watch:
        """What a ranker calls after each run (in its inference thread)."""

        def watch(feeds: Mapping[str, np.ndarray], scores: np.ndarray) -> None:
            self.version(name, version).observe(self._clock(), feeds, scores)

        return watch

    def collect(self) -> Iterator[GaugeMetricFamily]:
        now = self._clock()
        inputs = GaugeMetricFamily(
            "gateway_feature_drift_psi",
            "PSI of each input column over the window against the package's deciles",
            labels=["model", "version", "input", "column"],
        )
        scores = GaugeMetricFamily(
            "gateway_score_drift_psi",
            "PSI of the served scores over the window against the version's first scores",
            labels=["model", "version"],
        )
        with self._lock:
            versions = list(self._versions.items())
        for (name, version), drift in versions:
            for input_name, column, value in drift.input_psi(now):
                inputs.add_metric([name, version, input_name, str(column)], value)
            score = drift.score_psi(now)
            if score is not None:
                scores.add_metric([name, version], score)
        yield inputs
        yield scores
