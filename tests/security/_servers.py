"""A real uvicorn server on 127.0.0.1 in a background thread, for tests that need real HTTP."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import uvicorn
from starlette.types import ASGIApp

from gateway.app import create_app
from gateway.server import server_config
from gateway.settings import Settings


@dataclass
class Served:
    url: str
    port: int
    server: uvicorn.Server
    thread: threading.Thread

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=30)
        assert not self.thread.is_alive(), "uvicorn did not stop"


@contextmanager
def serve(app: ASGIApp, *, scheme: str = "http", **options: Any) -> Iterator[Served]:
    """Serve `app` on a free port; the socket is bound first, so there is no port race.
    `options`: more uvicorn.Config arguments (a TLS test's protocol and context)."""
    with _serve(
        lambda port: uvicorn.Config(
            app,
            host="127.0.0.1",
            port=port,
            log_level="warning",
            ws="none",
            lifespan="on",
            **options,
        ),
        scheme=scheme,
    ) as served:
        yield served


@contextmanager
def serve_gateway(settings: Settings, *, start_timeout_s: float = 60.0) -> Iterator[Served]:
    """The real app behind the production server config (gateway.server: header bounds,
    connection limits, trusted proxies) on a free port. Leaving the block shuts the server
    down through its lifespan (refusal flush, final checkpoint)."""

    def config(port: int) -> uvicorn.Config:
        return server_config(settings.model_copy(update={"port": port}), create_app(settings))

    scheme = "https" if settings.tls.enabled else "http"
    with _serve(config, start_timeout_s=start_timeout_s, scheme=scheme) as served:
        yield served


@contextmanager
def _serve(
    config_for: Callable[[int], uvicorn.Config],
    *,
    start_timeout_s: float = 10.0,
    scheme: str = "http",
) -> Iterator[Served]:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(config_for(port))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    served = Served(f"{scheme}://127.0.0.1:{port}", port, server, thread)
    try:
        deadline = time.monotonic() + start_timeout_s
        while not server.started:
            assert thread.is_alive(), "uvicorn exited during start-up"
            assert time.monotonic() < deadline, "uvicorn did not start"
            time.sleep(0.01)
        yield served
    finally:
        if thread.is_alive():
            served.stop()
        sock.close()
