"""The outcome-event store: impressions, clicks and conversions joined to the arm that
served them, plus each arm's guardrail counts and the arms a guardrail stopped.

An event row names its ranking (`request_id`), the item, the model version and A/B arm
that served the ranking (as its audit record says), the subject's audit pseudonym and an
erasure handle (HMAC of tenant and user id under the consent store's handle key, so an
erasure finds the rows again even after the audit key that made the pseudonym is gone).
Nothing else about the subject is kept. One event per (request, item, kind): a client
that repeats an event does not count it twice.

SQLite (under the data directory, owner-only, WAL) by default; PostgreSQL when
`experiments.postgres_dsn` is set. Every method blocks: callers run them off the
event loop. Failures raise `EventStoreError`.
"""

from __future__ import annotations

import json
import os
import sqlite3
import threading
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gateway.sqlite_wal import enable_wal

EVENT_KINDS = ("impression", "click", "conversion")
# Latency buckets of the guardrail histogram (ms, upper bounds); the last is open.
LATENCY_BUCKETS_MS = (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000, 10000)


class EventStoreError(OSError):
    """The event store cannot be read or written (an I/O failure to its callers, which
    is what privacy's erasure catches: it must not import this package)."""


@dataclass(frozen=True, slots=True)
class ArmKey:
    model: str
    version: str
    variant: str  # "-" when the model had no A/B split


@dataclass(frozen=True, slots=True)
class OutcomeEvent:
    request_id: str
    item_id: str
    kind: str
    arm: ArmKey
    tenant: str | None
    subject: str  # the audit pseudonym of the ranking's subject
    owner: bytes  # erasure handle
    ts_ms: int


@dataclass
class ArmHealth:
    """What the audit log says of an arm's rank requests (guardrails)."""

    served: int = 0
    errors: int = 0
    flagged: int = 0
    latency: list[int] | None = None  # counts per LATENCY_BUCKETS_MS, plus the open bucket

    def histogram(self) -> list[int]:
        if self.latency is None:
            self.latency = [0] * (len(LATENCY_BUCKETS_MS) + 1)
        return self.latency

    def observe(self, *, error: bool, flagged: bool, latency_ms: float) -> None:
        self.served += 1
        self.errors += int(error)
        self.flagged += int(flagged)
        histogram = self.histogram()
        for index, bound in enumerate(LATENCY_BUCKETS_MS):
            if latency_ms <= bound:
                histogram[index] += 1
                return
        histogram[-1] += 1

    def merge(self, other: ArmHealth) -> None:
        self.served += other.served
        self.errors += other.errors
        self.flagged += other.flagged
        mine = self.histogram()
        for index, count in enumerate(other.histogram()):
            mine[index] += count

    def p99_ms(self) -> float | None:
        """The upper bound of the bucket holding the 99th percentile (None: no data)."""
        histogram = self.histogram()
        total = sum(histogram)
        if total == 0:
            return None
        wanted, seen = 0.99 * total, 0
        for index, count in enumerate(histogram):
            seen += count
            if seen >= wanted:
                return float(
                    LATENCY_BUCKETS_MS[index]
                    if index < len(LATENCY_BUCKETS_MS)
                    else LATENCY_BUCKETS_MS[-1] * 10
                )
        return float(LATENCY_BUCKETS_MS[-1] * 10)  # pragma: no cover - loop always returns


@dataclass(frozen=True, slots=True)
class ArmStop:
    arm: ArmKey
    reason: str
    ts_ms: int


_SCHEMA = """
CREATE TABLE IF NOT EXISTS outcome_events (
    request_id TEXT NOT NULL, item_id TEXT NOT NULL, kind TEXT NOT NULL,
    model TEXT NOT NULL, version TEXT NOT NULL, variant TEXT NOT NULL,
    tenant TEXT, subject TEXT NOT NULL, owner BLOB NOT NULL, ts_ms BIGINT NOT NULL,
    PRIMARY KEY (request_id, item_id, kind));
CREATE INDEX IF NOT EXISTS outcome_events_owner ON outcome_events (owner);
CREATE INDEX IF NOT EXISTS outcome_events_model ON outcome_events (model, ts_ms);
CREATE TABLE IF NOT EXISTS arm_health (
    model TEXT NOT NULL, version TEXT NOT NULL, variant TEXT NOT NULL,
    served BIGINT NOT NULL, errors BIGINT NOT NULL, flagged BIGINT NOT NULL,
    latency TEXT NOT NULL, PRIMARY KEY (model, version, variant));
CREATE TABLE IF NOT EXISTS arm_health_cursor (
    model TEXT PRIMARY KEY, next_index BIGINT NOT NULL);
CREATE TABLE IF NOT EXISTS arm_stops (
    model TEXT NOT NULL, version TEXT NOT NULL, variant TEXT NOT NULL,
    reason TEXT NOT NULL, ts_ms BIGINT NOT NULL, PRIMARY KEY (model, version));
"""


class EventStore:
    """The queries; a backend supplies `_query`, `_write` and `_insert_ignore`."""

    kind = "abstract"

    def _query(self, statement: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        raise NotImplementedError

    def _write(self, statements: Iterable[tuple[str, Sequence[Any]]]) -> list[int]:
        """Run the statements in one transaction; the row count of each."""
        raise NotImplementedError

    _INSERT = (
        "INSERT INTO outcome_events (request_id, item_id, kind, model, version, variant, "
        "tenant, subject, owner, ts_ms) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?) "
        "ON CONFLICT (request_id, item_id, kind) DO NOTHING"
    )

    def add(self, events: Sequence[OutcomeEvent]) -> list[bool]:
        """Store the events in one transaction; per event, whether it was new."""
        counts = self._write(
            (
                self._INSERT,
                (
                    e.request_id,
                    e.item_id,
                    e.kind,
                    e.arm.model,
                    e.arm.version,
                    e.arm.variant,
                    e.tenant,
                    e.subject,
                    e.owner,
                    e.ts_ms,
                ),
            )
            for e in events
        )
        return [count > 0 for count in counts]

    def erase_owner(self, owner: bytes) -> int:
        """Delete every event of one subject (erasure); how many went."""
        return sum(self._write([("DELETE FROM outcome_events WHERE owner = ?", (owner,))]))

    def counts(self, model: str) -> dict[ArmKey, dict[str, int]]:
        """Per arm of `model`, the number of events of each kind."""
        found: dict[ArmKey, dict[str, int]] = {}
        rows = self._query(
            "SELECT version, variant, kind, COUNT(*) FROM outcome_events WHERE model = ? "
            "GROUP BY version, variant, kind",
            (model,),
        )
        for version, variant, kind, n in rows:
            arm = ArmKey(model, str(version), str(variant))
            found.setdefault(arm, dict.fromkeys(EVENT_KINDS, 0))[str(kind)] = int(n)
        return found

    def series(
        self, model: str, buckets: int = 100
    ) -> list[tuple[int, dict[ArmKey, dict[str, int]]]]:
        """Cumulative counts per arm at up to `buckets` evenly spaced times (the looks)."""
        span = self._query(
            "SELECT MIN(ts_ms), MAX(ts_ms) FROM outcome_events WHERE model = ?", (model,)
        )
        if not span or span[0][0] is None:
            return []
        first, last = int(span[0][0]), int(span[0][1])
        width = max(1, -(-(last - first + 1) // buckets))
        rows = self._query(
            "SELECT (ts_ms - ?) / ?, version, variant, kind, COUNT(*) FROM outcome_events "
            "WHERE model = ? GROUP BY 1, 2, 3, 4 ORDER BY 1",
            (first, width, model),
        )
        totals: dict[ArmKey, dict[str, int]] = {}
        points: list[tuple[int, dict[ArmKey, dict[str, int]]]] = []
        current: int | None = None
        for bucket, version, variant, kind, n in rows:
            if current is not None and int(bucket) != current:
                points.append((first + (current + 1) * width, _copy(totals)))
            current = int(bucket)
            arm = ArmKey(model, str(version), str(variant))
            totals.setdefault(arm, dict.fromkeys(EVENT_KINDS, 0))[str(kind)] += int(n)
        if current is not None:
            points.append((first + (current + 1) * width, _copy(totals)))
        return points

    # -- guardrail counts, folded in from the audit log -------------------------------

    def health(self, model: str) -> tuple[int, dict[ArmKey, ArmHealth]]:
        """The audit index to read from next, and each arm's counts so far."""
        cursor = self._query("SELECT next_index FROM arm_health_cursor WHERE model = ?", (model,))
        rows = self._query(
            "SELECT version, variant, served, errors, flagged, latency FROM arm_health "
            "WHERE model = ?",
            (model,),
        )
        arms = {
            ArmKey(model, str(v), str(a)): ArmHealth(int(s), int(e), int(f), list(json.loads(h)))
            for v, a, s, e, f, h in rows
        }
        return (int(cursor[0][0]) if cursor else 0), arms

    def save_health(self, model: str, next_index: int, arms: dict[ArmKey, ArmHealth]) -> None:
        statements: list[tuple[str, Sequence[Any]]] = [
            ("DELETE FROM arm_health WHERE model = ?", (model,)),
            ("DELETE FROM arm_health_cursor WHERE model = ?", (model,)),
            (
                "INSERT INTO arm_health_cursor (model, next_index) VALUES (?, ?)",
                (model, next_index),
            ),
        ]
        statements += [
            (
                "INSERT INTO arm_health (model, version, variant, served, errors, flagged, "
                "latency) VALUES (?, ?, ?, ?, ?, ?, ?)",
                (
                    model,
                    arm.version,
                    arm.variant,
                    h.served,
                    h.errors,
                    h.flagged,
                    json.dumps(h.histogram()),
                ),
            )
            for arm, h in arms.items()
        ]
        self._write(statements)

    # -- arms stopped by a guardrail --------------------------------------------------

    def stop(self, stop: ArmStop) -> None:
        self._write(
            [
                (
                    "INSERT INTO arm_stops (model, version, variant, reason, ts_ms) "
                    "VALUES (?, ?, ?, ?, ?) ON CONFLICT (model, version) DO NOTHING",
                    (stop.arm.model, stop.arm.version, stop.arm.variant, stop.reason, stop.ts_ms),
                )
            ]
        )

    def stops(self) -> list[ArmStop]:
        rows = self._query("SELECT model, version, variant, reason, ts_ms FROM arm_stops")
        return [ArmStop(ArmKey(str(m), str(v), str(a)), str(r), int(t)) for m, v, a, r, t in rows]

    def ping(self) -> None:
        self._query("SELECT 1")

    def close(self) -> None:
        raise NotImplementedError


def _copy(totals: dict[ArmKey, dict[str, int]]) -> dict[ArmKey, dict[str, int]]:
    return {arm: dict(kinds) for arm, kinds in totals.items()}


class SqliteEventStore(EventStore):
    """One connection behind a lock (WAL, synchronous=FULL); the file is owner-only."""

    kind = "sqlite"

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        self._lock = threading.Lock()
        # The -wal and -shm files take the database file's mode: owner-only from the start.
        os.close(os.open(path, os.O_RDWR | os.O_CREAT, 0o600))
        for existing in (path, *(path.with_name(path.name + s) for s in ("-wal", "-shm"))):
            if existing.exists():
                existing.chmod(0o600)
        try:
            self._conn = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
            enable_wal(self._conn)
            self._conn.execute("PRAGMA synchronous=FULL")
            self._conn.execute("PRAGMA busy_timeout=5000")
            self._conn.executescript(_SCHEMA)
        except sqlite3.Error as exc:
            raise EventStoreError(f"event store {path.name}: {exc}") from exc

    def _query(self, statement: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        with self._lock:
            try:
                return list(self._conn.execute(statement, tuple(params)).fetchall())
            except sqlite3.Error as exc:
                raise EventStoreError(str(exc)) from exc

    def _write(self, statements: Iterable[tuple[str, Sequence[Any]]]) -> list[int]:
        with self._lock:
            try:
                self._conn.execute("BEGIN IMMEDIATE")
                try:
                    counts = [
                        self._conn.execute(statement, tuple(params)).rowcount
                        for statement, params in statements
                    ]
                except BaseException:
                    self._conn.execute("ROLLBACK")
                    raise
                self._conn.execute("COMMIT")
                return counts
            except sqlite3.Error as exc:
                raise EventStoreError(str(exc)) from exc

    def close(self) -> None:
        with self._lock:
            self._conn.close()
