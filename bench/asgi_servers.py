"""bench/asgi_servers: uvicorn, as `gateway serve` runs it, against granian, one process.

    python -m bench.asgi_servers [--rounds 2] [--duration 6] [--concurrency 1,8,64]

Needs granian in the gateway's environment (`.venv/bin/pip install granian==2.8.7`; it
is not a dependency: the gateway kept uvicorn). Runs the bare endpoint and the gateway
(every stage, client limits lifted, one data directory) under uvicorn (httptools, as
shipped) and under granian (`--runtime-mode st`, uvloop, HTTP/1), drives `/v1/rank`
with wrk in alternating rounds and prints rps, p50/p99 and CPU per request of each
server's process group, with each granian figure's ratio to uvicorn's.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import sys
import tempfile
from pathlib import Path

from bench.serve import (
    WRK,
    Server,
    bare_server,
    gateway_server,
    lua_script,
    run_rounds,
)
from bench.servers import free_port, gateway_env
from bench.surfaces import Bench

_GRANIAN = ["--interface", "asgi", "--workers", "1", "--runtime-mode", "st", "--loop", "uvloop",
            "--http", "1", "--no-ws", "--log-level", "warning", "--no-access-log", "--factory",
            "--host", "127.0.0.1"]  # fmt: skip


def gateway_app() -> object:
    """The app `gateway serve` gives uvicorn, for granian's `--factory`."""
    from gateway.app import create_app
    from gateway.logs import configure_logging
    from gateway.server import HeaderLimits, serve_inputs

    inputs = serve_inputs(
        Path(os.environ["BENCH_DATA_DIR"]), None, "127.0.0.1", int(os.environ["BENCH_PORT"]),
        None, None, None, None,
    )  # fmt: skip
    settings = inputs.settings()
    configure_logging(settings.log_level, settings.telemetry.log_format)
    limits = settings.limits
    return HeaderLimits(
        create_app(settings), max_count=limits.max_header_count, max_bytes=limits.max_header_bytes
    )


def granian_server(like: Server, target: str, ready: str, path: str, env: dict[str, str]) -> Server:
    port = free_port()
    return Server(
        f"{like.label}-granian",
        [sys.executable, "-m", "granian", *_GRANIAN, "--port", str(port), target],
        {**env, "BENCH_PORT": str(port)},
        f"http://127.0.0.1:{port}{ready}",
        f"http://127.0.0.1:{port}{path}",
        like.lua.with_name(f"{like.label}-granian.lua"),
        1,
        baseline=like.label,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--duration", type=float, default=6.0)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--concurrency", default="1,8,64")
    args = parser.parse_args()
    if WRK is None:
        raise SystemExit("bench/asgi_servers needs wrk (Debian: apt-get install wrk)")
    if importlib.util.find_spec("granian") is None:
        raise SystemExit("bench/asgi_servers needs granian: .venv/bin/pip install granian==2.8.7")
    levels = [int(c) for c in args.concurrency.split(",")]
    bench = Bench.make("bench-asgi-", 100)
    work = Path(tempfile.mkdtemp(prefix="bench-asgi-lua-"))
    secret = bench.report.client_secrets["demo"].read_text().strip()
    data = {"BENCH_DATA_DIR": str(bench.report.data_dir)}

    bare = bare_server(bench, work, 1)
    bare_gr = granian_server(
        bare, "bench.bare_app:app", "/healthz", "/rank", {**os.environ, **data}
    )
    lua_script(bare_gr.lua, bench.rank_body.read_bytes(), {"Content-Type": "application/json"})
    gw = gateway_server(bench, work, 1, query=False)
    gw.baseline = None  # this table's ratios are granian's against uvicorn's
    gw_gr = granian_server(gw, "bench.asgi_servers:gateway_app", "/readyz", "/v1/rank",
                           {**gateway_env(), **data})  # fmt: skip
    servers = [bare, bare_gr, gw, gw_gr]
    gw_gr.env["BENCH_BODY"] = gw.env["BENCH_BODY"]
    found = run_rounds(servers, secret, levels, args.rounds, args.duration)
    print(
        f"bench/asgi_servers: uvicorn (httptools, as shipped) vs granian (--runtime-mode st, "
        f"uvloop), 1 process, wrk -t1, {args.duration:g} s per point, {args.rounds} alternating "
        f"rounds (medians), cores={os.cpu_count()}"
    )
    print("| server | conc | rps | p50 | p99 | CPU ms/req | CPU vs uvicorn | rps vs uvicorn |")
    print("|---|---|---|---|---|---|---|---|")
    for server in servers:
        for conc in levels:
            r = found[(server.label, conc)]
            base = found[(server.baseline, conc)] if server.baseline else None
            cpu = f"{r['cpu_ms'] / base['cpu_ms']:.2f}x" if base else ""
            rps = f"{r['rps'] / base['rps']:.2f}x" if base else ""
            print(
                f"| {server.label} | {conc} | {r['rps']:.0f} | {r['p50_ms']:.1f} ms "
                f"| {r['p99_ms']:.1f} ms | {r['cpu_ms']:.2f} | {cpu} | {rps} |"
            )


if __name__ == "__main__":
    main()
