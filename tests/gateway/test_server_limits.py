"""The HTTP server's bounds (gateway.server), against a real uvicorn on 127.0.0.1:
oversized or too many headers get 431, and X-Forwarded-For is not believed by default,
so rotating it buys no fresh token-endpoint rate limit."""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from gateway.app import create_app
from gateway.server import server_config
from gateway.settings import Settings
from tests.security._servers import serve_gateway


def _raw(address: str, request: bytes) -> bytes:
    host, port = address.split(":")
    with socket.create_connection((host, int(port)), timeout=10) as conn:
        conn.sendall(request)
        chunks = []
        while chunk := conn.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks)


@pytest.fixture(scope="module")
def address(settings: Settings) -> Iterator[str]:
    with serve_gateway(settings) as served:
        yield f"127.0.0.1:{served.port}"


def test_oversized_headers_get_431(address: str) -> None:
    request = b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 40_000 + b"\r\n\r\n"
    assert _raw(address, request).startswith(b"HTTP/1.1 431 ")


def test_a_header_dribbled_in_pieces_is_cut_off_at_the_bound(address: str) -> None:
    """What a slow client does: the server stops buffering at the bound, not at the end."""
    host, port = address.split(":")
    with socket.create_connection((host, int(port)), timeout=10) as conn:
        conn.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: ")
        answer = b""
        for _ in range(200):  # 200 x 1 KiB pieces: far past the 16 KiB bound
            try:
                conn.sendall(b"a" * 1024)
            except OSError:
                break  # the server closed the connection
            time.sleep(0.002)
        while chunk := conn.recv(65536):
            answer += chunk
    assert answer.startswith(b"HTTP/1.1 431 ")


def test_too_many_header_fields_get_431(address: str) -> None:
    fields = b"".join(b"X-H%d: v\r\n" % n for n in range(150))
    assert _raw(address, b"GET /healthz HTTP/1.1\r\nHost: x\r\n" + fields + b"\r\n").startswith(
        b"HTTP/1.1 431 "
    )


def test_ordinary_requests_pass(address: str) -> None:
    response = httpx.get(f"http://{address}/healthz", headers={"X-Small": "v"}, timeout=10)
    assert response.status_code == 200


def test_rotating_x_forwarded_for_buys_no_fresh_token_rate_limit(address: str) -> None:
    statuses: list[int] = []
    with httpx.Client(base_url=f"http://{address}", timeout=30) as client:
        for n in range(40):  # the default burst is 20 per source address
            response = client.post(
                "/oauth/token",
                data={"grant_type": "client_credentials"},
                auth=("demo", "wrong-secret"),
                headers={"X-Forwarded-For": f"198.51.100.{n}"},
            )
            statuses.append(response.status_code)
            if response.status_code == 429:
                break
    assert 429 in statuses, statuses


def test_trusted_proxies_are_configuration(settings: Settings) -> None:
    assert server_config(settings, create_app(settings)).proxy_headers is False
    limits = settings.limits.model_copy(update={"trusted_proxies": ("10.0.0.5",)})
    trusted: Any = settings.model_copy(update={"limits": limits})
    config = server_config(trusted, create_app(trusted))
    assert config.proxy_headers is True
    assert config.forwarded_allow_ips == ["10.0.0.5"]
