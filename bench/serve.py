"""bench/serve: the gateway's `/v1/rank` against a bare FastAPI endpoint and in-process ORT.

    python -m bench.serve [--duration 15] [--concurrency 1,8,64] [--candidates 100]

Starts both servers on 127.0.0.1 (one uvicorn process each), drives each with
the same closed-loop client (bench/loadgen.py, a separate process), and prints
one table. The bare endpoint and the gateway are measured alternately at each
concurrency, so drift on a noisy machine hits both alike; read the ratios.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from bench.servers import (
    fetch_token,
    free_port,
    gateway_command,
    gateway_env,
    lift_client_limits,
    load,
    running,
)
from gateway.datadir import init_data_dir
from gateway.settings import load_settings
from models.demo import model_bytes
from models.features import FeatureStore
from models.ranker import Ranker


def in_process_p50_ms(ranker: Ranker, feeds: dict[str, np.ndarray], n: int = 3000) -> float:
    for _ in range(200):
        ranker.run_sync(feeds)
    times = []
    for _ in range(n):
        started = time.perf_counter()
        ranker.run_sync(feeds)
        times.append(time.perf_counter() - started)
    return float(np.median(times) * 1000)


def _median(results: list[dict]) -> dict:
    merged = {k: statistics.median(r[k] for r in results) for k in ("rps", "p50_ms", "p99_ms")}
    merged["errors"] = sum(r["errors"] for r in results)
    return merged


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--duration", type=float, default=15.0)
    parser.add_argument("--concurrency", default="1,8,64")
    parser.add_argument("--candidates", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds per point")
    parser.add_argument(
        "--audit",
        choices=("on", "off"),
        default="on",
        help="audit stage as shipped (on), or off to measure the spine alone (dev mode)",
    )
    args = parser.parse_args()
    levels = [int(c) for c in args.concurrency.split(",")]

    work = Path(tempfile.mkdtemp(prefix="bench-serve-"))
    report = init_data_dir(work / "data")
    lift_client_limits(report.data_dir)
    settings = load_settings(data_dir=report.data_dir, config_file=report.config)
    store = FeatureStore.load(settings.resolve(settings.model.features_path))
    rng = np.random.default_rng(0)
    items = [store.item_ids[i] for i in rng.choice(len(store.item_ids), args.candidates, False)]
    body_file = work / "body.json"
    body_file.write_text(json.dumps({"user_id": "u7", "item_ids": items}))

    # The committed model: the data directory holds only its encrypted package.
    ranker = Ranker(name="demo-ranker", version="1", model_bytes=model_bytes())
    inproc = in_process_p50_ms(ranker, store.inputs_for("u7", items))
    ranker.close()

    gw_port, bare_port = free_port(), free_port()
    gateway_overrides = (
        {"GATEWAY_DEV_MODE": "true", "GATEWAY_AUDIT__ENABLED": "false"}
        if args.audit == "off"
        else {}
    )
    bare_command = [
        sys.executable,
        "-m",
        "uvicorn",
        "bench.bare_app:app",
        "--factory",
        "--host",
        "127.0.0.1",
        "--port",
        str(bare_port),
        "--no-access-log",
        "--log-level",
        "warning",
    ]
    with running(
        [
            (
                gateway_command(report.data_dir, gw_port),
                gateway_env(**gateway_overrides),
                f"http://127.0.0.1:{gw_port}/readyz",
            ),
            (
                bare_command,
                {**os.environ, "BENCH_DATA_DIR": str(report.data_dir)},
                f"http://127.0.0.1:{bare_port}/healthz",
            ),
        ]
    ):
        token = fetch_token(gw_port, report.client_secrets["demo"].read_text().strip())
        rows = []
        for conc in levels:
            # Alternating short rounds, medians: the noise here is larger than the effect.
            bares, gws = [], []
            for _ in range(args.rounds):
                seconds = args.duration / args.rounds
                bares.append(load(bare_port, "/rank", body_file, "", conc, seconds))
                gws.append(load(gw_port, "/v1/rank", body_file, token, conc, seconds))
            rows.append((conc, _median(bares), _median(gws)))
    for conc, bare, gw in rows:
        if bare["errors"] or gw["errors"]:
            raise SystemExit(f"non-200 responses at c{conc}: bare {bare}, gateway {gw}")

    print(
        f"bench/serve: POST /v1/rank, {args.candidates} candidates, {args.duration:.0f} s per "
        f"point in {args.rounds} alternating rounds (medians), cores={os.cpu_count()}, "
        f"audit stage {args.audit}, 1 uvicorn process per server, "
        "client in its own process"
    )
    print(f"in-process onnxruntime session.run p50: {inproc:.3f} ms")
    header = (
        "conc",
        "bare rps",
        "bare p50",
        "bare p99",
        "gw rps",
        "gw p50",
        "gw p99",
        "gw/bare rps",
        "gw p50 - inproc",
        "errors",
    )
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for conc, bare, gw in rows:
        print(
            f"| {conc} | {bare['rps']:.0f} | {bare['p50_ms']:.2f} ms | {bare['p99_ms']:.2f} ms "
            f"| {gw['rps']:.0f} | {gw['p50_ms']:.2f} ms | {gw['p99_ms']:.2f} ms "
            f"| {gw['rps'] / bare['rps']:.2f} | {gw['p50_ms'] - inproc:.2f} ms "
            f"| {bare['errors']}/{gw['errors']} |"
        )


if __name__ == "__main__":
    main()
