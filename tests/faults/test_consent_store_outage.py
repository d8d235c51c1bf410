"""The PostgreSQL consent store against its own server stopped (SIGSTOP), resumed and
restarted: every call ends within its bound, a hung call does not hold the others
hostage, and the store comes back by itself (no restart)."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Iterator
from typing import TypeVar

import pytest

from gateway.derivation import DerivedKeys
from privacy.consent_store import ConsentEntry, ConsentStoreError, PostgresConsentStore
from tests.faults.servers import OwnPostgres
from tests.faults.timing import eventually, timed

BOUND_S = 0.5
# What a call may take past its bound: the watchdog's wake-up and the error's way back.
SLACK_S = 0.4
KEYS = DerivedKeys(b"k" * 32)

T = TypeVar("T")


def grant(subject: str) -> list[ConsentEntry]:
    return [ConsentEntry("personalization", True, "consent", "eu", "api", 0, subject)]


@pytest.fixture
def store(own_postgres: OwnPostgres) -> Iterator[PostgresConsentStore]:
    schema = f"consent_outage_{uuid.uuid4().hex[:12]}"
    opened = PostgresConsentStore(own_postgres.dsn, schema, KEYS, timeout_s=BOUND_S)
    try:
        yield opened
    finally:
        own_postgres.thaw()  # whatever the test did
        opened.close()


def test_a_stopped_database_fails_reads_and_writes_in_bound_and_comes_back(
    store: PostgresConsentStore, own_postgres: OwnPostgres
) -> None:
    store.record(None, "alice", grant("alice"))
    assert store.current(None, "alice")["personalization"].granted
    own_postgres.freeze()
    for call in (
        lambda: store.current(None, "alice"),
        lambda: store.record(None, "bob", grant("bob")),
        lambda: store.erased(None, "alice"),
    ):
        result, took = timed(call, ConsentStoreError)
        assert isinstance(result, ConsentStoreError), result
        # The first waits for its bound (libpq's 2 s connect floor caps a reconnection).
        assert took < 2.0 + SLACK_S, f"{took:.2f} s"
    time.sleep(0.5)
    own_postgres.thaw()
    current, took = eventually(lambda: store.current(None, "alice"), 5, ConsentStoreError)
    assert took < 2.0, f"back after {took:.2f} s"
    assert current["personalization"].granted
    # The write refused during the outage did not happen; a new one does, and stays.
    assert store.current(None, "bob") == {}
    store.record(None, "bob", grant("bob"))
    for _ in range(5):
        assert store.current(None, "bob")["personalization"].granted


def test_a_hung_call_does_not_hold_the_others_past_their_bound(
    store: PostgresConsentStore, own_postgres: OwnPostgres
) -> None:
    store.record(None, "alice", grant("alice"))
    own_postgres.freeze()
    took: list[float] = []

    def call() -> None:
        took.append(timed(lambda: store.current(None, "alice"), ConsentStoreError)[1])

    threads = [threading.Thread(target=call) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)
    own_postgres.thaw()
    assert len(took) == 6
    # One waits on the hung server, the rest on its lock: none past the bound (+ slack).
    assert max(took) < BOUND_S + SLACK_S, [round(t, 2) for t in took]


def test_a_restarted_database_is_reconnected_without_a_restart(
    store: PostgresConsentStore, own_postgres: OwnPostgres
) -> None:
    store.record(None, "alice", grant("alice"))
    own_postgres.stop()
    result, took = timed(lambda: store.current(None, "alice"), ConsentStoreError)
    assert isinstance(result, ConsentStoreError)
    assert took < BOUND_S + SLACK_S  # a refused connection fails fast
    own_postgres.start()
    current, took = eventually(lambda: store.current(None, "alice"), 5, ConsentStoreError)
    assert took < 2.0, f"back after {took:.2f} s"
    assert current["personalization"].granted
    store.record(None, "bob", grant("bob"))
    assert store.current(None, "bob")["personalization"].granted
