"""The refusal budget through the real app and a real SQLite audit log.

Attacker's side: one address sending 500 anonymous calls, and many addresses sharing the
work, grow the log by a bounded number of records, while the aggregates account for
every refusal not recorded one by one (sum check) and the log still verifies. A caller
who is authenticated is recorded one by one whatever it does; the counts survive a
failed flush and a shutdown.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from audit.appender import AppendFailed
from audit.log import AuditLog
from audit.record import parse
from audit.refusals import KIND_REFUSALS, OVERFLOW_SOURCE, RefusalBudget, RefusalLimits
from audit.sqlite_store import SqliteAuditStore
from audit.stage import AuditStage, transport_refusal_recorder
from audit.store import AuditStore, PendingRecord
from audit.verify import verify_store
from gateway.app import create_app
from gateway.errors import ConfigurationError
from gateway.metrics import Metrics
from gateway.pipeline import Pipeline, Principal, RequestContext
from gateway.settings import Settings
from gateway.transport import TransportMiddleware
from tests.audit.conftest import make_log

JSON = {"Content-Type": "application/json"}
PEER = "x-test-peer"  # the test network: which address the request comes from


class ManualClock:
    """Wall time, frozen until the test moves it: windows close when the test says."""

    def __init__(self) -> None:
        self.now = time.time()

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def with_peers(app: ASGIApp) -> ASGIApp:
    """The network in front of the app: a request's `x-test-peer` is its client address."""

    async def network(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            for name, value in scope["headers"]:
                if name == PEER.encode():
                    scope = {**scope, "client": (value.decode(), 40_000)}
        await app(scope, receive, send)

    return network


class Gateway:
    def __init__(self, app: FastAPI, client: TestClient, clock: ManualClock) -> None:
        self.app = app
        self.client = client
        self.clock = clock

    @property
    def audit(self) -> AuditLog:
        found = self.app.state.components.audit
        assert isinstance(found, AuditLog)
        return found

    @property
    def budget(self) -> RefusalBudget:
        found = self.app.state.components.refusals
        assert isinstance(found, RefusalBudget)
        return found

    def flush(self) -> int:
        appended: int = self.client.portal.call(self.budget.flush)  # type: ignore[union-attr]
        return appended

    def anonymous(self, n: int, peer: str | None = None) -> list[Any]:
        headers = {PEER: peer} if peer else {}
        return [self.client.get("/v2/models/demo-ranker", headers=headers) for _ in range(n)]


@pytest.fixture
def gateway(
    make_settings: Callable[..., Settings], tmp_path: Path, request: pytest.FixtureRequest
) -> Iterator[Gateway]:
    """The real app on its own audit log; `@pytest.mark.parametrize("budget", [...])`
    (indirect) chooses the budget's settings."""
    budget: dict[str, Any] = getattr(request, "param", {})
    settings = make_settings(
        audit={"sqlite_path": str(tmp_path / "audit.db"), "anonymous_refusals": budget}
    )
    clock = ManualClock()
    app = create_app(settings, clock=clock)
    with TestClient(with_peers(app)) as client:
        yield Gateway(app, client, clock)


def records(store: AuditStore) -> list[dict[str, Any]]:
    return [parse(leaf.payload or b"") for leaf in store.iter_leaves()]


def aggregates(store: AuditStore) -> list[dict[str, Any]]:
    return [r for r in records(store) if r["kind"] == KIND_REFUSALS]


def check_sums(aggregate: dict[str, Any]) -> None:
    assert aggregate["counted"] == sum(c["count"] for c in aggregate["counts"])


def test_500_anonymous_calls_leave_k_records_and_one_aggregate(gateway: Gateway) -> None:
    store = gateway.audit.store
    before = store.size()
    responses = gateway.anonymous(500)
    ids = [r.headers["x-request-id"] for r in responses]
    # The client sees no difference: same status, challenge and problem, recorded or not.
    first, last = responses[0], responses[-1]
    assert {r.status_code for r in responses} == {401}
    assert first.headers["www-authenticate"] == last.headers["www-authenticate"]
    assert {**first.json(), "instance": None} == {**last.json(), "instance": None}
    # The first 10 (the default budget) are recorded one by one; the other 490 are not.
    assert store.size() == before + 10
    assert all(store.index_of(i) is not None for i in ids[:10])
    assert all(store.index_of(i) is None for i in ids[10:])
    # The window closes: one aggregate accounts for the 490.
    gateway.clock.advance(60)
    assert gateway.flush() == 1
    assert store.size() == before + 11
    [aggregate] = aggregates(store)
    check_sums(aggregate)
    assert aggregate["source"] == "testclient"
    assert (aggregate["individual"], aggregate["counted"]) == (10, 490)
    assert aggregate["counts"] == [
        {"action": "model.read", "status": 401, "outcome": "invalid-token", "count": 490}
    ]
    assert (aggregate["first_request_id"], aggregate["last_request_id"]) == (ids[10], ids[-1])
    started = gateway.clock.now - 60
    assert aggregate["window_start_ms"] <= started * 1000 < aggregate["window_end_ms"]
    assert (aggregate["tenant"], aggregate["request_id"]) == (None, None)
    # An ordinary leaf of the Merkle log: the whole log still verifies.
    verify_store(store, gateway.audit.verifier)
    # A new window, a new budget.
    assert store.index_of(gateway.anonymous(1)[0].headers["x-request-id"]) is not None


@pytest.mark.parametrize(
    "gateway",
    [{"individual_per_window": 2, "global_individual_per_window": 5, "max_sources": 4}],
    indirect=True,
)
def test_many_addresses_hit_the_global_cap_and_the_source_bound(gateway: Gateway) -> None:
    store = gateway.audit.store
    before = store.size()
    # Two addresses of one IPv6 /64 are one source; then eight IPv4 addresses.
    peers = ["2001:db8:1:1::1", "2001:db8:1:1::2"] + [f"198.51.100.{n}" for n in range(1, 9)]
    ids = [r.headers["x-request-id"] for peer in peers for r in gateway.anonymous(3, peer)]
    assert len(ids) == 30
    # The global cap: 5 individual records across all addresses, not 2 per address.
    assert store.size() == before + 5
    gateway.clock.advance(60)
    assert gateway.flush() == 5
    found = {a["source"]: (a["individual"], a["counted"]) for a in aggregates(store)}
    assert found == {
        "2001:db8:1:1::/64": (2, 4),
        "198.51.100.1": (2, 1),
        "198.51.100.2": (1, 2),
        "198.51.100.3": (0, 3),
        # Sources past max_sources (4) share one count: memory stays bounded.
        OVERFLOW_SOURCE: (0, 15),
    }
    for aggregate in aggregates(store):
        check_sums(aggregate)
    individually = sum(store.index_of(i) is not None for i in ids)
    assert individually + sum(counted for _, counted in found.values()) == 30
    verify_store(store, gateway.audit.verifier)


@pytest.mark.parametrize("gateway", [{"individual_per_window": 1}], indirect=True)
def test_an_authenticated_callers_refusals_are_all_recorded(
    gateway: Gateway, auth: Callable[..., dict[str, str]]
) -> None:
    store = gateway.audit.store
    body = {"user_id": "u1", "item_ids": ["i1"]}
    wrong_scope = {**auth(("infer",)), **JSON}
    responses = [gateway.client.post("/v1/rank", json=body, headers=wrong_scope) for _ in range(25)]
    assert {r.status_code for r in responses} == {403}
    for response in responses:
        index = store.index_of(response.headers["x-request-id"])
        assert index is not None
        record = parse(store.leaf(index).payload or b"")
        assert (record["client_id"], record["outcome"]) == ("demo", "insufficient-scope")
    # The budget is on: an anonymous caller from the same address gets 1 record, not 3.
    anonymous = [r.headers["x-request-id"] for r in gateway.anonymous(3)]
    assert [store.index_of(i) is not None for i in anonymous] == [True, False, False]


@pytest.mark.parametrize("gateway", [{"individual_per_window": 1}], indirect=True)
def test_counts_survive_a_failed_flush_and_fail_closed_still_holds(
    gateway: Gateway, caplog: pytest.LogCaptureFixture
) -> None:
    store = gateway.audit.store
    gateway.anonymous(5)  # 1 recorded, 4 counted
    # Fault injection at the audit writer, as on a full disk.
    appender = gateway.audit._appender
    real = appender.append
    down = {"on": True}

    async def failing(pending: PendingRecord) -> int:
        if down["on"]:
            raise AppendFailed("disk full (injected)")
        return await real(pending)

    appender.append = failing  # type: ignore[method-assign,assignment]
    gateway.clock.advance(60)
    with caplog.at_level(logging.ERROR, logger="gateway.audit"):
        assert gateway.flush() == 0
    assert "kept for the next flush" in caplog.text
    assert "disk full (injected)" in caplog.text
    assert gateway.budget.flushes_failed == 1
    # A refusal admitted for its own record still fails closed while the log is down.
    refused = gateway.anonymous(2)
    assert [r.status_code for r in refused] == [503, 401]
    assert refused[0].json() == {"error": "The request could not be audited"}  # OIP's form
    down["on"] = False
    gateway.anonymous(2)  # counted in the same window
    gateway.clock.advance(60)
    assert gateway.flush() == 1
    [aggregate] = aggregates(store)
    check_sums(aggregate)
    # The failed window's 4 and the next window's 1 + 2, in one record spanning both.
    assert (aggregate["individual"], aggregate["counted"]) == (2, 7)
    assert aggregate["window_end_ms"] - aggregate["window_start_ms"] == 120_000
    verify_store(store, gateway.audit.verifier)


def test_shutdown_appends_what_is_counted(
    make_settings: Callable[..., Settings], tmp_path: Path
) -> None:
    path = tmp_path / "audit.db"
    settings = make_settings(
        audit={"sqlite_path": str(path), "anonymous_refusals": {"individual_per_window": 1}}
    )
    app = create_app(settings, clock=ManualClock())
    with TestClient(app) as client:
        for _ in range(4):
            assert client.get("/v2/models/demo-ranker").status_code == 401
        verifier = app.state.components.audit.verifier
    # The window is still open at shutdown: its counts are appended all the same.
    store = SqliteAuditStore(path)
    try:
        [aggregate] = aggregates(store)
        assert (aggregate["individual"], aggregate["counted"]) == (1, 3)
        verify_store(store, verifier)
    finally:
        store.close()


def test_transport_refusals_are_budgeted_too(
    make_settings: Callable[..., Settings], tmp_path: Path
) -> None:
    settings = make_settings(
        audit={
            "sqlite_path": str(tmp_path / "audit.db"),
            "anonymous_refusals": {"individual_per_window": 1},
        },
        limits={"max_body_bytes": 2048},
    )
    clock = ManualClock()
    app = create_app(settings, clock=clock)
    with TestClient(app) as client:
        store = app.state.components.audit.store
        responses = [
            client.post("/v1/rank", content=b"{" + b" " * 5000 + b"}", headers=JSON)
            for _ in range(3)
        ]
        assert {r.status_code for r in responses} == {413}
        ids = [r.headers["x-request-id"] for r in responses]
        assert [store.index_of(i) is not None for i in ids] == [True, False, False]
        clock.advance(60)
        client.portal.call(app.state.components.refusals.flush)  # type: ignore[union-attr]
        [aggregate] = aggregates(store)
        assert aggregate["counts"] == [
            {"action": "transport", "status": 413, "outcome": "payload-too-large", "count": 2}
        ]


@pytest.mark.parametrize("gateway", [{"individual_per_window": 2}], indirect=True)
def test_failed_token_requests_are_budgeted(gateway: Gateway) -> None:
    store = gateway.audit.store
    form = {"grant_type": "client_credentials", "client_id": "demo", "client_secret": "wrong"}
    responses = [gateway.client.post("/oauth/token", data=form) for _ in range(6)]
    assert all(r.status_code in (401, 429) for r in responses)
    ids = [r.headers["x-request-id"] for r in responses]
    individually = sum(store.index_of(i) is not None for i in ids)
    assert individually == 2
    gateway.clock.advance(60)
    gateway.flush()
    [aggregate] = aggregates(store)
    check_sums(aggregate)
    assert {c["action"] for c in aggregate["counts"]} == {"token.issue"}
    assert individually + aggregate["counted"] == 6


@pytest.mark.parametrize("gateway", [{"individual_per_window": 1, "window_s": 0.2}], indirect=True)
def test_the_window_closes_by_itself(gateway: Gateway) -> None:
    """The timer task flushes when the window closes (real time here, not the test)."""
    store = gateway.audit.store
    gateway.clock.now = time.time()
    responses = gateway.anonymous(6)
    ids = [r.headers["x-request-id"] for r in responses]
    gateway.clock.advance(0.5)  # the window is over; the timer is asleep until it is
    for _ in range(100):
        if aggregates(store):
            break
        gateway.client.portal.call(asyncio.sleep, 0.05)  # type: ignore[union-attr]
    assert aggregates(store), "no aggregate: the timer did not flush the closed window"
    individually = sum(store.index_of(i) is not None for i in ids)
    assert individually + sum(a["counted"] for a in aggregates(store)) == 6


class _Slow:
    """Stage 6 outliving the request's time limit (a stuck model)."""

    name = "rank"

    async def __call__(self, ctx: RequestContext) -> RequestContext:
        await asyncio.sleep(5)
        return ctx


class _KnownCaller:
    """Stage 1 having passed: the caller is known."""

    name = "authenticate"

    async def __call__(self, ctx: RequestContext) -> RequestContext:
        principal = Principal(issuer="test", client_id="known", subject=None, scopes=frozenset())
        return ctx.evolve(principal=principal)


class _Hung:
    """Stage 1 that never answers (a JWKS endpoint that hangs): no caller known."""

    name = "authenticate"

    async def __call__(self, ctx: RequestContext) -> RequestContext:
        await asyncio.sleep(5)
        return ctx


@pytest.mark.asyncio
async def test_a_timeout_after_authentication_is_recorded_one_by_one(tmp_path: Path) -> None:
    """Stage 0 records timeouts without knowing the caller: past stage 1 it must not be
    counted as anonymous, before stage 1 it is."""
    store = SqliteAuditStore(tmp_path / "audit.db")
    audit_log = make_log(store)
    budget = RefusalBudget(audit_log, RefusalLimits(individual_per_window=0), time.time)
    pipelines = {
        "/known": Pipeline(
            [_KnownCaller(), _Slow()], final=[AuditStage(audit_log, time.time, budget)]
        ),
        "/hung": Pipeline([_Hung()], final=[AuditStage(audit_log, time.time, budget)]),
    }

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        ctx = RequestContext(
            request_id=scope["state"]["request_id"], action="rank", route=scope["path"], headers={}
        )
        await pipelines[scope["path"]].run(ctx)

    middleware = TransportMiddleware(
        app,
        metrics=Metrics(),
        max_body_bytes=1024,
        timeout_s=0.05,
        on_refusal=transport_refusal_recorder(audit_log, time.time, budget),
        sources=budget,
    )

    async def call(path: str) -> str:
        sent: list[Message] = []

        async def receive() -> Message:
            return {"type": "http.request", "body": b"", "more_body": False}

        async def send(message: Message) -> None:
            sent.append(message)

        scope: Scope = {
            "type": "http",
            "method": "POST",
            "path": path,
            "headers": [],
            "client": ("192.0.2.7", 5000),
        }
        await middleware(scope, receive, send)
        assert sent[0]["status"] == 503
        return str(dict(sent[0]["headers"])[b"x-request-id"].decode())

    try:
        known = [await call("/known") for _ in range(3)]
        hung = await call("/hung")
        assert all(store.index_of(i) is not None for i in known)
        assert store.index_of(hung) is None  # anonymous, and the budget is 0: counted
        await budget.close()
        [aggregate] = aggregates(store)
        assert (aggregate["source"], aggregate["counted"]) == ("192.0.2.7", 1)
        assert aggregate["first_request_id"] == hung
    finally:
        await audit_log.close()
        store.close()


@pytest.mark.parametrize(
    "bad",
    [{"window_s": 0}, {"max_sources": 0}, {"individual_per_window": -1}, {"unknown": 1}],
)
def test_a_bad_budget_setting_is_refused_in_one_line(
    make_settings: Callable[..., Settings], bad: dict[str, Any]
) -> None:
    with pytest.raises(ConfigurationError, match=r"^invalid setting audit\.anonymous_refusals"):
        make_settings(audit={"anonymous_refusals": bad})
