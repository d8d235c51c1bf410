"""A soak: steady, paced load on a real `gateway serve` (uvicorn) for a while, with the
server's resident memory and open file descriptors read from /proc once a second.

The load mixes what a day of traffic holds, each with the status it must get: plain
ranking, ranking with free text that stage 4 redacts (the PII path), a request naming an
unknown item (422), and a forged token (401, the refusal budget's path). The baseline is
taken after a warm-up, so one-time growth (model session, analyzer, caches) is not
counted as a leak."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from typing import Any

import httpx

from tests.suites.servers import DataDir, GatewayProcess, HealthProbe, mint

MB = 1024 * 1024


@dataclass(frozen=True)
class Sample:
    t: float
    rss: int
    fds: int


@dataclass
class SoakRun:
    seconds: float
    requests: int = 0
    unexpected: dict[str, int] = field(default_factory=dict)  # "kind:status" -> count
    transport_errors: int = 0
    samples: list[Sample] = field(default_factory=list)
    health_worst_ms: float = float("nan")
    health_p99_ms: float = float("nan")

    @property
    def rss_growth_mb(self) -> float:
        return (self.samples[-1].rss - self.samples[0].rss) / MB

    @property
    def rss_peak_growth_mb(self) -> float:
        return (max(s.rss for s in self.samples) - self.samples[0].rss) / MB

    @property
    def fd_growth(self) -> int:
        return max(s.fds for s in self.samples) - self.samples[0].fds

    @property
    def server_errors(self) -> int:
        return sum(n for key, n in self.unexpected.items() if key.rsplit(":", 1)[1][0] == "5")

    def failures(self, *, max_rss_growth_mb: float, max_fd_growth: int) -> list[str]:
        found = []
        if self.unexpected:
            found.append(f"unexpected statuses {self.unexpected}")
        if self.transport_errors:
            found.append(f"{self.transport_errors} requests got no answer")
        if self.rss_growth_mb > max_rss_growth_mb:
            found.append(f"RSS grew {self.rss_growth_mb:.1f} MB (bound {max_rss_growth_mb} MB)")
        if self.fd_growth > max_fd_growth:
            found.append(f"open files grew by {self.fd_growth} (bound {max_fd_growth})")
        return found


# kind -> (request body, whether the token is forged, the status it must get)
_MIX: tuple[tuple[str, dict[str, Any], bool, int], ...] = (
    ("rank", {"user_id": "u{n}", "item_ids": ["i1", "i7", "i19", "i250", "i{m}"]}, False, 200),
    (
        "rank-text",
        {
            "user_id": "u{n}",
            "item_ids": ["i3", "i4"],
            "context": {"query": "call +44 20 7946 0{m:03d} or mail a{n}@example.org"},
        },
        False,
        200,
    ),
    ("rank", {"user_id": "u{n}", "item_ids": ["i11", "i12", "i{m}"], "top_k": 2}, False, 200),
    ("unknown-item", {"user_id": "u{n}", "item_ids": ["i1", "i999999"]}, False, 422),
    ("rank", {"user_id": "u{n}", "item_ids": ["i5", "i{m}"]}, False, 200),
    ("forged-token", {"user_id": "u{n}", "item_ids": ["i1"]}, True, 401),
)


def _fill(value: Any, n: int, m: int) -> Any:
    if isinstance(value, str):
        return value.format(n=n, m=m)
    if isinstance(value, list):
        return [_fill(v, n, m) for v in value]
    if isinstance(value, dict):
        return {k: _fill(v, n, m) for k, v in value.items()}
    return value


class _PacedLoad:
    """`workers` clients, each sending at `rate_rps / workers` per second on a schedule."""

    def __init__(self, url: str, token: str, rate_rps: float, workers: int, run: SoakRun) -> None:
        self._url = url
        self._good = {"Authorization": f"Bearer {token}"}
        self._forged = {"Authorization": f"Bearer {token[:-8]}AAAAAAAA"}
        self._interval = workers / rate_rps
        self._run = run
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._work, args=(w,)) for w in range(workers)]

    def _work(self, worker: int) -> None:
        next_at = time.monotonic() + worker * self._interval / len(self._threads)
        n = worker
        with httpx.Client(base_url=self._url, timeout=30) as client:
            while not self._stop.is_set():
                self._stop.wait(max(0.0, next_at - time.monotonic()))
                next_at += self._interval
                n += len(self._threads)
                kind, body, forged, expected = _MIX[n % len(_MIX)]
                try:
                    response = client.post(
                        "/v1/rank",
                        # Fixed candidates are below i1000, the varying one above, so none repeats.
                        json=_fill(body, n % 3000 + 1, 1000 + n % 500),
                        headers=self._forged if forged else self._good,
                    )
                except httpx.TransportError:
                    with self._lock:
                        self._run.transport_errors += 1
                    continue
                with self._lock:
                    self._run.requests += 1
                    if response.status_code != expected:
                        key = f"{kind}:{response.status_code}"
                        self._run.unexpected[key] = self._run.unexpected.get(key, 0) + 1

    def __enter__(self) -> _PacedLoad:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=30)


def run_soak(
    data_dir: DataDir,
    *,
    seconds: float,
    warmup_s: float = 3.0,
    rate_rps: float = 40.0,
    workers: int = 4,
) -> SoakRun:
    run = SoakRun(seconds)
    gateway = GatewayProcess(data_dir)
    try:
        gateway.start()
        token = mint(gateway.settings())
        with (
            HealthProbe(gateway.url, interval_s=0.1) as probe,
            _PacedLoad(gateway.url, token, rate_rps, workers, run),
        ):
            time.sleep(warmup_s)
            started = time.monotonic()
            while True:
                elapsed = time.monotonic() - started
                run.samples.append(Sample(elapsed, gateway.rss_bytes(), gateway.open_fds()))
                if elapsed >= seconds:
                    break
                time.sleep(min(1.0, seconds - elapsed))
        gateway.stop()
    finally:
        gateway.kill9()
    run.health_worst_ms, run.health_p99_ms = probe.worst_ms, probe.p99_ms
    return run
