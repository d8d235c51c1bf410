"""The fault tests' own database servers: a PostgreSQL and a redis-server of their own, on
free loopback ports, that they may stop (SIGSTOP), resume, kill and restart.

The shared servers (127.0.0.1:5432 and :6379) are never touched. PostgreSQL refuses
to run as root: as root the server runs as the `postgres` user (its data directory
under /tmp, owned by that user); as anyone else, as that user. Whatever cannot be
provided raises `Unavailable` with the reason, for the caller to skip loudly.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import psycopg
import redis


class Unavailable(Exception):  # noqa: N818 - names what is missing
    """A server binary or the user to run it as is missing here."""


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def _children(pid: int) -> list[int]:
    """The processes whose parent is `pid` (from /proc)."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue  # exited while we looked
        if int(fields[1]) == pid:
            found.append(int(stat.parent.name))
    return found


def _alive(pid: int) -> bool:
    """Running, stopped or sleeping; not gone, and not a zombie nobody reaped yet."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return False
    return fields[0] not in ("Z", "X")


def _signal(pid: int, signum: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signum)


def _wait_port_free(port: int, timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        with socket.socket() as probe:
            if probe.connect_ex(("127.0.0.1", port)) != 0:
                return
        time.sleep(0.02)


class OwnPostgres:
    """A PostgreSQL server of our own: `freeze` stops the postmaster and every backend.

    PostgreSQL's children put themselves in process groups of their own, so stopping
    the postmaster's group would stop the postmaster only: each process is signalled.
    """

    def __init__(self) -> None:
        binaries = {
            name: shutil.which(name, path="/usr/local/bin:" + os.environ.get("PATH", ""))
            for name in ("initdb", "postgres")
        }
        missing = [name for name, found in binaries.items() if found is None]
        if missing:
            raise Unavailable(f"PostgreSQL server binaries not found: {', '.join(missing)}")
        self._initdb = str(binaries["initdb"])
        self._postgres = str(binaries["postgres"])
        self._user: str | None = None
        if os.geteuid() == 0:
            try:
                pwd.getpwnam("postgres")
            except KeyError as exc:
                raise Unavailable("running as root and there is no 'postgres' user") from exc
            self._user = "postgres"
        self.root = Path(tempfile.mkdtemp(prefix="gw-faults-pg-"))
        self.root.chmod(0o755)  # the server user must reach its data directory
        if self._user is not None:
            shutil.chown(self.root, self._user, self._user)
        self.data = self.root / "data"
        self.port = free_port()
        self._process: subprocess.Popen[bytes] | None = None
        self._run(
            [
                self._initdb,
                "-D",
                str(self.data),
                "-A",
                "trust",
                "-U",
                "postgres",
                "--no-sync",
                "-E",
                "UTF8",
            ]
        )

    def _run(self, command: list[str]) -> None:
        done = subprocess.run(
            command,
            user=self._user,
            group=self._user,
            cwd=self.root,
            capture_output=True,
            check=False,
        )
        if done.returncode != 0:
            raise Unavailable(f"{command[0]} failed: {done.stderr.decode(errors='replace')[-300:]}")

    @property
    def dsn(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    @property
    def pid(self) -> int:
        assert self._process is not None, "not running"
        return self._process.pid

    def start(self) -> None:
        log = (self.root / "server.log").open("ab")
        # Speed only (fsync, full_page_writes): these tests are about outages, not disks.
        config = {
            "listen_addresses": "127.0.0.1",
            "unix_socket_directories": str(self.root),
            "fsync": "off",
            "full_page_writes": "off",
            "max_connections": "100",
        }
        command = [self._postgres, "-D", str(self.data), "-p", str(self.port)]
        for name, value in config.items():
            command += ["-c", f"{name}={value}"]
        self._process = subprocess.Popen(
            command,
            user=self._user,
            group=self._user,
            cwd=self.root,
            start_new_session=True,
            stdout=subprocess.DEVNULL,
            stderr=log,
        )
        log.close()
        deadline = time.monotonic() + 30
        while True:
            try:
                psycopg.connect(self.dsn, connect_timeout=2).close()
                return
            except psycopg.OperationalError as exc:
                if self._process.poll() is not None or time.monotonic() > deadline:
                    raise Unavailable(f"postgres did not start: {exc}") from exc
                time.sleep(0.05)

    def freeze(self) -> None:
        """SIGSTOP the postmaster first (it forks no new backend), then every child."""
        _signal(self.pid, signal.SIGSTOP)
        for child in _children(self.pid):
            _signal(child, signal.SIGSTOP)

    def thaw(self) -> None:
        for child in _children(self.pid):
            _signal(child, signal.SIGCONT)
        _signal(self.pid, signal.SIGCONT)

    def stop(self) -> None:
        """Fast shutdown (SIGINT): clients are disconnected, the data stays."""
        if self._process is None:
            return
        self.thaw()  # a stopped server cannot shut down
        self._process.send_signal(signal.SIGINT)
        try:
            self._process.wait(30)
        except subprocess.TimeoutExpired:
            self.kill()
        self._process = None
        _wait_port_free(self.port)

    def kill(self) -> None:
        """SIGKILL the postmaster and every backend: a crash; the next start recovers."""
        if self._process is None:
            return
        children = _children(self.pid)
        _signal(self.pid, signal.SIGKILL)
        for child in children:
            _signal(child, signal.SIGKILL)
            _signal(child, signal.SIGCONT)
        self._process.wait(30)
        self._process = None
        deadline = time.monotonic() + 10
        while any(_alive(c) for c in children) and time.monotonic() < deadline:
            time.sleep(0.02)
        _wait_port_free(self.port)

    def restart(self) -> None:
        """Stop and start again on the same port and data directory (pg_ctl restart)."""
        self.stop()
        self.start()

    def close(self) -> None:
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            self.stop()
        shutil.rmtree(self.root, ignore_errors=True)


class OwnRedis:
    """A redis-server of our own, without persistence."""

    def __init__(self) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            raise Unavailable("redis-server not installed (Debian package redis-server)")
        self.root = Path(tempfile.mkdtemp(prefix="gw-faults-redis-"))
        self.port = free_port()
        self._args = [
            binary,
            "--port",
            str(self.port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            str(self.root),
        ]
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    @property
    def pid(self) -> int:
        assert self._process is not None, "not running"
        return self._process.pid

    def start(self) -> None:
        self._process = subprocess.Popen(
            self._args, stdout=subprocess.DEVNULL, start_new_session=True
        )
        deadline = time.monotonic() + 10
        while True:
            try:
                redis.Redis(port=self.port, socket_timeout=1).ping()
                return
            except redis.RedisError as exc:
                if self._process.poll() is not None or time.monotonic() > deadline:
                    raise Unavailable(f"redis-server did not start: {exc}") from exc
                time.sleep(0.02)

    def freeze(self) -> None:
        _signal(self.pid, signal.SIGSTOP)

    def thaw(self) -> None:
        _signal(self.pid, signal.SIGCONT)

    def kill(self) -> None:
        if self._process is None:
            return
        self._process.kill()
        self._process.wait(10)
        self._process = None
        _wait_port_free(self.port)

    def restart(self) -> None:
        self.kill()
        self.start()

    def close(self) -> None:
        if self._process is not None:
            self.thaw()
            self._process.terminate()
            with contextlib.suppress(subprocess.TimeoutExpired):
                self._process.wait(10)
            if self._process.poll() is None:
                self._process.kill()
            self._process = None
        shutil.rmtree(self.root, ignore_errors=True)
