"""The gateway under steady traffic while its own PostgreSQL and Redis fail and come back.

(a) PostgreSQL stopped (SIGSTOP to the postmaster and every backend): liveness keeps
answering fast, readiness says 503 naming the audit and consent stores, requests end
with 503 within the request timeout, and after SIGCONT everything is ready again
within 2 s. (b) The same with Redis stopped, and with Redis killed and restarted on its
port. (c) PostgreSQL restarted: both stores reconnect by themselves. After each: the
audit log verifies, every 2xx has its one record, no request id has two.
"""

from __future__ import annotations

from collections.abc import Callable

from tests.faults import harness
from tests.faults.conftest import REQUEST_TIMEOUT_S, Served
from tests.faults.servers import OwnPostgres, OwnRedis

STORES = frozenset({"audit_store", "consent_store"})
STATE = frozenset({"inspection_state"})


def _run(
    served: Served,
    fault: harness.Fault,
    hold_s: float,
    record_figures: Callable[[harness.FaultRun], None],
) -> harness.FaultRun:
    run = harness.run_fault(
        fault,
        base_url=served.url,
        token=served.token,
        users=served.users,
        items=served.items,
        request_timeout_s=REQUEST_TIMEOUT_S,
        hold_s=hold_s,
    )
    run.findings = harness.check_audit(served.settings, run.outcomes)
    record_figures(run)
    return run


def _assert_held(run: harness.FaultRun) -> None:
    assert run.failures == [], run.failures
    assert run.cycles == 1
    # Liveness was measured through the outage, often enough to mean something.
    assert len(run.healthz) >= 20
    assert run.healthz_late <= run.healthz_late_allowed
    assert run.healthz_worst_ms < harness.HEALTHZ_WORST_LIMIT_MS
    assert run.recover_worst_s < harness.RECOVERY_LIMIT_S
    findings = run.findings
    assert findings is not None
    assert findings.verified == "ok"
    assert findings.unrecorded == []
    assert findings.duplicates == []
    assert findings.contradicted == []
    # Traffic succeeded before and after the fault, so the check above checked something.
    assert sum(200 <= o.status < 300 for o in run.outcomes) >= 5


def test_a_stopped_postgres_is_a_503_not_a_hang(
    served: Served,
    own_postgres: OwnPostgres,
    record_figures: Callable[[harness.FaultRun], None],
) -> None:
    fault = harness.Fault("postgres SIGSTOP", own_postgres.freeze, own_postgres.thaw, STORES)
    # Held past the request timeout: requests in flight when it began must have ended.
    run = _run(served, fault, REQUEST_TIMEOUT_S + 2.0, record_figures)
    _assert_held(run)
    refused = [o for o in run.outcomes if o.status == 503]
    assert refused, "no request met the outage"


def test_a_restarted_postgres_is_reconnected_by_both_stores(
    served: Served,
    own_postgres: OwnPostgres,
    record_figures: Callable[[harness.FaultRun], None],
) -> None:
    fault = harness.Fault("postgres restart", own_postgres.stop, own_postgres.start, STORES)
    _assert_held(_run(served, fault, 1.0, record_figures))


def test_a_stopped_redis_is_a_503_not_a_hang(
    served: Served,
    own_redis: OwnRedis,
    record_figures: Callable[[harness.FaultRun], None],
) -> None:
    fault = harness.Fault("redis SIGSTOP", own_redis.freeze, own_redis.thaw, STATE)
    _assert_held(_run(served, fault, REQUEST_TIMEOUT_S, record_figures))


def test_a_killed_redis_restarted_on_its_port_is_reconnected(
    served: Served,
    own_redis: OwnRedis,
    record_figures: Callable[[harness.FaultRun], None],
) -> None:
    fault = harness.Fault("redis kill -9 + restart", own_redis.kill, own_redis.start, STATE)
    _assert_held(_run(served, fault, 1.0, record_figures))


def test_a_blip_shorter_than_a_probe_still_recovers(
    served: Served,
    own_postgres: OwnPostgres,
    record_figures: Callable[[harness.FaultRun], None],
) -> None:
    """A freeze shorter than readiness's probe timeout: readiness may never see it, but
    nothing may hang, and no 2xx may lose its record."""
    fault = harness.Fault("postgres SIGSTOP 0.3 s", own_postgres.freeze, own_postgres.thaw, STORES)
    run = harness.run_fault(
        fault,
        base_url=served.url,
        token=served.token,
        users=served.users,
        items=served.items,
        request_timeout_s=REQUEST_TIMEOUT_S,
        hold_s=0.3,
    )
    run.findings = harness.check_audit(served.settings, run.outcomes)
    record_figures(run)
    assert [f for f in run.failures if "/readyz never answered 503" not in f] == []
    assert run.findings.unrecorded == run.findings.duplicates == []
