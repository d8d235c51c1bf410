"""The PostgreSQL event store against its own server stopped (SIGSTOP), resumed and
restarted: every call ends within its bound (nothing counted during the outage), and
the store comes back by itself."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import TypeVar

import pytest

from models.experiments import ArmKey, EventStoreError, OutcomeEvent
from models.experiments.postgres_store import PostgresEventStore
from tests.faults.conftest import own_postgres  # noqa: F401 - the fixture (skips loudly)
from tests.faults.servers import OwnPostgres
from tests.faults.timing import eventually, timed

BOUND_S = 0.5
SLACK_S = 0.4  # the watchdog's wake-up and the error's way back
ARM = ArmKey("demo-ranker", "2", "B")
T = TypeVar("T")


def click(request: str) -> OutcomeEvent:
    return OutcomeEvent(request, "i1", "click", ARM, None, "p", b"\x01" * 32, 1)


@pytest.fixture
def store(own_postgres: OwnPostgres) -> Iterator[PostgresEventStore]:  # noqa: F811
    opened = PostgresEventStore(
        own_postgres.dsn, f"events_outage_{uuid.uuid4().hex[:12]}", timeout_s=BOUND_S
    )
    try:
        yield opened
    finally:
        own_postgres.thaw()
        opened.close()


def test_a_stopped_database_fails_in_bound_and_comes_back(
    store: PostgresEventStore,
    own_postgres: OwnPostgres,  # noqa: F811
) -> None:
    assert store.add([click("r1")]) == [True]
    own_postgres.freeze()
    for call in (
        lambda: store.counts("demo-ranker"),
        lambda: store.add([click("r2")]),
        lambda: store.erase_owner(b"\x01" * 32),
    ):
        result, took = timed(call, EventStoreError)
        assert isinstance(result, EventStoreError), result
        assert took < 2.0 + SLACK_S, f"{took:.2f} s"  # libpq's 2 s connect floor at most
    own_postgres.thaw()
    counts, took = eventually(lambda: store.counts("demo-ranker"), 5, EventStoreError)
    assert took < 2.0, f"back after {took:.2f} s"
    # The refused write and erasure did not happen.
    assert counts[ARM]["click"] == 1


def test_a_restarted_database_is_reconnected(
    store: PostgresEventStore,
    own_postgres: OwnPostgres,  # noqa: F811
) -> None:
    store.add([click("r1")])
    own_postgres.stop()
    result, took = timed(lambda: store.counts("demo-ranker"), EventStoreError)
    assert isinstance(result, EventStoreError)
    assert took < BOUND_S + SLACK_S
    own_postgres.start()
    counts, took = eventually(lambda: store.counts("demo-ranker"), 5, EventStoreError)
    assert took < 2.0, f"back after {took:.2f} s"
    assert counts[ARM]["click"] == 1
    assert store.add([click("r2")]) == [True]
