"""`inference_mode = "auto"`: the model runs on the event loop while its request is the
loop's only one, on the inference threads otherwise; the load it asks is the pipeline's."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable

import numpy as np
import pytest
from fastapi.testclient import TestClient

from gateway.app import create_app
from gateway.pipeline import LoopLoad, Pipeline, RequestContext
from models.demo import model_bytes
from models.ranker import ALONE_MAX_ROWS, Ranker
from tests.models.conftest import Box

FEEDS: dict[str, np.ndarray] = {
    "user_id": np.array([1, 2], dtype=np.int64),
    "item_id": np.array([3, 4], dtype=np.int64),
    "user_features": np.zeros((2, 20), dtype=np.float32),
    "item_features": np.ones((2, 20), dtype=np.float32),
}


class Threads:
    """Which thread ran each session.run (the ranker's inference observer runs there)."""

    def __init__(self) -> None:
        self.names: list[str] = []

    def __call__(self, _seconds: float, _rows: int) -> None:
        self.names.append(threading.current_thread().name)


def run_with(alone: Callable[[], bool] | None) -> list[str]:
    threads = Threads()
    ranker = Ranker(
        name="demo-ranker", version="1", model_bytes=model_bytes(), observe=threads, alone=alone
    )
    try:
        first = asyncio.run(ranker.run(FEEDS))
        assert np.array_equal(first["score"], ranker.run_sync(FEEDS)["score"])
    finally:
        ranker.close()
    return threads.names[:1]


def test_a_lone_request_runs_on_the_loop_and_others_on_the_pool() -> None:
    loop_thread = threading.current_thread().name  # asyncio.run's loop runs here
    assert run_with(lambda: True) == [loop_thread]
    (pooled,) = run_with(lambda: False)
    assert pooled.startswith("ort-demo-ranker")
    (default,) = run_with(None)  # no load to ask: the pool, as "executor"
    assert default.startswith("ort-demo-ranker")


class Peek:
    """A stage that records the pipeline's load while it runs, then waits its turn."""

    name = "rank"

    def __init__(self, load: LoopLoad, release: asyncio.Event) -> None:
        self.load = load
        self.release = release
        self.seen: list[int] = []

    async def __call__(self, ctx: RequestContext) -> RequestContext:
        self.seen.append(self.load.running)
        await self.release.wait()
        if ctx.request_id == "bad":
            raise ValueError("a bug in a stage")
        return ctx


def test_the_load_counts_requests_inside_a_pipeline_and_drops_on_any_exit() -> None:
    async def scenario() -> tuple[list[int], int]:
        load = LoopLoad()
        release = asyncio.Event()
        peek = Peek(load, release)
        pipeline = Pipeline([peek], load=load)
        ctx = RequestContext(request_id="ok", action="rank", route="/v1/rank", headers={})
        first = asyncio.create_task(pipeline.run(ctx))
        await asyncio.sleep(0)
        assert load.alone()
        second = asyncio.create_task(pipeline.run(ctx.evolve(request_id="bad")))
        await asyncio.sleep(0)
        assert not load.alone()
        release.set()
        results = await asyncio.gather(first, second, return_exceptions=True)
        assert isinstance(results[1], Exception)  # refused as an internal error
        return peek.seen, load.running

    seen, after = asyncio.run(scenario())
    assert seen == [1, 2]
    assert after == 0


@pytest.mark.parametrize("mode", ["auto", "executor", "inline"])
def test_the_gateway_answers_the_same_in_every_mode(box: Box, mode: str) -> None:
    rank = {"user_id": "u7", "item_ids": ["i1", "i7", "i19", "i250", "i3"]}
    with TestClient(create_app(box.settings())) as client:
        response = client.post("/v1/rank", json=rank, headers=box.headers("demo"))
        assert response.status_code == 200, response.text
        expected = response.json()["items"]
    with TestClient(create_app(box.settings(model={"inference_mode": mode}))) as client:
        response = client.post("/v1/rank", json=rank, headers=box.headers("demo"))
        assert response.status_code == 200, response.text
        assert response.json()["items"] == expected


def _pool_threads() -> set[threading.Thread]:
    return {t for t in threading.enumerate() if t.name.startswith("ort-demo-ranker")}


@pytest.mark.parametrize(("mode", "pooled"), [("auto", False), ("executor", True)])
def test_the_served_model_of_a_lone_request_starts_no_inference_thread(
    box: Box, mode: str, pooled: bool
) -> None:
    """Through the app as wired: the pool starts its threads on its first run only."""
    rank = {"user_id": "u7", "item_ids": ["i1", "i7", "i19"]}
    with TestClient(create_app(box.settings(model={"inference_mode": mode}))) as client:
        before = _pool_threads()
        response = client.post("/v1/rank", json=rank, headers=box.headers("demo"))
        assert response.status_code == 200, response.text
        assert bool(_pool_threads() - before) is pooled


def test_a_lone_request_too_large_for_the_loop_goes_to_the_pool() -> None:
    big = {name: np.repeat(array, ALONE_MAX_ROWS, axis=0) for name, array in FEEDS.items()}
    threads = Threads()
    ranker = Ranker(
        name="demo-ranker",
        version="1",
        model_bytes=model_bytes(),
        observe=threads,
        alone=lambda: True,
    )
    try:
        asyncio.run(ranker.run(big))
    finally:
        ranker.close()
    assert threads.names[0].startswith("ort-demo-ranker")
