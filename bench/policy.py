"""bench/policy: Cedar decision latency, and /v1/rank with policy evaluation vs scopes only.

    python -m bench.policy [--rank-seconds 6]

1. In process: `decide` p50/p99 for the default bundle, uncached (every call
   evaluates Cedar) and cached (decisions repeat per client, action and model).
2. /v1/rank at c1 and c64 on two gateways started in this run over the same data
   directory, one authorizing with the bundle, one with the fixed scope table (dev
   mode), measured in alternating rounds (medians). Audit is on in both.
Prints one table.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

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
from policies.bundle import load_bundle
from policies.cedar_engine import AuthzRequest

ROUNDS = 5


def decide_latency(bundle_dir: Path) -> dict[str, tuple[float, float]]:
    bundle = load_bundle(bundle_dir)
    request = AuthzRequest(
        client_id="demo",
        scopes=frozenset({"rank", "infer"}),
        tenant=None,
        action="rank",
        resource_type="Model",
        resource_id="demo-ranker",
        resource_attrs=bundle.model_attrs("demo-ranker", "1"),
    )
    out = {}
    for name, call, n in (
        ("uncached", bundle.engine.decide_uncached, 5_000),
        ("cached", bundle.engine.decide, 50_000),
    ):
        for _ in range(200):
            call(request)
        samples = []
        for _ in range(n):
            started = time.perf_counter_ns()
            call(request)
            samples.append(time.perf_counter_ns() - started)
        samples.sort()
        out[name] = (samples[len(samples) // 2] / 1000, samples[int(len(samples) * 0.99)] / 1000)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rank-seconds", type=float, default=6.0, help="per round")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench-policy-"))
    report = init_data_dir(work / "data")
    lift_client_limits(report.data_dir)
    latency = decide_latency(report.data_dir / "policy")

    body = work / "body.json"
    body.write_text(json.dumps({"user_id": "u7", "item_ids": [f"i{n}" for n in range(1, 101)]}))
    cedar_port, scopes_port = free_port(), free_port()
    scopes_env = gateway_env(GATEWAY_DEV_MODE="true", GATEWAY_POLICY__ENGINE="scopes")
    rows = []
    with running(
        [
            (
                gateway_command(report.data_dir, cedar_port),
                gateway_env(),
                f"http://127.0.0.1:{cedar_port}/readyz",
            ),
            (
                gateway_command(report.data_dir, scopes_port),
                scopes_env,
                f"http://127.0.0.1:{scopes_port}/readyz",
            ),
        ]
    ):
        secret = report.client_secrets["demo"].read_text().strip()
        tokens = {port: fetch_token(port, secret) for port in (cedar_port, scopes_port)}
        for conc in (1, 64):
            scopes, cedar = [], []
            for _ in range(ROUNDS):
                scopes.append(
                    load(
                        scopes_port, "/v1/rank", body, tokens[scopes_port], conc, args.rank_seconds
                    )
                )
                cedar.append(
                    load(cedar_port, "/v1/rank", body, tokens[cedar_port], conc, args.rank_seconds)
                )
            ratio = statistics.median(
                c["rps"] / s["rps"] for s, c in zip(scopes, cedar, strict=True)
            )
            rows.append(
                (
                    conc,
                    statistics.median(s["rps"] for s in scopes),
                    statistics.median(c["rps"] for c in cedar),
                    ratio,
                )
            )

    print(
        f"bench/policy: cores={os.cpu_count()}, default bundle, audit on in both gateways, "
        f"/v1/rank: {ROUNDS} alternating rounds of {args.rank_seconds:.0f} s (medians)"
    )
    print("| measure | value |")
    print("|---|---|")
    for name, (p50, p99) in latency.items():
        print(f"| decide() {name}, in process | p50 {p50:.2f} µs, p99 {p99:.2f} µs |")
    for conc, scopes_rps, cedar_rps, ratio in rows:
        print(
            f"| /v1/rank c{conc}: rps scopes only / with Cedar (ratio) | "
            f"{scopes_rps:,.0f} / {cedar_rps:,.0f} ({ratio:.2f}) |"
        )


if __name__ == "__main__":
    main()
