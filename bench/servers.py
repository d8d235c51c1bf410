"""What the benchmarks share: ports, real gateway processes, tokens and the load client."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def wait_ready(url: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=1):  # noqa: S310 - loopback only
                return
        except OSError:
            time.sleep(0.2)
    raise SystemExit(f"server at {url} did not become ready")


def fetch_token(port: int, secret: str) -> str:
    """A real token from the gateway's own /oauth/token, as a client would get one."""
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}/oauth/token",
        data=urllib.parse.urlencode(
            {"grant_type": "client_credentials", "client_id": "demo", "client_secret": secret}
        ).encode(),
        headers={"Content-Type": "application/x-www-form-urlencoded"},
    )
    with urllib.request.urlopen(request, timeout=10) as response:  # noqa: S310
        token: str = json.loads(response.read())["access_token"]
        return token


def load(port: int, path: str, body_file: Path, token: str, conc: int, duration: float) -> dict:
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "bench.loadgen",
            "--port",
            str(port),
            "--path",
            path,
            "--body-file",
            str(body_file),
            "--token",
            token,
            "--concurrency",
            str(conc),
            "--duration",
            str(duration),
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    result: dict = json.loads(out.stdout)
    return result


# The default bundle allows each client 50 requests/s and 10,000 rows an hour (issue 7's
# rate limit and query budget). A throughput benchmark drives one client far past both,
# so its data dir's bundle lifts those two limits; everything else stays as shipped.
RATE_LIMIT_EDIT = (
    "rate_limits: {per_client_rps: 50, burst: 100}",
    "rate_limits: {per_client_rps: 100000, burst: 1000000}",
)
BUDGET_EDIT = (
    "default: {window_seconds: 3600, max_queries: 10000}",
    "default: {window_seconds: 3600, max_queries: 1000000000}",
)


def edit_bundle(bundle: Path, signing_key_file: Path, edits: Sequence[tuple[str, str]]) -> None:
    """Rewrite a bundle's data.yaml in place, then rehash and re-sign it."""
    from policies.bundle import rehash
    from policies.signing import sign_bundle

    data = bundle / "data.yaml"
    text = data.read_text()
    for old, new in edits:
        if old not in text:
            raise SystemExit(f"bundle edit does not apply: {old}")
        text = text.replace(old, new, 1)
    data.write_text(text)
    (bundle / "bundle.sig").unlink(missing_ok=True)
    rehash(bundle)
    sign_bundle(bundle, signing_key_file.read_text().strip())


def lift_client_limits(data_dir: Path) -> None:
    """For load tests only: no per-client rate limit or query budget in the way."""
    key_file = data_dir / "keys" / "policy-signing.key"
    edit_bundle(data_dir / "policy", key_file, [RATE_LIMIT_EDIT, BUDGET_EDIT])


def gateway_env(**overrides: str) -> dict[str, str]:
    """The environment for a benchmarked gateway: none of the caller's GATEWAY_ settings."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("GATEWAY_")}
    env["GATEWAY_LOG_LEVEL"] = "warning"
    env.update(overrides)
    return env


def gateway_command(data_dir: Path, port: int) -> list[str]:
    return [
        sys.executable,
        "-m",
        "gateway.cli",
        "serve",
        "--data-dir",
        str(data_dir),
        "--port",
        str(port),
    ]


@contextmanager
def running(servers: Sequence[tuple[list[str], dict[str, str], str]]) -> Iterator[None]:
    """Start each (command, env, readiness URL); stop them all however the block ends."""
    procs = [subprocess.Popen(command, env=env) for command, env, _ in servers]
    try:
        for _, _, ready_url in servers:
            wait_ready(ready_url)
        yield
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            proc.wait(timeout=30)
