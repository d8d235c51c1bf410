"""Fault injection against a real gateway: steady traffic, liveness probes, one fault at a
time, and the audit check afterwards. Used by the short tests (tests/faults) and by the
long runs (bench/harden_faults.py), so both measure the same things the same way.

Per fault, what is measured (and what must hold):
- `/healthz` latency while the dependency is down, probed every 5 ms: at most one
  probe in a hundred (at least one) over 50 ms, and none over 400 ms, below the shortest
  time a call waiting on a dead dependency would hold the event loop (the store
  timeout, at least 0.5 s). The gateway shares this test process (and its GIL) with the
  traffic and the probes, so a single probe can be late for reasons of the test's own:
  with 20 ms probes a 1 s outage gave ~50 probes, its "p99" was its one worst probe,
  and CI failed once on 74 ms;
- `/readyz` during the outage: 503, naming the dependencies expected down, answered
  within its probe timeout (1 s) plus a margin;
- every request ends within the request timeout (plus a margin) with 2xx or 503,
  none hangs;
- recovery: from the dependency's return until `/readyz` is 200 and a rank request
  succeeds (personalised again: consent is read again) (under 2 s);
- the audit log verifies; every 2xx has exactly its record; no request id has two
  records; no record claims an outcome its client did not get unless an
  `unacknowledged` record says so.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import httpx

from audit.appender import KIND_UNACKNOWLEDGED
from audit.checkpoint import NoteVerifier
from audit.keys import load_signer
from audit.postgres_store import PostgresAuditStore
from audit.record import parse
from audit.sqlite_store import SqliteAuditStore
from audit.store import AuditStore
from audit.verify import LogDamaged, verify_store
from gateway.settings import Settings
from security.issuer import EmbeddedIssuer, load_signing_key
from tests.security._servers import serve_gateway

HEALTHZ_LATE_MS = 50.0
HEALTHZ_WORST_LIMIT_MS = 400.0  # under the shortest store timeout (0.5 s)
RECOVERY_LIMIT_S = 2.0
READYZ_LIMIT_S = 1.5  # the probe timeout (1 s) and a margin for the answer itself
# What a request may take beyond the request timeout: the 503 is written after it.
REQUEST_MARGIN_S = 1.0
CHECKPOINT_WAIT_S = 10.0


@contextmanager
def gateway(settings: Settings) -> Iterator[str]:
    """The real app behind the real (bounded) uvicorn on a free loopback port."""
    with serve_gateway(settings) as served:
        yield served.url


def mint_token(settings: Settings, client_id: str = "demo") -> str:
    issuer = EmbeddedIssuer(
        settings.issuer,
        issuer_url=settings.issuer_url,
        signing_key=load_signing_key(settings.resolve(settings.issuer.signing_key_file)),
    )
    client = issuer.client(client_id)
    assert client is not None
    token: str = issuer.mint(client, None)["access_token"]
    return token


@dataclass(frozen=True)
class Outcome:
    """One client request: its gateway request id, status (0: no answer), when, how long."""

    request_id: str | None
    status: int
    started: float
    seconds: float
    personalized: bool | None = None


def rank(client: httpx.Client, token: str, user: str, items: list[str]) -> Outcome:
    started = time.monotonic()
    try:
        response = client.post(
            "/v1/rank",
            json={"user_id": user, "item_ids": items},
            headers={"Authorization": f"Bearer {token}"},
        )
    except httpx.HTTPError:
        return Outcome(None, 0, started, time.monotonic() - started)
    personalized = None
    if response.status_code == 200:
        personalized = bool(response.json().get("personalized"))
    return Outcome(
        response.headers.get("x-request-id"),
        response.status_code,
        started,
        time.monotonic() - started,
        personalized,
    )


class Traffic:
    """Steady rank requests from `workers` threads (each: request, pause, repeat)."""

    def __init__(
        self,
        base_url: str,
        token: str,
        users: list[str],
        items: list[str],
        *,
        workers: int = 2,
        pause_s: float = 0.05,
        timeout_s: float = 30.0,
    ) -> None:
        self._base_url = base_url
        self._token = token
        self._users = users
        self._items = items
        self._pause = pause_s
        self._timeout = timeout_s
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self.outcomes: list[Outcome] = []
        self._threads = [
            threading.Thread(target=self._run, args=(n,), daemon=True) for n in range(workers)
        ]

    def _run(self, worker: int) -> None:
        with httpx.Client(base_url=self._base_url, timeout=self._timeout) as client:
            n = worker
            while not self._stop.is_set():
                user = self._users[n % len(self._users)]
                items = self._items[n % 7 : n % 7 + 20]
                outcome = rank(client, self._token, user, items)
                with self._lock:
                    self.outcomes.append(outcome)
                n += len(self._threads)
                self._stop.wait(self._pause)

    def __enter__(self) -> Traffic:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(self._timeout + 5)


class Prober:
    """GET /healthz every `interval_s` on a connection of its own: (time, seconds, status)."""

    def __init__(self, base_url: str, interval_s: float = 0.005) -> None:
        self._base_url = base_url
        self._interval = interval_s
        self._stop = threading.Event()
        self.samples: list[tuple[float, float, int]] = []
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        with httpx.Client(base_url=self._base_url, timeout=10) as client:
            while not self._stop.is_set():
                started = time.monotonic()
                try:
                    status = client.get("/healthz").status_code
                except httpx.HTTPError:
                    status = 0
                self.samples.append((started, time.monotonic() - started, status))
                self._stop.wait(self._interval)

    def __enter__(self) -> Prober:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join(15)

    def between(self, start: float, end: float) -> list[tuple[float, float, int]]:
        return [s for s in self.samples if start <= s[0] <= end]


def percentile(values: list[float], fraction: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


def readiness(client: httpx.Client) -> tuple[int, dict[str, str], float]:
    """(status, dependency states, seconds taken) of one /readyz."""
    started = time.monotonic()
    try:
        response = client.get("/readyz")
    except httpx.HTTPError:
        return 0, {}, time.monotonic() - started
    seconds = time.monotonic() - started
    dependencies = response.json().get("checks", {}).get("dependencies", {})
    return response.status_code, dependencies, seconds


@dataclass
class Findings:
    """The audit log after the traffic, checked against what the clients got."""

    verified: str  # "ok" or the verifier's finding
    records: int
    unrecorded: list[str]  # 2xx request ids with no record
    duplicates: list[str]  # request ids with more than one record
    contradicted: list[str]  # a record's status is not its client's, and nothing says so


def check_audit(settings: Settings, outcomes: list[Outcome]) -> Findings:
    """Verify the log (a store of its own, as an auditor would) and match the responses."""
    store: AuditStore
    if settings.audit.postgres_dsn is not None:
        store = PostgresAuditStore(
            settings.audit.postgres_dsn.get_secret_value(),
            schema=settings.audit.postgres_schema,
            timeout_s=30,
        )
    else:
        store = SqliteAuditStore(settings.resolve(settings.audit.sqlite_path), busy_timeout_s=30)
    try:
        signer = load_signer(settings.resolve(settings.audit.signing_key_file))
        if _checkpointed(store):
            try:
                verify_store(store, NoteVerifier.from_verifier_key(signer.verifier_key()))
                verified = "ok"
            except LogDamaged as exc:
                verified = str(exc)
        else:
            verified = f"no checkpoint of the head within {CHECKPOINT_WAIT_S:g} s"
        statuses: dict[str, list[int]] = {}
        unacknowledged: set[str] = set()
        records = 0
        for leaf in store.iter_leaves():
            records += 1
            if leaf.payload is None:
                continue
            record = parse(leaf.payload)
            if record.get("kind") == KIND_UNACKNOWLEDGED:
                unacknowledged.update(str(r) for r in record.get("request_ids", []) if r)
            elif leaf.request_id is not None:
                statuses.setdefault(leaf.request_id, []).append(int(record["status"]))
    finally:
        store.close()
    answered = {o.request_id: o.status for o in outcomes if o.request_id}
    return Findings(
        verified=verified,
        records=records,
        unrecorded=[r for r, s in answered.items() if 200 <= s < 300 and r not in statuses],
        duplicates=[r for r, found in statuses.items() if len(found) > 1],
        contradicted=[
            r
            for r, s in answered.items()
            if r in statuses and s not in statuses[r] and r not in unacknowledged
        ],
    )


def _checkpointed(store: AuditStore) -> bool:
    """Wait until the running gateway has signed a checkpoint of its whole log.

    The verifier reads the checkpoint list once to know where to take roots and again
    to check them: a checkpoint the gateway signs in between (it still runs) would be
    judged against no root and reported as a rewrite. Once the head is checkpointed
    and no traffic comes, the gateway signs nothing more. It must do so soon after an
    outage, too: a checkpoint task that died with its dependency would show here.
    """
    deadline = time.monotonic() + CHECKPOINT_WAIT_S
    while time.monotonic() < deadline:
        latest = store.latest_checkpoint()
        if latest is not None and latest.size == store.size():
            return True
        time.sleep(0.05)
    return False


@dataclass(frozen=True)
class Fault:
    """How to break a dependency and bring it back, and which dependencies /readyz names."""

    name: str
    inject: Callable[[], None]
    restore: Callable[[], None]
    down: frozenset[str]


@dataclass
class FaultRun:
    """One fault's figures over its cycles; `failures` says what did not hold."""

    fault: str
    cycles: int = 0
    failures: list[str] = field(default_factory=list)
    healthz: list[float] = field(default_factory=list)  # seconds, during the faults
    recoveries: list[float] = field(default_factory=list)
    outcomes: list[Outcome] = field(default_factory=list)
    findings: Findings | None = None

    @property
    def requests(self) -> int:
        return len(self.outcomes)

    @property
    def healthz_worst_ms(self) -> float:
        return max(self.healthz, default=float("nan")) * 1000

    @property
    def healthz_p99_ms(self) -> float:
        return percentile(self.healthz, 0.99) * 1000

    @property
    def healthz_late(self) -> int:
        """Probes over HEALTHZ_LATE_MS."""
        return sum(s * 1000 > HEALTHZ_LATE_MS for s in self.healthz)

    @property
    def healthz_late_allowed(self) -> int:
        """One probe in a hundred, and at least one."""
        return max(1, len(self.healthz) // 100)

    @property
    def recover_worst_s(self) -> float:
        return max(self.recoveries, default=float("nan"))


def _recovered(client: httpx.Client, token: str, user: str, items: list[str]) -> bool:
    status, _, _ = readiness(client)
    if status != 200:
        return False
    outcome = rank(client, token, user, items)
    return outcome.status == 200 and outcome.personalized is True


def run_fault(
    fault: Fault,
    *,
    base_url: str,
    token: str,
    users: list[str],
    items: list[str],
    request_timeout_s: float,
    hold_s: float,
    cycles: int = 1,
    workers: int = 2,
    settle_s: float = 0.5,
    log: Callable[[str], None] = lambda _line: None,
) -> FaultRun:
    """Inject `fault` `cycles` times under steady traffic, holding it `hold_s` each time."""
    run = FaultRun(fault.name)
    traffic = Traffic(
        base_url, token, users, items, workers=workers, timeout_s=request_timeout_s * 3
    )
    with (
        httpx.Client(base_url=base_url, timeout=request_timeout_s * 3) as client,
        Prober(base_url) as prober,
        traffic,
    ):
        for cycle in range(cycles):
            if not _wait(lambda: _recovered(client, token, users[0], items), 10):
                run.failures.append(f"cycle {cycle}: not ready before the fault")
                break
            time.sleep(settle_s)
            began = time.monotonic()
            fault.inject()
            try:
                # Held from when the fault is in place (a kill waits for the processes).
                _during(fault, run, client, cycle, time.monotonic() + hold_s)
            finally:
                fault.restore()
            back = time.monotonic()
            recovered = _wait(lambda: _recovered(client, token, users[0], items), 10)
            took = time.monotonic() - back
            run.recoveries.append(took)
            if not recovered or took > RECOVERY_LIMIT_S:
                run.failures.append(f"cycle {cycle}: recovered in {took:.2f} s")
            run.healthz.extend(s for _, s, _ in prober.between(began, back))
            bad = [status for _, _, status in prober.between(began, back) if status != 200]
            if bad:
                run.failures.append(f"cycle {cycle}: /healthz answered {sorted(set(bad))}")
            run.cycles += 1
            log(f"{fault.name} cycle {cycle}: recovered in {took:.2f} s")
        time.sleep(settle_s)
    run.outcomes = traffic.outcomes
    limit = request_timeout_s + REQUEST_MARGIN_S
    for outcome in traffic.outcomes:
        if outcome.status == 0:
            run.failures.append(f"a request got no answer in {outcome.seconds:.1f} s")
        elif outcome.seconds > limit:
            run.failures.append(f"a request took {outcome.seconds:.2f} s ({outcome.status})")
        elif not (200 <= outcome.status < 300 or outcome.status == 503):
            run.failures.append(f"a request was answered {outcome.status}")
    if run.healthz_late > run.healthz_late_allowed:
        run.failures.append(
            f"/healthz over {HEALTHZ_LATE_MS:g} ms {run.healthz_late} times in "
            f"{len(run.healthz)} probes during the fault (p99 {run.healthz_p99_ms:.1f} ms)"
        )
    if run.healthz and run.healthz_worst_ms > HEALTHZ_WORST_LIMIT_MS:
        run.failures.append(f"/healthz took {run.healthz_worst_ms:.1f} ms during the fault")
    return run


def _during(fault: Fault, run: FaultRun, client: httpx.Client, cycle: int, until: float) -> None:
    """While the fault holds: /readyz must say 503 naming what is down, within its bound."""
    seen: set[str] = set()
    answered_503 = False
    while time.monotonic() < until:
        status, dependencies, seconds = readiness(client)
        if seconds > READYZ_LIMIT_S:
            run.failures.append(f"cycle {cycle}: /readyz took {seconds:.2f} s")
        if status == 503:
            answered_503 = True
            seen |= {name for name, state in dependencies.items() if state != "ok"}
        elif status == 200:
            # Ready while the dependency is down (its probe ran before the fault bit) is
            # tolerated only at the start; it is judged on what the outage showed overall.
            pass
        time.sleep(0.1)
    if not answered_503:
        run.failures.append(f"cycle {cycle}: /readyz never answered 503")
    elif not fault.down <= seen:
        run.failures.append(
            f"cycle {cycle}: /readyz named {sorted(seen)}, not {sorted(fault.down)}"
        )


def _wait(predicate: Callable[[], bool], timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        with contextlib.suppress(httpx.HTTPError):
            if predicate():
                return True
        time.sleep(0.02)
    return False
