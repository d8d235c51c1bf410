"""A small closed-loop HTTP/1.1 load generator (keep-alive, one connection per worker),
and with `--grpc` a gRPC one (the fallback of bench/serve where h2load is not installed).

Hand-rolled on asyncio streams instead of httpx so that the client spends as
little CPU as possible: on a 2-core box the client shares the cores with the
server under test, and a heavy client would hide the server's differences.
Prints one JSON object: requests, errors, rps, p50/p99 in milliseconds.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from pathlib import Path
from typing import Any

try:
    import uvloop
except ImportError:  # pragma: no cover - uvloop ships with uvicorn[standard]
    uvloop = None


async def worker(
    host: str, port: int, request: bytes, deadline: float, latencies: list[float], errors: list[int]
) -> None:
    reader, writer = await asyncio.open_connection(host, port)
    try:
        while time.perf_counter() < deadline:
            started = time.perf_counter()
            writer.write(request)
            head = await reader.readuntil(b"\r\n\r\n")
            status = int(head[9:12])
            length = 0
            for line in head.split(b"\r\n"):
                if line[:15].lower() == b"content-length:":
                    length = int(line[15:])
            await reader.readexactly(length)
            latencies.append(time.perf_counter() - started)
            if status != 200:
                errors.append(status)
    finally:
        writer.close()


async def grpc_worker(
    host: str,
    port: int,
    method: str,
    message: bytes,
    token: str,
    deadline: float,
    latencies: list[float],
    errors: list[int],
) -> None:
    """The fallback gRPC client (no h2load): one channel per worker, bytes in and out."""
    import grpc

    metadata = (("authorization", f"Bearer {token}"),) if token else ()
    async with grpc.aio.insecure_channel(f"{host}:{port}") as channel:
        call = channel.unary_unary(method)
        while time.perf_counter() < deadline:
            started = time.perf_counter()
            try:
                await call(message, metadata=metadata, timeout=30)
            except grpc.aio.AioRpcError as exc:
                errors.append(exc.code().value[0])
            latencies.append(time.perf_counter() - started)


async def run(args: argparse.Namespace) -> dict[str, float]:
    body = Path(args.body_file).read_bytes()
    if args.grpc:

        def worker_for(until: float, lat: list[float], err: list[int]) -> Any:
            return grpc_worker(args.host, args.port, args.path, body, args.token, until, lat, err)

        return await _closed_loop(args, worker_for)
    extra = list(args.header or ())
    if not any(h.lower().startswith("content-type:") for h in extra):
        extra.append("Content-Type: application/json")
    headers = [
        f"POST {args.path} HTTP/1.1",
        f"Host: {args.host}:{args.port}",
        *extra,
        f"Content-Length: {len(body)}",
    ]
    if args.token:
        headers.append(f"Authorization: Bearer {args.token}")
    request = ("\r\n".join(headers) + "\r\n\r\n").encode() + body

    def http_worker(until: float, lat: list[float], err: list[int]) -> Any:
        return worker(args.host, args.port, request, until, lat, err)

    return await _closed_loop(args, http_worker)


async def _closed_loop(args: argparse.Namespace, worker_for: Any) -> dict[str, float]:
    # Warm-up: connections, caches, the token cache.
    warm: list[float] = []
    until = time.perf_counter() + args.warmup
    await asyncio.gather(*(worker_for(until, warm, []) for _ in range(args.concurrency)))
    latencies: list[float] = []
    errors: list[int] = []
    started = time.perf_counter()
    deadline = started + args.duration
    await asyncio.gather(
        *(worker_for(deadline, latencies, errors) for _ in range(args.concurrency))
    )
    elapsed = time.perf_counter() - started
    latencies.sort()
    n = len(latencies)
    return {
        "requests": n,
        "errors": len(errors),
        "rps": n / elapsed,
        "p50_ms": latencies[n // 2] * 1000 if n else float("nan"),
        "p99_ms": latencies[min(n - 1, int(n * 0.99))] * 1000 if n else float("nan"),
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--path", required=True)
    parser.add_argument("--body-file", required=True)
    parser.add_argument("--token", default="")
    parser.add_argument("--header", action="append", help="another request header (repeatable)")
    parser.add_argument("--concurrency", type=int, default=1)
    parser.add_argument("--duration", type=float, default=15.0)
    parser.add_argument("--warmup", type=float, default=2.0)
    parser.add_argument(
        "--grpc",
        action="store_true",
        help="--path is a gRPC method, --body-file a serialized request message",
    )
    args = parser.parse_args()
    if uvloop is not None:
        uvloop.install()
    result = asyncio.run(run(args))
    json.dump(result, sys.stdout)


if __name__ == "__main__":
    main()
