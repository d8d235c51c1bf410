"""One request, one record, one outcome, when the audit write outlasts the request's time.

Stage 0 (gateway.transport) and stage 8 (audit.stage) run for real over a real SQLite
store whose writes wait for the test (a write lock held elsewhere, as the outside tester
did for 20 s). The request's own work is slow enough that its record reaches the writer
just before the deadline.
"""

from __future__ import annotations

import asyncio
import os
import threading
from pathlib import Path

import httpx
import pytest
from starlette.types import Receive, Scope, Send

from audit.appender import KIND_UNACKNOWLEDGED
from audit.checkpoint import NoteSigner
from audit.log import AuditLog
from audit.record import event_record, parse
from audit.stage import AuditStage, transport_refusal_recorder
from audit.subjects import SubjectKeys
from gateway.metrics import Metrics
from gateway.pipeline import Pipeline, RequestContext
from gateway.transport import TransportMiddleware
from tests.faults.test_unacknowledged import Gate

TIMEOUT_S = 0.3
WORK_S = 0.2  # the request's record reaches the writer 0.1 s before its deadline


class SlowWork:
    name = "respond"

    async def __call__(self, ctx: RequestContext) -> RequestContext:
        await asyncio.sleep(WORK_S)
        return ctx.evolve(response={"ok": True})


def gateway_over(audit_log: AuditLog) -> TransportMiddleware:
    pipeline = Pipeline([], final=[AuditStage(audit_log, lambda: 1_700_000_000.0)])

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        state = scope["state"]
        ctx = RequestContext(
            request_id=state["request_id"],
            action="rank",
            route=scope["path"],
            headers={},
            deadline=state["deadline"],
        )
        await pipeline.run(ctx, then=SlowWork())
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"{}"})

    return TransportMiddleware(
        app,
        metrics=Metrics(),
        max_body_bytes=1024,
        timeout_s=TIMEOUT_S,
        on_refusal=transport_refusal_recorder(audit_log, lambda: 1_700_000_000.0),
    )


def open_gate_after(store: Gate, delay_s: float) -> threading.Thread:
    def run() -> None:
        store.entered.wait(5)
        threading.Event().wait(delay_s)
        store.gate.set()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


def records(store: Gate) -> list[dict[str, object]]:
    return [parse(leaf.payload or b"") for leaf in store.iter_leaves()]


def audit_log_over(store: Gate, write_bound_s: float) -> AuditLog:
    return AuditLog(
        store,
        signer=NoteSigner.generate("test.example/audit"),
        subject_keys=SubjectKeys(store, kek=os.urandom(32), handle_key=os.urandom(32)),
        write_bound_s=write_bound_s,
    )


@pytest.mark.asyncio
async def test_a_write_in_flight_at_the_deadline_decides_the_outcome(tmp_path: Path) -> None:
    store = Gate(tmp_path / "audit.db")
    audit_log = audit_log_over(store, write_bound_s=2.0)
    # The write finishes 0.3 s after it began: 0.2 s past the request's deadline.
    opener = open_gate_after(store, 0.3)
    transport = httpx.ASGITransport(app=gateway_over(audit_log))
    try:
        async with httpx.AsyncClient(transport=transport, base_url="http://gw") as client:
            response = await client.get("/v1/rank")
        opener.join()
        request_id = response.headers["x-request-id"]
        assert response.status_code == 200
        mine = [r for r in records(store) if r.get("request_id") == request_id]
        assert [(r["status"], r["outcome"]) for r in mine] == [(200, "ok")]
        assert len(records(store)) == 1  # no timeout record, no unacknowledged statement
    finally:
        store.gate.set()
        await audit_log.close()
        store.close()


@pytest.mark.asyncio
async def test_a_store_past_its_own_bound_still_leaves_one_record(tmp_path: Path) -> None:
    store = Gate(tmp_path / "audit.db")
    # The store breaks the bound it promised: the deadline fires mid-write after all.
    audit_log = audit_log_over(store, write_bound_s=0.05)
    opener = open_gate_after(store, 0.5)
    transport = httpx.ASGITransport(app=gateway_over(audit_log))
    try:
        async with httpx.AsyncClient(transport=transport, base_url="http://gw") as client:
            response = await client.get("/v1/rank")
        assert response.status_code == 503
        assert response.json()["type"].endswith(":timeout")
        request_id = response.headers["x-request-id"]
        opener.join()
        await asyncio.sleep(0.1)  # the gated write lands
        # The next append states that the landed record's writer was not told.
        await audit_log.append(event_record("test", 1_700_000_000_000, name="after"))
        log = records(store)
        mine = [r for r in log if r.get("request_id") == request_id]
        assert [(r["status"], r["outcome"]) for r in mine] == [(200, "ok")]
        statements = [r for r in log if r.get("kind") == KIND_UNACKNOWLEDGED]
        assert [s["request_ids"] for s in statements] == [[request_id]]
    finally:
        store.gate.set()
        await audit_log.close()
        store.close()
