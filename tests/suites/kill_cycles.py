"""kill -9 cycles under load: a real `gateway serve` on its own data directory, clients
sending /v1/rank with a token, SIGKILL mid-load, restart, again. Afterwards every 2xx a
client received has its record (looked up by the X-Request-Id it got), carrying the
status the client got; no request id has two records; `gateway audit verify` passes on
the log as the last kill left it; and the restarted gateway serves again."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field

import httpx

from tests.suites.ledger import Ledger, verify_with_cli
from tests.suites.servers import DataDir, GatewayProcess, HealthProbe, mint

# Checkpoints every 0.2 s, so kills also land between a checkpoint's append and its signing.
CHECKPOINT_ENV = {"GATEWAY_AUDIT__CHECKPOINT_INTERVAL_S": "0.2"}


@dataclass
class KillRun:
    cycles: int
    acknowledged: list[str] = field(default_factory=list)  # request ids of every 2xx
    answered: dict[str, int] = field(default_factory=dict)  # request id -> status received
    server_errors: int = 0  # 5xx other than the fail-closed 503 below
    # 503s: with `--workers`, the supervisor hosts the shared state; killed, its workers
    # refuse (inspection-unavailable, fail closed) in the moment before they follow it.
    unavailable: list[str] = field(default_factory=list)
    unavailable_without_record: list[str] = field(default_factory=list)
    recover_s: list[float] = field(default_factory=list)  # restart after a kill -> ready
    verify_rc: int = -1
    verify_output: str = ""
    serves_after_restart: bool = False
    without_record: list[str] = field(default_factory=list)
    duplicates: list[str] = field(default_factory=list)
    status_mismatches: list[str] = field(default_factory=list)
    health_worst_ms: float = float("nan")
    health_p99_ms: float = float("nan")

    def failures(self) -> list[str]:
        found = []
        if len(self.acknowledged) < 20 * self.cycles:
            found.append(f"the load barely ran ({len(self.acknowledged)} 2xx)")
        if self.without_record:
            found.append(f"{len(self.without_record)} 2xx without a record")
        if self.duplicates:
            found.append(f"{len(self.duplicates)} request ids with several records")
        if self.status_mismatches:
            found.append(f"{len(self.status_mismatches)} records with another status")
        if self.server_errors:
            found.append(f"{self.server_errors} responses 5xx")
        if self.unavailable_without_record:
            found.append(f"{len(self.unavailable_without_record)} 503s without a record")
        if self.verify_rc != 0:
            found.append(f"audit verify exit {self.verify_rc}: {self.verify_output.strip()}")
        if not self.serves_after_restart:
            found.append("the gateway did not serve after the last restart")
        return found


class _Load:
    """Client threads posting /v1/rank until the server stops answering."""

    def __init__(self, url: str, token: str, workers: int, run: KillRun) -> None:
        self._url = url
        self._headers = {"Authorization": f"Bearer {token}"}
        self._run = run
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._work, args=(w,)) for w in range(workers)]

    def _work(self, worker: int) -> None:
        with httpx.Client(base_url=self._url, timeout=10) as client:
            n = 0
            while not self._stop.is_set():
                n += 1
                body = {
                    "user_id": f"u{(worker * 997 + n) % 3000 + 1}",
                    "item_ids": ["i1", "i2", "i3"],
                }
                try:
                    response = client.post("/v1/rank", json=body, headers=self._headers)
                except httpx.TransportError:
                    return  # killed: whatever was in flight got no answer
                request_id = response.headers.get("x-request-id")
                with self._lock:
                    if request_id is not None:
                        self._run.answered[request_id] = response.status_code
                    if 200 <= response.status_code < 300 and request_id is not None:
                        self._run.acknowledged.append(request_id)
                    if response.status_code == 503 and request_id is not None:
                        self._run.unavailable.append(request_id)
                    elif response.status_code >= 500:
                        self._run.server_errors += 1

    def __enter__(self) -> _Load:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=30)


def run_kill_cycles(data_dir: DataDir, *, cycles: int, load_s: float, workers: int = 6) -> KillRun:
    run = KillRun(cycles)
    gateway = GatewayProcess(data_dir, env=dict(CHECKPOINT_ENV))
    # The token stays valid across restarts: same issuer key, same issuer URL (port).
    token = mint(gateway.settings())
    try:
        with HealthProbe(gateway.url) as probe:
            for cycle in range(cycles):
                ready_s = gateway.start()
                if cycle:
                    run.recover_s.append(ready_s)
                with _Load(gateway.url, token, workers, run):
                    time.sleep(load_s)
                    gateway.kill9()
            # The log exactly as the last kill left it, checked the way an operator would.
            verified = verify_with_cli(data_dir.path)
            run.verify_rc, run.verify_output = (
                verified.returncode,
                verified.stderr + verified.stdout,
            )
            run.recover_s.append(gateway.start())
            with httpx.Client(base_url=gateway.url, timeout=10) as client:
                response = client.post(
                    "/v1/rank",
                    json={"user_id": "u1", "item_ids": ["i1"]},
                    headers={"Authorization": f"Bearer {token}"},
                )
            run.serves_after_restart = response.status_code == 200
            if "x-request-id" in response.headers:
                run.acknowledged.append(response.headers["x-request-id"])
                run.answered[response.headers["x-request-id"]] = response.status_code
            gateway.stop()
    finally:
        gateway.kill9()
    run.health_worst_ms, run.health_p99_ms = probe.worst_ms, probe.p99_ms
    ledger = Ledger.read(data_dir.audit_db)
    run.without_record = ledger.without_record(run.acknowledged)
    run.unavailable_without_record = ledger.without_record(run.unavailable)
    run.duplicates = ledger.duplicates()
    run.status_mismatches = ledger.status_mismatches(run.answered)
    return run
