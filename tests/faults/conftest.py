"""Fault-test fixtures: the test's own PostgreSQL and redis-server (never the shared ones),
and the gateway served by a real uvicorn on 127.0.0.1 over both.

A missing server binary, or running as root without a `postgres` user, skips those
tests loudly: a warning on stderr and in the summary, since a green run must never
hide that the fault suite did not run. The figures each fault test measured are
printed in the summary too (the long runs are bench/harden_faults.py).
"""

from __future__ import annotations

import sys
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from gateway.settings import Settings
from models.features import FeatureStore
from privacy.components import open_consent_store
from privacy.consent_store import ConsentEntry
from tests.faults import harness
from tests.faults.servers import OwnPostgres, OwnRedis, Unavailable

_SKIPPED = pytest.StashKey[list[str]]()
_FIGURES = pytest.StashKey[list[str]]()

# Short enough that a fault outlasts it inside a test of seconds; every store bound is
# derived from it (audit.factory.store_timeout_s: 0.5 s here).
REQUEST_TIMEOUT_S = 2.0
USERS = [f"u{n}" for n in range(1, 9)]


def pytest_terminal_summary(
    terminalreporter: pytest.TerminalReporter, config: pytest.Config
) -> None:
    for reason in config.stash.get(_SKIPPED, []):
        terminalreporter.write_line(f"WARNING: fault tests NOT RUN: {reason}", red=True, bold=True)
    figures = config.stash.get(_FIGURES, [])
    if figures:
        terminalreporter.write_sep("-", "fault figures (tests/faults)")
        for line in figures:
            terminalreporter.write_line(line)


def skip_loudly(request: pytest.FixtureRequest, reason: str) -> None:
    request.config.stash.setdefault(_SKIPPED, [])
    if reason not in request.config.stash[_SKIPPED]:
        request.config.stash[_SKIPPED].append(reason)
    print(f"WARNING: fault tests NOT RUN: {reason}", file=sys.stderr)
    pytest.skip(reason)


@pytest.fixture(scope="session")
def own_postgres(request: pytest.FixtureRequest) -> Iterator[OwnPostgres]:
    try:
        server = OwnPostgres()
    except Unavailable as exc:
        skip_loudly(request, str(exc))
    try:
        server.start()
    except Unavailable as exc:
        server.close()
        skip_loudly(request, str(exc))
    yield server
    server.close()


@pytest.fixture(scope="session")
def own_redis(request: pytest.FixtureRequest) -> Iterator[OwnRedis]:
    try:
        server = OwnRedis()
        server.start()
    except Unavailable as exc:
        skip_loudly(request, str(exc))
    yield server
    server.close()


@pytest.fixture
def record_figures(request: pytest.FixtureRequest) -> Callable[[harness.FaultRun], None]:
    """Keep a fault's figures for the summary."""

    def record(run: harness.FaultRun) -> None:
        findings = run.findings
        request.config.stash.setdefault(_FIGURES, []).append(
            f"{run.fault}: cycles {run.cycles}, requests {run.requests}, "
            f"/healthz worst {run.healthz_worst_ms:.1f} ms p99 {run.healthz_p99_ms:.1f} ms, "
            f"recovered in {run.recover_worst_s:.2f} s, "
            f"2xx without record {len(findings.unrecorded) if findings else '?'}, "
            f"duplicate records {len(findings.duplicates) if findings else '?'}"
        )

    return record


@dataclass(frozen=True)
class Served:
    """The gateway under test, and what a client of it needs."""

    url: str
    settings: Settings
    token: str
    users: list[str]
    items: list[str]


def fault_settings(
    make_settings: Callable[..., Settings], pg: OwnPostgres, redis_url: str, **extra: Any
) -> Settings:
    """Audit and consent on the test's own PostgreSQL (fresh schemas), state on its Redis."""
    tag = uuid.uuid4().hex[:10]
    return make_settings(
        audit={
            "postgres_dsn": pg.dsn,
            "postgres_schema": f"faults_audit_{tag}",
            "checkpoint_interval_s": 0.5,
        },
        privacy={
            "consent_postgres_dsn": pg.dsn,
            "consent_postgres_schema": f"faults_consent_{tag}",
        },
        inspection={"redis_url": redis_url, "redis_prefix": f"faults-{tag}:"},
        limits={"request_timeout_s": REQUEST_TIMEOUT_S},
        **extra,
    )


@pytest.fixture(scope="module")
def served(
    make_settings: Callable[..., Settings], own_postgres: OwnPostgres, own_redis: OwnRedis
) -> Iterator[Served]:
    settings = fault_settings(make_settings, own_postgres, own_redis.url)
    # The users consent to personalisation: after an outage, a personalised answer shows
    # that the consent store is read again (it once silently stopped being read).
    store = open_consent_store(settings)
    try:
        entry = ConsentEntry("personalization", True, "consent", "default", "test", 0, "test")
        for user in USERS:
            store.record(None, user, [entry])
    finally:
        store.close()
    items = list(FeatureStore.load(settings.resolve(settings.model.features_path)).item_ids[:40])
    with harness.gateway(settings) as url:
        yield Served(url, settings, harness.mint_token(settings), USERS, items)
