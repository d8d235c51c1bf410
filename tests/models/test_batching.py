"""Micro-batching: concurrent runs share one session.run, each gets exactly its own rows."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator

import numpy as np
import pytest
from fastapi.testclient import TestClient

from gateway.app import create_app
from gateway.errors import InvalidRequest
from models.demo import model_bytes
from models.ranker import Ranker
from tests.models.conftest import Box

Feeds = dict[str, np.ndarray]


def feeds(rng: np.random.Generator, rows: int) -> Feeds:
    return {
        "user_id": rng.integers(0, 3000, rows).astype(np.int64),
        "item_id": rng.integers(0, 1500, rows).astype(np.int64),
        "user_features": rng.random((rows, 20), dtype=np.float32),
        "item_features": rng.random((rows, 20), dtype=np.float32),
    }


class Runs:
    """The rows of every session.run, as the ranker's inference observer reports them."""

    def __init__(self) -> None:
        self.rows: list[int] = []

    def __call__(self, _seconds: float, rows: int) -> None:
        self.rows.append(rows)


@pytest.fixture
def runs() -> Runs:
    return Runs()


def ranker(
    runs: Runs, *, wait_s: float = 0.005, max_rows: int = 1024, inline: bool = False
) -> Iterator[Ranker]:
    r = Ranker(
        name="demo-ranker",
        version="1",
        model_bytes=model_bytes(),
        observe=runs,
        batching=(wait_s, max_rows),
        inline=inline,
    )
    try:
        yield r
    finally:
        r.close()


@pytest.fixture
def batched(runs: Runs) -> Iterator[Ranker]:
    yield from ranker(runs)


@pytest.fixture
def plain() -> Iterator[Ranker]:
    r = Ranker(name="demo-ranker", version="1", model_bytes=model_bytes())
    yield r
    r.close()


@pytest.mark.parametrize("inline", [False, True], ids=["executor", "inline"])
def test_concurrent_runs_share_one_call_and_get_exactly_their_rows(
    runs: Runs, plain: Ranker, inline: bool
) -> None:
    rng = np.random.default_rng(1)
    requests = [feeds(rng, n) for n in (1, 100, 7, 100, 33, 2)]
    for batched in ranker(runs, inline=inline):

        async def all_at_once(b: Ranker = batched) -> list[dict[str, np.ndarray]]:
            return await asyncio.gather(*(b.run(f) for f in requests))

        answers = asyncio.run(all_at_once())
    assert runs.rows == [sum(len(f["user_id"]) for f in requests)]  # one session.run
    for request, answer in zip(requests, answers, strict=True):
        alone = plain.run_sync(request)["score"]
        assert answer["score"].shape == alone.shape
        assert np.array_equal(answer["score"], alone)  # bit for bit, not merely close


def test_a_bad_request_fails_alone(batched: Ranker, plain: Ranker, runs: Runs) -> None:
    rng = np.random.default_rng(2)
    good = [feeds(rng, 10) for _ in range(3)]
    bad = feeds(rng, 10)
    bad["item_id"][4] = 10**9  # out of the embedding table: onnxruntime refuses the batch

    async def together() -> list[object]:
        return await asyncio.gather(
            batched.run(good[0]),
            batched.run(bad),
            batched.run(good[1]),
            batched.run(good[2]),
            return_exceptions=True,
        )

    first, refused, *rest = asyncio.run(together())
    assert isinstance(refused, InvalidRequest)
    for request, answer in zip([good[0], *good[1:]], [first, *rest], strict=True):
        assert isinstance(answer, dict)
        assert np.array_equal(answer["score"], plain.run_sync(request)["score"])
    # The batch of 40 failed (not observed), then each ran alone: three answered.
    assert runs.rows == [10, 10, 10]


def test_inputs_that_cannot_be_stacked_run_in_their_own_batch(
    batched: Ranker, plain: Ranker, runs: Runs
) -> None:
    rng = np.random.default_rng(3)
    normal = feeds(rng, 5)
    other = feeds(rng, 5)
    other["user_features"] = other["user_features"].astype(np.float64)  # another dtype

    async def together() -> list[object]:
        return await asyncio.gather(batched.run(normal), batched.run(other), return_exceptions=True)

    answer, refused = asyncio.run(together())
    assert isinstance(answer, dict)
    assert np.array_equal(answer["score"], plain.run_sync(normal)["score"])
    assert isinstance(refused, InvalidRequest)  # the model takes float32 only


def test_wait_is_bounded(runs: Runs) -> None:
    for slow in ranker(runs, wait_s=0.05):
        started = time.perf_counter()
        asyncio.run(slow.run(feeds(np.random.default_rng(4), 3)))
        elapsed = time.perf_counter() - started
    # A lone run waits for company, but no longer than the bound (plus the run itself).
    assert 0.045 <= elapsed < 0.5


def test_a_full_batch_goes_at_once(runs: Runs) -> None:
    rng = np.random.default_rng(5)
    for patient in ranker(runs, wait_s=30.0, max_rows=20):

        async def two(p: Ranker = patient) -> None:
            await asyncio.wait_for(asyncio.gather(p.run(feeds(rng, 10)), p.run(feeds(rng, 10))), 5)

        started = time.perf_counter()
        asyncio.run(two())
    assert time.perf_counter() - started < 5
    assert runs.rows == [20]


def test_a_run_over_max_rows_runs_alone_and_others_keep_batching(runs: Runs) -> None:
    rng = np.random.default_rng(6)
    for small in ranker(runs, wait_s=0.005, max_rows=50):

        async def mixed(s: Ranker = small) -> None:
            sizes = (60, 20, 20)
            await asyncio.gather(*(s.run(feeds(rng, n)) for n in sizes))

        asyncio.run(mixed())
    assert sorted(runs.rows) == [40, 60]


def test_a_cancelled_run_does_not_disturb_the_others(batched: Ranker, plain: Ranker) -> None:
    rng = np.random.default_rng(7)
    kept, dropped = feeds(rng, 8), feeds(rng, 8)

    async def scenario() -> dict[str, np.ndarray]:
        gone = asyncio.ensure_future(batched.run(dropped))
        stays = asyncio.ensure_future(batched.run(kept))
        await asyncio.sleep(0)
        gone.cancel()
        return await asyncio.wait_for(stays, 5)

    answer = asyncio.run(scenario())
    assert np.array_equal(answer["score"], plain.run_sync(kept)["score"])


def test_zero_wait_batches_only_what_arrives_while_the_model_is_busy(plain: Ranker) -> None:
    rng = np.random.default_rng(8)
    first, later = feeds(rng, 1000), [feeds(rng, n) for n in (3, 30, 300)]
    runs = Runs()
    busy = Ranker(
        name="demo-ranker",
        version="1",
        model_bytes=model_bytes(),
        observe=runs,
        batching=(0.0, 4096),
        inference_threads=1,
    )

    async def scenario() -> list[dict[str, np.ndarray]]:
        head = asyncio.ensure_future(busy.run(first))
        for _ in range(3):
            await asyncio.sleep(0)  # the first run's batch is out, the model busy with it
        rest = await asyncio.gather(*(busy.run(f) for f in later))
        await head
        return rest

    try:
        started = time.perf_counter()
        answers = asyncio.run(scenario())
        elapsed = time.perf_counter() - started
        # Alone, a run does not wait for company at all.
        alone_started = time.perf_counter()
        asyncio.run(busy.run(later[0]))
        alone = time.perf_counter() - alone_started
    finally:
        busy.close()
    assert runs.rows == [1000, 333, 3]  # the three that came while it was busy: one call
    for request, answer in zip(later, answers, strict=True):
        assert np.array_equal(answer["score"], plain.run_sync(request)["score"])
    assert elapsed < 5
    assert alone < 0.5


def test_the_gateway_answers_the_same_with_batching_and_inline_runs(box: Box) -> None:
    rank = {"user_id": "u7", "item_ids": ["i1", "i7", "i19", "i250", "i3"]}
    answers = []
    batched = {"batching": {"enabled": True, "max_wait_ms": 0.5}, "inference_mode": "inline"}
    for model in ({}, batched):
        with TestClient(create_app(box.settings(model=model))) as client:
            response = client.post("/v1/rank", json=rank, headers=box.headers("demo"))
            assert response.status_code == 200, response.text
            answers.append(response.json()["items"])
    assert answers[0] == answers[1]
