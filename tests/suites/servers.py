"""Real gateways for the suites: a data directory of their own (never the session's
shared one: these suites erase subjects, reload policy and kill processes), served by
the production server config in a thread, or by `gateway serve` as a child process
that can be killed with SIGKILL and measured through /proc."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import httpx

from bench.servers import lift_client_limits
from gateway.datadir import init_data_dir
from gateway.settings import Settings, load_settings
from security.issuer import EmbeddedIssuer, load_signing_key
from tests.security._servers import serve_gateway

READY_TIMEOUT_S = 60.0


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@dataclass(frozen=True)
class DataDir:
    """An initialised data directory (`gateway init`) owned by one suite."""

    path: Path
    config: Path

    @classmethod
    def create(cls, path: Path, *, lift_limits: bool = True) -> DataDir:
        report = init_data_dir(path)
        if lift_limits:
            # Load suites drive one client far past the default bundle's 50 requests/s and
            # 10,000 rows an hour; what they measure is the server, not the rate limiter.
            lift_client_limits(report.data_dir)
        return cls(report.data_dir, report.config)

    def settings(self, **overrides: Any) -> Settings:
        return load_settings(data_dir=self.path, config_file=self.config, **overrides)

    @property
    def audit_db(self) -> Path:
        return self.path / "audit" / "audit.db"


def issuer_of(settings: Settings) -> EmbeddedIssuer:
    return EmbeddedIssuer(
        settings.issuer,
        issuer_url=settings.issuer_url,
        signing_key=load_signing_key(settings.resolve(settings.issuer.signing_key_file)),
    )


def mint(settings: Settings, client_id: str = "demo", scopes: tuple[str, ...] | None = None) -> str:
    """A real token from the embedded issuer of `settings` (as the gateway's tests mint)."""
    issuer = issuer_of(settings)
    client = issuer.client(client_id)
    if client is None:
        raise LookupError(f"no client {client_id!r} in the issuer's configuration")
    token: str = issuer.mint(client, scopes)["access_token"]
    return token


@contextmanager
def threaded_gateway(settings: Settings) -> Iterator[str]:
    """The real app behind the production server config (gateway.server) on a free
    loopback port, in a thread; yields the base URL (tests.security._servers)."""
    with serve_gateway(settings, start_timeout_s=READY_TIMEOUT_S) as served:
        yield served.url


def wait_ready(url: str, proc: subprocess.Popen[bytes] | None = None) -> float:
    """Seconds until `url` answers 200 (the process must stay alive meanwhile)."""
    started = time.monotonic()
    with httpx.Client(timeout=1.0) as client:
        while time.monotonic() - started < READY_TIMEOUT_S:
            if proc is not None and proc.poll() is not None:
                raise RuntimeError(f"gateway exited with {proc.returncode} during start-up")
            try:
                if client.get(url).status_code == 200:
                    return time.monotonic() - started
            except httpx.TransportError:
                pass
            time.sleep(0.05)
    raise RuntimeError(f"{url} did not become ready in {READY_TIMEOUT_S:.0f} s")


@dataclass
class GatewayProcess:
    """`gateway serve` as a child process on its own data directory and port."""

    data_dir: DataDir
    port: int = field(default_factory=free_port)
    env: dict[str, str] = field(default_factory=dict)
    proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def pid(self) -> int:
        if self.proc is None:
            raise RuntimeError("the gateway is not running")
        return self.proc.pid

    def settings(self) -> Settings:
        """The settings the child runs with, as far as tokens go (its issuer URL)."""
        return self.data_dir.settings(port=self.port)

    def start(self) -> float:
        """Spawn and wait for /readyz; returns the seconds from spawn to ready."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("GATEWAY_")}
        env.update({"GATEWAY_LOG_LEVEL": "warning", **self.env})
        command = [
            sys.executable,
            "-m",
            "gateway.cli",
            "serve",
            "--data-dir",
            str(self.data_dir.path),
        ]
        command += ["--port", str(self.port)]
        log: IO[bytes]
        with (self.data_dir.path / "server.log").open("ab") as log:
            self.proc = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=log)
        try:
            return wait_ready(f"{self.url}/readyz", self.proc)
        except RuntimeError:
            self.kill9()
            raise

    def kill9(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
        if self.proc is not None:
            self.proc.wait(timeout=30)

    def stop(self) -> None:
        """SIGTERM and wait (a graceful shutdown); SIGKILL if it does not stop in 30 s."""
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.terminate()
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.kill9()
            raise RuntimeError("gateway did not stop on SIGTERM") from None

    def rss_bytes(self) -> int:
        """Resident set size of the server process (VmRSS in /proc/PID/status)."""
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
        raise RuntimeError("no VmRSS in /proc status")

    def open_fds(self) -> int:
        return len(os.listdir(f"/proc/{self.pid}/fd"))


class HealthProbe:
    """Polls GET /healthz from a thread for as long as a suite runs: the worst latency of
    an answered probe, and how many probes got no answer (a killed server answers none)."""

    def __init__(self, base_url: str, interval_s: float = 0.05) -> None:
        self._url = f"{base_url}/healthz"
        self._interval = interval_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self.latencies_s: list[float] = []
        self.unanswered = 0
        self.non_200 = 0

    def _run(self) -> None:
        with httpx.Client(timeout=5.0) as client:
            while not self._stop.is_set():
                started = time.perf_counter()
                try:
                    status = client.get(self._url).status_code
                except httpx.TransportError:
                    self.unanswered += 1
                else:
                    self.latencies_s.append(time.perf_counter() - started)
                    if status != 200:
                        self.non_200 += 1
                self._stop.wait(self._interval)

    def __enter__(self) -> HealthProbe:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=10)

    @property
    def worst_ms(self) -> float:
        return max(self.latencies_s, default=float("nan")) * 1000

    @property
    def p99_ms(self) -> float:
        if not self.latencies_s:
            return float("nan")
        ordered = sorted(self.latencies_s)
        return ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))] * 1000
