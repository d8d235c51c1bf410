"""kill -9 under load: the log still verifies and every 2xx response has its record."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx

from audit.checkpoint import NoteVerifier
from audit.keys import load_signer
from audit.sqlite_store import SqliteAuditStore
from audit.verify import verify_store
from gateway.datadir import init_data_dir


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def start(data_dir: Path, port: int) -> subprocess.Popen[bytes]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("GATEWAY_")}
    env["GATEWAY_AUDIT__CHECKPOINT_INTERVAL_S"] = "0.2"
    with (data_dir / "server.log").open("ab") as server_log:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "gateway.cli",
                "serve",
                "--data-dir",
                str(data_dir),
                "--port",
                str(port),
            ],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=server_log,
        )
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=1).status_code == 200:
                return proc
        except httpx.TransportError:
            time.sleep(0.1)
    proc.kill()
    raise AssertionError("gateway did not start")


def token(port: int, data_dir: Path) -> str:
    secret = (data_dir / "clients" / "demo.secret").read_text().strip()
    response = httpx.post(
        f"http://127.0.0.1:{port}/oauth/token",
        data={"grant_type": "client_credentials"},
        auth=("demo", secret),
        timeout=10,
    )
    response.raise_for_status()
    value: str = response.json()["access_token"]
    return value


def test_kill_9_under_load_loses_no_acknowledged_record(tmp_path: Path) -> None:
    report = init_data_dir(tmp_path / "data")
    port = free_port()
    server = start(report.data_dir, port)
    acknowledged: list[str] = []
    lock = threading.Lock()
    stop = threading.Event()
    bearer = {"Authorization": f"Bearer {token(port, report.data_dir)}"}

    def load(worker: int) -> None:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=5) as client:
            n = 0
            while not stop.is_set():
                n += 1
                try:
                    response = client.post(
                        "/v1/rank",
                        json={"user_id": f"u{worker}-{n}", "item_ids": ["i1", "i2"]},
                        headers=bearer,
                    )
                except httpx.TransportError:
                    return
                if response.status_code == 200:
                    with lock:
                        acknowledged.append(response.headers["x-request-id"])

    threads = [threading.Thread(target=load, args=(w,)) for w in range(12)]
    try:
        for thread in threads:
            thread.start()
        time.sleep(1.5)
        os.kill(server.pid, signal.SIGKILL)
        server.wait(timeout=10)
    finally:
        stop.set()
        for thread in threads:
            thread.join(timeout=10)
        if server.poll() is None:
            server.kill()
    assert len(acknowledged) > 50, "the load generator barely ran"

    store = SqliteAuditStore(report.data_dir / "audit" / "audit.db")
    verifier = NoteVerifier.from_verifier_key(
        load_signer(report.data_dir / "keys" / "audit-log.key").verifier_key()
    )
    try:
        verify_store(store, verifier)
        missing = [rid for rid in acknowledged if store.index_of(rid) is None]
        assert missing == []
    finally:
        store.close()

    restarted = start(report.data_dir, port)
    try:
        response = httpx.post(
            f"http://127.0.0.1:{port}/v1/rank",
            json={"user_id": "u1", "item_ids": ["i1"]},
            headers={"Authorization": f"Bearer {token(port, report.data_dir)}"},
            timeout=10,
        )
        assert response.status_code == 200
    finally:
        restarted.terminate()
        restarted.wait(timeout=30)
    store = SqliteAuditStore(report.data_dir / "audit" / "audit.db")
    try:
        assert verify_store(store, verifier).size > len(acknowledged)
    finally:
        store.close()
