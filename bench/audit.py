"""bench/audit: durable appends/s, the audit stage's cost on /v1/rank, proofs, verification, export.

    python -m bench.audit [--seconds 5] [--records 1000000] [--rank-seconds 10] [--only log]

1. Appends/s through the real group-commit appender (AuditLog.append) with
   durability on (SQLite WAL + synchronous=FULL; PostgreSQL synchronous_commit=on),
   at concurrency 1 and 64, for SQLite and (when reachable) PostgreSQL.
2. /v1/rank at concurrency 1 and 64 on two gateways started in this run, one with
   the audit stage and one without (dev mode), measured alternately.
3. A log of --records records (SQLite): average inclusion and consistency proof
   generation time, and the full `audit verify` time.
4. On the same log: export (complete ranges) and offline `verify-bundle` of the
   whole range and of a 1 % filtered range (one record in a hundred is client
   "auditee"), time and bundle size, and their ratios to `audit verify` in the same
   run. Goals: verify-bundle of the whole range within 2x of `audit verify`; the
   1 % bundle at most 40 bytes per leaf it carries as a hash only. The export runs
   before `audit verify`, so the peak memory it reports is the export's own.
`--only log` runs 3 and 4 alone. Prints one table.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import resource
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from audit.bundle import verify_bundle
from audit.checkpoint import NoteSigner
from audit.export import ExportFilter, write_bundle
from audit.log import AuditLog
from audit.merkle import leaf_hash
from audit.record import canonical, request_record
from audit.sqlite_store import SqliteAuditStore
from audit.store import AuditStore, PendingRecord, StoreError
from audit.subjects import SubjectKeys
from audit.verify import verify_store
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
from gateway.settings import AuditSettings

PG_DSN = os.environ.get("BENCH_PG_DSN", "postgresql://postgres@127.0.0.1:5432/test")


T0_MS = 1_790_000_000_000


def sample_record(i: int, client_id: str = "demo") -> dict[str, Any]:
    return request_record(
        ts_ms=T0_MS + i,
        request_id=f"bench-{i:012d}",
        route="/v1/rank",
        action="rank",
        client_id=client_id,
        issuer="http://127.0.0.1:8080",
        subject="0123456789abcdef0123456789abcdef",
        status=200,
        outcome="ok",
        policy_ids=["scope:rank"],
        model={"name": "demo-ranker", "version": "1", "digest": "ab" * 32, "variant": None},
        latency_us=400,
        sealed={"key_id": "k", "nonce": "AAAAAAAAAAAAAAAA", "ct": "A" * 44},
    )


def make_log(store: AuditStore) -> AuditLog:
    keys = SubjectKeys(store, kek=os.urandom(32), handle_key=os.urandom(32))
    # The production default commit delay, as the gateway runs it.
    delay = AuditSettings().commit_delay_ms / 1000
    return AuditLog(
        store, signer=NoteSigner.generate("bench-audit"), subject_keys=keys, commit_delay_s=delay
    )


async def appends_per_second(store: AuditStore, concurrency: int, seconds: float) -> float:
    audit_log = make_log(store)
    counter = [0]
    deadline = time.perf_counter() + seconds

    async def worker(w: int) -> None:
        i = 0
        while time.perf_counter() < deadline:
            await audit_log.append(sample_record(w * 10_000_000 + i))
            i += 1
            counter[0] += 1

    started = time.perf_counter()
    await asyncio.gather(*(worker(w) for w in range(concurrency)))
    elapsed = time.perf_counter() - started
    await audit_log.close()
    return counter[0] / elapsed


def postgres_store(schema: str) -> AuditStore | None:
    try:
        from audit.postgres_store import PostgresAuditStore
    except ImportError:
        return None
    try:
        return PostgresAuditStore(PG_DSN, schema=schema)
    except StoreError:
        return None


def drop_pg_schema(schema: str) -> None:
    import psycopg

    with psycopg.connect(PG_DSN, autocommit=True) as conn:
        conn.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")  # bench-owned name


def rank_with_and_without_audit(
    work: Path, seconds: float
) -> list[tuple[int, dict[str, float], dict[str, float], float]]:
    report = init_data_dir(work / "rank-data")
    lift_client_limits(report.data_dir)
    body_file = work / "body.json"
    items = [f"i{n}" for n in range(1, 101)]
    body_file.write_text(json.dumps({"user_id": "u7", "item_ids": items}))
    on_port, off_port = free_port(), free_port()
    off_env = gateway_env(GATEWAY_DEV_MODE="true", GATEWAY_AUDIT__ENABLED="false")
    with running(
        [
            (
                gateway_command(report.data_dir, on_port),
                gateway_env(),
                f"http://127.0.0.1:{on_port}/readyz",
            ),
            (
                gateway_command(report.data_dir, off_port),
                off_env,
                f"http://127.0.0.1:{off_port}/readyz",
            ),
        ]
    ):
        secret = report.client_secrets["demo"].read_text().strip()
        on_token, off_token = fetch_token(on_port, secret), fetch_token(off_port, secret)
        rows = []
        for conc in (1, 64):
            # Alternate short rounds and take medians: this machine's noise is larger
            # than the effect being measured, and drift hits both servers alike this way.
            offs, ons = [], []
            for _ in range(ROUNDS):
                offs.append(load(off_port, "/v1/rank", body_file, off_token, conc, seconds))
                ons.append(load(on_port, "/v1/rank", body_file, on_token, conc, seconds))
            ratio = statistics.median(b["rps"] / a["rps"] for a, b in zip(offs, ons, strict=True))
            rows.append((conc, _median(offs), _median(ons), ratio))
        return rows


ROUNDS = 5


def _median(results: list[dict[str, Any]]) -> dict[str, float]:
    return {key: statistics.median(r[key] for r in results) for key in ("rps", "p50_ms")}


# One record in a hundred is this client's: the "1 % filtered" export opens those.
RARE_CLIENT = "auditee"


def build_big_log(path: Path, n: int) -> SqliteAuditStore:
    store = SqliteAuditStore(path)
    batch = 20_000
    for start in range(0, n, batch):
        records = []
        for i in range(start, min(n, start + batch)):
            record = sample_record(i, RARE_CLIENT if i % 100 == 0 else "demo")
            payload = canonical(record)
            # The row's time is the record's, as AuditLog.append writes it (export checks).
            records.append(
                PendingRecord(payload, leaf_hash(payload), f"bench-{i:012d}", record["ts_ms"])
            )
        store.append_batch(records)
    return store


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--rank-seconds", type=float, default=6.0, help="per round")
    parser.add_argument("--records", type=int, default=1_000_000)
    parser.add_argument(
        "--only", choices=("all", "log"), default="all", help="log: the big log's sections only"
    )
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench-audit-"))
    lines: list[tuple[str, str]] = []
    if args.only == "all":
        serving(args, work, lines)
    big_log(args.records, work, lines)
    serving_note = (
        f"{args.seconds:.0f} s per append point, /v1/rank: {ROUNDS} alternating rounds of "
        f"{args.rank_seconds:.0f} s (100 candidates)"
        if args.only == "all"
        else "log sections only"
    )
    print(
        f"bench/audit: cores={os.cpu_count()}, durability on, SQLite, {args.records:,} records, "
        f"{serving_note}"
    )
    print("| measure | value |")
    print("|---|---|")
    for name, value in lines:
        print(f"| {name} | {value} |")


def serving(args: argparse.Namespace, work: Path, lines: list[tuple[str, str]]) -> None:
    for conc in (1, 64):
        store = SqliteAuditStore(work / f"append-{conc}.db")
        rate = asyncio.run(appends_per_second(store, conc, args.seconds))
        store.close()
        lines.append((f"SQLite durable appends/s, c{conc}", f"{rate:,.0f}"))
    for conc in (1, 64):
        schema = f"bench_audit_{os.getpid()}_{conc}"
        pg = postgres_store(schema)
        if pg is None:
            lines.append((f"PostgreSQL durable appends/s, c{conc}", "not measured (unreachable)"))
            continue
        rate = asyncio.run(appends_per_second(pg, conc, args.seconds))
        pg.close()
        drop_pg_schema(schema)
        lines.append((f"PostgreSQL durable appends/s, c{conc}", f"{rate:,.0f}"))

    for conc, off, on, ratio in rank_with_and_without_audit(work, args.rank_seconds):
        lines.append(
            (
                f"/v1/rank c{conc}: rps without / with audit (ratio), median of {ROUNDS}",
                f"{off['rps']:,.0f} / {on['rps']:,.0f} ({ratio:.2f})",
            )
        )
        lines.append(
            (
                f"/v1/rank c{conc}: p50 without / with audit",
                f"{off['p50_ms']:.2f} ms / {on['p50_ms']:.2f} ms",
            )
        )


def big_log(records: int, work: Path, lines: list[tuple[str, str]]) -> None:
    started = time.perf_counter()
    store = build_big_log(work / "big.db", records)
    lines.append(
        (
            f"build {records:,} records (batches of 20k)",
            f"{time.perf_counter() - started:.1f} s",
        )
    )
    audit_log = make_log(store)
    checkpoint = audit_log.publish_checkpoint()
    rng = random.Random(0)
    probes = 1000
    started = time.perf_counter()
    for _ in range(probes):
        audit_log.inclusion(rng.randrange(records), checkpoint)
    inclusion_ms = (time.perf_counter() - started) / probes * 1000
    started = time.perf_counter()
    for _ in range(probes):
        old = rng.randrange(1, records)
        audit_log.consistency(old, records)
    consistency_ms = (time.perf_counter() - started) / probes * 1000
    lines.append(
        (f"inclusion proof, {records:,} records (avg of {probes})", f"{inclusion_ms:.3f} ms")
    )
    lines.append(
        (
            f"consistency proof, {records:,} records (avg of {probes})",
            f"{consistency_ms:.3f} ms",
        )
    )
    exports = export_and_verify(audit_log, work, records)
    peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    started = time.perf_counter()
    report = verify_store(store, audit_log.verifier)
    verify_s = time.perf_counter() - started
    lines.append((f"full verify of {report.size:,} records (`audit verify`)", f"{verify_s:.2f} s"))
    for name, export_s, verify_bundle_s, size, unopened in exports:
        whole = not unopened
        lines.append(
            (
                f"export, {name} (complete range)",
                f"{export_s:.2f} s, {size / 1e6:,.1f} MB ({export_s / verify_s:.2f}x verify)",
            )
        )
        goal = "; goal <= 2x" if whole else ""
        lines.append(
            (
                f"verify-bundle, {name}",
                f"{verify_bundle_s:.2f} s ({verify_bundle_s / verify_s:.2f}x verify{goal})",
            )
        )
        if not whole:
            lines.append(
                (
                    f"bundle bytes per hash-only leaf, {name}",
                    f"{size / unopened:.1f} B over {unopened:,} leaves (goal <= 40)",
                )
            )
    lines.append(
        ("peak RSS through build, proofs, exports and verify-bundles", f"{peak_mib:,.0f} MiB")
    )
    store.close()


def export_and_verify(
    audit_log: AuditLog, work: Path, records: int
) -> list[tuple[str, float, float, int, int]]:
    """(name, export s, verify-bundle s, bundle bytes, leaves carried as hashes only)."""
    window = (T0_MS, T0_MS + records)
    out: list[tuple[str, float, float, int, int]] = []
    for name, flt in (
        (f"whole range, {records:,} records", ExportFilter(*window)),
        ("1 % filtered (client=auditee)", ExportFilter(*window, client_id=RARE_CLIENT)),
    ):
        path = work / f"export-{len(out)}.zip"
        started = time.perf_counter()
        write_bundle(audit_log, flt, path)
        export_s = time.perf_counter() - started
        started = time.perf_counter()
        report = verify_bundle(path, pubkey=audit_log.verifier.verifier_key())
        verify_bundle_s = time.perf_counter() - started
        if (report.start, report.end) != (0, records):
            raise SystemExit(f"bench: the bundle does not cover the log: {report.complete}")
        out.append((name, export_s, verify_bundle_s, path.stat().st_size, report.unopened))
        path.unlink()
    return out


if __name__ == "__main__":
    main()
