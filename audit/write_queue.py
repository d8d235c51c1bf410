"""A lock file in front of SQLite's write lock, for processes sharing one database.

With `gateway serve --workers N` every worker appends to the one SQLite audit log.
SQLite serialises them with its own write lock, but a writer that finds it taken
sleeps on SQLite's busy ladder (1, 2, 5, 10, 15 ... ms) and retries; the holder's
next batch often takes the lock again first. Commits here take 0.3-4 ms, so a
worker's records waited several commits for nothing, and a second worker added
latency instead of throughput.

`WriteQueue.held()` takes an exclusive flock(2) on `<database>-writer` before a
write transaction begins (held by the open file, so two stores in one process
exclude each other too), polling every 0.1 ms at first and backing off to 1 ms:
a waiting writer starts within a fraction of a millisecond of the holder's
COMMIT. The kernel drops the lock of a process that dies. Waiting is bounded
(`timeout_s`, the store's busy timeout): past it the write fails as a busy
database does. SQLite's own lock still guards the file; this only orders the
writers that use it, so a process without it (an older gateway, the sqlite3
shell) is serialised as before, only slower. Where the lock file cannot be
created (a read-only data directory), writes go to SQLite's lock directly.
"""

from __future__ import annotations

import fcntl
import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager
from functools import partial
from pathlib import Path

from audit.store import StoreError
from gateway.file_lock import wait_exclusive

log = logging.getLogger("gateway.audit")

_FIRST_PAUSE_S = 0.0001
_LONGEST_PAUSE_S = 0.001


class WriteQueue:
    def __init__(self, database: Path, *, timeout_s: float) -> None:
        self.path = database.with_name(database.name + "-writer")
        self._timeout_s = timeout_s
        self._fd: int | None = None
        self._unusable = False

    def _open(self) -> int | None:
        if self._fd is None and not self._unusable:
            try:
                self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
            except OSError as exc:
                self._unusable = True
                log.warning("audit writes use SQLite's busy wait alone: %s", exc)
        return self._fd

    @contextmanager
    def held(self) -> Iterator[None]:
        fd = self._open()
        if fd is None:
            yield
            return
        self._acquire(fd)
        try:
            yield
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)

    def _acquire(self, fd: int) -> None:
        try:
            granted = wait_exclusive(
                partial(fcntl.flock, fd, fcntl.LOCK_EX | fcntl.LOCK_NB),
                timeout_s=self._timeout_s,
                first_pause_s=_FIRST_PAUSE_S,
                longest_pause_s=_LONGEST_PAUSE_S,
            )
        except OSError as exc:
            raise StoreError(f"audit write lock {self.path}: {exc}") from exc
        if not granted:
            raise StoreError(
                f"audit store busy: another process held its write lock for over "
                f"{self._timeout_s:g} s"
            )

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
