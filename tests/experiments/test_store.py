"""The event store on both backends (SQLite, and PostgreSQL where one answers): repeats
are not counted twice, counts and the cumulative series per arm, erasure by owner,
guardrail counts, stopped arms; the SQLite files are the owner's only."""

from __future__ import annotations

import stat
import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from psycopg import sql

from models.experiments import ArmKey, EventStore, OutcomeEvent, SqliteEventStore
from models.experiments.postgres_store import PostgresEventStore
from models.experiments.store import ArmHealth, ArmStop
from tests.audit.conftest import pg_dsn  # noqa: F401 - the fixture (skips loudly)

A = ArmKey("demo-ranker", "1", "A")
B = ArmKey("demo-ranker", "2", "B")


@pytest.fixture(params=["sqlite", "postgres"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[EventStore]:
    if request.param == "sqlite":
        found: EventStore = SqliteEventStore(tmp_path / "events" / "events.db")
        yield found
        found.close()
        return
    dsn: str = request.getfixturevalue("pg_dsn")
    schema = f"test_events_{uuid.uuid4().hex[:12]}"
    found = PostgresEventStore(dsn, schema, timeout_s=2.0)
    yield found
    found.close()
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(schema)))


def event(request: str, item: str, kind: str, arm: ArmKey, owner: bytes, ts: int) -> OutcomeEvent:
    return OutcomeEvent(request, item, kind, arm, None, "pseudo-" + owner.hex(), owner, ts)


def test_events_count_once_per_arm_and_erase_by_owner(store: EventStore) -> None:
    alice, bob = b"\x01" * 32, b"\x02" * 32
    first = [
        event("r1", "i1", "impression", A, alice, 1000),
        event("r1", "i2", "impression", A, alice, 1000),
        event("r1", "i1", "click", A, alice, 1010),
        event("r2", "i1", "impression", B, bob, 2000),
    ]
    assert store.add(first) == [True, True, True, True]
    # A repeat, in a batch with a new event: only the new one is stored.
    again = [first[2], event("r2", "i1", "click", B, bob, 2500)]
    assert store.add(again) == [False, True]
    counts = store.counts("demo-ranker")
    assert counts[A] == {"impression": 2, "click": 1, "conversion": 0}
    assert counts[B] == {"impression": 1, "click": 1, "conversion": 0}
    assert store.counts("other-model") == {}
    series = store.series("demo-ranker", buckets=10)
    assert [ts for ts, _ in series] == sorted(ts for ts, _ in series)
    assert series[-1][1] == counts  # cumulative: the last point is the total
    impressions = [sum(c["impression"] for c in at.values()) for _, at in series]
    assert impressions == sorted(impressions)
    assert store.erase_owner(bob) == 2
    assert store.erase_owner(bob) == 0
    assert B not in store.counts("demo-ranker")


def test_guardrail_counts_and_stops_persist(store: EventStore) -> None:
    assert store.health("demo-ranker") == (0, {})
    health = ArmHealth()
    for latency in (3.0, 40.0, 900.0):
        health.observe(error=latency > 500, flagged=False, latency_ms=latency)
    store.save_health("demo-ranker", 17, {B: health})
    cursor, arms = store.health("demo-ranker")
    assert cursor == 17
    assert (arms[B].served, arms[B].errors, arms[B].p99_ms()) == (3, 1, 1000.0)
    store.stop(ArmStop(B, "guardrail breached: error_rate", 5))
    store.stop(ArmStop(B, "again", 6))  # one stop per arm: the first stands
    assert store.stops() == [ArmStop(B, "guardrail breached: error_rate", 5)]


def test_the_sqlite_files_are_the_owners_only(tmp_path: Path) -> None:
    path = tmp_path / "experiments" / "events.db"
    store = SqliteEventStore(path)
    store.add([event("r", "i", "click", A, b"\x03" * 32, 1)])
    for found in path.parent.iterdir():
        assert stat.S_IMODE(found.stat().st_mode) == 0o600, found.name
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    store.close()
