"""bench/surfaces: the gateway's REST and gRPC surfaces against a bare FastAPI endpoint.

    python -m bench.surfaces [--duration 15] [--concurrency 1,8,64] [--candidates 100]

Starts the gateway (REST and, with `--grpc-port`, OIP gRPC, one process) and the bare
endpoint (bench/bare_app.py, one uvicorn process) on 127.0.0.1, and drives, at each
concurrency, alternately in short rounds (medians; read the ratios on a noisy machine):

- bare     POST /rank, the floor: no auth, no pipeline
- rank     POST /v1/rank on the gateway, `--candidates` candidates
- oip-json POST /v2/models/demo-ranker/infer, JSON tensors, `--candidates` rows: the id
           path a default client takes (user and item ids as BYTES, the features filled
           from the store after consent: models.provenance)
- oip-bin  the same infer with the binary tensor extension (raw inputs and outputs)
- grpc     ModelInfer of the same rows, raw_input_contents (inference.GRPCInferenceService)

The client is h2load (nghttp2-client: `apt-get install nghttp2-client`) for every row,
HTTP/1.1 keep-alive or HTTP/2 for gRPC, one request in flight per connection: one C
client, so its share of the cores is small and alike. Without it, HTTP rows use
bench/loadgen.py and gRPC rows `bench.loadgen --grpc` (Python), which the header says.
Server CPU per request is the server process's user+system time (/proc, all threads)
over the requests of the measured window. gRPC errors arrive as HTTP 200 with a
grpc-status trailer, so they are counted from the gateway's own request metrics.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import struct
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import numpy as np

from bench.servers import (
    H2LOAD,
    cpu_seconds,
    fetch_token,
    free_port,
    gateway_command,
    gateway_env,
    h2load,
    lift_client_limits,
    load,
    metric_total,
    metrics_text,
    running,
)
from gateway.datadir import InitReport, init_data_dir
from gateway.grpc import grpc_predict_v2_pb2 as pb
from gateway.oip_binary import tensor_to_raw
from gateway.settings import load_settings
from models.demo import model_bytes
from models.features import FeatureStore
from models.ranker import Ranker

MODEL = "demo-ranker"
INFER_PATH = f"/v2/models/{MODEL}/infer"
GRPC_METHOD = "/inference.GRPCInferenceService/ModelInfer"
DATATYPES = {np.dtype(np.int64): "INT64", np.dtype(np.float32): "FP32", np.dtype(object): "BYTES"}


def in_process_p50_ms(ranker: Ranker, feeds: dict[str, np.ndarray], n: int = 3000) -> float:
    for _ in range(200):
        ranker.run_sync(feeds)
    times = []
    for _ in range(n):
        started = time.perf_counter()
        ranker.run_sync(feeds)
        times.append(time.perf_counter() - started)
    return float(np.median(times) * 1000)


@dataclass
class Target:
    label: str
    port: int
    path: str
    body: Path  # what h2load sends (a gRPC message framed, as on the wire)
    pid: int
    headers: list[str] = field(default_factory=list)
    grpc: bool = False
    # The unframed message, for the Python gRPC fallback.
    message: Path | None = None


def _tensors(feeds: dict[str, np.ndarray]) -> list[tuple[str, np.ndarray, str]]:
    return [(name, np.ascontiguousarray(a), DATATYPES[a.dtype]) for name, a in feeds.items()]


def json_values(datatype: str, array: np.ndarray) -> list[object]:
    flat = array.reshape(-1).tolist()
    return [v.decode() for v in flat] if datatype == "BYTES" else flat


def write_bodies(work: Path, feeds: dict[str, np.ndarray]) -> dict[str, tuple[Path, list[str]]]:
    """The same rows as an OIP JSON body, a binary-extension body and a gRPC message."""
    tensors = _tensors(feeds)
    plain = {
        "inputs": [
            {"name": n, "shape": list(a.shape), "datatype": d, "data": json_values(d, a)}
            for n, a, d in tensors
        ]
    }
    json_file = work / "oip.json"
    json_file.write_text(json.dumps(plain))
    header = json.dumps(
        {
            "inputs": [
                {
                    "name": n,
                    "shape": list(a.shape),
                    "datatype": d,
                    "parameters": {"binary_data_size": len(tensor_to_raw(d, a))},
                }
                for n, a, d in tensors
            ],
            "parameters": {"binary_data_output": True},
        }
    ).encode()
    binary_file = work / "oip.bin"
    binary_file.write_bytes(header + b"".join(tensor_to_raw(d, a) for _, a, d in tensors))
    request = pb.ModelInferRequest(model_name=MODEL)
    for n, a, d in tensors:
        request.inputs.add(name=n, datatype=d, shape=a.shape)
        request.raw_input_contents.append(tensor_to_raw(d, a))
    message = request.SerializeToString()
    message_file = work / "grpc.msg"
    message_file.write_bytes(message)
    framed_file = work / "grpc.framed"
    # gRPC's length-prefixed message: no compression flag, 4-byte big-endian length.
    framed_file.write_bytes(b"\x00" + struct.pack(">I", len(message)) + message)
    return {
        "json": (json_file, ["content-type: application/json"]),
        "binary": (
            binary_file,
            [
                "content-type: application/octet-stream",
                f"inference-header-content-length: {len(header)}",
            ],
        ),
        "grpc": (framed_file, ["content-type: application/grpc", "te: trailers"]),
        "message": (message_file, []),
    }


@dataclass
class Bench:
    """A fresh data directory for load tests, and one `/v1/rank` body of u7's candidates."""

    work: Path
    report: InitReport
    store: FeatureStore
    items: list[str]
    rank_body: Path

    @classmethod
    def make(cls, prefix: str, candidates: int) -> Bench:
        work = Path(tempfile.mkdtemp(prefix=prefix))
        report = init_data_dir(work / "data")
        lift_client_limits(report.data_dir)
        settings = load_settings(data_dir=report.data_dir, config_file=report.config)
        store = FeatureStore.load(settings.resolve(settings.model.features_path))
        rng = np.random.default_rng(0)
        items = [store.item_ids[i] for i in rng.choice(len(store.item_ids), candidates, False)]
        rank_body = work / "body.json"
        rank_body.write_text(json.dumps({"user_id": "u7", "item_ids": items}))
        return cls(work, report, store, items, rank_body)


def check_once(target: Target, token: str) -> None:
    """One request before the load: a surface that refuses would only measure errors."""
    if target.grpc:
        assert target.message is not None
        with grpc.insecure_channel(f"127.0.0.1:{target.port}") as channel:
            reply = channel.unary_unary(target.path)(
                target.message.read_bytes(),
                metadata=(("authorization", f"Bearer {token}"),),
                timeout=30,
            )
        assert pb.ModelInferResponse.FromString(reply).raw_output_contents
        return
    headers = dict(h.split(": ", 1) for h in target.headers)
    request = urllib.request.Request(
        f"http://127.0.0.1:{target.port}{target.path}",
        data=target.body.read_bytes(),
        headers=headers,
    )
    with urllib.request.urlopen(request, timeout=30) as response:  # noqa: S310 - loopback
        assert response.status == 200, target.label


def grpc_errors(port: int) -> float:
    """gRPC calls that did not succeed, less those the client cancelled (499): h2load
    closes its connections with a call in flight at the end of every run."""
    text, route = metrics_text(port), "grpc:ModelInfer"
    total = metric_total(text, "gateway_requests_total", route=route)
    fine = sum(
        metric_total(text, "gateway_requests_total", route=route, status=status)
        for status in ("200", "499")
    )
    return total - fine


def measure(target: Target, token: str, conc: int, seconds: float, gw_port: int) -> dict:
    """One closed-loop window on `target`, with the server's CPU per request."""
    errors_before = grpc_errors(gw_port) if target.grpc else 0.0
    url = f"http://127.0.0.1:{target.port}{target.path}"
    if H2LOAD is not None:
        run: Callable[[float], dict] = lambda duration: h2load(  # noqa: E731
            url, target.body, target.headers, conc, duration, h1=not target.grpc
        )
    else:
        body = target.message if target.grpc else target.body
        assert body is not None
        extra = ["--warmup", "0"]
        if target.grpc:
            extra.append("--grpc")
        else:
            for header in target.headers:
                extra += ["--header", header]
        raw_token = token if target.label != "bare" else ""
        run = lambda duration: load(  # noqa: E731
            target.port, target.path, body, raw_token, conc, duration, *extra
        )
    run(1.0)  # warm-up: connections, caches, the token cache
    cpu_before = cpu_seconds(target.pid)
    result = run(seconds)
    cpu = cpu_seconds(target.pid) - cpu_before
    result["cpu_ms"] = cpu * 1000 / max(1, result["requests"])
    if target.grpc:
        result["errors"] += int(grpc_errors(gw_port) - errors_before)
    return result


def _median(results: list[dict]) -> dict:
    keys = ("rps", "p50_ms", "p99_ms", "cpu_ms")
    merged = {k: statistics.median(r[k] for r in results) for k in keys}
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

    bench = Bench.make("bench-serve-", args.candidates)
    work, report, rank_file = bench.work, bench.report, bench.rank_body
    feeds = bench.store.inputs_for("u7", bench.items)
    # OIP as a default client sends it: ids; the server fills the features (provenance).
    ids = {
        "user_id": np.array([b"u7"], dtype=object),
        "item_id": np.array([i.encode() for i in bench.items], dtype=object),
    }
    bodies = write_bodies(work, ids)

    # The committed model: the data directory holds only its encrypted package.
    ranker = Ranker(name=MODEL, version="1", model_bytes=model_bytes())
    inproc = in_process_p50_ms(ranker, feeds)
    ranker.close()

    gw_port, grpc_port, bare_port = free_port(), free_port(), free_port()
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
                gateway_command(report.data_dir, gw_port, grpc_port),
                gateway_env(**gateway_overrides),
                f"http://127.0.0.1:{gw_port}/readyz",
            ),
            (
                bare_command,
                {**os.environ, "BENCH_DATA_DIR": str(report.data_dir)},
                f"http://127.0.0.1:{bare_port}/healthz",
            ),
        ]
    ) as (gateway, bare):
        token = fetch_token(gw_port, report.client_secrets["demo"].read_text().strip())
        auth = f"authorization: Bearer {token}"
        json_file, json_headers = bodies["json"]
        binary_file, binary_headers = bodies["binary"]
        framed_file, grpc_headers = bodies["grpc"]
        targets = [
            Target("bare", bare_port, "/rank", rank_file, bare.pid, list(json_headers)),
            Target("rank", gw_port, "/v1/rank", rank_file, gateway.pid, [*json_headers, auth]),
            Target("oip-json", gw_port, INFER_PATH, json_file, gateway.pid, [*json_headers, auth]),
            Target(
                "oip-bin", gw_port, INFER_PATH, binary_file, gateway.pid, [*binary_headers, auth]
            ),
            Target(
                "grpc",
                grpc_port,
                GRPC_METHOD,
                framed_file,
                gateway.pid,
                [*grpc_headers, auth],
                grpc=True,
                message=bodies["message"][0],
            ),
        ]
        for target in targets:
            check_once(target, token)
        rows: list[tuple[int, dict[str, dict]]] = []
        for conc in levels:
            # Alternating short rounds, medians: the noise here is larger than the effect.
            runs: dict[str, list[dict]] = {t.label: [] for t in targets}
            for _ in range(args.rounds):
                for target in targets:
                    runs[target.label].append(
                        measure(target, token, conc, args.duration / args.rounds, gw_port)
                    )
            rows.append((conc, {label: _median(found) for label, found in runs.items()}))

    client = (
        "h2load (HTTP/1.1 keep-alive; gRPC over h2c)"
        if H2LOAD
        else "Python: bench/loadgen.py (HTTP), bench.loadgen --grpc (gRPC)"
    )
    print(
        f"bench/serve: {args.candidates} candidates / rows per request, "
        f"{args.duration:g} s per point in {args.rounds} alternating rounds (medians), "
        f"cores={os.cpu_count()}, audit stage {args.audit}, 1 process per server, "
        f"client {client}"
    )
    print(f"in-process onnxruntime session.run p50: {inproc:.3f} ms")
    header = ("conc", "endpoint", "rps", "p50", "p99", "server CPU/req", "ratio", "errors")
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    references = {"rank": "bare", "oip-bin": "oip-json", "grpc": "oip-json"}
    for conc, found in rows:
        for label, r in found.items():
            reference = references.get(label)
            ratio = f"{r['rps'] / found[reference]['rps']:.2f}x {reference}" if reference else ""
            print(
                f"| {conc} | {label} | {r['rps']:.0f} | {r['p50_ms']:.2f} ms "
                f"| {r['p99_ms']:.2f} ms | {r['cpu_ms']:.2f} ms | {ratio} | {r['errors']} |"
            )
    failed = [(conc, label) for conc, found in rows for label, r in found.items() if r["errors"]]
    if failed:
        raise SystemExit(f"errors at {failed}")


if __name__ == "__main__":
    main()
