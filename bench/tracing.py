"""bench/tracing: what traces cost. `/v1/rank` on two gateways of one data directory,
one with tracing off (no collector: every request still gets a trace id, nothing is
recorded) and one exporting to a local OTLP/HTTP collector at a 10 % sample (and,
with `--full`, a third at 100 %), measured alternately in short rounds.

    python -m bench.tracing [--duration 30] [--concurrency 8,64] [--rounds 3]

The collector is bench/otlp_sink.py in its own process (it decodes every export); its
CPU is not the gateway's. Client: h2load, as bench/serve. Goal (issue 17): at most 5 %
throughput cost at concurrency 64 with 10 % sampling.
"""

from __future__ import annotations

import argparse
import os
import sys
import urllib.request

from bench.servers import (
    H2LOAD,
    fetch_token,
    free_port,
    gateway_command,
    gateway_env,
    running,
)
from bench.surfaces import Bench, Target, _median, check_once, measure


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--duration", type=float, default=30.0)
    parser.add_argument("--concurrency", default="8,64")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--candidates", type=int, default=100)
    parser.add_argument("--full", action="store_true", help="also a gateway sampling 100 %%")
    args = parser.parse_args()
    if H2LOAD is None:
        raise SystemExit("h2load not found (Debian: apt-get install nghttp2-client)")
    levels = [int(c) for c in args.concurrency.split(",")]

    bench = Bench.make("bench-tracing-", args.candidates)
    work, report, body = bench.work, bench.report, bench.rank_body

    sink_port = free_port()
    endpoint = f"http://127.0.0.1:{sink_port}/v1/traces"
    configs = [("off", {}), ("otlp 10 %", {"GATEWAY_TELEMETRY__SAMPLE_RATIO": "0.1"})]
    if args.full:
        configs.append(("otlp 100 %", {"GATEWAY_TELEMETRY__SAMPLE_RATIO": "1.0"}))
    ports = [free_port() for _ in configs]
    servers = [
        (
            [sys.executable, "-m", "bench.otlp_sink", str(sink_port)],
            dict(os.environ),
            f"http://127.0.0.1:{sink_port}/count",
        )
    ]
    for (label, extra), port in zip(configs, ports, strict=True):
        env = dict(extra)
        if label != "off":
            env["GATEWAY_TELEMETRY__OTLP_ENDPOINT"] = endpoint
        # Each gateway its own audit log: two writers of one SQLite file would contend.
        env["GATEWAY_AUDIT__SQLITE_PATH"] = str(work / f"audit-{port}.db")
        servers.append(
            (
                gateway_command(report.data_dir, port),
                gateway_env(**env),
                f"http://127.0.0.1:{port}/readyz",
            )
        )
    with running(servers) as procs:
        secret = report.client_secrets["demo"].read_text().strip()
        targets = []
        for (label, _), port, proc in zip(configs, ports, procs[1:], strict=True):
            token = fetch_token(port, secret)
            headers = ["content-type: application/json", f"authorization: Bearer {token}"]
            target = Target(label, port, "/v1/rank", body, proc.pid, headers)
            check_once(target, token)
            targets.append((target, token))
        rows = []
        for conc in levels:
            runs: dict[str, list[dict]] = {t.label: [] for t, _ in targets}
            for _ in range(args.rounds):
                for target, token in targets:
                    runs[target.label].append(
                        measure(target, token, conc, args.duration / args.rounds, target.port)
                    )
            rows.append((conc, {label: _median(found) for label, found in runs.items()}))
        with urllib.request.urlopen(f"http://127.0.0.1:{sink_port}/count", timeout=10) as r:
            spans = int(r.read())

    print(
        f"bench/tracing: POST /v1/rank, {args.candidates} candidates, "
        f"{args.duration:g} s per point in {args.rounds} alternating rounds (medians), "
        f"cores={os.cpu_count()}, 1 process per gateway, client h2load; "
        f"spans the collector received: {spans}"
    )
    header = ("conc", "tracing", "rps", "p50", "p99", "server CPU/req", "rps vs off", "CPU vs off")
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for conc, found in rows:
        base = found["off"]
        for label, r in found.items():
            print(
                f"| {conc} | {label} | {r['rps']:.0f} | {r['p50_ms']:.2f} ms "
                f"| {r['p99_ms']:.2f} ms | {r['cpu_ms']:.2f} ms | {r['rps'] / base['rps']:.3f} "
                f"| {r['cpu_ms'] / base['cpu_ms']:.3f} |"
            )
    failed = [(conc, label) for conc, found in rows for label, r in found.items() if r["errors"]]
    if failed:
        raise SystemExit(f"errors at {failed}")


if __name__ == "__main__":
    main()
