"""The remote ranker backend against PyTriton (Triton + a Python model, dynamic batching)
serving the same demo ONNX model on loopback.

PyTriton runs from its own virtual environment (it needs numpy < 2): PYTRITON_PYTHON or
.venv-pytriton/bin/python (bench/servers.py says how to make it). Without it, every test
here is skipped, and the reason says so.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import pytest
from fastapi.testclient import TestClient

from bench.servers import free_port, pytriton_python, pytriton_server_command, wait_ready
from gateway.app import create_app
from gateway.errors import ModelNotReady
from gateway.settings import Settings
from models.remote import RemoteBackend, RemoteOptions
from tests.models.conftest import Box
from tests.models.test_batching import feeds
from tests.models.test_remote import local

pytestmark = pytest.mark.skipif(
    pytriton_python() is None,
    reason="PyTriton not installed: no PYTRITON_PYTHON and no .venv-pytriton "
    "(pip install nvidia-pytriton==0.7.0 onnxruntime there; see bench/servers.py)",
)

SLOW_ITEM = 1499  # PyTriton answers batches with this item ("i1499") after SLOW_S
SLOW_S = 2.0
RANK = {"user_id": "u7", "item_ids": ["i1", "i7", "i19", "i250", "i3", "i1000"]}


def _ports() -> tuple[int, int, int]:
    # Triton wants all three; free_port() each: a neighbour of one may be taken.
    return free_port(), free_port(), free_port()


@dataclass
class PyTriton:
    port: int
    grpc_port: int
    metrics_port: int
    proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        extra = [
            "--grpc-port", str(self.grpc_port),
            "--metrics-port", str(self.metrics_port),
            "--slow-item-id", str(SLOW_ITEM),
            "--slow-s", str(SLOW_S),
        ]  # fmt: skip
        command, env, ready = pytriton_server_command(self.port, extra=extra)
        # Its own process group: PyTriton, tritonserver and the model's stub process.
        self.proc = subprocess.Popen(
            command,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        wait_ready(ready, timeout=120)

    def _signal(self, signal_number: int) -> None:
        if self.proc is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal_number)
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=30)
        self.proc = None
        # Until nothing answers on the port any more (a new start would not bind it).
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            with socket.socket() as probe:
                if probe.connect_ex(("127.0.0.1", self.port)) != 0:
                    return
            time.sleep(0.1)

    def kill(self) -> None:
        """SIGKILL, every process of it: no goodbye to the open connections."""
        self._signal(signal.SIGKILL)

    def stop(self) -> None:
        self._signal(signal.SIGTERM)


@pytest.fixture(scope="module")
def triton() -> Iterator[PyTriton]:
    server = PyTriton(*_ports())
    server.start()
    yield server
    server.stop()


def remote_settings(box: Box, url: str, **remote: object) -> Settings:
    return box.settings(
        model={
            "backend": "remote",
            "remote": {
                "url": url,
                "unit_axis": True,  # a batching Triton model: ids and scores as [N, 1]
                "breaker_failures": 2,
                "breaker_cooldown_s": 1.0,
                **remote,
            },
        }
    )


def test_pytriton_gives_the_local_scores_through_every_gateway_stage(
    box: Box, triton: PyTriton
) -> None:
    with TestClient(create_app(box.settings())) as client:
        here = client.post("/v1/rank", json=RANK, headers=box.headers("demo"))
    with TestClient(create_app(remote_settings(box, triton.url))) as client:
        there = client.post("/v1/rank", json=RANK, headers=box.headers("demo"))
        audit = client.app.state.components.audit  # type: ignore[attr-defined]
        assert audit is not None
    assert here.status_code == there.status_code == 200, there.text
    assert there.json()["items"] == here.json()["items"]


def test_concurrent_calls_are_batched_by_triton_and_each_gets_its_rows(triton: PyTriton) -> None:
    rng = np.random.default_rng(11)
    requests = [feeds(rng, n) for n in (1, 100, 17, 64, 5, 100, 3, 40)]
    remote = RemoteBackend(RemoteOptions(url=triton.url, unit_axis=True, max_connections=8))

    async def together() -> list[dict[str, np.ndarray]]:
        try:
            return await asyncio.gather(
                *(remote.infer("demo-ranker", "1", r, ["score"]) for r in requests)
            )
        finally:
            await remote.aclose()

    for request, answer in zip(requests, asyncio.run(together()), strict=True):
        np.testing.assert_allclose(answer["score"], local(request), rtol=1e-6, atol=1e-7)


def test_a_slow_triton_times_out_and_is_not_retried(triton: PyTriton) -> None:
    request = feeds(np.random.default_rng(12), 4)
    request["item_id"][0] = SLOW_ITEM
    remote = RemoteBackend(
        RemoteOptions(url=triton.url, unit_axis=True, attempt_timeout_s=0.3, retries=3)
    )

    async def call() -> None:
        try:
            await remote.infer("demo-ranker", "1", request, ["score"])
        finally:
            await remote.aclose()

    started = time.perf_counter()
    with pytest.raises(ModelNotReady, match="in time"):
        asyncio.run(call())
    assert time.perf_counter() - started < SLOW_S
    time.sleep(SLOW_S)  # let Triton finish that batch before the next test


def test_triton_killed_mid_test_opens_the_breaker_and_recovers(box: Box) -> None:
    server = PyTriton(*_ports())
    server.start()
    try:
        with TestClient(create_app(remote_settings(box, server.url, retries=1))) as client:
            headers = box.headers("demo")
            assert client.post("/v1/rank", json=RANK, headers=headers).status_code == 200
            # A request in flight when the server dies is answered 503, not hung, not 500.
            slow = {**RANK, "item_ids": [*RANK["item_ids"], f"i{SLOW_ITEM}"]}
            in_flight: list[int] = []
            caller = threading.Thread(
                target=lambda: in_flight.append(
                    client.post("/v1/rank", json=slow, headers=headers).status_code
                )
            )
            caller.start()
            time.sleep(0.5)
            server.kill()
            caller.join(timeout=30)
            assert in_flight == [503]
            refused = client.post("/v1/rank", json=RANK, headers=headers)
            assert refused.status_code == 503
            assert refused.json()["type"] == "urn:gateway:problem:model-not-ready"
            # Two failures in a row: open. Refused fast, and readiness says why.
            ready = client.get("/readyz")
            assert ready.status_code == 503
            assert ready.json()["checks"]["not_ready"] == {"model": "remote: CircuitOpen"}
            started = time.perf_counter()
            assert client.post("/v1/rank", json=RANK, headers=headers).status_code == 503
            assert time.perf_counter() - started < 0.5
            # Back on the same port; after the cool-down the probe closes the breaker.
            server.start()
            time.sleep(1.0)
            assert client.get("/readyz").status_code == 200  # half-open: traffic may come
            recovered = client.post("/v1/rank", json=RANK, headers=headers)
            assert recovered.status_code == 200, recovered.text
            assert client.app.state.components.serving.remote.breaker.state == "closed"  # type: ignore[attr-defined]
    finally:
        server.stop()
