"""The SQLite audit files: owner-only, a full disk reported as itself (and as not ready),
and a write lock held elsewhere bounded below the request timeout.

The full disk is a real one (a 2 MiB tmpfs, mounted when the test may: root) and, to
run anywhere, a file-size limit in a child process: both fail the COMMIT, after which
SQLite has already rolled the transaction back; the ROLLBACK the store then issued used
to fail with "cannot rollback - no transaction is active", and that was all the log
said.
"""

from __future__ import annotations

import logging
import os
import sqlite3
import stat
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from audit.merkle import leaf_hash
from audit.record import canonical, event_record
from audit.sqlite_store import SqliteAuditStore
from audit.store import PendingRecord, StoreError
from gateway.settings import Settings
from models.features import FeatureStore
from tests.faults import harness
from tests.faults.conftest import REQUEST_TIMEOUT_S, USERS, skip_loudly

SIDE_FILES = ("-wal", "-shm")


def pending(n: int, pad: int = 400) -> PendingRecord:
    payload = canonical(event_record("test", n, n=n, pad="x" * pad, id=uuid.uuid4().hex))
    return PendingRecord(payload, leaf_hash(payload), f"r{n}-{uuid.uuid4().hex[:8]}", n)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.fixture
def loose_umask() -> Iterator[None]:
    """What a service manager often leaves: files world-readable unless made otherwise."""
    old = os.umask(0o022)
    try:
        yield
    finally:
        os.umask(old)


def test_a_new_log_and_its_wal_files_are_owner_only(tmp_path: Path, loose_umask: None) -> None:
    path = tmp_path / "fresh" / "audit.db"
    store = SqliteAuditStore(path)
    try:
        store.append_batch([pending(0)])  # the WAL and its index exist from here
        for name in ("audit.db", *(f"audit.db{s}" for s in SIDE_FILES)):
            assert mode(path.with_name(name)) == 0o600, name
        assert mode(path.parent) == 0o700
    finally:
        store.close()


def test_an_old_log_left_world_readable_is_tightened_at_start(
    tmp_path: Path, loose_umask: None
) -> None:
    path = tmp_path / "audit.db"
    store = SqliteAuditStore(path)
    store.append_batch([pending(0)])
    # What an older gateway left behind (the files still open, so the WAL stays).
    for name in ("audit.db", *(f"audit.db{s}" for s in SIDE_FILES)):
        path.with_name(name).chmod(0o644)
    again = SqliteAuditStore(path)
    try:
        for name in ("audit.db", *(f"audit.db{s}" for s in SIDE_FILES)):
            assert mode(path.with_name(name)) == 0o600, name
        assert again.size() == 1
    finally:
        again.close()
        store.close()


def test_a_write_lock_held_elsewhere_fails_the_append_within_the_busy_timeout(
    tmp_path: Path,
) -> None:
    """Another process holds the log's write lock (the outside testers held it 20 s): the
    append fails in bound, writes nothing, and the next one succeeds once it is free."""
    path = tmp_path / "audit.db"
    store = SqliteAuditStore(path, busy_timeout_s=0.3)
    holder = sqlite3.connect(path, isolation_level=None)
    try:
        store.append_batch([pending(0)])
        holder.execute("BEGIN IMMEDIATE")
        started = time.monotonic()
        with pytest.raises(StoreError, match="locked"):
            store.append_batch([pending(1)])
        assert time.monotonic() - started < 1.0
        holder.execute("ROLLBACK")
        assert store.append_batch([pending(2)]) == 1
        assert store.size() == 2
    finally:
        holder.close()
        store.close()


@pytest.fixture
def small_disk(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Path]:
    """A 2 MiB tmpfs of the test's own (root only); skipped loudly where it cannot be."""
    mount = tmp_path / "small-disk"
    mount.mkdir()
    if os.geteuid() != 0:
        skip_loudly(request, "a real full disk needs root to mount a tmpfs (size-limit test ran)")
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=2m,mode=0700", "tmpfs", str(mount)],
        capture_output=True,
        check=False,
    )
    if done.returncode != 0:
        reason = done.stderr.decode(errors="replace").strip()
        skip_loudly(request, f"cannot mount a tmpfs for the full-disk test: {reason}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def fill(directory: Path) -> Path:
    """Take every free byte of the file system `directory` is on."""
    filler = directory / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        block = b"\0" * 65536
        while True:
            try:
                os.write(fd, block)
            except OSError:
                if len(block) == 1:
                    break
                block = block[: len(block) // 2]
    finally:
        os.close(fd)
    return filler


def append_until_refused(store: SqliteAuditStore) -> str:
    """Append until the store refuses (the WAL cannot grow); the refusal's message."""
    for n in range(1, 10_000):
        try:
            store.append_batch([pending(n, pad=2000) for _ in range(20)])
        except StoreError as exc:
            return str(exc)
    raise AssertionError("the full disk never refused an append")


def test_a_full_disk_fails_the_append_with_its_own_error_and_recovers(small_disk: Path) -> None:
    store = SqliteAuditStore(small_disk / "audit.db")
    try:
        store.append_batch([pending(0)])
        store.check()
        filler = fill(small_disk)
        failure = append_until_refused(store)
        assert "database or disk is full" in failure
        assert "cannot rollback" not in failure
        with pytest.raises(StoreError, match="file system is full"):
            store.check()  # readiness says so too
        size = store.size()
        filler.unlink()
        store.check()
        assert store.append_batch([pending(99)]) == size
    finally:
        store.close()
    reopened = SqliteAuditStore(small_disk / "audit.db")
    try:
        assert reopened.size() == size + 1
    finally:
        reopened.close()


_SIZE_LIMITED = """
import resource, signal, sys, uuid
from pathlib import Path
from audit.merkle import leaf_hash
from audit.sqlite_store import SqliteAuditStore
from audit.store import PendingRecord, StoreError
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
store = SqliteAuditStore(Path(sys.argv[1]))
resource.setrlimit(resource.RLIMIT_FSIZE, (256 * 1024, resource.RLIM_INFINITY))
try:
    for n in range(100_000):
        payload = ('{"n":%d,"pad":"%s"}' % (n, "x" * 400)).encode()
        store.append_batch([PendingRecord(payload, leaf_hash(payload), uuid.uuid4().hex, n)])
except StoreError as exc:
    print(exc)
"""


def test_a_write_refused_by_the_file_system_is_reported_as_itself(tmp_path: Path) -> None:
    """Anywhere (no mount needed): a file-size limit fails the WAL write at COMMIT."""
    done = subprocess.run(
        [sys.executable, "-c", _SIZE_LIMITED, str(tmp_path / "audit.db")],
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    )
    reported = done.stdout.strip()
    assert reported.startswith("audit append failed: "), reported
    assert "cannot rollback" not in reported
    assert "disk I/O error" in reported or "full" in reported


def test_the_gateway_on_a_full_disk_stays_live_says_not_ready_and_recovers(
    small_disk: Path,
    make_settings: Callable[..., Settings],
    grant_consent: Callable[..., None],
    caplog: pytest.LogCaptureFixture,
) -> None:
    settings = make_settings(
        audit={"sqlite_path": str(small_disk / "audit.db"), "checkpoint_interval_s": 0.5},
        limits={"request_timeout_s": REQUEST_TIMEOUT_S},
    )
    grant_consent(*USERS)
    items = list(FeatureStore.load(settings.resolve(settings.model.features_path)).item_ids[:40])
    filler: list[Path] = []

    def inject() -> None:
        filler.append(fill(small_disk))

    def restore() -> None:
        filler.pop().unlink()

    fault = harness.Fault("disk full", inject, restore, frozenset({"audit_store"}))
    caplog.set_level(logging.ERROR)
    with harness.gateway(settings) as url:
        run = harness.run_fault(
            fault,
            base_url=url,
            token=harness.mint_token(settings),
            users=USERS,
            items=items,
            request_timeout_s=REQUEST_TIMEOUT_S,
            hold_s=1.5,
        )
    run.findings = harness.check_audit(settings, run.outcomes)
    assert run.failures == [], run.failures
    assert run.healthz_late <= run.healthz_late_allowed
    assert run.healthz_worst_ms < harness.HEALTHZ_WORST_LIMIT_MS
    assert run.findings.verified == "ok"
    assert run.findings.unrecorded == run.findings.duplicates == []
    assert run.findings.contradicted == []
    logged = "\n".join(r.getMessage() for r in caplog.records)
    assert "cannot rollback" not in logged
    # Requests met the full disk, and the log says what it was.
    assert any(o.status == 503 for o in run.outcomes)
    assert "database or disk is full" in logged
