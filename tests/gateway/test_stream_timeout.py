"""The request timeout covers the work up to the status line; a streamed body (an audit
export) then has `limits.stream_timeout_s` to arrive."""

from __future__ import annotations

import asyncio

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route
from starlette.testclient import TestClient

from gateway.metrics import Metrics
from gateway.transport import TransportMiddleware


async def _slow_stream(_request: Request) -> Response:
    async def chunks() -> object:
        for n in range(4):
            await asyncio.sleep(0.15)  # 0.6 s in all: longer than the request timeout
            yield b"chunk %d\n" % n

    return StreamingResponse(chunks(), media_type="text/plain")  # type: ignore[arg-type]


async def _slow_work(_request: Request) -> Response:
    await asyncio.sleep(0.6)
    return Response(b"late")


def _client(stream_timeout_s: float) -> TestClient:
    app = Starlette(routes=[Route("/stream", _slow_stream), Route("/work", _slow_work)])
    wrapped = TransportMiddleware(
        app,
        metrics=Metrics(),
        max_body_bytes=1024,
        timeout_s=0.3,
        stream_timeout_s=stream_timeout_s,
    )
    return TestClient(wrapped)  # type: ignore[arg-type]


def test_a_streamed_body_may_take_longer_than_the_request_timeout() -> None:
    response = _client(stream_timeout_s=5.0).get("/stream")
    assert response.status_code == 200
    assert response.text == "".join(f"chunk {n}\n" for n in range(4))


def test_the_work_before_the_status_line_is_still_bounded() -> None:
    response = _client(stream_timeout_s=5.0).get("/work")
    assert response.status_code == 503
    assert response.json()["type"] == "urn:gateway:problem:timeout"


def test_the_stream_itself_is_bounded_too() -> None:
    response = _client(stream_timeout_s=0.2).get("/stream")
    assert response.status_code == 200  # the status line went out before the cut
    assert response.text != "".join(f"chunk {n}\n" for n in range(4))
