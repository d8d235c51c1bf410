"""The lock file in front of SQLite's write lock (`audit.write_queue`), from other processes.

A holder in another process (a worker) makes an append wait, and the append goes on
once that holder lets go or dies; one that holds it past the busy timeout (stopped by
a debugger) fails the append as a busy database does (fail closed), and nothing
already stored is touched. A lock file that cannot be opened leaves SQLite's own lock.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from audit.merkle import Frontier, leaf_hash
from audit.sqlite_store import SqliteAuditStore
from audit.store import PendingRecord, StoreError

_HOLDER = """
import fcntl, os, sys
fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT, 0o600)
fcntl.flock(fd, fcntl.LOCK_EX)
print("held", flush=True)
sys.stdin.readline()
"""


def pending(n: int) -> PendingRecord:
    payload = b'{"n":%d}' % n
    return PendingRecord(payload, leaf_hash(payload), f"req-{n}", 1_000 + n)


def assert_log_is(store: SqliteAuditStore, count: int) -> None:
    """Exactly records 0..count-1, in order, and the stored tree is theirs."""
    leaves = list(store.iter_leaves())
    assert [leaf.request_id for leaf in leaves] == [f"req-{n}" for n in range(count)]
    assert [leaf.leaf_hash for leaf in leaves] == [pending(n).leaf_hash for n in range(count)]
    oracle = Frontier()
    for n in range(count):
        oracle.append(pending(n).leaf_hash)
    assert store.frontier_hashes() == (count, oracle.hashes())


@contextmanager
def holder(lock_path: Path) -> Iterator[subprocess.Popen[str]]:
    """Another process holding the write queue until its stdin is closed or it is killed."""
    proc = subprocess.Popen(
        [sys.executable, "-c", _HOLDER, str(lock_path)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    assert proc.stdin is not None
    assert proc.stdout is not None
    try:
        assert proc.stdout.readline().strip() == "held"
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=10)
        proc.stdout.close()
        if not proc.stdin.closed:
            proc.stdin.close()


def test_the_lock_file_is_owner_only_next_to_the_database(tmp_path: Path) -> None:
    store = SqliteAuditStore(tmp_path / "audit.db")
    store.append_batch([pending(0)])
    found = (tmp_path / "audit.db-writer").stat()
    assert found.st_mode & 0o777 == 0o600
    store.close()


def test_an_append_waits_for_another_process_and_goes_on_when_it_lets_go(
    tmp_path: Path,
) -> None:
    store = SqliteAuditStore(tmp_path / "audit.db", busy_timeout_s=30.0)
    store.append_batch([pending(0)])
    done: list[int] = []
    with holder(tmp_path / "audit.db-writer") as proc:
        writer = threading.Thread(target=lambda: done.append(store.append_batch([pending(1)])))
        writer.start()
        time.sleep(0.3)
        assert not done, "the append went ahead while another process held the queue"
        assert proc.stdin is not None
        proc.stdin.close()  # the holder exits and lets go
        writer.join(timeout=10)
    assert done == [1]
    assert_log_is(store, 2)
    store.close()


def test_a_holder_that_dies_releases_the_queue(tmp_path: Path) -> None:
    store = SqliteAuditStore(tmp_path / "audit.db", busy_timeout_s=30.0)
    done: list[int] = []
    with holder(tmp_path / "audit.db-writer") as proc:
        writer = threading.Thread(target=lambda: done.append(store.append_batch([pending(0)])))
        writer.start()
        time.sleep(0.2)
        assert not done
        proc.send_signal(signal.SIGKILL)
        writer.join(timeout=10)
    assert done == [0]
    store.close()


def test_a_stopped_holder_fails_the_append_in_bounded_time_and_keeps_the_log(
    tmp_path: Path,
) -> None:
    store = SqliteAuditStore(tmp_path / "audit.db", busy_timeout_s=0.3)
    store.append_batch([pending(0), pending(1)])
    with holder(tmp_path / "audit.db-writer") as proc:
        os.kill(proc.pid, signal.SIGSTOP)
        try:
            started = time.monotonic()
            with pytest.raises(StoreError, match="busy"):
                store.append_batch([pending(2)])
            assert time.monotonic() - started < 5.0
        finally:
            os.kill(proc.pid, signal.SIGCONT)
    assert store.size() == 2
    assert store.append_batch([pending(2)]) == 2  # the queue is free again
    assert_log_is(store, 3)
    store.close()


def test_two_stores_in_one_process_exclude_each_other(tmp_path: Path) -> None:
    """flock belongs to the open file, not the process: a second store waits too."""
    first = SqliteAuditStore(tmp_path / "audit.db")
    second = SqliteAuditStore(tmp_path / "audit.db", busy_timeout_s=0.2)
    with first._queue.held(), pytest.raises(StoreError, match="busy"):
        second.append_batch([pending(0)])
    assert second.append_batch([pending(0)]) == 0
    assert_log_is(first, 1)
    first.close()
    second.close()


def test_an_unusable_lock_file_leaves_sqlites_own_lock(tmp_path: Path) -> None:
    (tmp_path / "audit.db-writer").mkdir()  # cannot be opened as a file
    store = SqliteAuditStore(tmp_path / "audit.db")
    assert store.append_batch([pending(0)]) == 0
    assert store.append_batch([pending(1)]) == 1
    assert_log_is(store, 2)
    store.close()
