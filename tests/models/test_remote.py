"""The remote ranker backend: timeouts, bounded retries, the circuit breaker, the gateway.

The remote here is a real OIP v2 REST server on loopback (stdlib `http.server`, the real
demo model on onnxruntime, the binary tensor extension and JSON), scripted to answer 503,
400, garbage or slowly on demand: what Triton and KServe do when overloaded or broken,
made repeatable. tests/models/test_remote_pytriton.py runs the same backend against
PyTriton itself.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import socket
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import pytest
from fastapi.testclient import TestClient

from gateway.app import create_app
from gateway.errors import ConfigurationError, InvalidRequest, ModelNotReady
from models.demo import model_bytes
from models.ort import session_from_bytes
from models.remote import CircuitBreaker, RemoteBackend, RemoteOptions
from tests.models.conftest import Box
from tests.models.test_batching import feeds

_DTYPES = {"INT64": np.int64, "FP32": np.float32, "FP64": np.float64, "INT32": np.int32}
_PATH = re.compile(r"^/v2/models/([^/]+)(?:/versions/([^/]+))?/infer$")


class OipServer:
    """A loopback OIP v2 inference server for the demo model; `script` says how each
    next request is answered ("ok", "503", "400", "garbage", "slow"), then "ok"."""

    def __init__(self) -> None:
        self.session = session_from_bytes(model_bytes())
        self.script: list[str] = []
        self.seen: list[str] = []  # the paths of the requests, in order
        self.slow_s = 1.0
        self.lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"  # keep-alive: the backend pools connections

            def log_message(self, *_args: object) -> None:
                return None

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                with server.lock:
                    server.seen.append(self.path)
                    step = server.script.pop(0) if server.script else "ok"
                if step == "slow":
                    time.sleep(server.slow_s)
                if step in ("503", "400"):
                    self._send(int(step), b'{"error": "scripted"}', {})
                elif step == "garbage":
                    self._send(200, b"not json", {})
                elif _PATH.match(self.path) is None:
                    self._send(404, b'{"error": "no such model"}', {})
                else:
                    self._send(200, *server.answer(body, self.headers))

            def _send(self, status: int, payload: bytes, headers: dict[str, str]) -> None:
                self.send_response(status)
                self.send_header("Content-Length", str(len(payload)))
                for name, value in headers.items():
                    self.send_header(name, value)
                self.end_headers()
                self.wfile.write(payload)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.port = self.httpd.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def answer(self, body: bytes, headers: object) -> tuple[bytes, dict[str, str]]:
        length = getattr(headers, "get")("Inference-Header-Content-Length")  # noqa: B009
        size = int(length) if length is not None else len(body)
        request = json.loads(body[:size])
        offset, inputs = size, {}
        for entry in request["inputs"]:
            dtype = _DTYPES[entry["datatype"]]
            raw = (entry.get("parameters") or {}).get("binary_data_size")
            if raw is not None:
                array = np.frombuffer(body[offset : offset + raw], dtype=dtype)
                offset += raw
            else:
                array = np.asarray(entry["data"], dtype=dtype)
            inputs[entry["name"]] = array.reshape(entry["shape"])
        (score,) = self.session.run(["score"], inputs)
        out: dict[str, object] = {"name": "score", "datatype": "FP32", "shape": list(score.shape)}
        if length is None:
            document = {"outputs": [{**out, "data": score.tolist()}]}
            return json.dumps(document).encode(), {"Content-Type": "application/json"}
        raw_out = score.astype(np.float32).tobytes()
        out["parameters"] = {"binary_data_size": len(raw_out)}
        header = json.dumps({"outputs": [out]}).encode()
        return header + raw_out, {"Inference-Header-Content-Length": str(len(header))}

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def server() -> Iterator[OipServer]:
    s = OipServer()
    yield s
    s.stop()


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port  # nothing listens there any more: connections are refused


def backend(url: str, **options: object) -> RemoteBackend:
    settings = {"retries": 2, "backoff_ms": 1.0, "breaker_failures": 3, **options}
    return RemoteBackend(RemoteOptions(url=url, **settings))  # type: ignore[arg-type]


def infer(remote: RemoteBackend, request: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    async def call() -> dict[str, np.ndarray]:
        try:
            return await remote.infer("demo-ranker", "1", request, ["score"])
        finally:
            await remote.aclose()

    return asyncio.run(call())


def local(request: dict[str, np.ndarray]) -> np.ndarray:
    (score,) = session_from_bytes(model_bytes()).run(["score"], request)
    return np.asarray(score)


@pytest.mark.parametrize("binary", [True, False], ids=["binary", "json"])
def test_success_gives_the_local_scores(server: OipServer, binary: bool) -> None:
    request = feeds(np.random.default_rng(1), 100)
    answer = infer(backend(server.url, binary=binary), request)
    assert np.array_equal(answer["score"], local(request))
    assert server.seen == ["/v2/models/demo-ranker/versions/1/infer"]


def test_a_503_is_retried_with_backoff_then_answered(server: OipServer) -> None:
    server.script = ["503", "503"]
    request = feeds(np.random.default_rng(2), 10)
    answer = infer(backend(server.url), request)
    assert np.array_equal(answer["score"], local(request))
    assert len(server.seen) == 3


def test_retries_are_bounded(server: OipServer) -> None:
    server.script = ["503"] * 10
    remote = backend(server.url, retries=2)
    with pytest.raises(ModelNotReady):
        infer(remote, feeds(np.random.default_rng(3), 4))
    assert len(server.seen) == 3  # the first attempt and two retries, no more


def test_a_refused_connection_is_retried_then_fails_fast() -> None:
    remote = backend(f"http://127.0.0.1:{closed_port()}", retries=3)
    started = time.perf_counter()
    with pytest.raises(ModelNotReady) as refused:
        infer(remote, feeds(np.random.default_rng(4), 4))
    assert time.perf_counter() - started < 2
    assert "ConnectError" in (refused.value.log_cause or "")
    assert "4 attempts" in (refused.value.log_cause or "")


def test_a_slow_server_times_out_and_is_not_retried(server: OipServer) -> None:
    server.script = ["slow"]
    server.slow_s = 1.5
    remote = backend(server.url, attempt_timeout_s=0.2, retries=3)
    started = time.perf_counter()
    with pytest.raises(ModelNotReady, match="in time"):
        infer(remote, feeds(np.random.default_rng(5), 4))
    assert time.perf_counter() - started < 1.0
    assert len(server.seen) == 1  # a read timeout is not repeated onto a busy server


def test_retries_stay_inside_the_deadline(server: OipServer) -> None:
    server.script = ["503"] * 50
    remote = backend(server.url, retries=10, backoff_ms=200.0, deadline_s=0.3)
    started = time.perf_counter()
    with pytest.raises(ModelNotReady):
        infer(remote, feeds(np.random.default_rng(6), 4))
    assert time.perf_counter() - started < 0.6


def test_a_400_is_the_requests_fault_and_keeps_the_breaker_closed(server: OipServer) -> None:
    server.script = ["400"] * 5
    remote = backend(server.url, breaker_failures=2)
    for _ in range(3):
        with pytest.raises(InvalidRequest):
            infer(remote, feeds(np.random.default_rng(7), 4))
    assert remote.breaker.state == "closed"
    assert len(server.seen) == 3  # not retried either


def test_a_garbled_answer_is_a_failure_not_a_result(server: OipServer) -> None:
    server.script = ["garbage"]
    with pytest.raises(ModelNotReady):
        infer(backend(server.url), feeds(np.random.default_rng(8), 4))


def test_breaker_opens_refuses_fast_then_probes_and_closes(server: OipServer) -> None:
    clock = Clock()
    remote = RemoteBackend(
        RemoteOptions(
            url=server.url, retries=0, breaker_failures=3, breaker_cooldown_s=5.0
        ),
        clock=clock,
    )
    request = feeds(np.random.default_rng(9), 4)
    server.script = ["503"] * 3
    for _ in range(3):
        with pytest.raises(ModelNotReady):
            infer(remote, request)
    assert remote.breaker.state == "open"
    # Open: refused without a request to the server.
    with pytest.raises(ModelNotReady) as refused:
        infer(remote, request)
    assert refused.value.log_cause == "remote ranker circuit open"
    assert len(server.seen) == 3
    # After the cool-down one probe goes through; it fails: open again, for a new cool-down.
    clock.now += 5.0
    assert remote.breaker.state == "half-open"
    server.script = ["503"]
    with pytest.raises(ModelNotReady):
        infer(remote, request)
    assert remote.breaker.state == "open"
    assert len(server.seen) == 4
    # The next probe succeeds: closed, and answers flow again.
    clock.now += 5.0
    assert np.array_equal(infer(remote, request)["score"], local(request))
    assert remote.breaker.state == "closed"


def test_half_open_lets_one_probe_through_at_a_time() -> None:
    clock = Clock()
    breaker = CircuitBreaker(failures=1, cooldown_s=1.0, clock=clock)
    breaker.failure()
    assert not breaker.allow()
    clock.now += 1.0
    assert breaker.allow()  # the probe
    assert not breaker.allow()  # others wait for its verdict
    breaker.abandon()  # the probe's request was cancelled: no verdict, another may probe
    assert breaker.allow()
    breaker.success()
    assert breaker.state == "closed"
    assert breaker.allow()


# -- the gateway with `model.backend = "remote"` --------------------------------------


def remote_settings(box: Box, url: str, **remote: object) -> object:
    return box.settings(
        model={
            "backend": "remote",
            "remote": {"url": url, "breaker_failures": 2, "breaker_cooldown_s": 0.5, **remote},
        }
    )


RANK = {"user_id": "u7", "item_ids": ["i1", "i7", "i19", "i250"]}


def test_gateway_ranks_remotely_with_the_same_answer(box: Box, server: OipServer) -> None:
    with TestClient(create_app(box.settings())) as client:
        here = client.post("/v1/rank", json=RANK, headers=box.headers("demo"))
    with TestClient(create_app(remote_settings(box, server.url))) as client:  # type: ignore[arg-type]
        there = client.post("/v1/rank", json=RANK, headers=box.headers("demo"))
        meta = client.get("/v2/models/demo-ranker", headers=box.headers("demo")).json()
    assert there.status_code == 200, there.text
    assert there.json()["items"] == here.json()["items"]
    assert meta["parameters"]["execution_providers"] == "remote-oip"
    assert server.seen == ["/v2/models/demo-ranker/versions/1/infer"]


def test_gateway_with_the_remote_down_answers_503_fast_and_is_not_ready(
    box: Box, caplog: pytest.LogCaptureFixture
) -> None:
    settings = remote_settings(
        box, f"http://127.0.0.1:{closed_port()}", retries=1, breaker_cooldown_s=3.0
    )
    with TestClient(create_app(settings)) as client:  # type: ignore[arg-type]
        assert client.get("/readyz").status_code == 200  # nothing failed yet
        for _ in range(2):
            refused = client.post("/v1/rank", json=RANK, headers=box.headers("demo"))
            assert refused.status_code == 503
            assert refused.headers["content-type"] == "application/problem+json"
            assert refused.json()["type"] == "urn:gateway:problem:model-not-ready"
        opened = time.monotonic()
        ready = client.get("/readyz")
        assert ready.status_code == 503
        assert ready.json()["checks"]["not_ready"] == {"model": "remote: CircuitOpen"}
        assert "gateway_model_remote_circuit_open 1.0" in client.get("/metrics").text
        caplog.clear()
        with caplog.at_level(logging.ERROR, logger="gateway.errors"):
            fast = client.post("/v1/rank", json=RANK, headers=box.headers("demo"))
        assert fast.status_code == 503
        # Refused by the open breaker, without trying the server.
        assert "remote ranker circuit open" in caplog.text
        assert "ConnectError" not in caplog.text
        # After the cool-down, half-open lets traffic (the probe) in again.
        time.sleep(max(0.0, opened + 3.1 - time.monotonic()))
        assert client.get("/readyz").status_code == 200


def test_remote_settings_are_checked(box: Box) -> None:
    with pytest.raises(ConfigurationError, match=r"remote\.url"):
        box.settings(model={"backend": "remote"})
    with pytest.raises(ConfigurationError, match=r"remote\.url"):
        box.settings(model={"backend": "remote", "remote": {"url": "ftp://x/"}})
    with pytest.raises(ConfigurationError, match="deadline_s"):
        create_app(remote_settings(box, "http://127.0.0.1:9", deadline_s=60.0))  # type: ignore[arg-type]
