"""The state server and the workers' links to it, in one process: real sockets, real
in-process limiter, budgets and detector state (what `serve --workers N` shares)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient

from gateway.app import create_app
from gateway.settings import Settings
from gateway.workers.channel import RESYNC, ChannelError, WorkerLink
from gateway.workers.codec import FrameError, decode, encode, split
from gateway.workers.state_server import StateServer
from security.inspection.admission import Admission, SubjectRate
from security.inspection.budget import Charge, MemoryBudgets
from security.inspection.ratelimit import MemoryRateLimiter
from security.inspection.shared_state import (
    SharedAdmission,
    SharedBudgets,
    SharedDetectorState,
    SharedRateLimiter,
)
from security.inspection.state import MemoryState, StateUnavailableError


@contextlib.asynccontextmanager
async def serving(path: Path) -> AsyncIterator[StateServer]:
    limiter, budgets, detector_state = MemoryRateLimiter(), MemoryBudgets(), MemoryState()
    state = StateServer(
        {
            "limiter": limiter,
            "budgets": budgets,
            "state": detector_state,
            "admission": Admission(limiter, budgets, detector_state),
        }
    )
    stop = await state.serve(path)
    try:
        yield state
    finally:
        await stop()


@pytest.fixture
def sock(tmp_path: Path) -> Path:
    return tmp_path / "state.sock"


@pytest.mark.asyncio
async def test_one_bucket_for_every_worker(sock: Path) -> None:
    async with serving(sock):
        first, second = WorkerLink(str(sock), worker=0), WorkerLink(str(sock), worker=1)
        limiters = [SharedRateLimiter(first), SharedRateLimiter(second)]
        taken = [
            await limiters[i % 2].take("client", rate=1.0, burst=5, now=100.0) for i in range(8)
        ]
        # Five tokens in all, whichever worker asks: separate buckets would allow all 8.
        assert [t.allowed for t in taken] == [True] * 5 + [False] * 3
        assert taken[-1].retry_after_s == pytest.approx(1.0)
        await first.aclose()
        await second.aclose()


@pytest.mark.asyncio
async def test_budgets_and_detector_state_are_shared(sock: Path) -> None:
    async with serving(sock):
        links = [WorkerLink(str(sock), worker=i) for i in range(2)]
        budgets = [SharedBudgets(link) for link in links]
        assert (await budgets[0].spend("c", 60, limit=100, window_s=3600, now=10.0)).allowed
        refused = await budgets[1].spend("c", 60, limit=100, window_s=3600, now=10.0)
        assert not refused.allowed
        assert refused.used == 60
        assert refused.retry_after_s > 0

        # Budgets charged all at once (security.inspection.budget.Charge crosses the wire).
        charges = [Charge("c", 30, 100, 3600), Charge("s", 30, 40, 3600)]
        assert (await budgets[0].spend_all(charges, now=10.0)).allowed
        assert not (await budgets[1].spend_all(charges, now=10.0)).allowed

        states = [SharedDetectorState(link) for link in links]
        count, cooldown = await states[0].strike(
            "c", now=1000.0, window_s=600, after=2, cooldown_s=30, member="r1"
        )
        assert (count, cooldown) == (1, 0.0)
        # The second detection, seen by the other worker: the client cools down everywhere.
        count, cooldown = await states[1].strike(
            "c", now=1001.0, window_s=600, after=2, cooldown_s=30, member="r2"
        )
        assert (count, cooldown) == (2, 1031.0)
        for link in links:
            await link.aclose()


@pytest.mark.asyncio
async def test_stage_5s_limits_and_cooldown_are_one_call_in_order(sock: Path) -> None:
    async with serving(sock) as state:
        links = [WorkerLink(str(sock), worker=i) for i in range(2)]
        admissions = [SharedAdmission(link) for link in links]
        rate = SubjectRate(("sr:u1",), rps=1.0, burst=2)
        charges = [Charge("c:x", 10, 25, 3600)]
        first = await admissions[0].admit(
            subject_rate=rate, charges=charges, cooldown_key="x", now=100.0
        )
        assert (first.refused, first.cooldown_until) == (None, 0.0)
        assert state.calls == 1  # the three checks, one round trip
        second = await admissions[1].admit(
            subject_rate=rate, charges=charges, cooldown_key="x", now=100.0
        )
        assert second.refused is None
        # The subject's bucket is empty: refused there, so the budget is not charged.
        third = await admissions[0].admit(
            subject_rate=rate, charges=charges, cooldown_key="x", now=100.0
        )
        assert third.refused == "subject_rate"
        assert third.retry_after_s > 0
        budgets = SharedBudgets(links[1])
        assert (await budgets.spend("c:x", 5, limit=25, window_s=3600, now=100.0)).allowed
        # Now the budget refuses (25 of 25 rows spent), before the cool-down is asked.
        fourth = await admissions[1].admit(
            subject_rate=None, charges=charges, cooldown_key="x", now=100.0
        )
        assert fourth.refused == "budget"
        assert fourth.retry_after_s > 0
        # A cool-down set by one worker is what the other's admission reports.
        for n in range(2):
            await SharedDetectorState(links[0]).strike(
                "x", now=100.0, window_s=600, after=2, cooldown_s=30, member=f"r{n}"
            )
        cooled = await admissions[1].admit(
            subject_rate=None, charges=[], cooldown_key="x", now=101.0
        )
        assert (cooled.refused, cooled.cooldown_until) == (None, 130.0)
        for link in links:
            await link.aclose()


@pytest.mark.asyncio
async def test_only_public_methods_of_hosted_objects_run(sock: Path) -> None:
    async with serving(sock) as state:
        link = WorkerLink(str(sock), worker=0)
        for target, method in [
            ("limiter", "_buckets"),  # private: refused even though it exists
            ("limiter", "__init__"),
            ("settings", "secret_key"),  # not hosted
            ("limiter", "nothing"),
        ]:
            with pytest.raises(ChannelError, match="state server"):
                await link.call(target, method)
        assert state.calls == 0
        # A bad argument is the caller's refusal (503), not the server's end.
        with pytest.raises(StateUnavailableError):
            await link.call("limiter", "take", "k", rate="fast", burst=1, now=1.0)
        assert (await SharedRateLimiter(link).take("k", rate=1.0, burst=1, now=1.0)).allowed
        await link.aclose()


@pytest.mark.asyncio
async def test_a_silent_state_server_fails_the_call_in_time(sock: Path) -> None:
    opened: list[asyncio.BaseTransport] = []

    class Silent(asyncio.Protocol):  # reads every call, answers none
        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            opened.append(transport)

    loop = asyncio.get_running_loop()
    server = await loop.create_unix_server(Silent, str(sock))
    link = WorkerLink(str(sock), worker=0, timeout_s=0.2)
    started = loop.time()
    with pytest.raises(StateUnavailableError, match="did not answer"):
        await SharedRateLimiter(link).take("k", rate=1.0, burst=1, now=1.0)
    assert loop.time() - started < 1.0
    await link.aclose()
    server.close()
    for transport in opened:
        transport.close()
    await server.wait_closed()


@pytest.mark.asyncio
async def test_no_state_server_fails_closed_then_reconnects(sock: Path) -> None:
    link = WorkerLink(str(sock), worker=0)
    limiter = SharedRateLimiter(link)
    with pytest.raises(StateUnavailableError, match="unreachable"):
        await limiter.take("k", rate=1.0, burst=1, now=1.0)
    async with serving(sock):
        assert (await limiter.take("k", rate=1.0, burst=1, now=1.0)).allowed
    # The server went away with the connection open: the next call fails, never hangs.
    with pytest.raises(StateUnavailableError):
        await limiter.take("k", rate=1.0, burst=1, now=2.0)
    async with serving(sock):
        assert (await limiter.take("k", rate=1.0, burst=1, now=3.0)).allowed
    await link.aclose()


@pytest.mark.asyncio
async def test_broadcasts_reach_every_other_worker_and_resync_after_a_loss(sock: Path) -> None:
    got: dict[int, list[tuple[str, Any]]] = {0: [], 1: [], 2: []}

    def handler(worker: int) -> Callable[[str, Any], Any]:
        async def handle(topic: str, payload: Any) -> None:
            got[worker].append((topic, payload))

        return handle

    async with serving(sock):
        links = [WorkerLink(str(sock), worker=i) for i in range(3)]
        for i, link in enumerate(links):
            link.on_event(handler(i))
            await link.subscribe()
        await links[0].publish("policy", {"hash": "abc"})
        for _ in range(100):
            if got[1] and got[2]:
                break
            await asyncio.sleep(0.01)
        assert got == {0: [], 1: [("policy", {"hash": "abc"})], 2: [("policy", {"hash": "abc"})]}
    # The server restarts: subscribers reconnect by themselves and are told to resync.
    async with serving(sock):
        for _ in range(300):
            if all((RESYNC, None) in got[i] for i in range(3)):
                break
            await asyncio.sleep(0.01)
        assert all((RESYNC, None) in got[i] for i in range(3))
    for link in links:
        await link.aclose()


@pytest.mark.parametrize(
    "body",
    [
        b"not json",
        b"{}",
        b'[0, {"~d": ["os", "system", {}]}]',  # only security.inspection dataclasses
        b'[0, {"~d": ["security.inspection.state", "MemoryState", {}]}]',  # not a dataclass
        b'[0, {"~a": ["__import__(\'os\')", [1], ""]}]',  # a literal, never an expression
    ],
)
def test_frames_that_do_not_decode_are_refused(body: bytes) -> None:
    with pytest.raises(FrameError):
        decode(body)


def test_structured_arrays_and_bytes_cross_intact() -> None:
    # Like the detector's records: fixed-size fields, one of them a sub-array.
    kind = np.dtype([("ts", "<u4"), ("off", "u1"), ("proj", "i1", (16,))])
    records = np.zeros(3, dtype=kind)
    records["ts"] = [7, 8, 9]
    records["proj"][1] = np.arange(16, dtype=np.int8)
    (message,) = [decode(body) for body in split(bytearray(encode((0, records, b"\x00"))))]
    _, seen, raw = message
    assert seen.dtype == kind
    assert seen.tobytes() == records.tobytes()
    assert raw == b"\x00"


def test_oversized_frames_are_refused() -> None:
    with pytest.raises(FrameError, match="frame of"):
        split(bytearray(b"\xff\xff\xff\xff" + b"x" * 8))
    frame = encode((0, 1, "limiter", "take", ("k",), {"rate": 1.5}))
    buffer = bytearray(frame + frame[:3])
    assert [decode(body) for body in split(buffer)] == [
        (0, 1, "limiter", "take", ("k",), {"rate": 1.5})
    ]
    assert buffer == frame[:3]  # the partial frame waits for the rest


def test_a_worker_without_its_state_server_refuses_with_503(
    make_settings: Callable[..., Settings], mint: Callable[..., str], sock: Path
) -> None:
    """Fail closed: no shared rate limit, no request (as when Redis is away)."""
    app = create_app(make_settings(), workers=WorkerLink(str(sock), worker=0, timeout_s=0.3))
    with TestClient(app) as client:
        response = client.post(
            "/v1/rank",
            json={"user_id": "u1", "item_ids": ["i1", "i2"]},
            headers={"Authorization": f"Bearer {mint()}"},
        )
    assert response.status_code == 503
    assert response.json()["type"].endswith("inspection-unavailable")


def test_with_the_shared_table_a_rank_by_ids_needs_no_state_server(
    make_settings: Callable[..., Settings], mint: Callable[..., str], sock: Path
) -> None:
    """Limits, budgets and the cool-down are in the table: no state server is up, yet
    /v1/rank (feature values from the store) is served, and its tokens are spent in the
    table every worker reads."""
    from security.inspection.shared_table import SharedTable
    from security.inspection.table_state import TableAdmission, TableRateLimiter

    table = SharedTable.create(slots=1024)
    try:
        link = WorkerLink(str(sock), worker=0, timeout_s=0.3, table=table)
        app = create_app(make_settings(), workers=link)
        with TestClient(app) as client:
            components = app.state.components
            assert isinstance(components.inspection.admission, TableAdmission)
            assert isinstance(components.inspection.limiter, TableRateLimiter)
            response = client.post(
                "/v1/rank",
                json={"user_id": "u1", "item_ids": ["i1", "i2"]},
                headers={"Authorization": f"Bearer {mint()}"},
            )
        assert response.status_code == 200, response.text
        with table:
            # The client's bucket, the subject's, its budgets: each a record in the table.
            assert table.occupied() >= 2
    finally:
        table.close()


def test_with_redis_the_workers_share_it_directly(
    make_settings: Callable[..., Settings], sock: Path
) -> None:
    """Several boxes: Redis holds the state, the supervisor hosts none of it, and the
    workers keep their Redis clients (they still link up for control-plane events)."""
    from gateway.components import open_components
    from gateway.workers.state_server import hosted_objects
    from security.inspection.ratelimit import RedisRateLimiter

    settings = make_settings(inspection={"redis_url": "redis://127.0.0.1:6379/15"})
    assert hosted_objects(settings) == {}
    hosted = hosted_objects(make_settings())
    assert set(hosted) == {"limiter", "budgets", "state", "admission"}
    # The hosted admission runs over the very objects hosted beside it.
    admission = hosted["admission"]
    assert isinstance(admission, Admission)
    assert admission.limiter is hosted["limiter"]
    assert admission.state is hosted["state"]
    components = open_components(settings, workers=WorkerLink(str(sock), worker=1))
    try:
        assert isinstance(components.inspection.limiter, RedisRateLimiter)
        admission = components.inspection.admission
        assert (
            isinstance(admission, Admission)
        )
        assert (
            admission.limiter is components.inspection.limiter
        )
        assert components.workers is not None
    finally:
        asyncio.run(components.aclose())
