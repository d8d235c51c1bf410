"""bench/cpu_split: where a gateway process spends its CPU per request, thread by thread.

    python -m bench.cpu_split [--tree PATH ...] [--concurrency 8] [--duration 10] [--rounds 2]
                              [--workers 1]

Starts `gateway serve --workers N` from each source tree given (default: this checkout;
give an older checkout, e.g. `git worktree add /tmp/base f07076d`, to compare), each on
its own data directory made by that tree's `gateway init` with the per-client limits
lifted by that tree's own `bench.servers.lift_client_limits`. Drives `/v1/rank` (100
candidates) with wrk, trees alternating, and prints per request the user+system CPU of
the event-loop thread and of each other thread (/proc/PID/task), and the total, with
wrk's rps, p50 and p99; with
`--workers` above 1, that of the worker processes together and of the supervisor.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from bench.serve import lua_script, wrk
from bench.servers import free_port, gateway_env, wait_ready

_SETUP = """
import json, sys
import numpy as np
from pathlib import Path
from gateway.datadir import init_data_dir
from bench.servers import lift_client_limits
report = init_data_dir(Path(sys.argv[1]))
lift_client_limits(report.data_dir)
ids = np.load(report.data_dir / "demo" / "features.npz")["item_ids"][1:].tolist()
rng = np.random.default_rng(0)
items = [str(ids[i]) for i in rng.choice(len(ids), 100, replace=False)]
print(json.dumps({"secret": report.client_secrets["demo"].read_text().strip(), "items": items}))
"""

_MINT = """
import json, sys, urllib.parse, urllib.request
data = urllib.parse.urlencode({"grant_type": "client_credentials", "client_id": "demo",
                               "client_secret": sys.argv[2]}).encode()
with urllib.request.urlopen(sys.argv[1] + "/oauth/token", data, timeout=30) as r:
    print(json.loads(r.read())["access_token"])
"""


def thread_cpu(pid: int) -> dict[str, float]:
    ticks = os.sysconf("SC_CLK_TCK")
    out = {}
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            fields = Path(f"/proc/{pid}/task/{tid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        name = "event loop" if tid == str(pid) else f"thread {tid}"
        out[name] = (int(fields[11]) + int(fields[12])) / ticks
    return out


def process_cpu(pid: int) -> float:
    ticks = os.sysconf("SC_CLK_TCK")
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / ticks


def split_cpu(pid: int, workers: int) -> dict[str, float]:
    """One process: by thread. A supervisor: its own CPU and its workers' together."""
    if workers == 1:
        return thread_cpu(pid)
    children = [
        int(child)
        for tid in os.listdir(f"/proc/{pid}/task")
        for child in Path(f"/proc/{pid}/task/{tid}/children").read_text().split()
    ]
    return {"workers": sum(process_cpu(c) for c in children), "supervisor": process_cpu(pid)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--tree", action="append", default=None)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--duration", type=float, default=10.0)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--workers", type=int, default=1)
    args = parser.parse_args()
    trees = [Path(t).resolve() for t in (args.tree or [Path.cwd()])]
    work = Path(tempfile.mkdtemp(prefix="bench-cpu-split-"))
    servers = []
    try:
        for n, tree in enumerate(trees):
            data_dir = work / f"data{n}"
            setup = subprocess.run(
                [sys.executable, "-c", _SETUP, str(data_dir)],
                cwd=tree, capture_output=True, text=True, check=True,
            )  # fmt: skip
            found = json.loads(setup.stdout.strip().splitlines()[-1])
            port = free_port()
            command = [sys.executable, "-m", "gateway.cli", "serve", "--data-dir",
                       str(data_dir), "--port", str(port)]  # fmt: skip
            if "--workers" in subprocess.run(
                [*command[:4], "--help"], cwd=tree, capture_output=True, text=True
            ).stdout:
                command += ["--workers", str(args.workers)]
            proc = subprocess.Popen(command, cwd=tree, env=gateway_env())
            servers.append((tree, proc, port, found))
        lines = []
        for _tree, _proc, port, found in servers:
            url = f"http://127.0.0.1:{port}"
            wait_ready(f"{url}/readyz", timeout=120)
            token = subprocess.run(
                [sys.executable, "-c", _MINT, url, found["secret"]],
                capture_output=True, text=True, check=True,
            ).stdout.strip()  # fmt: skip
            body = json.dumps({"user_id": "u7", "item_ids": found["items"]}).encode()
            headers = {"Content-Type": "application/json", "Authorization": f"Bearer {token}"}
            lines.append(lua_script(work / f"{port}.lua", body, headers))
        # Per tree, each round's (wrk's figures, CPU ms/req by part).
        results: dict[Path, list[tuple[dict[str, float], dict[str, float]]]] = {
            t: [] for t in trees
        }
        for _ in range(args.rounds):
            for (tree, proc, port, _found), lua in zip(servers, lines, strict=True):
                url = f"http://127.0.0.1:{port}/v1/rank"
                wrk(url, lua, args.concurrency, 1.0)
                before = split_cpu(proc.pid, args.workers)
                run = wrk(url, lua, args.concurrency, args.duration)
                after = split_cpu(proc.pid, args.workers)
                n = run["requests"]
                per = {k: (v - before.get(k, 0.0)) * 1000 / n for k, v in after.items()}
                results[tree].append((run, per))
    finally:
        for _tree, proc, _port, _found in servers:
            proc.terminate()
            proc.wait(timeout=30)
    print(
        f"bench/cpu_split: /v1/rank, 100 candidates, wrk -t1 -c{args.concurrency}, "
        f"{args.duration:g} s per run, {args.rounds} alternating rounds, cores={os.cpu_count()}, "
        f"--workers {args.workers}"
    )
    main_part, others = ("event loop", "other threads") if args.workers == 1 else (
        "workers", "supervisor"
    )
    print(
        f"| tree | round | rps | p50 | p99 | total CPU ms/req | {main_part} "
        f"| {others} (largest first) |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for tree, runs in results.items():
        for n, (run, per) in enumerate(runs, start=1):
            rest = sorted((v for k, v in per.items() if k != main_part and v > 0.005),
                          reverse=True)  # fmt: skip
            print(
                f"| {tree} | {n} | {run['rps']:.0f} | {run['p50_ms']:.1f} ms "
                f"| {run['p99_ms']:.1f} ms "
                f"| {sum(per.values()):.3f} | "
                f"{per.get(main_part, 0.0):.3f} | {', '.join(f'{v:.3f}' for v in rest)} |"
            )


if __name__ == "__main__":
    main()
