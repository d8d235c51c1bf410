"""bench/serve: the gateway against a bare endpoint and PyTriton, with a compiled client.

    python -m bench.serve [--duration 15] [--rounds 3] [--concurrency 1,8,64]
                          [--workers N] [--servers bare,bare-N,pytriton,gw,gw-N,gw-q,gw-N-q]

Servers, each started once on 127.0.0.1 in its own process group:

- `bare`, `bare-N`: FastAPI + orjson + onnxruntime over the same model and feature
  store (bench/bare_app.py), 1 and N uvicorn worker processes: the floor;
- `pytriton`: PyTriton (Triton's server binary, a Python model callable running the same
  ONNX model, dynamic batching), scoring the same 100 rows through OIP v2 REST infer;
- `gw`, `gw-N`: the gateway with every stage as shipped (Cedar, consent, redaction,
  inspection, SQLite audit), `gateway serve --workers 1` and `--workers N`, `/v1/rank`
  with 100 candidates; only the per-client rate limit and query budget are lifted
  (bench.servers.lift_client_limits);
- `gw-q`, `gw-N-q`: the same servers, the request carrying a 200-character free-text
  query (`context.query`, redacted by Presidio on every request).

The client is wrk (Debian `wrk`, compiled, 1 thread, keep-alive), one run per
(server, concurrency) per round, servers alternating within each round; medians over
rounds. Server CPU per request is the user+system time of every process in the
server's process group (workers, PyTriton's Triton binary, the audit writer) over the
requests wrk completed. Ratios are against the bare endpoint with the same number of
worker processes, measured in the same run.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path

from bench.servers import fetch_token, free_port, gateway_command, gateway_env, wait_ready
from bench.surfaces import Bench

WRK = shutil.which("wrk")

# A realistic free-text query of 200 characters, the same on every request.
QUERY = (
    "cosy space adventure with a clever heroine, a bit of humour and no gore, something "
    "like the film we watched last weekend at my sister's place, ideally under two hours "
    "and available in English with subtitles"
)[:200]

GOALS = (
    "goals (issue 18): gateway CPU/request <= 2x bare with the same workers; gw-N c64 rps "
    ">= pytriton c64 rps; gw-N c64 p99 <= 60 ms; repeated query costs <= 10 % rps"
)


@dataclass
class Server:
    label: str
    command: list[str]
    env: dict[str, str]
    ready_url: str
    url: str  # what wrk drives
    lua: Path  # method, body and headers for wrk
    workers: int
    baseline: str | None = None  # the label its CPU ratio is against
    pid: int = 0


def process_group_cpu(pgid: int) -> float:
    """User + system CPU seconds of every live process in the process group, and the
    time its reaped children used (cutime/cstime)."""
    ticks = os.sysconf("SC_CLK_TCK")
    total = 0
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            raw = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue  # exited while we looked
        fields = raw.rsplit(")", 1)[1].split()
        # stat(5): field 5 is pgrp, 14-17 utime, stime, cutime, cstime (fields[0] = field 3)
        if int(fields[2]) != pgid:
            continue
        total += sum(int(f) for f in fields[11:15])
    return total / ticks


def wait_quiet(pgid: int, *, timeout: float = 60.0) -> None:
    """Until the server's processes use under 5 % of a core for a second. `/readyz` answers
    once one worker is up, while the others may still be building their apps (seconds of
    CPU, and wrk's connections would all land on the first): that must not be measured."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        before = process_group_cpu(pgid)
        time.sleep(1.0)
        if process_group_cpu(pgid) - before < 0.05:
            return
    print(f"warning: server (process group {pgid}) still busy {timeout:.0f} s after ready",
          file=sys.stderr)  # fmt: skip


_UNITS = {"us": 1e-3, "ms": 1.0, "s": 1000.0}


def _ms(text: str) -> float:
    found = re.fullmatch(r"([\d.]+)(us|ms|s)", text)
    if found is None:
        raise SystemExit(f"wrk printed a latency it cannot read: {text}")
    return float(found.group(1)) * _UNITS[found.group(2)]


def wrk(url: str, lua: Path, conc: int, seconds: float) -> dict[str, float]:
    assert WRK is not None
    out = subprocess.run(
        [WRK, "-t1", f"-c{conc}", f"-d{seconds:g}s", "--latency", "-s", str(lua), url],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    rps = re.search(r"Requests/sec:\s+([\d.]+)", out)
    done = re.search(r"(\d+) requests in", out)
    p50 = re.search(r"\s50%\s+(\S+)", out)
    p99 = re.search(r"\s99%\s+(\S+)", out)
    if not (rps and done and p50 and p99):
        raise SystemExit(f"wrk gave no summary:\n{out}")
    bad = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    socket_errors = re.search(
        r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out
    )
    errors = int(bad.group(1)) if bad else 0
    if socket_errors:
        errors += sum(int(g) for g in socket_errors.groups())
    return {
        "requests": float(done.group(1)),
        "rps": float(rps.group(1)),
        "p50_ms": _ms(p50.group(1)),
        "p99_ms": _ms(p99.group(1)),
        "errors": float(errors),
    }


def lua_script(path: Path, body: bytes, headers: dict[str, str]) -> Path:
    lines = ['wrk.method = "POST"', f"wrk.body = {json.dumps(body.decode())}"]
    lines += [f"wrk.headers[{json.dumps(k)}] = {json.dumps(v)}" for k, v in headers.items()]
    path.write_text("\n".join(lines) + "\n")
    return path


@contextmanager
def started(server: Server) -> Iterator[Server]:
    proc = subprocess.Popen(server.command, env=server.env, start_new_session=True)
    server.pid = proc.pid
    try:
        wait_ready(server.ready_url, timeout=120)
        wait_quiet(proc.pid)
        yield server
    finally:
        # The whole group: uvicorn's workers, Triton's server binary.
        with suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def measure(server: Server, conc: int, seconds: float) -> dict[str, float]:
    wrk(server.url, server.lua, conc, 1.0)  # warm-up: connections, caches, batchers
    before = process_group_cpu(server.pid)
    result = wrk(server.url, server.lua, conc, seconds)
    cpu = process_group_cpu(server.pid) - before
    result["cpu_ms"] = cpu * 1000 / max(1.0, result["requests"])
    return result


def _median(results: list[dict[str, float]]) -> dict[str, float]:
    keys = ("rps", "p50_ms", "p99_ms", "cpu_ms")
    merged = {k: statistics.median(r[k] for r in results) for k in keys}
    merged["errors"] = sum(r["errors"] for r in results)
    return merged


def run_rounds(
    servers: list[Server], secret: str, levels: list[int], rounds: int, duration: float
) -> dict[tuple[str, int], dict[str, float]]:
    """Start every server (a gateway's wrk script gets a fresh token for its BENCH_BODY),
    measure each concurrency level in alternating rounds, and stop them: the medians."""
    with ExitStack() as stack:
        for server in servers:
            stack.enter_context(started(server))
            if "BENCH_BODY" in server.env:
                port = int(server.url.split(":")[2].split("/")[0])
                token = fetch_token(port, secret)
                lua_script(
                    server.lua,
                    server.env["BENCH_BODY"].encode(),
                    {"Content-Type": "application/json", "Authorization": f"Bearer {token}"},
                )
        runs: dict[tuple[str, int], list[dict[str, float]]] = {}
        for _ in range(rounds):
            for conc in levels:
                for server in servers:
                    runs.setdefault((server.label, conc), []).append(
                        measure(server, conc, duration)
                    )
            time.sleep(0.5)
    return {key: _median(results) for key, results in runs.items()}


def bare_server(bench: Bench, work: Path, workers: int) -> Server:
    port = free_port()
    command = [
        sys.executable, "-m", "uvicorn", "bench.bare_app:app", "--factory",
        "--host", "127.0.0.1", "--port", str(port), "--no-access-log",
        "--log-level", "warning", "--workers", str(workers),
    ]  # fmt: skip
    body = bench.rank_body.read_bytes()
    label = "bare" if workers == 1 else f"bare-{workers}"
    return Server(
        label,
        command,
        {**os.environ, "BENCH_DATA_DIR": str(bench.report.data_dir)},
        f"http://127.0.0.1:{port}/healthz",
        f"http://127.0.0.1:{port}/rank",
        lua_script(work / f"{label}.lua", body, {"Content-Type": "application/json"}),
        workers,
    )


def gateway_server(bench: Bench, work: Path, workers: int, *, query: bool) -> Server:
    port = free_port()
    label = ("gw" if workers == 1 else f"gw-{workers}") + ("-q" if query else "")
    command = [*gateway_command(bench.report.data_dir, port), "--workers", str(workers)]
    server = Server(
        label,
        command,
        gateway_env(),
        f"http://127.0.0.1:{port}/readyz",
        f"http://127.0.0.1:{port}/v1/rank",
        work / f"{label}.lua",
        workers,
        baseline="bare" if workers == 1 else f"bare-{workers}",
    )
    body: dict[str, object] = {"user_id": "u7", "item_ids": bench.items}
    if query:
        body["context"] = {"query": QUERY, "locale": "en-GB"}
    server.env["BENCH_BODY"] = json.dumps(body)  # written once the token is known
    return server


def pytriton_server(bench: Bench, work: Path) -> Server | None:
    """PyTriton over the same model (bench.servers.pytriton_command), if installed."""
    try:
        from bench.servers import pytriton_command  # type: ignore[attr-defined]
    except ImportError:
        return None
    found = pytriton_command(bench.report.data_dir)
    if found is None:
        return None
    command, env, http_port, body, headers = found
    return Server(
        "pytriton",
        command,
        env,
        # The model's readiness: Triton's own is 200 before PyTriton has bound the model.
        f"http://127.0.0.1:{http_port}/v2/models/demo-ranker/ready",
        f"http://127.0.0.1:{http_port}/v2/models/demo-ranker/infer",
        lua_script(work / "pytriton.lua", body, headers),
        1,
        baseline="bare",
    )


def goal_lines(
    found: dict[tuple[str, int], dict[str, float]], workers: int, levels: list[int]
) -> list[str]:
    lines = []
    n = f"-{workers}" if workers > 1 else ""
    for gw, bare in (("gw", "bare"), (f"gw{n}", f"bare{n}")):
        ratios = [
            found[(gw, c)]["cpu_ms"] / found[(bare, c)]["cpu_ms"]
            for c in levels
            if (gw, c) in found and (bare, c) in found
        ]
        if ratios:
            lines.append(f"- {gw} CPU/request vs {bare}: worst {max(ratios):.2f}x (goal <= 2x)")
    top = max(levels)
    if (f"gw{n}", top) in found and ("pytriton", top) in found:
        mine, peer = found[(f"gw{n}", top)], found[("pytriton", top)]
        lines.append(
            f"- gw{n} c{top}: {mine['rps'] / peer['rps']:.2f}x pytriton rps (goal >= 1), "
            f"p99 {mine['p99_ms']:.1f} ms (goal <= 60 ms)"
        )
    for gw in ("gw", f"gw{n}"):
        costs = [
            1 - found[(gw + "-q", c)]["rps"] / found[(gw, c)]["rps"]
            for c in levels
            if (gw, c) in found and (gw + "-q", c) in found
        ]
        if costs:
            worst = max(costs)
            lines.append(f"- {gw} 200-char query: worst rps cost {worst:.0%} (goal <= 10 %)")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--duration", type=float, default=15.0, help="seconds per point")
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds (medians)")
    parser.add_argument("--concurrency", default="1,8,64")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--servers", default="bare,bare-N,pytriton,gw,gw-N,gw-q,gw-N-q")
    args = parser.parse_args()
    if WRK is None:
        raise SystemExit("bench/serve needs wrk (Debian: apt-get install wrk)")
    levels = [int(c) for c in args.concurrency.split(",")]
    wanted = [s.replace("-N", f"-{args.workers}") for s in args.servers.split(",")]
    bench = Bench.make("bench-serve-", 100)
    work = Path(tempfile.mkdtemp(prefix="bench-serve-lua-"))
    secret = bench.report.client_secrets["demo"].read_text().strip()

    candidates: list[Server] = [bare_server(bench, work, 1)]
    if args.workers > 1:
        candidates.append(bare_server(bench, work, args.workers))
    pytriton = pytriton_server(bench, work) if "pytriton" in wanted else None
    if pytriton is not None:
        candidates.append(pytriton)
    for workers in sorted({1, args.workers}):
        for query in (False, True):
            candidates.append(gateway_server(bench, work, workers, query=query))
    servers = [s for s in candidates if s.label in wanted]
    missing = sorted(set(wanted) - {s.label for s in servers})

    found = run_rounds(servers, secret, levels, args.rounds, args.duration)

    print(
        f"bench/serve: wrk -t1, keep-alive, {args.duration:g} s per point, {args.rounds} "
        f"alternating rounds (medians), cores={os.cpu_count()}, N={args.workers} workers; "
        f"/v1/rank with 100 candidates, every stage on, client limits lifted"
        + (f"; not run: {', '.join(missing)}" if missing else "")
    )
    header = (
        "server", "conc", "rps", "p50", "p99", "CPU ms/req", "CPU vs bare", "rps vs bare", "errors"
    )  # fmt: skip
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for server in servers:
        for conc in levels:
            r = found[(server.label, conc)]
            base = found.get((server.baseline, conc)) if server.baseline else None
            cpu_ratio = f"{r['cpu_ms'] / base['cpu_ms']:.2f}x" if base else ""
            rps_ratio = f"{r['rps'] / base['rps']:.2f}x" if base else ""
            print(
                f"| {server.label} | {conc} | {r['rps']:.0f} | {r['p50_ms']:.1f} ms "
                f"| {r['p99_ms']:.1f} ms | {r['cpu_ms']:.2f} | {cpu_ratio} | {rps_ratio} "
                f"| {r['errors']:.0f} |"
            )
    print(GOALS)
    for line in goal_lines(found, args.workers, levels):
        print(line)
    failed = [key for key, r in found.items() if r["errors"]]
    if failed:
        raise SystemExit(f"errors at {failed}")


if __name__ == "__main__":
    main()
