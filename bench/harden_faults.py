"""bench/harden_faults: the dependency-fault suite at full length, one table.

    python -m bench.harden_faults [--cycles 5] [--request-timeout 4] [--workers 4]
        [--only pg-stop,pg-restart,pg-kill,redis-stop,redis-kill,disk-full]

The long version of tests/faults (same harness, tests/faults/harness.py): a real
gateway (uvicorn on 127.0.0.1) over PostgreSQL and Redis processes of its own (never
the shared ones), under steady load from a simple client, and each fault `--cycles`
times:

- pg-stop: SIGSTOP the postmaster and every backend for the request timeout + 1 s;
- pg-restart: fast shutdown and start on the same port and data directory;
- pg-kill: SIGKILL the postmaster and every backend, then start (crash recovery);
- redis-stop: SIGSTOP redis-server for the request timeout;
- redis-kill: SIGKILL redis-server, then start it on the same port;
- disk-full: the SQLite audit log on a 64 MiB tmpfs filled to the last byte (root only).

Per fault: cycles; failures (what did not hold: /healthz over 50 ms at most once in a
hundred probes, never over 400 ms, never an error; /readyz 503 naming the dependency
within 1.5 s; every request answered within the request timeout + 1 s with 2xx or
503; recovery under 2 s); the worst and p99
/healthz latency while the dependency was down; the worst time from the dependency's
return to ready-and-serving (a personalised rank: consent is read again); 2xx answered
without their record and request ids with several records (both must be 0; the log
must verify). `rows()` gives the same rows to bench/harden.py. Exit status 1 if any
row failed.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.servers import lift_client_limits
from gateway.datadir import init_data_dir
from gateway.settings import Settings, load_settings
from models.features import FeatureStore
from privacy.components import open_consent_store
from privacy.consent_store import ConsentEntry
from tests.faults import harness
from tests.faults.servers import OwnPostgres, OwnRedis, Unavailable

FAULTS = ("pg-stop", "pg-restart", "pg-kill", "redis-stop", "redis-kill", "disk-full")
USERS = [f"u{n}" for n in range(1, 17)]
STORES = frozenset({"audit_store", "consent_store"})
STATE = frozenset({"inspection_state"})


@dataclass
class Result:
    fault: str
    run: harness.FaultRun | None
    seconds: float
    note: str = ""

    @property
    def failed(self) -> bool:
        return self.run is None or bool(self.run.failures) or _dirty(self.run)


def _dirty(run: harness.FaultRun) -> bool:
    found = run.findings
    return (
        found is None
        or found.verified != "ok"
        or bool(found.unrecorded or found.duplicates or found.contradicted)
    )


def _consent(settings: Settings) -> None:
    store = open_consent_store(settings)
    try:
        entry = ConsentEntry("personalization", True, "consent", "default", "bench", 0, "bench")
        for user in USERS:
            store.record(None, user, [entry])
    finally:
        store.close()


@contextlib.contextmanager
def _small_disk(root: Path) -> Iterator[Path]:
    mount = root / "small-disk"
    mount.mkdir()
    if os.geteuid() != 0:
        raise Unavailable("disk-full needs root (a tmpfs of its own)")
    done = subprocess.run(
        # Room for the log under load: filling it is the fault, not the load.
        ["mount", "-t", "tmpfs", "-o", "size=64m,mode=0700", "tmpfs", str(mount)],
        capture_output=True,
        check=False,
    )
    if done.returncode != 0:
        raise Unavailable(f"cannot mount a tmpfs: {done.stderr.decode(errors='replace').strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def _fill(directory: Path) -> Path:
    filler = directory / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        block = b"\0" * 65536
        while len(block):
            try:
                os.write(fd, block)
            except OSError:
                block = block[: len(block) // 2]
    finally:
        os.close(fd)
    return filler


def run_all(
    only: list[str],
    *,
    cycles: int,
    request_timeout_s: float,
    workers: int,
    log: Callable[[str], None] = lambda line: print(line, file=sys.stderr),
) -> list[Result]:
    results: list[Result] = []
    with tempfile.TemporaryDirectory(prefix="harden-faults-") as tmp:
        root = Path(tmp)
        report = init_data_dir(root / "data")
        lift_client_limits(report.data_dir)  # steady load from one client, no 429s

        def settings_for(**overrides: Any) -> Settings:
            return load_settings(
                data_dir=report.data_dir,
                config_file=report.config,
                limits={"request_timeout_s": request_timeout_s},
                **overrides,
            )

        def measure(settings: Settings, faults: list[tuple[str, harness.Fault, float]]) -> None:
            _consent(settings)
            items = list(
                FeatureStore.load(settings.resolve(settings.model.features_path)).item_ids[:40]
            )
            with harness.gateway(settings) as url:
                token = harness.mint_token(settings)
                for name, fault, hold_s in faults:
                    started = time.monotonic()
                    run = harness.run_fault(
                        fault,
                        base_url=url,
                        token=token,
                        users=USERS,
                        items=items,
                        request_timeout_s=request_timeout_s,
                        hold_s=hold_s,
                        cycles=cycles,
                        workers=workers,
                        log=log,
                    )
                    run.findings = harness.check_audit(settings, run.outcomes)
                    results.append(Result(name, run, time.monotonic() - started))

        wanted = [f for f in FAULTS if f in only and f != "disk-full"]
        if wanted:
            try:
                pg, redis = OwnPostgres(), OwnRedis()
            except Unavailable as exc:
                results.extend(Result(name, None, 0.0, f"not run: {exc}") for name in wanted)
            else:
                try:
                    pg.start()
                    redis.start()
                    tag = uuid.uuid4().hex[:8]
                    settings = settings_for(
                        audit={
                            "postgres_dsn": pg.dsn,
                            "postgres_schema": f"bench_audit_{tag}",
                            "checkpoint_interval_s": 1.0,
                        },
                        privacy={
                            "consent_postgres_dsn": pg.dsn,
                            "consent_postgres_schema": f"bench_consent_{tag}",
                        },
                        inspection={"redis_url": redis.url, "redis_prefix": f"bench-{tag}:"},
                    )
                    hang = request_timeout_s + 1.0

                    catalogue = {
                        "pg-stop": (harness.Fault("pg-stop", pg.freeze, pg.thaw, STORES), hang),
                        "pg-restart": (harness.Fault("pg-restart", pg.stop, pg.start, STORES), 1.0),
                        "pg-kill": (harness.Fault("pg-kill", pg.kill, pg.start, STORES), 1.0),
                        "redis-stop": (
                            harness.Fault("redis-stop", redis.freeze, redis.thaw, STATE),
                            request_timeout_s,
                        ),
                        "redis-kill": (
                            harness.Fault("redis-kill", redis.kill, redis.start, STATE),
                            1.0,
                        ),
                    }
                    measure(settings, [(n, *catalogue[n]) for n in wanted])
                finally:
                    pg.close()
                    redis.close()
        if "disk-full" in only:
            try:
                with _small_disk(root) as disk:
                    filler: list[Path] = []
                    fault = harness.Fault(
                        "disk-full",
                        lambda: filler.append(_fill(disk)),
                        lambda: filler.pop().unlink(),
                        frozenset({"audit_store"}),
                    )
                    settings = settings_for(
                        audit={"sqlite_path": str(disk / "audit.db"), "checkpoint_interval_s": 1.0}
                    )
                    measure(settings, [("disk-full", fault, 2.0)])
            except Unavailable as exc:
                results.append(Result("disk-full", None, 0.0, f"not run: {exc}"))
    return results


def _row(result: Result) -> dict[str, Any]:
    run = result.run
    if run is None:
        return {"suite": f"fault: {result.fault}", "note": result.note}
    found = run.findings
    notes = [f"p99 /healthz {run.healthz_p99_ms:.1f} ms", f"{run.requests} requests"]
    if run.failures:
        notes.append(run.failures[0])
    if found is not None and found.verified != "ok":
        notes.append(f"log: {found.verified}")
    return {
        "suite": f"fault: {result.fault}",
        "cases": run.cycles,
        "failures": len(run.failures) + (1 if _dirty(run) else 0),
        "healthz_worst_ms": run.healthz_worst_ms,
        "recover_s": run.recover_worst_s,
        "unrecorded_2xx": len(found.unrecorded) if found else None,
        "duplicate_records": len(found.duplicates) if found else None,
        "note": "; ".join(notes),
        "seconds": result.seconds,
    }


def rows(
    only: list[str] | None = None,
    *,
    cycles: int = 3,
    request_timeout_s: float = 4.0,
    workers: int = 4,
) -> list[dict[str, Any]]:
    """The rows bench/harden.py merges into its table (its column names)."""
    results = run_all(
        list(only or FAULTS), cycles=cycles, request_timeout_s=request_timeout_s, workers=workers
    )
    return [_row(result) for result in results]


def print_table(results: list[Result]) -> None:
    header = (
        "fault",
        "cycles",
        "failures",
        "worst /healthz ms",
        "p99 /healthz ms",
        "recover s (worst)",
        "2xx w/o record",
        "duplicate records",
        "requests",
    )
    lines = [header]
    for result in results:
        run = result.run
        if run is None:
            lines.append((result.fault, "-", "not run", "-", "-", "-", "-", "-", "-"))
            continue
        found = run.findings
        lines.append(
            (
                result.fault,
                str(run.cycles),
                str(len(run.failures) + (1 if _dirty(run) else 0)),
                f"{run.healthz_worst_ms:.1f}",
                f"{run.healthz_p99_ms:.1f}",
                f"{run.recover_worst_s:.2f}",
                str(len(found.unrecorded)) if found else "-",
                str(len(found.duplicates)) if found else "-",
                str(run.requests),
            )
        )
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    for n, line in enumerate(lines):
        print(" | ".join(cell.ljust(widths[i]) for i, cell in enumerate(line)))
        if n == 0:
            print("-+-".join("-" * w for w in widths))
    for result in results:
        if result.note:
            print(f"{result.fault}: {result.note}")
        if result.run is not None:
            for failure in result.run.failures[:5]:
                print(f"{result.fault}: FAILED {failure}")
            found = result.run.findings
            if found is not None and _dirty(result.run):
                print(
                    f"{result.fault}: log {found.verified}; unrecorded {found.unrecorded[:3]}; "
                    f"duplicates {found.duplicates[:3]}; contradicted {found.contradicted[:3]}"
                )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cycles", type=int, default=5)
    parser.add_argument("--request-timeout", type=float, default=4.0)
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--only", default=",".join(FAULTS))
    args = parser.parse_args()
    only = [name.strip() for name in args.only.split(",") if name.strip()]
    unknown = sorted(set(only) - set(FAULTS))
    if unknown:
        parser.error(f"unknown fault(s): {', '.join(unknown)}; choose from {', '.join(FAULTS)}")
    if args.cycles < 1 or args.request_timeout <= 0 or args.workers < 1:
        parser.error("--cycles and --workers must be at least 1, --request-timeout positive")
    started = time.monotonic()
    results = run_all(
        only, cycles=args.cycles, request_timeout_s=args.request_timeout, workers=args.workers
    )
    print(
        f"bench/harden_faults: {args.cycles} cycles per fault, request timeout "
        f"{args.request_timeout:g} s, {args.workers} load workers, "
        f"{time.monotonic() - started:.0f} s"
    )
    print_table(results)
    sys.exit(1 if any(r.failed for r in results) else 0)


if __name__ == "__main__":
    main()
