"""Readiness tells the truth: /readyz and the OIP ready endpoint answer 503 naming the
dependency that is down, and 200 again once it is back; liveness stays 200."""

from __future__ import annotations

import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from gateway.app import create_app
from gateway.settings import Settings


def _dependencies(client: TestClient) -> tuple[int, dict[str, str]]:
    response = client.get("/readyz")
    return response.status_code, response.json()["checks"]["dependencies"]


def test_every_dependency_is_probed_and_ready(make_settings: Callable[..., Settings]) -> None:
    with TestClient(create_app(make_settings())) as client:
        status, dependencies = _dependencies(client)
        assert status == 200
        assert dependencies == {
            "audit_store": "ok",
            "consent_store": "ok",
            "inspection_state": "ok",
        }


def test_a_lost_audit_store_makes_the_gateway_not_ready(
    make_settings: Callable[..., Settings], tmp_path: Path
) -> None:
    settings = make_settings(audit={"sqlite_path": str(tmp_path / "audit.db")})
    with TestClient(create_app(settings)) as client:
        client.app.state.components.audit.store.close()  # type: ignore[attr-defined]
        status, dependencies = _dependencies(client)
        assert status == 503
        assert dependencies["audit_store"].startswith("down")
        assert client.get("/v2/health/ready").status_code == 503
        assert client.get("/healthz").status_code == 200


def test_a_lost_consent_store_makes_the_gateway_not_ready(
    make_settings: Callable[..., Settings], tmp_path: Path
) -> None:
    settings = make_settings(privacy={"consent_sqlite_path": str(tmp_path / "consent.db")})
    with TestClient(create_app(settings)) as client:
        client.app.state.components.privacy.consent.close()  # type: ignore[attr-defined]
        status, dependencies = _dependencies(client)
        assert (status, dependencies["consent_store"][:4]) == (503, "down")
        assert client.get("/healthz").status_code == 200


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class OwnRedis:
    """A redis-server of the test's own, on a free loopback port, that it can stop."""

    def __init__(self, binary: str, directory: Path) -> None:
        self.port = _free_port()
        self._args = [binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", ""]
        self._args += ["--appendonly", "no", "--dir", str(directory)]
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        self._process = subprocess.Popen(self._args, stdout=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            with socket.socket() as probe:
                if probe.connect_ex(("127.0.0.1", self.port)) == 0:
                    return
            time.sleep(0.05)
        raise RuntimeError("redis-server did not start")

    def stop(self) -> None:
        if self._process is not None:
            self._process.terminate()
            self._process.wait(10)
            self._process = None


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[OwnRedis]:
    binary = shutil.which("redis-server")
    if binary is None:
        print("WARNING: redis-server not installed: Redis readiness NOT TESTED", file=sys.stderr)
        pytest.skip("redis-server not installed (Debian package redis-server)")
    server = OwnRedis(binary, tmp_path)
    server.start()
    yield server
    server.stop()


def test_shared_state_outage_and_recovery_show_in_readiness(
    make_settings: Callable[..., Settings], own_redis: OwnRedis
) -> None:
    inspection: dict[str, Any] = {"redis_url": own_redis.url, "redis_prefix": "ready-test:"}
    with TestClient(create_app(make_settings(inspection=inspection))) as client:
        assert _dependencies(client) == (200, _all_ok())
        own_redis.stop()
        status, dependencies = _dependencies(client)
        assert status == 503
        assert dependencies["inspection_state"] != "ok"
        assert client.get("/healthz").status_code == 200
        own_redis.start()  # the same port: the client reconnects by itself
        deadline = time.monotonic() + 5
        while _dependencies(client)[0] != 200 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert _dependencies(client) == (200, _all_ok())


def _all_ok() -> dict[str, str]:
    return {"audit_store": "ok", "consent_store": "ok", "inspection_state": "ok"}
