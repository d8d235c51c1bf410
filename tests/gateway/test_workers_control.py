"""Changes made on one worker reach the others, and are recorded once (by the worker that
made them): two real apps on one data directory, linked by a real state server, as two
`serve --workers 2` processes are."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from gateway.app import create_app
from gateway.settings import Settings
from gateway.workers.channel import WorkerLink
from gateway.workers.state_server import StateServer, hosted_objects
from tests.models.conftest import Box, box, pristine  # noqa: F401 - fixtures

LOAD = "/v1/admin/models/demo-ranker/versions/{}/load"


class StateThread:
    """The supervisor's state server, on its own event loop in a thread."""

    def __init__(self, objects: dict[str, object], path: Path) -> None:
        self.loop = asyncio.new_event_loop()
        self.path = path
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self._thread.start()
        serving = StateServer(objects).serve(path)
        self._stop = asyncio.run_coroutine_threadsafe(serving, self.loop).result(10)

    def close(self) -> None:
        async def stop() -> None:
            await self._stop()

        asyncio.run_coroutine_threadsafe(stop(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(10)
        self.loop.close()


@dataclass
class Linked:
    settings: Settings
    state: StateThread

    def app(self, worker: int) -> FastAPI:
        return create_app(self.settings, workers=WorkerLink(str(self.state.path), worker=worker))


@pytest.fixture
def linked(box: Box, tmp_path: Path) -> Iterator[Linked]:  # noqa: F811
    settings = box.settings(policy={"watch_interval_s": 0})
    state = StateThread(hosted_objects(settings), tmp_path / "state.sock")
    try:
        yield Linked(settings, state)
    finally:
        state.close()


@pytest.fixture
def pair(linked: Linked) -> Iterator[tuple[TestClient, TestClient]]:
    with TestClient(linked.app(0)) as a, TestClient(linked.app(1)) as b:
        yield a, b


def records(client: TestClient, kind: str) -> list[dict[str, Any]]:
    store = client.app.state.components.audit.store  # type: ignore[attr-defined]
    found = [json.loads(store.leaf(i).payload) for i in range(store.size())]
    return [r for r in found if r.get("kind") == kind]


def until(check: Callable[[], bool], timeout_s: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(0.05)
    return check()


def readyz(client: TestClient) -> dict[str, Any]:
    checks: dict[str, Any] = client.get("/readyz").json()["checks"]
    return checks


def test_a_policy_reload_reaches_every_worker_recorded_once(
    box: Box,  # noqa: F811
    pair: tuple[TestClient, TestClient],
) -> None:
    a, b = pair
    before = readyz(b)["policy"]["hash"]
    box.edit_data_policy("decimals: 3", "decimals: 2")
    response = a.post("/v1/admin/policy/reload", headers=box.headers())
    assert response.status_code == 200, response.text
    after = readyz(a)["policy"]["hash"]
    assert after != before
    assert until(lambda: readyz(b)["policy"]["hash"] == after)
    reloads = records(a, "policy-reload")
    assert [(r["outcome"], r["policy_bundle"]) for r in reloads] == [("swapped", after)]


def test_a_model_activation_reaches_every_worker_recorded_once(
    box: Box,  # noqa: F811
    pair: tuple[TestClient, TestClient],
) -> None:
    a, b = pair
    box.pack("2")
    assert readyz(b)["model_version"] == "1"
    response = a.post(LOAD.format("2"), headers=box.headers())
    assert response.status_code == 200, response.text
    assert until(lambda: readyz(b)["model_version"] == "2")
    loads = records(b, "model-load")
    assert [(r["version"], r["activate"]) for r in loads] == [("2", True)]


def test_a_restarted_worker_takes_the_activation_in_force(
    box: Box,  # noqa: F811
    linked: Linked,
    pair: tuple[TestClient, TestClient],
) -> None:
    """A worker that starts after an operator activated another version serves that
    version too, not the configured one (and nothing is recorded again)."""
    a, _ = pair
    box.pack("2")
    assert a.post(LOAD.format("2"), headers=box.headers()).status_code == 200
    with TestClient(linked.app(2)) as restarted:
        assert until(lambda: readyz(restarted)["model_version"] == "2")
    assert len(records(a, "model-load")) == 1


def test_consent_written_on_one_worker_is_what_the_others_answer(
    box: Box,  # noqa: F811
    pair: tuple[TestClient, TestClient],
) -> None:
    a, b = pair
    headers = box.headers()
    url = "/v1/subjects/u7/consent"
    first = b.get(url, headers=headers)  # b caches u7's current consent (none)
    assert first.status_code == 200, first.text
    assert first.json()["consent"] == {}
    body = {"consents": [{"purpose": "personalization", "granted": False}]}
    assert a.put(url, json=body, headers=headers).status_code == 200

    def b_sees_it() -> bool:
        # The current consent (cached), not the history (read through each time).
        current = b.get(url, headers=headers).json()["consent"]
        return bool(current.get("personalization", {}).get("granted") is False)

    assert until(b_sees_it)
    assert len(records(a, "consent")) == 1


def test_an_erasure_on_one_worker_shreds_what_the_others_hold(
    box: Box,  # noqa: F811
    pair: tuple[TestClient, TestClient],
) -> None:
    a, b = pair
    components = b.app.state.components  # type: ignore[attr-defined]
    subjects = components.audit.subjects
    handle = subjects.handle(None, "u7")
    subjects.get_or_create(handle)  # b holds u7's audit key in memory
    features = components.serving.features
    assert features.known_user("u7")
    response = a.delete("/v1/subjects/u7", headers=box.headers())
    assert response.status_code == 200, response.text
    # b forgets the destroyed key and the erased feature row: no copy outlives erasure.
    assert until(lambda: subjects.cached(handle) is None and not features.known_user("u7"))
    assert len(records(a, "erasure")) == 1


def test_a_key_rotation_reaches_every_worker(
    box: Box,  # noqa: F811
    pair: tuple[TestClient, TestClient],
) -> None:
    """`gateway keys rotate` (one process, recorded once) changes the keyring's state file;
    each worker's keyring reads it again before its next use: new subject keys are
    wrapped by the new KEK in every worker, with no event needed."""
    from gateway.cli.keys import rotate

    a, b = pair
    report = rotate(box.settings())
    for n, client in enumerate((a, b)):
        audit = client.app.state.components.audit  # type: ignore[attr-defined]
        handle = audit.subjects.handle(None, f"after-rotation-{n}")
        audit.subjects.get_or_create(handle)
        stored = audit.store.subject_key(handle)
        assert stored is not None
        assert stored[0] == report.new_key
    assert len(records(a, "key-rotation")) == 2  # intent and done, once
