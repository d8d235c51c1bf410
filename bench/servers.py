"""What the benchmarks share: ports, real gateway processes, tokens and the load client."""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def wait_ready(url: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=1):  # noqa: S310 - loopback only
                return
        except OSError:
            time.sleep(0.2)
    raise SystemExit(f"server at {url} did not become ready")


def fetch_token(port: int, secret: str) -> str:
    """A real token from the gateway's own /oauth/token, as a client would get one."""
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}/oauth/token",
        data=urllib.parse.urlencode(
            {"grant_type": "client_credentials", "client_id": "demo", "client_secret": secret}
        ).encode(),
        headers={"Content-Type": "application/x-www-form-urlencoded"},
    )
    with urllib.request.urlopen(request, timeout=10) as response:  # noqa: S310
        token: str = json.loads(response.read())["access_token"]
        return token


def load(
    port: int,
    path: str,
    body_file: Path,
    token: str,
    conc: int,
    duration: float,
    *extra: str,
) -> dict:
    """bench/loadgen.py in its own process; `extra`: more of its arguments (--grpc, --header)."""
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "bench.loadgen",
            "--port",
            str(port),
            "--path",
            path,
            "--body-file",
            str(body_file),
            "--token",
            token,
            "--concurrency",
            str(conc),
            "--duration",
            str(duration),
            *extra,
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    result: dict = json.loads(out.stdout)
    return result


# The default bundle allows each client 50 requests/s and 10,000 rows an hour (issue 7's
# rate limit and query budget). A throughput benchmark drives one client far past both,
# so its data dir's bundle lifts those two limits; everything else stays as shipped.
RATE_LIMIT_EDIT = (
    "rate_limits: {per_client_rps: 50, burst: 100}",
    "rate_limits: {per_client_rps: 100000, burst: 1000000}",
)
BUDGET_EDIT = (
    # The shipped budgets (per client, per subject, per tenant), all lifted.
    "  default: [{window_seconds: 3600, max_queries: 400000}, "
    "{window_seconds: 86400, max_queries: 2000000}]\n"
    "  per_subject: [{window_seconds: 3600, max_queries: 10000}, "
    "{window_seconds: 86400, max_queries: 100000}]\n"
    "  per_tenant: [{window_seconds: 3600, max_queries: 1000000}, "
    "{window_seconds: 86400, max_queries: 4000000}]\n",
    "  default: {window_seconds: 3600, max_queries: 1000000000}\n",
)


def edit_bundle(bundle: Path, signing_key_file: Path, edits: Sequence[tuple[str, str]]) -> None:
    """Rewrite a bundle's data.yaml in place, then rehash and re-sign it."""
    from policies.bundle import rehash
    from policies.signing import sign_bundle

    data = bundle / "data.yaml"
    text = data.read_text()
    for old, new in edits:
        if old not in text:
            raise SystemExit(f"bundle edit does not apply: {old}")
        text = text.replace(old, new, 1)
    data.write_text(text)
    (bundle / "bundle.sig").unlink(missing_ok=True)
    rehash(bundle)
    sign_bundle(bundle, signing_key_file.read_text().strip())


def lift_client_limits(data_dir: Path) -> None:
    """For load tests only: no per-client rate limit or query budget in the way."""
    key_file = data_dir / "keys" / "policy-signing.key"
    edit_bundle(data_dir / "policy", key_file, [RATE_LIMIT_EDIT, BUDGET_EDIT])


def gateway_env(**overrides: str) -> dict[str, str]:
    """The environment for a benchmarked gateway: none of the caller's GATEWAY_ settings."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("GATEWAY_")}
    env["GATEWAY_LOG_LEVEL"] = "warning"
    env.update(overrides)
    return env


def gateway_command(
    data_dir: Path, port: int, grpc_port: int | None = None, workers: int = 1
) -> list[str]:
    """One worker unless asked: `serve` now defaults to one per core (gateway.workers)."""
    command = [
        sys.executable,
        "-m",
        "gateway.cli",
        "serve",
        "--data-dir",
        str(data_dir),
        "--port",
        str(port),
        "--workers",
        str(workers),
    ]
    if grpc_port is not None:
        command += ["--grpc-port", str(grpc_port)]
    return command


@contextmanager
def running(
    servers: Sequence[tuple[list[str], dict[str, str], str]],
) -> Iterator[list[subprocess.Popen[bytes]]]:
    """Start each (command, env, readiness URL); stop them all however the block ends.
    Yields the processes, in order (their pids, for CPU accounting from /proc)."""
    procs = [subprocess.Popen(command, env=env) for command, env, _ in servers]
    try:
        for _, _, ready_url in servers:
            wait_ready(ready_url)
        yield procs
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            proc.wait(timeout=30)


# -- h2load (nghttp2-client): one compiled client for every row ------------------------
#
# Debian/Ubuntu: `apt-get install nghttp2-client`. One C client for HTTP/1.1 (--h1) and
# gRPC (HTTP/2 with prior knowledge) keeps the client's share of the CPU small and alike
# for every row; without it, HTTP rows fall back to bench/loadgen.py and gRPC rows to
# `bench.loadgen --grpc` (Python, one process), which the table then says.

H2LOAD = shutil.which("h2load")


def h2load(
    url: str,
    body_file: Path,
    headers: Sequence[str],
    conc: int,
    duration: float,
    *,
    h1: bool,
    warmup: float = 0.0,
) -> dict:
    """A closed-loop run (one request in flight per connection, `conc` connections).

    h2load reports no percentiles: they come from its per-request log. Its status column
    is the HTTP status only (a gRPC error is a 200 with a grpc-status trailer): callers
    count gRPC errors from the gateway's own metrics.
    """
    assert H2LOAD is not None
    base = [H2LOAD, "-c", str(conc), "-m", "1", "-t", "1", "-d", str(body_file)]
    if h1:
        base.append("--h1")
    for header in headers:
        base += ["-H", header]
    if warmup:
        # h2load takes whole units: milliseconds.
        subprocess.run(
            [*base, "-D", f"{round(warmup * 1000)}ms", url], capture_output=True, check=True
        )
    with tempfile.NamedTemporaryFile("r", suffix=".log") as log:
        out = subprocess.run(
            [*base, "-D", f"{round(duration * 1000)}ms", "--log-file", log.name, url],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        rows = [line.split("\t") for line in log.read().splitlines() if line]
    finished = re.search(r"finished in ([\d.]+)s, ([\d.]+) req/s", out)
    if finished is None:
        raise SystemExit(f"h2load gave no summary:\n{out}")
    latencies = sorted(int(row[2]) / 1000 for row in rows)
    n = len(latencies)
    return {
        "requests": n,
        "errors": sum(1 for row in rows if row[1] != "200"),
        "rps": float(finished.group(2)),
        "p50_ms": latencies[n // 2] if n else float("nan"),
        "p99_ms": latencies[min(n - 1, int(n * 0.99))] if n else float("nan"),
    }


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far, all its threads (from /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    # utime and stime are fields 14 and 15 of stat(5); fields[0] here is field 3.
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def metrics_text(port: int) -> str:
    """The gateway's /metrics, once: sums over one scrape are consistent with each other."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as r:
        text: str = r.read().decode()
        return text


def metric_total(text: str, name: str, **labels: str) -> float:
    """Sum of a Prometheus counter's samples in `text` whose labels match."""
    total = 0.0
    for line in text.splitlines():
        if not line.startswith(name + "{"):
            continue
        head, value = line.rsplit(" ", 1)
        found = dict(re.findall(r'(\w+)="([^"]*)"', head))
        if all(found.get(k) == v for k, v in labels.items()):
            total += float(value)
    return total


# -- PyTriton: the same model inside Triton, as a peer and as a remote ranker ----------
#
# nvidia-pytriton 0.7 needs numpy < 2 (the gateway pins numpy 2), so it lives in its own
# virtual environment: PYTRITON_PYTHON names its interpreter, else
# .venv-pytriton/bin/python at the repository root. Install it with
#   python3.11 -m venv .venv-pytriton
#   .venv-pytriton/bin/pip install nvidia-pytriton==0.7.0 onnxruntime==1.32.0

REPO = Path(__file__).resolve().parent.parent
PYTRITON_SERVER = REPO / "bench" / "pytriton_server.py"
DEMO_ONNX = REPO / "models" / "demo" / "assets" / "demo-ranker.onnx"


def pytriton_python() -> Path | None:
    """PyTriton's interpreter, or None when it is not installed."""
    named = os.environ.get("PYTRITON_PYTHON")
    found = Path(named) if named else REPO / ".venv-pytriton" / "bin" / "python"
    return found if found.is_file() else None


def pytriton_server_command(
    http_port: int,
    *,
    model: Path = DEMO_ONNX,
    max_queue_delay_us: int = 1000,
    extra: Sequence[str] = (),
) -> tuple[list[str], dict[str, str], str]:
    """(command, env, readiness URL) of a PyTriton server of the demo model with dynamic
    batching; its gRPC and metrics ports are http_port + 1 and + 2 unless `extra` names
    them (--grpc-port, --metrics-port)."""
    python = pytriton_python()
    if python is None:
        raise SystemExit("PyTriton is not installed: see bench/servers.py (pytriton_python)")
    libdir = subprocess.run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_config_var('LIBDIR'))"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    env = {k: v for k, v in os.environ.items() if not k.startswith("GATEWAY_")}
    # Its bundled tritonserver links against libpython: point the loader at it.
    env["LD_LIBRARY_PATH"] = ":".join(p for p in (libdir, env.get("LD_LIBRARY_PATH")) if p)
    command = [
        str(python),
        str(PYTRITON_SERVER),
        "--model",
        str(model),
        "--http-port",
        str(http_port),
        "--max-queue-delay-us",
        str(max_queue_delay_us),
        *extra,
    ]
    return command, env, f"http://127.0.0.1:{http_port}/v2/models/demo-ranker/ready"


def pytriton_command(
    data_dir: Path, candidates: int = 100
) -> tuple[list[str], dict[str, str], int, bytes, dict[str, str]] | None:
    """PyTriton as a bench/serve peer: (command, env, HTTP port, an OIP JSON infer body,
    its headers), or None when PyTriton is not installed. The body holds the rows the
    gateway's `/v1/rank` body of bench.surfaces.Bench scores (user u7, the same
    candidates), ids as [N, 1] as a batching Triton model takes them."""
    if pytriton_python() is None:
        return None
    import numpy as np

    from models.features import FeatureStore

    store = FeatureStore.load(data_dir / "demo" / "features.npz")
    rng = np.random.default_rng(0)  # Bench.make's choice of candidates
    items = [store.item_ids[i] for i in rng.choice(len(store.item_ids), candidates, False)]
    feeds = store.inputs_for("u7", items)
    inputs = []
    for name, array in feeds.items():
        shaped = array.reshape(-1, 1) if array.ndim == 1 else array
        datatype = "INT64" if shaped.dtype == np.int64 else "FP32"
        inputs.append(
            {
                "name": name,
                "shape": list(shaped.shape),
                "datatype": datatype,
                "data": shaped.reshape(-1).tolist(),
            }
        )
    body = json.dumps({"inputs": inputs, "outputs": [{"name": "score"}]}).encode()
    port, grpc_port, metrics_port = free_port(), free_port(), free_port()
    extra = ["--grpc-port", str(grpc_port), "--metrics-port", str(metrics_port)]
    command, env, _ready = pytriton_server_command(port, extra=extra)
    return command, env, port, body, {"Content-Type": "application/json"}
