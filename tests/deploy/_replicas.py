"""Several gateway replicas behind a real load balancer (nginx), on loopback.

Each replica is a real `gateway serve` process with a data directory of its own, copied
from one initialised directory: the boxes of a deployment, given the same configuration,
keys and policy bundle. They share one PostgreSQL (audit log, consent store, outcome
events: fresh schemas per run) and one Redis (rate limits, budgets, detector state: a
key prefix per run), as DESIGN.md's "many boxes" topology says. nginx comes from
Debian's `nginx` package (scripts/test.sh installs it where it can); without it the
tests skip, loudly.
"""

from __future__ import annotations

import contextlib
import inspect
import io
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import psycopg
import redis
import yaml
from psycopg import sql

from bench.servers import gateway_env
from policies.bundle import rehash
from policies.signing import sign_bundle

NGINX = shutil.which("nginx") or shutil.which("nginx", path="/usr/sbin:/sbin")
NO_NGINX = (
    "nginx not found (Debian: apt-get install nginx): replicas behind a load balancer "
    "NOT TESTED"
)
PG_DSN = os.environ.get("AUDIT_TEST_POSTGRES_DSN", "postgresql://postgres@127.0.0.1:5432/test")
REDIS_URL = "redis://127.0.0.1:6379/0"
TEMPLATE = Path(__file__).with_name("nginx.conf.template")
START_TIMEOUT_S = 90.0
ITEMS = range(1, 21)  # 20 candidates per request, all in the demo catalogue


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def unreachable_stores() -> str | None:
    """Why the shared PostgreSQL or Redis cannot be used here, or None."""
    try:
        psycopg.connect(PG_DSN, connect_timeout=3).close()
    except psycopg.OperationalError as exc:
        return f"PostgreSQL at {PG_DSN} unreachable ({exc})"
    client = redis.Redis.from_url(REDIS_URL, socket_connect_timeout=1)
    try:
        client.ping()
    except redis.RedisError as exc:
        return f"Redis at {REDIS_URL} unreachable ({exc})"
    finally:
        client.close()
    return None


@dataclass(frozen=True)
class SharedStores:
    """This run's share of the shared servers: its own schemas and Redis key prefix."""

    tag: str = field(default_factory=lambda: uuid.uuid4().hex[:12])

    @property
    def schemas(self) -> tuple[str, str, str]:
        return (
            f"replicas_audit_{self.tag}",
            f"replicas_consent_{self.tag}",
            f"replicas_events_{self.tag}",
        )

    @property
    def redis_prefix(self) -> str:
        return f"replicas-{self.tag}:"

    def env(self) -> dict[str, str]:
        audit, consent, events = self.schemas
        return {
            "GATEWAY_AUDIT__POSTGRES_DSN": PG_DSN,
            "GATEWAY_AUDIT__POSTGRES_SCHEMA": audit,
            "GATEWAY_PRIVACY__CONSENT_POSTGRES_DSN": PG_DSN,
            "GATEWAY_PRIVACY__CONSENT_POSTGRES_SCHEMA": consent,
            "GATEWAY_EXPERIMENTS__POSTGRES_DSN": PG_DSN,
            "GATEWAY_EXPERIMENTS__POSTGRES_SCHEMA": events,
            "GATEWAY_INSPECTION__REDIS_URL": REDIS_URL,
            "GATEWAY_INSPECTION__REDIS_PREFIX": self.redis_prefix,
        }

    def drop(self) -> None:
        with psycopg.connect(PG_DSN, autocommit=True, connect_timeout=3) as conn:
            # A killed replica's sessions end when the server notices; never wait forever.
            conn.execute("SET lock_timeout = '10s'")
            for schema in self.schemas:
                conn.execute(
                    sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(schema))
                )
        client = redis.Redis.from_url(REDIS_URL, socket_connect_timeout=1)
        try:
            keys = list(client.scan_iter(match=self.redis_prefix + "*"))
            if keys:
                client.delete(*keys)
        finally:
            client.close()


def set_client_limits(data_dir: Path, rps: float, burst: int, max_queries: int) -> None:
    """Give the data dir's bundle these per-client limits, then rehash and re-sign it."""
    bundle = data_dir / "policy"
    data_file = bundle / "data.yaml"
    data: dict[str, Any] = yaml.safe_load(data_file.read_text())
    data["rate_limits"] = {**data.get("rate_limits", {}), "per_client_rps": rps, "burst": burst}
    data["query_budgets"] = {"default": {"window_seconds": 3600, "max_queries": max_queries}}
    data_file.write_text(yaml.safe_dump(data, sort_keys=False))
    (bundle / "bundle.sig").unlink(missing_ok=True)
    rehash(bundle)
    sign_bundle(bundle, (data_dir / "keys" / "policy-signing.key").read_text().strip())


def _serve_command(data_dir: Path, port: int) -> list[str]:
    command = [sys.executable, "-m", "gateway.cli", "serve", "--data-dir", str(data_dir)]
    command += ["--port", str(port)]
    # One process per replica where `serve` can run several: the replicas are the scale
    # here, and the machine running the suite is small.
    from gateway.cli import root

    if "workers" in inspect.signature(root.serve).parameters:
        command += ["--workers", "1"]
    return command


class Replica:
    """One `gateway serve` process group: a box that can be stopped, or killed outright."""

    def __init__(self, name: str, data_dir: Path, env: dict[str, str]) -> None:
        self.name = name
        self.data_dir = data_dir
        self.env = env
        self.port = free_port()
        self.log_path = data_dir / "serve.log"
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> None:
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                _serve_command(self.data_dir, self.port),
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # its own process group: killed as one box
            )

    def wait_ready(self, deadline: float) -> None:
        assert self.proc is not None
        with httpx.Client(base_url=self.url, timeout=2) as client:
            while time.monotonic() < deadline:
                if self.proc.poll() is not None:
                    raise AssertionError(f"replica {self.name} exited:\n{self.log_tail()}")
                with contextlib.suppress(httpx.HTTPError):
                    if client.get("/readyz").status_code == 200:
                        return
                time.sleep(0.2)
        raise AssertionError(f"replica {self.name} not ready in time:\n{self.log_tail()}")

    def kill(self) -> None:
        """SIGKILL to the whole process group: no shutdown hook, no final flush."""
        assert self.proc is not None
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=10)

    def stop(self) -> None:
        """SIGTERM (graceful: the final checkpoint), SIGKILL if it does not end."""
        if self.proc is None or self.proc.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.kill()

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"


class Balancer:
    """nginx in the foreground, round-robin over the replicas, from the config template."""

    def __init__(self, workdir: Path, replicas: list[Replica]) -> None:
        assert NGINX is not None
        self.workdir = workdir
        self.port = free_port()
        self.replicas = replicas
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def config(self) -> str:
        upstreams = "".join(
            f"        server {r.address} max_fails=1 fail_timeout=30s;\n" for r in self.replicas
        )
        text = TEMPLATE.read_text()
        for name, value in {
            "@@USER@@": "user root root;" if os.geteuid() == 0 else "",
            "@@DIR@@": str(self.workdir),
            "@@PORT@@": str(self.port),
            "@@UPSTREAMS@@": upstreams.rstrip("\n"),
        }.items():
            text = text.replace(name, value)
        return text

    def start(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        conf = self.workdir / "nginx.conf"
        conf.write_text(self.config())
        base = [str(NGINX), "-p", str(self.workdir), "-c", str(conf), "-e", "stderr"]
        check = subprocess.run([*base, "-t", "-q"], capture_output=True, text=True, check=False)
        assert check.returncode == 0, f"nginx refused its config:\n{check.stderr}"
        with (self.workdir / "stderr.log").open("ab") as log:
            self.proc = subprocess.Popen(base, stderr=log, start_new_session=True)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            with socket.socket() as probe:
                if probe.connect_ex(("127.0.0.1", self.port)) == 0:
                    return
            if self.proc.poll() is not None:
                break
            time.sleep(0.05)
        raise AssertionError(f"nginx did not listen: {(self.workdir / 'stderr.log').read_text()}")

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGQUIT)  # graceful shutdown of master and workers
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=10)


@dataclass(frozen=True)
class Answer:
    """One request through the balancer: who answered what, and when."""

    client_id: str  # our own X-Request-Id, echoed as X-Client-Request-Id
    request_id: str | None  # the gateway's id (None: no gateway answered)
    status: int  # 0: no HTTP answer at all
    upstream: str | None  # the replica nginx used (its last try)
    started: float
    ended: float

    @property
    def acknowledged(self) -> bool:
        """A gateway answered (allowed or refused): its audit record must exist."""
        return self.request_id is not None and self.status != 0

    @classmethod
    def of(cls, response: httpx.Response, upstream: str) -> Answer:
        """A request sent to one replica directly."""
        now = time.monotonic()
        own = response.request.headers.get("x-request-id", "")
        gateway_id = response.headers.get("x-request-id")
        return cls(own, gateway_id, response.status_code, upstream, now, now)


def get_token(base_url: str, client_id: str, secret: str) -> str:
    response = httpx.post(
        f"{base_url}/oauth/token",
        data={"grant_type": "client_credentials"},
        auth=(client_id, secret),
        timeout=10,
    )
    assert response.status_code == 200, response.text
    token: str = response.json()["access_token"]
    return token


def rank(client: httpx.Client, token: str, n: int, tag: str) -> Answer:
    own_id = f"{tag}-{n}"
    started = time.monotonic()
    try:
        response = client.post(
            "/v1/rank",
            json={"user_id": f"u{n % 50 + 1}", "item_ids": [f"i{n % 30 + k}" for k in ITEMS]},
            headers={"Authorization": f"Bearer {token}", "X-Request-Id": own_id},
        )
    except httpx.HTTPError:
        return Answer(own_id, None, 0, None, started, time.monotonic())
    return Answer(
        own_id,
        response.headers.get("x-request-id"),
        response.status_code,
        response.headers.get("x-upstream"),
        started,
        time.monotonic(),
    )


class Load:
    """Closed-loop rank requests through one URL from `threads` threads, until stopped."""

    def __init__(self, base_url: str, token: str, tag: str, *, threads: int) -> None:
        self._base_url = base_url
        self._token = token
        self._tag = tag
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._next = 0
        self.answers: list[Answer] = []
        self._threads = [threading.Thread(target=self._run, daemon=True) for _ in range(threads)]

    def _take(self) -> int:
        with self._lock:
            self._next += 1
            return self._next

    def _run(self) -> None:
        with httpx.Client(base_url=self._base_url, timeout=15) as client:
            while not self._stop.is_set():
                answer = rank(client, self._token, self._take(), self._tag)
                with self._lock:
                    self.answers.append(answer)

    def __enter__(self) -> Load:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(30)


def gateway_cli(
    *args: str, data_dir: Path | None = None, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """`gateway ARGS [--data-dir DATA_DIR]` as an operator runs it on one of the boxes;
    without `env`, none of the GATEWAY_ settings (an auditor's machine)."""
    command = [sys.executable, "-m", "gateway.cli", *args]
    if data_dir is not None:
        command += ["--data-dir", str(data_dir)]
    return subprocess.run(
        command,
        env=env if env is not None else gateway_env(),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def bundle_records(path: Path) -> list[dict[str, Any]]:
    """The records an export bundle opens (records.jsonl), parsed."""
    with zipfile.ZipFile(path) as archive:
        text = archive.read("records.jsonl").decode()
    records = []
    for line in io.StringIO(text):
        row = json.loads(line)
        if "record" in row:
            records.append(json.loads(row["record"]))
    return records


@contextlib.contextmanager
def deployment(
    source: Path, workdir: Path, stores: SharedStores, count: int
) -> Iterator[tuple[Balancer, list[Replica]]]:
    """`count` replicas (data dirs copied from `source`) and nginx in front; all stopped
    (and the run's schemas and keys dropped) however the block ends."""
    # The balancer's X-Forwarded-For is believed (token-endpoint limits per client address).
    env = gateway_env(**stores.env(), GATEWAY_LIMITS__TRUSTED_PROXIES='["127.0.0.1"]')
    replicas = []
    for n in range(count):
        name = "abcdefgh"[n]
        data_dir = Path(shutil.copytree(source, workdir / f"replica-{name}"))
        replicas.append(Replica(name, data_dir, env))
    balancer = Balancer(workdir / "nginx", replicas)
    try:
        for replica in replicas:
            replica.start()
        deadline = time.monotonic() + START_TIMEOUT_S
        for replica in replicas:
            replica.wait_ready(deadline)
        balancer.start()
        yield balancer, replicas
    finally:
        balancer.stop()
        for replica in replicas:
            replica.stop()
        try:
            stores.drop()
        except (psycopg.Error, redis.RedisError) as exc:  # never hide the test's own failure
            print(f"WARNING: {stores.tag}: schemas or keys not dropped: {exc}", file=sys.stderr)
