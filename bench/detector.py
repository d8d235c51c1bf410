"""Stage 5's detector cost per request, in process, as the inspect stage calls it.

    python -m bench.detector [--requests 3000] [--rows 100] [--redis redis://127.0.0.1:6379/0]

One table: p50 and p99 microseconds per request of `--rows` rows, for three kinds of
traffic: the store's own rows (what well-behaved clients send), features recomputed
a little (within store_radius), and probes (noise of 0.3 std on every feature: every
row counted in the sketches). In-process state by default; `--redis` adds the same
against a real Redis (one round trip per sketch step). Uses a fresh data directory
(the demo store); no gateway, no network besides Redis.
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from gateway.datadir import init_data_dir
from gateway.settings import load_settings
from models.features import load_arrays
from policies.data_policy import DetectionPolicy
from security.inspection.detector import Detector, Histories
from security.inspection.state import DetectorState, MemoryState, RedisState
from security.inspection.wiring import build_detector

T0 = 1_800_000_000.0


def traffic(arrays: dict[str, Any], kind: str, rows: int, rng: np.random.Generator) -> Any:
    users, items = arrays["user_features"], arrays["item_features"]
    user = int(rng.integers(1, users.shape[0]))
    picked = rng.integers(1, items.shape[0], size=rows)
    uf = np.repeat(users[user : user + 1], rows, axis=0).astype(np.float64)
    itf = items[picked].astype(np.float64)
    if kind == "recomputed":
        uf = uf + rng.normal(0, 0.03, uf.shape) * users.std(axis=0)
        itf = itf + rng.normal(0, 0.03, itf.shape) * items.std(axis=0)
    elif kind == "probes":
        uf = uf + rng.normal(0, 0.3, uf.shape) * users.std(axis=0)
        itf = itf + rng.normal(0, 0.3, itf.shape) * items.std(axis=0)
    return {
        "user_id": np.full(rows, user, dtype=np.int64),
        "item_id": picked.astype(np.int64),
        "user_features": uf.astype(np.float32),
        "item_features": itf.astype(np.float32),
    }


async def measure(
    detector: Detector, arrays: dict[str, Any], kind: str, requests: int, rows: int
) -> tuple[float, float]:
    rng = np.random.default_rng(5)
    rules = DetectionPolicy(thresholds={"out_of_range": 1.0})
    feeds = [traffic(arrays, kind, rows, rng) for _ in range(requests)]
    samples = []
    for i, query in enumerate(feeds):
        client = f"t/c{i % 50}"
        started = time.perf_counter_ns()
        await detector.observe(
            client, query, T0 + i, rules, "r", histories=Histories(client=client, tenant="t")
        )
        samples.append((time.perf_counter_ns() - started) / 1000)
    samples.sort()
    return samples[len(samples) // 2], samples[int(len(samples) * 0.99)]


async def run(args: argparse.Namespace) -> list[tuple[str, str, float, float]]:
    data_dir = Path(tempfile.mkdtemp(prefix="bench-detector-")) / "gw"
    report = init_data_dir(data_dir)
    settings = load_settings(data_dir=report.data_dir, config_file=report.config)
    arrays = load_arrays(report.data_dir / "demo" / "features.npz")
    backends: list[tuple[str, Any]] = [("memory", None)]
    if args.redis:
        backends.append(("redis", args.redis))
    out = []
    for name, url in backends:
        client = None
        state: DetectorState
        if url is None:
            state = MemoryState()
        else:
            import redis.asyncio as redis_asyncio

            client = redis_asyncio.Redis.from_url(url)
            state = RedisState(client, prefix=f"bench-{time.time_ns()}:")
        detector = build_detector(settings, state)
        for kind in ("store rows", "recomputed", "probes"):
            p50, p99 = await measure(detector, arrays, kind, args.requests, args.rows)
            out.append((name, kind, p50, p99))
        if client is not None:
            await client.aclose()
    return out


def main(argv: list[str] | None = None) -> list[tuple[str, str, float, float]]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=3000)
    parser.add_argument("--rows", type=int, default=100)
    parser.add_argument("--redis", default=None)
    args = parser.parse_args(argv)
    rows = asyncio.run(run(args))
    print(f"detector cost per request of {args.rows} rows ({args.requests} requests each)")
    print(f"{'state':<8} {'traffic':<12} {'p50 us':>8} {'p99 us':>8}")
    for name, kind, p50, p99 in rows:
        print(f"{name:<8} {kind:<12} {p50:>8.0f} {p99:>8.0f}")
    return rows


if __name__ == "__main__":
    main()
